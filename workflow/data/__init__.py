"""data: dataset registry, downloads (fetch), tokenizers, split writers, one preparer per dataset
(prepare/), and the trainer's memmapped loader (loader, the only module here that imports torch).
"""
