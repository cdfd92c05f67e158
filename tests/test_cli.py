"""What every ``hf-ddpm`` subcommand shares (hf_ddpm/cli.py): user errors as one line and exit 2, tracebacks
only for bugs (and with HF_DDPM_DEBUG=1), ``--threads``, the ``--device`` check, help text and quiet HTTP logs."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler, cli

T = 10
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """An unconditional and a class-conditional (3 classes + the null label) tiny pipeline, T = 10."""
    from conftest import _tiny_unet

    root = tmp_path_factory.mktemp("models")
    for name, embeds in (("plain", None), ("classes", 4)):
        unet = _tiny_unet(in_channels=1, num_class_embeds=embeds)
        HFDDPMPipeline(unet, HFDDPMScheduler(num_train_timesteps=T)).save_pretrained(root / name)
    images = root / "images"
    images.mkdir()
    for i in range(3):
        Image.new("L", (8, 8), 40 * i).save(images / f"{i}.png")
    return root


def _cases():
    """(subcommand argv, words the one-line message must contain); {m} is the models folder."""
    sample = ["sample", "--model", "{m}/plain", "--output", "{m}/out.png"]
    classes = ["sample", "--model", "{m}/classes", "--output", "{m}/out.png"]
    evaluate = ["evaluate", "{m}/plain", "--metrics", "nll", "--output", "{m}/r.json"]
    return [
        # sample: every bad input of issue 14 item 6, each naming its flag and the allowed range
        ([*sample, "--num-inference-steps", "0"], ["--num-inference-steps", f"1..{T}"]),
        ([*sample, "--num-inference-steps", "-5"], ["--num-inference-steps", f"1..{T}"]),
        ([*sample, "--num-inference-steps", "5000"], ["--num-inference-steps", f"1..{T}"]),
        ([*sample, "--num-images", "0"], ["--num-images", ">= 1"]),
        ([*classes, "--class-label", "12"], ["--class-label", "0..2"]),
        ([*classes, "--class-label", "-1"], ["--class-label", "0..2"]),
        ([*classes, "--guidance-scale", "-3"], ["--guidance-scale", ">= 0"]),
        ([*sample, "--class-label", "1"], ["--class-label", "class-conditional"]),
        ([*sample, "--seed", str(2**64)], ["--seed", "0.."]),
        (["sample", "--model", "{m}/nope"], ["--model", "nope"]),
        ([*sample, "--output", "{m}/out.jpg"], ["--output", ".png"]),
        ([*sample, "--num-images", "many"], ["--num-images", "invalid int value"]),
        ([*sample, "--threads", "0"], ["--threads"]),
        ([*sample, "--device", "tpu9"], ["--device", "not a torch device"]),
        ([*sample, "--no-such-flag"], ["unrecognized arguments: --no-such-flag"]),
        # evaluate
        (["evaluate", "{m}/nope", "--metrics", "nll"], ["nope"]),
        (["evaluate", "{m}/images", "--metrics", "nll"], ["model_index.json"]),
        ([*evaluate[:2], "--metrics", "nll,is"], ["--metrics", "nll, fid, fd-dinov2"]),
        ([*evaluate, "--batch-size", "0"], ["--batch-size", ">= 1"]),
        ([*evaluate, "--nll-timesteps", "0"], ["--nll-timesteps", ">= 1"]),
        ([*evaluate, "--grid", "{m}/g.png", "--num-samples", "0"], ["--num-samples", ">= 1"]),
        ([*evaluate, "--threads", "-2"], ["--threads"]),
        ([*evaluate, "--train-data-dir", "{m}/images"], ["--split train", "no 'test' split"]),
        (
            [*evaluate, "--train-data-dir", "{m}/images", "--split", "train", "--grid", "{m}/g.png"]
            + ["--num-inference-steps", "5000"],
            ["--num-inference-steps", f"1..{T}"],
        ),
        ([*evaluate[:2], "--metrics", "fd-dinov2"], ["facebook/dinov2-base", "--dinov2-model"]),
        # inpaint and img2img (their validation is sampling/edit_files.py's)
        (
            ["inpaint", "{m}/plain", "--image", "{m}/none.png", "--mask", "{m}/images/0.png"]
            + ["--output", "{m}/o.png"],
            ["--image", "none.png"],
        ),
        (
            ["img2img", "{m}/plain", "--image", "{m}/images/0.png", "--output", "{m}/o.png"]
            + ["--strength", "1.5", "--num-inference-steps", "2"],
            ["strength"],
        ),
        (["img2img", "{m}/plain", "--image", "{m}/images/0.png"], ["--output", "required"]),
        # calibrate
        (["calibrate", "{m}/nope", "--train-data-dir", "{m}/images"], ["nope"]),
        (
            ["calibrate", "{m}/plain", "--train-data-dir", "{m}/images", "--num-images", "0"],
            ["--num-images"],
        ),
        (["calibrate", "{m}/plain", "--threads", "0"], ["--threads"]),
        # space
        (["space", "tester/demo", "--model", "."], ["--model", "local folder"]),
        (["space", "tester/demo"], ["--model", "required"]),
        (["space", "no-slash", "--model", "tester/m"], ["Space id", "user/name"]),
        # train: its own validation (owned by training/), through the same mapping
        (["train", "--model-preset", "huge", "--output-dir", "{m}/t"], ["--model-preset", "huge"]),
        (["train", "--learning-rate", "-1", "--output-dir", "{m}/t"], ["--learning-rate", "> 0"]),
        (["train", "--batch-size", "lots"], ["--batch-size", "invalid"]),
        (["train", "--threads", "0"], ["--threads"]),
    ]


@pytest.mark.parametrize(("argv", "words"), _cases(), ids=lambda v: " ".join(v)[:60])
def test_user_errors_are_one_line_and_exit_2(models, argv, words, capsys):
    argv = [arg.format(m=models) for arg in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # progress bars may come first (reading a dataset); the error is one line, and the last
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert errors[0].startswith(f"hf-ddpm {argv[0]}: error: "), errors[0]
    for word in words:
        assert word in errors[0], (word, errors[0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_cuda_on_a_machine_without_it(models, command, capsys):
    target = ["--model", f"{models}/plain"] if command == "sample" else [f"{models}/plain"]
    assert cli.main([command, *target, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda" in err and "--device cpu" in err and len(err.strip().splitlines()) == 1


def test_a_bug_keeps_its_traceback(models, monkeypatch):
    from hf_ddpm.sampling import sample

    def broken(pipeline, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(sample, "sample_grid", broken)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["sample", "--model", f"{models}/plain", "--output", f"{models}/x.png"])


def _run_cli(args, **env):
    return subprocess.run(
        [sys.executable, "-m", "hf_ddpm.cli", *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
    )


def test_the_installed_entry_point_prints_no_traceback_unless_debugging(models):
    argv = ["sample", "--model", f"{models}/plain", "--num-inference-steps", "0"]
    plain = _run_cli(argv)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines() == [
        f"hf-ddpm sample: error: --num-inference-steps must be in 1..{T} (the model's "
        "num_train_timesteps), got 0"
    ]
    debug = _run_cli(argv, HF_DDPM_DEBUG="1")
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert "ValueError: --num-inference-steps" in debug.stderr


def test_threads_sets_torch_intra_op_threads_before_the_command_runs(monkeypatch):
    from hf_ddpm.sampling import sample

    seen = []

    def run(args):
        seen.append(torch.get_num_threads())
        return 0

    monkeypatch.setattr(sample, "run", run)
    before = torch.get_num_threads()
    try:
        assert cli.main(["sample", "--threads", "3"]) == 0
        assert seen == [3]
    finally:
        torch.set_num_threads(before)


def _subparser(command):
    import argparse

    parser = cli._parser([command])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def test_threads_is_offered_by_the_torch_commands_only():
    def options(command):
        return {s for a in _subparser(command)._actions for s in a.option_strings}

    assert all(
        "--threads" in options(c) for c in ("train", "sample", "evaluate", "inpaint", "img2img")
    )
    assert "--threads" not in options("space")


def _help(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping


@pytest.mark.parametrize("command", ["train", "sample", "evaluate", "inpaint", "img2img", "space"])
def test_help_shows_each_default_once_and_never_none(command, capsys):
    text = _help(command, capsys)
    assert "(default: None)" not in text
    import re

    assert not re.search(r"\(default:[^)]*\) \(default:", text)  # "(default: T) (default: None)"


@pytest.mark.parametrize("command", list(cli.SUBCOMMANDS))
def test_every_option_has_help(command):
    undocumented = [a.option_strings for a in _subparser(command)._actions if not a.help]
    assert not undocumented


def _parsed(argv):
    """The namespace ``hf-ddpm`` hands the subcommand's run(), after the shared resolution."""
    parser = cli._parser(argv)
    args = parser.parse_args(argv)
    cli._resolve_model(args, f"hf-ddpm {argv[0]}", cli.SUBCOMMANDS[argv[0]])
    return args


