"""The NLL bound in bits/dim over a held-out set: the exact T-term loop, and an importance-sampled estimate.

Both estimate the same expectation, the variational bound of Ho et al. 2020 eq. 5,

    L = L_T + sum_{t=1}^{T-1} L_t + L_0   (prior + rate + distortion, Ho et al. Table 4),

where every L_t is itself a one-sample Monte Carlo estimate over x_t ~ q(x_t | x_0).

- :func:`exact_nll` evaluates all T terms of every image with :func:`hf_ddpm.variational_bound`.
- :func:`importance_sampled_nll` evaluates L_T and L_0 of every image, draws K timesteps per image from a
  proposal q(t) on 1..T-1 and averages L_t / q(t): E_{t~q}[L_t / q(t)] = sum_{t>=1} L_t, so the estimate is
  unbiased for any q(t) > 0. Its extra variance vanishes when q(t) is proportional to L_t; the per-term
  means of an exact run on a few images (:func:`term_means_proposal`), or a ``LossSecondMomentResampler``
  (Nichol & Dhariwal 2021, sec. 3.3), come close, while a uniform q(t) is far worse. docs/evaluation.md
  states the measured variance against the exact loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .bound import Progress, measure_noised_rows, variational_bound, vlb_terms_measure

__all__ = [
    "NLLResult",
    "combine_nll_results",
    "exact_nll",
    "importance_sampled_bound",
    "importance_sampled_nll",
    "proposal_probabilities",
    "term_means_proposal",
    "terms_progress",
]


@dataclass
class NLLResult:
    """The bound over a set of images, in bits/dim.

    Attributes:
        bpd: mean total bound over images (Ho et al. Table 1 "NLL").
        bpd_stderr: standard error of that mean (over images; for the sampled estimator it includes the
            timestep-sampling noise).
        prior_bpd: mean L_T.
        rate_bpd: mean sum of L_1..L_{T-1}.
        distortion_bpd: mean L_0.
        num_images: number of images.
        num_train_timesteps: T.
        estimator: ``"exact"`` or ``"importance-sampled"``.
        timesteps_per_image: T for the exact loop, K for the sampled estimate.
        per_image_bpd: the total per image, shape (num_images,); not part of :meth:`to_dict`.
    """

    bpd: float
    bpd_stderr: float
    prior_bpd: float
    rate_bpd: float
    distortion_bpd: float
    num_images: int
    num_train_timesteps: int
    estimator: str
    timesteps_per_image: int
    per_image_bpd: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the per-image values)."""
        out = asdict(self)
        del out["per_image_bpd"]
        return out


def _summarise(
    total: torch.Tensor,
    prior: torch.Tensor,
    rate: torch.Tensor,
    distortion: torch.Tensor,
    num_train_timesteps: int,
    estimator: str,
    timesteps_per_image: int,
) -> NLLResult:
    n = total.numel()
    if n == 0:
        raise ValueError("no images to evaluate the NLL on")
    stderr = float(total.std(unbiased=True) / n**0.5) if n > 1 else float("nan")
    return NLLResult(
        bpd=float(total.mean()),
        bpd_stderr=stderr,
        prior_bpd=float(prior.mean()),
        rate_bpd=float(rate.mean()),
        distortion_bpd=float(distortion.mean()),
        num_images=n,
        num_train_timesteps=num_train_timesteps,
        estimator=estimator,
        timesteps_per_image=timesteps_per_image,
        per_image_bpd=total.numpy(),
    )


def combine_nll_results(results: Sequence[NLLResult]) -> NLLResult:
    """One result over the images of ``results`` (parts of one set, in order, same estimator): the means
    weighted by image counts, the standard error from all per-image totals."""
    if not results:
        raise ValueError("no images to evaluate the NLL on")
    if len(results) == 1:
        return results[0]
    counts = np.array([r.num_images for r in results], dtype=np.float64)

    def mean(name: str) -> float:
        return float(np.dot(counts, [getattr(r, name) for r in results]) / counts.sum())

    total = np.concatenate([r.per_image_bpd for r in results])
    n = len(total)
    return dataclasses.replace(
        results[0],
        bpd=float(total.mean()),
        bpd_stderr=float(total.std(ddof=1) / n**0.5) if n > 1 else float("nan"),
        prior_bpd=mean("prior_bpd"),
        rate_bpd=mean("rate_bpd"),
        distortion_bpd=mean("distortion_bpd"),
        num_images=n,
        per_image_bpd=total,
    )


