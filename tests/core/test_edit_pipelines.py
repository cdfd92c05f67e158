"""The edit pipelines (RePaint inpainting, SDEdit image-to-image) against a model with a known answer.

Moved from tests/sampling/test_editing.py (issue 18: tests mirror the package).
"""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import ConfigMixin, DDPMScheduler, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput

from hf_ddpm import HFDDPMImg2ImgPipeline, HFDDPMInpaintPipeline, HFDDPMPipeline
from hf_ddpm.core.pipeline_img2img import sdedit_timesteps
from hf_ddpm.core.pipeline_inpaint import repaint_schedule
from hf_ddpm.core.remote_code import copy_source_closure
from hf_ddpm.core.scheduling import HFDDPMScheduler

T = 1000


SIZE = 8


# Ho et al.'s linear schedule in float64, computed here rather than read from the scheduler.
ALPHA_BARS = np.cumprod(1.0 - np.linspace(1e-4, 0.02, T))


class RankOneOracle(ModelMixin, ConfigMixin):
    """The exact epsilon-predictor for rank-one Gaussian images; a learned variance reads as zeros
    (the middle of learned_range's interval, log-variance 0 clipped by nothing for "learned")."""

    @register_to_config
    def __init__(
        self,
        mean: float = 0.0,
        std: float = 0.5,
        sample_size: int = SIZE,
        in_channels: int = 1,
        out_channels: int = 1,
        num_class_embeds: int | None = None,
        log_variance: float = 0.0,
    ) -> None:
        super().__init__()
        self.register_buffer("alpha_bars", torch.tensor(ALPHA_BARS), persistent=False)

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | int, class_labels=None
    ) -> UNet2DOutput:
        t = torch.as_tensor(timestep, device=sample.device).long().reshape(-1)
        ab = self.alpha_bars[t.expand(sample.shape[0])].reshape(-1, 1, 1, 1)
        x = sample.double()
        pixels = x[0].numel()
        m, s2 = self.config.mean, self.config.std**2
        xbar = x.mean(dim=(1, 2, 3), keepdim=True)
        c_hat = m + ab.sqrt() * s2 * (xbar - ab.sqrt() * m) / (ab * s2 + (1 - ab) / pixels)
        eps = (x - ab.sqrt() * c_hat) / (1 - ab).sqrt()
        if self.config.out_channels == 2 * self.config.in_channels:
            eps = torch.cat([eps, torch.full_like(eps, self.config.log_variance)], dim=1)
        return UNet2DOutput(sample=eps.to(sample.dtype))


