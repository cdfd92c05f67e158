"""``hf-ddpm evaluate``: the NLL bound in bits/dim, FID and FD_DINOv2 of a pipeline, as a JSON report.

The command and the importable functions do the same thing:

- :func:`evaluate_pipeline` takes a pipeline object and held-out images and returns the report (a dict);
- :func:`load_reference` reads a dataset split the way ``hf-ddpm train`` does;
- :func:`hf_ddpm.hub.metrics_card.push_metrics_to_hub` writes the metrics into a Hub model card's
  ``model-index`` (``--push-to-hub``);
- :func:`add_arguments` / :func:`run` are the subcommand.

Metrics: ``nll`` (Ho et al. 2020 eq. 5 over the held-out split, with the Table 4 breakdown into prior, rate
and distortion), ``fid`` (Inception features, Heusel et al. 2017) and ``fd-dinov2`` (DINOv2 features, Stein
et al. 2023). See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hf_ddpm.core.saving import write_atomically
from hf_ddpm.data.held_out import ReferenceData, add_data_arguments, load_reference
from hf_ddpm.hub.metrics_card import push_metrics_to_hub
from hf_ddpm.sampling.sample_folder import read_samples
from hf_ddpm.sampling.samplers import (
    DDPM_SAMPLER,
    SamplingChoice,
    default_sampling_steps,
    default_sampling_steps_in_words,
    sampling_scheduler,
)
from hf_ddpm.sampling.sharding import ProcessGroup, image_seed

from .bound import pipeline_model, unconditional_label
from .features import (
    DEFAULT_DINOV2_MODEL,
    FID_INSTALL,
    DinoV2Features,
    FeatureExtractor,
    InceptionFeatures,
    StatisticsKey,
    extract_features,
    reference_statistics,
)
from .frechet import feature_statistics, frechet_distance
from .nll import (
    NLLResult,
    combine_nll_results,
    exact_nll,
    importance_sampled_nll,
    term_means_proposal,
    terms_progress,
)

__all__ = [
    "METRICS",
    "EvaluationOptions",
    "ReferenceData",
    "add_arguments",
    "add_data_arguments",
    "build_extractors",
    "evaluate_pipeline",
    "format_table",
    "sampling_steps",
    "load_reference",
    "parse_metrics",
    "run",
]

METRICS = ("nll", "fid", "fd-dinov2")
_FRECHET_METRICS = ("fid", "fd-dinov2")
_GRID_MAX_IMAGES = 64


def parse_metrics(metrics: str | Sequence[str]) -> tuple[str, ...]:
    """``"nll,fid"`` or ``["nll", "fid"]`` -> validated, de-duplicated names in the given order.

    Raises:
        ValueError: an unknown name (the message lists the allowed ones) or an empty list.
    """
    names = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    names = [name.strip().lower() for name in names if name.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown} in --metrics; allowed: {', '.join(METRICS)}")
    if not names:
        raise ValueError(f"no metric given in --metrics; allowed: {', '.join(METRICS)}")
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class EvaluationOptions:
    """What :func:`evaluate_pipeline` computes and how; checked once, when built.

    Attributes:
        metrics: any of ``nll``, ``fid``, ``fd-dinov2``, as a tuple or a comma-separated string.
        num_samples: images generated for the Fréchet distances.
        num_inference_steps: sampling steps for those images; None for the scheduler's
            ``num_train_timesteps``. When given, the ``nll`` metric is the bound of that K-step chain (the
            scheduler's spacing and variance type), as Bao et al. 2022 report few-step NLLs.
        batch_size: images per pipeline call and per NLL batch.
        seed: seeds sampling and the NLL's noise.
        nll_timesteps: K for the importance-sampled NLL estimate; None for the exact T-term loop.
        nll_proposal: q(t) for that estimate (see :func:`hf_ddpm.evaluation.nll.proposal_probabilities`);
            uniform when None, unless ``nll_proposal_images`` > 0.
        nll_proposal_images: build q(t) from the per-term means of the exact loop on this many reference
            images (:func:`hf_ddpm.evaluation.nll.term_means_proposal`); far lower variance than uniform.
        stats_cache_dir: where reference statistics are cached (see
            :func:`hf_ddpm.evaluation.features.default_cache_dir`).
        grid_path: where to write a grid PNG of up to 64 samples; None for no grid. The grid reuses the
            Fréchet samples when there are any; otherwise its images are drawn with ``grid_steps``.
        grid_steps: sampling steps of a grid drawn for its own sake; None for ``num_inference_steps`` if
            given, else ``default_sampling_steps(T)``: a preview, not a metric.
        sampler, variance_type, timestep_spacing: how the Fréchet samples and the grid are drawn
            (``--sampler`` etc., :func:`hf_ddpm.sampling.samplers.sampling_scheduler`); the nll metric is
            always the bound of the model's own scheduler.
        samples: score this sample folder or evaluators' ``.npz`` (``--samples``) instead of drawing;
            only with a Fréchet metric, the one use of samples.
        samples_dir: draw the Fréchet samples into this sample folder (``--samples-dir``), which keeps
            them and resumes them (:mod:`hf_ddpm.sampling.sample_folder`); in memory when None. Only with
            a Fréchet metric too.

    Raises:
        ValueError: a bad metric name or a value out of range; the message names the option and its flag.
    """

    metrics: tuple[str, ...] | str = ("nll", "fd-dinov2")
    num_samples: int = 1000
    num_inference_steps: int | None = None
    batch_size: int = 64
    seed: int = 0
    nll_timesteps: int | None = None
    nll_proposal: Any = None
    nll_proposal_images: int = 0
    stats_cache_dir: str | Path | None = None
    grid_path: str | Path | None = None
    grid_steps: int | None = None
    sampler: str = DDPM_SAMPLER
    variance_type: str | None = None
    timestep_spacing: str | None = None
    samples: str | Path | None = None
    samples_dir: str | Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", parse_metrics(self.metrics))
        if self.frechet_metrics and self.num_samples < 2:
            raise ValueError(
                f"a Fréchet distance needs at least 2 samples; got num_samples={self.num_samples} "
                "(--num-samples)"
            )
        if self.grid_path is not None and self.num_samples < 1:
            raise ValueError(
                f"a sample grid needs num_samples (--num-samples) >= 1; got {self.num_samples}"
            )
        at_least = {
            "batch_size": (self.batch_size, 1),
            "num_inference_steps": (self.num_inference_steps, 1),
            "nll_timesteps": (self.nll_timesteps, 1),
            "nll_proposal_images": (self.nll_proposal_images, 0),
            "grid_steps": (self.grid_steps, 1),
        }
        for name, (value, low) in at_least.items():
            if value is not None and value < low:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{name} ({flag}) must be >= {low}; got {value}")
        kept = [
            flag
            for flag, value in (("--samples", self.samples), ("--samples-dir", self.samples_dir))
            if value is not None
        ]
        if kept and not self.frechet_metrics:
            raise ValueError(
                f"{' and '.join(kept)} hold the samples of the Fréchet metrics "
                f"({', '.join(_FRECHET_METRICS)}), and --metrics {','.join(self.metrics)} has none: add "
                f"one to --metrics or drop {' and '.join(kept)}"
            )
        if "nll" in self.metrics and None not in (self.nll_timesteps, self.num_inference_steps):
            raise ValueError(
                "the importance-sampled NLL (--nll-timesteps) samples the terms of the full T-step chain; "
                "the K-step chain of --num-inference-steps has only K terms: drop --nll-timesteps to "
                "evaluate them all"
            )

    @property
    def frechet_metrics(self) -> tuple[str, ...]:
        """The Fréchet metrics asked for, in order."""
        return tuple(name for name in self.metrics if name in _FRECHET_METRICS)


def build_extractors(
    metrics: Sequence[str],
    dinov2_model: str = DEFAULT_DINOV2_MODEL,
    inception_weights: str | None = None,
    device: str | torch.device | None = None,
) -> dict[str, FeatureExtractor]:
    """The feature extractor of each Fréchet metric in ``metrics``, built up front so a missing model or
    weights file fails before any long loop."""
    builders: dict[str, Callable[[], FeatureExtractor]] = {
        "fid": lambda: InceptionFeatures(inception_weights, device=device),
        "fd-dinov2": lambda: DinoV2Features(dinov2_model, device=device),
    }
    return {name: builders[name]() for name in metrics if name in builders}


def _model_resolution(pipe: Any) -> int:
    size = pipe.unet.config.sample_size
    return int(size if isinstance(size, int) else size[0])


def _to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [0, 1]: samples are scored as the 8-bit images that a
    sample folder or an evaluators' .npz holds."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255


@torch.no_grad()
def _generate(
    pipe: Any,
    choice: SamplingChoice,
    options: EvaluationOptions,
    num_samples: int,
    num_inference_steps: int,
    group: ProcessGroup,
    samples_dir: str | Path | None = None,
) -> torch.Tensor:
    """This process's share (indices ``rank, rank + world, ...``) of ``num_samples`` images in [0, 1],
    (n, C, H, W), drawn with the options' sampler (``choice``). Image ``i`` has its own generator, so the
    images are the same on any device, batch size and number of processes; with ``samples_dir`` they
    are kept in a resumable sample folder."""
    from hf_ddpm.sampling.sample_folder import (
        PipelineSampling,
        SampleFolderJob,
        write_sample_folder,
    )

    # A class-conditional CFG model is judged as the model of p(x): its null label, like the NLL.
    null = unconditional_label(pipe.unet, getattr(pipe.config, "null_class_label", None))
    own_scheduler, pipe.scheduler = pipe.scheduler, choice.scheduler
    pipe.set_progress_bar_config(disable=True)
    try:
        draw = PipelineSampling(pipe, choice.description, num_inference_steps, options.seed, null)
        if samples_dir is not None:
            job = SampleFolderJob(
                samples_dir,
                num_samples,
                options.batch_size,
                settings=draw.settings(),
                flag="--samples-dir",
                overwrite_flag=None,
            )
            write_sample_folder(draw, job, group)
            return _to_float(read_samples(samples_dir, group, limit=num_samples))
        mine = group.shard(range(num_samples))
        batches = [
            mine[i : i + options.batch_size] for i in range(0, len(mine), options.batch_size)
        ]
        bar = tqdm(total=len(mine), desc="sampling", unit="img", leave=False)
        with bar:
            drawn = []
            for batch in batches:
                drawn.append(draw(batch))
                bar.update(len(batch))
        return _to_float(np.concatenate(drawn))
    finally:
        pipe.scheduler = own_scheduler


def save_grid(images: torch.Tensor, path: str | Path) -> Path:
    """Save up to 64 images in [0, 1] (N, C, H, W) as a near-square grid PNG."""
    from hf_ddpm.data.image_grid import image_grid, save_png_atomically

    grid = image_grid(images[:_GRID_MAX_IMAGES].permute(0, 2, 3, 1).float().numpy())
    return save_png_atomically(grid, path)


def _check_nll_model(pipe: Any) -> None:
    if not hasattr(pipe.scheduler, "vlb_terms_bpd"):
        raise ValueError(
            f"the nll metric needs an HFDDPMScheduler (with vlb_terms_bpd); this pipeline has "
            f"{type(pipe.scheduler).__name__}. Load it with hf_ddpm.HFDDPMPipeline.from_pretrained, "
            "which converts a DDPMScheduler."
        )


def sampling_steps(pipe: Any, options: EvaluationOptions) -> tuple[int, int]:
    """``(steps of the Fréchet samples, steps of a grid drawn on its own)`` for ``pipe``'s scheduler.

    Raises:
        ValueError: either is more than the scheduler's ``num_train_timesteps``.
    """
    num_train_timesteps = int(pipe.scheduler.config.num_train_timesteps)
    steps = options.num_inference_steps or num_train_timesteps
    grid_steps = options.grid_steps or options.num_inference_steps
    grid_steps = grid_steps or default_sampling_steps(num_train_timesteps)
    for name, value in (("num_inference_steps", steps), ("grid_steps", grid_steps)):
        if value > num_train_timesteps:
            raise ValueError(
                f"{name} (--{name.replace('_', '-')}) must be in 1..{num_train_timesteps} (the "
                f"scheduler's num_train_timesteps); got {value}"
            )
    return steps, grid_steps


def evaluate_pipeline(
    pipe: Any,
    reference: ReferenceData,
    options: EvaluationOptions | None = None,
    extractors: dict[str, FeatureExtractor] | None = None,
    group: ProcessGroup | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Evaluate ``pipe`` (an ``HFDDPMPipeline`` or any pipeline with ``unet`` and ``scheduler``).

    Args:
        pipe: the pipeline; it is called as ``pipe(batch_size=, generator=, num_inference_steps=,
            output_type="pt")``.
        reference: held-out images (see :func:`load_reference`).
        options: what to compute (:class:`EvaluationOptions`); its defaults when None.
        extractors: feature extractors by metric; built by :func:`build_extractors` when missing.
        group: the processes that share the work (:func:`hf_ddpm.sampling.sharding.process_group`):
            each draws, extracts and bounds its share, and all of them get the whole report. One
            process when None.
        **overrides: fields of :class:`EvaluationOptions` that replace those of ``options``, e.g.
            ``evaluate_pipeline(pipe, reference, metrics="nll", seed=1)``.

    Returns:
        The report: ``metrics`` (one entry per metric), ``settings``, ``seed``, ``num_samples``, and
        ``sample_grid`` (the PNG path or None).

    Raises:
        ValueError: bad options, a resolution mismatch, or too many sampling steps for the scheduler.
    """
    options = dataclasses.replace(options or EvaluationOptions(), **overrides)
    group = group or ProcessGroup()
    names, frechet = options.metrics, options.frechet_metrics
    resolution = _model_resolution(pipe)
    if reference.resolution != resolution:
        raise ValueError(
            f"reference images are {reference.resolution}px but the model makes {resolution}px images"
        )
    if "nll" in names:
        _check_nll_model(pipe)
    num_train_timesteps = int(pipe.scheduler.config.num_train_timesteps)
    steps, grid_steps = sampling_steps(pipe, options)
    if extractors is None:
        extractors = build_extractors(frechet)
    missing = [name for name in frechet if name not in extractors]
    if missing:
        raise ValueError(f"no feature extractor given for {missing}")

    samples = None
    if (
        options.samples is not None
    ):  # read and checked first: a bad --samples is not worth an NLL pass
        samples = _to_float(read_samples(options.samples, group))
        _check_samples_shape(samples, reference, options.samples, group)

    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    if "nll" in names:
        start = time.perf_counter()
        results["nll"] = _nll(pipe, reference, options, group).to_dict()
        # The bound is always the model's own scheduler's, whatever the samples are drawn with.
        results["nll"]["variance_type"] = pipe.scheduler.config.get("variance_type")
        timings["nll_s"] = time.perf_counter() - start

    drawn = samples is None and (bool(frechet) or options.grid_path is not None)
    choice = (
        sampling_scheduler(pipe, options.sampler, options.variance_type, options.timestep_spacing)
        if drawn
        else None
    )
    if samples is None and frechet:
        start = time.perf_counter()
        samples = _generate(
            pipe, choice, options, options.num_samples, steps, group, options.samples_dir
        )
        timings["sampling_s"] = time.perf_counter() - start
    for name in frechet:
        results[name] = _frechet(extractors[name], samples, reference, resolution, options, group)

    grid = None
    if options.grid_path is not None:
        if samples is None:
            start = time.perf_counter()
            count = min(options.num_samples, _GRID_MAX_IMAGES)
            samples = _generate(pipe, choice, options, count, grid_steps, group)
            timings["grid_s"] = time.perf_counter() - start
        else:
            grid_steps = steps
        # The main process's share: every world-th image, up to 64.
        grid = save_grid(samples, options.grid_path) if group.is_main else options.grid_path
    return {
        "metrics": results,
        "settings": {
            "dataset": reference.name,
            "split": reference.split,
            "num_reference_images": len(reference.images),
            "num_bins": reference.num_bins,
            "resolution": resolution,
            "num_inference_steps": steps,
            "grid_inference_steps": None if grid is None else grid_steps,
            "num_train_timesteps": num_train_timesteps,
            "batch_size": options.batch_size,
            "nll_estimator": _describe_estimator(options),
            "scheduler": type(pipe.scheduler).__name__,
            # What the samples were drawn with (None where none were): the nll metric records the
            # variance of its bound itself.
            "sampler": options.sampler,
            "variance_type": None
            if choice is None
            else choice.scheduler.config.get("variance_type"),
            "timestep_spacing": None
            if choice is None
            else choice.scheduler.config.get("timestep_spacing"),
        },
        "seed": options.seed,
        "num_samples": group.sum(len(samples)) if frechet and samples is not None else 0,
        "samples": None if options.samples is None else str(options.samples),
        "num_processes": group.world,
        "timings": timings,
        "sample_grid": None if grid is None else str(grid),
    }


def _check_samples_shape(
    samples: torch.Tensor, reference: ReferenceData, path: str | Path, group: ProcessGroup
) -> None:
    error = None
    if len(samples) and samples.shape[1:] != reference.images.shape[1:]:
        c, h, w = samples.shape[1:]
        rc, rh, rw = reference.images.shape[1:]
        error = ValueError(
            f"--samples {path}: the images are {h}x{w}x{c} (H x W x C), the reference split's "
            f"{rh}x{rw}x{rc}"
        )
    group.agree(error)


def _gathered_features(
    extractor: FeatureExtractor, images: torch.Tensor, batch_size: int, group: ProcessGroup
) -> np.ndarray:
    """Features of every process's share, gathered in index order (share r holds r, r + world, ...)."""
    own = (
        extract_features(extractor, _Batches(images, batch_size), desc=extractor.name).cpu()
        if len(images)
        else None
    )
    shares = [share for share in group.gather(own) if share is not None]
    if not shares:
        raise ValueError("no images to extract features from")
    features = np.empty((sum(len(x) for x in shares), shares[0].shape[1]), dtype=np.float64)
    for rank, share in enumerate(shares):
        features[rank :: len(shares)] = share.double().numpy()
    return features


def _frechet(
    extractor: FeatureExtractor,
    samples: torch.Tensor,
    reference: ReferenceData,
    resolution: int,
    options: EvaluationOptions,
    group: ProcessGroup,
) -> dict[str, Any]:
    key = StatisticsKey(
        reference.name, reference.split, resolution, extractor.name, len(reference.images)
    )

    def reference_stats() -> Any:
        return reference_statistics(
            key,
            extractor,
            lambda: _Batches(reference.images, options.batch_size, transform=lambda x: (x + 1) / 2),
            cache_dir=options.stats_cache_dir,
        )

    # The main process fills the cache; the others then read it.
    ref_stats = reference_stats() if group.is_main else None
    group.barrier()
    ref_stats = ref_stats or reference_stats()
    gen_stats = feature_statistics(
        _gathered_features(extractor, samples, options.batch_size, group)
    )
    return {
        "value": frechet_distance(gen_stats, ref_stats),
        "num_samples": gen_stats.num_samples,
        "num_reference": ref_stats.num_samples,
        "feature_model": extractor.name,
        "feature_dim": gen_stats.dim,
    }


class _Batches:
    """``images`` in batches of ``batch_size``, each passed through ``transform``: an iterable with a
    length, so that progress bars over it show their total."""

    def __init__(
        self,
        images: torch.Tensor,
        batch_size: int,
        transform: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    ) -> None:
        self.images, self.batch_size, self.transform = images, batch_size, transform

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self.transform(x) for x in self.images.split(self.batch_size))


