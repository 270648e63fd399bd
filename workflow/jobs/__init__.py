"""jobs: a training job's processes: the launcher (one process, torchrun or srun), the trainer in
its process (signals), and warm start (client, server, fingerprint).
"""
