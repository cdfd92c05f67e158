"""Few-step sampling on the bundled model: quality, NLL bound and time against the number of steps K.

    python benchmarks/few_step.py --model hf_ddpm/pretrained/mnist-5k --num-samples 128 \
        --ks 10,25,50,100,1000 --cache docs/few-step-cells.json --json docs/few-step.json \
        --plot docs/few-step.png

Samplers, all on the same UNet and its null label (the model of p(x)), one per entry of ``hf-ddpm
sample``'s registry (``hf_ddpm.sampling.samplers.SAMPLERS``, built as the command line builds it), a
sampler with variance choices once per variance type a fixed-variance model runs (the head's types
where the model carries a covariance head):
- ``fixed_small`` / ``fixed_large``: HFDDPMScheduler (``--sampler ddpm``) with Ho et al.'s two fixed
  variances;
- ``analytic``: Analytic-DDPM's optimal variance (Bao et al. 2022) on the same even spacing;
- ``sn`` / ``npr``: SN-DDPM's and NPR-DDPM's per-pixel optimal variance from the covariance head
  (Bao et al., ICML 2022);
- ``ddim-fixed_small``, ``ddim-analytic``, ``ddim-sn``, ``ddim-npr``: our HFDDIMScheduler
  (``--sampler ddim``, eta = 0): plain DDIM, Analytic-DDIM, SN-DDIM and NPR-DDIM;
- ``diffusers-ddim``: diffusers' DDIMScheduler, eta = 0, for comparison;
- ``dpm-solver++`` / ``dpm-solver++-sde``: diffusers' DPMSolverMultistepScheduler, DPM-Solver++ 2M and
  its stochastic SDE variant;
- ``unipc``: diffusers' UniPCMultistepScheduler;

two on Analytic-DPM's optimal trajectory: ``analytic-optimal`` (``timestep_spacing="optimal"``) and
``dpm-solver++-optimal`` (passed as diffusers' ``timesteps=``; DDIMScheduler takes no custom timesteps in
diffusers 0.42); and ``npr-clip``, NPR-DDPM with the last noise-adding step's variance capped at 2 pixel
bins (the scheduler's ``analytic_clip_last_step``, the authors' ``--clip_sigma_idx 1 --clip_pixel 2``).

Per sampler and K: the digit judge's Fréchet distance and confident share on ``--num-samples``
unconditional samples (benchmarks/digit_quality.py), the K-step variational bound in bits/dim on
``--nll-images`` held-out digits (the ddpm sampler's rows only, whose scheduler has the bound's terms:
DDIM, ours included, and diffusers' solvers report none), and the sampling wall time per image. Each (sampler, K) cell is stored in ``--cache`` as
soon as it is measured, so an interrupted run continues where it stopped, and cells whose sampler is not
available (an ``analytic`` variance before the model is calibrated) are reported as missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from digit_quality import DigitJudge, generate, real_digits

# The contenders also measured on Analytic-DPM's optimal trajectory, as "<name>-optimal".
_ON_OPTIMAL_TRAJECTORY = ("analytic", "dpm-solver++")
_OPTIMAL = "optimal"
# The contenders also measured with the last noise-adding step's variance capped at 2 pixel bins, as
# "<name>-clip": the scheduler's analytic_clip_last_step (Bao et al.'s --clip_sigma_idx 1 --clip_pixel 2).
_WITH_LAST_STEP_CLIP = ("npr",)


@dataclass(frozen=True)
class Contender:
    """One row of the tables: a registry sampler, its variance type (None: it has none to choose),
    whether its timesteps are the optimal trajectory, and whether its last noise-adding step is clipped."""

    sampler: str
    variance_type: str | None = None
    optimal: bool = False
    clip_last_step: bool = False


def _fixed_variance_types(names: tuple[str, ...]) -> list[str]:
    """The variance types a fixed-variance model runs, each formula once: the bundled UNet has no variance
    channels, and diffusers' ``*_log`` names are the same formulas as their plain ones here."""
    from hf_ddpm.core.variance import VARIANCE_TYPES

    formulas: dict = {}
    for name in names:
        variance = VARIANCE_TYPES.get(name)
        if variance is None or not variance.learned:
            formulas.setdefault(getattr(variance, "columns", name), name)
    return list(formulas.values())


