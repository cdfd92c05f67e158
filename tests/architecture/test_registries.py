"""Each list of choices is one registry, read by every consumer: a dummy entry added to a registry appears in
the command line's choices and help, the Space's dropdowns and the few-step benchmark's contenders,
without any other edit. The Space is built in-process (as tests/space/test_space_app.py does) and read
back from Gradio's own page config.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import _tiny_unet
from diffusers import DDPMScheduler

from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler, cli
from hf_ddpm.core import losses, variance
from hf_ddpm.data import bundled_datasets
from hf_ddpm.sampling import samplers
from hf_ddpm.training.train_config import TrainConfig
from spaces_app import app

ROOT = Path(__file__).resolve().parents[2]
DUMMY = "dummy-entry"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("registry_model")
    scheduler = HFDDPMScheduler(num_train_timesteps=20)
    HFDDPMPipeline(unet=_tiny_unet(in_channels=1), scheduler=scheduler).save_pretrained(folder)
    return folder


def _help(command, capsys) -> str:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping


def _choices(command: str, dest: str) -> list:
    parser = cli._parser([command])
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return list(next(a for a in sub._actions if a.dest == dest).choices)


def _page(model_dir) -> dict[str, dict]:
    """The Space's components by elem_id, as Gradio serves them to the browser."""
    config = app.build_demo(app.load_model(str(model_dir))).get_config_file()
    return {
        c["props"]["elem_id"]: c["props"]
        for c in config["components"]
        if c.get("props", {}).get("elem_id")
    }


def _dropdown_values(props: dict) -> list[str]:
    return [value for _, value in props["choices"]]


def _contenders() -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import few_step
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return few_step.contenders()


def _geometric_mean(chain):
    """A variance formula of this test: sigma_t^2 = sqrt(beta-tilde_t beta_t)."""
    (_, log_small), (_, log_large) = variance.beta_tilde(chain), variance.beta(chain)
    log_variance = 0.5 * (log_small + log_large)
    return log_variance.exp(), log_variance


def _add_variance_type(monkeypatch) -> None:
    """What a new entry of core/variance.py's VARIANCE_TYPES is once the package is imported: an object
    the scheduler runs, a name in VARIANCE_TYPE_NAMES, and so a choice of the ddpm sampler."""
    monkeypatch.setitem(
        variance.VARIANCE_TYPES, DUMMY, variance.FixedVariance(DUMMY, _geometric_mean)
    )
    monkeypatch.setattr(variance, "VARIANCE_TYPE_NAMES", (*variance.VARIANCE_TYPE_NAMES, DUMMY))
    ddpm = samplers.SAMPLERS["ddpm"]
    monkeypatch.setitem(
        samplers.SAMPLERS,
        "ddpm",
        dataclasses.replace(ddpm, variance_types=(*ddpm.variance_types, DUMMY)),
    )


def test_a_new_sampler_is_offered_everywhere(monkeypatch, model_dir, capsys):
    entry = samplers.Sampler("a sampler of this test", samplers.SAMPLERS["diffusers-ddim"].build)
    monkeypatch.setitem(samplers.SAMPLERS, DUMMY, entry)
    assert DUMMY in _choices("sample", "sampler")
    assert f"{DUMMY}: a sampler of this test" in _help("sample", capsys)
    page = _page(model_dir)
    assert DUMMY in _dropdown_values(page["sampler"])
    assert "a sampler of this test" in page["sampler"]["info"]
    assert DUMMY in _contenders()
    # ... and it runs: the Space builds it with the entry's own builder.
    from spaces_app.ddpm_space.generate import make_scheduler

    loaded = app.load_model(str(model_dir)).model
    assert type(make_scheduler(loaded, DUMMY, "fixed_small", "trailing")).__name__ == (
        "DDIMScheduler"
    )


def test_a_new_variance_type_is_offered_everywhere(monkeypatch, model_dir, capsys):
    _add_variance_type(monkeypatch)
    assert DUMMY in _choices("sample", "variance_type")
    assert DUMMY in _dropdown_values(_page(model_dir)["variance_type"])
    assert DUMMY in _contenders()
    # Training takes it too (a fixed variance needs no new loss), and lists it in its help.
    assert DUMMY in _help("train", capsys)
    TrainConfig(variance_type=DUMMY).validate()
    # The scheduler samples with it: x_{t-1} = mean + sigma z with the same mean and z for every fixed
    # variance, so sigma of the new type follows from the steps of the two fixed ones, whose sigma^2 are
    # beta_t and beta-tilde_t of diffusers' own tables.
    x_t, output = torch.randn(2, 1, 1, 8, 8, generator=torch.Generator().manual_seed(1)).double()
    steps = {}
    for name in (DUMMY, "fixed_large", "fixed_small"):
        scheduler = HFDDPMScheduler(num_train_timesteps=20, variance_type=name)
        scheduler.set_timesteps(20)
        generator = torch.Generator().manual_seed(2)
        steps[name] = scheduler.step(output, 12, x_t, generator=generator).prev_sample
    reference = DDPMScheduler(num_train_timesteps=20)
    beta, abar = reference.betas.double(), reference.alphas_cumprod.double()
    sigma_large = beta[12].sqrt()
    sigma_small = (beta[12] * (1 - abar[11]) / (1 - abar[12])).sqrt()
    z = (steps["fixed_large"] - steps["fixed_small"]) / (sigma_large - sigma_small)
    torch.testing.assert_close(
        steps[DUMMY] - steps["fixed_small"], ((sigma_small * sigma_large).sqrt() - sigma_small) * z
    )


