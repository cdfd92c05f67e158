"""Differential tests of HFDDPMScheduler against the installed diffusers DDPMScheduler.

diffusers keeps its schedule in float32 and we keep ours in float64. Each step is compared both with diffusers
as installed and with diffusers' own ``step`` code run on float64 tables built from diffusers' own betas (what
the same arithmetic gives without float32 round-off). Errors are relative to the largest element of a tensor.
Against the float64 reference every configuration agrees within 1e-5; against diffusers' float32 tables a
few steps differ by up to 2.3e-4 (the cosine schedule near its ends), diffusers' own round-off: there ours is
the closer one to the float64 reference.
"""

import itertools

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.schedulers import scheduling_ddpm

from hf_ddpm import HFDDPMScheduler

SHAPE = (3, 2, 6, 6)


@pytest.fixture
def low_precision_noise(monkeypatch):
    """The float64 reference must add the very noise that a float32/float16 step draws: draw it in the
    dtype of the inputs under test and upcast."""
    state = {"dtype": torch.float32}
    original = scheduling_ddpm.randn_tensor

    def randn_tensor(shape, generator=None, device=None, dtype=None, **kwargs):
        return original(shape, generator=generator, device=device, dtype=state["dtype"]).to(dtype)

    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", randn_tensor)
    return state


def float64_reference(**config):
    ref = DDPMScheduler(**config)
    ref.betas = ref.betas.double()
    ref.alphas = 1.0 - ref.betas
    ref.alphas_cumprod = torch.cumprod(ref.alphas, 0)
    ref.one = torch.tensor(1.0, dtype=torch.float64)
    return ref


def rel_err(actual, expected):
    return (
        (actual.double() - expected.double()).abs().max()
        / expected.double().abs().max().clamp(min=1e-12)
    ).item()


def _timesteps_to_check(scheduler, count=12):
    ts = scheduler.timesteps.tolist()
    picks = sorted(
        set(np.linspace(0, len(ts) - 1, min(count, len(ts))).round().astype(int).tolist())
    )
    return [ts[i] for i in picks]


