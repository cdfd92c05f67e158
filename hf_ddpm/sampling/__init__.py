"""The commands that run a saved pipeline: ``hf-ddpm sample``."""
