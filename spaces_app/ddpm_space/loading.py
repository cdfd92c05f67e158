"""Load the model and read from its configs what shapes the page.

It loads with ``hf_ddpm.HFDDPMPipeline`` where hf_ddpm is importable, otherwise with
``DiffusionPipeline.from_pretrained(model, trust_remote_code=True)``. The choices the page offers come
from the registries ``hf-ddpm sample`` reads (``hf_ddpm.sampling.samplers.SAMPLERS``: the samplers, each
one's variance types and spacings, and the variance a model samples with by default), each kept where the
model's scheduler accepts it with the model's config (the analytic variance and the optimal spacing only
once the config carries the moments they need). Without hf_ddpm the page offers the model's own sampler
alone, with the variance types and spacings its remote code lists, its configured ones first.
"""

from __future__ import annotations

import inspect
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import torch

from .pictures import Transform, upload_transform

try:  # hf_ddpm installed, or copied beside app.py by `hf-ddpm space`
    from hf_ddpm.core.class_layout import num_classes_of
    from hf_ddpm.core.variance import HEAD_VARIANCE_TYPES
    from hf_ddpm.data.bundled_datasets import trained_on as record_trained_on
    from hf_ddpm.data.bundled_datasets import trained_on_bundled_data
    from hf_ddpm.data.image_transform import dataset_num_bins
    from hf_ddpm.sampling.samplers import SAMPLERS, default_sampling_steps, sampling_variance_type
except ImportError:
    dataset_num_bins = SAMPLERS = sampling_variance_type = num_classes_of = None
    default_sampling_steps = HEAD_VARIANCE_TYPES = None

    # No bundled set is known, so no model's data is taken for the digits of the examples: a record
    # only tells that the model has other data than them.
    def record_trained_on(record: dict[str, Any] | None) -> str | None:
        return None if record is None else "data that hf_ddpm, not installed here, would name"

    def trained_on_bundled_data(data: str | None) -> bool:
        return False


# Written beside the pipeline by `hf-ddpm train`: names the data, and so its number of levels.
_TRAIN_CONFIG = "train_config.json"
_8_BIT_BINS = 256
# The model's own sampler (its scheduler), the registry's name for it; the one offered without hf_ddpm.
DDPM = "ddpm"


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
    transform: Transform
    # The upload transform for a painted mask: the image's geometry, one grey channel.
    mask_transform: Transform
    samplers: tuple[str, ...] = (DDPM,)
    timestep_spacings: tuple[str, ...] = ()
    # The name of each class 0..num_classes-1: the model's class_names (hf-ddpm train records its class
    # folders), else "class k".
    class_names: tuple[str, ...] = ()
    # What the model's train_config.json says it was trained on (:func:`trained_on`): a dataset name,
    # "image folder", or None where it has no such file or it names neither.
    trained_on: str | None = None
    # The Generate tab's steps unless changed: hf-ddpm sample's (without hf_ddpm, the pipeline's own).
    sampling_steps: int | None = None

    @property
    def default_variance_type(self) -> str:
        """The variance the Generate tab starts with and the Edit tab runs: ``hf-ddpm sample``'s default
        (analytic for a calibrated model), which ``variance_types`` lists first; without hf_ddpm, the
        model's own."""
        if self.variance_types:
            return self.variance_types[0]
        return str(self.pipe.scheduler.config.variance_type)


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


def load_pipeline(model: str) -> Any:
    """``model`` (a folder or a Hub id) as a pipeline, through hf_ddpm or else through remote code."""
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


def trained_on(model: str) -> str | None:
    """What the model's train_config.json says it was trained on, by hf_ddpm's reading of it
    (``hf_ddpm.data.bundled_datasets.trained_on``: a dataset, ``"image folder"``, or None where it has
    none), which ``hf-ddpm space`` applies too; whether the examples suit it is
    ``trained_on_bundled_data``'s call."""
    return record_trained_on(_train_config(model))


