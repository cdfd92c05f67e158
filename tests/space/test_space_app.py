"""The Gradio Space (spaces_app/app.py) driven through gradio_client over real HTTP on 127.0.0.1.

A tiny random UNet (8x8 grey images, T = 20) is saved and loaded through the app's own loader. Each
check compares with an independent computation: the pipeline run directly with the same seed, the
closed form q(x_t | x_0) written out here from diffusers' DDPMScheduler tables, the analytic prior KL,
and ``hf_ddpm.variational_bound`` called directly. The likelihood tab is also checked with the bundled
model against hf_ddpm's own evaluation path: the image read and preprocessed by ``hf_ddpm.data.image_datasets``.
"""

from __future__ import annotations

import dataclasses
import json
import math

import httpx
import numpy as np
import pytest
import torch
from conftest import _tiny_unet
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
)
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import hf_ddpm
from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler, variational_bound
from hf_ddpm.data.image_datasets import load_image_dataset, preprocess
from hf_ddpm.hub.bundled import bundled_model_path
from spaces_app import app

SIZE = 8
T = 20
BETA_START, BETA_END = 1e-3, 0.2


def _tiny_pipeline() -> HFDDPMPipeline:
    unet = _tiny_unet(in_channels=1, sample_size=SIZE)
    scheduler = HFDDPMScheduler(num_train_timesteps=T, beta_start=BETA_START, beta_end=BETA_END)
    return HFDDPMPipeline(unet=unet, scheduler=scheduler)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_ddpm")
    _tiny_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def served(model_dir):
    state = app.load_model(str(model_dir))
    assert state.model is not None, state.message
    demo = app.build_demo(state)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    client = Client(url, analytics_enabled=False, verbose=False)
    yield client, state.model
    client.close()
    demo.close()


@pytest.fixture
def digit_png(tmp_path):
    """An 8x8 grey image with structure (a ramp and a bright square)."""
    pixels = np.tile(np.linspace(0, 255, SIZE), (SIZE, 1))
    pixels[2:5, 2:5] = 255
    path = tmp_path / "digit.png"
    Image.fromarray(pixels.round().astype(np.uint8)).save(path)
    return path


def _png(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.int16)


def _sample_pngs(pipe, seed: int, count: int, steps: int) -> np.ndarray:
    """``pipe``'s images for one seed, as the 8-bit grey pixels the app sends."""
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        batch_size=count,
        generator=torch.Generator().manual_seed(seed),
        num_inference_steps=steps,
        output_type="np",
    ).images
    return (images[..., 0] * 255).round().astype(np.int16)


def _reference_samples(model_dir, seed: int, count: int, steps: int) -> np.ndarray:
    return _sample_pngs(HFDDPMPipeline.from_pretrained(model_dir), seed, count, steps)


def _generate(client: Client, **overrides):
    args = {
        "seed": 3,
        "num_images": 3,
        "steps": 10,
        "variance_type": "fixed_small",
        "class_label": 0,
        "guidance_scale": 1,
    }
    args.update(overrides)
    return client.submit(**args, api_name="/generate")


def test_generate_returns_the_requested_images_of_the_model_size(served, model_dir):
    client, _ = served
    _, _, gallery, status = _generate(client).result()
    assert len(gallery) == 3
    images = [_png(item["image"]) for item in gallery]
    assert all(image.shape == (SIZE, SIZE) for image in images)
    # The app must sample exactly what the pipeline samples for that seed and step count.
    expected = _reference_samples(model_dir, seed=3, count=3, steps=10)
    np.testing.assert_allclose(np.stack(images), expected, atol=1)
    assert "3 image(s)" in status


def test_generate_streams_intermediate_frames(served):
    client, _ = served
    job = _generate(client, num_images=2, steps=10)
    job.result()
    outputs = job.outputs()
    frames, final_output = outputs[:-1], outputs[-1]
    # 10 steps, a frame every step (10 // STREAM_FRAMES = 1), then the final gallery.
    assert len(frames) == 10
    assert all(frame[2] == [] and frame[0] and frame[1] for frame in frames)
    assert len(final_output[2]) == 2
    first_x_t, last_x_t = _png(frames[0][0]), _png(frames[-1][0])
    # Two 8x8 images tiled side by side with a 1-pixel gutter.
    assert first_x_t.shape == (SIZE, 2 * SIZE + 1)
    # The last frame's x_t is the sample itself; the first is still mostly noise, so they differ.
    final = np.concatenate([_png(item["image"]) for item in final_output[2]], axis=1)
    np.testing.assert_allclose(np.delete(last_x_t, SIZE, axis=1), final, atol=1)
    assert not np.array_equal(first_x_t, last_x_t)
    assert _png(frames[0][1]).shape == first_x_t.shape


def _diffusers_samples(model_dir, scheduler, seed: int, count: int, steps: int) -> np.ndarray:
    """diffusers' own loop: DDIMPipeline for DDIM (eta 0), DDPMPipeline's loop for any other scheduler."""
    unet = HFDDPMPipeline.from_pretrained(model_dir).unet
    make = DDIMPipeline if isinstance(scheduler, DDIMScheduler) else DDPMPipeline
    return _sample_pngs(make(unet=unet, scheduler=scheduler), seed, count, steps)


def _config(model_dir):
    return HFDDPMScheduler.from_pretrained(model_dir, subfolder="scheduler").config


