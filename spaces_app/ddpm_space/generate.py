"""The Generate tab: the reverse process p(x_{t-1} | x_t), streamed.

Every few steps it shows x_t (the sample after the step) and the sampler's prediction of x_0 from it,
then the finished images. The sampler is the model's own DDPM scheduler with a chosen variance type, or
another of ``hf-ddpm sample``'s samplers (diffusers' DDIM, DPM-Solver++), built from the same config by
the registry entry that builds it for the command line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from .inputs import MAX_IMAGES, MAX_SEED, MAX_STEPS, choice, guidance, int_in, steps_note
from .loading import DDPM, SAMPLERS, LoadedModel, ModelState
from .pictures import pipeline_images_to_uint8, tile, to_uint8
from .streaming import Finished, every_nth_step, stream_pipeline


def spacings_for(loaded: LoadedModel, sampler: str) -> tuple[str, ...]:
    """The timestep spacings ``sampler`` can use: those the model's scheduler accepts for DDPM, the
    registry entry's for another (the model's configured spacing first where it is one of them)."""
    if sampler == DDPM:
        return loaded.timestep_spacings
    takes = SAMPLERS[sampler].timestep_spacings
    configured = loaded.timestep_spacings[:1]
    return tuple(dict.fromkeys((*(s for s in configured if s in takes), *takes)))


def make_scheduler(
    loaded: LoadedModel, sampler: str, variance_type: str, timestep_spacing: str | None
) -> Any:
    """A fresh scheduler for one request (set_timesteps mutates it, and requests may overlap)."""
    config = loaded.pipe.scheduler.config
    if sampler == DDPM:  # the model's own code: without hf_ddpm, its remote-code scheduler
        overrides = {} if timestep_spacing is None else {"timestep_spacing": timestep_spacing}
        return type(loaded.pipe.scheduler).from_config(
            config, variance_type=variance_type, **overrides
        )
    entry = SAMPLERS[sampler]
    spacing = timestep_spacing or config["timestep_spacing"]
    return entry.build(config, variance_type if entry.variance_types else None, spacing)


def generate_images(
    state: ModelState,
    seed: float,
    num_images: float,
    steps: float,
    variance_type: str,
    class_label: float | None,
    guidance_scale: float | None,
    progress: Callable[..., Any],
    sampler: str = DDPM,
    timestep_spacing: str | None = None,
) -> Iterator[tuple[Any, Any, Any, str]]:
    """Sample ``num_images`` images; yield (x_t grid, x_0 grid, gallery or None, status) per frame."""
    loaded = state.require()
    seed = int_in("Seed", seed, 0, MAX_SEED)
    num_images = int_in("Number of images", num_images, 1, MAX_IMAGES)
    steps = int_in("Inference steps", steps, 1, min(loaded.num_train_timesteps, MAX_STEPS))
    variance_type = choice("Variance type", variance_type, loaded.variance_types)
    sampler = choice("Sampler", sampler, loaded.samplers)
    if timestep_spacing is not None:
        timestep_spacing = choice(
            "Timestep spacing", timestep_spacing, spacings_for(loaded, sampler)
        )
    scheduler = make_scheduler(loaded, sampler, variance_type, timestep_spacing)
    # Passed by name: from_pipe shares only components whose type matches the class's annotation.
    pipe = type(loaded.pipe).from_pipe(loaded.pipe, unet=loaded.pipe.unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)  # the page has its own progress indicator
    call_kwargs: dict[str, Any] = {
        "batch_size": num_images,
        "generator": torch.Generator(device="cpu").manual_seed(seed),
        "num_inference_steps": steps,
        "output_type": "np",
    }
    if loaded.num_classes is not None:
        label = int_in("Class", class_label, 0, loaded.num_classes - 1)
        call_kwargs["class_labels"] = [label] * num_images
        call_kwargs["guidance_scale"] = guidance(guidance_scale)

    streamed = every_nth_step(steps)

    def frame_of(step: int, tensors: dict[str, torch.Tensor | None]) -> Any:
        if not streamed(step):
            return None
        x0_hat = tensors["pred_original_sample"]
        return step, tensors["latents"].cpu(), None if x0_hat is None else x0_hat.cpu()

    what = f"{variance_type} variance" if sampler == DDPM else f"{sampler} sampler"
    if timestep_spacing is not None:
        what += f", {timestep_spacing} spacing"
    frame: tuple[np.ndarray, np.ndarray | None] | None = None
    for item in stream_pipeline(
        pipe,
        call_kwargs,
        frame_of if loaded.streams else None,
        ["latents", "pred_original_sample"],
    ):
        if isinstance(item, Finished):
            images = pipeline_images_to_uint8(item.images)
            if frame is None:  # a pipeline that cannot stream: x_0 is the result itself
                frame = tile(images), tile(images)
            done = f"Done: {num_images} image(s), {steps} steps, seed {seed}, {what}."
            yield *frame, list(images), done + steps_note(steps, loaded.num_train_timesteps)
        else:
            step, x_t, x0_hat = item
            progress((step + 1, steps), desc="denoising", unit="steps")
            frame = tile(to_uint8(x_t)), None if x0_hat is None else tile(to_uint8(x0_hat))
            shown = (
                "x_t and the predicted x_0"
                if x0_hat is not None
                else "x_t (this sampler does not report its predicted x_0)"
            )
            yield *frame, None, f"Step {step + 1}/{steps}: {shown}."
