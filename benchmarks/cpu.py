"""CPU benchmarks: hf_ddpm against diffusers on identical work, in one process run (issue 8).

    python benchmarks/cpu.py [--quick] [--json FILE] [--threads N] [--no-memory] [--baseline-rev REV]

Every figure is a ratio measured in one run: the contenders are interleaved (block by block, or run by run in
alternating order) and each time is the median over repeats after a warm-up, because these 2-core machines are
shared and a single timing can be off by 2x. Before a time is reported the outputs are compared, so a fast
wrong answer cannot win. Sections:

- scheduler step: ``HFDDPMScheduler.step`` vs ``DDPMScheduler.step`` over a full T-step loop, with the floor
  (one ``randn`` plus one fused multiply-add of the same shape), and with ``--baseline-rev REV`` the
  ``HFDDPMScheduler`` of ``hf_ddpm/core`` as it was at git revision REV, in the same interleaved run;
- NLL: ``hf_ddpm.variational_bound`` (T terms, batched across timesteps) vs a naive loop of T batch-B calls
  (improved-diffusion's ``calc_bpd_loop``);
- sampling: ``HFDDPMPipeline`` vs ``DDPMPipeline`` with the same UNet weights, seed and steps;
- training: hf_ddpm's own ``TrainingStep.optimizer_step`` vs a loop written like diffusers'
  ``train_unconditional.py`` example (both in benchmarks/harness.py);
- peak memory of each contender, measured in a fresh subprocess (see ``_probe_memory``).

The JSON (``--json``) holds every figure; the table on stdout is the summary. docs/benchmarks.md explains them.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import harness
import torch
from harness import DiffusersExampleTraining, PackageTraining, build_unet, fmt, render_table

# Benchmarks never touch the network (set before diffusers imports huggingface_hub).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Sizes(harness.Sizes):
    """Problem sizes of one mode; ``full`` is what docs/benchmarks.md reports."""

    step_shape: tuple[int, int, int, int]
    step_timesteps: int
    step_repeats: int  # full T-step loops per contender; the first is the warm-up
    step_block: int  # steps timed per contender before switching to the next
    channels: int
    sample_steps: tuple[int, ...]
    sample_repeats: tuple[int, ...]  # timed runs per contender for each entry of sample_steps
    nll_images: int
    nll_timesteps: int
    nll_repeats: int
    nll_max_batch: int


FULL = Sizes(
    step_shape=(16, 3, 32, 32),
    step_timesteps=1000,
    step_repeats=4,
    step_block=50,
    resolution=32,
    channels=3,
    sample_batch=16,
    sample_steps=(50, 1000),
    sample_repeats=(3, 2),
    train_batch=16,
    train_warmup=2,
    train_steps=10,
    nll_images=2,
    nll_timesteps=1000,
    nll_repeats=2,
    nll_max_batch=256,
)
QUICK = Sizes(
    step_shape=(2, 3, 8, 8),
    step_timesteps=20,
    step_repeats=2,
    step_block=5,
    resolution=8,
    channels=3,
    sample_batch=2,
    sample_steps=(4, 10),
    sample_repeats=(1, 1),
    train_batch=2,
    train_warmup=1,
    train_steps=2,
    nll_images=2,
    nll_timesteps=10,
    nll_repeats=1,
    nll_max_batch=8,
)

# A small UNet2DModel: at these sizes the UNet still dominates sampling and training, but one forward pass
# costs milliseconds rather than seconds on a shared 2-core machine.
UNET_CONFIG: dict[str, Any] = {
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D"),
    "norm_num_groups": 4,
}
# Outputs must agree this closely before a time counts (ours keeps the schedule in float64, diffusers in
# float32, so they differ in the last float32 bits; a wrong formula misses by orders of magnitude).
STEP_TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}
IMAGE_ATOL = 1e-3  # images in [0, 1]
NLL_RTOL = 1e-4


# ----------------------------------------------------------------------------------------------- helpers


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of timed values, so the JSON shows how noisy each figure was."""
    return {"median": _median(values), "min": min(values), "max": max(values), "n": len(values)}