@pytest.mark.parametrize(
    ("sampler", "make_scheduler"),
    [
        ("diffusers-ddim", lambda config: DDIMScheduler.from_config(config)),
        (
            "dpm-solver++",
            lambda config: DPMSolverMultistepScheduler.from_config(
                config, algorithm_type="dpmsolver++"
            ),
        ),
    ],
)
def test_the_diffusers_samplers_give_what_diffusers_own_pipelines_give(
    served, model_dir, sampler, make_scheduler
):
    client, _ = served
    job = _generate(client, sampler=sampler, num_images=2, steps=6, seed=4)
    _, _, gallery, status = job.result()
    images = np.stack([_png(item["image"]) for item in gallery])
    expected = _diffusers_samples(model_dir, make_scheduler(_config(model_dir)), 4, 2, 6)
    np.testing.assert_allclose(images, expected, atol=1)
    assert f"{sampler} sampler" in status
    # DDIM reports its predicted x_0 each step; DPM-Solver++ does not, and the page says so.
    frames = job.outputs()[:-1]
    assert len(frames) == 6 and all(frame[0] for frame in frames)
    if sampler == "diffusers-ddim":
        assert all(frame[1] for frame in frames)
    else:
        assert all(frame[1] is None for frame in frames)
        assert "does not report its predicted x_0" in frames[0][3]


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_the_timestep_spacing_is_the_schedulers(served, model_dir, spacing):
    client, _ = served
    _, _, gallery, status = _generate(client, timestep_spacing=spacing, steps=5).result()
    pipe = HFDDPMPipeline.from_pretrained(model_dir)
    pipe.scheduler = HFDDPMScheduler.from_config(pipe.scheduler.config, timestep_spacing=spacing)
    expected = _sample_pngs(pipe, seed=3, count=3, steps=5)
    np.testing.assert_allclose(
        np.stack([_png(item["image"]) for item in gallery]), expected, atol=1
    )
    assert f"{spacing} spacing" in status
    with pytest.raises(AppError, match="not in the list of choices"):
        _generate(client, timestep_spacing="bogus").result()


def test_the_offered_choices_come_from_the_registry(tmp_path, model_dir, monkeypatch):
    """Fixed types for a fixed-variance model, the learned type alone (and no diffusers sampler) for
    a learned one; a type the registry gains is offered without a change to the app."""
    from hf_ddpm.core import variance
    from hf_ddpm.sampling import samplers

    fixed = app.load_model(str(model_dir)).model
    assert {"fixed_small", "fixed_large"} <= set(fixed.variance_types)
    assert not {"learned", "learned_range"} & set(fixed.variance_types)
    assert fixed.samplers == (
        "ddpm",
        "ddim",
        "diffusers-ddim",
        "dpm-solver++",
        "dpm-solver++-sde",
        "unipc",
    )
    assert fixed.timestep_spacings[0] == "leading"
    assert set(fixed.timestep_spacings) == {"leading", "trailing", "linspace"}

    unet = _tiny_unet(in_channels=1, out_channels=2, sample_size=SIZE)
    scheduler = HFDDPMScheduler(num_train_timesteps=T, variance_type="learned_range")
    HFDDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "learned")
    learned = app.load_model(str(tmp_path / "learned")).model
    assert learned.variance_types == ("learned_range",)
    assert learned.samplers == ("ddpm",)

    monkeypatch.setitem(
        variance.VARIANCE_TYPES,
        "newly_added",
        dataclasses.replace(variance.VARIANCE_TYPES["fixed_small"], name="newly_added"),
    )
    ddpm = samplers.SAMPLERS["ddpm"]
    monkeypatch.setitem(
        samplers.SAMPLERS,
        "ddpm",
        dataclasses.replace(ddpm, variance_types=(*ddpm.variance_types, "newly_added")),
    )
    assert "newly_added" in app.load_model(str(model_dir)).model.variance_types


@pytest.mark.parametrize("t", [0, 7, T - 1])
def test_forward_tab_draws_x_t_from_the_closed_form(served, digit_png, t):
    client, _ = served
    x0_shown, x_t, info = client.predict(handle_file(str(digit_png)), t, 5, api_name="/forward")
    x0 = torch.from_numpy(_png(str(digit_png))).double() / 127.5 - 1
    np.testing.assert_array_equal(_png(x0_shown), _png(str(digit_png)))
    # q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), abar from diffusers' own scheduler in float64.
    reference = DDPMScheduler(num_train_timesteps=T, beta_start=BETA_START, beta_end=BETA_END)
    abar = reference.alphas_cumprod.double()[t]
    noise = torch.randn((1, 1, SIZE, SIZE), generator=torch.Generator().manual_seed(5))[0, 0]
    expected = (abar.sqrt() * x0 + (1 - abar).sqrt() * noise.double()).clamp(-1, 1)
    expected = ((expected + 1) * 127.5).round().numpy()
    np.testing.assert_allclose(_png(x_t), expected, atol=1)
    assert f"t = {t}" in info


def test_likelihood_tab_returns_a_finite_bound(served, digit_png):
    client, loaded = served
    plot, summary = client.predict(handle_file(str(digit_png)), 11, 0, api_name="/likelihood")
    terms = np.array([row[1] for row in plot["data"]], dtype=np.float64)
    assert terms.shape == (T,)
    assert all(math.isfinite(value) for value in summary.values())
    assert summary["distortion_bpd"] == pytest.approx(terms[0])
    assert summary["rate_bpd"] == pytest.approx(terms[1:].sum())
    # L_T = KL(N(sqrt(abar_T) x0, 1 - abar_T) || N(0, 1)) per dim, in bits: analytic, no network.
    x0 = torch.from_numpy(_png(str(digit_png))).double() / 127.5 - 1
    abar = DDPMScheduler(num_train_timesteps=T, beta_start=BETA_START, beta_end=BETA_END)
    abar_t = abar.alphas_cumprod.double()[-1]
    kl = 0.5 * (abar_t * x0**2 + (1 - abar_t) - 1 - torch.log(1 - abar_t))
    assert summary["prior_bpd"] == pytest.approx(float(kl.mean() / math.log(2)), rel=1e-4)
    assert summary["total_bpd"] == pytest.approx(
        summary["prior_bpd"] + summary["rate_bpd"] + summary["distortion_bpd"], rel=1e-6
    )
    # Same seed, same draws: the app's number is the library's number.
    direct = variational_bound(
        loaded.pipe.unet,
        HFDDPMScheduler.from_config(loaded.pipe.scheduler.config),
        x0.float()[None, None],
        generator=torch.Generator().manual_seed(11),
    )
    assert summary["total_bpd"] == pytest.approx(float(direct.total_bpd[0]), rel=1e-5)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"num_images": app.MAX_IMAGES + 1}, "maximum"),
        ({"num_images": 0}, "minimum"),
        ({"steps": 0}, "minimum"),
        ({"steps": T + 1}, "maximum"),
        ({"steps": 2.5}, "Inference steps must be a whole number from 1 to 20; got 2.5"),
        ({"variance_type": "bogus"}, "not in the list of choices"),
        ({"seed": -1}, "minimum"),
    ],
)
def test_bad_generate_input_gives_a_readable_error(served, overrides, words):
    client, _ = served
    with pytest.raises(AppError, match=words):
        _generate(client, **overrides).result()