def test_a_new_loss_is_offered_to_training(monkeypatch, capsys):
    monkeypatch.setitem(losses.LOSS_FUNCTIONS, DUMMY, losses.simple_loss)
    assert DUMMY in _help("train", capsys)
    TrainConfig(loss=DUMMY).validate()
    with pytest.raises(ValueError, match=rf"--loss 'nope' is not one of .*{DUMMY}"):
        TrainConfig(loss="nope").validate()


def test_a_new_bundled_dataset_is_known_to_training_evaluation_and_the_space(
    monkeypatch, model_dir, capsys
):
    from hf_ddpm.data.image_datasets import load_image_dataset
    from hf_ddpm.data.image_transform import dataset_num_bins
    from hf_ddpm.hub.space import digit_examples_fit
    from spaces_app.ddpm_space.loading import data_num_bins

    images = np.arange(20 * 4 * 4, dtype=np.uint8).reshape(20, 4, 4)
    labels = np.arange(20, dtype=np.int64) % 10
    entry = bundled_datasets.BundledDataset(5, lambda: (images, labels))
    monkeypatch.setitem(bundled_datasets.BUNDLED_DATASETS, DUMMY, entry)
    assert DUMMY in _help("train", capsys)
    assert dataset_num_bins(DUMMY) == 5
    data = load_image_dataset(DUMMY, split="test", class_column="label")
    assert (data.num_bins, data.num_classes, data.channels) == (5, 10, 1)
    # The held-out split keeps ceil(10%) of each class: one of the two images of each class here.
    assert sorted(data.dataset["label"]) == list(range(10))
    (model_dir / "train_config.json").write_text(json.dumps({"dataset": DUMMY}))
    try:
        assert data_num_bins(str(model_dir))[0] == 5
        # A bundled set is digits: the Space shows its example digits, and `hf-ddpm space` uploads them.
        assert app.examples_for(app.load_model(str(model_dir)).model)
        assert digit_examples_fit(str(model_dir)) == (
            True,
            f"the model was trained on the bundled {DUMMY}",
        )
        monkeypatch.delitem(bundled_datasets.BUNDLED_DATASETS, DUMMY)
        assert app.examples_for(app.load_model(str(model_dir)).model) == []
        assert not digit_examples_fit(str(model_dir))[0]
    finally:
        (model_dir / "train_config.json").unlink()


def test_the_default_steps_are_one_constant(monkeypatch, model_dir, capsys):
    monkeypatch.setattr(samplers, "DEFAULT_SAMPLING_STEPS", 7)
    assert "(default: 7, or T if the model has fewer)" in _help("sample", capsys)
    # evaluate's own grid, drawn when no Fréchet samples are (--metrics nll).
    assert "else 7, or T if the model has fewer" in _help("evaluate", capsys)
    assert _page(model_dir)["generate_steps"]["value"] == 7


def _change_the_class_layout(monkeypatch) -> None:
    """What an edit of core/class_layout.py would make the layout: the classes 0..n-1, an unused
    embedding n, then the null label n + 1. Every module bound to the rule's functions gets the new
    ones, as a re-import after the edit would give it; a module restating the rule keeps the old one."""
    from hf_ddpm.core import class_layout

    def null_label_of(num_class_embeds, recorded=None):
        if not num_class_embeds:
            return None
        return num_class_embeds - 1 if recorded is None else int(recorded)

    changed = {
        "num_class_embeds_for": lambda num_classes: num_classes + 2,
        "null_label_of": null_label_of,
        "num_classes_of": lambda num_class_embeds: (
            num_class_embeds - 2 if num_class_embeds else None
        ),
    }
    for name, rule in changed.items():
        original = getattr(class_layout, name)
        for module in list(sys.modules.values()):
            if module is not None and vars(module).get(name) is original:
                monkeypatch.setattr(module, name, rule)


@pytest.mark.parametrize("layout", ["hf-ddpm train's", "changed"])
def test_the_null_label_layout_is_read_by_every_consumer(layout, monkeypatch, tmp_path):
    """3 classes, labels 0..2, and the null label in the last embedding: with hf-ddpm train's layout the
    4th (label 3); with a changed one, whatever core/class_layout.py says (here the 5th, label 4). The
    pipeline, hf-ddpm sample, the bound, the Space and the model card all read it from class_layout."""
    from hf_ddpm.core import class_layout
    from hf_ddpm.evaluation.bound import unconditional_label
    from hf_ddpm.sampling.sample import num_classes

    if layout == "changed":
        _change_the_class_layout(monkeypatch)
    embeds, null = {"hf-ddpm train's": (4, 3), "changed": (5, 4)}[layout]
    unet = _tiny_unet(in_channels=1, num_class_embeds=class_layout.num_class_embeds_for(3))
    pipe = HFDDPMPipeline(
        unet=unet,
        scheduler=HFDDPMScheduler(num_train_timesteps=20),
        null_class_label=class_layout.null_label_of(embeds),
    )
    assert unet.config.num_class_embeds == embeds and pipe.config.null_class_label == null
    assert num_classes(pipe) == 3
    assert unconditional_label(unet) == null
    pipe.save_pretrained(tmp_path / "model")
    assert app.load_model(str(tmp_path / "model")).model.num_classes == 3
    # The card's example asks for the three classes, with guidance against the null label.
    card = (tmp_path / "model" / "README.md").read_text(encoding="utf-8")
    assert "class_labels=[0, 1, 2, 0], guidance_scale=2.0" in card
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 2\]"):
        pipe(class_labels=[3], guidance_scale=2.0, num_inference_steps=2, output_type="np")
