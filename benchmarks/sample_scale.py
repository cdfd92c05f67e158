"""Sampling at scale on CPU (issue 19): images/s per UNet call against diffusers, and 2 processes against 1.

    python benchmarks/sample_scale.py [--models bundled,ddpm-cifar10] [--steps 100] [--repeats 3]
                                      [--shard-images 16] [--shard-steps 10] [--json FILE]

- **Per UNet call** (1 thread, batch 16): for each model, ``DDPMPipeline`` (diffusers' scheduler from the
  model's config), ``HFDDPMPipeline`` as saved, and ``HFDDPMPipeline`` with the best CPU settings
  (:mod:`hf_ddpm.sampling.unet_speed`: channels_last; bf16 autocast is slower on a CPU without AVX-512
  BF16 and torch.compile needs a C++ toolchain and minutes of warm-up, so neither is used here), each on its
  own copy of the same weights and from the same seed. The contenders are interleaved, in a rotating order,
  and each figure is the median of ``--repeats`` runs after a 1-step warm-up. Outputs are compared first.
- **Processes** (1 thread each): ``hf-ddpm sample --output-dir``'s writer (:func:`write_sample_folder`)
  under ``torchrun --nproc_per_node 1`` and ``2``, interleaved; each run times its sampling between two
  barriers (model loading and process start-up excluded), counts the images its UNet calls saw (N x steps
  in all means no duplicated work), and the two folders are compared (within 2 grey levels).

``bundled`` is the bundled mnist-5k model's UNet (1.1M parameters, 32x32x1; without its class embedding
in the per-call section, since ``DDPMPipeline`` passes no labels); ``ddpm-cifar10`` is Ho et al.'s
35.7M UNet (32x32x3), randomly initialised: the cost does not depend on the weights.
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
CONTENDERS = ("diffusers", "hf_ddpm", "hf_ddpm-best")
IMAGE_ATOL = 1e-3  # fp32 pipelines on one scheduler must agree this closely (images in [0, 1])


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


def _contenders(name: str) -> dict[str, Any]:
    from diffusers import DDPMPipeline, DDPMScheduler

    from hf_ddpm.core.pipeline import HFDDPMPipeline
    from hf_ddpm.core.scheduling import HFDDPMScheduler
    from hf_ddpm.sampling.samplers import scheduler_from_config
    from hf_ddpm.sampling.unet_speed import UNetSpeed, apply_unet_speed

    unet, config = _model(name)
    # The model's schedule and spacing in diffusers' own scheduler; fixed_small is diffusers' default.
    theirs = scheduler_from_config(DDPMScheduler, {**config, "variance_type": "fixed_small"})
    pipes = {
        "diffusers": DDPMPipeline(unet=copy.deepcopy(unet), scheduler=theirs),
        "hf_ddpm": HFDDPMPipeline(
            unet=copy.deepcopy(unet), scheduler=HFDDPMScheduler.from_config(config)
        ),
        "hf_ddpm-best": HFDDPMPipeline(
            unet=copy.deepcopy(unet), scheduler=HFDDPMScheduler.from_config(config)
        ),
    }
    apply_unet_speed(pipes["hf_ddpm-best"], UNetSpeed(channels_last=True))
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    return pipes


def _draw(pipe: Any, steps: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipe(
        batch_size=BATCH, generator=generator, num_inference_steps=steps, output_type="np"
    ).images


def bench_per_call(name: str, steps: int, repeats: int) -> dict[str, Any]:
    pipes = _contenders(name)
    for pipe in pipes.values():
        _draw(pipe, 1)  # warm-up
    times: dict[str, list[float]] = {c: [] for c in CONTENDERS}
    outputs: dict[str, np.ndarray] = {}
    for repeat in range(repeats):
        order = CONTENDERS[repeat % 3 :] + CONTENDERS[: repeat % 3]
        for contender in order:
            start = time.perf_counter()
            outputs[contender] = _draw(pipes[contender], steps)
            times[contender].append(time.perf_counter() - start)
    images_per_s = {c: BATCH / statistics.median(t) for c, t in times.items()}
    diff_plain = float(np.abs(outputs["hf_ddpm"] - outputs["diffusers"]).max())
    diff_best = float(np.abs(outputs["hf_ddpm-best"] - outputs["hf_ddpm"]).max())
    return {
        "model": name,
        "parameters": sum(p.numel() for p in pipes["hf_ddpm"].unet.parameters()),
        "batch": BATCH,
        "steps": steps,
        "repeats": repeats,
        "seconds": times,
        "images_per_s": images_per_s,
        "speedup_best_vs_diffusers": images_per_s["hf_ddpm-best"] / images_per_s["diffusers"],
        "speedup_plain_vs_diffusers": images_per_s["hf_ddpm"] / images_per_s["diffusers"],
        "max_abs_diff_plain_vs_diffusers": diff_plain,
        "max_abs_diff_best_vs_plain": diff_best,
        "outputs_match": diff_plain <= IMAGE_ATOL,
    }


# ------------------------------------------------------------------------------------- processes


def _shard_worker(folder: str, images: int, steps: int) -> None:
    """One process of a torchrun launch: time write_sample_folder between two barriers."""
    from diffusers import UNet2DModel

    from hf_ddpm.sampling.sample import load_for_sampling
    from hf_ddpm.sampling.sample_folder import SampleFolderJob, pipeline_drawer, write_sample_folder
    from hf_ddpm.sampling.sharding import process_group

    torch.set_num_threads(1)
    seen = {"images": 0}
    forward = UNet2DModel.forward

    def counting(self: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        seen["images"] += int(sample.shape[0])
        return forward(self, sample, *args, **kwargs)

    UNet2DModel.forward = counting
    group = process_group("cpu")
    pipe = load_for_sampling(None)
    pipe.set_progress_bar_config(disable=True)
    job = SampleFolderJob(folder, images, BATCH, settings={"steps": steps})
    group.barrier()
    start = time.perf_counter()
    write_sample_folder(pipeline_drawer(pipe, 0, steps), job, group)
    group.barrier()
    elapsed = time.perf_counter() - start
    counted = group.sum(seen["images"])
    if group.is_main:
        print(json.dumps({"seconds": elapsed, "unet_images": counted, "world": group.world}))


def _launch(processes: int, folder: str, images: int, steps: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", str(processes), os.path.abspath(__file__)]
    command += ["--worker", folder, "--shard-images", str(images), "--shard-steps", str(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_processes(images: int, steps: int, repeats: int) -> dict[str, Any]:
    from hf_ddpm.sampling.sample_folder import read_samples

    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as workdir:
        for repeat in range(repeats):
            for processes in (1, 2) if repeat % 2 == 0 else (2, 1):
                folder = os.path.join(workdir, f"p{processes}-r{repeat}")
                runs[processes].append(_launch(processes, folder, images, steps))
        one = read_samples(os.path.join(workdir, "p1-r0")).astype(int)
        two = read_samples(os.path.join(workdir, "p2-r0")).astype(int)
    seconds = {p: [r["seconds"] for r in rs] for p, rs in runs.items()}
    return {
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
    parser.add_argument("--shard-images", type=int, default=16)
    parser.add_argument("--shard-steps", type=int, default=10)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _shard_worker(args.worker, args.shard_images, args.shard_steps)
        return 0
    torch.set_num_threads(1)
    import harness

    result: dict[str, Any] = {
        "command": "python benchmarks/sample_scale.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": harness.machine(),
        "per_call": [],
    }
    for name in args.models.split(","):
        steps = args.big_steps if name != "bundled" and args.big_steps else args.steps
        print(f"[sample_scale] per UNet call: {name}, {steps} steps ...", file=sys.stderr)
        entry = bench_per_call(name, steps, args.repeats)
        result["per_call"].append(entry)
        print(
            f"{name}: images/s "
            + ", ".join(f"{c} {v:.3f}" for c, v in entry["images_per_s"].items())
            + f"; best/diffusers {entry['speedup_best_vs_diffusers']:.2f}x, plain/diffusers "
            f"{entry['speedup_plain_vs_diffusers']:.2f}x; outputs match {entry['outputs_match']}"
        )
    print("[sample_scale] 2 processes vs 1 ...", file=sys.stderr)
    shard = bench_processes(args.shard_images, args.shard_steps, args.repeats)
    result["processes"] = shard
    print(
        f"processes: images/s 1: {shard['images_per_s'][1]:.3f}, 2: {shard['images_per_s'][2]:.3f}; "
        f"2 vs 1 {shard['speedup_2_vs_1']:.2f}x; UNet images counted "
        f"{shard['unet_images_counted']} (expected {shard['unet_images_expected']}); max grey-level "
        f"difference {shard['max_grey_level_diff_2_vs_1']}"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=str)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
