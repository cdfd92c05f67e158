"""hf-ddpm train --eval-every: the EMA model evaluated as hf-ddpm evaluate would, logged, the last one in
the model card; a failed evaluation is one warning and training goes on."""

import logging
from functools import partial

import pytest
import yaml
from conftest import tiny_train_config

from hf_ddpm.training.train import train

_config = partial(
    tiny_train_config,
    max_steps=4,
    num_train_timesteps=10,
    lr_warmup_steps=1,
    grid=False,
    calibrate=False,
    eval_every=2,
    eval_metrics="nll",
    eval_images=6,
)


def _card_metadata(folder):
    text = (folder / "README.md").read_text()
    return yaml.safe_load(text.split("---")[1])


def _scalars(logs, tag):
    """The (step, value) pairs of a TensorBoard scalar, read from the event files under ``logs``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for events in sorted({p.parent for p in logs.rglob("events.out.tfevents*")}):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            return [(e.step, e.value) for e in accumulator.Scalars(tag)]
    raise AssertionError(f"no {tag!r} scalars under {logs}")


def test_eval_every_logs_each_evaluation_to_tensorboard_and_puts_the_last_into_the_card(
    tmp_path, caplog
):
    from hf_ddpm.core.pipeline import HFDDPMPipeline
    from hf_ddpm.evaluation.evaluate import evaluate_pipeline, load_reference

    caplog.set_level(logging.INFO)
    train(_config(tmp_path, logger="tensorboard"))
    logged = [r.getMessage() for r in caplog.records if "evaluation at step" in r.getMessage()]
    assert [m.split(":")[0] for m in logged] == ["evaluation at step 2", "evaluation at step 4"]
    assert all("NLL (bits/dim)" in m for m in logged)
    # The card holds step 4's figure: recomputed here from the saved EMA pipeline, independently of
    # the training run's objects.
    out = tmp_path / "out"
    index = _card_metadata(out)["model-index"][0]
    metric = index["results"][0]["metrics"][0]
    assert index["name"] == "out" and metric["type"] == "nll_bpd"
    pipe = HFDDPMPipeline.from_pretrained(out)
    reference = load_reference(8, "sklearn-digits", split="test", max_images=6)
    report = evaluate_pipeline(pipe, reference, metrics="nll", batch_size=8, seed=0)
    bpd = report["metrics"]["nll"]["bpd"]
    assert metric["value"] == pytest.approx(round(bpd, 4), abs=1e-4)
    # TensorBoard holds both evaluations, the last one the figure recomputed here (float32 events).
    logged = _scalars(out / "logs", "eval/nll")
    assert [step for step, _ in logged] == [2, 4]
    assert logged[1][1] == pytest.approx(bpd, rel=1e-6)


def test_a_failed_evaluation_is_one_warning_and_training_goes_on(tmp_path, caplog):
    # a folder of images has no test split: the evaluation cannot find held-out images
    from PIL import Image

    data = tmp_path / "images"
    data.mkdir()
    for i in range(8):
        Image.new("L", (8, 8), color=i * 30).save(data / f"{i}.png")
    caplog.set_level(logging.INFO)
    result = train(_config(tmp_path, dataset=None, train_data_dir=str(data)))
    assert result.step == 4
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "evaluation" in r.getMessage()
    ]
    assert len(warnings) == 1
    assert "evaluation at step 2 failed, training goes on" in warnings[0].getMessage()
    assert "model-index" not in _card_metadata(tmp_path / "out")


def test_bad_eval_options_name_their_flag(tmp_path):
    with pytest.raises(ValueError, match="--eval-metrics"):
        _config(tmp_path, eval_metrics="nll,bogus").validate()
    with pytest.raises(ValueError, match="--eval-samples must be >= 2"):
        _config(tmp_path, eval_metrics="fd-dinov2", eval_samples=1).validate()
    with pytest.raises(ValueError, match="--eval-steps must be in 1..10"):
        _config(tmp_path, eval_steps=11).validate()
    with pytest.raises(ValueError, match="--eval-every must be >= 0"):
        _config(tmp_path, eval_every=-1).validate()


@pytest.mark.parametrize("main_process", [True, False])
def test_a_failed_evaluation_warns_on_the_main_process_only(main_process, caplog):
    """Under a launcher every process meets the failure: one warning for the run (it was one per
    process), and no process evaluates again."""
    from types import SimpleNamespace

    from hf_ddpm.training.periodic_eval import PeriodicEvaluation

    setup = SimpleNamespace(
        config=SimpleNamespace(eval_every=2, logger="none"),
        accelerator=SimpleNamespace(is_main_process=main_process),
    )
    evaluation = PeriodicEvaluation(setup)

    def fail():
        raise RuntimeError("DINOv2 is not available offline")

    evaluation._evaluate = fail
    caplog.set_level(logging.INFO)
    assert evaluation.due(2)
    evaluation.run(2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    expected = "evaluation at step 2 failed, training goes on without --eval-every: RuntimeError"
    assert [w.startswith(expected) for w in warnings] == ([True] if main_process else [])
    assert not evaluation.due(4) and evaluation.last is None