def _describe_estimator(options: EvaluationOptions) -> str:
    if options.nll_timesteps is None:
        return "exact"
    if options.nll_proposal is not None:
        source = "given"
    elif options.nll_proposal_images > 0:
        source = f"term means of {options.nll_proposal_images} images"
    else:
        source = "uniform"
    return f"importance-sampled (K={options.nll_timesteps}, q(t): {source})"


def _nll(
    pipe: Any, reference: ReferenceData, options: EvaluationOptions, group: ProcessGroup
) -> NLLResult:
    """The bound over the reference images, batch ``b`` drawing its noise from a generator seeded by
    ``(seed, b)`` alone: the processes take every world-th batch and the result is the same for any
    number of them."""
    device = pipe.unet.device
    model = pipeline_model(pipe)
    proposal = options.nll_proposal
    if options.nll_timesteps is not None and proposal is None and options.nll_proposal_images > 0:
        # a generator of its own, so that building the proposal does not shift the estimate's draws
        x = reference.images[: options.nll_proposal_images].to(device)
        proposal_generator = torch.Generator(device).manual_seed(options.seed + 1)
        proposal = term_means_proposal(
            model, pipe.scheduler, x, proposal_generator, reference.num_bins
        )
    batches = reference.images.split(options.batch_size)
    mine = group.shard(range(len(batches)))
    exact = options.nll_timesteps is None
    if exact:
        per_image = options.num_inference_steps or int(pipe.scheduler.config.num_train_timesteps)
        desc = "NLL (exact)"
    else:  # K sampled terms and the decoder's
        per_image, desc = options.nll_timesteps + 1, f"NLL (K={options.nll_timesteps})"
    own = []
    # One bar over this process's share, counting terms (an image at one timestep) as the network
    # evaluates them: a bar over batches stays at 0/1 for the whole run when one batch holds the set.
    with terms_progress([batches[b] for b in mine], per_image, desc) as done:
        for b in mine:
            common = {
                "num_bins": reference.num_bins,
                "generator": torch.Generator(device).manual_seed(image_seed(options.seed, b)),
                "progress": done,
            }
            x0 = [batches[b].to(device)]
            if exact:
                result = exact_nll(
                    model,
                    pipe.scheduler,
                    x0,
                    num_inference_steps=options.num_inference_steps,
                    **common,
                )
            else:
                result = importance_sampled_nll(
                    model, pipe.scheduler, x0, options.nll_timesteps, proposal, **common
                )
            own.append((b, result))
    results = [r for _, r in sorted(pair for share in group.gather(own) for pair in share)]
    return combine_nll_results(results)


