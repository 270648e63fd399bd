"""optim: the optimizers by name (registry), their builders (AdamW, Muon with Newton-Schulz, SGD)
and the torch-free schedules (schedules: learning rate, curriculum, DepthWarm, run lengths)."""
