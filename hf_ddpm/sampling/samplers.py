"""The samplers a trained model can be drawn with: one registry, read by ``hf-ddpm sample``, ``evaluate``,
the Space and the benchmarks.

Sampling policy lives here, not in ``core/``: a saved model runs its own scheduler, while which scheduler
to swap in, and with how many steps, is the command line's choice.

A new sampler is one entry of :data:`SAMPLERS`: it then appears in ``--sampler``'s choices and help, the
Space's dropdown and ``benchmarks/few_step.py`` without further edits.

A class is named the same way everywhere too: :func:`resolve_class_label` reads a name the model records or
a number, for ``hf-ddpm sample``, the edit commands and the Space (which gets this module with its copy
of hf_ddpm).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hf_ddpm.core.pipeline_base import check_covariance_head, expected_unet_out_channels
from hf_ddpm.core.schedules import SPACINGS
from hf_ddpm.core.scheduling import TIMESTEP_SPACINGS, HFDDPMScheduler
from hf_ddpm.core.scheduling_ddim import DDIM_VARIANCE_TYPES, HFDDIMScheduler
from hf_ddpm.core.variance import (
    HEAD_VARIANCE_TYPES,
    LEARNED_VARIANCE_TYPES,
    VARIANCE_TYPE_NAMES,
    AnalyticVariance,
)

# Steps a command samples with when not told (capped at T): `hf-ddpm sample`, the Fréchet samples and grid
# of `hf-ddpm evaluate`, and the sample grids of `hf-ddpm train`. One place, so a benchmark's choice
# changes them all.
DEFAULT_SAMPLING_STEPS = 100
# The model's own ancestral sampler: the default of --sampler, and the chain the edit commands (RePaint,
# SDEdit) run.
DDPM_SAMPLER = "ddpm"
SEED_RANGE = range(0, 2**64)  # what torch.Generator.manual_seed takes without wrapping around
# The spacings diffusers' own schedulers accept in set_timesteps ("optimal" is HFDDPMScheduler's).
DIFFUSERS_SPACINGS: tuple[str, ...] = tuple(s for s in TIMESTEP_SPACINGS if s != "optimal")


def default_sampling_steps(num_train_timesteps: int) -> int:
    """:data:`DEFAULT_SAMPLING_STEPS`, or T for a model with fewer training timesteps."""
    return min(DEFAULT_SAMPLING_STEPS, int(num_train_timesteps))


def steps_or_default(num_inference_steps: int | None, num_train_timesteps: int) -> int:
    """``num_inference_steps`` as given, or :func:`default_sampling_steps` where it is None. A given 0 stays
    0, for the caller's range check to refuse, rather than standing for the default."""
    if num_inference_steps is None:
        return default_sampling_steps(num_train_timesteps)
    return num_inference_steps


def image_class_labels(
    indices: Sequence[int], num_classes: int | None, class_label: int | None = None
) -> list[int] | None:
    """The class label of each image index a command draws (``hf-ddpm sample``'s grid and folders): the
    ``class_label`` asked for, else every class in turn (image ``i`` draws class ``i % num_classes``);
    None for an unconditional model (``num_classes`` None)."""
    if num_classes is None:
        return None
    if class_label is not None:
        return [class_label] * len(indices)
    return [i % num_classes for i in indices]


def default_sampling_steps_in_words() -> str:
    """:func:`default_sampling_steps` as the help of a steps option states its default."""
    return f"{DEFAULT_SAMPLING_STEPS}, or T if the model has fewer"


def resolve_class_label(pipeline: Any, label: str | int | None) -> int | None:
    """``--class-label`` (and the Space's class fields) as the integer label of ``pipeline``: a class name
    the model records (its ``class_names``: ``hf-ddpm train --class-from-folders`` keeps the folder
    names), else an integer; a ``ValueError`` naming the flag and the model's classes otherwise. The
    range is the caller's to check: sample's checks name its flags, the Space's its fields."""
    if label is None or isinstance(label, int):
        return label
    names = list(getattr(pipeline.config, "class_names", None) or [])
    if label in names:
        return names.index(label)
    try:
        return int(label)
    except ValueError:
        pass
    if names:
        listed = ", ".join(f"{name} ({i})" for i, name in enumerate(names))
        raise ValueError(f"--class-label {label!r} is not a class of this model: {listed}")
    raise ValueError(
        f"--class-label {label!r}: this model records no class names, so give the class as a number "
        "(models trained with hf-ddpm train --class-from-folders record their folder names)"
    )


