"""Per-request caps, and readable ``gr.Error`` messages for anything the widgets do not already forbid."""

from __future__ import annotations

import os

import gradio as gr
import numpy as np

# Caps that keep one request from holding a CPU Space's queue for minutes; a GPU Space may raise them.
MAX_IMAGES = int(os.environ.get("HF_DDPM_MAX_IMAGES", "16"))
MAX_STEPS = int(os.environ.get("HF_DDPM_MAX_STEPS", "250"))
# Requests that may wait for the model at once; one more gets Gradio's "Queue is full" message.
MAX_QUEUE = int(os.environ.get("HF_DDPM_MAX_QUEUE", "32"))
MAX_SEED = 2**32 - 1
MAX_GUIDANCE = 20
# The "no class" choice for a class-conditional model: the null label of classifier-free guidance.
NO_CLASS = -1


def int_in(name: str, value: float | None, low: int, high: int) -> int:
    """``value`` as an int, or a ``gr.Error`` naming ``name`` and the allowed range."""
    if value is None or not float(value).is_integer() or not low <= value <= high:
        raise gr.Error(f"{name} must be a whole number from {low} to {high}; got {value!r}.")
    return int(value)


def choice(name: str, value: str | None, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``, else a ``gr.Error`` listing them."""
    if value not in allowed:
        raise gr.Error(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")
    return value


def class_or_null(value: float | None, num_classes: int) -> int:
    """The label asked for: a class 0..K-1, or ``NO_CLASS`` (the default) as the null label K that
    ``hf-ddpm train`` keeps for classifier-free guidance."""
    label = int_in(
        f"Class ({NO_CLASS}: none)",
        NO_CLASS if value is None else value,
        NO_CLASS,
        num_classes - 1,
    )
    return num_classes if label == NO_CLASS else label


def guidance(value: float | None) -> float:
    """A classifier-free guidance scale, or a ``gr.Error`` naming the allowed range."""
    if value is None or not 0 <= value <= MAX_GUIDANCE:
        raise gr.Error(f"Guidance scale must be from 0 to {MAX_GUIDANCE}; got {value!r}.")
    return float(value)


def require_image(value: np.ndarray | None) -> np.ndarray:
    """The uploaded image, or a ``gr.Error`` asking for one."""
    if value is None:
        raise gr.Error("Upload an image first (or pick an example).")
    return value


def steps_note(steps: int, num_train_timesteps: int) -> str:
    """What the status line says when ``steps`` sits at this Space's cap (the slider clamps what is
    typed beyond it), so a user who asked for more knows why they got fewer."""
    if steps == MAX_STEPS < num_train_timesteps:
        return (
            f" {steps} steps is this Space's cap per request (HF_DDPM_MAX_STEPS); "
            f"the model has T = {num_train_timesteps}."
        )
    return ""
