"""``hf-ddpm fit-covariance``: the fitted head approaches the exact per-pixel second moment on Gaussian data,
a resumed fit is the uninterrupted one, its checkpoints stay apart from a training run's, its push uploads
what any model folder uploads, and bad input is refused with a message naming the command.

The oracle (tests/gaussian_oracle.py, ``FeatureOracleUNet``): x_0 ~ N(0, s^2) per pixel, with s = 1 on the
left half and s = 0.05 on the right, whose exact eps-predictor and both exact heads are closed forms
(DESIGN.md, "Per-pixel optimal covariance"), and whose "last feature map" carries the exact target of the
kind being fitted in a form a head can represent exactly.
"""

import json

import pytest
import torch
from conftest import tiny_train_config
from gaussian_oracle import FeatureOracleUNet

from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler
from hf_ddpm.training.fit_covariance import FitOptions, check_fittable, fit_covariance_head

SIZE, STEPS = 8, 100


def gaussian_pipeline(kind: str) -> HFDDPMPipeline:
    return HFDDPMPipeline(
        unet=FeatureOracleUNet(kind, num_train_timesteps=STEPS, sample_size=SIZE),
        scheduler=HFDDPMScheduler(num_train_timesteps=STEPS),
    )


def gaussian_images(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    _, s = FeatureOracleUNet(sample_size=SIZE).pixel_moments()
    return (s * torch.randn(count, 1, SIZE, SIZE, generator=generator, dtype=torch.float64)).float()


@pytest.mark.parametrize("kind", ["sn", "npr"])
def test_the_fitted_head_approaches_the_exact_second_moment(kind):
    pipeline = gaussian_pipeline(kind)
    options = FitOptions(kind=kind, max_steps=600, batch_size=64, learning_rate=2e-2, log_every=100)
    result = fit_covariance_head(pipeline, gaussian_images(4096, seed=0), options, progress=False)
    assert result.step == 600 and len(result.losses) == 6

    # Fresh x_t at three timesteps; the exact heads from the closed forms.
    ab_table = pipeline.scheduler.alphas_cumprod.double()
    x0 = gaussian_images(512, seed=1).double()
    t = torch.tensor([10, 50, 90]).repeat_interleave(512 // 3 + 1)[:512]
    ab = ab_table[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * torch.randn(
        x0.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    eps_hat, variance = pipeline.unet.exact_moments(x_t, t)
    exact = {"sn": eps_hat**2 + variance, "npr": variance}
    from hf_ddpm.core.covariance_head import unet_features

    with torch.no_grad(), unet_features(pipeline.unet) as features:
        pipeline.unet(x_t.float(), t)
        learned = result.head(features[-1]).double()
    error = (learned - exact[kind]).square().mean()
    # The best a head blind to the pixel can do: one value per timestep (Analytic-DPM's kind of variance).
    per_timestep = torch.stack([exact[kind][t == k].mean() for k in t.tolist()]).view(-1, 1, 1, 1)
    scalar_error = (per_timestep - exact[kind]).square().mean()
    assert error < 0.05 * scalar_error, (float(error), float(scalar_error))
    # It learned its own kind's moment, not the other's.
    other = "npr" if kind == "sn" else "sn"
    assert (learned - exact[other]).square().mean() > 10 * error


def test_a_resumed_fit_ends_with_the_uninterrupted_ones_head(tmp_path):
    images = gaussian_images(256, seed=0)
    options = FitOptions(kind="npr", max_steps=12, batch_size=32, log_every=4, checkpoint_every=5)
    whole = fit_covariance_head(gaussian_pipeline("npr"), images, options, progress=False)
    interrupted = FitOptions(**{**options.__dict__, "max_steps": 7})
    fit_covariance_head(gaussian_pipeline("npr"), images, interrupted, tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-5", "checkpoint-7"]
    (tmp_path / "checkpoint-7").rename(tmp_path / "ignored")  # resume from step 5, mid-epoch
    resumed = fit_covariance_head(
        gaussian_pipeline("npr"), images, options, tmp_path, resume_from="latest", progress=False
    )
    assert resumed.step == 12
    for name, value in whole.head.state_dict().items():
        assert torch.equal(value, resumed.head.state_dict()[name]), name
    assert resumed.losses == whole.losses


def test_a_resume_with_other_options_is_refused(tmp_path):
    images = gaussian_images(64, seed=0)
    options = FitOptions(kind="npr", max_steps=2, batch_size=16, checkpoint_every=1)
    fit_covariance_head(gaussian_pipeline("npr"), images, options, tmp_path, progress=False)
    changed = FitOptions(kind="npr", max_steps=4, batch_size=8, checkpoint_every=1)
    with pytest.raises(ValueError, match="--batch-size 16 .now 8."):
        fit_covariance_head(gaussian_pipeline("npr"), images, changed, tmp_path, "latest", False)


def test_a_model_with_a_learned_variance_is_refused(tiny_unet):
    pipeline = HFDDPMPipeline(
        unet=tiny_unet(in_channels=1, out_channels=2),
        scheduler=HFDDPMScheduler(num_train_timesteps=STEPS, variance_type="learned_range"),
    )
    with pytest.raises(
        ValueError, match="hf-ddpm fit-covariance .*learned its variance.*learned_range"
    ):
        check_fittable(pipeline)


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("kind", "full", "--kind"),
        ("max_steps", 0, "--max-steps"),
        ("learning_rate", 0.0, "--learning-rate"),
    ],
)
def test_bad_options_name_their_flag(field, value, flag):
    with pytest.raises(ValueError, match=f"hf-ddpm fit-covariance: {flag}"):
        FitOptions(**{"kind": "sn", field: value})


# ------------------------------------------------------------------------------------ the commands


@pytest.fixture
def tiny_model(tmp_path):
    """A saved tiny unconditional pipeline (8x8 grey, T = 20) and a folder of 8x8 training images."""
    from conftest import _tiny_unet
    from PIL import Image

    HFDDPMPipeline(
        _tiny_unet(in_channels=1), HFDDPMScheduler(num_train_timesteps=20)
    ).save_pretrained(tmp_path / "model")
    images = tmp_path / "images" / "train"
    images.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for i in range(12):
        pixels = (torch.rand(8, 8, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels, mode="L").save(images / f"{i}.png")
    return tmp_path


def test_fit_covariance_writes_a_model_that_samples_with_its_head(tiny_model, capsys):
    from hf_ddpm import cli

    out = tiny_model / "fitted"
    argv = [
        "fit-covariance",
        str(tiny_model / "model"),
        "--train-data-dir",
        str(tiny_model / "images"),
    ]
    argv += ["--kind", "npr", "--max-steps", "4", "--batch-size", "4", "--log-every", "2"]
    assert cli.main([*argv, "--output", str(out)]) == 0
    assert "npr covariance head fitted for 4 steps on 12 images" in capsys.readouterr().out
    pipe = HFDDPMPipeline.from_pretrained(out)
    assert pipe.scheduler.config.variance_type == "npr" and pipe.covariance_head is not None
    log_file = out / "covariance-head" / "fit_covariance_log.jsonl"
    log = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [entry["step"] for entry in log] == [2, 4]
    # The source folder is untouched; the head fitted is the one in the checkpoint.
    assert HFDDPMPipeline.from_pretrained(tiny_model / "model").covariance_head is None
    from hf_ddpm.training.checkpointing import load_checkpoint

    tensors, _ = load_checkpoint(out / "covariance-head" / "checkpoint-4")
    for name, value in pipe.covariance_head.state_dict().items():
        assert torch.equal(value, tensors["head"][name])


def test_the_fitted_model_s_card_names_output_and_its_head(tiny_model, monkeypatch, capsys):
    """The card of `fit-covariance MODEL --output OUT` named the hidden folder it was written through
    (`# .OUT.fit-l_6kec_z`, `from_pretrained("out/.OUT.fit-...")`), said nothing of the head and kept the
    source's variance_type and samples.png. Now its example runs as written from OUT's parent folder, its
    facts name the head and the new variance type, and the stale grid is gone (in place too)."""
    import re

    from PIL import Image

    from hf_ddpm import cli
    from hf_ddpm.core.saving import write_model_card

    source = tiny_model / "model"
    Image.new("L", (8, 8)).save(source / "samples.png")
    write_model_card(source, description="Trained by hand.")
    assert "## Samples" in (source / "README.md").read_text()
    monkeypatch.chdir(tiny_model)
    argv = ["fit-covariance", "model", "--train-data-dir", "images", "--kind", "npr"]
    argv += ["--max-steps", "2", "--batch-size", "4"]
    assert cli.main([*argv, "--output", "fitted"]) == 0, capsys.readouterr().err
    card = (tiny_model / "fitted" / "README.md").read_text()
    assert "\n# fitted\n" in card and ".fit-" not in card, card
    assert "Trained by hand." in card
    assert "- covariance head: npr (per-pixel optimal variance, Bao et al. 2022)" in card
    assert "variance_type='npr'" in card and "fixed_small" not in card
    assert not (tiny_model / "fitted" / "samples.png").exists() and "## Samples" not in card
    installed = re.findall(r"```python\n(.*?)```", card, re.S)[1]
    assert 'HFDDPMPipeline.from_pretrained("fitted")' in installed
    namespace = {}
    exec(compile(installed, "the card's example", "exec"), namespace)
    assert len(namespace["images"]) == 4

    assert cli.main(argv) == 0, capsys.readouterr().err  # in place: --output is the model
    card = (source / "README.md").read_text()
    assert "\n# model\n" in card and 'from_pretrained("model")' in card and ".fit-" not in card
    assert card.count("- covariance head: npr") == 1 and not (source / "samples.png").exists()


def test_fit_covariance_on_a_learned_variance_model_is_one_line_exit_2(tiny_model, capsys):
    from conftest import _tiny_unet

    from hf_ddpm import cli

    scheduler = HFDDPMScheduler(num_train_timesteps=20, variance_type="learned_range")
    HFDDPMPipeline(_tiny_unet(in_channels=1, out_channels=2), scheduler).save_pretrained(
        tiny_model / "learned"
    )
    argv = ["fit-covariance", str(tiny_model / "learned"), "--kind", "sn"]
    assert cli.main([*argv, "--train-data-dir", str(tiny_model / "images")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "hf-ddpm fit-covariance" in err and "learned" in err, err


def test_train_with_covariance_head_fits_it_at_the_end(tmp_path):
    from hf_ddpm.training.train import train

    config = tiny_train_config(
        tmp_path, grid=False, calibrate=False, covariance_head="sn", covariance_head_steps=3
    )
    train(config)
    pipe = HFDDPMPipeline.from_pretrained(tmp_path / "out")
    assert pipe.scheduler.config.variance_type == "sn"
    assert pipe.covariance_head.conv.weight.abs().sum() > 0  # fitted: no longer the zero start
    assert (tmp_path / "out" / "covariance-head" / "checkpoint-3").is_dir()
    assert "- covariance head: sn (per-pixel" in (tmp_path / "out" / "README.md").read_text()


def test_train_refuses_a_head_beside_a_learned_variance(tmp_path):
    from hf_ddpm.training.train import TrainConfig

    config = TrainConfig(
        variance_type="learned_range", covariance_head="npr", output_dir=str(tmp_path)
    )
    with pytest.raises(ValueError, match="--covariance-head npr .hf-ddpm fit-covariance"):
        config.validate()


def _file_hashes(folder) -> dict[str, str]:
    import hashlib

    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _trained_folder(tmp_path, logger: str = "none"):
    """A tiny training run's output folder (T = 20, 8x8 digits) with checkpoint-1..3."""
    from hf_ddpm.training.train import TrainConfig, train

    config = TrainConfig(
        dataset="sklearn-digits",
        model_preset="tiny",
        resolution=8,
        batch_size=8,
        max_steps=3,
        num_train_timesteps=20,
        output_dir=str(tmp_path / "out"),
        checkpoint_every=1,
        sample_every=0,
        grid=False,
        calibrate=False,
        dataloader_num_workers=0,
        logger=logger,
    )
    train(config)
    return tmp_path / "out"


def test_fit_covariance_in_a_training_folder_keeps_its_checkpoints_apart(tmp_path, capsys):
    """Bug A: with the default --output (the model folder itself), the fit's checkpoint-N folders went
    beside the training run's: its pruning deleted them and its step N overwrote theirs. The fit keeps its
    own in covariance-head/, the training ones stay byte-identical, and 'latest' resumes the fit's own."""
    from hf_ddpm import cli
    from hf_ddpm.core.pushing import HEAD_CHECKPOINTS
    from hf_ddpm.training.checkpointing import load_checkpoint

    out = _trained_folder(tmp_path)
    training_checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    assert training_checkpoints == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    before = {name: _file_hashes(out / name) for name in training_checkpoints}

    def fit(folder, max_steps, *extra):
        argv = ["fit-covariance", str(folder), "--dataset", "sklearn-digits", "--kind", "npr"]
        argv += ["--max-steps", str(max_steps), "--batch-size", "8", "--checkpoint-every", "1"]
        assert cli.main([*argv, "--max-train-images", "64", *extra]) == 0, capsys.readouterr()

    fit(out, 4)
    assert {name: _file_hashes(out / name) for name in training_checkpoints} == before
    assert sorted(p.name for p in out.glob("checkpoint-*")) == training_checkpoints
    own = out / HEAD_CHECKPOINTS
    assert sorted(p.name for p in own.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]

    # Resumed from its own checkpoint-4 to step 6: the head of an uninterrupted 6-step fit.
    fit(out, 6, "--resume-from-checkpoint", "latest")
    assert {name: _file_hashes(out / name) for name in training_checkpoints} == before
    log = [json.loads(line) for line in (own / "fit_covariance_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [4, 6]
    whole = tmp_path / "whole"
    fit(out, 6, "--output", str(whole))
    resumed_head, _ = load_checkpoint(own / "checkpoint-6")
    whole_head, _ = load_checkpoint(whole / HEAD_CHECKPOINTS / "checkpoint-6")
    for name, value in whole_head["head"].items():
        assert torch.equal(value, resumed_head["head"][name]), name
    fitted = HFDDPMPipeline.from_pretrained(out).covariance_head.state_dict()
    for name, value in fitted.items():
        assert torch.equal(value, resumed_head["head"][name]), name


def test_fit_covariance_pushes_what_a_model_folder_uploads(
    tmp_path, hub_server, run_without_hf_ddpm, capsys
):
    """Bug C: the push replaced core.pushing's one definition of an upload by its own patterns, so from a
    training folder it uploaded logs/, the fit's checkpoints (optimizer state) and hidden entries. The
    repo holds uploaded_files(folder), the head with its code among them, and samples without hf_ddpm
    as the installed package does from the folder."""
    import textwrap

    import numpy as np

    from hf_ddpm import cli
    from hf_ddpm.core.pushing import uploaded_files

    out = _trained_folder(tmp_path, logger="tensorboard")
    (out / ".tmp-checkpoint-4-999").mkdir()  # what a killed run leaves behind
    (out / ".tmp-checkpoint-4-999" / "model.safetensors").write_bytes(b"half")
    argv = ["fit-covariance", str(out), "--dataset", "sklearn-digits", "--kind", "npr"]
    argv += ["--max-steps", "3", "--batch-size", "8", "--max-train-images", "64"]
    argv += ["--push-to-hub", "--hub-model-id", "tester/with-head"]
    assert cli.main(argv) == 0, capsys.readouterr().err

    pushed = sorted(set(hub_server.files("tester/with-head")) - {".gitattributes"})
    assert pushed == uploaded_files(out)
    # Independent of the definition: the head's weights, config and code go; no state, logs or partials.
    assert {
        "covariance_head/config.json",
        "covariance_head/diffusion_pytorch_model.safetensors",
        "covariance_head/covariance_head.py",
    } <= set(pushed)
    assert not [
        p for p in pushed if p.startswith(("checkpoint-", "covariance-head/", "logs/", "."))
    ]
    assert [p for p in out.rglob("*") if p.is_file() and "logs" in p.parts]  # there to leave out

    local = HFDDPMPipeline.from_pretrained(out)
    local.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    expected = local(batch_size=2, generator=generator, num_inference_steps=5, output_type="np")
    run_without_hf_ddpm(
        textwrap.dedent(f"""
        import sys
        import numpy as np, torch
        from diffusers import DiffusionPipeline
        torch.set_num_threads(1)
        pipe = DiffusionPipeline.from_pretrained("tester/with-head", trust_remote_code=True)
        assert type(pipe.covariance_head).__name__ == "CovarianceHead"
        assert pipe.scheduler.config.variance_type == "npr"
        assert not any(m.split(".")[0] == "hf_ddpm" for m in sys.modules)
        pipe.set_progress_bar_config(disable=True)
        images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=5,
                      output_type="np").images
        np.save({str(tmp_path / "remote.npy")!r}, images)
        """),
        env=hub_server.env,
    )
    np.testing.assert_array_equal(np.load(tmp_path / "remote.npy"), expected.images)
