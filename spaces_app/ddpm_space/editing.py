"""The Edit tab: inpainting by RePaint (Lugmayr et al. 2022) and image-to-image by SDEdit (Meng et al.
2022), with hf_ddpm's ``HFDDPMInpaintPipeline`` and ``HFDDPMImg2ImgPipeline`` sharing the loaded model.

The picture and the mask come from one ``gr.ImageEditor``: the uploaded (or drawn) background is the
picture, and whatever is painted on its layers is the mask (white = fill), for inpainting; the
composite, strokes and all, is the rough picture that image-to-image cleans up. Both go through the
upload transform of training, so the mask has the picture's geometry. Both run the chain of
``hf-ddpm inpaint`` and ``hf-ddpm img2img``: the model's DDPM scheduler with ``hf-ddpm sample``'s variance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image

from .generate import make_scheduler
from .inputs import MAX_SEED, MAX_STEPS, class_or_null, guidance, int_in, steps_note
from .loading import DDPM, LoadedModel, ModelState
from .pictures import image_to_tensor, pipeline_images_to_uint8, tile, to_uint8
from .streaming import Finished, every_nth_step, stream_pipeline

INPAINT = "Inpaint"
IMG2IMG = "Image-to-image"
MODES = (INPAINT, IMG2IMG)
# RePaint's jump length j, as in Lugmayr et al.'s experiments.
JUMP_LENGTH = 10


def editing_pipelines() -> tuple[type, type] | None:
    """hf_ddpm's (inpainting, image-to-image) pipeline classes, or None where this hf_ddpm has none."""
    try:
        from hf_ddpm import HFDDPMImg2ImgPipeline, HFDDPMInpaintPipeline
    except ImportError:
        return None
    return HFDDPMInpaintPipeline, HFDDPMImg2ImgPipeline


def _layer_alpha(editor: dict[str, Any], size: tuple[int, int]) -> Image.Image:
    """The union of the painted layers' coverage as a grey image (white = painted) of ``size``."""
    painted = np.zeros(size[::-1], dtype=bool)
    for layer in editor.get("layers") or []:
        layer = np.asarray(layer)
        if layer.ndim != 3 or layer.shape[-1] != 4:
            continue
        alpha = Image.fromarray(layer[..., 3])
        if alpha.size != size:
            alpha = alpha.resize(size, Image.Resampling.NEAREST)
        painted |= np.asarray(alpha) > 0
    return Image.fromarray(painted.astype(np.uint8) * 255)


def editor_inputs(
    editor: dict[str, Any] | None, mode: str, loaded: LoadedModel
) -> tuple[torch.Tensor, np.ndarray | None]:
    """(x_0 as (1, C, size, size) in [-1, 1], the mask as (size, size) in {0, 1} or None for
    image-to-image), read from an ImageEditor value."""
    if editor is None or (editor.get("background") is None and editor.get("composite") is None):
        raise gr.Error("Upload or draw an image first (or pick the example).")
    if mode == IMG2IMG:
        return image_to_tensor(editor["composite"], loaded.transform), None
    background = editor.get("background")
    if background is None:
        raise gr.Error("Inpainting needs a picture to fill in: upload one (or pick the example).")
    x0 = image_to_tensor(background, loaded.transform)
    size = Image.fromarray(np.asarray(background)).size
    mask = loaded.mask_transform(_layer_alpha(editor, size))[0].numpy() > 0
    if not mask.any():
        raise gr.Error("Paint the region to fill with the brush (white in the mask = new content).")
    return x0, mask.astype(np.float32)


def _condition(
    loaded: LoadedModel, class_label: float | None, guidance_scale: float | None
) -> dict[str, Any]:
    """The class arguments of an edit: none for an unconditional model; the null label (no class)
    or a class with its guidance scale for a class-conditional one."""
    if loaded.num_classes is None:
        return {}
    label = class_or_null(class_label, loaded.num_classes)
    if label == loaded.num_classes:
        return {"class_labels": [label], "guidance_scale": 1.0}
    return {"class_labels": [label], "guidance_scale": guidance(guidance_scale)}