def format_table(report: dict[str, Any]) -> str:
    """The metrics of a report as a short fixed-width table."""
    rows = [("metric", "value", "details")]
    metrics = report["metrics"]
    if "nll" in metrics:
        nll = metrics["nll"]
        rows.append(
            (
                "NLL (bits/dim)",
                f"<= {nll['bpd']:.4f} ± {nll['bpd_stderr']:.4f}",
                f"prior {nll['prior_bpd']:.4f}, rate {nll['rate_bpd']:.4f}, distortion "
                f"{nll['distortion_bpd']:.4f}; {nll['estimator']}, {nll['timesteps_per_image']} of "
                f"T={nll['num_train_timesteps']} steps/image, {nll['num_images']} images",
            )
        )
    for name, label in (("fid", "FID"), ("fd-dinov2", "FD_DINOv2")):
        if name in metrics:
            m = metrics[name]
            rows.append(
                (
                    label,
                    f"{m['value']:.4f}",
                    f"{m['num_samples']} samples vs {m['num_reference']} reference, {m['feature_model']}",
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}".rstrip() for r in rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``hf-ddpm evaluate`` options."""
    data = add_data_arguments(parser, "test", "held-out split")
    data.add_argument(
        "--max-reference-images",
        type=int,
        default=None,
        help="use only the first N images of the split",
    )
    parser.add_argument(
        "--metrics",
        default="nll,fd-dinov2",
        help=f"comma-separated, from {', '.join(METRICS)} (default: nll,fd-dinov2; fid needs the "
        f"eval extra, torch-fidelity and its Inception weights: {FID_INSTALL})",
    )
    parser.add_argument(
        "--num-samples", type=int, default=1000, help="generated images for FID/FD (default: 1000)"
    )
    parser.add_argument(
        "--samples",
        default=None,
        metavar="DIR_OR_NPZ",
        help="score these images (a sample folder of hf-ddpm sample --output-dir, or an evaluators' "
        ".npz with a uint8 arr_0) instead of drawing new ones",
    )
    parser.add_argument(
        "--samples-dir",
        default=None,
        metavar="DIR",
        help="draw the Fréchet samples into this sample folder, which keeps them; a rerun draws only "
        "the missing ones",
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="images per pipeline call and per NLL batch"
    )
    parser.add_argument(
        "--nll-timesteps",
        type=int,
        default=None,
        metavar="K",
        help="importance-sampled NLL from K timesteps per image (default: the exact T-step loop)",
    )
    parser.add_argument(
        "--nll-proposal-images",
        type=int,
        default=8,
        metavar="N",
        help="with --nll-timesteps: q(t) from the exact per-term means of N images; 0 for uniform",
    )
    parser.add_argument(
        "--dinov2-model",
        default=DEFAULT_DINOV2_MODEL,
        help="transformers DINOv2 model id or folder, for fd-dinov2",
    )
    parser.add_argument(
        "--inception-weights", default=None, help="FID Inception weights file (torch-fidelity's)"
    )
    parser.add_argument(
        "--stats-cache-dir", default=None, help="cache of reference feature statistics"
    )
    parser.add_argument("--output", default="evaluation.json", help="JSON report path")
    parser.add_argument(
        "--grid",
        default=None,
        metavar="PATH",
        help="also write a PNG grid of up to 64 samples (default: no grid). It reuses the Fréchet "
        "samples; with only nll it draws its own in --num-inference-steps steps, else "
        f"{default_sampling_steps_in_words()}",
    )
    parser.add_argument(
        "--no-grid",
        dest="grid",
        action="store_const",
        const=None,
        help="write no sample grid (the last of --grid and --no-grid wins)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``hf-ddpm evaluate``. Bad input is raised (``ValueError``, ``FileNotFoundError``,
    ``ImportError``) before any long loop, and cli.py reports it as one line with exit status 2.

    Under torchrun or ``accelerate launch`` every process takes its share of the work; the main one
    writes the report and pushes it."""
    from hf_ddpm.sampling.sharding import process_group
    from hf_ddpm.sampling.unet_speed import UNetSpeed, apply_unet_speed

    if args.samples is not None and args.samples_dir is not None:
        raise ValueError(
            "--samples scores existing images and --samples-dir keeps the ones drawn: give one"
        )
    options = EvaluationOptions(
        metrics=args.metrics,
        num_samples=args.num_samples,
        num_inference_steps=args.num_inference_steps,
        batch_size=args.batch_size,
        seed=args.seed,
        nll_timesteps=args.nll_timesteps,
        nll_proposal_images=args.nll_proposal_images,
        stats_cache_dir=args.stats_cache_dir,
        grid_path=args.grid or None,
        sampler=args.sampler,
        variance_type=args.variance_type,
        timestep_spacing=args.timestep_spacing,
        samples=args.samples,
        samples_dir=args.samples_dir,
    )
    speed = UNetSpeed(args.dtype, args.compile, args.channels_last)
    repo_id = args.hub_model_id or (None if Path(args.model).exists() else args.model)
    if args.push_to_hub and repo_id is None:
        raise ValueError("--push-to-hub with a local folder needs --hub-model-id")
    group = process_group(args.device)
    device = group.device
    extractors = build_extractors(
        options.metrics, args.dinov2_model, args.inception_weights, device
    )

    from hf_ddpm.core.pipeline import HFDDPMPipeline

    from .data_options import resolve_data_flags

    pipe = HFDDPMPipeline.from_pretrained(args.model).to(device)
    sampling_steps(pipe, options)  # fail before the reference images are read
    # and so does a sampler the model cannot honour
    sampling_scheduler(pipe, options.sampler, options.variance_type, options.timestep_spacing)
    resolve_data_flags(args, "evaluate")
    apply_unet_speed(pipe, speed, warmup_batch_size=options.batch_size)
    reference = load_reference(
        _model_resolution(pipe),
        args.dataset,
        args.train_data_dir,
        args.split,
        args.image_column,
        args.max_reference_images,
        skip_bad_images=args.skip_bad_images,
    )
    output = Path(args.output)
    report = evaluate_pipeline(pipe, reference, options, extractors, group=group)
    report["model"] = str(args.model)
    report["settings"]["device"] = str(device)
    report["settings"]["unet"] = speed.describe()
    if not group.is_main:
        return 0
    output.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(output, json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    print(
        f"report: {output}"
        + (f", samples: {report['sample_grid']}" if report["sample_grid"] else "")
    )
    if args.push_to_hub:
        url = push_metrics_to_hub(repo_id, report, token=args.hub_token)
        print(f"model card metrics updated: {url}")
    return 0
