"""hf-ddpm train's layout of a class-conditional UNet's embeddings: the data's classes 0..n-1, then one
more, n, the null label of classifier-free guidance (Ho & Salimans 2022). Every reader of a model's labels
(the pipelines, the model card, the commands, the Space) goes through the three functions here.

Copied into every saved folder (the pipelines and ``model_card`` import it), so it imports nothing: the
rule is integers only.
"""

from __future__ import annotations


def num_class_embeds_for(num_classes: int) -> int:
    """``num_class_embeds`` of a UNet for ``num_classes`` classes and the null label after them."""
    return num_classes + 1


def null_label_of(num_class_embeds: int | None, recorded: int | None = None) -> int | None:
    """The label under which a UNet with ``num_class_embeds`` class embeddings models p(x): the
    pipeline's ``recorded`` null_class_label, else the last embedding; None for an unconditional UNet."""
    if not num_class_embeds:
        return None
    return num_class_embeds - 1 if recorded is None else int(recorded)


def num_classes_of(num_class_embeds: int | None) -> int | None:
    """The classes 0..n-1 of a UNet laid out as :func:`num_class_embeds_for` makes it (None: unconditional)."""
    return null_label_of(num_class_embeds)
