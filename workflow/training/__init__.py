"""The trainer, in parts a reader can hold in their head.

| module          | what it holds                                                           |
|-----------------|-------------------------------------------------------------------------|
| trainer.py      | ``Trainer``: builds the run, the step, the loop (nanoGPT train.py shape) |
| evaluation.py   | which model is scored, val_loss, workers' val_loss, consensus_distance  |
| checkpoint.py   | per-rank checkpoints in two slots, loaded with ``weights_only=True``      |
| metrics.py      | metrics.jsonl rows and the log line                                      |
| state.py        | ``RunState``, the preemption flag, per-step seeds                        |
| tracking.py     | W&B logging (key only from WANDB_API_KEY)                               |
| sampling.py     | text samples from a finished run's model                                 |
| provenance.py   | git state, SLURM job id (FLOPs: workflow.model.flops)                    |

The command-line entry point is ``python -m workflow.train`` (workflow/train.py).
"""