@contextmanager
def terms_progress(
    batches: Iterable[torch.Tensor],
    terms_per_image: int,
    desc: str,
    progress: Progress | None = None,
) -> Iterator[Progress]:
    """``progress`` where the caller has a bar of its own, else a bar over the terms the network evaluates
    for ``batches`` (one term: an image at one timestep), with its total where they are a sequence: the
    real work, which a bar over batches shows as "0/1" until the end."""
    if progress is not None:
        yield progress
        return
    sized = isinstance(batches, Sequence)
    total = sum(len(x0) for x0 in batches) * terms_per_image if sized else None
    with tqdm(total=total, desc=desc, unit="term", leave=False) as bar:
        yield bar.update


def exact_nll(
    model: Callable[..., Any],
    scheduler: Any,
    batches: Iterable[torch.Tensor],
    num_bins: int = 256,
    generator: torch.Generator | None = None,
    max_batch_size: int = 256,
    num_inference_steps: int | None = None,
    progress: Progress | None = None,
) -> NLLResult:
    """The full T-term bound of every image, averaged (improved-diffusion's ``calc_bpd_loop``); with
    ``num_inference_steps=K`` the bound of the K-step chain (see :func:`hf_ddpm.variational_bound`).

    Args:
        model: ``model(x_t, t)`` returning the scheduler's model output (tensor or object with ``.sample``).
        scheduler: an ``HFDDPMScheduler`` (needs ``add_noise``, ``vlb_terms_bpd``, ``prior_bpd``).
        batches: image batches x0 (B, C, H, W) in [-1, 1], on the data's ``num_bins`` grid.
        num_bins: intensity levels of the data (256 for 8-bit images).
        generator: draws the x_t of each term.
        max_batch_size: network inputs per call.
        progress: told the terms done after each network call (:func:`terms_progress`); a bar of
            its own over all of them when None.
    """
    parts: dict[str, list[torch.Tensor]] = {"total": [], "prior": [], "rate": [], "distortion": []}
    num_timesteps = int(scheduler.config.num_train_timesteps)
    steps = num_timesteps if num_inference_steps is None else int(num_inference_steps)
    with terms_progress(batches, steps, "NLL (exact)", progress) as done:
        for x0 in batches:
            bound = variational_bound(
                model,
                scheduler,
                x0,
                generator=generator,
                num_bins=num_bins,
                max_batch_size=max_batch_size,
                num_inference_steps=num_inference_steps,
                progress=done,
            )
            parts["total"].append(bound.total_bpd.cpu())
            parts["prior"].append(bound.prior_bpd.cpu())
            parts["rate"].append(bound.rate_bpd.cpu())
            parts["distortion"].append(bound.distortion_bpd.cpu())
    if not parts["total"]:
        raise ValueError("no images to evaluate the NLL on")
    cat = {name: torch.cat(values) for name, values in parts.items()}
    return _summarise(
        **cat,
        num_train_timesteps=num_timesteps,
        estimator="exact" if num_inference_steps is None else f"exact, {steps}-step chain",
        timesteps_per_image=steps,
    )


def proposal_probabilities(num_timesteps: int, proposal: Any = None) -> torch.Tensor:
    """The proposal q(t) for the rate terms t = 1..T-1, as float64 probabilities of shape (T,), q(0) = 0.

    The decoder term L_0 is not sampled: :func:`importance_sampled_bound` evaluates it for every image.

    Args:
        num_timesteps: T (at least 2).
        proposal: None (uniform over 1..T-1), non-negative weights of length T (entry 0 is ignored; the
            rest are normalised here), or an object with a ``probabilities()`` method such as
            ``hf_ddpm.training.timestep_sampler.LossSecondMomentResampler``.

    Raises:
        ValueError: T < 2, a wrong length, or a weight for t >= 1 that is not finite and > 0 (a timestep with
            q(t) = 0 is never drawn, which would bias the estimate).
    """
    if num_timesteps < 2:
        raise ValueError(
            f"the sampled estimate needs num_train_timesteps >= 2; got {num_timesteps}"
        )
    if proposal is None:
        weights = torch.ones(num_timesteps, dtype=torch.float64)
    else:
        if hasattr(proposal, "probabilities"):
            proposal = proposal.probabilities()
        weights = torch.as_tensor(np.asarray(proposal, dtype=np.float64)).clone()
    if weights.shape != (num_timesteps,):
        raise ValueError(
            f"proposal must have one weight per timestep, shape ({num_timesteps},); "
            f"got {tuple(weights.shape)}"
        )
    weights[0] = 0.0
    rate_weights = weights[1:]
    if not (torch.isfinite(rate_weights).all() and (rate_weights > 0).all()):
        raise ValueError(
            "proposal weights for t = 1..T-1 must all be finite and > 0: a timestep with q(t) = 0 is "
            "never drawn, which biases the estimate"
        )
    return weights / weights.sum()


