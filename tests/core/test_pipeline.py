"""HFDDPMPipeline.__call__: parity with diffusers' DDPMPipeline, generators, outputs, callbacks, guidance, errors."""

import io

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler

from hf_ddpm.core.pipeline import HFDDPMPipeline
from hf_ddpm.core.scheduling import HFDDPMScheduler

T = 10


def _pipe(unet, scheduler):
    pipe = HFDDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images(pipe, seed=0, **kwargs):
    kwargs.setdefault("batch_size", 2)
    kwargs.setdefault("num_inference_steps", T)
    generator = torch.Generator().manual_seed(seed)
    return pipe(generator=generator, output_type="np", **kwargs).images


@pytest.mark.parametrize(
    ("variance_type", "factor"), [("fixed_small", 1), ("fixed_large", 1), ("learned_range", 2)]
)
def test_same_images_as_diffusers_ddpm_pipeline(tiny_unet, variance_type, factor):
    unet = tiny_unet(out_channels=3 * factor)
    scheduler = DDPMScheduler(num_train_timesteps=T, variance_type=variance_type)
    reference = DDPMPipeline(unet=unet, scheduler=scheduler)
    reference.set_progress_bar_config(disable=True)
    expected = _images(reference)
    np.testing.assert_array_equal(_images(_pipe(unet, scheduler)), expected)


def test_hf_ddpm_scheduler_matches_diffusers_ddpm_pipeline(tiny_unet):
    unet = tiny_unet(out_channels=6)
    config = dict(
        num_train_timesteps=T, variance_type="learned_range", beta_schedule="squaredcos_cap_v2"
    )
    reference = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**config))
    reference.set_progress_bar_config(disable=True)
    ours = _images(_pipe(unet, HFDDPMScheduler(**config)))
    # float64 tables against diffusers' float32 ones: equal up to rounding.
    np.testing.assert_allclose(ours, _images(reference), atol=1e-5)


def test_respaced_inference_steps(tiny_unet):
    unet = tiny_unet()
    reference = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50))
    reference.set_progress_bar_config(disable=True)
    expected = _images(reference, num_inference_steps=5)
    np.testing.assert_array_equal(
        _images(_pipe(unet, DDPMScheduler(num_train_timesteps=50)), num_inference_steps=5), expected
    )


@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, HFDDPMScheduler])
def test_sample_i_is_the_same_alone_or_in_a_batch(tiny_unet, scheduler_class):
    pipe = _pipe(
        tiny_unet(out_channels=6), scheduler_class(num_train_timesteps=T, variance_type="learned")
    )
    seeds = [11, 22, 33]
    batch = pipe(
        batch_size=3,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        num_inference_steps=T,
        output_type="np",
    ).images
    for i, seed in enumerate(seeds):
        alone = pipe(
            batch_size=1,
            generator=[torch.Generator().manual_seed(seed)],
            num_inference_steps=T,
            output_type="np",
        ).images
        np.testing.assert_allclose(batch[i], alone[0], atol=1e-5)
    assert not np.allclose(batch[0], batch[1])


def test_output_types_agree(tiny_unet):
    pipe = _pipe(tiny_unet(), DDPMScheduler(num_train_timesteps=T))
    as_np = _images(pipe)
    as_pt = pipe(
        batch_size=2,
        generator=torch.Generator().manual_seed(0),
        num_inference_steps=T,
        output_type="pt",
    )
    as_pil = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=T)
    (as_tuple,) = pipe(
        batch_size=2,
        generator=torch.Generator().manual_seed(0),
        num_inference_steps=T,
        output_type="np",
        return_dict=False,
    )
    assert as_np.shape == (2, 8, 8, 3) and as_np.dtype == np.float32
    assert 0.0 <= as_np.min() and as_np.max() <= 1.0
    assert isinstance(as_pt.images, torch.Tensor) and as_pt.images.shape == (2, 3, 8, 8)
    np.testing.assert_array_equal(as_pt.images.permute(0, 2, 3, 1).numpy(), as_np)
    assert all(
        isinstance(image, PIL.Image.Image) and image.size == (8, 8) for image in as_pil.images
    )
    np.testing.assert_array_equal(
        np.asarray(as_pil.images[1]), (as_np[1] * 255).round().astype(np.uint8)
    )
    np.testing.assert_array_equal(as_tuple, as_np)