def contenders() -> dict[str, Contender]:
    """Every sampler of ``hf-ddpm sample``'s registry, by the name the tables give it: ddpm's by its
    variance type, another sampler with variance choices as ``sampler-variance``."""
    from hf_ddpm.sampling.samplers import SAMPLERS

    rows: dict[str, Contender] = {}
    for name, entry in SAMPLERS.items():
        if not entry.variance_types:
            rows[name] = Contender(name)
        for variance in _fixed_variance_types(entry.variance_types):
            rows[variance if name == "ddpm" else f"{name}-{variance}"] = Contender(name, variance)
    for name in _ON_OPTIMAL_TRAJECTORY:
        if name in rows:
            rows[f"{name}-{_OPTIMAL}"] = Contender(
                rows[name].sampler, rows[name].variance_type, True
            )
    for name in _WITH_LAST_STEP_CLIP:
        if name in rows:
            rows[f"{name}-clip"] = Contender(
                rows[name].sampler, rows[name].variance_type, False, True
            )
    return rows


def scheduler_for(contender: Contender, config: dict):
    """The contender's scheduler, from the model's own scheduler config, built by its registry entry as
    ``hf-ddpm sample --sampler`` builds it."""
    from hf_ddpm.sampling.samplers import SAMPLERS

    entry = SAMPLERS[contender.sampler]
    if contender.clip_last_step:
        # diffusers' from_config gives the keys a saved config lacked (_use_default_values) their default.
        defaults = [
            k for k in config.get("_use_default_values", []) if k != "analytic_clip_last_step"
        ]
        config = {**config, "analytic_clip_last_step": True, "_use_default_values": defaults}
    own_spacing = contender.optimal and _OPTIMAL in entry.timestep_spacings
    spacing = _OPTIMAL if own_spacing else config["timestep_spacing"]
    scheduler = entry.build(config, contender.variance_type, spacing)
    if contender.optimal and not own_spacing:
        _use_optimal_timesteps(scheduler, config)
    return scheduler


def _use_optimal_timesteps(scheduler, config: dict) -> None:
    """Make ``scheduler.set_timesteps(K)`` use Analytic-DPM's optimal trajectory, through diffusers' own
    ``timesteps=`` argument (DPMSolverMultistepScheduler has one; DDIMScheduler does not)."""
    from hf_ddpm.core.analytic import optimal_timesteps

    alphas_cumprod = scheduler.alphas_cumprod.double().numpy()
    original = scheduler.set_timesteps

    def set_timesteps(num_inference_steps=None, device=None, **_):
        steps = optimal_timesteps(alphas_cumprod, config["eps_second_moment"], num_inference_steps)
        original(device=device, timesteps=steps)

    scheduler.set_timesteps = set_timesteps


def measure_samples(pipeline, judge, name, contender, k, args) -> dict:
    """Judge figures and wall time of ``--num-samples`` unconditional samples in K steps."""
    scheduler = scheduler_for(contender, dict(pipeline.scheduler.config))
    pipeline = type(pipeline)(
        unet=pipeline.unet, scheduler=scheduler, covariance_head=pipeline.covariance_head
    )
    pipeline.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    images = generate(pipeline, args.num_samples, k, args.seed)
    seconds = time.perf_counter() - start
    return {
        "sampler": name,
        "k": k,
        **judge.judge(images),
        "seconds_per_image": seconds / len(images),
    }


def defines_bound(contender: Contender, config: dict) -> bool:
    """Whether the contender's chain has a variational bound we evaluate: its scheduler has the bound's
    terms (``vlb_terms_bpd``: the ddpm sampler's HFDDPMScheduler). DDIM (ours, even with an optimal
    variance) and diffusers' solvers have none, and report no bound."""
    return hasattr(scheduler_for(contender, config), "vlb_terms_bpd")


def measure_bound(pipeline, contender, k, args, held_out) -> dict:
    """The K-step variational bound of the contender's chain on the held-out digits (SN / NPR: eps and
    the head's second moment from one UNet call, as the pipeline samples)."""
    from hf_ddpm import variational_bound
    from hf_ddpm.core.variance import HEAD_VARIANCE_TYPES
    from hf_ddpm.evaluation.bound import unconditional_model

    head = pipeline.covariance_head if contender.variance_type in HEAD_VARIANCE_TYPES else None
    model = unconditional_model(pipeline.unet, pipeline.config.null_class_label, head)
    bound = variational_bound(
        model,
        scheduler_for(contender, dict(pipeline.scheduler.config)),
        held_out,
        generator=torch.Generator().manual_seed(args.seed),
        num_inference_steps=k,
    )
    total = bound.total_bpd
    return {"nll_bpd": float(total.mean()), "nll_stderr": float(total.std() / len(total) ** 0.5)}


def _load(path: Path | None) -> dict:
    return json.loads(path.read_text()) if path and path.is_file() else {}


def _save(path: Path | None, cells: dict) -> None:
    """Write ``cells`` over what the file holds now, so that runs sharing one cache keep each other's."""
    if path is None:
        return
    merged = _load(path)
    for key, cell in cells.items():
        merged.setdefault(key, {}).update(cell)
    cells.update(merged)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(merged, indent=1) + "\n")
    os.replace(tmp, path)