def test_bad_forward_and_likelihood_input_gives_a_readable_error(served, digit_png):
    client, _ = served
    with pytest.raises(AppError, match="Upload an image first"):
        client.predict(None, 3, 0, api_name="/forward")
    with pytest.raises(AppError, match="maximum"):
        client.predict(handle_file(str(digit_png)), T, 0, api_name="/forward")
    with pytest.raises(AppError, match="Upload an image first"):
        client.predict(None, 0, 0, api_name="/likelihood")


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"this is a text file, not a picture", "not a format PIL knows"),
        # A real PNG cut short: PIL identifies it, then fails to decode it.
        ("truncated", "truncated"),
    ],
    ids=["text", "truncated"],
)
def test_an_upload_that_is_not_an_image_gets_a_message_naming_the_file(
    served, digit_png, tmp_path, content, words
):
    client, _ = served
    fake = tmp_path / "holiday.png"
    fake.write_bytes(digit_png.read_bytes()[:60] if content == "truncated" else content)
    for args, api_name in (((3, 0), "/forward"), ((0, 0), "/likelihood")):
        with pytest.raises(AppError) as raised:
            client.predict(handle_file(str(fake)), *args, api_name=api_name)
        message = str(raised.value)
        assert "`holiday.png` is not an image this Space can read" in message, message
        assert words in message, message


def test_a_twenty_digit_seed_is_refused_with_the_range(served, digit_png):
    client, _ = served
    seed = 12345678901234567890
    with pytest.raises(AppError, match=r"Seed must be a whole number from 0 to 4294967295"):
        _generate(client, seed=seed).result()
    with pytest.raises(AppError, match=r"Noise seed must be a whole number from 0 to 4294967295"):
        client.predict(handle_file(str(digit_png)), 3, seed, api_name="/forward")


def _silent(*args, **kwargs):
    return None


def test_steps_at_the_spaces_cap_say_so_in_the_status_line(tmp_path):
    """The slider clamps a typed 100,000 to the cap; the status line then says that it is the cap."""
    num_train = app.MAX_STEPS + 50
    unet = _tiny_unet(in_channels=1, sample_size=4)
    HFDDPMPipeline(
        unet=unet, scheduler=HFDDPMScheduler(num_train_timesteps=num_train)
    ).save_pretrained(tmp_path)
    state = app.load_model(str(tmp_path))
    assert state.model is not None, state.message
    *_, capped = app.generate_images(
        state, 0, 1, app.MAX_STEPS, "fixed_small", None, 1.0, _silent, timestep_spacing="trailing"
    )
    assert f"{app.MAX_STEPS} steps is this Space's cap per request (HF_DDPM_MAX_STEPS)" in capped[3]
    assert f"the model has T = {num_train}" in capped[3]
    *_, below = app.generate_images(state, 0, 1, 5, "fixed_small", None, 1.0, _silent)
    assert "cap" not in below[3]
    with pytest.raises(app.gr.Error, match=f"from 1 to {app.MAX_STEPS}; got 100000"):
        next(app.generate_images(state, 0, 1, 100_000, "fixed_small", None, 1.0, _silent))


def _dataset_labels(demo) -> list[str]:
    return [
        str(c["props"].get("label"))
        for c in demo.get_config_file()["components"]
        if c.get("type") == "dataset"
    ]


def test_examples_are_offered_only_to_a_model_of_their_channels(tmp_path, model_dir):
    """The held-out MNIST digits are grey: a 1-channel model gets them, an RGB model none."""
    grey = app.load_model(str(model_dir))
    examples = app.examples_for(grey.model)
    assert examples and all(Image.open(path).mode == "L" for path in examples)
    assert "Held-out MNIST digits" in _dataset_labels(app.build_demo(grey))
    unet = _tiny_unet(in_channels=3, sample_size=SIZE)
    HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler(num_train_timesteps=T)).save_pretrained(
        tmp_path
    )
    rgb = app.load_model(str(tmp_path))
    assert rgb.model is not None and rgb.model.channels == 3
    assert app.examples_for(rgb.model) == []
    assert _dataset_labels(app.build_demo(rgb)) == []


def test_a_model_that_fails_to_load_still_serves_a_page_that_says_so(tmp_path):
    state = app.load_model(str(tmp_path / "no-such-model"))
    assert state.model is None
    demo = app.build_demo(state)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        config = httpx.get(url + "config", timeout=30).json()
        assert any(
            "failed to load" in str(c.get("props", {}).get("value")) for c in config["components"]
        )
        client = Client(url, analytics_enabled=False, verbose=False)
        with pytest.raises(AppError, match="failed to load"):
            _generate(client).result()
        client.close()
    finally:
        demo.close()