def _unet(sizes: Sizes, seed: int = 0) -> Any:
    return build_unet(sizes.resolution, sizes.channels, config=UNET_CONFIG, seed=seed)


def _data(sizes: Sizes, batch: int, seed: int) -> torch.Tensor:
    """Images on the 8-bit grid in [-1, 1], like real data (the discretised decoder needs the grid)."""
    generator = torch.Generator().manual_seed(seed)
    levels = torch.randint(
        0, 256, (batch, sizes.channels, sizes.resolution, sizes.resolution), generator=generator
    )
    return levels.float() / 127.5 - 1.0


# ------------------------------------------------------------------------------------- scheduler step


class _StepLoop:
    """One contender's T-step loop, advanced a block of steps at a time so contenders can interleave."""

    def __init__(
        self,
        name: str,
        step: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor],
        restart: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._step = step
        # A scheduler with diffusers' step index needs to be told that its chain starts again.
        self._restart = restart
        self.per_step_s: list[float] = []

    def start(self, x_T: torch.Tensor, timesteps: torch.Tensor) -> None:
        if self._restart is not None:
            self._restart()
        self.sample = x_T
        self.generator = torch.Generator().manual_seed(1234)
        self._timesteps = list(timesteps)
        self._position = 0

    def run_block(self, n: int, record: bool) -> None:
        block = self._timesteps[self._position : self._position + n]
        sample, generator, step = self.sample, self.generator, self._step
        start = time.perf_counter()
        for t in block:
            sample = step(sample, t, generator)
        elapsed = time.perf_counter() - start
        self.sample = sample
        self._position += len(block)
        if record and block:
            self.per_step_s.append(elapsed / len(block))


def _scheduler_contenders(sizes: Sizes) -> tuple[Any, Any, torch.Tensor, torch.Tensor]:
    from diffusers import DDPMScheduler

    from hf_ddpm.core.scheduling import HFDDPMScheduler

    ours = HFDDPMScheduler(num_train_timesteps=sizes.step_timesteps)
    theirs = DDPMScheduler(num_train_timesteps=sizes.step_timesteps)
    ours.set_timesteps(sizes.step_timesteps)
    theirs.set_timesteps(sizes.step_timesteps)
    # A fixed "model output": the step's cost does not depend on its values.
    model_output = torch.randn(sizes.step_shape, generator=torch.Generator().manual_seed(1))
    x_T = torch.randn(sizes.step_shape, generator=torch.Generator().manual_seed(2))
    return ours, theirs, model_output, x_T


