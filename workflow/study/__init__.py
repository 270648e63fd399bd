"""study: the YAML study -> validated, resolved runs (torch-free; the Snakemake process imports it).

schema (defaults, readable errors), resolve (merging, seeds, run configs, hashes), resources
(compute and launch), checks (semantic checks), gate_rules (the gate rules by name and how many
each advances), length (the run length), overrides (``set=``, sweeps), printed_plan (the most
each stage can run), explain (why_rerun), trainer_section (the ``trainer`` section: your own
training script as a variant). The torch-free specs it reads live beside their domain:
workflow.model.spec (GPTConfig, presets), workflow.model.block_spec (block patterns),
workflow.parallel.tp_spec (sync arithmetic), workflow.optim.schedules (LR, curriculum, DepthWarm).
"""
