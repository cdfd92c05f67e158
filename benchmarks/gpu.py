"""GPU benchmarks for one CUDA device (written for the H200 the ``device`` tool lends): hf_ddpm vs diffusers.

    python benchmarks/gpu.py [--json FILE] [--budget-s 360] [--sample-steps 1000]
    python benchmarks/gpu.py --smoke        # tiny sizes on CPU: checks the logic, measures nothing

Ho et al. (2020)'s 35.7M ``ddpm-cifar10`` UNet (hf_ddpm.training.unet_presets), randomly initialised (the cost does not
depend on the weights), on synthetic 32x32 RGB data:

- training images/s at batch 128: hf_ddpm's own ``TrainingStep`` (benchmarks/harness.py; channels_last
  and fused Adam on CUDA, as ``hf-ddpm train`` runs) in fp32, bf16 (``--mixed-precision bf16``), and bf16 +
  ``torch.compile`` (``--compile``), against a loop written like diffusers' ``train_unconditional.py``
  example (fp32 and bf16 through accelerate), with peak memory and achieved TFLOP/s;
- sampling 256 images x 1000 steps: ``HFDDPMPipeline`` plain (fp32) and fast (what ``hf-ddpm sample
  --dtype bfloat16 --compile --channels-last`` runs: ``hf_ddpm.sampling.unet_speed.apply_unet_speed``),
  against ``DDPMPipeline``;
- issue 19, per UNet call: images/s of 256 images x 100 steps with ``hf-ddpm sample``'s UNet options (fp32,
  bf16 autocast, bf16 + torch.compile + channels_last; ``hf_ddpm.sampling.unet_speed``) against
  ``DDPMPipeline``, and the wall time of 50,000 samples extrapolated from each; every configuration's images
  against ``DDPMPipeline``'s (fp32 within 1e-3; the bf16 ones' largest difference reported). They run before
  the 1000-step sampling runs, so that the budget does not skip them;
- the chip's measured bf16 matmul rate, against which the achieved TFLOP/s are read;
- a check that hf_ddpm's training step and ``HFDDPMPipeline``'s sampling loop never make the host wait for the
  GPU (``torch.cuda.set_sync_debug_mode("error")``).

Each configuration runs in its own subprocess (clean accelerate state, compile caches and peak-memory
counters). The run stops starting new configurations when ``--budget-s`` is spent, and says which it
skipped. The table is printed last.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

# Benchmarks never touch the network (set before diffusers imports huggingface_hub).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/harness.py
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # hf_ddpm

import harness  # noqa: E402
from harness import DiffusersExampleTraining, PackageTraining, fmt, render_table  # noqa: E402

TRAIN_GOAL_IMAGES_PER_S = 3000.0
TRAIN_ANCHOR_IMAGES_PER_S = 21 * 128  # Ho et al.: 21 steps/s x batch 128 on a TPU v3-8
SAMPLE_GOAL_S = 5.0
SAMPLE_ANCHOR_S = 17.0  # Ho et al.: 256 samples in 17 s on a TPU v3-8
IMAGE_ATOL = 1e-3  # fp32 pipelines must agree this closely (images in [0, 1])


@dataclasses.dataclass(frozen=True)
class Sizes(harness.Sizes):
    preset: str
    compile_warmup: (
        int  # extra warm-up steps for compiled configurations (compilation, CUDA graphs)
    )
    sample_steps: int
    matmul_size: int
    matmul_iters: int
    scale_batch: int = 256  # issue 19: images per pipeline call of the per-UNet-call configurations
    scale_steps: int = 100


FULL = Sizes(
    preset="ddpm-cifar10",
    resolution=32,
    train_batch=128,
    train_warmup=5,
    train_steps=30,
    compile_warmup=3,
    sample_batch=256,
    sample_steps=1000,
    matmul_size=8192,
    matmul_iters=50,
)
SMOKE = Sizes(
    preset="tiny",
    resolution=8,
    train_batch=2,
    train_warmup=1,
    train_steps=1,
    compile_warmup=0,
    sample_batch=2,
    sample_steps=3,
    matmul_size=128,
    matmul_iters=2,
    scale_batch=2,
    scale_steps=3,
)
# Issue 19: images/s of hf-ddpm sample's UNet options (hf_ddpm.sampling.unet_speed, the code the CLI runs)
# against DDPMPipeline, and the wall time of SCALE_SAMPLES samples extrapolated from them.
SCALE_CONFIGS = ("diffusers", "fp32", "bf16", "bf16-compile-cl")
SCALE_SAMPLES = 50_000

TRAIN_CONFIGS = ("diffusers-fp32", "diffusers-bf16", "hf_ddpm-fp32", "hf_ddpm-bf16", "hf_ddpm-fast")
SAMPLE_CONFIGS = ("diffusers", "hf_ddpm", "hf_ddpm-fast")
# Cheapest first, except that issue 19's 100-step scale configurations, its compiled one included, run
# before the 1000-step sampling runs, so that --budget-s never skips one of them; the compiled training and
# 1000-step sampling configurations, which pay for compilation, last.
WORKERS = (
    [("calibrate", "matmul"), ("check", "host_syncs")]
    + [("train", c) for c in TRAIN_CONFIGS if c != "hf_ddpm-fast"]
    + [("scale", c) for c in SCALE_CONFIGS]
    + [("sample", "diffusers"), ("sample", "hf_ddpm")]
    + [("train", "hf_ddpm-fast"), ("sample", "hf_ddpm-fast")]
)


# ------------------------------------------------------------------------------------------- workers


def _device(smoke: bool) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if not smoke:
        raise SystemExit("benchmarks/gpu.py needs a CUDA device; use --smoke to check it on CPU")
    return torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _unet(sizes: Sizes, device: torch.device) -> Any:
    return harness.build_unet(sizes.resolution, 3, preset=sizes.preset, device=device)


def _forward_flops(unet: Any, sizes: Sizes, device: torch.device) -> float:
    """FLOPs of one UNet forward pass per image (torch's FlopCounterMode: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 3, sizes.resolution, sizes.resolution, device=device)
    t = torch.tensor([10, 500], device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        unet(x, t)
    return counter.get_total_flops() / 2


def _calibrate(sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """The chip's bf16 dense matmul rate, and the UNet's forward FLOPs per image."""
    n = sizes.matmul_size
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(sizes.matmul_iters):
        a @ b
    _sync(device)
    elapsed = time.perf_counter() - start
    unet = _unet(sizes, device)
    return {
        "bf16_matmul_tflops": 2 * n**3 * sizes.matmul_iters / elapsed / 1e12,
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "unet_forward_flops_per_image": _forward_flops(unet, sizes, device),
    }


def _package_training(
    sizes: Sizes, device: torch.device, batch: int, bf16: bool, compile_model: bool
) -> PackageTraining:
    """hf_ddpm's own training step; its setup's workdir is left for the worker's process to end with."""
    return PackageTraining(
        tempfile.mkdtemp(prefix="hf_ddpm_gpu_bench_"),
        sizes.resolution,
        3,
        batch,
        preset=sizes.preset,
        mixed_precision="bf16" if bf16 else "no",
        compile_model=compile_model,
    )


def _train_runner(name: str, sizes: Sizes, device: torch.device) -> Any:
    precision = "bf16" if name.endswith(("bf16", "fast")) else "no"
    if name.startswith("diffusers-"):
        unet = _unet(sizes, device)
        state = {k: v.detach().cpu() for k, v in unet.state_dict().items()}
        return DiffusersExampleTraining(state, dict(unet.config), mixed_precision=precision)
    # Inductor on CPU needs a C++ toolchain and minutes; the smoke run checks the eager path.
    compile_model = name == "hf_ddpm-fast" and device.type == "cuda"
    return _package_training(sizes, device, sizes.train_batch, precision == "bf16", compile_model)


def _train(name: str, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    runner = _train_runner(name, sizes, device)
    x0 = (
        torch.rand(sizes.train_batch, 3, sizes.resolution, sizes.resolution, device=device)
        .mul_(2)
        .sub_(1)
    )
    warmup = sizes.train_warmup + (sizes.compile_warmup if name == "hf_ddpm-fast" else 0)
    start = time.perf_counter()
    for _ in range(warmup):
        runner.step(x0)
    _sync(device)
    warmup_s = time.perf_counter() - start
    _reset_peak(device)
    losses = []
    start = time.perf_counter()
    for _ in range(sizes.train_steps):
        losses.append(runner.step(x0))
    _sync(device)
    elapsed = time.perf_counter() - start
    losses = [float(loss) for loss in losses]  # hf_ddpm's are device tensors, diffusers' floats
    if not all(math.isfinite(loss) for loss in losses):
        raise RuntimeError(f"{name}: non-finite training loss {losses}")
    return {
        "images_per_s": sizes.train_batch * sizes.train_steps / elapsed,
        "step_ms": 1e3 * elapsed / sizes.train_steps,
        "warmup_s": warmup_s,
        "peak_memory_gib": _peak_gib(device),
        "final_loss": losses[-1],
    }


def _pipeline(name: str, sizes: Sizes, device: torch.device) -> Any:
    from diffusers import DDPMPipeline, DDPMScheduler

    from hf_ddpm.core.pipeline import HFDDPMPipeline
    from hf_ddpm.core.scheduling import HFDDPMScheduler
    from hf_ddpm.sampling.unet_speed import UNetSpeed, apply_unet_speed

    unet = _unet(sizes, device).eval()
    if name == "diffusers":
        pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    else:
        pipe = HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler())
        if name == "hf_ddpm-fast":
            # What `hf-ddpm sample --dtype bfloat16 --compile --channels-last` runs (Inductor on CPU
            # needs a C++ toolchain and minutes; the smoke run checks the eager path).
            speed = UNetSpeed(dtype="bfloat16", compile=device.type == "cuda", channels_last=True)
            apply_unet_speed(pipe, speed, warmup_batch_size=sizes.sample_batch)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sample(name: str, sizes: Sizes, device: torch.device, outdir: str) -> dict[str, Any]:
    import numpy as np

    pipe = _pipeline(name, sizes, device)

    def run(steps: int) -> Any:
        generator = torch.Generator(device).manual_seed(0)
        return pipe(
            batch_size=sizes.sample_batch,
            generator=generator,
            num_inference_steps=steps,
            output_type="np",
        ).images

    start = time.perf_counter()
    for _ in range(3 if name == "hf_ddpm-fast" else 1):
        run(min(3, sizes.sample_steps))
    _sync(device)
    warmup_s = time.perf_counter() - start
    _reset_peak(device)
    start = time.perf_counter()
    images = run(sizes.sample_steps)
    _sync(device)
    elapsed = time.perf_counter() - start
    if not np.isfinite(images).all():
        raise RuntimeError(f"{name}: non-finite samples")
    np.save(os.path.join(outdir, f"samples-{name}.npy"), images)
    return {"seconds": elapsed, "warmup_s": warmup_s, "peak_memory_gib": _peak_gib(device)}


def _scale(name: str, sizes: Sizes, device: torch.device, outdir: str) -> dict[str, Any]:
    """Images/s of ``scale_batch`` images x ``scale_steps`` steps: DDPMPipeline, or HFDDPMPipeline with
    the UNet options of ``hf-ddpm sample --dtype/--compile/--channels-last`` (apply_unet_speed, whose
    compile warm-up is one UNet call of the batch). The images are saved for :func:`_summarise` to compare
    with DDPMPipeline's: the same weights and seed in every configuration."""
    import numpy as np
    from diffusers import DDPMPipeline, DDPMScheduler

    from hf_ddpm.core.pipeline import HFDDPMPipeline
    from hf_ddpm.core.scheduling import HFDDPMScheduler
    from hf_ddpm.sampling.unet_speed import UNetSpeed, apply_unet_speed

    unet = _unet(sizes, device).eval()
    start = time.perf_counter()
    if name == "diffusers":
        pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    else:
        speed = {
            "fp32": UNetSpeed(),
            "bf16": UNetSpeed(dtype="bfloat16"),
            # Inductor on CPU needs a C++ toolchain and minutes; the smoke run checks the eager path.
            "bf16-compile-cl": UNetSpeed(
                dtype="bfloat16", compile=device.type == "cuda", channels_last=True
            ),
        }[name]
        pipe = HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler())
        apply_unet_speed(pipe, speed, warmup_batch_size=sizes.scale_batch)
    pipe.set_progress_bar_config(disable=True)

    def run(steps: int) -> Any:
        generator = torch.Generator(device).manual_seed(0)
        return pipe(
            batch_size=sizes.scale_batch,
            generator=generator,
            num_inference_steps=steps,
            output_type="pt",
        ).images

    run(min(3, sizes.scale_steps))
    _sync(device)
    warmup_s = time.perf_counter() - start
    _reset_peak(device)
    start = time.perf_counter()
    images = run(sizes.scale_steps)
    _sync(device)
    elapsed = time.perf_counter() - start
    if not bool(torch.isfinite(images).all()):
        raise RuntimeError(f"scale {name}: non-finite samples")
    np.save(os.path.join(outdir, f"scale-{name}.npy"), images.float().cpu().numpy())
    images_per_s = sizes.scale_batch / elapsed
    return {
        "images_per_s": images_per_s,
        "seconds": elapsed,
        "warmup_s": warmup_s,
        "peak_memory_gib": _peak_gib(device),
        "extrapolated_50k_s": SCALE_SAMPLES / images_per_s,
    }


def _first_host_sync(device: torch.device, work: Any) -> str | None:
    """Run ``work()`` (after one warm-up call) with CUDA's sync debug mode set to raise, and return the
    error of the first operation that made the host wait for the GPU, or None if there was none."""
    work()
    _sync(device)
    if device.type != "cuda":
        return None  # the debug mode exists only on CUDA; a smoke run checks the code path
    torch.cuda.set_sync_debug_mode("error")
    try:
        work()
    except RuntimeError as error:
        return str(error).splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return None


def _check_host_syncs(sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Three of hf_ddpm's own training steps (``TrainingStep.optimizer_step``, fp32, as ``hf-ddpm train``
    runs them on CUDA), and a 5-step sampling loop of ``HFDDPMPipeline`` from its first callback to its
    ``pt`` output, with no host sync allowed."""
    from hf_ddpm.core.pipeline import HFDDPMPipeline
    from hf_ddpm.core.scheduling import HFDDPMScheduler

    step = _package_training(sizes, device, 4, bf16=False, compile_model=False)
    x0 = torch.rand(4, 3, sizes.resolution, sizes.resolution, device=device).mul_(2).sub_(1)
    training = _first_host_sync(device, lambda: [step.step(x0) for _ in range(3)])

    pipe = HFDDPMPipeline(unet=_unet(sizes, device).eval(), scheduler=HFDDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    errors: list[str] = []

    def on_step_end(pipeline: Any, index: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        # Checked from the first step's end: set_timesteps copies the schedule to the device once.
        if index == 0 and device.type == "cuda":
            torch.cuda.set_sync_debug_mode("error")
        return tensors

    def sample() -> None:
        generator = torch.Generator(device).manual_seed(0)
        try:
            pipe(
                batch_size=4,
                generator=generator,
                num_inference_steps=5,
                output_type="pt",
                callback_on_step_end=on_step_end,
            )
        except RuntimeError as error:
            errors.append(str(error).splitlines()[0])
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")

    sample()
    _sync(device)
    errors.clear()
    sample()
    return {
        "train_step_first_sync": training,
        "sampling_loop_first_sync": errors[0] if errors else None,
        "checked": device.type == "cuda",
    }


def _worker(kind: str, name: str, sizes: Sizes, smoke: bool, outdir: str) -> dict[str, Any]:
    device = _device(smoke)
    if name == "hf_ddpm-fast" and device.type == "cuda":
        # Every call has the same shapes, so cuDNN's per-shape search for the fastest convolution
        # pays for itself; each configuration runs in its own process, so this stays local to it.
        torch.backends.cudnn.benchmark = True
    if kind == "calibrate":
        return _calibrate(sizes, device)
    if kind == "check":
        return _check_host_syncs(sizes, device)
    if kind == "train":
        return _train(name, sizes, device)
    if kind == "sample":
        return _sample(name, sizes, device, outdir)
    if kind == "scale":
        return _scale(name, sizes, device, outdir)
    raise ValueError(f"unknown worker {kind}:{name}")


# ---------------------------------------------------------------------------------------- orchestration


def _run_worker(
    kind: str, name: str, args: argparse.Namespace, outdir: str, timeout: float | None
) -> dict[str, Any]:
    command = [sys.executable, os.path.abspath(__file__), "--worker", f"{kind}:{name}"]
    command += ["--outdir", outdir, "--sample-steps", str(args.sample_steps)]
    if args.smoke:
        command.append("--smoke")
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _summarise(result: dict[str, Any], sizes: Sizes, smoke: bool = False) -> None:
    """Ratios, TFLOP/s and goals, from the raw per-configuration figures (no goals for a smoke run)."""
    import numpy as np

    calib = result.get("calibrate", {}).get("matmul", {})
    train = result.get("train", {})
    flops = calib.get("unet_forward_flops_per_image")
    peak = calib.get("bf16_matmul_tflops")
    for entry in train.values():
        if "images_per_s" in entry and flops:
            # Forward + backward ~ 3 forward passes of matmul/conv work.
            entry["achieved_tflops"] = 3 * flops * entry["images_per_s"] / 1e12
            if peak:
                entry["fraction_of_bf16_matmul_rate"] = entry["achieved_tflops"] / peak
    sample = result.get("sample", {})
    for entry in sample.values():
        if "seconds" in entry and flops:
            images_steps = sizes.sample_batch * sizes.sample_steps
            entry["achieved_tflops"] = flops * images_steps / entry["seconds"] / 1e12
            if peak:
                entry["fraction_of_bf16_matmul_rate"] = entry["achieved_tflops"] / peak

    def ratio(table: dict[str, Any], key: str, slow: str, fast: str, invert: bool) -> float | None:
        a, b = table.get(slow, {}).get(key), table.get(fast, {}).get(key)
        if a is None or b is None:
            return None
        return a / b if invert else b / a

    summary = {
        "training_speedup_fp32": ratio(
            train, "images_per_s", "diffusers-fp32", "hf_ddpm-fp32", False
        ),
        "training_speedup_bf16": ratio(
            train, "images_per_s", "diffusers-bf16", "hf_ddpm-bf16", False
        ),
        "training_speedup_fast_vs_diffusers_bf16": ratio(
            train, "images_per_s", "diffusers-bf16", "hf_ddpm-fast", False
        ),
        **{
            f"scale_speedup_{name}_vs_diffusers": ratio(
                result.get("scale", {}), "images_per_s", "diffusers", name, False
            )
            for name in SCALE_CONFIGS[1:]
        },
        "sampling_speedup_plain": ratio(sample, "seconds", "diffusers", "hf_ddpm", True),
        "sampling_speedup_fast": ratio(sample, "seconds", "diffusers", "hf_ddpm-fast", True),
    }
    best_train = max((e.get("images_per_s", 0.0) for e in train.values()), default=0.0)
    fast_sample = sample.get("hf_ddpm-fast", {}).get("seconds")
    summary["training_goal_met"] = (
        None if smoke or not best_train else best_train >= TRAIN_GOAL_IMAGES_PER_S
    )
    summary["sampling_goal_met"] = (
        None if smoke or fast_sample is None else fast_sample <= SAMPLE_GOAL_S
    )
    outdir = result["_outdir"]
    paths = {n: os.path.join(outdir, f"samples-{n}.npy") for n in SAMPLE_CONFIGS}
    if os.path.exists(paths["hf_ddpm"]) and os.path.exists(paths["diffusers"]):
        diff = float(np.abs(np.load(paths["hf_ddpm"]) - np.load(paths["diffusers"])).max())
        summary["sampling_fp32_max_abs_diff"] = diff
        summary["sampling_outputs_match"] = diff <= IMAGE_ATOL
    if os.path.exists(paths["hf_ddpm-fast"]) and os.path.exists(paths["hf_ddpm"]):
        # bf16 follows a different trajectory; how far it lands from fp32 is information, not a check.
        diff = np.abs(np.load(paths["hf_ddpm-fast"]) - np.load(paths["hf_ddpm"]))
        summary["sampling_fast_vs_fp32_mean_abs_diff"] = float(diff.mean())
    scale = {n: os.path.join(outdir, f"scale-{n}.npy") for n in SCALE_CONFIGS}
    if os.path.exists(scale["diffusers"]):
        theirs = np.load(scale["diffusers"])
        # fp32 must match DDPMPipeline; the bf16 configurations' distance is reported, not checked.
        diffs = {
            n: float(np.abs(np.load(path) - theirs).max())
            for n, path in scale.items()
            if n != "diffusers" and os.path.exists(path)
        }
        summary["scale_max_abs_diff_from_diffusers"] = diffs
        if "fp32" in diffs:
            summary["scale_outputs_match"] = diffs["fp32"] <= IMAGE_ATOL
    result["summary"] = summary


def _table(result: dict[str, Any], sizes: Sizes) -> str:
    rows = [("configuration", "figure", "peak mem GiB", "TFLOP/s", "note")]
    for name in TRAIN_CONFIGS:
        e = result.get("train", {}).get(name, {})
        rows.append(
            (
                f"train {name} b{sizes.train_batch}",
                f"{fmt(e.get('images_per_s'), 1)} img/s",
                fmt(e.get("peak_memory_gib"), 2),
                fmt(e.get("achieved_tflops"), 1),
                "ERROR" if "error" in e else ("skipped" if not e else ""),
            )
        )
    for name in SAMPLE_CONFIGS:
        e = result.get("sample", {}).get(name, {})
        rows.append(
            (
                f"sample {name} {sizes.sample_batch}x{sizes.sample_steps}",
                f"{fmt(e.get('seconds'), 2)} s",
                fmt(e.get("peak_memory_gib"), 2),
                fmt(e.get("achieved_tflops"), 1),
                "ERROR" if "error" in e else ("skipped" if not e else ""),
            )
        )
    scale_diffs = result.get("summary", {}).get("scale_max_abs_diff_from_diffusers", {})
    for name in SCALE_CONFIGS:
        e = result.get("scale", {}).get(name, {})
        diff = f", max |diff| {scale_diffs[name]:.1e}" if name in scale_diffs else ""
        rows.append(
            (
                f"sample {name} {sizes.scale_batch}x{sizes.scale_steps}",
                f"{fmt(e.get('images_per_s'), 1)} img/s",
                fmt(e.get("peak_memory_gib"), 2),
                "",
                "ERROR"
                if "error" in e
                else (
                    f"{SCALE_SAMPLES:,} in {fmt(e.get('extrapolated_50k_s'), 0)} s{diff}"
                    if e
                    else "skipped"
                ),
            )
        )
    calib = result.get("calibrate", {}).get("matmul", {})
    rows.append(
        ("bf16 matmul (measured)", "", "", fmt(calib.get("bf16_matmul_tflops"), 1), "chip rate")
    )
    check = result.get("check", {}).get("host_syncs", {})
    for what in ("train_step", "sampling_loop"):
        first = check.get(f"{what}_first_sync")
        verdict = "ERROR" if "error" in check else ("none" if first is None else first[:60])
        if check and not check.get("checked"):
            verdict = "not checked (no CUDA)"
        rows.append((f"host syncs in {what.replace('_', ' ')}", verdict, "", "", ""))
    lines = render_table(rows).splitlines()
    s = result.get("summary", {})
    lines.append("")
    lines.append(
        f"training goal >= {TRAIN_GOAL_IMAGES_PER_S:.0f} img/s (TPU v3-8 anchor "
        f"{TRAIN_ANCHOR_IMAGES_PER_S}): met={s.get('training_goal_met')}; "
        f"sampling goal <= {SAMPLE_GOAL_S:.0f} s (anchor {SAMPLE_ANCHOR_S:.0f} s): "
        f"met={s.get('sampling_goal_met')}"
    )
    lines.append(
        "speedups vs diffusers: "
        + ", ".join(
            f"{k} {fmt(v, 2)}"
            for k, v in s.items()
            if k.endswith(("fp32", "bf16", "plain", "fast", "_vs_diffusers"))
        )
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; runs on CPU without CUDA")
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="start no new configuration after this many seconds (default 360; none with --smoke)",
    )
    parser.add_argument(
        "--sample-steps", type=int, default=None, help="sampling steps (default 1000; smoke 3)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--outdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    if args.sample_steps is not None:
        if not 1 <= args.sample_steps <= 1000:
            parser.error(f"--sample-steps must be in 1..1000, got {args.sample_steps}")
        sizes = dataclasses.replace(sizes, sample_steps=args.sample_steps)
    args.sample_steps = sizes.sample_steps
    if args.budget_s is None:
        args.budget_s = float("inf") if args.smoke else 360.0
    if args.smoke and not torch.cuda.is_available():
        # On a shared 2-core machine two OpenMP threads spin against other processes: small ops
        # measured 100x slower than with one thread.
        torch.set_num_threads(1)
    if args.worker:
        kind, _, name = args.worker.partition(":")
        print(json.dumps(_worker(kind, name, sizes, args.smoke, args.outdir)))
        return 0
    _device(args.smoke)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as outdir:
        result: dict[str, Any] = {
            "command": "python benchmarks/gpu.py "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "mode": "smoke" if args.smoke else "full",
            "environment": harness.machine(),
            "sizes": dataclasses.asdict(sizes),
            "notes": [],
            "_outdir": outdir,
        }
        if args.smoke:
            result["notes"].append(
                "smoke run: tiny sizes; on CPU, compile, fused Adam and CUDA graphs are skipped"
            )
        for kind, name in WORKERS:
            left = args.budget_s - (time.perf_counter() - start)
            if left <= 0:
                result["notes"].append(f"skipped {kind}:{name}: --budget-s {args.budget_s} spent")
                continue
            print(f"[gpu.py] {kind}:{name} ...", file=sys.stderr, flush=True)
            entry = _run_worker(
                kind, name, args, outdir, timeout=None if left == float("inf") else max(left, 30.0)
            )
            result.setdefault(kind, {})[name] = entry
            if "error" in entry:
                result["notes"].append(f"{kind}:{name} failed: {entry['error'][-300:]}")
        _summarise(result, sizes, smoke=args.smoke)
        del result["_outdir"]
    result["wall_s"] = time.perf_counter() - start
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    print(_table(result, sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
