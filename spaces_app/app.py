"""hf_ddpm Space: generate images with a DDPM and watch the diffusion math at work.

Three tabs:

* **Generate** runs the reverse process p(x_{t-1} | x_t) and streams x_t and the predicted x_0 every
  few steps, then shows the samples in a gallery (``elem_id="samples"``).
* **Forward process** draws x_t from the closed form q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)
  (Ho et al. 2020, eq. 4) and plots beta_t, abar_t and SNR(t) = abar_t / (1 - abar_t).
* **Likelihood** evaluates the variational bound L = L_T + sum_{t>1} L_{t-1} + L_0 (Ho et al. eq. 5)
  in bits/dim with ``hf_ddpm.variational_bound``: prior L_T, rate sum_{t>1} L_{t-1}, distortion L_0.

An uploaded image becomes x_0 through ``hf_ddpm.data.image_transform.ImageTransform``, the transform of
``hf-ddpm train`` and ``hf-ddpm evaluate`` (shorter side resized bilinearly, centre crop, scaling to
[-1, 1], snapping onto the data's levels), so the Likelihood tab's bits/dim for an image is the number
the evaluation gives for it. The number of levels comes from the ``train_config.json`` that
``hf-ddpm train`` saves beside the pipeline; a model without one is taken to have 8-bit data (256 levels).

The model comes from ``--model``, else ``HF_DDPM_MODEL``, else the ``models:`` entry of this folder's
README.md (filled in by ``hf-ddpm space``), else the model bundled with hf_ddpm. It loads with
``hf_ddpm.HFDDPMPipeline`` where hf_ddpm is importable, otherwise with
``DiffusionPipeline.from_pretrained(model, trust_remote_code=True)``. A model that is missing or fails
to load leaves a page that says so. Without hf_ddpm (a Space made from this folder alone) the Likelihood
tab says that it needs hf_ddpm, and the Forward tab resizes an upload to the model's size as it is.

Run locally: ``python spaces_app/app.py [--model PATH_OR_REPO] [--port 7860]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
import torch
from PIL import Image

try:  # ZeroGPU Spaces ship `spaces`; elsewhere the decorator is a no-op.
    import spaces

    _gpu: Callable[[Callable[..., Any]], Callable[..., Any]] = spaces.GPU
except ImportError:

    def _gpu(fn: Callable[..., Any]) -> Callable[..., Any]:
        return fn


try:  # hf_ddpm installed, or copied beside this file by `hf-ddpm space`
    from hf_ddpm.data.image_transform import ImageTransform, dataset_num_bins
except ImportError:  # a Space made from spaces_app/ alone: see _ResizeOnly
    ImageTransform = None

# Caps that keep one request from holding a CPU Space's queue for minutes; a GPU Space may raise them.
MAX_IMAGES = int(os.environ.get("HF_DDPM_MAX_IMAGES", "16"))
MAX_STEPS = int(os.environ.get("HF_DDPM_MAX_STEPS", "250"))
# Intermediate frames streamed per Generate run.
STREAM_FRAMES = 10
MAX_SEED = 2**32 - 1
_HERE = Path(__file__).resolve().parent
# Held-out MNIST test digits (hf_ddpm.data.image_datasets's "test" split of mnist-5k), the bundled model's data.
_EXAMPLES = sorted(str(path) for path in (_HERE / "examples").glob("*.png"))
_BUNDLED_MODEL = Path("pretrained") / "mnist-5k"
_FIXED_VARIANCES = ("fixed_small", "fixed_large")
_LEARNED_VARIANCES = ("learned", "learned_range")
# Written beside the pipeline by `hf-ddpm train`: names the data, and so its number of levels.
_TRAIN_CONFIG = "train_config.json"
_8_BIT_BINS = 256
# The likelihood tab's "no class" choice for a class-conditional model.
NO_CLASS = -1


@dataclass(frozen=True)
class LoadedModel:
    """A loaded pipeline and the facts about it that shape the page."""

    pipe: Any
    sample_size: int
    channels: int
    num_train_timesteps: int
    num_classes: int | None
    variance_types: tuple[str, ...]
    streams: bool
    num_bins: int
    num_bins_source: str
    transform: Callable[[Image.Image], torch.Tensor]


@dataclass(frozen=True)
class ModelState:
    """Either a model, or the reason there is none (shown on the page)."""

    model: LoadedModel | None
    message: str

    def require(self) -> LoadedModel:
        """The model, or a readable ``gr.Error`` saying why there is none."""
        if self.model is None:
            raise gr.Error(self.message, print_exception=False)
        return self.model


# --------------------------------------------------------------------------------------------------
# Choosing and loading the model
# --------------------------------------------------------------------------------------------------


def _readme_models(readme: Path) -> list[str]:
    if not readme.is_file():
        return []
    from huggingface_hub import SpaceCard

    return list(SpaceCard.load(readme).data.models or [])


def _bundled_model() -> Path | None:
    spec = importlib.util.find_spec("hf_ddpm")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / _BUNDLED_MODEL
    return folder if (folder / "model_index.json").is_file() else None


def resolve_model(cli_model: str | None = None) -> str | None:
    """The model to serve: ``--model``, ``HF_DDPM_MODEL``, README ``models:``, the bundled model."""
    if cli_model:
        return cli_model
    if os.environ.get("HF_DDPM_MODEL"):
        return os.environ["HF_DDPM_MODEL"]
    listed = _readme_models(_HERE / "README.md")
    if listed:
        return listed[0]
    bundled = _bundled_model()
    return str(bundled) if bundled is not None else None


def _load_pipeline(model: str) -> Any:
    try:
        from hf_ddpm import HFDDPMPipeline
    except ImportError:
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.from_pretrained(model, trust_remote_code=True)
    return HFDDPMPipeline.from_pretrained(model)


def _train_config(model: str) -> dict[str, Any] | None:
    """The model's train_config.json (a local folder's, or the Hub repo's), or None where it has none."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        if Path(model).is_dir():
            path = Path(model) / _TRAIN_CONFIG
            if not path.is_file():
                return None
        else:
            path = Path(hf_hub_download(model, _TRAIN_CONFIG))
        config = json.loads(path.read_text(encoding="utf-8"))
    # No file, no network, or not JSON: the data is then unknown, which is not an error of the model.
    except (OSError, ValueError, EntryNotFoundError):
        return None
    return config if isinstance(config, dict) else None