def test_the_model_comes_from_the_flag_then_the_environment_then_the_readme(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text("---\nsdk: gradio\nmodels:\n- tester/from-readme\n---\n# Space\n")
    monkeypatch.setattr(app, "_HERE", tmp_path)
    monkeypatch.delenv("HF_DDPM_MODEL", raising=False)
    assert app.resolve_model() == "tester/from-readme"
    monkeypatch.setenv("HF_DDPM_MODEL", "tester/from-env")
    assert app.resolve_model() == "tester/from-env"
    assert app.resolve_model("tester/from-flag") == "tester/from-flag"


def test_without_hf_ddpm_the_app_loads_remote_code_and_streams(model_dir, run_without_hf_ddpm):
    # What a Space made from spaces_app/ alone does: no hf_ddpm, so trust_remote_code loading.
    code = f"""
import sys
sys.path.insert(0, {str(app._HERE)!r})
import gradio as gr
import numpy as np
import app

state = app.load_model({str(model_dir)!r})
assert state.model is not None, state.message
assert type(state.model.pipe).__name__ == "HFDDPMPipeline" and state.model.streams
outputs = list(app.generate_images(state, 1, 2, 4, "fixed_small", None, 1.0, lambda *a, **k: None))
assert len(outputs) == 5 and len(outputs[-1][2]) == 2, [len(o) for o in outputs]
# The forward tab still takes an upload, squeezed to the model's size (no training transform here).
x0_shown, x_t, _ = app.forward_noise(state, np.zeros((12, 8, 3), np.uint8), 3, 0)
assert x0_shown.shape == x_t.shape == (8, 8, 3), (x0_shown.shape, x_t.shape)
try:
    app.likelihood_bound(state, np.zeros((8, 8, 3), np.uint8), 0, None)
except gr.Error as error:
    print("LIKELIHOOD:", error.message)
# The whole page, Edit tab included, comes up; the Edit tab says what it lacks.
config = app.build_demo(state).get_config_file()
help_text = [c["props"]["value"] for c in config["components"]
             if c.get("props", {{}}).get("elem_id") == "edit_help"]
print("EDIT:", help_text)
"""
    result = run_without_hf_ddpm(code)
    assert "LIKELIHOOD: The likelihood tab needs the hf_ddpm package" in result.stdout
    assert "has no editing pipelines" in result.stdout.split("EDIT:")[1]


# --- The likelihood tab prepares an upload as training and `hf-ddpm evaluate` do -------------------

# The bundled model's UNet and data, with the bound over 10 timesteps instead of its 1000 (~13 s per
# image on one CPU thread): the preprocessing, the levels and the label under test do not depend on T.
SHORT_T = 10


def test_the_bundled_model_offers_and_defaults_to_the_variance_hf_ddpm_sample_uses():
    """The bundled model is calibrated: `hf-ddpm sample` draws it with the analytic variance unless told
    otherwise, and the Space offers that variance and starts on it."""
    from hf_ddpm.sampling.samplers import sampling_scheduler

    state = app.load_model(str(bundled_model_path()))
    assert state.model is not None, state.message
    command_line = sampling_scheduler(state.model.pipe)  # `hf-ddpm sample` without --variance-type
    assert command_line.scheduler.config.variance_type == "analytic"
    assert "analytic" in state.model.variance_types
    config = app.build_demo(state).get_config_file()
    (dropdown,) = [
        c["props"]
        for c in config["components"]
        if c.get("props", {}).get("elem_id") == "variance_type"
    ]
    assert dropdown["value"] == command_line.scheduler.config.variance_type
    assert ["analytic", "analytic"] in [list(choice) for choice in dropdown["choices"]]


def test_a_model_with_a_covariance_head_offers_its_types_and_samples_with_it(
    model_dir, run_without_hf_ddpm
):
    """The bundled model ships an NPR head: `hf-ddpm sample --variance-type npr` draws with it, and the
    Space offered neither "sn" nor "npr" (their scheduler takes 2C channels, the UNet outputs C). It
    offers both where the pipeline carries a head, with hf_ddpm and without (the head types of the
    model's own code): the kind its head was fitted as (npr; sn would be refused), and draws what the
    pipeline draws with that variance; a model without a head is not offered them."""
    from hf_ddpm.core.variance import HEAD_VARIANCE_TYPES

    assert not set(HEAD_VARIANCE_TYPES) & set(app.load_model(str(model_dir)).model.variance_types)
    state = app.load_model(str(bundled_model_path()))
    assert state.model.pipe.covariance_head.config.kind == "npr"
    assert set(HEAD_VARIANCE_TYPES) & set(state.model.variance_types) == {"npr"}
    assert state.model.variance_types[0] == "analytic"  # the default stays hf-ddpm sample's
    *_, (_, _, images, status) = app.generate_images(
        state, 3, 1, 4, "npr", 7, 1.0, lambda *a, **k: None
    )
    assert "npr variance" in status
    pipe = state.model.pipe
    scheduler = HFDDPMScheduler.from_config(pipe.scheduler.config, variance_type="npr")
    direct = type(pipe).from_pipe(pipe, unet=pipe.unet, scheduler=scheduler)
    direct.set_progress_bar_config(disable=True)
    expected = direct(
        batch_size=1,
        generator=torch.Generator().manual_seed(3),
        num_inference_steps=4,
        class_labels=[7],
        guidance_scale=1.0,
        output_type="np",
    ).images
    grey = (expected[0, ..., 0] * 255).round().clip(0, 255).astype(np.uint8)
    np.testing.assert_array_equal(images[0][..., 0], grey)

    result = run_without_hf_ddpm(f"""
import sys
sys.path.insert(0, {str(app._HERE)!r})
import app
state = app.load_model({str(bundled_model_path())!r})
assert state.model is not None, state.message
assert "npr" in state.model.variance_types, state.model.variance_types
assert "sn" not in state.model.variance_types, state.model.variance_types
*_, (_, _, images, status) = app.generate_images(state, 3, 1, 4, "npr", 7, 1.0, lambda *a, **k: None)
print("STATUS:", status)
""")
    assert "npr variance" in result.stdout


def test_the_likelihood_of_a_model_that_samples_with_its_head(tmp_path):
    """A model whose scheduler samples with its NPR head (what `hf-ddpm fit-covariance` writes): the page
    took it for a learned variance (npr alone, no diffusers sampler), and the tab bounded the UNet
    alone, which the NPR scheduler refuses. The head here predicts 0.5 everywhere
    (zero weights, bias 0.5), so the bound's model output is eps and 0.5, built here without the head."""
    from hf_ddpm.core.covariance_head import CovarianceHead
    from spaces_app.ddpm_space.pictures import image_to_tensor

    unet = _tiny_unet(in_channels=1, sample_size=SIZE)
    head = CovarianceHead.for_unet(unet)
    with torch.no_grad():
        head.conv.bias.fill_(0.5)
    scheduler = HFDDPMScheduler(
        num_train_timesteps=T, beta_start=BETA_START, beta_end=BETA_END, variance_type="npr"
    )
    HFDDPMPipeline(unet, scheduler, covariance_head=head).save_pretrained(tmp_path / "npr")
    state = app.load_model(str(tmp_path / "npr"))
    # Its variance is the head's, not a learned one: every type and every sampler are offered, npr first
    # (the head, saved beside an npr scheduler, is an NPR head: sn, which would be refused, is not).
    assert state.model.variance_types[0] == "npr"
    assert "fixed_small" in state.model.variance_types
    assert "sn" not in state.model.variance_types
    assert {"ddim", "dpm-solver++", "unipc"} <= set(state.model.samplers)
    image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    _, summary = app.likelihood_bound(state, image, 4, None)

    def eps_then_half(x_t, t):
        eps = unet(x_t, t).sample
        return torch.cat([eps, torch.full_like(eps, 0.5)], 1)

    x0 = image_to_tensor(image, state.model.transform)
    expected = variational_bound(
        eps_then_half,
        HFDDPMScheduler.from_config(scheduler.config),
        x0,
        generator=torch.Generator().manual_seed(4),
        num_bins=state.model.num_bins,
    )
    assert summary["total_bpd"] == pytest.approx(float(expected.total_bpd[0]), rel=1e-6)


@pytest.fixture(scope="module")
def served_bundled():
    state = app.load_model(str(bundled_model_path()))
    assert state.model is not None, state.message
    pipe = state.model.pipe
    short = HFDDPMPipeline(
        unet=pipe.unet,
        scheduler=HFDDPMScheduler.from_config(pipe.scheduler.config, num_train_timesteps=SHORT_T),
    )
    loaded = dataclasses.replace(state.model, pipe=short, num_train_timesteps=SHORT_T)
    demo = app.build_demo(app.ModelState(loaded, state.message))
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    client = Client(url, analytics_enabled=False, verbose=False)
    yield client, loaded, url
    client.close()
    demo.close()


def _held_out_digit() -> np.ndarray:
    """A held-out MNIST digit (28x28), one of the Space's examples."""
    return np.asarray(Image.open(app._HERE / "examples" / "mnist_test_digit_3.png").convert("L"))


def _wide_digit() -> np.ndarray:
    """The digit padded to 40 wide x 28 high with a ramp on each side: the model sees the centre crop."""
    ramp = np.tile(np.linspace(0, 255, 6), (28, 1)).round().astype(np.uint8)
    return np.concatenate([ramp, _held_out_digit(), ramp[:, ::-1]], axis=1)


def _evaluation_bound(folder, loaded, seed: int, label: int):
    """What hf_ddpm's own path gives: the image folder read and preprocessed by hf_ddpm.data.image_datasets (as
    ``hf-ddpm evaluate --train-data-dir`` reads it), then the same bound function, seed and label."""
    data = load_image_dataset(train_data_dir=str(folder))
    x0 = preprocess(data, loaded.sample_size)[0]["pixel_values"][None]
    unet = loaded.pipe.unet

    def model(x_t: torch.Tensor, t: torch.Tensor):
        return unet(x_t, t, class_labels=torch.full((x_t.shape[0],), label, dtype=torch.long))

    scheduler = HFDDPMScheduler.from_config(loaded.pipe.scheduler.config)
    generator = torch.Generator().manual_seed(seed)
    return variational_bound(model, scheduler, x0, generator=generator, num_bins=data.num_bins)


@pytest.mark.parametrize("make_image", [_held_out_digit, _wide_digit], ids=["28x28", "40x28"])
def test_likelihood_tab_gives_the_evaluation_bits_per_dim_for_the_bundled_model(
    served_bundled, tmp_path, make_image
):
    client, loaded, _ = served_bundled
    pixels = make_image()
    (tmp_path / "upload").mkdir()
    path = tmp_path / "upload" / "image.png"
    Image.fromarray(pixels).save(path)
    # The bundled model's train_config.json names mnist-5k: 8-bit data.
    assert loaded.num_bins == 256 and "mnist-5k" in loaded.num_bins_source
    plot, summary = client.predict(handle_file(str(path)), 7, 3, api_name="/likelihood")
    expected = _evaluation_bound(tmp_path / "upload", loaded, seed=7, label=3)
    terms = np.array([row[1] for row in plot["data"]], dtype=np.float64)
    np.testing.assert_allclose(terms, expected.terms_bpd[0].numpy(), rtol=1e-6, atol=1e-9)
    assert summary["total_bpd"] == pytest.approx(float(expected.total_bpd[0]), rel=1e-6)
    assert summary["prior_bpd"] == pytest.approx(float(expected.prior_bpd[0]), rel=1e-6)
    # The forward tab shows the same x_0 the likelihood tab scored (to the display's 8 bits).
    x0_shown, _, _ = client.predict(handle_file(str(path)), 0, 0, api_name="/forward")
    data = load_image_dataset(train_data_dir=str(tmp_path / "upload"))
    x0 = preprocess(data, loaded.sample_size)[0]["pixel_values"][0]
    np.testing.assert_array_equal(_png(x0_shown), ((x0 + 1) * 127.5).round().numpy())


def test_likelihood_tab_without_a_class_gives_the_number_hf_ddpm_evaluate_reports(
    served_bundled, tmp_path
):
    """For a class-conditional model the default condition is none: the bound of p(x), through the
    null label, as ``hf-ddpm evaluate`` computes it (its own model wrapper); a class gives another."""
    from hf_ddpm.evaluation.bound import unconditional_model

    client, loaded, _ = served_bundled
    (tmp_path / "upload").mkdir()
    path = tmp_path / "upload" / "image.png"
    Image.fromarray(_held_out_digit()).save(path)
    _, unconditional = client.predict(
        handle_file(str(path)), 7, app.NO_CLASS, api_name="/likelihood"
    )
    _, conditional = client.predict(handle_file(str(path)), 7, 3, api_name="/likelihood")
    data = load_image_dataset(train_data_dir=str(tmp_path / "upload"))
    x0 = preprocess(data, loaded.sample_size)[0]["pixel_values"][None]
    scheduler = HFDDPMScheduler.from_config(loaded.pipe.scheduler.config)
    expected = variational_bound(
        unconditional_model(loaded.pipe.unet),
        scheduler,
        x0,
        generator=torch.Generator().manual_seed(7),
        num_bins=data.num_bins,
    )
    assert unconditional["total_bpd"] == pytest.approx(float(expected.total_bpd[0]), rel=1e-6)
    assert conditional["total_bpd"] != pytest.approx(unconditional["total_bpd"], rel=1e-3)
    with pytest.raises(AppError, match=r"Class \(-1: none\) must be a whole number from -1 to 9"):
        client.predict(handle_file(str(path)), 7, 10, api_name="/likelihood")


def test_likelihood_tab_says_how_it_prepares_an_upload(served_bundled):
    _, _, url = served_bundled
    config = httpx.get(url + "config", timeout=30).json()
    (help_text,) = [
        str(c["props"]["value"])
        for c in config["components"]
        if c.get("props", {}).get("elem_id") == "likelihood_help"
    ]
    assert "resized (bilinear) to 32" in help_text
    assert "256 levels (dataset mnist-5k, from the model's train_config.json)" in help_text


def test_likelihood_tab_uses_the_levels_named_by_the_models_train_config(tmp_path):
    # A model trained on scikit-learn's 17-level digits: without train_config.json the app can only
    # assume 8-bit data; with it, the upload is snapped to 17 levels and L_0 uses 17 bins, as in
    # `hf-ddpm evaluate --dataset sklearn-digits`.
    folder = tmp_path / "digits-model"
    _tiny_pipeline().save_pretrained(folder)
    assumed = app.load_model(str(folder)).model
    assert assumed.num_bins == 256 and "assumed 8-bit" in assumed.num_bins_source
    config = {"dataset": "sklearn-digits", "train_data_dir": None, "resolution": SIZE}
    (folder / "train_config.json").write_text(json.dumps(config))
    loaded = app.load_model(str(folder)).model
    assert loaded.num_bins == 17
    data = load_image_dataset("sklearn-digits", split="test")
    upload = np.asarray(
        data.dataset[4]["image"].convert("RGB")
    )  # as gr.Image(image_mode="RGB") gives
    _, summary = app.likelihood_bound(app.ModelState(loaded, ""), upload, 5, None)
    expected = variational_bound(
        loaded.pipe.unet,
        HFDDPMScheduler.from_config(loaded.pipe.scheduler.config),
        preprocess(data, SIZE)[4]["pixel_values"][None],
        generator=torch.Generator().manual_seed(5),
        num_bins=data.num_bins,
    )
    assert summary["total_bpd"] == pytest.approx(float(expected.total_bpd[0]), rel=1e-6)
    assert summary["distortion_bpd"] == pytest.approx(float(expected.terms_bpd[0, 0]), rel=1e-6)


def test_a_model_that_is_neither_grey_nor_rgb_generates_and_refuses_uploads(tmp_path):
    """Two-channel images: the model loads and generates; the upload tabs say why they cannot help."""
    unet = _tiny_unet(in_channels=2, sample_size=SIZE)
    HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler(num_train_timesteps=T)).save_pretrained(
        tmp_path
    )
    state = app.load_model(str(tmp_path))
    assert state.model is not None, state.message
    outputs = list(
        app.generate_images(state, 1, 2, 4, "fixed_small", None, 1.0, lambda *a, **k: None)
    )
    assert outputs and len(outputs[-1][2]) == 2
    for call in (
        lambda: app.forward_noise(state, np.zeros((8, 8, 3), np.uint8), 3, 0),
        lambda: app.likelihood_bound(state, np.zeros((8, 8, 3), np.uint8), 0, None),
    ):
        with pytest.raises(
            app.gr.Error, match="2-channel images; an uploaded picture can only be used"
        ):
            call()