def data_num_bins(model: str) -> tuple[int, str]:
    """How many intensity levels the model's training data had, and where that figure comes from.

    ``hf-ddpm evaluate`` takes the levels from the dataset it reads; the Space has only the model, so it
    reads the dataset from the model's train_config.json and falls back to 8-bit data (256 levels).
    """
    if dataset_num_bins is None:
        return _8_BIT_BINS, "hf_ddpm is not installed here"
    config = _train_config(model)
    if config is None:
        return _8_BIT_BINS, f"assumed 8-bit: the model has no {_TRAIN_CONFIG} naming its data"
    folder = config.get("train_data_dir")
    dataset = None if folder else config.get("dataset")
    name = f"image folder {folder}" if folder else f"dataset {dataset}"
    return dataset_num_bins(dataset), f"{name}, from the model's {_TRAIN_CONFIG}"


# --------------------------------------------------------------------------------------------------
# What the scheduler offers
# --------------------------------------------------------------------------------------------------


def variance_is_learned(pipe: Any) -> bool:
    """Whether the model predicts its own variance: its UNet outputs more channels than the sample has.
    Not the scheduler's ``model_output_channels``, which for a covariance head's variance type ("sn",
    "npr", as `hf-ddpm fit-covariance` saves it) counts the head's channels too."""
    return int(pipe.unet.config.out_channels) != int(pipe.unet.config.in_channels)


def _code_constant(obj: Any, name: str) -> Any:
    """A public name of ``obj``'s own code (the installed hf_ddpm, or the remote-code copy that came with
    the model), looked up in the modules of its classes and in the modules their functions come from."""
    modules = [sys.modules.get(cls.__module__) for cls in type(obj).__mro__]
    for module in dict.fromkeys(m for m in modules if m is not None):
        if hasattr(module, name):
            return getattr(module, name)
        for value in vars(module).values():
            home = inspect.getmodule(value) if inspect.isfunction(value) else None
            if home is not None and home is not module and hasattr(home, name):
                return getattr(home, name)
    return None


def _accepted(scheduler: Any, key: str, first: str, candidates: Any) -> dict[str, Any]:
    """``first``, then each candidate, kept where the scheduler accepts it with the model's config (it
    raises ValueError for one that needs what the config lacks), each with the scheduler it makes."""
    accepted = {}
    for name in dict.fromkeys((first, *(candidates or ()))):
        try:
            accepted[name] = type(scheduler).from_config(scheduler.config, **{key: name})
        except ValueError:
            continue
    return accepted


def offered_variance_types(pipe: Any) -> tuple[str, ...]:
    """The variance types that fit this model, the one ``hf-ddpm sample`` uses by default first: its own
    if it learned one (the output means something else under another type), else every type of the
    ddpm sampler (without hf_ddpm: of its scheduler's code) that needs no learned output, and the
    covariance head's types (``HEAD_VARIANCE_TYPES``: the head gives their second C channels) where the
    pipeline carries a head: the one it was fitted as where it records its ``kind``, which is the only one
    the pipeline lets read it."""
    scheduler = pipe.scheduler
    if variance_is_learned(pipe):
        return (str(scheduler.config.variance_type),)
    if SAMPLERS is None:
        first = str(scheduler.config.variance_type)
        candidates = _code_constant(scheduler, "VARIANCE_TYPE_NAMES")
        head_types = _code_constant(scheduler, "HEAD_VARIANCE_TYPES")
    else:
        first = sampling_variance_type(scheduler.config)
        candidates = SAMPLERS[DDPM].variance_types
        head_types = HEAD_VARIANCE_TYPES
    head = getattr(pipe, "covariance_head", None)
    kind = getattr(getattr(head, "config", None), "kind", None)
    with_head = () if head is None else (kind,) if kind else tuple(head_types or ())
    channels = int(pipe.unet.config.in_channels)
    return tuple(
        name
        for name, made in _accepted(scheduler, "variance_type", first, candidates).items()
        if name in with_head
        or not hasattr(made, "model_output_channels")
        or made.model_output_channels(channels) == channels
    )


