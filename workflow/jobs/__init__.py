"""jobs: a training job's processes: the launcher (one process, torchrun or srun), the trainer in
its process (signals), and warm start (client, server, fingerprint); script_runner and capture: a study's own training
script as a run, its metrics read from its output.
"""
