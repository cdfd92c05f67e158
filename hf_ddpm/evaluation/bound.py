"""The variational bound of a model on images: the driver that calls the network for every term.

The terms themselves (``vlb_terms_bpd``, ``prior_bpd``) are seed math in :mod:`hf_ddpm.core.vlb`, which
every saved model carries; this driver needs only a scheduler that exposes them, so it lives with the
evaluation code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from hf_ddpm.core.class_layout import null_label_of
from hf_ddpm.core.covariance_head import CovarianceHead, eps_and_head
from hf_ddpm.core.pipeline_base import covariance_head_in_use


@dataclass
class VariationalBound:
    """The bound per image: ``total_bpd`` (B,) = ``prior_bpd`` (B,) + ``terms_bpd`` (B, T).sum(1); (B, K) for
    a K-step chain.

    ``terms_bpd[:, 0]`` is L_0 (distortion); ``terms_bpd[:, 1:].sum(1)`` is the rate of Ho et al. Table 4.
    """

    total_bpd: torch.Tensor
    terms_bpd: torch.Tensor
    prior_bpd: torch.Tensor

    @property
    def distortion_bpd(self) -> torch.Tensor:
        return self.terms_bpd[:, 0]

    @property
    def rate_bpd(self) -> torch.Tensor:
        return self.terms_bpd[:, 1:].sum(1)


def call_model(model: Callable[..., Any], x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``model(x_t, t)`` as a tensor: a diffusers UNet's ``.sample`` or the plain output."""
    out = model(x_t, t)
    return out.sample if hasattr(out, "sample") else out


def unconditional_label(unet: Any, null_label: int | None = None) -> int | None:
    """The class label under which ``unet`` models p(x): None for an unconditional UNet; for a
    class-conditional one trained for classifier-free guidance, ``null_label`` (a pipeline's
    ``null_class_label``), or the one of hf-ddpm train's layout (:func:`.class_layout.null_label_of`)."""
    return null_label_of(getattr(unet.config, "num_class_embeds", None), null_label)


def network_of(
    unet: Any, class_label: int | None = None, head: CovarianceHead | None = None
) -> Callable[..., Any]:
    """``model(x_t, t)`` as the bound calls it: ``unet`` given ``class_label`` (None: no labels), and
    with a covariance ``head``, eps followed by the head's second moment on the same call's last feature
    map (:func:`~hf_ddpm.core.covariance_head.eps_and_head`, as the pipelines sample): the 2C channels
    an SN / NPR scheduler reads."""
    if class_label is None and head is None:
        return unet

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        kwargs = {}
        if class_label is not None:
            kwargs["class_labels"] = torch.full(
                (x_t.shape[0],), class_label, device=x_t.device, dtype=torch.long
            )
        if head is None:
            return unet(x_t, t, **kwargs).sample
        return eps_and_head(unet, head, x_t, t, **kwargs)

    return model


def unconditional_model(
    unet: Any, null_label: int | None = None, head: CovarianceHead | None = None
) -> Callable[..., Any]:
    """The network of p(x): :func:`network_of` the UNet itself, or of a class-conditional UNet given its
    :func:`unconditional_label`."""
    return network_of(unet, unconditional_label(unet, null_label), head)


def pipeline_model(pipe: Any) -> Callable[..., Any]:
    """The network that the bound of ``pipe``'s own scheduler reads: :func:`unconditional_model` of its
    UNet, with its covariance head when the scheduler's variance type is a head's (SN, NPR).

    Raises:
        ValueError: that variance type without a head, or a head fitted for another UNet (the message
            names ``hf-ddpm fit-covariance``).
    """
    head = covariance_head_in_use(pipe.unet, pipe.scheduler, getattr(pipe, "covariance_head", None))
    return unconditional_model(pipe.unet, getattr(pipe.config, "null_class_label", None), head)


# Told how many more (image, timestep) pairs the network has been run on: a progress bar's update.
Progress = Callable[[int], Any]
# (model output, x_0 rows, x_t rows, t rows, noise rows) -> one value (or a row of values) per row
RowMeasure = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor
]