def _scheduler_at_revision(rev: str) -> type:
    """``HFDDPMScheduler`` as ``hf_ddpm/core`` was at git revision ``rev``. Core is flat and its modules
    import only each other (``from .x import``), so its files at ``rev`` load as one package of another
    name beside today's."""
    import importlib

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    names = subprocess.run(
        ["git", "-C", repo, "ls-tree", "--name-only", rev, "hf_ddpm/core/"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    root = tempfile.mkdtemp(prefix="hf_ddpm-core-")
    package = "core_at_" + "".join(c if c.isalnum() else "_" for c in rev)
    os.mkdir(os.path.join(root, package))
    for name in names:
        if name.endswith(".py"):
            source = subprocess.run(
                ["git", "-C", repo, "show", f"{rev}:{name}"], check=True, capture_output=True
            ).stdout
            with open(os.path.join(root, package, os.path.basename(name)), "wb") as f:
                f.write(source)
    sys.path.insert(0, root)
    return importlib.import_module(f"{package}.scheduling").HFDDPMScheduler


def _step_loops(
    sizes: Sizes, baseline_rev: str | None = None
) -> tuple[list[_StepLoop], torch.Tensor, torch.Tensor]:
    ours, theirs, model_output, x_T = _scheduler_contenders(sizes)
    shape = sizes.step_shape

    def _floor(sample: torch.Tensor, t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(shape, generator=generator)
        return torch.add(sample, noise, alpha=0.01)

    loops = [
        _StepLoop(
            "hf_ddpm",
            lambda x, t, g: ours.step(model_output, t, x, generator=g).prev_sample,
            restart=lambda: ours.set_begin_index(0),
        ),
        _StepLoop(
            "diffusers",
            lambda x, t, g: theirs.step(model_output, t, x, generator=g).prev_sample,
        ),
        _StepLoop("floor", _floor),
    ]
    if baseline_rev is not None:
        baseline = _scheduler_at_revision(baseline_rev)(num_train_timesteps=sizes.step_timesteps)
        baseline.set_timesteps(sizes.step_timesteps)
        loops.append(
            _StepLoop(
                f"hf_ddpm@{baseline_rev}",
                lambda x, t, g: baseline.step(model_output, t, x, generator=g).prev_sample,
                restart=lambda: baseline.set_timesteps(sizes.step_timesteps),
            )
        )
    return loops, x_T, ours.timesteps


def bench_scheduler_step(sizes: Sizes, baseline_rev: str | None = None) -> dict[str, Any]:
    """Per-step time of each scheduler over full T-step loops, interleaved in blocks of steps."""
    loops, x_T, timesteps = _step_loops(sizes, baseline_rev)
    ours, theirs = loops[0], loops[1]
    max_diff = 0.0
    for repeat in range(sizes.step_repeats):
        for loop in loops:
            loop.start(x_T, timesteps)
        for block in range(0, len(timesteps), sizes.step_block):
            # Rotate the order so that no contender always runs right after another one.
            k = (block // sizes.step_block + repeat) % len(loops)
            for loop in loops[k:] + loops[:k]:
                loop.run_block(sizes.step_block, record=repeat > 0)
        for other in [theirs, *loops[3:]]:
            diff = (ours.sample - other.sample).abs().max().item()
            max_diff = max(max_diff, diff)
            if not torch.allclose(ours.sample, other.sample, **STEP_TOLERANCE):
                raise AssertionError(
                    f"scheduler outputs of hf_ddpm and {other.name} differ after {len(timesteps)} "
                    f"steps: max |diff| = {diff:.3g}"
                )
    per_step = {loop.name: _median(loop.per_step_s) for loop in loops}
    baseline = {}
    if baseline_rev is not None:
        baseline = {
            "baseline_rev": baseline_rev,
            "baseline_ratio": per_step["hf_ddpm"] / per_step[f"hf_ddpm@{baseline_rev}"],
        }
    return {
        **baseline,
        "shape": list(sizes.step_shape),
        "num_steps": len(timesteps),
        "per_step_us": {loop.name: 1e6 * per_step[loop.name] for loop in loops},
        "per_step_us_spread": {
            loop.name: {k: v * 1e6 if k != "n" else v for k, v in _spread(loop.per_step_s).items()}
            for loop in loops
        },
        "outputs_match": True,
        "max_abs_diff": max_diff,
        "tolerance": STEP_TOLERANCE,
        "speedup": per_step["diffusers"] / per_step["hf_ddpm"],
        "floor_ratio": per_step["hf_ddpm"] / per_step["floor"],
        "diffusers_floor_ratio": per_step["diffusers"] / per_step["floor"],
        "profile": _profile_step(sizes),
    }


def _profile_step(sizes: Sizes, steps: int = 100) -> list[dict[str, Any]]:
    """Self CPU time of each torch op inside ``HFDDPMScheduler.step`` (torch.profiler), per step.

    The profiler's own overhead inflates every op alike; the shares say where the time goes."""
    from torch.profiler import ProfilerActivity, profile

    ours, _, model_output, x_T = _scheduler_contenders(sizes)
    timesteps = list(ours.timesteps[: min(steps, len(ours.timesteps) - 1)])
    generator = torch.Generator().manual_seed(0)
    sample = x_T
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for t in timesteps:
            sample = ours.step(model_output, t, sample, generator=generator).prev_sample
    rows = [
        {
            "op": event.key,
            "calls_per_step": event.count / len(timesteps),
            "self_cpu_us_per_step": event.self_cpu_time_total / len(timesteps),
        }
        for event in prof.key_averages()
    ]
    rows.sort(key=lambda row: -row["self_cpu_us_per_step"])
    return rows[:12]


# ------------------------------------------------------------------------------------------------ NLL


@torch.no_grad()
def naive_bound(
    model: Any, scheduler: Any, x0: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """The T-term bound as improved-diffusion's ``calc_bpd_loop`` computes it: one batch-B call per t.

    Draws the noise in the same order as ``variational_bound`` (t ascending, batch-B blocks), so both see
    the same x_t when the generator's stream splits evenly, and the terms can be compared."""
    batch = x0.shape[0]
    num_timesteps = scheduler.config.num_train_timesteps
    terms = torch.empty(batch, num_timesteps, dtype=torch.float64)
    for step in range(num_timesteps):
        t = torch.full((batch,), step, dtype=torch.long)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        x_t = scheduler.add_noise(x0, noise, t)
        out = model(x_t, t).sample
        terms[:, step] = scheduler.vlb_terms_bpd(out, x0, x_t, t).double()
    return scheduler.prior_bpd(x0).double() + terms.sum(1)


def _nll_setup(sizes: Sizes, timesteps: int | None = None) -> tuple[Any, Any, torch.Tensor]:
    from hf_ddpm.core.scheduling import HFDDPMScheduler

    scheduler = HFDDPMScheduler(num_train_timesteps=timesteps or sizes.nll_timesteps)
    return _unet(sizes), scheduler, _data(sizes, sizes.nll_images, seed=3)


def bench_nll(sizes: Sizes) -> dict[str, Any]:
    from hf_ddpm import variational_bound

    unet, scheduler, x0 = _nll_setup(sizes)

    def chunked() -> torch.Tensor:
        generator = torch.Generator().manual_seed(5)
        bound = variational_bound(
            unet, scheduler, x0, generator=generator, max_batch_size=sizes.nll_max_batch
        )
        return bound.total_bpd

    def naive() -> torch.Tensor:
        return naive_bound(unet, scheduler, x0, torch.Generator().manual_seed(5))

    # Warm-up on a short chain: the first calls pay for allocator growth and lazy initialisation.
    warm_scheduler = type(scheduler)(num_train_timesteps=4)
    variational_bound(unet, warm_scheduler, x0, max_batch_size=sizes.nll_max_batch)
    naive_bound(unet, warm_scheduler, x0, torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {"chunked": [], "naive": []}
    results: dict[str, torch.Tensor] = {}
    for repeat in range(sizes.nll_repeats):
        order = [("chunked", chunked), ("naive", naive)]
        for name, fn in order if repeat % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    # Each L_t is a one-sample Monte Carlo term; with the same x_t both loops must give the same total
    # up to the UNet's batch-size-dependent float32 rounding.
    same = torch.allclose(results["chunked"], results["naive"], rtol=NLL_RTOL, atol=0)
    if not same:
        raise AssertionError(
            f"NLL totals differ: chunked {results['chunked'].tolist()} vs naive {results['naive'].tolist()}"
        )
    median = {name: _median(values) for name, values in times.items()}
    return {
        "images": sizes.nll_images,
        "num_train_timesteps": sizes.nll_timesteps,
        "image_shape": [sizes.channels, sizes.resolution, sizes.resolution],
        "max_batch_size": sizes.nll_max_batch,
        "seconds": {name: _spread(values) for name, values in times.items()},
        "images_per_s": sizes.nll_images / median["chunked"],
        "naive_images_per_s": sizes.nll_images / median["naive"],
        "chunking_speedup": median["naive"] / median["chunked"],
        "outputs_match": True,
        "total_bpd": results["chunked"].tolist(),
        "max_rel_diff": ((results["chunked"] - results["naive"]).abs() / results["naive"].abs())
        .max()
        .item(),
    }


# ------------------------------------------------------------------------------------------- sampling


def _pipelines(sizes: Sizes) -> tuple[Any, Any, Any]:
    from diffusers import DDPMPipeline, DDPMScheduler

    from hf_ddpm.core.pipeline import HFDDPMPipeline
    from hf_ddpm.core.scheduling import HFDDPMScheduler

    unet = _unet(sizes)
    ours = HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler())
    theirs = DDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    # Our pipeline driven by diffusers' scheduler: it must give diffusers' images bit for bit.
    ours_with_theirs = HFDDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    for pipe in (ours, theirs, ours_with_theirs):
        pipe.set_progress_bar_config(disable=True)
    return ours, theirs, ours_with_theirs


def _sample(pipe: Any, sizes: Sizes, steps: int) -> Any:
    generator = torch.Generator().manual_seed(7)
    return pipe(
        batch_size=sizes.sample_batch,
        generator=generator,
        num_inference_steps=steps,
        output_type="np",
    ).images


def bench_sampling(sizes: Sizes) -> dict[str, Any]:
    import numpy as np

    ours, theirs, ours_with_theirs = _pipelines(sizes)
    _sample(ours, sizes, 2)
    _sample(theirs, sizes, 2)
    shortest = min(sizes.sample_steps)
    same_scheduler_diff = float(
        np.abs(_sample(ours_with_theirs, sizes, shortest) - _sample(theirs, sizes, shortest)).max()
    )
    if same_scheduler_diff != 0.0:
        raise AssertionError(
            f"HFDDPMPipeline with DDPMScheduler differs from DDPMPipeline by {same_scheduler_diff}"
        )
    by_steps: dict[str, Any] = {}
    for steps, repeats in zip(sizes.sample_steps, sizes.sample_repeats):
        times: dict[str, list[float]] = {"hf_ddpm": [], "diffusers": []}
        images: dict[str, Any] = {}
        order = [("hf_ddpm", ours), ("diffusers", theirs)]
        for repeat in range(repeats):
            for name, pipe in order if repeat % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                images[name] = _sample(pipe, sizes, steps)
                times[name].append(time.perf_counter() - start)
        diff = float(np.abs(images["hf_ddpm"] - images["diffusers"]).max())
        if diff > IMAGE_ATOL:
            raise AssertionError(f"{steps}-step samples differ by {diff} (> {IMAGE_ATOL})")
        median = {name: _median(values) for name, values in times.items()}
        by_steps[str(steps)] = {
            "seconds": {name: _spread(values) for name, values in times.items()},
            "speedup": median["diffusers"] / median["hf_ddpm"],
            "max_abs_image_diff": diff,
            "outputs_match": True,
        }
    return {
        "batch": sizes.sample_batch,
        "image_shape": [sizes.channels, sizes.resolution, sizes.resolution],
        "by_steps": by_steps,
        "same_scheduler_max_abs_diff": same_scheduler_diff,
        "image_atol": IMAGE_ATOL,
        "speedup": by_steps[str(max(sizes.sample_steps))]["speedup"],
        "outputs_match": True,
    }


# ------------------------------------------------------------------------------------------- training


# Training runs on grey images (one channel), as the figures in docs/benchmarks.md were measured.
TRAIN_CHANNELS = 1


def _training_contenders(
    sizes: Sizes, workdir: str
) -> tuple[PackageTraining, DiffusersExampleTraining, torch.Tensor]:
    ours = PackageTraining(
        workdir, sizes.resolution, TRAIN_CHANNELS, sizes.train_batch, unet_config=UNET_CONFIG
    )
    theirs = DiffusersExampleTraining(ours.initial_state(), dict(ours.setup.unet_config))
    shape = (sizes.train_batch, TRAIN_CHANNELS, sizes.resolution, sizes.resolution)
    x0 = torch.rand(shape, generator=torch.Generator().manual_seed(11)) * 2 - 1
    return ours, theirs, x0


def _same_objective(ours: PackageTraining, theirs: Any, x0: torch.Tensor) -> float:
    """|our L_simple - F.mse_loss| on one forward pass of the same weights, x_t and t."""
    import torch.nn.functional as F

    scheduler = ours.setup.scheduler
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(12))
    t = torch.randint(0, 1000, (x0.shape[0],), generator=torch.Generator().manual_seed(13))
    x_t = scheduler.add_noise(x0, noise, t)
    x_t_theirs = theirs.noise_scheduler.add_noise(x0, noise, t)
    if not torch.allclose(x_t, x_t_theirs, **STEP_TOLERANCE):
        raise AssertionError("hf_ddpm and diffusers add_noise disagree")
    with torch.no_grad():
        output = ours.setup.unwrapped(x_t, t).sample
    ours_loss = scheduler.training_loss(output, x0, noise, t).mean().item()
    theirs_loss = F.mse_loss(output, noise).item()
    return abs(ours_loss - theirs_loss) / abs(theirs_loss)


def bench_training(sizes: Sizes) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        ours, theirs, x0 = _training_contenders(sizes, workdir)
        objective_diff = _same_objective(ours, theirs, x0)
        if objective_diff > 1e-5:
            raise AssertionError(f"training objectives differ (relative {objective_diff:.3g})")
        times: dict[str, list[float]] = {"hf_ddpm": [], "diffusers": []}
        losses: dict[str, float] = {}
        contenders = [("hf_ddpm", ours), ("diffusers", theirs)]
        for i in range(sizes.train_warmup + sizes.train_steps):
            # Step by step, alternating which goes first.
            for name, contender in contenders if i % 2 == 0 else contenders[::-1]:
                start = time.perf_counter()
                losses[name] = float(
                    contender.step(x0)
                )  # each step's loss read, as diffusers' logs it
                if i >= sizes.train_warmup:
                    times[name].append(time.perf_counter() - start)
    for name, loss in losses.items():
        if not math.isfinite(loss):
            raise AssertionError(f"{name} training loss is {loss}")
    median = {name: _median(values) for name, values in times.items()}
    return {
        "batch": sizes.train_batch,
        "image_shape": list(x0.shape[1:]),
        "seconds_per_step": {name: _spread(values) for name, values in times.items()},
        "images_per_s": {name: sizes.train_batch / median[name] for name in median},
        "speedup": median["diffusers"] / median["hf_ddpm"],
        "objective_rel_diff": objective_diff,
        "final_loss": losses,
        "outputs_match": True,
    }


# --------------------------------------------------------------------------------------------- memory


def _memory_workload(section: str, contender: str, sizes: Sizes, workdir: str) -> Callable[[], Any]:
    """Build everything for one contender, and return the call whose peak memory is measured."""
    if section == "scheduler_step":
        loops, x_T, timesteps = _step_loops(sizes)
        loop = {loop.name: loop for loop in loops}[contender]
        loop.start(x_T, timesteps)
        return lambda: loop.run_block(len(timesteps), record=False)
    if section == "nll":
        from hf_ddpm import variational_bound

        # Peak memory depends on the chunk size, not on T: two full chunks are enough.
        per_call = max(1, sizes.nll_max_batch // sizes.nll_images)
        unet, scheduler, x0 = _nll_setup(sizes, min(sizes.nll_timesteps, 2 * per_call))
        if contender == "chunked":
            return lambda: variational_bound(
                unet, scheduler, x0, max_batch_size=sizes.nll_max_batch
            )
        return lambda: naive_bound(unet, scheduler, x0, torch.Generator().manual_seed(0))
    if section == "sampling":
        ours, theirs, _ = _pipelines(sizes)
        pipe = ours if contender == "hf_ddpm" else theirs
        steps = min(sizes.sample_steps)
        return lambda: _sample(pipe, sizes, steps)
    if section == "training":
        ours, theirs, x0 = _training_contenders(sizes, workdir)
        runner = ours if contender == "hf_ddpm" else theirs
        return lambda: [runner.step(x0) for _ in range(2)]
    raise ValueError(f"unknown memory section {section!r}")


MEMORY_PROBES = (
    ("scheduler_step", "hf_ddpm"),
    ("scheduler_step", "diffusers"),
    ("scheduler_step", "floor"),
    ("nll", "chunked"),
    ("nll", "naive"),
    ("sampling", "hf_ddpm"),
    ("sampling", "diffusers"),
    ("training", "hf_ddpm"),
    ("training", "diffusers"),
)


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / MIB


def _memory_status() -> dict[str, float]:
    """The kernel's memory counters of this process in MiB, from one read of /proc/self/status (one
    snapshot): ``VmHWM`` (the peak-RSS mark), ``VmRSS`` and its anonymous part ``RssAnon`` (the file pages
    in the rest come and go as the kernel reclaims and reads them back); empty where there is no such
    file."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    status = {}
    for line in lines:
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS", "RssAnon"):
            status[name] = int(value.split()[0]) / 1024  # kB
    return status


def _peak_rss_mib() -> float:
    """The kernel's peak-RSS mark of this process's memory (VmHWM).

    Not ``ru_maxrss``: after fork and exec it also holds the parent's peak, so a probe started by a large
    benchmark process would report the parent's size."""
    peak = _memory_status().get("VmHWM")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _probe_memory(section: str, contender: str, sizes: Sizes) -> dict[str, Any]:
    """Peak RSS growth of one workload, in this fresh process.

    tracemalloc does not see torch's allocations, so this reads the kernel's high-water mark of the
    resident set (VmHWM). The mark is reset after the setup (imports, model, schedulers), so the figure is
    the workload's peak minus the RSS just before it. Where the reset is not allowed the mark includes the
    setup's own peak and the figure is only an upper bound (``peak_reset`` says which)."""
    with tempfile.TemporaryDirectory() as workdir:
        workload = _memory_workload(section, contender, sizes, workdir)
        gc.collect()
        before_rss = _rss_mib()
        reset = _reset_peak_rss()
        workload()
        peak = _peak_rss_mib()
    return {
        "rss_before_mib": before_rss,
        "peak_mib": peak,
        "peak_growth_mib": peak - before_rss,
        "peak_reset": reset,
    }


def bench_memory(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for section, contender in MEMORY_PROBES:
        command = [
            sys.executable,
            os.path.abspath(__file__),
            "--probe-memory",
            f"{section}:{contender}",
            "--threads",
            str(args.threads),
        ]
        if args.quick:
            command.append("--quick")
        out = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            raise RuntimeError(f"memory probe {section}:{contender} failed:\n{out.stderr[-3000:]}")
        results.setdefault(section, {})[contender] = json.loads(out.stdout.strip().splitlines()[-1])
    return results


# ---------------------------------------------------------------------------------------------- main


def _table(result: dict[str, Any]) -> str:
    rows = [("figure", "hf_ddpm", "diffusers / other", "ratio")]
    step = result.get("scheduler_step")
    if step:
        us = step["per_step_us"]
        rows.append(
            (
                "scheduler step, us/step",
                fmt(us["hf_ddpm"], digits=1),
                fmt(us["diffusers"], digits=1),
                f"speedup {fmt(step['speedup'])}x",
            )
        )
        rows.append(
            (
                "  vs floor (randn + fma)",
                fmt(step["floor_ratio"], unit="x"),
                fmt(step["diffusers_floor_ratio"], unit="x"),
                f"floor {fmt(us['floor'], 1, ' us')}",
            )
        )
        if "baseline_rev" in step:
            rev = step["baseline_rev"]
            rows.append(
                (
                    f"  vs hf_ddpm@{rev}",
                    fmt(us["hf_ddpm"], digits=1),
                    fmt(us[f"hf_ddpm@{rev}"], digits=1),
                    f"today / {rev} {fmt(step['baseline_ratio'], 3)}",
                )
            )
    sampling = result.get("sampling")
    if sampling:
        for steps, entry in sampling["by_steps"].items():
            seconds = entry["seconds"]
            rows.append(
                (
                    f"sampling {steps} steps, s",
                    fmt(seconds["hf_ddpm"]["median"]),
                    fmt(seconds["diffusers"]["median"]),
                    f"speedup {fmt(entry['speedup'])}x",
                )
            )
    training = result.get("training")
    if training:
        ips = training["images_per_s"]
        rows.append(
            (
                "training, images/s",
                fmt(ips["hf_ddpm"], digits=1),
                fmt(ips["diffusers"], digits=1),
                f"speedup {fmt(training['speedup'])}x",
            )
        )
    nll = result.get("nll")
    if nll:
        rows.append(
            (
                f"NLL T={nll['num_train_timesteps']}, images/s",
                fmt(nll["images_per_s"], digits=3),
                f"naive {fmt(nll['naive_images_per_s'], digits=3)}",
                f"chunking {fmt(nll['chunking_speedup'])}x",
            )
        )
    memory = result.get("memory") or {}
    for section, contenders in memory.items():
        names = list(contenders)
        rows.append(
            (
                f"peak RSS growth {section}, MiB",
                fmt(contenders[names[0]]["peak_growth_mib"], digits=1),
                ", ".join(
                    f"{n} {fmt(contenders[n]['peak_growth_mib'], digits=1)}" for n in names[1:]
                ),
                "",
            )
        )
    return render_table(rows)


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = QUICK if args.quick else FULL
    result: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "command": "python benchmarks/cpu.py " + " ".join(sys.argv[1:]),
        "machine": harness.machine(),
        "load_average_start": list(os.getloadavg()),
        "sizes": dataclasses.asdict(sizes),
        "unet_config": UNET_CONFIG,
        "notes": [],
    }
    sections: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("scheduler_step", lambda: bench_scheduler_step(sizes, args.baseline_rev)),
        ("nll", lambda: bench_nll(sizes)),
        ("sampling", lambda: bench_sampling(sizes)),
        ("training", lambda: bench_training(sizes)),
    ]
    for name, fn in sections:
        start = time.perf_counter()
        print(f"[cpu.py] {name} ...", file=sys.stderr, flush=True)
        result[name] = fn()
        result[name]["wall_s"] = time.perf_counter() - start
    if args.no_memory:
        result["memory"] = None
        result["notes"].append("peak memory skipped (--no-memory)")
    else:
        print("[cpu.py] memory probes ...", file=sys.stderr, flush=True)
        result["memory"] = bench_memory(args)
    result["load_average_end"] = list(os.getloadavg())
    result["scheduler_step_speedup"] = result["scheduler_step"]["speedup"]
    result["scheduler_step_floor_ratio"] = result["scheduler_step"]["floor_ratio"]
    result["scheduler_step_diffusers_floor_ratio"] = result["scheduler_step"][
        "diffusers_floor_ratio"
    ]
    result["sampling_speedup"] = result["sampling"]["speedup"]
    result["training_speedup"] = result["training"]["speedup"]
    result["nll_images_per_s"] = result["nll"]["images_per_s"]
    result["outputs_match"] = all(
        result[name]["outputs_match"] for name in ("scheduler_step", "nll", "sampling", "training")
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes (a smoke run, not a benchmark)"
    )
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared machine more threads add noise, not speed)",
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory subprocesses"
    )
    parser.add_argument(
        "--baseline-rev",
        metavar="REV",
        help="also time HFDDPMScheduler.step as hf_ddpm/core was at git revision REV, interleaved "
        "(the step figure's baseline_ratio = today / REV)",
    )
    parser.add_argument("--probe-memory", metavar="SECTION:CONTENDER", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    if args.probe_memory:
        section, _, contender = args.probe_memory.partition(":")
        print(json.dumps(_probe_memory(section, contender, QUICK if args.quick else FULL)))
        return 0
    result = run(args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    print(_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
