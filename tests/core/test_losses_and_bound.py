"""Training losses, the importance sampler, and the batched bound, against independent computations."""

import math

import numpy as np
import pytest
import torch

from hf_ddpm import HFDDPMScheduler, variational_bound
from hf_ddpm.training.timestep_sampler import LossSecondMomentResampler, UniformSampler

T = 50


def _setup(prediction_type="epsilon", variance_type="fixed_small", seed=0):
    scheduler = HFDDPMScheduler(
        num_train_timesteps=T,
        prediction_type=prediction_type,
        variance_type=variance_type,
        clip_sample=False,
    )
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(4, 2, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(4, 2, 4, 4, generator=g)
    t = torch.tensor([0, 7, 25, 49])
    return scheduler, x0, noise, t, g


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_simple_loss_is_zero_exactly_at_the_right_target(prediction_type):
    scheduler, x0, noise, t, _ = _setup(prediction_type)
    ab = torch.from_numpy(np.cumprod(1 - np.linspace(1e-4, 0.02, T)))[t].view(-1, 1, 1, 1).float()
    target = {
        "epsilon": noise,
        "sample": x0,
        "v_prediction": ab.sqrt() * noise - (1 - ab).sqrt() * x0,
    }[prediction_type]
    assert scheduler.training_loss(target, x0, noise, t).abs().max() < 1e-10
    loss = scheduler.training_loss(target + 0.5, x0, noise, t)
    torch.testing.assert_close(loss, torch.full((4,), 0.25))


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_min_snr_weighting(prediction_type):
    scheduler, x0, noise, t, _ = _setup(prediction_type)
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, T))[t.numpy()]
    snr = ab / (1 - ab)
    scale = {"epsilon": snr, "sample": np.ones_like(snr), "v_prediction": snr + 1}[prediction_type]
    weight = np.minimum(snr, 5.0) / scale
    out = torch.randn(4, 2, 4, 4)
    plain = scheduler.training_loss(out, x0, noise, t)
    weighted = scheduler.training_loss(out, x0, noise, t, min_snr_gamma=5.0)
    torch.testing.assert_close(weighted, plain * torch.from_numpy(weight).float())


def test_vlb_loss_is_T_times_the_bound_term():
    scheduler, x0, noise, t, _ = _setup(variance_type="learned_range")
    out = torch.randn(4, 4, 4, 4)
    x_t = scheduler.add_noise(x0, noise, t)
    expected = T * scheduler.vlb_terms_bpd(out, x0, x_t, t)
    torch.testing.assert_close(
        scheduler.training_loss(out, x0, noise, t, loss_type="vlb"), expected.float()
    )


def test_hybrid_loss_stops_the_vlb_gradient_at_the_mean():
    scheduler, x0, noise, t, _ = _setup(variance_type="learned_range")
    out = torch.randn(4, 4, 4, 4, requires_grad=True)
    hybrid = scheduler.training_loss(out, x0, noise, t, loss_type="hybrid").sum()
    (grad_hybrid,) = torch.autograd.grad(hybrid, out)
    simple = scheduler.training_loss(out, x0, noise, t, loss_type="simple").sum()
    (grad_simple,) = torch.autograd.grad(simple, out)
    # Mean channels: only L_simple's gradient. Variance channels: only lambda * L_vlb's.
    torch.testing.assert_close(grad_hybrid[:, :2], grad_simple[:, :2])
    assert grad_simple[:, 2:].abs().max() == 0
    assert grad_hybrid[:, 2:].abs().max() > 0
    x_t = scheduler.add_noise(x0, noise, t)
    vlb = scheduler.training_loss(out, x0, noise, t, loss_type="vlb", x_t=x_t).sum()
    (grad_vlb,) = torch.autograd.grad(vlb, out)
    torch.testing.assert_close(grad_hybrid[:, 2:], 0.001 * grad_vlb[:, 2:])


def test_p_mean_variance_t0_decoder_variances_follow_ho_and_improved_diffusion():
    small = HFDDPMScheduler(num_train_timesteps=T, variance_type="fixed_small", clip_sample=False)
    large = HFDDPMScheduler(num_train_timesteps=T, variance_type="fixed_large", clip_sample=False)
    x = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    betas = np.linspace(1e-4, 0.02, T)
    ab = np.cumprod(1 - betas)
    beta_tilde_1 = betas[1] * (1 - ab[0]) / (1 - ab[1])
    for scheduler in (small, large):
        p = scheduler.p_mean_variance(x, x, torch.tensor([0]))
        assert p.log_variance.flatten()[0].item() == pytest.approx(math.log(beta_tilde_1), rel=1e-9)
    p = large.p_mean_variance(x, x, torch.tensor([10]))
    assert p.variance.flatten()[0].item() == pytest.approx(betas[10], rel=1e-9)


