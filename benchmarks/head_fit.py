"""How well a covariance head fits, per timestep, on held-out digits.

    python benchmarks/head_fit.py --model MODEL_WITH_A_HEAD --kind npr --timesteps 100,300,600,900 \
        --images 32 --chain-steps 10,25 --json head-fit.json

For each timestep t and each of ``--images`` held-out digits (``--draws`` noise draws each; the model of
p(x): its null label), eps_theta and the head come from one UNet call at x_t ~ q(x_t | x_0)
(``hf_ddpm.evaluation.bound.unconditional_model``, as the pipelines sample). Reported:

- ``head_mean``: the head's mean prediction, NPR's g or SN's h;
- ``target_mean``: the mean of what the head regresses on, (eps - eps_theta)^2 (NPR) or eps^2 (SN), over
  the same draws: a fitted head's mean prediction is its conditional mean's average, so the two agree;
- ``eps_error_moment``: the head's estimate of E[(eps - eps_theta)^2 | x_t] (NPR: g; SN: h - eps_theta^2)
  against ``measured_eps_error`` (the mean of (eps - eps_theta)^2) and Analytic-DPM's scalar 1 - Gamma_t
  (``one_minus_gamma``, from the scheduler config's eps_second_moment);
- ``clipped_to_zero`` / ``clipped_to_one``: the shares of pixels whose Cov[x_0 | x_t] (core/covariance.py,
  ``x0_covariance``) is clipped to 0 (a non-positive error moment) or to 1;
- ``covariance_mean`` against ``analytic_covariance``: the mean per-pixel Cov[x_0 | x_t] against the
  analytic variance's (beta-bar_t / alpha-bar_t)(1 - Gamma_t).

With ``--chain-steps K,...``: for each noise-adding step t -> s of the K-step DDPM chain (the model's
spacing), how far the optimal variance sigma^2 = beta-tilde_{s|t} + gain^2 Cov[x_0 | x_t]
(core/covariance.py) lifts the step above fixed_small's beta-tilde_{s|t}: the pixels' mean of
sigma^2 / beta-tilde with the head's Cov (``head_ratio``) and with the analytic one (``analytic_ratio``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from digit_quality import real_digits


def measure(pipeline, kind: str, timesteps: list[int], images: torch.Tensor, draws: int, seed: int):
    """One row per timestep (see the module docstring)."""
    from hf_ddpm.core.covariance import x0_covariance
    from hf_ddpm.core.variance import HEAD_VARIANCES
    from hf_ddpm.evaluation.bound import unconditional_model

    model = unconditional_model(
        pipeline.unet, pipeline.config.null_class_label, pipeline.covariance_head
    )
    scheduler = pipeline.scheduler
    gamma = scheduler.config.eps_second_moment
    channels = images.shape[1]
    rows = []
    for t in timesteps:
        generator = torch.Generator().manual_seed(seed + t)
        x0 = images.repeat(draws, 1, 1, 1)
        eps = torch.randn(x0.shape, generator=generator)
        steps = torch.full((len(x0),), t, dtype=torch.long)
        x_t = scheduler.add_noise(x0, eps, steps)
        with torch.no_grad():
            out = model(x_t, steps).double()
        eps_theta, head = out[:, :channels], out[:, channels:]
        eps = eps.double()
        target = (eps - eps_theta) ** 2 if kind == "npr" else eps**2
        error_moment = HEAD_VARIANCES[kind].eps_error_moment(eps_theta, head)
        ab = float(scheduler.alphas_cumprod[t])
        covariance = x0_covariance((1 - ab) / ab, error_moment)
        row = {
            "t": t,
            "head_mean": float(head.mean()),
            "target_mean": float(target.mean()),
            "eps_error_moment": float(error_moment.mean()),
            "measured_eps_error": float(((eps - eps_theta) ** 2).mean()),
            "clipped_to_zero": float((error_moment <= 0).double().mean()),
            "clipped_to_one": float(((1 - ab) / ab * error_moment >= 1).double().mean()),
            "covariance_mean": float(covariance.mean()),
        }
        if gamma is not None:
            row["one_minus_gamma"] = 1 - gamma[t]
            scalar = np.float64(1 - gamma[t])
            row["analytic_covariance"] = float(x0_covariance((1 - ab) / ab, scalar))
        rows.append(row)
    return rows


def chain_ratios(pipeline, kind: str, steps: int, images: torch.Tensor, seed: int) -> list[dict]:
    """One row per noise-adding step of the ``steps``-step chain (see the module docstring)."""
    from hf_ddpm.core.covariance import step_variance_coefficients, x0_covariance
    from hf_ddpm.core.variance import HEAD_VARIANCES
    from hf_ddpm.evaluation.bound import unconditional_model

    model = unconditional_model(
        pipeline.unet, pipeline.config.null_class_label, pipeline.covariance_head
    )
    scheduler = pipeline.scheduler
    scheduler.set_timesteps(steps)
    kept = scheduler.timesteps.tolist()
    gamma = scheduler.config.eps_second_moment
    channels = images.shape[1]
    rows = []
    for t, s in zip(kept, kept[1:]):
        generator = torch.Generator().manual_seed(seed + t)
        eps = torch.randn(images.shape, generator=generator)
        ts = torch.full((len(images),), t, dtype=torch.long)
        with torch.no_grad():
            out = model(scheduler.add_noise(images, eps, ts), ts).double()
        ab_t, ab_s = float(scheduler.alphas_cumprod[t]), float(scheduler.alphas_cumprod[s])
        floor, gain = step_variance_coefficients(ab_t, ab_s)
        error_moment = HEAD_VARIANCES[kind].eps_error_moment(out[:, :channels], out[:, channels:])
        head = (floor + gain**2 * x0_covariance((1 - ab_t) / ab_t, error_moment)) / floor
        row = {"k": steps, "t": t, "s": s, "head_ratio": float(head.mean())}
        if gamma is not None:
            analytic = x0_covariance((1 - ab_t) / ab_t, np.float64(1 - gamma[t]))
            row["analytic_ratio"] = float((floor + gain**2 * analytic) / floor)
        rows.append(row)
    return rows


def _print_table(rows: list[dict]) -> None:
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + " --- |" * len(keys))
    for row in rows:
        print("| " + " | ".join(f"{row[k]:.4g}" for k in keys) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a pipeline folder with a covariance head")
    parser.add_argument("--kind", required=True, choices=("sn", "npr"))
    parser.add_argument("--timesteps", default="100,300,600,900")
    parser.add_argument("--images", type=int, default=32, help="the first N held-out digits")
    parser.add_argument("--draws", type=int, default=1, help="noise draws per digit and timestep")
    parser.add_argument(
        "--chain-steps", default="", help="K,...: the step variances of K-step chains"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from hf_ddpm import HFDDPMPipeline

    pipeline = HFDDPMPipeline.from_pretrained(args.model)
    if pipeline.covariance_head is None:
        parser.error(f"--model {args.model} carries no covariance head")
    held_out = torch.from_numpy(real_digits("test")[0][: args.images]).float().view(-1, 1, 32, 32)
    timesteps = [int(t) for t in args.timesteps.split(",")]
    start = time.perf_counter()
    rows = measure(pipeline, args.kind, timesteps, held_out, args.draws, args.seed)
    _print_table(rows)
    chains = []
    for steps in [int(k) for k in args.chain_steps.split(",") if k]:
        chains += chain_ratios(pipeline, args.kind, steps, held_out, args.seed)
    if chains:
        _print_table(chains)
    print(f"{time.perf_counter() - start:.0f} s")
    if args.json:
        report = {
            "model": args.model,
            "kind": args.kind,
            "images": args.images,
            "draws": args.draws,
        }
        report |= {"rows": rows, "chain_steps": chains}
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