def table(cells: dict, samplers, ks) -> str:
    def fmt(cell, key, spec):
        return format(cell[key], spec) if cell and key in cell else "-"

    lines = []
    for key, title, spec in [
        ("frechet", "Fréchet distance in the judge's features (lower is better)", ".1f"),
        ("confident", "confident share (p >= 0.9; higher is better)", ".1%"),
        ("nll_bpd", "K-step NLL bound on held-out digits, bits/dim (lower is better)", ".3f"),
        ("seconds_per_image", "sampling wall time, seconds per image", ".3f"),
    ]:
        lines += [f"**{title}**", "", "| sampler | " + " | ".join(f"K={k}" for k in ks) + " |"]
        lines.append("| --- |" + " --- |" * len(ks))
        for name in samplers:
            row = [fmt(cells.get(f"{name}@{k}"), key, spec) for k in ks]
            lines.append(f"| {name} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(cells: dict, samplers, ks, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    rows = contenders()
    # More rows than a default colour cycle: 20 colours, and DDPM chains solid, the others dashed.
    colours = plt.get_cmap("tab20").colors
    for index, name in enumerate(samplers):
        got = [(k, cells[f"{name}@{k}"]) for k in ks if f"{name}@{k}" in cells]
        if not got:
            continue
        style = {
            "color": colours[(2 * index) % 20 + (2 * index) // 20 % 2],
            "linestyle": "-" if rows[name].sampler == "ddpm" else "--",
            "marker": "o" if rows[name].sampler == "ddpm" else "s",
        }
        axes[0].plot([k for k, _ in got], [c["frechet"] for _, c in got], label=name, **style)
        bounded = [(k, c["nll_bpd"]) for k, c in got if "nll_bpd" in c]
        if bounded:
            axes[1].plot(*zip(*bounded, strict=True), label=name, **style)
    for ax, ylabel in zip(axes, ["Fréchet distance (judge features)", "NLL bound (bits/dim)"]):
        ax.set_xscale("log")
        ax.set_xlabel("sampling steps K (UNet calls)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")  # fixed_small's few-step bound is tens of bits/dim
    axes[0].legend(fontsize=8)
    fig.suptitle("Bundled mnist-5k model: quality against steps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="a pipeline folder or repo; the bundled model"
    )
    rows = contenders()
    parser.add_argument("--samplers", default=",".join(rows))
    parser.add_argument("--ks", default="10,25,50,100,1000")
    parser.add_argument("--num-samples", type=int, default=128)
    parser.add_argument("--nll-images", type=int, default=100, help="held-out digits; 0 skips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=None, help="JSON of measured cells")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--table-only", action="store_true", help="only report the cached cells")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    samplers = [s for s in args.samplers.split(",") if s]
    unknown = sorted(set(samplers) - set(rows))
    if unknown:
        parser.error(f"--samplers: unknown {unknown}; choose from {', '.join(rows)}")
    ks = [int(k) for k in args.ks.split(",")]
    cells = _load(args.cache)
    if not args.table_only:
        from hf_ddpm import HFDDPMPipeline
        from hf_ddpm.hub.bundled import BUNDLED_MODEL_DIR

        pipeline = HFDDPMPipeline.from_pretrained(args.model or BUNDLED_MODEL_DIR)
        pipeline.set_progress_bar_config(disable=True)
        judge = DigitJudge.train()
        held_out = torch.from_numpy(real_digits("test")[0][: args.nll_images]).float()
        held_out = held_out.view(-1, 1, 32, 32)
        # Interleaved: every sampler at one K before the next K, so machine noise hits all alike.
        for k in ks:
            for name in samplers:
                key = f"{name}@{k}"
                try:
                    contender = rows[name]
                    if key not in cells:
                        cells[key] = measure_samples(pipeline, judge, name, contender, k, args)
                    if (
                        args.nll_images
                        and "nll_bpd" not in cells[key]
                        and defines_bound(contender, dict(pipeline.scheduler.config))
                    ):
                        cells[key].update(measure_bound(pipeline, contender, k, args, held_out))
                except (ValueError, TypeError) as error:  # e.g. an uncalibrated analytic variance
                    print(f"{key}: not measured yet: {error}")
                    continue
                finally:
                    _save(args.cache, cells)
                print(key, json.dumps(cells[key]), flush=True)
    report = {
        "command": "python benchmarks/few_step.py " + " ".join(os.sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {args.threads} thread(s)",
        "date": time.strftime("%Y-%m-%d"),
        "num_samples": args.num_samples,
        "nll_images": args.nll_images,
        "cells": cells,
    }
    text = table(cells, samplers, ks)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.plot:
        plot(cells, samplers, ks, args.plot)


if __name__ == "__main__":
    main()
