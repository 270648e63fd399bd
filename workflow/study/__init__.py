"""study: the YAML study -> validated, resolved runs (torch-free; the Snakemake process imports it).

schema (defaults, readable errors), resolve (merging, seeds, run configs, hashes), resources
(compute and launch), checks (semantic checks), model_config and blocks (GPTConfig, presets,
block patterns), schedules (LR, curriculum, DepthWarm), length (the run length), overrides
(``set=``, sweeps), printed_plan, explain (why_rerun), trainer_section (the ``trainer`` section:
your own training script as a variant).
"""