CONFIGS = [
    dict(),
    dict(variance_type="fixed_large"),
    dict(variance_type="fixed_small_log"),
    dict(variance_type="learned_range"),
    dict(variance_type="learned_range", clip_sample=False, prediction_type="v_prediction"),
    dict(prediction_type="sample", beta_schedule="squaredcos_cap_v2"),
    dict(prediction_type="v_prediction", clip_sample=False),
    dict(clip_sample=False, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(thresholding=True, sample_max_value=2.0, dynamic_thresholding_ratio=0.9),
    dict(beta_schedule="sigmoid", clip_sample_range=0.5),
    dict(num_train_timesteps=200, beta_end=0.05),
]
SCHEDULES = [
    dict(),
    dict(num_inference_steps=50),
    dict(num_inference_steps=37, timestep_spacing="linspace"),
    dict(num_inference_steps=20, timestep_spacing="trailing"),
    dict(num_inference_steps=10, steps_offset=1),
    dict(timesteps=[180, 120, 61, 20, 3, 0]),
]


def _make(config, schedule, cls):
    config = dict(config)
    for key in ("timestep_spacing", "steps_offset"):
        if key in schedule:
            config[key] = schedule[key]
    scheduler = cls(**config) if cls is not float64_reference else float64_reference(**config)
    if "num_inference_steps" in schedule:
        scheduler.set_timesteps(schedule["num_inference_steps"])
    elif "timesteps" in schedule:
        scheduler.set_timesteps(timesteps=schedule["timesteps"])
    return scheduler


@pytest.mark.parametrize("config,schedule", list(itertools.product(CONFIGS, SCHEDULES)))
def test_step_matches_diffusers(config, schedule, low_precision_noise):
    ours = _make(config, schedule, HFDDPMScheduler)
    ref = _make(config, schedule, float64_reference)
    plain = _make(config, schedule, DDPMScheduler)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    channels = 2 * SHAPE[1] if "learned" in config.get("variance_type", "") else SHAPE[1]
    g = torch.Generator().manual_seed(0)
    for t in _timesteps_to_check(ours):
        if ours.previous_timestep(t) < 0 and t > 0 and config.get("variance_type") != "fixed_small":
            continue  # diffusers adds noise on the last step when it is not t = 0; see the test below
        sample = torch.randn(SHAPE, generator=g)
        output = torch.randn((SHAPE[0], channels, *SHAPE[2:]), generator=g)
        # A subset of the steps, out of order: diffusers' step index rule needs to be told where.
        ours.set_begin_index(ours.index_for_timestep(t))
        a = ours.step(output, t, sample, generator=torch.Generator().manual_seed(t))
        b = ref.step(
            output.double(), t, sample.double(), generator=torch.Generator().manual_seed(t)
        )
        c = plain.step(output, t, sample, generator=torch.Generator().manual_seed(t))
        assert a.prev_sample.dtype == torch.float32
        for field in ("prev_sample", "pred_original_sample"):
            ours_out, ref_out, plain_out = (getattr(r, field) for r in (a, b, c))
            assert rel_err(ours_out, ref_out) < 1e-5, (t, field)
            # Against diffusers' float32 tables: within 1e-5 except where diffusers' own float32
            # round-off reaches the output, and there we are the closer one to the float64 reference.
            if rel_err(ours_out, plain_out) > 1e-5:
                assert rel_err(ours_out, ref_out) < rel_err(plain_out, ref_out), (t, field)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
@pytest.mark.parametrize(
    "config", [dict(), dict(variance_type="learned_range", prediction_type="v_prediction")]
)
def test_half_precision_step_matches_reference_and_is_no_worse_than_diffusers(
    dtype, tolerance, config, low_precision_noise
):
    low_precision_noise["dtype"] = dtype
    ours, theirs, ref = (
        HFDDPMScheduler(**config),
        DDPMScheduler(**config),
        float64_reference(**config),
    )
    for s in (ours, theirs, ref):
        s.set_timesteps(25)
    channels = 2 * SHAPE[1] if "learned" in config.get("variance_type", "") else SHAPE[1]
    g = torch.Generator().manual_seed(1)
    for t in _timesteps_to_check(ours):
        sample = torch.randn(SHAPE, generator=g).to(dtype)
        output = torch.randn((SHAPE[0], channels, *SHAPE[2:]), generator=g).to(dtype)
        ours.set_begin_index(ours.index_for_timestep(t))
        results = [
            s.step(o, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
            for s, o, x in (
                (ours, output, sample),
                (theirs, output, sample),
                (ref, output.double(), sample.double()),
            )
        ]
        assert results[0].dtype == dtype
        assert rel_err(results[0], results[2]) < tolerance
        assert rel_err(results[0], results[2]) <= rel_err(results[1], results[2]) + tolerance / 4


def test_last_step_returns_the_mean_without_noise():
    """Ho et al. Algorithm 2 adds no noise when stepping to x_0, even when the schedule ends at t > 0
    (trailing spacing). diffusers adds sqrt(beta) noise there for fixed_large."""
    ours = HFDDPMScheduler(
        variance_type="fixed_large", timestep_spacing="trailing", clip_sample=False
    )
    ours.set_timesteps(10)
    last = ours.timesteps[-1].item()
    assert last > 0
    sample, output = torch.randn(SHAPE), torch.randn(SHAPE)
    steps = []
    for seed in (0, 1, None):
        ours.set_begin_index(len(ours.timesteps) - 1)  # the last step, each time
        g = None if seed is None else torch.Generator().manual_seed(seed)
        steps.append(ours.step(output, last, sample, generator=g))
    a, b = steps[0].prev_sample, steps[1].prev_sample
    assert torch.equal(a, b)
    pred_x0 = steps[2].pred_original_sample
    torch.testing.assert_close(a, pred_x0)  # alpha_bar_prev = 1: the mean is the predicted x_0


def test_fixed_large_log_works_where_diffusers_returns_nan():
    ours = HFDDPMScheduler(variance_type="fixed_large_log")
    large = HFDDPMScheduler(variance_type="fixed_large")
    theirs = DDPMScheduler(variance_type="fixed_large_log")
    sample, output = torch.randn(SHAPE), torch.randn(SHAPE)
    step = [
        s.step(output, 500, sample, generator=torch.Generator().manual_seed(0)).prev_sample
        for s in (ours, large, theirs)
    ]
    assert torch.isfinite(step[0]).all()
    torch.testing.assert_close(step[0], step[1])
    assert torch.isnan(step[2]).any()


def test_learned_variance_is_a_log_variance():
    """'learned' follows improved-diffusion: the extra channels are log Sigma (diffusers treats them as Sigma,
    which turns NaN for negative outputs)."""
    ours = HFDDPMScheduler(variance_type="learned", clip_sample=False)
    fixed = HFDDPMScheduler(variance_type="fixed_small", clip_sample=False)
    sample, mean_out = torch.randn(SHAPE), torch.randn(SHAPE)
    log_var = torch.full(SHAPE, -3.0)
    a = ours.step(
        torch.cat([mean_out, log_var], 1), 400, sample, generator=torch.Generator().manual_seed(0)
    )
    mean = fixed.step(mean_out, 400, sample, generator=None)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.pred_original_sample, mean.pred_original_sample)
    p = fixed.p_mean_variance(mean_out, sample, 400)
    torch.testing.assert_close(
        a.prev_sample, p.mean.float() + np.exp(-1.5) * noise, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_add_noise_and_velocity_with_per_sample_timesteps(dtype):
    ours, theirs = HFDDPMScheduler(), DDPMScheduler()
    g = torch.Generator().manual_seed(3)
    x0, noise = (
        torch.randn(5, 3, 4, 4, generator=g).to(dtype),
        torch.randn(5, 3, 4, 4, generator=g).to(dtype),
    )
    t = torch.tensor([0, 17, 500, 998, 999])
    exact_a = torch.from_numpy(np.sqrt(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))))[t].view(
        -1, 1, 1, 1
    )
    exact_s = (1 - exact_a**2).sqrt()
    expected_xt = exact_a * x0.double() + exact_s * noise.double()
    expected_v = exact_a * noise.double() - exact_s * x0.double()
    tol = 1e-6 if dtype == torch.float32 else 1e-3
    for got, want in (
        (ours.add_noise(x0, noise, t), expected_xt),
        (ours.get_velocity(x0, noise, t), expected_v),
    ):
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    theirs_xt = theirs.add_noise(x0, noise, t).double()
    if dtype == torch.float32:
        torch.testing.assert_close(
            ours.add_noise(x0, noise, t).double(), theirs_xt, rtol=1e-5, atol=1e-5
        )
    else:
        # diffusers casts alpha_bar to float16 before 1 - alpha_bar, so sqrt(1 - alpha_bar_0) becomes 0.
        ours_err = (ours.add_noise(x0, noise, t).double() - expected_xt).abs().max()
        assert ours_err < (theirs_xt - expected_xt).abs().max()


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 50, 333, 1000])
@pytest.mark.parametrize("offset", [0, 1])
def test_set_timesteps_matches_diffusers(spacing, steps, offset):
    if spacing == "leading" and offset and steps == 1000:
        pytest.skip("offset pushes t past T; covered by the error test")
    ours = HFDDPMScheduler(timestep_spacing=spacing, steps_offset=offset)
    theirs = DDPMScheduler(timestep_spacing=spacing, steps_offset=offset)
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    assert ours.timesteps.dtype == torch.int64
    for t in ours.timesteps.tolist()[:-1]:
        assert int(ours.previous_timestep(t)) == int(theirs.previous_timestep(t))