def offered_timestep_spacings(pipe: Any) -> tuple[str, ...]:
    """The ways the model's scheduler spaces a respaced chain, its configured one first."""
    config = pipe.scheduler.config
    if "timestep_spacing" not in config:
        return ()
    if SAMPLERS is None:
        candidates = _code_constant(pipe.scheduler, "TIMESTEP_SPACINGS")
    else:
        candidates = SAMPLERS[DDPM].timestep_spacings
    return tuple(
        _accepted(pipe.scheduler, "timestep_spacing", str(config.timestep_spacing), candidates)
    )


def offered_samplers(pipe: Any, streams: bool) -> tuple[str, ...]:
    """The model's own DDPM sampler, and the registry's others where they apply: to a pipeline that
    takes any scheduler (it streams, so it is hf_ddpm's), and to a learned variance only a sampler that
    takes it (DDIM and DPM-Solver++ have no use for its extra channels)."""
    if SAMPLERS is None or not streams:
        return (DDPM,)
    learned = str(pipe.scheduler.config.variance_type) if variance_is_learned(pipe) else None
    return (
        DDPM,
        *(
            name
            for name, sampler in SAMPLERS.items()
            if name != DDPM and (learned is None or learned in sampler.variance_types)
        ),
    )


def sampler_help(samplers: tuple[str, ...]) -> str:
    """What each offered sampler is, in the words of ``hf-ddpm sample --help``."""
    if SAMPLERS is None:
        return f"{DDPM}: the model's own scheduler"
    return "; ".join(f"{name}: {SAMPLERS[name].help}" for name in samplers)


def _sampling_steps(pipe: Any) -> int | None:
    """``hf-ddpm sample``'s steps for this model, or else the default of the pipeline's own call."""
    if default_sampling_steps is not None:
        return default_sampling_steps(pipe.scheduler.config.num_train_timesteps)
    default = inspect.signature(pipe.__call__).parameters.get("num_inference_steps")
    return default.default if default is not None and isinstance(default.default, int) else None


def num_classes(pipe: Any) -> int | None:
    """The classes the model draws (the embeddings before its null label), by hf_ddpm's layout, or by
    the model's own code's; a model whose code predates that function is offered every embedding."""
    num_class_embeds = getattr(pipe.unet.config, "num_class_embeds", None)
    layout = num_classes_of or _code_constant(pipe, "num_classes_of")
    return layout(num_class_embeds) if layout is not None else num_class_embeds


# --------------------------------------------------------------------------------------------------
# Describing the model
# --------------------------------------------------------------------------------------------------


def describe(pipe: Any, source: str) -> ModelState:
    """Move ``pipe`` to the best device and read what the page needs from its configs."""
    pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    unet_config = pipe.unet.config
    sample_size = unet_config.sample_size
    if not isinstance(sample_size, int):
        sample_size = int(sample_size[0])
    channels = int(unet_config.in_channels)
    classes = num_classes(pipe)
    num_bins, num_bins_source = data_num_bins(source)
    recorded = list(getattr(pipe.config, "class_names", None) or [])
    class_names = tuple(
        recorded[k] if k < len(recorded) else f"class {k}" for k in range(classes or 0)
    )
    streams = "callback_on_step_end" in inspect.signature(pipe.__call__).parameters
    loaded = LoadedModel(
        pipe=pipe,
        sample_size=sample_size,
        channels=channels,
        num_train_timesteps=int(pipe.scheduler.config.num_train_timesteps),
        num_classes=int(classes) if classes else None,
        variance_types=offered_variance_types(pipe),
        streams=streams,
        num_bins=num_bins,
        num_bins_source=num_bins_source,
        transform=upload_transform(channels, sample_size, num_bins),
        mask_transform=upload_transform(1, sample_size, _8_BIT_BINS),
        samplers=offered_samplers(pipe, streams),
        timestep_spacings=offered_timestep_spacings(pipe),
        class_names=class_names,
        trained_on=trained_on(source),
        sampling_steps=_sampling_steps(pipe),
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
        return describe(load_pipeline(model), model)
    except Exception as err:  # any failure becomes a message on the page, not a crash
        return ModelState(None, f"The model `{model}` failed to load: {type(err).__name__}: {err}")
