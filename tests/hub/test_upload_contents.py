"""One definition of what a model folder's upload holds (issue 21, item 6): a training output folder
pushed by ``hf-ddpm train --push-to-hub``, by ``push_folder_to_hub``, by the printed ``hf upload`` retry
command and copied by ``hf-ddpm calibrate --output`` holds the same files: the pipeline, its card and
grids, never checkpoints, logs or hidden partial writes."""

import shlex
from pathlib import Path

from conftest import tiny_train_config

from hf_ddpm.core.pushing import HubPushError, push_folder_to_hub, uploaded_files
from hf_ddpm.training.train import train


def _trained(tmp_path) -> Path:
    out = tmp_path / "out"
    config = tiny_train_config(
        tmp_path,
        lr_warmup_steps=1,
        checkpoint_every=1,
        sample_every=1,
        num_samples=4,
        logger="tensorboard",
        calibrate=False,
    )
    train(config)
    # What a killed run leaves behind.
    (out / ".tmp-checkpoint-3-999").mkdir()
    (out / ".tmp-checkpoint-3-999" / "model.safetensors").write_bytes(b"half")
    return out


def test_push_retry_command_and_calibrate_copy_hold_the_same_files(tmp_path, hub_server, capsys):
    from hf_ddpm.cli import main

    out = _trained(tmp_path)
    expected = uploaded_files(out)
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert len(on_disk) > len(expected)
    # Independent of the definition: the pipeline, its card, grids and record, nothing else.
    assert {
        "model_index.json",
        "README.md",
        "train_config.json",
        "samples/step-0000001.png",
    } <= set(expected)
    assert not [n for n in expected if n.startswith(("checkpoint-", "logs/", "."))]
    assert "unet/diffusion_pytorch_model.safetensors" in expected

    push_folder_to_hub(out, "tester/pushed")
    # The Hub adds its own .gitattributes to a new repo.
    assert sorted(set(hub_server.files("tester/pushed")) - {".gitattributes"}) == expected

    copy = tmp_path / "calibrated"
    argv = ["calibrate", str(out), "--num-images", "2", "--output", str(copy)]
    argv += ["--dataset", "sklearn-digits"]
    assert main(argv) == 0, capsys.readouterr().err
    assert uploaded_files(copy) == expected
    assert (
        sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) == expected
    )


def test_the_retry_hint_excludes_what_the_push_leaves_out(tmp_path, hub_server, no_hub_retry_sleep):
    out = _trained(tmp_path)
    hub_server.fail_next_commits(1000, "500")
    try:
        push_folder_to_hub(out, "tester/down")
    except HubPushError as error:
        hint = str(error).splitlines()[-1].strip()
    words = shlex.split(hint)
    assert words[:5] == ["hf", "upload", "tester/down", str(out.resolve()), "."]
    excluded = [words[i + 1] for i, w in enumerate(words) if w == "--exclude"]
    from fnmatch import fnmatch

    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    kept = [n for n in on_disk if not any(fnmatch(n, pattern) for pattern in excluded)]
    assert kept == uploaded_files(out)