def test_config_moves_both_ways_and_survives_save(tmp_path):
    theirs = DDPMScheduler(
        variance_type="fixed_large",
        prediction_type="v_prediction",
        beta_schedule="squaredcos_cap_v2",
    )
    ours = HFDDPMScheduler.from_config(theirs.config)
    for key, value in theirs.config.items():
        if not key.startswith("_"):
            assert ours.config[key] == value, key
    back = DDPMScheduler.from_config(ours.config)
    assert (
        back.config.variance_type == "fixed_large" and back.config.prediction_type == "v_prediction"
    )
    ddim = DDIMScheduler.from_config(ours.config)
    assert ddim.config.beta_schedule == "squaredcos_cap_v2"
    ours.save_pretrained(tmp_path)
    loaded = HFDDPMScheduler.from_pretrained(tmp_path)
    public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(ours.config)
    assert "DDPMScheduler" in [c.__name__ for c in ours.compatibles]


def test_same_defaults_as_diffusers():
    ours, theirs = HFDDPMScheduler(), DDPMScheduler()
    for key, value in theirs.config.items():
        if not key.startswith("_"):
            assert ours.config[key] == value, key
    assert len(ours) == 1000 and ours.order == 1 and ours.init_noise_sigma == 1.0
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(ours.betas, theirs.betas)
    torch.testing.assert_close(ours.alphas, theirs.alphas)
    x = torch.randn(2, 3, 4, 4)
    assert ours.scale_model_input(x, 10) is x


