"""The covariance head as a pipeline component: one UNet call per step, the features of that very call, run
only for the head variance types, in all three pipelines; saved, loaded (with and without hf_ddpm) and
refused with a message naming `hf-ddpm fit-covariance` where it is missing or does not fit."""

import json

import pytest
import torch
from conftest import _tiny_unet

from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler, cli
from hf_ddpm.core.covariance_head import CovarianceHead, eps_and_head, unet_features
from hf_ddpm.core.pipeline_img2img import HFDDPMImg2ImgPipeline
from hf_ddpm.core.pipeline_inpaint import HFDDPMInpaintPipeline

T = 20


def random_head(unet, seed=0):
    """A head with random weights (a fitted one is not zero): its output then shows in the samples."""
    head = CovarianceHead.for_unet(unet)
    torch.manual_seed(seed)
    torch.nn.init.normal_(head.conv.weight, std=0.2)
    torch.nn.init.constant_(head.conv.bias, 0.5)
    return head.eval()


def pipeline(variance_type="sn", head=True, num_class_embeds=None, cls=HFDDPMPipeline):
    unet = _tiny_unet(in_channels=1, num_class_embeds=num_class_embeds)
    scheduler = HFDDPMScheduler(num_train_timesteps=T, variance_type=variance_type)
    null = None if num_class_embeds is None else num_class_embeds - 1
    pipe = cls(
        unet=unet,
        scheduler=scheduler,
        covariance_head=random_head(unet) if head else None,
        null_class_label=null,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def count_calls(module):
    calls = []
    module.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def test_the_head_is_shaped_for_the_unet_and_starts_at_zero():
    unet = _tiny_unet(in_channels=3)
    head = CovarianceHead.for_unet(unet)
    assert (head.config.feature_channels, head.config.out_channels) == (8, 3)
    assert head.norm.num_groups == unet.conv_norm_out.num_groups
    features = torch.randn(2, 8, 8, 8)
    assert torch.equal(head(features), torch.zeros(2, 3, 8, 8))


def test_the_head_reads_the_features_of_the_call_that_predicted_eps():
    """The captured map is the input of conv_norm_out in the same forward: pushing it through the UNet's
    own output layers gives back the eps of that call."""
    unet, x, t = _tiny_unet(in_channels=1), torch.randn(3, 1, 8, 8), torch.tensor([1, 5, 9])
    head = random_head(unet)
    with unet_features(unet) as features:
        output = eps_and_head(unet, head, x, t)
    (map_,) = features[-1:]
    with torch.no_grad():
        eps = unet.conv_out(unet.conv_act(unet.conv_norm_out(map_)))
        torch.testing.assert_close(output[:, :1], eps, rtol=0, atol=1e-6)
        torch.testing.assert_close(output[:, 1:], head(map_), rtol=0, atol=0)
    assert not unet.conv_norm_out._forward_pre_hooks  # the hook is gone after the block


@pytest.mark.parametrize("variance_type", ["sn", "npr", "fixed_small", "analytic"])
@pytest.mark.parametrize("guided", [False, True])
def test_one_unet_call_per_step_and_the_head_only_for_head_variances(variance_type, guided):
    kwargs = {"variance_type": variance_type, "num_class_embeds": 4}
    if variance_type == "analytic":
        kwargs["variance_type"] = "fixed_small"
    pipe = pipeline(**kwargs)
    if variance_type == "analytic":
        pipe.scheduler = HFDDPMScheduler.from_config(
            pipe.scheduler.config, variance_type="analytic", eps_second_moment=[0.9] * T
        )
    unet_calls, head_calls = count_calls(pipe.unet), count_calls(pipe.covariance_head)
    labels = {"class_labels": [0, 2], "guidance_scale": 3.0} if guided else {}
    pipe(batch_size=2, num_inference_steps=6, generator=torch.Generator().manual_seed(0), **labels)
    assert len(unet_calls) == 6
    assert len(head_calls) == (6 if variance_type in ("sn", "npr") else 0)


def test_with_guidance_the_head_half_is_the_conditional_prediction():
    pipe = pipeline(num_class_embeds=4)
    x, t, labels = torch.randn(2, 1, 8, 8), torch.tensor(7), torch.tensor([0, 2])
    guided = pipe._predict(x, t, labels, 3.0, pipe.covariance_head)
    alone = pipe._predict(x, t, labels, 1.0, pipe.covariance_head)
    torch.testing.assert_close(guided[:, 1:], alone[:, 1:], rtol=0, atol=1e-5)
    assert not torch.allclose(guided[:, :1], alone[:, :1])


@pytest.mark.parametrize("cls", [HFDDPMPipeline, HFDDPMInpaintPipeline, HFDDPMImg2ImgPipeline])
def test_every_pipeline_samples_with_its_head(cls):
    """The head changes the samples of every pipeline (a fixed_small run of the same pipeline differs),
    with one UNet call per reverse step."""
    pipe = pipeline(cls=cls)
    image = torch.rand(1, 1, 8, 8)
    extra = {}
    if cls is HFDDPMInpaintPipeline:
        mask = torch.zeros(1, 1, 8, 8)
        mask[..., 4:] = 1
        extra = {"image": image, "mask_image": mask, "jump_n_sample": 1}
    elif cls is HFDDPMImg2ImgPipeline:
        extra = {"image": image, "strength": 1.0}
    calls = count_calls(pipe.unet)

    def draw():
        return pipe(
            num_inference_steps=5,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
            **extra,
        ).images

    with_head = draw()
    assert len(calls) == 5
    pipe.scheduler = HFDDPMScheduler.from_config(pipe.scheduler.config, variance_type="fixed_small")
    assert not torch.allclose(with_head, draw())


def test_a_head_variance_without_a_head_names_fit_covariance():
    with pytest.raises(
        ValueError, match=r"variance_type 'npr' needs a covariance head.*hf-ddpm fit-covariance"
    ):
        pipeline("npr", head=False)
    pipe = pipeline("fixed_small", head=False)
    pipe.scheduler = HFDDPMScheduler(num_train_timesteps=T, variance_type="sn")
    with pytest.raises(ValueError, match="hf-ddpm fit-covariance MODEL --kind sn"):
        pipe(num_inference_steps=2)


def test_a_head_of_another_unet_names_fit_covariance():
    unet = _tiny_unet(in_channels=1)
    other = CovarianceHead.for_unet(_tiny_unet(in_channels=3))
    with pytest.raises(ValueError, match="fitted for another UNet.*hf-ddpm fit-covariance"):
        HFDDPMPipeline(unet, HFDDPMScheduler(variance_type="sn"), covariance_head=other)


def test_the_saved_folder_carries_the_head_and_loads_back_the_same(tmp_path):
    pipe = pipeline("npr")
    pipe.save_pretrained(tmp_path / "m")
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["covariance_head"] == ["covariance_head", "CovarianceHead"]
    assert (tmp_path / "m" / "covariance_head" / "covariance_head.py").is_file()
    loaded = HFDDPMPipeline.from_pretrained(tmp_path / "m")
    assert loaded.scheduler.config.variance_type == "npr"
    for name, value in pipe.covariance_head.state_dict().items():
        assert torch.equal(value, loaded.covariance_head.state_dict()[name])
    loaded.set_progress_bar_config(disable=True)

    def draw(p):
        return p(
            batch_size=2,
            num_inference_steps=4,
            generator=torch.Generator().manual_seed(1),
            output_type="np",
        ).images

    assert (draw(pipe) == draw(loaded)).all()


def test_a_model_without_a_head_keeps_its_layout(tmp_path):
    pipeline("fixed_small", head=False).save_pretrained(tmp_path / "m")
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert "covariance_head" not in index and not (tmp_path / "m" / "covariance_head").exists()
    assert HFDDPMPipeline.from_pretrained(tmp_path / "m").covariance_head is None


def test_remote_code_loads_the_head_without_hf_ddpm(tmp_path, run_without_hf_ddpm):
    pipe = pipeline("sn")
    pipe.save_pretrained(tmp_path / "m")
    expected = pipe(
        batch_size=2,
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(2),
        output_type="np",
    ).images
    code = f"""
import numpy as np, torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({str(tmp_path / "m")!r}, trust_remote_code=True)
assert type(pipe.covariance_head).__module__.startswith("diffusers_modules"), type(pipe.covariance_head)
calls = []
pipe.unet.register_forward_pre_hook(lambda *_: calls.append(1))
pipe.covariance_head.register_forward_pre_hook(lambda *_: calls.append(2))
images = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(2), output_type="np").images
assert calls == [1, 2] * 4, calls
np.save({str(tmp_path / "remote.npy")!r}, images)
"""
    run_without_hf_ddpm(code)
    import numpy as np

    np.testing.assert_array_equal(np.load(tmp_path / "remote.npy"), expected)


def test_sample_with_a_head_variance_on_a_model_without_one_is_one_line_exit_2(tmp_path, capsys):
    pipeline("fixed_small", head=False).save_pretrained(tmp_path / "m")
    argv = [
        "sample",
        str(tmp_path / "m"),
        "--variance-type",
        "sn",
        "--output",
        str(tmp_path / "o.png"),
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "hf-ddpm fit-covariance" in err, err


@pytest.mark.parametrize("sampler", ["dpm-solver++", "dpm-solver++-sde"])
def test_a_diffusers_sampler_on_a_model_that_samples_with_its_head(tmp_path, sampler):
    """A model saved with variance_type "npr" (as `hf-ddpm fit-covariance` saves it) and `hf-ddpm sample
    --sampler dpm-solver++`: DPMSolverMultistepScheduler keeps the config's variance_type, the pipeline
    then ran the head and handed it 2C channels ("expected input[2, 2, 8, 8] to have 1 channels"). A
    diffusers scheduler reads eps alone: the images are those of the same UNet without a head."""
    from hf_ddpm.sampling.samplers import SAMPLERS

    with_head = pipeline("npr")
    plain = HFDDPMPipeline(unet=with_head.unet, scheduler=HFDDPMScheduler(num_train_timesteps=T))
    plain.set_progress_bar_config(disable=True)
    with_head.save_pretrained(tmp_path / "npr")
    argv = ["sample", str(tmp_path / "npr"), "--sampler", sampler, "--num-images", "2"]
    argv += ["--num-inference-steps", "4", "--output", str(tmp_path / "o.png")]
    assert cli.main(argv) == 0
    images = {}
    for name, pipe in (("npr", with_head), ("plain", plain)):
        config = dict(pipe.scheduler.config)
        pipe.scheduler = SAMPLERS[sampler].build(config, None, config["timestep_spacing"])
        assert pipe._sampling_head() is None
        calls = count_calls(pipe.unet)
        images[name] = pipe(
            batch_size=2,
            num_inference_steps=4,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        ).images
        assert len(calls) == 4
    assert with_head.scheduler.config.variance_type == "npr"
    torch.testing.assert_close(images["npr"], images["plain"], rtol=0, atol=0)


def test_a_head_is_read_only_as_the_kind_it_was_fitted_as(tmp_path, capsys):
    """An NPR head predicts E[(eps - eps_theta)^2], an SN head E[eps^2]: `hf-ddpm sample OUT --variance-type
    sn` on an NPR head used to run it as SN without a word. The head records its kind; another head
    variance type is refused by the pipeline (built with it, or swapped in later) and by the command line
    (one line, exit 2), and the right kind still samples."""
    unet = _tiny_unet(in_channels=1)
    head = CovarianceHead.for_unet(unet, kind="npr")
    sn = HFDDPMScheduler(num_train_timesteps=T, variance_type="sn")
    refusal = r"variance_type 'sn' .*fitted as 'npr'.*hf-ddpm fit-covariance MODEL --kind sn"
    with pytest.raises(ValueError, match=refusal):
        HFDDPMPipeline(unet, sn, covariance_head=head)
    npr = HFDDPMScheduler.from_config(sn.config, variance_type="npr")
    pipe = HFDDPMPipeline(unet, npr, covariance_head=head)
    pipe.set_progress_bar_config(disable=True)
    assert pipe(num_inference_steps=2, output_type="np").images.shape == (1, 8, 8, 1)
    pipe.scheduler = sn
    with pytest.raises(ValueError, match=refusal):
        pipe(num_inference_steps=2)

    pipe.scheduler = npr
    pipe.save_pretrained(tmp_path / "npr")
    assert (
        json.loads((tmp_path / "npr" / "covariance_head" / "config.json").read_text())["kind"]
        == "npr"
    )
    argv = ["sample", str(tmp_path / "npr"), "--num-images", "1", "--num-inference-steps", "2"]
    argv += ["--output", str(tmp_path / "o.png")]
    assert cli.main([*argv, "--variance-type", "sn"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(
        "hf-ddpm sample: error: --variance-type sn"
    ), err
    assert "fitted as 'npr'" in err and "hf-ddpm fit-covariance MODEL --kind sn" in err, err
    assert cli.main([*argv, "--variance-type", "npr"]) == 0
    assert (tmp_path / "o.png").is_file()


def test_a_head_saved_without_its_kind_takes_the_scheduler_s_or_stays_unknown(tmp_path):
    """A head saved before kinds were recorded: the head variance type its folder's scheduler samples
    with (what fit-covariance saved) is its kind; beside another variance type its kind is unknown and
    every head type is accepted."""
    for variance_type in ("npr", "fixed_small"):
        pipeline(variance_type).save_pretrained(tmp_path / variance_type)
        config = tmp_path / variance_type / "covariance_head" / "config.json"
        values = json.loads(config.read_text())
        del values["kind"]
        config.write_text(json.dumps(values))
    adopted = HFDDPMPipeline.from_pretrained(tmp_path / "npr")
    assert adopted.covariance_head.config.kind == "npr"
    with pytest.raises(ValueError, match="fitted as 'npr'"):
        adopted.scheduler = HFDDPMScheduler.from_config(
            adopted.scheduler.config, variance_type="sn"
        )
        adopted(num_inference_steps=2)
    unknown = HFDDPMPipeline.from_pretrained(tmp_path / "fixed_small")
    assert unknown.covariance_head.config.kind is None
    unknown.set_progress_bar_config(disable=True)
    for variance_type in ("sn", "npr"):
        unknown.scheduler = HFDDPMScheduler.from_config(
            unknown.scheduler.config, variance_type=variance_type
        )
        unknown(num_inference_steps=2)


def test_the_bundled_head_is_recorded_as_npr():
    from hf_ddpm.hub.bundled import BUNDLED_MODEL_DIR

    config = json.loads((BUNDLED_MODEL_DIR / "covariance_head" / "config.json").read_text())
    assert config["kind"] == "npr"
