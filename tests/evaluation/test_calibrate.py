"""hf-ddpm calibrate (evaluation/calibrate.py): Gamma_n against its closed form on Gaussian data, the null label,
the atomic write, the command end to end.

Moved from tests/evaluation/test_analytic_dpm.py (issue 18: tests mirror the package).
"""

import numpy as np
import pytest
import torch
from analytic_oracle_helpers import _tiny_pipeline
from gaussian_oracle import GaussianOracle

M, S = 0.3, 0.5


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_calibration_matches_the_closed_form_within_monte_carlo_error(prediction_type):
    from hf_ddpm import HFDDPMScheduler
    from hf_ddpm.evaluation.calibrate import eps_second_moment

    scheduler = HFDDPMScheduler(
        num_train_timesteps=40,
        scale_linear_betas_by_timesteps=True,
        prediction_type=prediction_type,
    )
    ab = scheduler.alphas_cumprod.double().numpy()
    oracle = GaussianOracle(M, S, ab, prediction_type)
    g = torch.Generator().manual_seed(5)
    images = M + S * torch.randn(48, 1, 4, 4, generator=g, dtype=torch.float64)
    result = eps_second_moment(oracle, scheduler, images, generator=g, max_batch_size=100)
    expected = oracle.eps_second_moment()
    z = (result.values - expected) / result.stderr
    assert result.num_images == 48 and result.values.shape == (40,)
    assert np.abs(z).max() < 5, (z, result.values, expected)
    # the closed form is not a constant that anything would match
    assert expected[0] < 0.01 and expected[-1] > 0.99


def test_calibrate_pipeline_uses_the_null_label_and_sets_the_scheduler():
    from hf_ddpm.evaluation.bound import unconditional_model
    from hf_ddpm.evaluation.calibrate import calibrate_pipeline, eps_second_moment

    # The recorded null label (here not the last embedding) is the one calibrated.
    pipeline = _tiny_pipeline(num_class_embeds=4, null_class_label=2)
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    result = calibrate_pipeline(
        pipeline, images, generator=torch.Generator().manual_seed(1), progress=False
    )
    unet = pipeline.unet

    def label_zero(x_t, t):
        return unet(x_t, t, class_labels=torch.zeros_like(t)).sample

    for model, same in (
        (unconditional_model(unet, 2), True),
        (unconditional_model(unet), False),
        (label_zero, False),
    ):
        direct = eps_second_moment(
            model, pipeline.scheduler, images, torch.Generator().manual_seed(1), progress=False
        )
        assert np.allclose(direct.values, result.values) == same
    assert pipeline.scheduler.config.eps_second_moment == result.values.tolist()
    assert pipeline.scheduler.config.variance_type == "fixed_small"
    with pytest.raises(ValueError, match=r"\(M, 1, 8, 8\)"):
        calibrate_pipeline(pipeline, images[:, :, :4, :4])
    with pytest.raises(ValueError, match="non-empty"):
        eps_second_moment(unet, pipeline.scheduler, images[:0])
    # A class-conditional model without a null label has no model of p(x) to calibrate.
    with pytest.raises(ValueError, match="records no null label"):
        calibrate_pipeline(_tiny_pipeline(num_class_embeds=4), images, progress=False)


def test_write_is_atomic_and_keeps_the_variance_type_unless_asked(tmp_path, monkeypatch):
    import json
    import os

    from hf_ddpm.evaluation.calibrate import write_eps_second_moment

    _tiny_pipeline().save_pretrained(tmp_path)
    config_path = tmp_path / "scheduler" / "scheduler_config.json"
    before = config_path.read_text()

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_eps_second_moment(tmp_path, [0.5] * 10)
    monkeypatch.undo()
    assert config_path.read_text() == before
    assert sorted(p.name for p in config_path.parent.iterdir() if p.name.startswith(".")) == []
    with pytest.raises(ValueError, match="num_train_timesteps=10"):
        write_eps_second_moment(tmp_path, [0.5] * 9)
    write_eps_second_moment(tmp_path, [0.5] * 10)
    config = json.loads(config_path.read_text())
    assert config["eps_second_moment"] == [0.5] * 10 and config["variance_type"] == "fixed_small"
    write_eps_second_moment(tmp_path, [0.25] * 10, set_default=True)
    config = json.loads(config_path.read_text())
    assert config["eps_second_moment"] == [0.25] * 10 and config["variance_type"] == "analytic"


def test_calibrate_command_end_to_end(tmp_path, capsys):
    import json

    from hf_ddpm.cli import main

    source, output = tmp_path / "model", tmp_path / "calibrated"
    _tiny_pipeline().save_pretrained(source)
    before = (source / "scheduler" / "scheduler_config.json").read_text()
    argv = ["calibrate", str(source), "--dataset", "mnist-5k", "--num-images", "3"]
    argv += ["--output", str(output)]
    assert main(argv) == 0
    assert "Gamma_n over 3 images" in capsys.readouterr().out
    assert (source / "scheduler" / "scheduler_config.json").read_text() == before
    config = json.loads((output / "scheduler" / "scheduler_config.json").read_text())
    assert len(config["eps_second_moment"]) == 10 and config["variance_type"] == "fixed_small"
    assert (output / "unet" / "diffusion_pytorch_model.safetensors").is_file()

    assert main(["calibrate", "someone/not-here", "--num-images", "2"]) == 2
    assert "--output" in capsys.readouterr().err
    assert main(["calibrate", str(source), "--num-images", "0"]) == 2
    assert "--num-images" in capsys.readouterr().err


def test_the_calibrated_copy_s_card_names_the_copy(tmp_path, monkeypatch, capsys):
    """`calibrate MODEL --output OUT` kept MODEL's card: its title and from_pretrained("MODEL") named the
    source. The copy's card names OUT, as given, and its example runs as written from OUT's parent
    folder; with --set-default its scheduler bullet says analytic."""
    import re

    from hf_ddpm.cli import main

    _tiny_pipeline().save_pretrained(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    argv = ["calibrate", "model", "--dataset", "mnist-5k", "--num-images", "2", "--set-default"]
    assert main([*argv, "--output", "calibrated"]) == 0, capsys.readouterr().err
    card = (tmp_path / "calibrated" / "README.md").read_text()
    assert "\n# calibrated\n" in card and '"model"' not in card, card
    assert "variance_type='analytic'" in card
    installed = re.findall(r"```python\n(.*?)```", card, re.S)[1]
    assert 'HFDDPMPipeline.from_pretrained("calibrated")' in installed
    namespace = {}
    exec(compile(installed, "the card's example", "exec"), namespace)
    assert len(namespace["images"]) == 4
    assert "\n# model\n" in (tmp_path / "model" / "README.md").read_text()
