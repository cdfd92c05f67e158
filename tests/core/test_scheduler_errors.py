"""Bad input raises ValueError naming the problem and the allowed values."""

import pytest
import torch

from hf_ddpm import HFDDPMScheduler


@pytest.mark.parametrize(
    "kwargs,allowed",
    [
        (dict(beta_schedule="quadratic"), ["linear", "squaredcos_cap_v2"]),
        (dict(variance_type="fixed_medium"), ["fixed_small", "learned_range"]),
        (dict(prediction_type="noise"), ["epsilon", "sample", "v_prediction"]),
        (dict(timestep_spacing="even"), ["leading", "trailing", "linspace"]),
    ],
)
def test_unknown_option_lists_allowed_values(kwargs, allowed):
    with pytest.raises(ValueError) as err:
        HFDDPMScheduler(**kwargs)
    assert repr(next(iter(kwargs.values()))) in str(err.value)
    for name in allowed:
        assert name in str(err.value)


@pytest.mark.parametrize("steps", [0, -3, 1001])
def test_num_inference_steps_out_of_range(steps):
    with pytest.raises(
        ValueError, match=r"must be in 1\.\.1000 \(the model's num_train_timesteps\)"
    ):
        HFDDPMScheduler().set_timesteps(steps)


@pytest.mark.parametrize(
    "timesteps,match",
    [
        ([5, 5, 1], "strictly descending"),
        ([1, 5], "strictly descending"),
        ([1000, 3], r"\[0, 1000\)"),
        ([], "non-empty"),
    ],
)
def test_bad_custom_timesteps(timesteps, match):
    with pytest.raises(ValueError, match=match):
        HFDDPMScheduler().set_timesteps(timesteps=timesteps)


def test_both_or_neither_schedule_argument():
    with pytest.raises(ValueError, match="exactly one"):
        HFDDPMScheduler().set_timesteps(10, timesteps=[5, 1])
    with pytest.raises(ValueError, match="exactly one"):
        HFDDPMScheduler().set_timesteps()


def test_steps_offset_past_the_end():
    with pytest.raises(ValueError, match="steps_offset=1"):
        HFDDPMScheduler(steps_offset=1).set_timesteps(1000)


@pytest.mark.parametrize(
    "variance_type,channels",
    [("fixed_small", 6), ("learned_range", 3), ("learned", 4), ("fixed_large", 2)],
)
def test_model_output_shape_mismatch_names_both_shapes(variance_type, channels):
    scheduler = HFDDPMScheduler(variance_type=variance_type)
    with pytest.raises(ValueError) as err:
        scheduler.step(torch.zeros(2, channels, 4, 4), 10, torch.zeros(2, 3, 4, 4))
    message = str(err.value)
    assert (
        f"(2, {channels}, 4, 4)" in message
        and "(2, 3, 4, 4)" in message
        and variance_type in message
    )


def test_timestep_not_on_the_schedule():
    scheduler = HFDDPMScheduler()
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="not on the current schedule"):
        scheduler.step(torch.zeros(1, 3, 4, 4), 901, torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="not on the current schedule"):
        scheduler.previous_timestep(5)


def test_unknown_loss_type_and_hybrid_without_learned_variance():
    scheduler = HFDDPMScheduler(num_train_timesteps=10)
    x = torch.zeros(2, 3, 4, 4)
    t = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="simple, vlb, hybrid"):
        scheduler.training_loss(x, x, x, t, loss_type="l1")
    with pytest.raises(ValueError, match="learned_range"):
        scheduler.training_loss(x, x, x, t, loss_type="hybrid")


def test_zero_terminal_snr_needs_a_prediction_that_survives_alpha_bar_zero():
    with pytest.raises(ValueError, match="v_prediction"):
        HFDDPMScheduler(rescale_betas_zero_snr=True)
    scheduler = HFDDPMScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction")
    scheduler.set_timesteps(10)
    step = scheduler.step(torch.randn(1, 3, 4, 4), scheduler.timesteps[0], torch.randn(1, 3, 4, 4))
    assert torch.isfinite(step.prev_sample).all()