COMMAND_TAILS = {
    "sample": [],
    "evaluate": [],
    "calibrate": [],
    "inpaint": ["--image", "a.png", "--mask", "m.png", "--output", "o.png"],
    "img2img": ["--image", "a.png", "--output", "o.png"],
    "space": ["user/space"],
}


@pytest.mark.parametrize("command", list(COMMAND_TAILS))
def test_every_model_command_takes_the_model_both_ways(command):
    """`hf-ddpm sample out/m` and `hf-ddpm inpaint --model out/m` (issue 22): one definition, both forms."""
    tail = COMMAND_TAILS[command]
    positional = _parsed([command, *tail, "out/m"])
    option = _parsed([command, *tail, "--model", "out/m"])
    assert positional.model == option.model == "out/m"
    assert not hasattr(option, "model_option")
    assert _parsed([command, *tail, "out/m", "--model", "out/m"]).model == "out/m"


@pytest.mark.parametrize("command", list(COMMAND_TAILS))
def test_a_model_given_twice_differently_is_one_line_exit_2(command, capsys):
    argv = [command, *COMMAND_TAILS[command], "out/a", "--model", "out/b"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'out/a'" in err and "--model 'out/b'" in err, err


@pytest.mark.parametrize("command", [c for c in COMMAND_TAILS if cli.SUBCOMMANDS[c].model_required])
def test_a_required_model_that_is_missing_names_both_forms(command, capsys):
    assert cli.main([command, *COMMAND_TAILS[command]]) == 2
    err = capsys.readouterr().err.strip()
    assert "a model is required" in err and "--model MODEL" in err, err


def test_shared_flags_are_declared_once_and_honour_a_commands_default():
    """Each shared flag comes from cli.SHARED_FLAGS: the same option strings in every command that takes
    its group; --num-inference-steps is left unset, for the model's default_sampling_steps, in sample and
    the edit commands alike."""
    for command in ("sample", "inpaint", "img2img"):
        assert _parsed([command, *COMMAND_TAILS.get(command, [])]).num_inference_steps is None
    for name, spec in cli.SUBCOMMANDS.items():
        if name not in COMMAND_TAILS and name != "train":
            continue
        dests = {a.dest for a in _subparser(name)._actions}
        assert ("seed" in dests) == (cli.SEED in spec.shared) or name == "train"
        assert ("threads" in dests) == (cli.THREADS in spec.shared)


def _options(add_arguments, *extra) -> set[str]:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser, *extra)
    return {s for a in parser._actions for s in a.option_strings} - {"-h", "--help"}