def test_progress_bar_counts_the_steps(tiny_unet):
    pipe = HFDDPMPipeline(tiny_unet(), DDPMScheduler(num_train_timesteps=T))
    stream = io.StringIO()
    pipe.set_progress_bar_config(file=stream)
    pipe(num_inference_steps=5, output_type="np")
    assert "5/5" in stream.getvalue()


def test_callback_sees_every_step_and_the_predicted_x0(tiny_unet):
    scheduler = DDPMScheduler(num_train_timesteps=T, clip_sample=False)
    pipe = _pipe(tiny_unet(), scheduler)
    seen = []
    previous = {}

    def record(p, step_index, timestep, tensors):
        assert p is pipe
        seen.append((step_index, int(timestep)))
        # Oracle: x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (Ho et al. eq. 4 solved for x0), in float64.
        if "x_t" in previous:
            abar = scheduler.alphas_cumprod.double()[int(timestep)]
            x_t, eps = previous["x_t"].double(), tensors["model_output"].double()
            expected_x0 = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
            torch.testing.assert_close(
                tensors["pred_original_sample"].double(), expected_x0, atol=1e-4, rtol=1e-4
            )
        previous["x_t"] = tensors["latents"].clone()
        previous["last"] = tensors["latents"].clone()
        return {}

    images = pipe(
        batch_size=2,
        generator=torch.Generator().manual_seed(0),
        num_inference_steps=T,
        output_type="pt",
        callback_on_step_end=record,
        callback_on_step_end_tensor_inputs=["latents", "pred_original_sample", "model_output"],
    ).images
    assert seen == list(enumerate(range(T - 1, -1, -1)))
    torch.testing.assert_close(images, (previous["last"] / 2 + 0.5).clamp(0, 1))


def test_callback_can_replace_the_latents(tiny_unet):
    pipe = _pipe(tiny_unet(), DDPMScheduler(num_train_timesteps=T))

    def zero_at_the_end(p, step_index, timestep, tensors):
        if step_index == T - 1:
            return {"latents": torch.zeros_like(tensors["latents"])}
        return {}

    images = pipe(
        num_inference_steps=T, output_type="np", callback_on_step_end=zero_at_the_end
    ).images
    np.testing.assert_array_equal(images, np.full((1, 8, 8, 3), 0.5, dtype=np.float32))