def data_num_bins(model: str) -> tuple[int, str]:
    """How many intensity levels the model's training data had, and where that figure comes from.

    ``hf-ddpm evaluate`` takes the levels from the dataset it reads; the Space has only the model, so it
    reads the dataset from the model's train_config.json and falls back to 8-bit data (256 levels).
    """
    if ImageTransform is None:
        return _8_BIT_BINS, "hf_ddpm is not installed here"
    config = _train_config(model)
    if config is None:
        return _8_BIT_BINS, f"assumed 8-bit: the model has no {_TRAIN_CONFIG} naming its data"
    folder = config.get("train_data_dir")
    dataset = None if folder else config.get("dataset")
    name = f"image folder {folder}" if folder else f"dataset {dataset}"
    return dataset_num_bins(dataset), f"{name}, from the model's {_TRAIN_CONFIG}"


def describe(pipe: Any, source: str) -> ModelState:
    """Move ``pipe`` to the best device and read what the page needs from its configs."""
    pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    unet_config = pipe.unet.config
    sample_size = unet_config.sample_size
    if not isinstance(sample_size, int):
        sample_size = int(sample_size[0])
    channels = int(unet_config.in_channels)
    configured = str(pipe.scheduler.config.variance_type)
    if configured in _LEARNED_VARIANCES:
        # The model predicts its own variance; a fixed one would ignore half of its output.
        variance_types: tuple[str, ...] = (configured,)
    else:
        variance_types = tuple(dict.fromkeys((configured, *_FIXED_VARIANCES)))
    # hf-ddpm train keeps the last class embedding as the null label of classifier-free guidance.
    num_class_embeds = getattr(unet_config, "num_class_embeds", None)
    num_classes = num_class_embeds - 1 if num_class_embeds else None
    num_bins, num_bins_source = data_num_bins(source)
    transform: Callable[[Image.Image], torch.Tensor]
    if channels not in (1, 3):
        # Generation still works; only an uploaded picture has no meaning for such a model.
        transform = _NoUploads(channels)
    elif ImageTransform is None:
        transform = _ResizeOnly(channels, sample_size)
    else:
        transform = ImageTransform.for_channels(channels, sample_size, num_bins)
    loaded = LoadedModel(
        pipe=pipe,
        sample_size=sample_size,
        channels=channels,
        num_train_timesteps=int(pipe.scheduler.config.num_train_timesteps),
        num_classes=int(num_classes) if num_classes else None,
        variance_types=variance_types,
        streams="callback_on_step_end" in inspect.signature(pipe.__call__).parameters,
        num_bins=num_bins,
        num_bins_source=num_bins_source,
        transform=transform,
    )
    return ModelState(
        loaded, f"Model: `{source}` ({sample_size}x{sample_size}, {channels} channel(s))."
    )


