"""``hf-ddpm sample``: the README's main command, on tiny pipelines saved by the test."""

import pytest
from PIL import Image

from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler, cli
from hf_ddpm.sampling import sample


def _save(tmp_path, tiny_unet, **unet_kwargs):
    pipe = HFDDPMPipeline(
        unet=tiny_unet(**unet_kwargs), scheduler=HFDDPMScheduler(num_train_timesteps=10)
    )
    pipe.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_sample_writes_a_grid_of_the_requested_size(tmp_path, tiny_unet):
    model = _save(tmp_path, tiny_unet)
    out = tmp_path / "grid.png"
    argv = ["sample", "--model", str(model), "--output", str(out), "--num-images", "5"]
    assert cli.main([*argv, "--num-inference-steps", "3"]) == 0
    grid = Image.open(out)
    assert grid.size == (3 * 8, 2 * 8)  # 5 images in a 3 x 2 grid of 8 x 8 tiles


@pytest.fixture
def pipeline_call(monkeypatch):
    """The keyword arguments of the last HFDDPMPipeline call."""
    seen = {}
    original = HFDDPMPipeline.__call__

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(HFDDPMPipeline, "__call__", spy)
    return seen


def test_class_conditional_model_draws_every_class_by_default(tmp_path, tiny_unet, pipeline_call):
    model = _save(tmp_path, tiny_unet, num_class_embeds=4)  # 3 classes + the null label
    seen = pipeline_call
    out = tmp_path / "grid.png"
    argv = ["sample", "--model", str(model), "--output", str(out), "--num-images", "4"]
    assert cli.main([*argv, "--num-inference-steps", "2"]) == 0
    assert list(seen["class_labels"]) == [0, 1, 2, 0]


def test_class_label_on_an_unconditional_model_is_an_error(tmp_path, tiny_unet):
    pipe = HFDDPMPipeline.from_pretrained(_save(tmp_path, tiny_unet))
    with pytest.raises(ValueError, match="class-conditional"):
        sample.sample_grid(pipe, num_images=2, num_inference_steps=2, class_label=1)


def test_without_a_model_it_samples_an_untrained_unet_and_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(sample, "bundled_model_path", lambda: None)
    pipe = sample.load_for_sampling(None)
    assert "freshly initialised" in caplog.text
    assert isinstance(pipe.scheduler, HFDDPMScheduler)
    grid = sample.sample_grid(pipe, num_images=1, num_inference_steps=1)
    assert grid.size == (32, 32)


def test_output_must_be_png(tmp_path, tiny_unet, capsys):
    argv = [
        "sample",
        "--model",
        str(_save(tmp_path, tiny_unet)),
        "--output",
        str(tmp_path / "a.jpg"),
    ]
    assert cli.main(argv) == 2
    assert "--output must be a .png file" in capsys.readouterr().err
    assert not (tmp_path / "a.jpg").exists()


def test_steps_default_to_the_models_T(tmp_path, tiny_unet, pipeline_call):
    """A model with T = 10 samples in 10 steps by default (1000 used to be fixed, and failed)."""
    model = _save(tmp_path, tiny_unet)
    seen = pipeline_call
    out = tmp_path / "grid.png"
    assert (
        cli.main(["sample", "--model", str(model), "--output", str(out), "--num-images", "1"]) == 0
    )
    assert seen["num_inference_steps"] == 10
    assert Image.open(out).size == (8, 8)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []
