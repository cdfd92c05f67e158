"""``hf-ddpm evaluate``: the variational bound of a model on images, NLL estimators, Fréchet distances."""