# --- The Edit tab: inpainting (RePaint) and image-to-image (SDEdit) -------------------------------

requires_editing = pytest.mark.skipif(
    not hasattr(hf_ddpm, "HFDDPMInpaintPipeline"),
    reason="hf_ddpm has no HFDDPMInpaintPipeline / HFDDPMImg2ImgPipeline yet",
)


def _editor_value(background, layer, composite) -> dict:
    return {
        "background": handle_file(str(background)),
        "layers": [handle_file(str(layer))] if layer else [],
        "composite": handle_file(str(composite)),
        "id": None,
    }


@pytest.fixture
def painted_digit(tmp_path, digit_png):
    """The 8x8 test picture with a painted layer over its lower half (as the ImageEditor returns it:
    RGBA, opaque where painted) and the composite of the two."""
    layer = np.zeros((SIZE, SIZE, 4), np.uint8)
    layer[SIZE // 2 :] = (255, 0, 255, 255)
    Image.fromarray(layer, "RGBA").save(tmp_path / "layer.png")
    composite = np.asarray(Image.open(digit_png).convert("RGBA")).copy()
    composite[SIZE // 2 :] = layer[SIZE // 2 :]
    Image.fromarray(composite, "RGBA").save(tmp_path / "composite.png")
    return digit_png, tmp_path / "layer.png", tmp_path / "composite.png"


def _edit(client, editor, **overrides):
    args = {
        "editor": editor,
        "mode": "Inpaint",
        "strength": 0.5,
        "steps": 10,
        "jump_n_sample": 3,
        "seed": 5,
        "class_label": app.NO_CLASS,
        "guidance_scale": 1,
    }
    args.update(overrides)
    return client.submit(**args, api_name="/edit")


@requires_editing
def test_edit_inpaints_the_painted_region_as_the_pipeline_does_and_streams(
    served, model_dir, painted_digit
):
    client, _ = served
    background, layer, composite = painted_digit
    job = _edit(client, _editor_value(background, layer, composite))
    _, result, status = job.result()
    frames = job.outputs()[:-1]
    assert frames and all(frame[0] and frame[1] is None for frame in frames)
    assert "inpainted with 10 steps x 3 resamplings (jump length 10)" in status
    picture = _png(str(background))
    got = _png(result)
    # The known (upper) half is the picture itself; the painted half is new.
    np.testing.assert_array_equal(got[: SIZE // 2], picture[: SIZE // 2])
    assert not np.array_equal(got[SIZE // 2 :], picture[SIZE // 2 :])
    # The app's fill is the pipeline's, called directly with the same picture, mask and seed.
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[SIZE // 2 :] = 1
    pipe = hf_ddpm.HFDDPMInpaintPipeline.from_pipe(HFDDPMPipeline.from_pretrained(model_dir))
    expected = pipe(
        image=picture.astype(np.float32)[..., None] / 255,
        mask_image=mask,
        num_inference_steps=10,
        jump_length=10,
        jump_n_sample=3,
        generator=torch.Generator().manual_seed(5),
        output_type="np",
    ).images[0, ..., 0]
    np.testing.assert_allclose(got, (expected * 255).round(), atol=1)


@requires_editing
def test_edit_image_to_image_is_the_pipeline_on_the_composite(served, model_dir, painted_digit):
    client, _ = served
    background, layer, composite = painted_digit
    editor = _editor_value(background, layer, composite)
    _, result, status = _edit(client, editor, mode="Image-to-image", strength=0.6).result()
    assert "image-to-image at strength 0.6" in status
    # What the model sees of the composite: grey, as ImageTransform("L", ...) converts it.
    rough = np.asarray(Image.open(composite).convert("L"), dtype=np.float32) / 255
    pipe = hf_ddpm.HFDDPMImg2ImgPipeline.from_pipe(HFDDPMPipeline.from_pretrained(model_dir))
    expected = pipe(
        image=rough[..., None],
        strength=0.6,
        num_inference_steps=10,
        generator=torch.Generator().manual_seed(5),
        output_type="np",
    ).images[0, ..., 0]
    np.testing.assert_allclose(_png(result), (expected * 255).round(), atol=1)


@requires_editing
@pytest.mark.parametrize(
    ("layer", "overrides", "words"),
    [
        (False, {}, "Paint the region to fill with the brush"),
        (True, {"jump_n_sample": 11}, "maximum"),
        (True, {"mode": "Image-to-image", "strength": 0}, "minimum"),
        (True, {"mode": "Outpaint"}, "not in the list of choices"),
    ],
)
def test_bad_edit_input_gives_a_readable_error(served, painted_digit, layer, overrides, words):
    client, _ = served
    background, painted, composite = painted_digit
    editor = _editor_value(background, painted if layer else None, composite)
    with pytest.raises(AppError, match=words):
        _edit(client, editor, **overrides).result()


def _editor_arrays(background, layer, composite) -> dict:
    """An ImageEditor value as the tab's function receives it (type="numpy", image_mode="RGBA")."""
    return {
        "background": np.asarray(Image.open(background).convert("RGBA")),
        "layers": [np.asarray(Image.open(layer).convert("RGBA"))],
        "composite": np.asarray(Image.open(composite).convert("RGBA")),
    }


@requires_editing
def test_inpainting_work_is_capped_like_generate(tmp_path, painted_digit):
    """RePaint runs the model about steps x resamplings times: more than the cap is refused."""
    unet = _tiny_unet(in_channels=1, sample_size=SIZE)
    scheduler = HFDDPMScheduler(num_train_timesteps=app.MAX_STEPS + 50)
    HFDDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "long")
    state = app.load_model(str(tmp_path / "long"))
    editor = _editor_arrays(*painted_digit)
    steps = app.MAX_STEPS // 2 + 1
    with pytest.raises(app.gr.Error, match=rf"{steps} x 2 = {2 * steps} times; this Space allows"):
        next(app.edit_image(state, editor, "Inpaint", 0.5, steps, 2, 0, None, 1.0, _silent))


def test_without_the_editing_pipelines_the_page_comes_up_and_the_tab_says_why(
    model_dir, painted_digit, monkeypatch
):
    from spaces_app.ddpm_space import editing

    monkeypatch.setattr(editing, "editing_pipelines", lambda: None)
    state = app.load_model(str(model_dir))
    config = app.build_demo(state).get_config_file()
    (button,) = [
        c["props"] for c in config["components"] if c.get("props", {}).get("elem_id") == "edit"
    ]
    assert button["interactive"] is False
    (help_text,) = [
        str(c["props"]["value"])
        for c in config["components"]
        if c.get("props", {}).get("elem_id") == "edit_help"
    ]
    assert "has no editing pipelines" in help_text
    with pytest.raises(app.gr.Error, match="needs hf_ddpm's HFDDPMInpaintPipeline"):
        next(
            app.edit_image(
                state, _editor_arrays(*painted_digit), "Inpaint", 0.5, 5, 1, 0, None, 1.0, _silent
            )
        )


@pytest.mark.parametrize(
    "argv", [["out/m"], ["--model", "out/m"], ["out/m", "--model", "out/m"]], ids=str
)
def test_the_space_takes_the_model_both_ways(argv, monkeypatch):
    """`python app.py MODEL` and `python app.py --model MODEL`, as every hf-ddpm command takes it."""
    from types import SimpleNamespace

    served, launched = [], []
    monkeypatch.setattr(app, "load_model", lambda model: served.append(model) or "state")
    monkeypatch.setattr(
        app, "build_demo", lambda state: SimpleNamespace(launch=lambda **kw: launched.append(kw))
    )
    app.main([*argv, "--port", "7999"])
    assert served == ["out/m"] and launched[0]["server_port"] == 7999


def test_the_space_refuses_two_different_models(monkeypatch, capsys):
    monkeypatch.setattr(app, "load_model", lambda model: pytest.fail("loaded a model"))
    with pytest.raises(SystemExit) as done:
        app.main(["out/a", "--model", "out/b"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "'out/a'" in err and "--model 'out/b'" in err


@requires_editing
@pytest.mark.parametrize("mode", ["Inpaint", "Image-to-image"])
def test_the_edit_tab_edits_as_hf_ddpm_inpaint_and_img2img_do(tmp_path, mode):
    """The bundled model is calibrated: `hf-ddpm inpaint` / `img2img` run its chain with the analytic
    variance, as `hf-ddpm sample` does, and the Edit tab gives the same edit for the same picture, mask,
    class and seed. (The tab rebuilt the model's own scheduler, fixed_small, and so edited otherwise.)"""
    from hf_ddpm import cli

    model = bundled_model_path()
    size = 32
    digit = Image.fromarray(_held_out_digit()).resize((size, size), Image.Resampling.BILINEAR)
    digit.save(tmp_path / "digit.png")
    layer = np.zeros((size, size, 4), np.uint8)
    layer[size // 2 :] = (255, 255, 255, 255)
    Image.fromarray(layer, "RGBA").save(tmp_path / "layer.png")
    Image.fromarray(layer[..., 3], "L").save(tmp_path / "mask.png")
    composite = np.asarray(digit.convert("RGBA")).copy()
    composite[size // 2 :] = layer[size // 2 :]
    Image.fromarray(composite, "RGBA").save(tmp_path / "composite.png")

    out = tmp_path / "cli.png"
    argv = ["--model", str(model), "--output", str(out), "--num-inference-steps", "5"]
    argv += ["--seed", "5", "--class-label", "3"]
    if mode == "Inpaint":
        argv = ["inpaint", *argv, "--image", str(tmp_path / "digit.png")]
        argv += [
            "--mask",
            str(tmp_path / "mask.png"),
            "--jump-length",
            "10",
            "--jump-n-sample",
            "2",
        ]
    else:
        argv = ["img2img", *argv, "--image", str(tmp_path / "composite.png"), "--strength", "0.6"]
    assert cli.main(argv) == 0

    state = app.load_model(str(model))
    editor = _editor_arrays(
        tmp_path / "digit.png", tmp_path / "layer.png", tmp_path / "composite.png"
    )
    *_, (result, _, status) = app.edit_image(state, editor, mode, 0.6, 5, 2, 5, 3, 1.0, _silent)
    assert "analytic variance" in status, status
    got = np.asarray(Image.fromarray(np.asarray(result)).convert("L"), dtype=np.int16)
    np.testing.assert_allclose(got, _png(str(out)), atol=1)


# --- A class by name or number, in every tab that takes one -----------------------------------------

PETS = ["cats", "dogs"]


@pytest.fixture(scope="module")
def pets_dir(tmp_path_factory):
    """A class-conditional 8x8 model whose classes have names, as hf-ddpm train --class-from-folders
    records them; the null label 2 after its two classes."""
    folder = tmp_path_factory.mktemp("pets")
    unet = _tiny_unet(in_channels=1, sample_size=SIZE, num_class_embeds=3)
    scheduler = HFDDPMScheduler(num_train_timesteps=T, beta_start=BETA_START, beta_end=BETA_END)
    HFDDPMPipeline(unet, scheduler, null_class_label=2, class_names=PETS).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def served_pets(pets_dir):
    state = app.load_model(str(pets_dir))
    assert state.model is not None, state.message
    demo = app.build_demo(state)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    client = Client(url, analytics_enabled=False, verbose=False)
    yield client
    client.close()
    demo.close()


def _class_samples(folder, label: int) -> np.ndarray:
    """The pipeline's own images of class ``label`` for _generate's seed, count and steps."""
    pipe = HFDDPMPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        batch_size=3,
        generator=torch.Generator().manual_seed(3),
        num_inference_steps=10,
        output_type="np",
        class_labels=[label] * 3,
        guidance_scale=1.0,
    ).images
    return (images[..., 0] * 255).round().astype(np.int16)


@pytest.mark.parametrize("label", ["dogs", "1", 1], ids=repr)
def test_generate_takes_a_class_by_its_name_or_its_number(served_pets, pets_dir, label):
    """A class given as the model's name for it, or as its number (an API client sends the dropdown's
    values as strings), is the class hf-ddpm sample --class-label reads: here the pipeline's class 1."""
    _, _, gallery, _ = _generate(served_pets, class_label=label).result()
    images = np.stack([_png(item["image"]) for item in gallery])
    np.testing.assert_allclose(images, _class_samples(pets_dir, 1), atol=1)
    assert not np.allclose(images, _class_samples(pets_dir, 0), atol=1)


@pytest.mark.parametrize("label", ["flower", "2", -1, 0.5], ids=repr)
def test_generate_refuses_a_class_the_model_has_not_naming_its_classes(served_pets, label):
    with pytest.raises(AppError) as raised:
        _generate(served_pets, class_label=label).result()
    message = str(raised.value)
    assert "Class must be one of the model's classes, by name or number: cats (0), dogs (1)" in (
        message
    ), message
    assert f"got {label!r}" in message, message


def test_likelihood_takes_a_class_or_none_by_name_or_number(served_pets, digit_png):
    def bound(label):
        _, summary = served_pets.predict(
            handle_file(str(digit_png)), 5, label, api_name="/likelihood"
        )
        return summary["total_bpd"]

    assert bound("cats") == bound(0) == bound("0")
    assert bound("-1") == bound(app.NO_CLASS) != bound("dogs")
    with pytest.raises(
        AppError, match=r"Class \(-1: none\) must be one of .*cats \(0\), dogs \(1\)"
    ):
        bound("flower")


@requires_editing
def test_edit_takes_a_class_by_name_or_number(served_pets, painted_digit):
    background, layer, composite = painted_digit
    editor = _editor_value(background, layer, composite)

    def result(label):
        return _png(_edit(served_pets, editor, class_label=label).result()[1])

    by_name = result("dogs")
    np.testing.assert_array_equal(by_name, result(1))
    np.testing.assert_array_equal(by_name, result("1"))
    assert not np.array_equal(by_name, result(app.NO_CLASS))
    with pytest.raises(AppError, match=r"cats \(0\), dogs \(1\); got 'flower'"):
        result("flower")


def test_the_space_takes_threads_as_every_command_does(monkeypatch, capsys):
    """`python app.py --threads N` sets torch's intra-op threads before the model loads, with the flag
    of hf-ddpm's commands (its help and its check of N); app.py had no --threads."""
    import argparse
    from types import SimpleNamespace

    from hf_ddpm.cli import add_threads_flag

    threads_when_loaded = []
    monkeypatch.setattr(
        app, "load_model", lambda model: threads_when_loaded.append(torch.get_num_threads())
    )
    monkeypatch.setattr(app, "build_demo", lambda state: SimpleNamespace(launch=lambda **kw: None))
    before = torch.get_num_threads()
    try:
        app.main(["out/m", "--threads", "1"])
    finally:
        torch.set_num_threads(before)
    assert threads_when_loaded == [1]
    assert (
        app.add_threads_flag is add_threads_flag
    )  # the one definition, where hf_ddpm is installed
    with pytest.raises(SystemExit) as done:
        app.main(["out/m", "--threads", "0"])
    assert done.value.code == 2 and "--threads: invalid positive integer value: '0'" in (
        capsys.readouterr().err
    )
    reference = argparse.ArgumentParser()
    add_threads_flag(reference)
    with pytest.raises(SystemExit):
        app.main(["--help"])
    assert " ".join(reference.format_help().split()).split("--threads N ")[1] in " ".join(
        capsys.readouterr().out.split()
    )


def test_without_hf_ddpm_the_space_takes_threads_all_the_same(run_without_hf_ddpm):
    code = f"""
import sys
sys.path.insert(0, {str(app._HERE)!r})
import torch
import app

assert app.add_threads_flag.__module__ == "app"  # the fallback
seen = []
app.load_model = lambda model: seen.append(torch.get_num_threads())
app.build_demo = lambda state: type("Demo", (), {{"launch": lambda self, **kw: None}})()
app.main(["out/m", "--threads", "1"])
assert seen == [1], seen
try:
    app.main(["out/m", "--threads", "0"])
except SystemExit as exit:
    print("EXIT", exit.code)
"""
    result = run_without_hf_ddpm(code)
    assert "EXIT 2" in result.stdout
    assert "--threads: invalid positive integer value: '0'" in result.stderr