@torch.no_grad()
def measure_noised_rows(
    model: Callable[..., Any],
    scheduler: Any,
    x0: torch.Tensor,
    image_index: torch.Tensor,
    timesteps: torch.Tensor,
    rows_per_call: int,
    measure: RowMeasure,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """``measure`` (float64) of the network at x_t ~ q(x_t | x_0) for image ``x0[image_index[n]]`` and
    t = ``timesteps[n]``, each pair with its own draw, ``rows_per_call`` pairs per network call;
    ``progress(n)`` after each call, with its n pairs.

    The bound's terms and the calibration of Gamma are this loop with different measures. The noise of
    each call is one ``randn`` of its rows' shape on the generator's device, in row order."""
    values: torch.Tensor | None = None
    noise_device = generator.device if generator is not None else x0.device
    for start in range(0, len(timesteps), rows_per_call):
        rows = slice(start, min(start + rows_per_call, len(timesteps)))
        t = timesteps[rows]
        x0_rows = x0[image_index[rows]]
        noise = torch.randn(
            x0_rows.shape, generator=generator, device=noise_device, dtype=x0.dtype
        ).to(x0.device)
        x_t = scheduler.add_noise(x0_rows, noise, t)
        measured = measure(call_model(model, x_t, t), x0_rows, x_t, t, noise).to(torch.float64)
        if values is None:
            values = measured.new_empty((len(timesteps), *measured.shape[1:]))
        values[rows] = measured
        if progress is not None:
            progress(rows.stop - rows.start)
    return values


def vlb_terms_measure(scheduler: Any, num_bins: int = 256, on_schedule: bool = False) -> RowMeasure:
    """The ``measure_noised_rows`` measure of the bound: each row's L_t in bits/dim; with ``on_schedule``,
    the terms of the scheduler's current (``set_timesteps``) chain.

    The bound loops of this package (the exact T-term bound, the K-step one and the importance-sampled
    one) are ``measure_noised_rows`` with this measure over different pairs."""
    schedule = {"on_schedule": True} if on_schedule else {}

    def terms(
        out: torch.Tensor,
        x0_rows: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        _: torch.Tensor,
    ) -> torch.Tensor:
        return scheduler.vlb_terms_bpd(out, x0_rows, x_t, t, num_bins=num_bins, **schedule)

    return terms


@torch.no_grad()
def variational_bound(
    model: Callable[..., Any],
    scheduler: Any,
    x0: torch.Tensor,
    generator: torch.Generator | None = None,
    num_bins: int = 256,
    max_batch_size: int = 256,
    num_inference_steps: int | None = None,
    progress: Progress | None = None,
) -> VariationalBound:
    """The full T-term bound of Ho et al. eq. 5 for each image of ``x0`` (B, C, H, W) in [-1, 1]; with
    ``num_inference_steps=K``, the bound of the K-step chain that ``scheduler.set_timesteps(K)`` makes
    (its spacing, its effective betas and its variance type; the scheduler is left on that schedule):
    K terms, column k the KL of the step from the chain's k-th smallest timestep to the one below it and
    column 0 the decoder, plus the prior at the chain's first timestep (Bao et al. 2022, eq. 4's bound
    of the K-step model).

    Each L_t uses its own draw x_t ~ q(x_t | x_0), as improved-diffusion's ``calc_bpd_loop`` does. The T
    terms are evaluated in chunks: one network call covers several timesteps for all B images, up to
    ``max_batch_size`` inputs, rather than T calls of batch B. ``model(x_t, t)`` gets t as a LongTensor (N,)
    and may return a tensor or an object with ``.sample`` (a diffusers UNet2DModel). ``progress(n)`` is
    called after each network call with the n terms (an image at a timestep) it evaluated: B x T (or
    B x K) in all.
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    batch = x0.shape[0]
    on_schedule = num_inference_steps is not None
    if on_schedule:
        scheduler.set_timesteps(num_inference_steps)
        steps = scheduler.timesteps.flip(0).to(x0.device)
    else:
        steps = torch.arange(scheduler.config.num_train_timesteps, device=x0.device)
    # Rows timestep-major: each call holds whole timesteps, every image at each.
    values = measure_noised_rows(
        model,
        scheduler,
        x0,
        image_index=torch.arange(batch, device=x0.device).repeat(len(steps)),
        timesteps=steps.repeat_interleave(batch),
        rows_per_call=max(1, max_batch_size // batch) * batch,
        measure=vlb_terms_measure(scheduler, num_bins, on_schedule),
        generator=generator,
        progress=progress,
    )
    terms = values.view(len(steps), batch).T
    prior = scheduler.prior_bpd(x0, on_schedule=True) if on_schedule else scheduler.prior_bpd(x0)
    prior = prior.to(torch.float64)
    return VariationalBound(total_bpd=prior + terms.sum(1), terms_bpd=terms, prior_bpd=prior)
