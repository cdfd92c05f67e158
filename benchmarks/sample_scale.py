"""Sampling at scale on CPU (issue 19): images/s per UNet call against diffusers, and 2 processes against 1.

    python benchmarks/sample_scale.py [--models bundled,ddpm-cifar10] [--steps 100] [--big-steps K]
                                      [--repeats 3] [--candidates channels_last,compile,compile+channels_last]
                                      [--shard-images 32] [--shard-steps K] [--json FILE]

- **Per UNet call** (1 thread, batch 16, 100 steps by default for both models): for each model,
  ``DDPMPipeline`` (diffusers' scheduler from the model's config), ``HFDDPMPipeline`` as saved, and
  ``HFDDPMPipeline`` with each candidate CPU setting: ``channels_last`` (``--channels-last``), ``compile``
  (``torch.compile`` of the UNet alone, contiguous weights) and ``compile+channels_last`` (``--compile``,
  which turns channels_last on too), through :mod:`hf_ddpm.sampling.unet_speed`. bf16 autocast is not a
  candidate: it is slower on a CPU without AVX-512 BF16. Each runs on its own copy of the same weights and
  from the same seed. The contenders are interleaved, in a rotating order, and each figure is the median of
  ``--repeats`` runs after a 1-step warm-up (which is where torch.compile compiles, timed as ``warmup_s``).
  The **best CPU settings** are the candidate with the most images/s, measured here, not assumed. Outputs
  are compared first.
- **Processes** (1 thread each, for each model): ``hf-ddpm sample --output-dir``'s writer
  (:func:`write_sample_folder`, ``HFDDPMPipeline`` as saved, batch 16 per process) under
  ``torchrun --nproc_per_node 1`` and ``2``, interleaved; each run times its sampling between two barriers
  (model loading and process start-up excluded), counts the images its UNet calls saw (N x steps in all
  means no duplicated work), and the two folders are compared (within 2 grey levels).

``bundled`` is the bundled mnist-5k model's UNet (1.1M parameters, 32x32x1; without its class embedding,
since ``DDPMPipeline`` passes no labels); ``ddpm-cifar10`` is Ho et al.'s 35.7M UNet (32x32x3), randomly
initialised: the cost does not depend on the weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/harness.py
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # hf_ddpm

BATCH = 16
IMAGE_ATOL = 1e-3  # fp32 pipelines on one scheduler must agree this closely (images in [0, 1])


def _channels_last(pipe: Any) -> None:
    from hf_ddpm.sampling.unet_speed import UNetSpeed, apply_unet_speed

    apply_unet_speed(pipe, UNetSpeed(channels_last=True))


def _compile_alone(pipe: Any) -> None:
    pipe.unet.compile()  # what --compile does, without its channels_last


def _compile_channels_last(pipe: Any) -> None:
    from hf_ddpm.sampling.unet_speed import UNetSpeed, apply_unet_speed

    apply_unet_speed(pipe, UNetSpeed(compile=True))  # compiled at the 1-step warm-up


# The candidate best CPU settings of HFDDPMPipeline, each applied to its own pipeline.
CANDIDATES: dict[str, Any] = {
    "channels_last": _channels_last,
    "compile": _compile_alone,
    "compile+channels_last": _compile_channels_last,
}


def _model(name: str) -> Any:
    """(UNet, scheduler config) of a model name."""
    from hf_ddpm.core.pipeline import HFDDPMPipeline
    from hf_ddpm.core.scheduling import HFDDPMScheduler
    from hf_ddpm.hub.bundled import bundled_model_path
    from hf_ddpm.training.unet_presets import build_unet, unet_config

    if name == "bundled":
        from diffusers import UNet2DModel

        pipe = HFDDPMPipeline.from_pretrained(str(bundled_model_path()))
        # DDPMPipeline passes no class labels: the same network without its class embedding (one
        # lookup per call, nothing next to the convolutions).
        config = {k: v for k, v in pipe.unet.config.items() if k != "num_class_embeds"}
        unet = UNet2DModel.from_config(config)
        weights = {
            k: v for k, v in pipe.unet.state_dict().items() if not k.startswith("class_embedding")
        }
        unet.load_state_dict(weights)
        return unet.eval(), dict(pipe.scheduler.config)
    torch.manual_seed(0)
    unet = build_unet(unet_config(name, None, resolution=32, in_channels=3, out_channels=3))
    return unet.eval(), dict(HFDDPMScheduler().config)


def _contenders(name: str, candidates: list[str]) -> dict[str, Any]:
    from diffusers import DDPMPipeline, DDPMScheduler

    from hf_ddpm.core.pipeline import HFDDPMPipeline
    from hf_ddpm.core.scheduling import HFDDPMScheduler
    from hf_ddpm.sampling.samplers import scheduler_from_config

    unet, config = _model(name)
    # The model's schedule and spacing in diffusers' own scheduler; fixed_small is diffusers' default.
    theirs = scheduler_from_config(DDPMScheduler, {**config, "variance_type": "fixed_small"})
    pipes = {"diffusers": DDPMPipeline(unet=copy.deepcopy(unet), scheduler=theirs)}
    for contender in ("hf_ddpm", *(f"hf_ddpm+{c}" for c in candidates)):
        pipes[contender] = HFDDPMPipeline(
            unet=copy.deepcopy(unet), scheduler=HFDDPMScheduler.from_config(config)
        )
    for candidate in candidates:
        CANDIDATES[candidate](pipes[f"hf_ddpm+{candidate}"])
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    return pipes


def _draw(pipe: Any, steps: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipe(
        batch_size=BATCH, generator=generator, num_inference_steps=steps, output_type="np"
    ).images


def bench_per_call(name: str, steps: int, repeats: int, candidates: list[str]) -> dict[str, Any]:
    pipes = _contenders(name, candidates)
    contenders = list(pipes)
    warmup_s = {}
    for contender, pipe in pipes.items():
        start = time.perf_counter()
        _draw(pipe, 1)  # warm-up; torch.compile compiles here
        warmup_s[contender] = time.perf_counter() - start
    times: dict[str, list[float]] = {c: [] for c in contenders}
    outputs: dict[str, np.ndarray] = {}
    for repeat in range(repeats):
        shift = repeat % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            start = time.perf_counter()
            outputs[contender] = _draw(pipes[contender], steps)
            times[contender].append(time.perf_counter() - start)
    images_per_s = {c: BATCH / statistics.median(t) for c, t in times.items()}
    best = max(candidates, key=lambda c: images_per_s[f"hf_ddpm+{c}"])
    diff_plain = float(np.abs(outputs["hf_ddpm"] - outputs["diffusers"]).max())
    diff_vs_plain = {
        c: float(np.abs(outputs[f"hf_ddpm+{c}"] - outputs["hf_ddpm"]).max()) for c in candidates
    }
    return {
        "model": name,
        "parameters": sum(p.numel() for p in pipes["hf_ddpm"].unet.parameters()),
        "batch": BATCH,
        "steps": steps,
        "repeats": repeats,
        "seconds": times,
        "warmup_s": warmup_s,
        "images_per_s": images_per_s,
        "best_settings": best,
        "speedup_vs_diffusers": {
            c: images_per_s[f"hf_ddpm+{c}"] / images_per_s["diffusers"] for c in candidates
        },
        "speedup_best_vs_diffusers": images_per_s[f"hf_ddpm+{best}"] / images_per_s["diffusers"],
        "speedup_plain_vs_diffusers": images_per_s["hf_ddpm"] / images_per_s["diffusers"],
        "max_abs_diff_plain_vs_diffusers": diff_plain,
        "max_abs_diff_vs_plain": diff_vs_plain,
        "max_abs_diff_best_vs_plain": diff_vs_plain[best],
        "outputs_match": diff_plain <= IMAGE_ATOL,
    }


# ------------------------------------------------------------------------------------- processes


def _shard_worker(name: str, folder: str, images: int, steps: int) -> None:
    """One process of a torchrun launch: time write_sample_folder between two barriers."""
    from diffusers import UNet2DModel

    from hf_ddpm.core.pipeline import HFDDPMPipeline
    from hf_ddpm.core.scheduling import HFDDPMScheduler
    from hf_ddpm.sampling.sample_folder import (
        PipelineSampling,
        SampleFolderJob,
        write_sample_folder,
    )
    from hf_ddpm.sampling.sharding import process_group

    torch.set_num_threads(1)
    seen = {"images": 0}
    forward = UNet2DModel.forward

    def counting(self: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        seen["images"] += int(sample.shape[0])
        return forward(self, sample, *args, **kwargs)

    UNet2DModel.forward = counting
    group = process_group("cpu")
    unet, config = _model(name)  # the same weights on every process: seeded, or the bundled ones
    pipe = HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler.from_config(config))
    pipe.set_progress_bar_config(disable=True)
    drawing = PipelineSampling(pipe, "ddpm", steps, seed=0)
    job = SampleFolderJob(folder, images, BATCH, settings=drawing.settings())
    group.barrier()
    start = time.perf_counter()
    write_sample_folder(drawing, job, group)
    group.barrier()
    elapsed = time.perf_counter() - start
    counted = group.sum(seen["images"])
    if group.is_main:
        print(json.dumps({"seconds": elapsed, "unet_images": counted, "world": group.world}))


def _launch(processes: int, name: str, folder: str, images: int, steps: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", str(processes), os.path.abspath(__file__)]
    command += ["--worker", folder, "--models", name]
    command += ["--shard-images", str(images), "--shard-steps", str(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_processes(name: str, images: int, steps: int, repeats: int) -> dict[str, Any]:
    from hf_ddpm.sampling.sample_folder import read_samples

    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as workdir:
        for repeat in range(repeats):
            for processes in (1, 2) if repeat % 2 == 0 else (2, 1):
                folder = os.path.join(workdir, f"p{processes}-r{repeat}")
                runs[processes].append(_launch(processes, name, folder, images, steps))
        one = read_samples(os.path.join(workdir, "p1-r0")).astype(int)
        two = read_samples(os.path.join(workdir, "p2-r0")).astype(int)
    seconds = {p: [r["seconds"] for r in rs] for p, rs in runs.items()}
    return {
        "model": name,
        "images": images,
        "steps": steps,
        "batch_per_process": BATCH,
        "repeats": repeats,
        "seconds": seconds,
        "images_per_s": {p: images / statistics.median(s) for p, s in seconds.items()},
        "speedup_2_vs_1": statistics.median(seconds[1]) / statistics.median(seconds[2]),
        "unet_images_counted": {p: [r["unet_images"] for r in rs] for p, rs in runs.items()},
        "unet_images_expected": images * steps,
        "max_grey_level_diff_2_vs_1": int(np.abs(one - two).max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="bundled,ddpm-cifar10")
    parser.add_argument("--steps", type=int, default=100, help="sampling steps of each timed run")
    parser.add_argument(
        "--big-steps", type=int, default=None, help="steps for ddpm-cifar10 (default: --steps)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--candidates",
        default=",".join(CANDIDATES),
        help="the CPU settings the best one is chosen from",
    )
    parser.add_argument(
        "--shard-images", type=int, default=32, help="images of each 1- and 2-process run"
    )
    parser.add_argument(
        "--shard-steps", type=int, default=None, help="their steps (default: the model's --steps)"
    )
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _shard_worker(args.models, args.worker, args.shard_images, args.shard_steps)
        return 0
    candidates = [c for c in args.candidates.split(",") if c]
    unknown = [c for c in candidates if c not in CANDIDATES]
    if unknown or not candidates:
        parser.error(f"--candidates takes {', '.join(CANDIDATES)}; got {args.candidates!r}")
    torch.set_num_threads(1)
    import harness

    result: dict[str, Any] = {
        "command": "python benchmarks/sample_scale.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": harness.machine(),
        "per_call": [],
        "processes": [],
    }
    for name in args.models.split(","):
        steps = args.big_steps if name != "bundled" and args.big_steps else args.steps
        print(f"[sample_scale] per UNet call: {name}, {steps} steps ...", file=sys.stderr)
        entry = bench_per_call(name, steps, args.repeats, candidates)
        result["per_call"].append(entry)
        print(
            f"{name}: images/s "
            + ", ".join(f"{c} {v:.3f}" for c, v in entry["images_per_s"].items())
            + f"; best settings {entry['best_settings']}: "
            f"{entry['speedup_best_vs_diffusers']:.2f}x diffusers, plain/diffusers "
            f"{entry['speedup_plain_vs_diffusers']:.2f}x; outputs match {entry['outputs_match']}"
        )
        shard_steps = args.shard_steps or steps
        print(f"[sample_scale] 2 processes vs 1: {name}, {shard_steps} steps ...", file=sys.stderr)
        shard = bench_processes(name, args.shard_images, shard_steps, args.repeats)
        result["processes"].append(shard)
        print(
            f"{name}, processes: images/s 1: {shard['images_per_s'][1]:.3f}, 2: "
            f"{shard['images_per_s'][2]:.3f}; 2 vs 1 {shard['speedup_2_vs_1']:.2f}x; UNet images "
            f"counted {shard['unet_images_counted']} (expected {shard['unet_images_expected']}); max "
            f"grey-level difference {shard['max_grey_level_diff_2_vs_1']}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=str)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
