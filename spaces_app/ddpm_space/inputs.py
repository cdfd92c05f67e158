"""Per-request caps, and readable ``gr.Error`` messages for anything the widgets do not already forbid."""

from __future__ import annotations

import numbers
import os
from typing import Any

import gradio as gr
import numpy as np

from .loading import ModelState

try:  # hf-ddpm sample's reading of --class-label: hf_ddpm installed, or copied beside app.py
    from hf_ddpm.sampling.samplers import resolve_class_label
except ImportError:

    def resolve_class_label(pipeline: Any, label: str | int | None) -> int | None:
        """A class name the model records (its ``class_names``), else a number (``ValueError``)."""
        names = list(getattr(pipeline.config, "class_names", None) or [])
        if label is None or isinstance(label, int):
            return label
        return names.index(label) if label in names else int(label)


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
    # A string (an API call's custom dropdown value) is refused here, not compared with the bounds.
    if (
        not isinstance(value, numbers.Real)
        or not float(value).is_integer()
        or not low <= value <= high
    ):
        raise gr.Error(f"{name} must be a whole number from {low} to {high}; got {value!r}.")
    return int(value)


def choice(name: str, value: str | None, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``, else a ``gr.Error`` listing them."""
    if value not in allowed:
        raise gr.Error(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")
    return value


def requested_class(state: ModelState, value: Any, none_allowed: bool) -> Any:
    """The class a request names, as its number: a class name the model records or its number, read by
    ``hf-ddpm sample --class-label``'s resolver (Gradio hands a dropdown's custom value over as a string,
    and an API client may send either), or ``NO_CLASS`` where ``none_allowed`` (also for None). Anything
    else is a ``gr.Error`` listing the allowed values. ``value`` as it is where there is no model or it
    takes no class: the work function then says so, or ignores it."""
    loaded = state.model
    if loaded is None or loaded.num_classes is None:
        return value
    if value is None and none_allowed:
        return NO_CLASS
    if isinstance(value, numbers.Real) and float(value).is_integer():
        value = int(value)
    label = None
    if isinstance(value, int | str):
        try:
            label = resolve_class_label(loaded.pipe, value)
        except ValueError:
            pass
    low = NO_CLASS if none_allowed else 0
    if label is not None and low <= label < loaded.num_classes:
        return label
    field = f"Class ({NO_CLASS}: none)" if none_allowed else "Class"
    names = list(getattr(loaded.pipe.config, "class_names", None) or [])
    if not names:
        raise gr.Error(
            f"{field} must be a whole number from {low} to {loaded.num_classes - 1}; got {value!r}."
        )
    listed = ", ".join(f"{name} ({k})" for k, name in enumerate(loaded.class_names))
    raise gr.Error(
        f"{field} must be one of the model's classes, by name or number: {listed}; got {value!r}."
    )


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
