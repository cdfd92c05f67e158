"""Each variance type is one object: the step's noise scale and p_theta's variance come from it alike.

The step's sigma is measured, not read: two steps that differ only in their generator give
x_{t-1} - x'_{t-1} = sigma (z - z'). It is checked against float64 formulas written here from the papers
(Ho et al. 2020 section 3.2, Nichol & Dhariwal 2021 eq. 15 and section 4) and against p_mean_variance.
"""

import numpy as np
import pytest
import torch

from hf_ddpm import HFDDPMScheduler
from hf_ddpm.core import variance as variance_module
from hf_ddpm.core.variance import LEARNED_VARIANCE_TYPES, VARIANCE_TYPES, FixedVariance

T = 50
SHAPE = (2, 2, 3, 3)


def _measured_sigma(scheduler, model_output, t):
    sample = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    steps = []
    for seed in (1, 2):
        # Both steps from t: diffusers' step index rule would otherwise take the second from the next one.
        scheduler.set_begin_index(scheduler.index_for_timestep(t))
        steps.append(
            scheduler.step(model_output, t, sample, generator=torch.Generator().manual_seed(seed))
        )
    z = [
        torch.randn(SHAPE, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
        for s in (1, 2)
    ]
    return (steps[0].prev_sample - steps[1].prev_sample) / (z[0] - z[1])


def _expected_variance(variance_type, kept, k, values):
    """sigma^2 of step kept[k] -> kept[k + 1] on the respaced chain, from alpha_bar in float64."""
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, T))
    ab_t, ab_prev = ab[kept[k]], ab[kept[k + 1]]
    beta = 1 - ab_t / ab_prev
    beta_tilde = beta * (1 - ab_prev) / (1 - ab_t)
    if variance_type.startswith("fixed_small"):
        return np.full(values.shape, beta_tilde)
    if variance_type.startswith("fixed_large"):
        return np.full(values.shape, beta)
    if variance_type == "learned":
        return np.exp(values)
    frac = (values + 1) / 2
    return np.exp(frac * np.log(beta) + (1 - frac) * np.log(beta_tilde))


@pytest.mark.parametrize("variance_type", list(VARIANCE_TYPES))
@pytest.mark.parametrize("num_inference_steps", [T, 7])
def test_step_noise_scale_is_the_variance_types_sigma(variance_type, num_inference_steps):
    scheduler = HFDDPMScheduler(
        num_train_timesteps=T, variance_type=variance_type, clip_sample=False
    )
    scheduler.set_timesteps(num_inference_steps)
    kept = scheduler.timesteps.tolist()
    g = torch.Generator().manual_seed(0)
    channels = scheduler.model_output_channels(SHAPE[1])
    output = torch.randn((SHAPE[0], channels, *SHAPE[2:]), generator=g, dtype=torch.float64)
    values = output[:, SHAPE[1] :].numpy() if variance_type in LEARNED_VARIANCE_TYPES else None
    for k in (0, len(kept) // 2, len(kept) - 2):
        sigma = _measured_sigma(scheduler, output, kept[k])
        expected = _expected_variance(
            variance_type, kept, k, values if values is not None else np.zeros(SHAPE)
        )
        np.testing.assert_allclose(sigma.numpy() ** 2, expected, rtol=1e-9)
        if num_inference_steps == T:
            # On the full chain the step samples p_theta itself.
            p = scheduler.p_mean_variance(output, torch.zeros(SHAPE, dtype=torch.float64), kept[k])
            np.testing.assert_allclose(
                sigma.numpy() ** 2, p.variance.expand(SHAPE).numpy(), rtol=1e-9
            )
            np.testing.assert_allclose(p.log_variance.exp().numpy(), p.variance.numpy(), rtol=1e-12)


def test_a_new_variance_type_is_one_object(monkeypatch):
    """A variance type registered as one object drives both the step and the bound."""
    constant = FixedVariance(
        "constant",
        lambda chain: (
            torch.full_like(chain.betas, 0.01),
            torch.full_like(chain.betas, np.log(0.01)),
        ),
    )
    monkeypatch.setitem(variance_module.VARIANCE_TYPES, "constant", constant)
    scheduler = HFDDPMScheduler(num_train_timesteps=T, variance_type="constant", clip_sample=False)
    scheduler.set_timesteps(10)
    output = torch.randn(SHAPE, dtype=torch.float64)
    sigma = _measured_sigma(scheduler, output, int(scheduler.timesteps[3]))
    torch.testing.assert_close(sigma, torch.full(SHAPE, 0.1, dtype=torch.float64))
    p = scheduler.p_mean_variance(output, output, torch.tensor([0, 30]))
    torch.testing.assert_close(p.variance.flatten(), torch.full((2,), 0.01, dtype=torch.float64))