def term_means_proposal(
    model: Callable[..., Any],
    scheduler: Any,
    x0: torch.Tensor,
    generator: torch.Generator | None = None,
    num_bins: int = 256,
    max_batch_size: int = 256,
) -> torch.Tensor:
    """Proposal weights (T,) for :func:`importance_sampled_bound`: the mean of each L_t over ``x0``'s images,
    from the exact loop (costs T network calls per image; a few images suffice)."""
    bound = variational_bound(
        model, scheduler, x0, generator=generator, num_bins=num_bins, max_batch_size=max_batch_size
    )
    # a floor keeps every q(t) > 0 even where a term happened to come out ~0 on these images
    means = bound.terms_bpd.mean(0).clamp_min(0.0).cpu()
    return means + 1e-3 * means[1:].mean()


@torch.no_grad()
def importance_sampled_bound(
    model: Callable[..., Any],
    scheduler: Any,
    x0: torch.Tensor,
    num_timesteps: int,
    proposal: Any = None,
    generator: torch.Generator | None = None,
    num_bins: int = 256,
    max_batch_size: int = 256,
    progress: Progress | None = None,
) -> dict[str, torch.Tensor]:
    """Unbiased per-image estimates of the bound: L_T + L_0 + (1/K) sum_k L_{t_k} / q(t_k), t_k ~ q on 1..T-1.

    The decoder term L_0 is evaluated for every image (one extra network call each) rather than sampled: it
    is a single timestep carrying a large share of the bound (Ho et al. Table 4: 1.97 of 3.75 bits/dim), so
    drawing it with probability q(0) would make the estimate heavy-tailed. Returns float64 tensors (B,)
    under ``total``, ``prior``, ``rate`` (the sampled part) and ``distortion`` (L_0). ``progress(n)``
    after each network call, with its n terms: B x (K + 1) in all.
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps (K) must be >= 1; got {num_timesteps}")
    q = proposal_probabilities(int(scheduler.config.num_train_timesteps), proposal)
    batch, draws = x0.shape[0], x0.shape[0] * num_timesteps
    sample_device = generator.device if generator is not None else torch.device("cpu")
    t_rate = torch.multinomial(q.to(sample_device), draws, replacement=True, generator=generator)
    # rows i*K + k: image i's k-th draw; then one t = 0 row per image for its decoder term
    t_all = torch.cat(
        [t_rate.to(x0.device), torch.zeros(batch, dtype=torch.long, device=x0.device)]
    )
    image_index = torch.arange(batch, device=x0.device)
    image_index = torch.cat([image_index.repeat_interleave(num_timesteps), image_index])
    q_dev = q.to(x0.device)
    weight = torch.cat([1.0 / (num_timesteps * q_dev[t_all[:draws]]), q_dev.new_ones(batch)])
    terms = measure_noised_rows(
        model,
        scheduler,
        x0,
        image_index=image_index,
        timesteps=t_all,
        rows_per_call=max_batch_size,
        measure=vlb_terms_measure(scheduler, num_bins),
        generator=generator,
        progress=progress,
    )
    values = terms * weight
    rate = values[:draws].view(batch, num_timesteps).sum(1)
    distortion = values[draws:]
    prior = scheduler.prior_bpd(x0).to(torch.float64)
    return {
        "total": prior + rate + distortion,
        "prior": prior,
        "rate": rate,
        "distortion": distortion,
    }


def importance_sampled_nll(
    model: Callable[..., Any],
    scheduler: Any,
    batches: Iterable[torch.Tensor],
    num_timesteps: int,
    proposal: Any = None,
    num_bins: int = 256,
    generator: torch.Generator | None = None,
    max_batch_size: int = 256,
    progress: Progress | None = None,
) -> NLLResult:
    """:func:`importance_sampled_bound` over all batches, summarised like :func:`exact_nll`; ``progress``
    as there (K + 1 terms per image)."""
    parts: dict[str, list[torch.Tensor]] = {"total": [], "prior": [], "rate": [], "distortion": []}
    bar = terms_progress(batches, num_timesteps + 1, f"NLL (K={num_timesteps})", progress)
    with bar as done:
        for x0 in batches:
            est = importance_sampled_bound(
                model,
                scheduler,
                x0,
                num_timesteps,
                proposal,
                generator,
                num_bins,
                max_batch_size,
                progress=done,
            )
            for name, values in est.items():
                parts[name].append(values.cpu())
    if not parts["total"]:
        raise ValueError("no images to evaluate the NLL on")
    cat = {name: torch.cat(values) for name, values in parts.items()}
    return _summarise(
        **cat,
        num_train_timesteps=int(scheduler.config.num_train_timesteps),
        estimator="importance-sampled",
        timesteps_per_image=num_timesteps,
    )
