"""Every model card's example runs (issue 22): the card's Python snippets, executed as written against tiny
saved models, unconditional, 2-class (with the names hf-ddpm train records) and 10-class, installed and
through remote code without hf_ddpm. And a checkpoint folder given as a model is named as one."""

import re

import pytest
from conftest import _tiny_unet

from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler, cli

T = 5
SNIPPET = re.compile(r"```python\n(.*?)```", re.S)


def _save(folder, embeds=None, null=None, names=None):
    unet = _tiny_unet(in_channels=1, num_class_embeds=embeds)
    pipe = HFDDPMPipeline(
        unet=unet,
        scheduler=HFDDPMScheduler(num_train_timesteps=T),
        null_class_label=null,
        class_names=names,
    )
    pipe.save_pretrained(folder)
    return folder


MODELS = {
    "unconditional": {},
    "2 classes, named": {"embeds": 3, "null": 2, "names": ["cats", "dogs"]},
    "10 classes": {"embeds": 11, "null": 10},
    "10 classes, no label dropout": {"embeds": 11},
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_every_card_example_runs(kind, tmp_path, monkeypatch):
    folder = _save(tmp_path / "model", **MODELS[kind])
    card = (folder / "README.md").read_text()
    snippets = SNIPPET.findall(card)
    assert len(snippets) == 2
    installed = snippets[1]
    assert "from hf_ddpm import HFDDPMPipeline" in installed
    namespace = {}
    exec(compile(installed, f"card of {kind}", "exec"), namespace)
    assert len(namespace["images"]) == 4
    if kind == "2 classes, named":
        assert 'class_labels=["cats", "dogs", "cats", "dogs"], guidance_scale=2.0' in installed
        assert "- classes: cats, dogs" in card
    if kind == "10 classes":
        assert "class_labels=[0, 1, 2, 3], guidance_scale=2.0" in installed
    if kind == "10 classes, no label dropout":
        assert "class_labels=[0, 1, 2, 3]," in installed and "guidance_scale" not in installed


@pytest.mark.parametrize("kind", ["unconditional", "2 classes, named", "10 classes"])
def test_the_remote_code_card_example_runs_without_hf_ddpm(kind, tmp_path, run_without_hf_ddpm):
    folder = _save(tmp_path / "model", **MODELS[kind])
    remote = SNIPPET.findall((folder / "README.md").read_text())[0]
    assert "trust_remote_code=True" in remote
    run_without_hf_ddpm(remote + "\nassert len(images) == 4\n")


def test_a_checkpoint_folder_given_as_the_model_points_to_its_run(tmp_path, capsys):
    run = _save(tmp_path / "run")
    (run / "checkpoint-300").mkdir()
    assert (
        cli.main(["sample", str(run / "checkpoint-300"), "--output", str(tmp_path / "s.png")]) == 2
    )
    err = capsys.readouterr().err
    assert "is a training checkpoint (checkpoint-300), not a pipeline" in err
    assert f"pass the run's folder {run}" in err and "save_pretrained" not in err
    unfinished = tmp_path / "unfinished" / "checkpoint-10"
    unfinished.mkdir(parents=True)
    assert cli.main(["sample", str(unfinished), "--output", str(tmp_path / "s.png")]) == 2
    assert "--resume-from-checkpoint" in capsys.readouterr().err


def test_refreshed_facts_replace_the_old_ones_or_come_before_usage(tmp_path):
    """A rewritten model's carried card states its new configs: the old fact bullets give way to the new
    ones (the rest of the card kept), a card without them gets them before its Usage, and a card whose
    folder holds no sample grid loses its Samples section."""
    from hf_ddpm.core.model_card import refresh_card_facts

    folder = _save(tmp_path / "model")
    card = (folder / "README.md").read_text()
    old = card.replace("variance_type='fixed_small'", "variance_type='learned'")
    old = (
        old.replace("## Usage", "My notes.\n\n## Usage")
        + "\n## Samples\n\n![samples](samples.png)\n"
    )
    refreshed = refresh_card_facts(old, folder)
    assert "variance_type='fixed_small'" in refreshed and "'learned'" not in refreshed
    assert "My notes." in refreshed and "## Samples" not in refreshed
    assert refresh_card_facts(card, folder) == card
    bare = "# mine\n\nHand-written.\n\n## Usage\n\nLoad it.\n"
    assert refresh_card_facts(bare, folder) == bare.replace(
        "## Usage",
        "- scheduler: HFDDPMScheduler (num_train_timesteps=5, beta_schedule='linear', "
        "variance_type='fixed_small', prediction_type='epsilon')\n- unet: UNet2DModel, 1 channels, "
        "8x8 pixels\n\n## Usage",
    )