def sampling_variance_type(config: Mapping[str, Any]) -> str:
    """The variance a model samples with unless told otherwise: "analytic" where its scheduler config
    carries ``eps_second_moment`` (Analytic-DPM's optimal variance, Bao et al. 2022 Theorem 1, the better
    one at few steps), else its own ``variance_type``. A learned variance keeps what it learned, and a
    covariance head's per-pixel variance ("sn", "npr") is kept over the scalar analytic one."""
    own = config["variance_type"]
    if config.get("eps_second_moment") is None or own in (
        *LEARNED_VARIANCE_TYPES,
        *HEAD_VARIANCE_TYPES,
    ):
        return own
    return AnalyticVariance.name


def scheduler_from_config(cls: type, config: Mapping[str, Any], **overrides: Any) -> Any:
    """``cls.from_config`` of the keys ``cls`` takes: diffusers would warn of every other one, printing
    the T floats of eps_second_moment."""
    taken = inspect.signature(cls.__init__).parameters
    return cls.from_config({k: v for k, v in config.items() if k in taken}, **overrides)


@dataclass(frozen=True)
class Sampler:
    """One choice of ``--sampler``.

    ``build(config, variance_type, timestep_spacing)`` makes the scheduler from the model's scheduler
    config; ``variance_type`` is None unless ``variance_types`` lists the choices this sampler has.
    """

    help: str
    build: Callable[[Mapping[str, Any], str | None, str], Any]
    variance_types: tuple[str, ...] = ()
    timestep_spacings: tuple[str, ...] = DIFFUSERS_SPACINGS
    origin: str = "diffusers"


def _ddpm(config: Mapping[str, Any], variance_type: str | None, spacing: str) -> Any:
    return HFDDPMScheduler.from_config(
        config, variance_type=variance_type, timestep_spacing=spacing
    )


def _ddim(config: Mapping[str, Any], variance_type: str | None, spacing: str) -> Any:
    # A value outside DDIM's choices can only be the model's own default (the flag's are checked): a
    # variance without a DDIM form (fixed_large, say) samples with DDIM's own.
    if variance_type not in DDIM_VARIANCE_TYPES:
        variance_type = "fixed_small"
    return scheduler_from_config(
        HFDDIMScheduler, config, variance_type=variance_type, timestep_spacing=spacing
    )


def _diffusers(name: str, **overrides: Any) -> Callable[[Mapping[str, Any], str | None, str], Any]:
    def build(config: Mapping[str, Any], variance_type: str | None, spacing: str) -> Any:
        import diffusers

        cls = getattr(diffusers, name)
        return scheduler_from_config(cls, {**config, "timestep_spacing": spacing}, **overrides)

    return build


SAMPLERS: dict[str, Sampler] = {
    DDPM_SAMPLER: Sampler(
        "ancestral sampling (Ho et al. 2020, Algorithm 2) with the model's HFDDPMScheduler",
        _ddpm,
        variance_types=VARIANCE_TYPE_NAMES,
        timestep_spacings=TIMESTEP_SPACINGS,
        origin="hf_ddpm",
    ),
    "ddim": Sampler(
        "DDIM (Song et al. 2021, eq. 12), eta 0, with HFDDIMScheduler: deterministic with fixed_small, "
        "the optimal variance of Analytic-DDIM (analytic) or of a covariance head (sn, npr) otherwise",
        _ddim,
        variance_types=DDIM_VARIANCE_TYPES,
        timestep_spacings=SPACINGS,
        origin="hf_ddpm",
    ),
    "diffusers-ddim": Sampler(
        "diffusers' DDIMScheduler, eta 0: deterministic (for comparison with ddim)",
        _diffusers("DDIMScheduler"),
    ),
    "dpm-solver++": Sampler(
        "DPM-Solver++ (Lu et al. 2022), multistep 2M",
        _diffusers("DPMSolverMultistepScheduler", algorithm_type="dpmsolver++", solver_order=2),
    ),
    "dpm-solver++-sde": Sampler(
        "SDE-DPM-Solver++ (Lu et al. 2022), multistep 2M, stochastic",
        _diffusers("DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++", solver_order=2),
    ),
    "unipc": Sampler(
        "UniPC (Zhao et al. 2023), multistep predictor-corrector",
        _diffusers("UniPCMultistepScheduler"),
    ),
}


