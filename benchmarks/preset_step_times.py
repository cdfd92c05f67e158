"""Seconds per training step of each UNet preset, as ``hf-ddpm train`` takes it (issue 22, the README's table).

    python benchmarks/preset_step_times.py [--steps N] [--batch-size B] [--threads N] [--device D] [--json FILE]

Each preset gets a real training setup (``prepare_training`` on the bundled mnist-5k converted to RGB, 32x32,
the default batch of 128, L_simple) and takes optimizer steps with the run's own ``TrainingStep``. The presets
are interleaved round by round (one step each per round, the order rotated), so a burst of load from other
processes on a shared machine hits all of them; each figure is the median after one warm-up step, with min
and max in the JSON. On CUDA every step is synchronised before its clock stops.

Two clocks: wall time, and the process's CPU time (all its threads). On a CPU shared with other work, the
wall time of a step grows with the load while its CPU time barely does; CPU time / threads is then the
better guess of the wall time on an idle machine with the same threads.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

from hf_ddpm.data.image_datasets import collate
from hf_ddpm.training.step import TrainingStep
from hf_ddpm.training.train import prepare_training
from hf_ddpm.training.train_config import TrainConfig
from hf_ddpm.training.unet_presets import PRESETS


def _setup(preset: str, batch_size: int, folder: str):
    from torch.utils.data import DataLoader

    config = TrainConfig(
        model_preset=preset,
        channels=3,
        batch_size=batch_size,
        max_steps=10_000,
        logger="none",
        dataloader_num_workers=0,
        output_dir=os.path.join(folder, preset),
        calibrate=False,
    )
    setup, _ = prepare_training(config)
    loader = DataLoader(setup.train_data, batch_sampler=setup.batch_sampler, collate_fn=collate)
    parameters = sum(p.numel() for p in setup.unwrapped.parameters())
    return TrainingStep(setup), iter(loader), parameters


def _timed_step(step: TrainingStep, batches, device: str) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one optimizer step."""
    start, cpu = time.perf_counter(), time.process_time()
    outcome = step.optimizer_step(batches)
    outcome.loss.item()  # waits for the device
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per preset")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"  # accelerate picks a GPU where there is one
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    presets = args.presets.split(",")
    started = datetime.datetime.now(datetime.UTC)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        runs = {p: _setup(p, args.batch_size, folder) for p in presets}
        for step, batches, _ in runs.values():
            _timed_step(step, batches, args.device)  # warm-up
        times: dict[str, list[tuple[float, float]]] = {p: [] for p in presets}
        for round_index in range(args.steps):
            order = presets[round_index % len(presets) :] + presets[: round_index % len(presets)]
            for preset in order:
                step, batches, _ = runs[preset]
                times[preset].append(_timed_step(step, batches, args.device))
                wall, cpu = times[preset][-1]
                print(f"{preset}: {wall:.2f} s wall, {cpu:.2f} s CPU", file=sys.stderr, flush=True)
    report = {
        "command": "python benchmarks/preset_step_times.py "
        + f"--steps {args.steps} --batch-size {args.batch_size} --device {args.device}"
        + (f" --threads {args.threads}" if args.threads else ""),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "batch_size": args.batch_size,
        "resolution": 32,
        "channels": 3,
        "presets": {
            p: {
                "parameters": runs[p][2],
                "median_s_per_step": statistics.median(w for w, _ in t),
                "min_s": min(w for w, _ in t),
                "max_s": max(w for w, _ in t),
                "median_cpu_s_per_step": statistics.median(c for _, c in t),
                "n": len(t),
            }
            for p, t in times.items()
        },
    }
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