# --output names another file where a command declares it itself: sample's grid, evaluate's report, an
# edit's image. train's options are its TrainConfig fields, recorded in train_config.json.
OWN_MEANINGS = {"--output"}


@pytest.mark.parametrize("command", [c for c in cli.SUBCOMMANDS if c != "train"])
def test_no_command_declares_a_shared_flag_itself(command):
    """A shared flag comes from its group in cli.SHARED_FLAGS, never from a command's add_arguments:
    the Hub upload flags of calibrate, fit-covariance and evaluate, and the folder calibrate and
    fit-covariance rewrite a model into, as much as --seed or --device."""
    from importlib import import_module

    spec = cli.SUBCOMMANDS[command]
    own = _options(import_module(spec.module).add_arguments)
    for group, add in cli.SHARED_FLAGS.items():
        restated = own & _options(add, spec)
        assert not restated - (set() if group in spec.shared else OWN_MEANINGS), (group, restated)
    if command in ("calibrate", "fit-covariance", "evaluate"):
        assert cli.HUB in spec.shared
        hub = {"--push-to-hub", "--hub-model-id", "--hub-token"}
        assert hub <= _options(cli._add_shared_arguments, spec)


def test_http_client_logs_are_quiet(monkeypatch):
    """train logs at INFO; huggingface_hub's HTTP client would then log every request."""
    from hf_ddpm.sampling import sample

    names = ("", "httpx", "httpcore", "httpx2", "httpcore2")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.INFO if logger is loggers[0] else logging.NOTSET)
        assert loggers[1].isEnabledFor(logging.INFO)
        monkeypatch.setattr(sample, "run", lambda args: 0)
        assert cli.main(["sample"]) == 0
        for logger in loggers[1:]:
            assert not logger.isEnabledFor(logging.INFO) and logger.isEnabledFor(logging.WARNING)
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