def variance_type_choices() -> tuple[str, ...]:
    """Every ``--variance-type`` of some sampler, in registry order."""
    return tuple(dict.fromkeys(v for sampler in SAMPLERS.values() for v in sampler.variance_types))


def timestep_spacing_choices() -> tuple[str, ...]:
    """Every ``--timestep-spacing`` of some sampler, in registry order."""
    return tuple(
        dict.fromkeys(s for sampler in SAMPLERS.values() for s in sampler.timestep_spacings)
    )


@dataclass(frozen=True)
class SamplingChoice:
    """The scheduler a command swaps into the pipeline, and what its log line says of it."""

    scheduler: Any
    description: str


def _check_choice(flag: str, value: str | None, allowed: tuple[str, ...] | list[str]) -> None:
    if value is not None and value not in allowed:
        raise ValueError(f"{flag} must be one of {', '.join(allowed)}, got {value!r}")


def sampling_scheduler(
    pipeline: Any,
    sampler: str = DDPM_SAMPLER,
    variance_type: str | None = None,
    timestep_spacing: str | None = None,
) -> SamplingChoice:
    """The scheduler to sample ``pipeline`` with, built from its scheduler config by the registry entry.

    A sampler with variance choices defaults to :func:`sampling_variance_type` (analytic for a calibrated
    model); the others have no variance to choose.

    Raises:
        ValueError: an unknown name, or a combination the model or sampler cannot honour; the message
            names the flag.
    """
    _check_choice("--sampler", sampler, list(SAMPLERS))
    entry = SAMPLERS[sampler]
    config = dict(pipeline.scheduler.config)
    spacing = timestep_spacing or config["timestep_spacing"]
    if variance_type is not None and not entry.variance_types:
        with_variance = [name for name, s in SAMPLERS.items() if s.variance_types]
        raise ValueError(
            f"--variance-type is for --sampler {' or '.join(with_variance)}; {sampler} has no reverse "
            "variance to choose"
        )
    _check_choice("--variance-type", variance_type, entry.variance_types)
    if spacing not in entry.timestep_spacings:
        takers = [name for name, s in SAMPLERS.items() if spacing in s.timestep_spacings]
        raise ValueError(
            f"--timestep-spacing {spacing} is for --sampler {' or '.join(takers)}; {sampler} takes "
            f"{', '.join(entry.timestep_spacings)}"
        )
    variance = (variance_type or sampling_variance_type(config)) if entry.variance_types else None
    # A refusal names the flags the user gave, not the defaults they left alone.
    flags = " ".join(
        f"{flag} {value}"
        for flag, value in (
            ("--variance-type", variance_type),
            ("--timestep-spacing", timestep_spacing),
        )
        if value is not None
    )
    flags = flags or f"--sampler {sampler}"
    try:
        scheduler = entry.build(config, variance, spacing)
        channels = getattr(scheduler, "model_output_channels", None)
        needed = (
            expected_unet_out_channels(scheduler, pipeline.unet.config.in_channels)
            if channels
            else None
        )
        check_covariance_head(pipeline.unet, scheduler, getattr(pipeline, "covariance_head", None))
    except ValueError as error:
        raise ValueError(f"{flags}: {error}") from error
    if needed is not None and needed != pipeline.unet.config.out_channels:
        raise ValueError(
            f"--variance-type {variance} needs a network with {needed} output channels; this model's "
            f"has {pipeline.unet.config.out_channels} (it was trained for variance_type "
            f"{config['variance_type']!r})"
        )
    origin = "" if entry.origin == "hf_ddpm" else f" ({entry.origin})"
    parts = [f"{sampler} sampler{origin}"]
    if variance is not None:
        why = (
            " (the model's eps_second_moment)"
            if variance_type is None and variance != config["variance_type"]
            else ""
        )
        parts.append(f"{variance} variance{why}")
    parts.append(f"{spacing} spacing")
    return SamplingChoice(scheduler, ", ".join(parts))