def edit_image(
    state: ModelState,
    editor: dict[str, Any] | None,
    mode: str,
    strength: float,
    steps: float,
    jump_n_sample: float,
    seed: float,
    class_label: float | None,
    guidance_scale: float | None,
    progress: Callable[..., Any],
) -> Iterator[tuple[Any, Any, str]]:
    """Inpaint or clean up the editor's picture; yield (x_t, result or None, status) per frame."""
    loaded = state.require()
    classes = editing_pipelines()
    if classes is None:
        raise gr.Error(
            "The Edit tab needs hf_ddpm's HFDDPMInpaintPipeline and HFDDPMImg2ImgPipeline, which "
            "this installation does not have (deploy with `hf-ddpm space`, which includes them)."
        )
    if mode not in MODES:
        raise gr.Error(f"Mode must be one of {', '.join(MODES)}; got {mode!r}.")
    seed = int_in("Seed", seed, 0, MAX_SEED)
    steps = int_in("Inference steps", steps, 1, min(loaded.num_train_timesteps, MAX_STEPS))
    x0, mask = editor_inputs(editor, mode, loaded)
    call_kwargs: dict[str, Any] = {
        "image": x0,
        "num_inference_steps": steps,
        "generator": torch.Generator(device="cpu").manual_seed(seed),
        "output_type": "np",
        **_condition(loaded, class_label, guidance_scale),
    }
    # The chain of `hf-ddpm inpaint` / `img2img`: the ddpm sampler with hf-ddpm sample's variance, so the
    # same seed gives the same edit here and there (the model's own, fixed_small, differed for a
    # calibrated model).
    variance = loaded.default_variance_type
    scheduler = make_scheduler(loaded, DDPM, variance, None)
    inpaint_cls, img2img_cls = classes
    if mode == INPAINT:
        jumps = int_in("Resamplings", jump_n_sample, 1, 10)
        # RePaint runs the model about steps x resamplings times: the same cap as Generate's steps.
        if steps * jumps > MAX_STEPS:
            raise gr.Error(
                f"Inpainting runs the model about steps x resamplings = {steps} x {jumps} = "
                f"{steps * jumps} times; this Space allows {MAX_STEPS} per request "
                "(HF_DDPM_MAX_STEPS): lower one of them."
            )
        pipe = inpaint_cls.from_pipe(loaded.pipe, unet=loaded.pipe.unet, scheduler=scheduler)
        call_kwargs |= {"mask_image": mask, "jump_length": JUMP_LENGTH, "jump_n_sample": jumps}
        total = steps * jumps
        what = (
            f"inpainted with {steps} steps x {jumps} resamplings (jump length {JUMP_LENGTH}), "
            f"{variance} variance"
        )
    else:
        if strength is None or not 0 < strength <= 1:
            raise gr.Error(f"Strength must be in (0, 1]; got {strength!r}.")
        pipe = img2img_cls.from_pipe(loaded.pipe, unet=loaded.pipe.unet, scheduler=scheduler)
        call_kwargs["strength"] = float(strength)
        total = max(1, round(strength * steps))
        what = f"image-to-image at strength {strength:g} ({steps}-step chain, {variance} variance)"
    pipe.set_progress_bar_config(disable=True)

    streamed = every_nth_step(total)

    def frame_of(step: int, tensors: dict[str, torch.Tensor | None]) -> Any:
        return (step, tensors["latents"].cpu()) if streamed(step) else None

    for item in stream_pipeline(pipe, call_kwargs, frame_of, ["latents"]):
        if isinstance(item, Finished):
            result = pipeline_images_to_uint8(item.images)[0]
            note = steps_note(steps, loaded.num_train_timesteps)
            yield result, result, f"Done: {what}, seed {seed}.{note}"
        else:
            step, x_t = item
            progress((min(step + 1, total), total), desc="denoising", unit="steps")
            yield tile(to_uint8(x_t)), None, f"Step {step + 1} of about {total}: x_t."
