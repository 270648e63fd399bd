"""optim: optimizers (AdamW, Muon with Newton-Schulz, SGD) and their parameter groups."""