def _pipe(cls, variance_type="fixed_small", **scheduler_kwargs):
    learned = variance_type in ("learned", "learned_range")
    unet = RankOneOracle(out_channels=2 if learned else 1, log_variance=-7.0 if learned else 0.0)
    if variance_type == "analytic":
        scheduler_kwargs["eps_second_moment"] = _oracle_eps_second_moment(unet)
    scheduler = HFDDPMScheduler(
        num_train_timesteps=T, clip_sample=False, variance_type=variance_type, **scheduler_kwargs
    )
    pipe = cls(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _oracle_eps_second_moment(unet) -> list[float]:
    """Gamma_n of the rank-one oracle on images drawn from its own prior, as `hf-ddpm calibrate` would."""
    from hf_ddpm.evaluation.calibrate import eps_second_moment

    c = torch.randn(32, generator=torch.Generator().manual_seed(7)) * unet.config.std
    images = c.view(-1, 1, 1, 1).expand(-1, 1, SIZE, SIZE).float() + unet.config.mean
    scheduler = HFDDPMScheduler(num_train_timesteps=T, clip_sample=False)
    gamma = eps_second_moment(
        unet, scheduler, images, torch.Generator().manual_seed(8), progress=False
    )
    return gamma.values.tolist()


def _generators(n, offset=0):
    return [torch.Generator().manual_seed(offset + i) for i in range(n)]


def _half_mask():
    mask = torch.zeros(SIZE, SIZE)
    mask[SIZE // 2 :] = 1.0
    return mask


def _call(pipe, image, mask, n_images, **kwargs):
    out = pipe(
        image=image, mask_image=mask, generator=_generators(n_images), output_type="pt", **kwargs
    )
    return out.images * 2 - 1


def _fill_rms(images, mask, c_known):
    """Root mean square distance of the filled pixels from c_known."""
    fill = images[:, :, mask.bool()]
    return float(((fill - c_known) ** 2).mean().sqrt())


def test_repaint_schedule_follows_the_papers_jumps():
    # Worked by hand from Lugmayr et al. 2022, section 4.2, for 5 steps, j = 2, r = 3: jump points at
    # levels 1 and 3 (below 5 - 2 + 1 = 4); each climbs 2 levels twice. Level n = n-th smallest timestep.
    assert repaint_schedule(5, 2, 3) == [
        5,
        4,
        3,
        4,
        5,
        4,
        3,
        4,
        5,
        4,
        3,
        2,
        1,
        2,
        3,
        2,
        1,
        2,
        3,
        2,
        1,
        0,
    ]
    assert repaint_schedule(4, 1, 1) == [4, 3, 2, 1, 0]
    assert repaint_schedule(3, 5, 4) == [3, 2, 1, 0]  # jumps longer than the chain: none
    levels = repaint_schedule(100, 10, 10)
    downs = sum(b < a for a, b in zip(levels, levels[1:]))
    assert downs == 100 + 9 * 9 * 10  # 9 jump points, 9 extra passes of 10 steps each
    assert all(abs(b - a) == 1 for a, b in zip(levels, levels[1:]))


def test_sdedit_keeps_the_steps_at_or_below_strength_times_T():
    ts = list(range(900, -1, -100))  # a leading 10-step chain of T = 1000
    assert sdedit_timesteps(ts, 1.0, 1000) == ts
    assert sdedit_timesteps(ts, 0.5, 1000) == [400, 300, 200, 100, 0]  # index t is x_{t+1}
    assert sdedit_timesteps(ts, 0.401, 1000) == [400, 300, 200, 100, 0]
    assert sdedit_timesteps(ts, 1e-4, 1000) == [0]
    assert sdedit_timesteps([999, 899], 0.1, 1000) == [899]  # nothing that low: the last step alone


def test_inpainting_fills_with_the_exact_conditional_and_resampling_helps():
    pipe = _pipe(HFDDPMInpaintPipeline)
    mask = _half_mask()
    c_known = 0.8
    image = torch.full((1, 1, SIZE, SIZE), c_known)
    errors = {}
    for r in (1, 10):
        images = _call(
            pipe, image, mask, 64, num_inference_steps=50, jump_length=5, jump_n_sample=r
        )
        errors[r] = _fill_rms(images, mask, c_known)
    # The only completion under the prior is c_known; 50 steps with resampling come within 0.02.
    assert errors[10] < 0.02, errors
    # Without resampling the fill keeps part of its own early guess: measurably worse.
    assert errors[1] > 1.3 * errors[10], errors
    # With a quarter known, the gap is large.
    quarter = torch.ones(SIZE, SIZE)
    quarter[: SIZE // 4] = 0.0
    plain = _fill_rms(
        _call(pipe, image, quarter, 32, num_inference_steps=50, jump_n_sample=1), quarter, c_known
    )
    resampled = _fill_rms(
        _call(pipe, image, quarter, 32, num_inference_steps=50, jump_length=5, jump_n_sample=10),
        quarter,
        c_known,
    )
    assert plain > 3 * resampled, (plain, resampled)


def test_inpainting_converges_with_more_steps():
    pipe = _pipe(HFDDPMInpaintPipeline)
    mask = _half_mask()
    image = torch.full((1, 1, SIZE, SIZE), -0.5)
    coarse = _fill_rms(
        _call(pipe, image, mask, 32, num_inference_steps=10, jump_length=2, jump_n_sample=5),
        mask,
        -0.5,
    )
    fine = _fill_rms(
        _call(pipe, image, mask, 32, num_inference_steps=100, jump_length=10, jump_n_sample=5),
        mask,
        -0.5,
    )
    assert fine < 0.5 * coarse and fine < 0.01, (coarse, fine)


@pytest.mark.parametrize(
    "variance_type", ["fixed_small", "fixed_large", "learned", "learned_range", "analytic"]
)
@pytest.mark.parametrize("num_inference_steps", [T, 10])
def test_known_region_is_the_input_for_every_variance_type_and_respacing(
    variance_type, num_inference_steps
):
    pipe = _pipe(HFDDPMInpaintPipeline, variance_type=variance_type)
    mask = _half_mask()
    image = torch.rand(2, 1, SIZE, SIZE) * 2 - 1  # not rank-one: the known region is kept as it is
    steps = dict(num_inference_steps=num_inference_steps, jump_length=3, jump_n_sample=2)
    if num_inference_steps == T:
        steps = dict(num_inference_steps=T, jump_length=1, jump_n_sample=1)
    out = pipe(image=image, mask_image=mask, generator=_generators(2), output_type="pt", **steps)
    images = out.images * 2 - 1
    known = ~mask.bool()
    # The last step adds no noise and its known pixels are x_0 itself: equal up to float rounding.
    torch.testing.assert_close(images[:, :, known], image[:, :, known], atol=1e-6, rtol=0)
    assert torch.isfinite(images).all()
    assert not torch.allclose(images[:, :, mask.bool()], image[:, :, mask.bool()], atol=0.05)


def test_a_respaced_jump_uses_the_respaced_one_step_kernel():
    """After a jump up a respaced chain the known pixels must again have the forward marginal
    q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I) of the level they land on; the full chain's one-step
    kernel (beta_t) would leave them far too close to the level below."""
    pipe = _pipe(HFDDPMInpaintPipeline)
    x0, num_steps = 0.3, 10
    mask = torch.zeros(SIZE, SIZE)
    mask[0, 0] = 1.0
    calls = []
    oracle = pipe.unet.forward

    def spy(sample, timestep, class_labels=None):
        calls.append((int(torch.as_tensor(timestep).reshape(-1)[0]), sample[:, :, 1:].flatten()))
        return oracle(sample, timestep, class_labels)

    pipe.unet.forward = spy
    image = torch.full((1, 1, SIZE, SIZE), x0)
    pipe(
        image=image,
        mask_image=mask,
        num_inference_steps=num_steps,
        jump_length=3,
        jump_n_sample=4,
        generator=_generators(256),
        output_type="pt",
    )
    levels = repaint_schedule(num_steps, 3, 4)
    # The k-th model call is the k-th move down; keep those that start where a jump up ended.
    after_jump = [a < b for a, b in zip(levels, levels[1:])]
    after_jump = [
        after_jump[i - 1] for i, (a, b) in enumerate(zip(levels, levels[1:])) if b < a and i
    ]
    jumped = [call for call, jump in zip(calls[1:], after_jump) if jump]
    assert len(calls) == sum(b < a for a, b in zip(levels, levels[1:])) and jumped
    alpha_bars = torch.tensor(ALPHA_BARS)
    for t, values in jumped:
        values = values.double()
        mean, std, n = alpha_bars[t].sqrt() * x0, (1 - alpha_bars[t]).sqrt(), values.numel()
        assert abs(values.mean() - mean) < 5 * std / n**0.5, t
        assert abs(values.std() / std - 1) < 5 / (2 * n) ** 0.5, t


def test_one_generator_per_image_gives_the_same_image_alone_or_in_a_batch():
    pipe = _pipe(HFDDPMInpaintPipeline)
    image, mask = torch.rand(1, 1, SIZE, SIZE) * 2 - 1, _half_mask()
    kwargs = dict(num_inference_steps=6, jump_length=2, jump_n_sample=2, output_type="np")
    batch = pipe(image=image, mask_image=mask, generator=_generators(3), **kwargs).images
    alone = pipe(image=image, mask_image=mask, generator=_generators(1, offset=2), **kwargs).images
    np.testing.assert_array_equal(batch[2], alone[0])


def test_mask_and_image_accept_pil_numpy_and_tensors_alike():
    pipe = _pipe(HFDDPMInpaintPipeline)
    image = np.linspace(0, 1, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)
    mask = np.zeros((SIZE, SIZE), dtype=np.float32)
    mask[:, SIZE // 2 :] = 1.0
    kwargs = dict(num_inference_steps=5, jump_length=2, jump_n_sample=2, output_type="np")

    def run(image, mask):
        return pipe(
            image=image, mask_image=mask, generator=torch.Generator().manual_seed(1), **kwargs
        ).images

    expected = run(image, mask)
    image_u8 = (image * 255).round().astype(np.uint8)
    as_pil = run(
        PIL.Image.fromarray(image_u8),
        PIL.Image.fromarray((mask * 255).astype(np.uint8)).convert("RGB"),
    )
    np.testing.assert_allclose(as_pil, run(image_u8 / 255.0, mask), atol=1e-6)
    as_tensor = run(torch.from_numpy(image)[None] * 2 - 1, torch.from_numpy(mask)[None, None])
    np.testing.assert_allclose(as_tensor, expected, atol=1e-5)
    np.testing.assert_allclose(run(image[..., None], mask[..., None]), expected, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image": np.zeros((SIZE + 1, SIZE))}, r"9x8|8x9.*expected shape \(1, 8, 8\)"),
        ({"image": np.zeros((SIZE, SIZE, 3))}, r"3 channel\(s\), but this model takes 1"),
        ({"image": PIL.Image.new("RGB", (SIZE, SIZE))}, r"3 channel\(s\).*convert\('L'\)"),
        ({"image": np.full((SIZE, SIZE), 2.0)}, r"must lie in \[0, 1\]"),
        ({"image": torch.full((1, SIZE, SIZE), 1.5)}, r"must lie in \[-1, 1\]"),
        ({"image": "digit.png"}, "must be a PIL image, a numpy array"),
        ({"mask_image": np.zeros((SIZE, SIZE))}, "all black: nothing to fill"),
        ({"mask_image": np.ones((SIZE, SIZE))}, "all white: nothing of the image is kept"),
        ({"mask_image": np.zeros((4, 4))}, r"expected shape \(8, 8\)"),
        ({"jump_length": 0}, "jump_length must be an integer >= 1"),
        ({"jump_n_sample": 0}, "jump_n_sample must be an integer >= 1"),
        ({"num_inference_steps": 0}, r"num_inference_steps must be in 1\.\."),
        (
            {"generator": _generators(2), "image": np.zeros((3, SIZE, SIZE, 1))},
            "different numbers of images",
        ),
    ],
)
def test_inpaint_input_errors_name_what_is_expected(kwargs, message):
    pipe = _pipe(HFDDPMInpaintPipeline)
    call = dict(
        image=np.zeros((SIZE, SIZE)), mask_image=_half_mask().numpy(), num_inference_steps=3
    )
    call.update(kwargs)
    with pytest.raises(ValueError, match=message):
        pipe(**call)


def test_img2img_at_small_strength_returns_the_input_up_to_the_decoders_noise():
    pipe = _pipe(HFDDPMImg2ImgPipeline)
    image = torch.full((16, 1, SIZE, SIZE), 0.3)
    out = pipe(
        image=image,
        strength=1 / T,
        num_inference_steps=T,
        generator=_generators(16),
        output_type="pt",
    )
    # One step from x_1 = sqrt(ab_1) x_0 + sqrt(beta_1) eps: off by at most a few sqrt(beta_1) = 0.01.
    error = (out.images * 2 - 1 - image).abs().max()
    assert error < 3 * 1e-2, error
    far = pipe(
        image=image,
        strength=0.5,
        num_inference_steps=50,
        generator=_generators(16),
        output_type="pt",
    )
    assert (far.images * 2 - 1 - image).abs().mean() > 0.05


def test_img2img_at_strength_one_follows_the_unconditional_chain():
    img2img = _pipe(HFDDPMImg2ImgPipeline)
    sampler = HFDDPMPipeline.from_pipe(img2img)
    image = torch.full((4, 1, SIZE, SIZE), 0.9)
    seen = {"img2img": [], "sample": []}

    def record(name):
        return lambda p, i, t, tensors: seen[name].append(int(t)) or {}

    edited = img2img(
        image=image,
        strength=1.0,
        num_inference_steps=20,
        generator=_generators(4),
        output_type="pt",
        callback_on_step_end=record("img2img"),
    ).images
    sampled = sampler(
        batch_size=4,
        num_inference_steps=20,
        generator=_generators(4),
        output_type="pt",
        callback_on_step_end=record("sample"),
    ).images
    assert seen["img2img"] == seen["sample"] == sampler.scheduler.timesteps.tolist()
    # The same noise draws throughout; x_T differs only by sqrt(ab_T) x_0 = 0.006 * 0.9.
    assert (edited - sampled).abs().max() < 0.01
    other = sampler(
        batch_size=4, num_inference_steps=20, generator=_generators(4, offset=9), output_type="pt"
    ).images
    assert (other - sampled).abs().max() > 0.1


@pytest.mark.parametrize("strength", [0.0, -0.1, 1.5, float("nan")])
def test_img2img_rejects_strength_outside_zero_one(strength):
    pipe = _pipe(HFDDPMImg2ImgPipeline)
    with pytest.raises(ValueError, match=r"strength must be a number in \(0, 1\]"):
        pipe(image=np.zeros((SIZE, SIZE)), strength=strength, num_inference_steps=3)


def test_img2img_with_a_diffusers_scheduler_runs_the_cut_chain():
    unet = RankOneOracle()
    pipe = HFDDPMImg2ImgPipeline(
        unet=unet, scheduler=DDPMScheduler(num_train_timesteps=T, clip_sample=False)
    )
    pipe.set_progress_bar_config(disable=True)
    steps = []
    out = pipe(
        image=np.full((SIZE, SIZE), 0.6),
        strength=0.3,
        num_inference_steps=10,
        output_type="np",
        callback_on_step_end=lambda p, i, t, k: steps.append(int(t)) or {},
    ).images
    assert steps == [200, 100, 0]
    assert np.isfinite(out).all()


@pytest.mark.parametrize("cls", [HFDDPMPipeline, HFDDPMInpaintPipeline, HFDDPMImg2ImgPipeline])
def test_a_cfg_pipeline_without_labels_samples_with_its_null_label(tiny_unet, cls):
    unet = tiny_unet(in_channels=1, num_class_embeds=3)
    base = HFDDPMPipeline(
        unet=unet, scheduler=HFDDPMScheduler(num_train_timesteps=20), null_class_label=2
    )
    pipe = cls.from_pipe(base)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet is unet and pipe.config.null_class_label == 2
    args = {
        HFDDPMPipeline: dict(batch_size=2),
        HFDDPMInpaintPipeline: dict(
            image=np.zeros((SIZE, SIZE)), mask_image=_half_mask().numpy(), jump_n_sample=1
        ),
        HFDDPMImg2ImgPipeline: dict(image=np.zeros((SIZE, SIZE)), strength=0.5),
    }[cls]

    def run(**labels):
        g = _generators(2)
        return pipe(num_inference_steps=4, generator=g, output_type="np", **args, **labels).images

    np.testing.assert_array_equal(run(), run(class_labels=2))
    assert not np.array_equal(run(), run(class_labels=0))
    with pytest.raises(ValueError, match="needs class_labels"):
        run(guidance_scale=3.0)
    # Guided with a real class, against the null label: label 2 is not a class then.
    run(class_labels=[0, 1], guidance_scale=2.0)
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 1\]"):
        run(class_labels=[2, 1], guidance_scale=2.0)
    # Without a recorded null label, as before: labels are required.
    plain = cls(unet=unet, scheduler=HFDDPMScheduler(num_train_timesteps=20))
    with pytest.raises(ValueError, match="pass class_labels"):
        plain(num_inference_steps=4, **args)


def test_null_class_label_is_checked(tiny_unet):
    scheduler = HFDDPMScheduler(num_train_timesteps=20)
    with pytest.raises(ValueError, match=r"null_class_label must be an integer in \[0, 2\]"):
        HFDDPMPipeline(unet=tiny_unet(num_class_embeds=3), scheduler=scheduler, null_class_label=3)
    with pytest.raises(ValueError, match="needs a class-conditional UNet"):
        HFDDPMPipeline(unet=tiny_unet(), scheduler=scheduler, null_class_label=0)


def test_null_label_survives_save_and_load(tiny_unet, tmp_path):
    from diffusers import DiffusionPipeline

    unet = tiny_unet(in_channels=1, num_class_embeds=3)
    pipe = HFDDPMInpaintPipeline(
        unet=unet, scheduler=HFDDPMScheduler(num_train_timesteps=20), null_class_label=2
    )
    pipe.save_pretrained(tmp_path / "saved")
    for cls in (HFDDPMPipeline, HFDDPMInpaintPipeline, HFDDPMImg2ImgPipeline):
        assert cls.from_pretrained(tmp_path / "saved").config.null_class_label == 2
    remote = DiffusionPipeline.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    assert type(remote).__name__ == "HFDDPMInpaintPipeline" and remote.config.null_class_label == 2


def test_edit_pipeline_modules_name_every_sibling_they_need(tmp_path):
    # copy_source_closure refuses a module that reaches a sibling only indirectly (diffusers would miss it).
    for cls in (HFDDPMInpaintPipeline, HFDDPMImg2ImgPipeline, HFDDPMPipeline):
        copy_source_closure(cls, tmp_path / cls.__name__)
    saved = {p.name for p in (tmp_path / "HFDDPMPipeline").iterdir()}
    assert {"pipeline_inpaint.py", "pipeline_img2img.py", "pipeline_base.py"} <= saved