@pytest.mark.parametrize("variance_type", ["fixed_small", "learned_range"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_step_leaves_its_inputs_alone(prediction_type, variance_type, dtype):
    """The step clips x_0 and builds x_{t-1} in buffers of its own: the caller's model output and sample
    (which a pipeline's callback may still hold) come back unchanged, whatever the prediction type."""
    scheduler = HFDDPMScheduler(
        prediction_type=prediction_type, variance_type=variance_type, clip_sample=True
    )
    scheduler.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    sample = (3 * torch.randn(SHAPE, generator=generator)).to(dtype)
    channels = scheduler.model_output_channels(SHAPE[1])
    model_output = (3 * torch.randn((SHAPE[0], channels, *SHAPE[2:]), generator=generator)).to(
        dtype
    )
    sample_before, output_before = sample.clone(), model_output.clone()
    for t in scheduler.timesteps:
        out = scheduler.step(model_output, int(t), sample, generator=generator)
        assert torch.equal(sample, sample_before) and torch.equal(model_output, output_before)
        assert out.pred_original_sample.abs().max() <= 1.0
        assert out.prev_sample.data_ptr() not in (sample.data_ptr(), model_output.data_ptr())


def test_step_output_behaves_like_diffusers_output():
    """Pipelines read ``.prev_sample``, ``[0]``, ``["prev_sample"]`` or ``to_tuple()``; all agree with
    diffusers' own output class, and the object survives pickling and torch's pytree flattening."""
    import pickle

    import torch.utils._pytree as pytree
    from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput

    ours = HFDDPMScheduler()
    ours.set_timesteps(5)
    x, eps = torch.randn(SHAPE), torch.randn(SHAPE)
    out = ours.step(eps, int(ours.timesteps[0]), x, generator=torch.Generator().manual_seed(0))
    theirs = DDPMSchedulerOutput(
        prev_sample=out.prev_sample, pred_original_sample=out.pred_original_sample
    )
    assert list(out.keys()) == list(theirs.keys()) == ["prev_sample", "pred_original_sample"]
    assert out[0] is out.prev_sample is out["prev_sample"] is theirs[0]
    assert out[1] is out.pred_original_sample is theirs["pred_original_sample"]
    assert len(out.to_tuple()) == 2 and out.to_tuple()[1] is theirs.to_tuple()[1]
    only_prev = type(out)(out.prev_sample)
    assert list(only_prev.keys()) == ["prev_sample"] and only_prev.pred_original_sample is None
    restored = pickle.loads(pickle.dumps(out))
    assert torch.equal(restored.prev_sample, out.prev_sample) and list(restored.keys()) == list(
        out.keys()
    )
    leaves, spec = pytree.tree_flatten(out)
    assert len(leaves) == 2 and pytree.tree_unflatten(leaves, spec)[1] is out[1]
    prev, x0 = ours.step(eps, int(ours.timesteps[1]), x, return_dict=False)
    assert prev.shape == x0.shape == SHAPE


@pytest.mark.parametrize(
    "sample_dtype,output_dtype",
    [
        (torch.float32, torch.bfloat16),
        (torch.float32, torch.float16),
        (torch.float64, torch.float32),
    ],
)
def test_step_keeps_the_samples_dtype_when_the_model_output_is_lower_precision(
    sample_dtype, output_dtype, low_precision_noise
):
    """A model under autocast returns bf16/fp16 for a float32 sample: x_{t-1} stays in the sample's dtype,
    as in diffusers, and as close to a float64 step on the same inputs and noise as diffusers' is."""
    low_precision_noise["dtype"] = output_dtype
    ours, theirs = HFDDPMScheduler(), DDPMScheduler()
    reference = float64_reference()
    for scheduler in (ours, theirs, reference):
        scheduler.set_timesteps(50)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(SHAPE, generator=generator, dtype=torch.float64).to(sample_dtype)
    output = torch.randn(SHAPE, generator=generator, dtype=torch.float64).to(output_dtype)
    for t in (int(ours.timesteps[10]), int(ours.timesteps[-2])):
        results = {}
        for name, scheduler in (("ours", ours), ("theirs", theirs), ("reference", reference)):
            cast = (lambda x: x.double()) if name == "reference" else (lambda x: x)
            g = torch.Generator().manual_seed(t)
            if name == "ours":
                scheduler.set_begin_index(scheduler.index_for_timestep(t))
            results[name] = scheduler.step(cast(output), t, cast(sample), generator=g).prev_sample
        assert results["ours"].dtype == results["theirs"].dtype == sample_dtype
        ours_err = (results["ours"].double() - results["reference"]).abs().max()
        theirs_err = (results["theirs"].double() - results["reference"]).abs().max()
        assert ours_err <= theirs_err + 1e-6, (ours_err, theirs_err)
