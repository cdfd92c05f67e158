"""HFDDIMScheduler against diffusers' DDIMScheduler (same config, same noise) and against eq. 12 of Song et al.
2021 written here in float64, for every spacing, prediction type, eta and variance type."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from hf_ddpm.core.scheduling_ddim import DDIM_VARIANCE_TYPES, HFDDIMScheduler

SHAPE = (2, 3, 4, 4)
CONFIGS = [
    dict(),
    dict(prediction_type="v_prediction"),
    dict(prediction_type="sample", clip_sample=False),
    dict(set_alpha_to_one=False),
    dict(timestep_spacing="trailing"),
    dict(steps_offset=1),
    dict(beta_schedule="squaredcos_cap_v2", clip_sample_range=0.5),
    dict(thresholding=True, sample_max_value=1.5),
]


def _model(x, t):
    """A fixed stand-in network: smooth in x, different at every timestep."""
    return torch.tanh(0.7 * x + 0.001 * float(t)) - 0.1 * x


def _rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("eta,use_clipped", [(0.0, False), (0.5, True), (1.0, False)])
def test_chain_matches_diffusers_ddim(config, eta, use_clipped):
    """A 20-step chain with the same generator: within float32 round-off of diffusers' (whose tables are
    float32; ours are float64)."""
    ours, theirs = HFDDIMScheduler(**config), DDIMScheduler(**config)
    for s in (ours, theirs):
        s.set_timesteps(20)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    x_ours = x_theirs = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    g_ours, g_theirs = (torch.Generator().manual_seed(1) for _ in range(2))
    for t in ours.timesteps:
        a = ours.step(
            _model(x_ours, t),
            t,
            x_ours,
            eta=eta,
            use_clipped_model_output=use_clipped,
            generator=g_ours,
        )
        b = theirs.step(
            _model(x_theirs, t),
            t,
            x_theirs,
            eta=eta,
            use_clipped_model_output=use_clipped,
            generator=g_theirs,
        )
        assert _rel_err(a.pred_original_sample, b.pred_original_sample) < 2e-5, int(t)
        x_ours, x_theirs = a.prev_sample, b.prev_sample
    assert _rel_err(x_ours, x_theirs) < 2e-5


def _ddim_truth(
    ab, ts, k, x_t, output, eta, prediction_type, clip, final=1.0, cov_moment=None, z=None
):
    """One step of eq. 12 in float64 numpy, from its definitions: x_0-hat, eps-hat, sigma = eta sqrt(bt)."""
    a_t = ab[ts[k]]
    a_s = ab[ts[k + 1]] if k + 1 < len(ts) else final
    if prediction_type == "epsilon":
        eps = output
        x0 = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    else:  # v_prediction
        x0 = math.sqrt(a_t) * x_t - math.sqrt(1 - a_t) * output
        eps = math.sqrt(a_t) * output + math.sqrt(1 - a_t) * x_t
    if clip:
        x0 = np.clip(x0, -1, 1)
    var = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
    lam2 = eta**2 * var
    mean = math.sqrt(a_s) * x0 + math.sqrt(1 - a_s - lam2) * eps
    if cov_moment is None:
        sigma2 = np.full_like(x_t, lam2)
    else:
        cov = np.clip((1 - a_t) / a_t * cov_moment, 0, 1)
        gain = math.sqrt(a_s) - math.sqrt((1 - a_s - lam2) * a_t / (1 - a_t))
        sigma2 = lam2 + gain**2 * cov
    return mean + np.sqrt(sigma2) * z, x0


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_fixed_small_steps_are_eq12_in_float64(spacing, prediction_type, eta):
    """Every step, with float64 inputs: to 1e-12 of eq. 12 written here. With "linspace" each step goes to
    the next timestep on the schedule, where diffusers' DDIM goes to t - T // K instead."""
    ours = HFDDIMScheduler(timestep_spacing=spacing, prediction_type=prediction_type)
    ours.set_timesteps(7)
    ts = ours.timesteps.tolist()
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    g = torch.Generator().manual_seed(3)
    for k, t in enumerate(ts):
        x_t = torch.randn(SHAPE, generator=g, dtype=torch.float64)
        output = torch.randn(SHAPE, generator=g, dtype=torch.float64)
        z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
        ours.set_begin_index(k)
        step = ours.step(output, t, x_t, eta=eta, generator=torch.Generator().manual_seed(k))
        prev, x0 = _ddim_truth(
            ab, ts, k, x_t.numpy(), output.numpy(), eta, prediction_type, True, z=z.numpy()
        )
        np.testing.assert_allclose(step.prev_sample.numpy(), prev, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(step.pred_original_sample.numpy(), x0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variance_type", ["sn", "npr"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_head_types_add_the_optimal_noise_at_every_step_but_the_last(variance_type, eta):
    """sigma^2 = lambda^2 + (sqrt(ab_s) - sqrt((1 - ab_s - lambda^2) ab_t / (1 - ab_t)))^2 clip((1 - ab_t)/ab_t v),
    v = h - eps^2 (SN) or g (NPR), in float64; the last step returns the mean, even at eta = 0."""
    ours = HFDDIMScheduler(variance_type=variance_type, clip_sample=False)
    assert ours.model_output_channels(3) == 6
    ours.set_timesteps(6)
    ts = ours.timesteps.tolist()
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    g = torch.Generator().manual_seed(4)
    for k, t in enumerate(ts):
        x_t = torch.randn(SHAPE, generator=g, dtype=torch.float64)
        eps = torch.randn(SHAPE, generator=g, dtype=torch.float64)
        spread = 3 * torch.rand(SHAPE, generator=g, dtype=torch.float64) - 0.5
        head = eps**2 + spread if variance_type == "sn" else spread
        z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
        last = k == len(ts) - 1
        ours.set_begin_index(k)
        step = ours.step(
            torch.cat([eps, head], 1), t, x_t, eta=eta, generator=torch.Generator().manual_seed(k)
        )
        prev, _ = _ddim_truth(
            ab,
            ts,
            k,
            x_t.numpy(),
            eps.numpy(),
            eta,
            "epsilon",
            False,
            cov_moment=spread.numpy(),
            z=0 * z.numpy() if last else z.numpy(),
        )
        np.testing.assert_allclose(step.prev_sample.numpy(), prev, rtol=1e-11, atol=1e-12)


def test_analytic_ddim_is_the_scalar_case_of_the_head_formula():
    """Analytic-DDIM with Gamma = 1 - v everywhere equals NPR-DDIM with g = v at every pixel: one formula."""
    v = 0.3
    analytic = HFDDIMScheduler(
        variance_type="analytic", eps_second_moment=[1 - v] * 1000, clip_sample=False
    )
    npr = HFDDIMScheduler(variance_type="npr", clip_sample=False)
    for s in (analytic, npr):
        s.set_timesteps(8)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = 0.5 * x
    for k, t in enumerate(analytic.timesteps):
        a = analytic.step(eps, t, x, generator=torch.Generator().manual_seed(k)).prev_sample
        b = npr.step(
            torch.cat([eps, torch.full_like(eps, v)], 1),
            t,
            x,
            generator=torch.Generator().manual_seed(k),
        )
        torch.testing.assert_close(a, b.prev_sample, rtol=1e-12, atol=1e-12)


def test_drop_in_api_and_config_round_trips(tmp_path):
    ours = HFDDIMScheduler(variance_type="npr", timestep_spacing="trailing", steps_offset=1)
    ours.save_config(tmp_path)
    loaded = HFDDIMScheduler.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(ours.config)
    theirs = DDIMScheduler.from_config(ours.config)
    assert theirs.config.timestep_spacing == "trailing" and theirs.config.steps_offset == 1
    back = HFDDIMScheduler.from_config(DDIMScheduler(beta_schedule="scaled_linear").config)
    assert (
        back.config.beta_schedule == "scaled_linear" and back.config.variance_type == "fixed_small"
    )
    assert ours.init_noise_sigma == 1.0 and ours.order == 1 and len(ours) == 1000
    g = torch.Generator().manual_seed(7)
    x = torch.randn(SHAPE, generator=g)
    assert ours.scale_model_input(x, 10) is x
    noise, x0 = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    t = torch.tensor([10, 500])
    torch.testing.assert_close(
        ours.add_noise(x0, noise, t), DDIMScheduler().add_noise(x0, noise, t), rtol=1e-5, atol=1e-5
    )
    # Same config, same steps: the loaded scheduler draws the same chain.
    for s in (ours, loaded):
        s.set_timesteps(4)
    outs = []
    for s in (ours, loaded):
        y = x
        g = torch.Generator().manual_seed(0)
        for t in s.timesteps:
            y = s.step(
                torch.cat([0.1 * y, torch.full_like(y, 0.2)], 1), t, y, generator=g
            ).prev_sample
        outs.append(y)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_bad_input_names_the_parameter():
    with pytest.raises(
        ValueError,
        match="variance_type 'fixed_large' has no DDIM form.*fixed_small, analytic, sn, npr",
    ):
        HFDDIMScheduler(variance_type="fixed_large")
    with pytest.raises(ValueError, match="timestep_spacing 'optimal'"):
        HFDDIMScheduler(timestep_spacing="optimal")
    with pytest.raises(ValueError, match="eps_second_moment"):
        HFDDIMScheduler(variance_type="analytic")
    s = HFDDIMScheduler()
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(torch.zeros(SHAPE), 10, torch.zeros(SHAPE))
    s.set_timesteps(5)
    with pytest.raises(ValueError, match="generator or variance_noise"):
        s.step(
            torch.zeros(SHAPE),
            s.timesteps[0],
            torch.zeros(SHAPE),
            eta=1.0,
            generator=torch.Generator(),
            variance_noise=torch.zeros(SHAPE),
        )
    sn = HFDDIMScheduler(variance_type="sn")
    sn.set_timesteps(5)
    with pytest.raises(ValueError, match="needs 6 output channels"):
        sn.step(torch.zeros(SHAPE), sn.timesteps[0], torch.zeros(SHAPE))
    assert set(DDIM_VARIANCE_TYPES) == {"fixed_small", "analytic", "sn", "npr"}


def test_variance_noise_replaces_the_draw():
    s = HFDDIMScheduler(clip_sample=False)
    theirs = DDIMScheduler(clip_sample=False)
    for sch in (s, theirs):
        sch.set_timesteps(5)
    x, out, z = (torch.randn(SHAPE, generator=torch.Generator().manual_seed(i)) for i in range(3))
    t = s.timesteps[1]
    s.set_begin_index(1)
    a = s.step(out, t, x, eta=0.8, variance_noise=z).prev_sample
    b = theirs.step(out, t, x, eta=0.8, variance_noise=z).prev_sample
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_saved_pipeline_with_hf_ddim_loads_as_remote_code_without_hf_ddpm(
    tiny_unet, tmp_path, run_without_hf_ddpm
):
    """A pipeline saved with HFDDIMScheduler carries its code (scheduler/scheduling_ddim.py and what it
    imports): a process without hf_ddpm loads it with trust_remote_code and draws the same images."""
    from hf_ddpm import HFDDPMPipeline

    pipe = HFDDPMPipeline(unet=tiny_unet(), scheduler=HFDDIMScheduler(num_train_timesteps=10))
    pipe.set_progress_bar_config(disable=True)

    def draw(p):
        return p(
            batch_size=2,
            generator=torch.Generator().manual_seed(0),
            num_inference_steps=5,
            output_type="np",
        ).images

    expected = draw(pipe)
    folder = tmp_path / "saved"
    pipe.save_pretrained(folder)
    assert (folder / "scheduler" / "scheduling_ddim.py").is_file()
    run_without_hf_ddpm(
        f"""
import sys
import numpy as np, torch
from diffusers import DiffusionPipeline
torch.set_num_threads(1)
pipe = DiffusionPipeline.from_pretrained({str(folder)!r}, trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
assert type(pipe.scheduler).__name__ == "HFDDIMScheduler", type(pipe.scheduler)
assert not any(m.split(".")[0] == "hf_ddpm" for m in sys.modules)
images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=5,
              output_type="np").images
np.save({str(tmp_path / "remote.npy")!r}, images)
"""
    )
    np.testing.assert_array_equal(np.load(tmp_path / "remote.npy"), expected)
