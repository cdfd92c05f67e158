"""Gamma_n estimates from few images (issue 21, item 6): an honest standard error at every image count
(checked against the estimates' own spread around the closed form of Gaussian data), and estimates below 0
(which no second moment is, and the scheduler refused) set to 0 and counted."""

import numpy as np
import pytest
import torch
from gaussian_oracle import GaussianOracle

from hf_ddpm.core.analytic import check_eps_second_moment
from hf_ddpm.evaluation.calibrate import (
    CONTROL_VARIATE_FROM,
    calibrate_pipeline,
    clip_negative_estimates,
    eps_second_moment,
)


@pytest.mark.parametrize("num_images", [2, 3, CONTROL_VARIATE_FROM, 5, 12])
def test_the_standard_error_matches_the_spread_of_the_estimates(num_images):
    from hf_ddpm import HFDDPMScheduler

    # T timesteps are T independent estimates, each with its closed-form truth.
    scheduler = HFDDPMScheduler(num_train_timesteps=600, scale_linear_betas_by_timesteps=True)
    oracle = GaussianOracle(0.3, 0.5, scheduler.alphas_cumprod.double().numpy())
    g = torch.Generator().manual_seed(num_images)
    images = 0.3 + 0.5 * torch.randn(num_images, 1, 4, 4, generator=g, dtype=torch.float64)
    result = eps_second_moment(oracle, scheduler, images, generator=g, progress=False)
    error = result.values - oracle.eps_second_moment()
    # Mean squared error against the mean reported variance: 1 for an honest standard error. Two images
    # used to report ~1e-17 (ratio ~1e30); a control variate's ddof=1 spread underestimates it.
    ratio = np.sum(error**2) / np.sum(result.stderr**2)
    assert 0.6 < ratio < 1.6, ratio
    assert np.all(result.stderr > 1e-6)


def test_one_image_has_no_standard_error():
    from hf_ddpm import HFDDPMScheduler

    scheduler = HFDDPMScheduler(num_train_timesteps=20)
    oracle = GaussianOracle(0.3, 0.5, scheduler.alphas_cumprod.double().numpy())
    result = eps_second_moment(oracle, scheduler, torch.zeros(1, 1, 4, 4), progress=False)
    assert np.all(np.isnan(result.stderr)) and np.all(np.isfinite(result.values))


def _negative_prone_model(x_t, t):
    """||eps_theta||^2 / d = relu(||x_t||^2 / d - 1.1): zero for most draws, steeply rising in the noise's
    norm where x_t is nearly all noise, so that the control variate, fitted to a few images that all drew
    a large norm, extrapolates below 0 at d = 1."""
    q = x_t.double().pow(2).flatten(1).mean(1).view(-1, 1, 1, 1)
    return (x_t * torch.sqrt(torch.relu(q - 1.1) / q)).to(x_t.dtype)


def test_estimates_below_0_are_set_to_0_and_counted():
    from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler

    scheduler = HFDDPMScheduler(num_train_timesteps=100, scale_linear_betas_by_timesteps=True)
    images = torch.zeros(4, 1, 4, 4)
    raw = eps_second_moment(
        _negative_prone_model,
        scheduler,
        images,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    negative = raw.values < 0
    assert negative.any()
    with pytest.raises(ValueError, match="finite and non-negative"):
        check_eps_second_moment(raw.values, 100)

    class _Unet(torch.nn.Module):
        config = type(
            "Config",
            (),
            {"sample_size": 4, "in_channels": 1, "out_channels": 1, "num_class_embeds": None},
        )
        device = torch.device("cpu")

        def forward(self, x_t, t, class_labels=None):
            return type("Output", (), {"sample": _negative_prone_model(x_t, t)})

    pipeline = HFDDPMPipeline(_Unet(), scheduler)
    result = calibrate_pipeline(
        pipeline, images, generator=torch.Generator().manual_seed(0), progress=False
    )
    assert result.clipped == negative.sum()
    assert np.array_equal(result.values[negative], np.zeros(negative.sum()))
    assert np.array_equal(result.values[~negative], raw.values[~negative])
    check_eps_second_moment(pipeline.scheduler.config.eps_second_moment, 100)
    assert f"{result.clipped} of 100 Gamma_n estimates from 4 image(s) fell below 0" in (
        result.clipping_note()
    )
    assert clip_negative_estimates(np.array([-1e-3, 0.5, 1.5])).tolist() == [0.0, 0.5, 1.5]