def load_model(model: str | None) -> ModelState:
    """Load ``model`` and describe it; never raises, so the page comes up either way."""
    if model is None:
        return ModelState(
            None,
            "No model is configured: pass `--model REPO_OR_FOLDER` or set `HF_DDPM_MODEL` "
            "(the model bundled with hf_ddpm is not installed here).",
        )
    try:
        return describe(_load_pipeline(model), model)
    except Exception as err:  # any failure becomes a message on the page, not a crash
        return ModelState(None, f"The model `{model}` failed to load: {type(err).__name__}: {err}")


# --------------------------------------------------------------------------------------------------
# Tensors <-> images
# --------------------------------------------------------------------------------------------------


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, 3) uint8; values outside [-1, 1] are clipped for display.

    One channel is shown grey and three as RGB; other counts show their first three channels, or
    the first one in grey."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).numpy()


def tile(images: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) -> one near-square grid image with a 1-pixel gutter."""
    count, height, width, _ = images.shape
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    grid = np.full((rows * (height + 1) - 1, cols * (width + 1) - 1, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[
            r * (height + 1) : r * (height + 1) + height, c * (width + 1) : c * (width + 1) + width
        ] = image
    return grid


@dataclass(frozen=True)
class _ResizeOnly:
    """Without hf_ddpm there is no training transform to share: the Forward tab, the only user of an
    upload then, gets it squeezed to the model's size. The Likelihood tab refuses instead."""

    channels: int
    size: int

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """``image`` as (C, size, size) in [-1, 1], resized (bicubic) without keeping its aspect."""
        pil = image.convert("L" if self.channels == 1 else "RGB")
        if pil.size != (self.size, self.size):
            pil = pil.resize((self.size, self.size), Image.Resampling.BICUBIC)
        array = np.asarray(pil, dtype=np.float32).reshape(self.size, self.size, self.channels)
        return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1


@dataclass(frozen=True)
class _NoUploads:
    """The upload transform of a model whose images are neither grey (1 channel) nor RGB (3)."""

    channels: int

    def __call__(self, image: Image.Image) -> torch.Tensor:
        raise gr.Error(
            f"This model works on {self.channels}-channel images; an uploaded picture can only be "
            "used with a 1-channel (grey) or 3-channel (RGB) model."
        )


def image_to_tensor(image: np.ndarray, loaded: LoadedModel) -> torch.Tensor:
    """An uploaded image -> (1, C, size, size) in [-1, 1], as training and evaluation prepare data."""
    return loaded.transform(Image.fromarray(np.asarray(image)))[None]


# --------------------------------------------------------------------------------------------------
# Validation: readable errors for anything the sliders do not already forbid
# --------------------------------------------------------------------------------------------------


def _int_in(name: str, value: float | None, low: int, high: int) -> int:
    if value is None or not float(value).is_integer() or not low <= value <= high:
        raise gr.Error(f"{name} must be a whole number from {low} to {high}; got {value!r}.")
    return int(value)


