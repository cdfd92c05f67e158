"""Where models come from and go: the bundled model, and Space deployment (``hf-ddpm space``)."""
