"""Training: validated configs, the supervised trainer, run folders, checkpoints."""