def _choice(name: str, value: str | None, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise gr.Error(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")
    return value


def _image(value: np.ndarray | None) -> np.ndarray:
    if value is None:
        raise gr.Error("Upload an image first (or pick an example).")
    return value


# --------------------------------------------------------------------------------------------------
# Generate: the reverse process, streamed
# --------------------------------------------------------------------------------------------------


class _Cancelled(Exception):
    """Raised inside the pipeline's step callback to stop a run whose viewer has gone."""


def _scheduler_with(pipe: Any, variance_type: str) -> Any:
    # A fresh scheduler per request: set_timesteps mutates it, and requests may overlap.
    return type(pipe.scheduler).from_config(pipe.scheduler.config, variance_type=variance_type)


def _reverse_process(
    pipe: Any, call_kwargs: dict[str, Any], streams: bool, every: int
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor] | np.ndarray]:
    """Run ``pipe`` in a worker thread; yield (step, x_t, x0_hat) every ``every`` steps, then images.

    x_t is the sample after the step (the pipeline's "latents"), x0_hat the scheduler's prediction of
    x_0 from it. A pipeline without ``callback_on_step_end`` yields only the images.
    """
    frames: queue.Queue[tuple[int, torch.Tensor, torch.Tensor] | None] = queue.Queue()
    stop = threading.Event()
    outcome: dict[str, Any] = {}
    last = call_kwargs["num_inference_steps"] - 1

    def on_step_end(
        pipe: Any, step: int, timestep: int, tensors: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        if stop.is_set():
            raise _Cancelled
        if step % every == 0 or step == last:
            frames.put((step, tensors["latents"].cpu(), tensors["pred_original_sample"].cpu()))
        return tensors

    if streams:
        call_kwargs = {
            **call_kwargs,
            "callback_on_step_end": on_step_end,
            "callback_on_step_end_tensor_inputs": ["latents", "pred_original_sample"],
        }

    def work() -> None:
        try:
            outcome["images"] = pipe(**call_kwargs).images
        except _Cancelled:
            pass
        except Exception as err:  # re-raised in the request's thread
            outcome["error"] = err
        finally:
            frames.put(None)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        while (frame := frames.get()) is not None:
            yield frame
    finally:
        stop.set()
    worker.join()
    if "error" in outcome:
        raise gr.Error(f"Sampling failed: {outcome['error']}") from outcome["error"]
    yield outcome["images"]


def _generate(
    state: ModelState,
    seed: float,
    num_images: float,
    steps: float,
    variance_type: str,
    class_label: float | None,
    guidance_scale: float | None,
    progress: gr.Progress,
) -> Iterator[tuple[Any, Any, Any, str]]:
    loaded = state.require()
    seed = _int_in("Seed", seed, 0, MAX_SEED)
    num_images = _int_in("Number of images", num_images, 1, MAX_IMAGES)
    max_steps = min(loaded.num_train_timesteps, MAX_STEPS)
    steps = _int_in("Inference steps", steps, 1, max_steps)
    variance_type = _choice("Variance type", variance_type, loaded.variance_types)
    pipe = type(loaded.pipe)(
        **{**loaded.pipe.components, "scheduler": _scheduler_with(loaded.pipe, variance_type)}
    )
    pipe.set_progress_bar_config(disable=True)  # the page has its own progress indicator
    call_kwargs: dict[str, Any] = {
        "batch_size": num_images,
        "generator": torch.Generator(device="cpu").manual_seed(seed),
        "num_inference_steps": steps,
        "output_type": "np",
    }
    if loaded.num_classes is not None:
        label = _int_in("Class", class_label, 0, loaded.num_classes - 1)
        if guidance_scale is None or not 0 <= guidance_scale <= 20:
            raise gr.Error(f"Guidance scale must be from 0 to 20; got {guidance_scale!r}.")
        call_kwargs["class_labels"] = [label] * num_images
        call_kwargs["guidance_scale"] = float(guidance_scale)

    every = max(1, steps // STREAM_FRAMES)
    frame: tuple[np.ndarray, np.ndarray] | None = None
    for item in _reverse_process(pipe, call_kwargs, loaded.streams, every):
        if isinstance(item, tuple):
            step, x_t, x0_hat = item
            progress((step + 1, steps), desc="denoising", unit="steps")
            frame = tile(to_uint8(x_t)), tile(to_uint8(x0_hat))
            yield *frame, None, f"Step {step + 1}/{steps}: x_t and the predicted x_0."
        else:
            images = (np.asarray(item) * 255).round().clip(0, 255).astype(np.uint8)
            if images.shape[-1] == 1:
                images = images.repeat(3, axis=-1)
            if frame is None:  # a pipeline that cannot stream: x_0 is the result itself
                frame = tile(images), tile(images)
            done = f"Done: {num_images} image(s), {steps} steps, seed {seed}, {variance_type} variance."
            yield *frame, list(images), done


# --------------------------------------------------------------------------------------------------
# Forward process and schedule plots
# --------------------------------------------------------------------------------------------------


def schedule_table(scheduler: Any) -> pd.DataFrame:
    """beta_t, abar_t and log10 SNR(t) of ``scheduler`` for every training timestep."""
    betas = scheduler.betas.double().cpu()
    abar = scheduler.alphas_cumprod.double().cpu()
    return pd.DataFrame(
        {
            "t": np.arange(len(betas)),
            "beta_t": betas.numpy(),
            "alpha_bar_t": abar.numpy(),
            "log10_snr": torch.log10(abar / (1 - abar)).numpy(),
        }
    )


def _forward(
    state: ModelState, image: np.ndarray | None, t: float, noise_seed: float
) -> tuple[np.ndarray, np.ndarray, str]:
    loaded = state.require()
    image = _image(image)
    t = _int_in("t", t, 0, loaded.num_train_timesteps - 1)
    noise_seed = _int_in("Noise seed", noise_seed, 0, MAX_SEED)
    x0 = image_to_tensor(image, loaded)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(noise_seed))
    scheduler = loaded.pipe.scheduler
    x_t = scheduler.add_noise(x0, noise, torch.tensor([t]))
    abar = float(scheduler.alphas_cumprod[t])
    info = (
        f"t = {t}: x_t = {math.sqrt(abar):.4f} x_0 + {math.sqrt(1 - abar):.4f} eps, "
        f"alpha-bar = {abar:.4g}, SNR = {abar / (1 - abar):.4g}."
    )
    return to_uint8(x0)[0], to_uint8(x_t)[0], info


# --------------------------------------------------------------------------------------------------
# Likelihood
# --------------------------------------------------------------------------------------------------


def _likelihood(
    state: ModelState, image: np.ndarray | None, seed: float, class_label: float | None
) -> tuple[pd.DataFrame, dict[str, float]]:
    loaded = state.require()
    image = _image(image)
    seed = _int_in("Seed", seed, 0, MAX_SEED)
    model = loaded.pipe.unet
    if loaded.num_classes is not None:
        label = _int_in(
            f"Class ({NO_CLASS}: none)",
            NO_CLASS if class_label is None else class_label,
            NO_CLASS,
            loaded.num_classes - 1,
        )
        if label == NO_CLASS:
            # The null label of classifier-free guidance: the bound on -log p(x), which is what
            # `hf-ddpm evaluate` reports for a class-conditional model; a class gives -log p(x | y).
            label = loaded.num_classes

        def model(x_t: torch.Tensor, t: torch.Tensor) -> Any:
            labels = torch.full((x_t.shape[0],), label, dtype=torch.long, device=x_t.device)
            return loaded.pipe.unet(x_t, t, class_labels=labels)

    try:
        from hf_ddpm import HFDDPMScheduler, variational_bound
    except ImportError as err:
        raise gr.Error(
            "The likelihood tab needs the hf_ddpm package, which this Space does not have "
            "(deploy it with `hf-ddpm space`, which includes it)."
        ) from err
    pipe = loaded.pipe
    scheduler = HFDDPMScheduler.from_config(pipe.scheduler.config)
    x0 = image_to_tensor(image, loaded).to(pipe.device)
    with torch.no_grad():
        bound = variational_bound(
            model,
            scheduler,
            x0,
            generator=torch.Generator().manual_seed(seed),
            num_bins=loaded.num_bins,
        )
    terms = bound.terms_bpd[0].double().cpu()
    summary = {
        "total_bpd": float(bound.total_bpd[0]),
        "prior_bpd": float(bound.prior_bpd[0]),
        "rate_bpd": float(terms[1:].sum()),
        "distortion_bpd": float(terms[0]),
    }
    table = pd.DataFrame({"t": np.arange(len(terms)), "L_t_bpd": terms.numpy()})
    return table, summary


# --------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------

# Launch-time CSS (Gradio 6 takes it in launch()): blow tiny images up as crisp pixels.
CSS = (
    ".pixelated img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }"
    " #samples img { image-rendering: pixelated; }"
)


def _class_slider(loaded: LoadedModel | None) -> gr.Slider:
    """A class picker, shown only for a class-conditional model (a slider needs max > min)."""
    num_classes = loaded.num_classes if loaded else None
    return gr.Slider(
        0,
        max(num_classes - 1, 1) if num_classes else 1,
        value=0,
        step=1,
        label="Class",
        visible=num_classes is not None,
    )


def _likelihood_class(loaded: LoadedModel | None) -> gr.Dropdown:
    """The likelihood tab's condition, for a class-conditional model: none (the default, -log p(x)) or a
    class y (-log p(x | y))."""
    num_classes = loaded.num_classes if loaded else None
    choices = [("none: -log p(x), as hf-ddpm evaluate reports", NO_CLASS)]
    choices += [(f"class {k}: -log p(x | y={k})", k) for k in range(num_classes or 0)]
    # Custom values reach _likelihood, whose message names the allowed range, instead of Gradio's.
    return gr.Dropdown(
        choices,
        value=NO_CLASS,
        label="Condition on",
        visible=num_classes is not None,
        allow_custom_value=True,
    )


def _preparation_note(loaded: LoadedModel | None) -> str:
    """The Likelihood tab's words on how an upload becomes x_0, and on which levels."""
    if loaded is None:
        return ""
    if ImageTransform is None:
        return " It needs the hf_ddpm package, which this Space does not have."
    size = loaded.sample_size
    return (
        f" An upload is prepared as `hf-ddpm train` and `hf-ddpm evaluate` prepare data: its shorter "
        f"side resized (bilinear) to {size}, the centre {size}x{size} cropped, and its pixels scaled "
        f"to [-1, 1] on the data's {loaded.num_bins} levels ({loaded.num_bins_source})."
    )


def build_demo(state: ModelState) -> gr.Blocks:
    """The Blocks app for ``state``; comes up (with a message) even when no model loaded."""
    loaded = state.model
    num_steps_train = loaded.num_train_timesteps if loaded else 1000
    max_steps = min(num_steps_train, MAX_STEPS)
    variance_types = loaded.variance_types if loaded else _FIXED_VARIANCES

    with gr.Blocks(title="hf_ddpm: denoising diffusion") as demo:
        gr.Markdown("# Denoising diffusion (DDPM)\n" + state.message, elem_id="model_status")
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
                    num_images = gr.Slider(
                        1, MAX_IMAGES, value=min(4, MAX_IMAGES), step=1, label="Number of images"
                    )
                    steps = gr.Slider(
                        1,
                        max_steps,
                        value=min(100, max_steps),
                        step=1,
                        label=f"Inference steps (respaced from T = {num_steps_train})",
                    )
                    variance = gr.Dropdown(
                        list(variance_types), value=variance_types[0], label="Variance type"
                    )
                    class_label = _class_slider(loaded)
                    guidance = gr.Slider(
                        0,
                        20,
                        value=1,
                        step=0.5,
                        label="Guidance scale (1: none)",
                        visible=bool(loaded and loaded.num_classes),
                    )
                    button = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Column(scale=2):
                    status = gr.Markdown(elem_id="generate_status")
                    with gr.Row():
                        x_t = gr.Image(
                            label="x_t",
                            format="png",
                            elem_id="x_t",
                            elem_classes="pixelated",
                            interactive=False,
                            height=240,
                        )
                        x0_hat = gr.Image(
                            label="predicted x_0",
                            format="png",
                            elem_id="x0_hat",
                            elem_classes="pixelated",
                            interactive=False,
                            height=240,
                        )
                    gallery = gr.Gallery(
                        label="Samples", elem_id="samples", format="png", columns=4, height="auto"
                    )

            @_gpu
            def generate(
                seed: float,
                num_images: float,
                steps: float,
                variance_type: str,
                class_label: float | None,
                guidance_scale: float | None,
                progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio's injection idiom)
            ) -> Iterator[tuple[Any, Any, Any, str]]:
                """Sample with the reverse process, streaming x_t and predicted x_0."""
                yield from _generate(
                    state,
                    seed,
                    num_images,
                    steps,
                    variance_type,
                    class_label,
                    guidance_scale,
                    progress,
                )

            button.click(
                generate,
                inputs=[seed, num_images, steps, variance, class_label, guidance],
                outputs=[x_t, x0_hat, gallery, status],
                api_name="generate",
                concurrency_limit=1,
                concurrency_id="model",
            )

        with gr.Tab("Forward process"):
            with gr.Row():
                with gr.Column():
                    source = gr.Image(
                        label="x_0",
                        type="numpy",
                        image_mode="RGB",
                        format="png",
                        elem_classes="pixelated",
                        height=240,
                    )
                    t_slider = gr.Slider(
                        0, num_steps_train - 1, value=num_steps_train // 4, step=1, label="t"
                    )
                    noise_seed = gr.Number(
                        0, label="Noise seed", precision=0, minimum=0, maximum=MAX_SEED
                    )
                    forward_button = gr.Button("Add noise")
                    if _EXAMPLES:
                        gr.Examples(_EXAMPLES, inputs=source, label="Held-out MNIST digits")
                with gr.Column():
                    x0_shown = gr.Image(
                        label="x_0 as the model sees it",
                        format="png",
                        elem_classes="pixelated",
                        height=240,
                    )
                    x_t_forward = gr.Image(
                        label="x_t ~ q(x_t | x_0)",
                        format="png",
                        elem_id="x_t_forward",
                        elem_classes="pixelated",
                        height=240,
                    )
                    forward_info = gr.Markdown()

            def forward(
                image: np.ndarray | None, t: float, noise_seed: float
            ) -> tuple[np.ndarray, np.ndarray, str]:
                """x_t drawn in one step from q(x_t | x_0)."""
                return _forward(state, image, t, noise_seed)

            forward_inputs = [source, t_slider, noise_seed]
            forward_outputs = [x0_shown, x_t_forward, forward_info]
            forward_button.click(
                forward, forward_inputs, forward_outputs, api_name="forward", concurrency_limit=4
            )

            def forward_preview(image: np.ndarray | None, t: float, noise_seed: float) -> Any:
                """Redraw x_t when the image or t changes; with no image yet there is nothing to do."""
                if image is None:
                    return gr.skip(), gr.skip(), gr.skip()
                return _forward(state, image, t, noise_seed)

            for event in (source.change, t_slider.release):
                event(
                    forward_preview,
                    forward_inputs,
                    forward_outputs,
                    api_visibility="private",
                    concurrency_limit=4,
                )
            if loaded is not None:
                table = schedule_table(loaded.pipe.scheduler)
                with gr.Row():
                    gr.LinePlot(table, x="t", y="beta_t", title="beta_t")
                    gr.LinePlot(table, x="t", y="alpha_bar_t", title="alpha-bar_t")
                    gr.LinePlot(table, x="t", y="log10_snr", title="log10 SNR(t)")

        with gr.Tab("Likelihood"):
            gr.Markdown(
                "The variational bound on -log p(x_0) in bits/dim: prior L_T, rate "
                "(sum of L_1 .. L_{T-1}) and distortion L_0. It runs the model once per timestep."
                + _preparation_note(loaded),
                elem_id="likelihood_help",
            )
            with gr.Row():
                with gr.Column():
                    lik_image = gr.Image(
                        label="x_0",
                        type="numpy",
                        image_mode="RGB",
                        format="png",
                        elem_classes="pixelated",
                        height=240,
                    )
                    lik_seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
                    lik_class = _likelihood_class(loaded)
                    lik_button = gr.Button("Compute the bound")
                    if _EXAMPLES:
                        gr.Examples(_EXAMPLES, inputs=lik_image, label="Held-out MNIST digits")
                with gr.Column():
                    lik_summary = gr.JSON(label="bits/dim")
                    lik_plot = gr.LinePlot(x="t", y="L_t_bpd", title="L_t (bits/dim)")

            @_gpu
            def likelihood(
                image: np.ndarray | None, seed: float, class_label: float | None
            ) -> tuple[pd.DataFrame, dict[str, float]]:
                """Per-timestep terms and the total variational bound, in bits/dim."""
                return _likelihood(state, image, seed, class_label)

            lik_button.click(
                likelihood,
                [lik_image, lik_seed, lik_class],
                [lik_plot, lik_summary],
                api_name="likelihood",
                concurrency_limit=1,
                concurrency_id="model",
            )
    demo.queue(max_size=32)
    return demo


def main(argv: list[str] | None = None) -> None:
    """Serve the Space locally (127.0.0.1 unless GRADIO_SERVER_NAME says otherwise, as on Spaces)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="Hub repo id or local pipeline folder (else HF_DDPM_MODEL)")
    parser.add_argument(
        "--port", type=int, default=None, help="port (else GRADIO_SERVER_PORT, 7860)"
    )
    args = parser.parse_args(argv)
    demo = build_demo(load_model(resolve_model(args.model)))
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=args.port or int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        css=CSS,
    )


if __name__ == "__main__":
    main()