def _reference_guided_sampling(unet, scheduler, labels, guidance_scale, seed, null_label):
    """Classifier-free guidance (Ho & Salimans 2022) written out directly: two UNet calls per step."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((len(labels), 3, 8, 8), generator=generator)
    scheduler.set_timesteps(T)
    null = torch.full_like(labels, null_label)
    for t in scheduler.timesteps:
        with torch.no_grad():
            cond = unet(x, t, class_labels=labels).sample
            uncond = unet(x, t, class_labels=null).sample
        guided = uncond[:, :3] + guidance_scale * (cond[:, :3] - uncond[:, :3])
        x = scheduler.step(
            torch.cat([guided, cond[:, 3:]], 1), t, x, generator=generator
        ).prev_sample
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize(("guidance_scale", "out_channels"), [(1.0, 3), (3.0, 3), (2.0, 6)])
def test_class_conditional_guidance(tiny_unet, guidance_scale, out_channels):
    unet = tiny_unet(
        out_channels=out_channels, num_class_embeds=3
    )  # classes 0, 1 and the null label 2
    variance_type = "learned_range" if out_channels == 6 else "fixed_small"
    scheduler = DDPMScheduler(num_train_timesteps=T, variance_type=variance_type)
    pipe = _pipe(unet, scheduler)
    labels = torch.tensor([0, 1])
    ours = _images(pipe, class_labels=labels, guidance_scale=guidance_scale)
    if guidance_scale == 1.0:
        # Without guidance the null label is never used: compare with the conditional model alone.
        expected = _reference_guided_sampling(unet, scheduler, labels, 1.0, 0, null_label=0)
    else:
        expected = _reference_guided_sampling(
            unet, scheduler, labels, guidance_scale, 0, null_label=2
        )
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_one_label_is_broadcast_to_the_batch(tiny_unet):
    pipe = _pipe(tiny_unet(num_class_embeds=3), DDPMScheduler(num_train_timesteps=T))
    np.testing.assert_array_equal(_images(pipe, class_labels=1), _images(pipe, class_labels=[1, 1]))


def test_unet_and_scheduler_must_agree_on_channels(tiny_unet):
    with pytest.raises(
        ValueError, match=r"out_channels=3.*variance_type='learned_range'.*needs out_channels=6"
    ):
        HFDDPMPipeline(tiny_unet(), HFDDPMScheduler(variance_type="learned_range"))
    with pytest.raises(
        ValueError, match=r"out_channels=6.*variance_type='fixed_small'.*needs out_channels=3"
    ):
        HFDDPMPipeline(tiny_unet(out_channels=6), DDPMScheduler())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"batch_size": -2}, "batch_size must be an integer >= 1"),
        ({"batch_size": 1.5}, "batch_size must be an integer >= 1"),
        ({"num_inference_steps": 0}, r"num_inference_steps must be in 1\.\.10 \(the model's"),
        ({"num_inference_steps": T + 1}, r"num_inference_steps must be in 1\.\.10 \(the model's"),
        ({"output_type": "jpg"}, r"output_type must be one of \['pil', 'np', 'pt'\]"),
        ({"batch_size": 2, "generator": [torch.Generator()]}, "one generator per image"),
        ({"class_labels": [0]}, "this UNet is unconditional"),
        ({"guidance_scale": 2.0}, "needs class_labels"),
        ({"callback_on_step_end_tensor_inputs": ["noise"]}, r"\['noise'\].*allowed"),
    ],
)
def test_bad_call_arguments(tiny_unet, kwargs, message):
    pipe = _pipe(tiny_unet(), DDPMScheduler(num_train_timesteps=T))
    kwargs = {"num_inference_steps": T, **kwargs}
    with pytest.raises(ValueError, match=message):
        pipe(callback_on_step_end=lambda *a: {}, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, r"class-conditional \(num_class_embeds=3\): pass class_labels"),
        ({"class_labels": [0, 3], "batch_size": 2}, r"class_labels must lie in \[0, 2\]"),
        ({"class_labels": [2], "guidance_scale": 2.0}, r"class_labels must lie in \[0, 1\]"),
        ({"class_labels": [0, 1, 0], "batch_size": 2}, "3 labels for batch_size=2"),
        ({"class_labels": [0], "guidance_scale": -1.0}, "guidance_scale must be >= 0"),
    ],
)
def test_bad_class_labels(tiny_unet, kwargs, message):
    pipe = _pipe(tiny_unet(num_class_embeds=3), DDPMScheduler(num_train_timesteps=T))
    with pytest.raises(ValueError, match=message):
        pipe(num_inference_steps=T, **kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_cuda_with_cpu_offload(tiny_unet, dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    reference = _pipe(tiny_unet(), HFDDPMScheduler(num_train_timesteps=T)).to("cuda")
    expected = _images(reference)
    pipe = _pipe(tiny_unet().to(dtype), HFDDPMScheduler(num_train_timesteps=T))
    pipe.enable_model_cpu_offload()
    images = _images(pipe)
    assert np.isfinite(images).all()
    # Half-precision UNet, float32 chain: close to the float32 pipeline, not equal.
    assert np.abs(images - expected).mean() < 0.05
