"""``hf-ddpm train``: configuration, the training loop on accelerate, EMA, checkpoints and their uploads."""