def test_variational_bound_equals_the_unbatched_loop_and_accepts_sample_outputs():
    scheduler, x0, _, _, _ = _setup(variance_type="learned_range")

    class Output:
        def __init__(self, sample):
            self.sample = sample

    def model(x_t, t):
        assert t.dtype == torch.long and t.shape == (x_t.shape[0],)
        return Output(torch.cat([0.9 * x_t, torch.tanh(x_t)], 1) + t.view(-1, 1, 1, 1) / T)

    batched = variational_bound(
        model, scheduler, x0, generator=torch.Generator().manual_seed(9), max_batch_size=64
    )
    # The same quantity, one timestep at a time, as improved-diffusion's calc_bpd_loop does: same noise draws.
    g = torch.Generator().manual_seed(9)
    per_call = 64 // x0.shape[0]
    terms = torch.zeros(4, T, dtype=torch.float64)
    for start in range(0, T, per_call):
        steps = list(range(start, min(start + per_call, T)))
        noise = torch.randn((len(steps) * 4, *x0.shape[1:]), generator=g)
        for i, step in enumerate(steps):
            t = torch.full((4,), step)
            x_t = scheduler.add_noise(x0, noise[i * 4 : (i + 1) * 4], t)
            terms[:, step] = scheduler.vlb_terms_bpd(model(x_t, t).sample, x0, x_t, t).double()
    torch.testing.assert_close(batched.terms_bpd, terms, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        batched.total_bpd, terms.sum(1) + scheduler.prior_bpd(x0).double(), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        batched.rate_bpd + batched.distortion_bpd, terms.sum(1), rtol=1e-5, atol=1e-5
    )


def test_prior_term_is_the_kl_to_the_standard_normal():
    scheduler = HFDDPMScheduler()
    x0 = torch.full((1, 1, 1, 1), 0.5, dtype=torch.float64)
    ab = np.prod(1 - np.linspace(1e-4, 0.02, 1000))
    # KL(N(sqrt(ab) x0, 1 - ab) || N(0, 1)) = (ab x0^2 + (-log(1 - ab) - ab)) / 2, written with log1p to avoid
    # the cancellation of the naive form.
    expected = 0.5 * (ab * 0.25 + (-math.log1p(-ab) - ab)) / math.log(2)
    assert scheduler.prior_bpd(x0).item() == pytest.approx(expected, rel=1e-6)


def test_uniform_sampler_weights_are_one():
    t, w = UniformSampler(10).sample(1000, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() <= 9 and torch.all(w == 1)


def test_loss_second_moment_resampler_is_unbiased_and_follows_sqrt_second_moment():
    sampler = LossSecondMomentResampler(5, history_per_term=4, uniform_prob=0.0)
    losses = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0])
    t, w = sampler.sample(100)
    assert torch.all(w == 1)  # uniform until every term has a full history
    for _ in range(4):
        sampler.update(torch.arange(5), losses)
    assert sampler.warmed_up()
    np.testing.assert_allclose(sampler.probabilities(), losses.numpy() / losses.sum().item())
    t, w = sampler.sample(200_000, generator=torch.Generator().manual_seed(1))
    # E_p[w L_t] = mean_t L_t: the importance-weighted estimate of the uniform average is unbiased.
    assert (w * losses[t]).mean().item() == pytest.approx(losses.mean().item(), rel=1e-5)
    counts = torch.bincount(t, minlength=5).double() / len(t)
    np.testing.assert_allclose(counts.numpy(), sampler.probabilities(), atol=0.005)
    restored = LossSecondMomentResampler(5, history_per_term=4, uniform_prob=0.0)
    restored.load_state_dict(sampler.state_dict())
    np.testing.assert_allclose(restored.probabilities(), sampler.probabilities())


@pytest.mark.parametrize("loss_type", ["vlb", "hybrid"])
def test_training_losses_never_clip_the_predicted_x0(loss_type):
    """clip_sample is a sampling option: a clipped x_0 has no gradient, so the losses must ignore it
    (improved-diffusion trains with clip_denoised=False)."""
    kwargs = dict(num_train_timesteps=T, variance_type="learned_range")
    clipping, plain = HFDDPMScheduler(**kwargs), HFDDPMScheduler(**kwargs, clip_sample=False)
    _, x0, noise, t, g = _setup()
    out = (3 * torch.randn(4, 4, 4, 4, generator=g)).requires_grad_()
    losses = [s.training_loss(out, x0, noise, t, loss_type=loss_type) for s in (clipping, plain)]
    torch.testing.assert_close(losses[0], losses[1])
    (grad,) = torch.autograd.grad(losses[0][1:].sum(), out)
    assert (grad[1:, :2] != 0).float().mean() > 0.99
    # Sampling still clips: p_mean_variance differs between the two.
    p = [s.p_mean_variance(out.detach(), x0, t).pred_original_sample for s in (clipping, plain)]
    assert p[0].abs().max() <= 1 < p[1].abs().max()
