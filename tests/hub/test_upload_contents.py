"""One definition of what a model folder's upload holds (issue 21, item 6): a training output folder
pushed by ``hf-ddpm train --push-to-hub``, by ``push_folder_to_hub``, by the printed ``hf upload`` retry
command and copied by ``hf-ddpm calibrate --output`` holds the same files: the pipeline, its card and
grids, never checkpoints, logs or hidden partial writes."""

import shlex
from pathlib import Path

import pytest
from conftest import tiny_train_config

from hf_ddpm.core.pushing import HubPushError, push_folder_to_hub, uploaded_files
from hf_ddpm.training.train import train


def _config(tmp_path, **overrides):
    """A tiny run that leaves checkpoints, grids and logs beside the pipeline."""
    return tiny_train_config(
        tmp_path,
        lr_warmup_steps=1,
        checkpoint_every=1,
        sample_every=1,
        num_samples=4,
        logger="tensorboard",
        calibrate=False,
        **overrides,
    )


def _trained(tmp_path) -> Path:
    out = tmp_path / "out"
    train(_config(tmp_path))
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


def test_train_push_uploads_exactly_the_folders_upload_files(tmp_path, hub_server):
    """``hf-ddpm train --push-to-hub`` (the end-of-run push) uploads ``uploaded_files(output_dir)``: no
    file more or less, each byte for byte as it is on disk."""
    out = tmp_path / "out"
    result = train(_config(tmp_path, push_to_hub=True, hub_model_id="tester/trained"))
    assert result.hub_url and not result.warnings
    expected = uploaded_files(out)
    assert "model_index.json" in expected and "checkpoint-2/manifest.json" not in expected
    on_hub = hub_server.files("tester/trained")
    # The Hub adds its own .gitattributes to a new repo.
    assert sorted(set(on_hub) - {".gitattributes"}) == expected
    for name in expected:
        assert on_hub[name] == (out / name).read_bytes(), name


def _calibrate_argv(source: Path, output: Path) -> list[str]:
    return ["calibrate", str(source), "--num-images", "2", "--dataset", "sklearn-digits"] + [
        "--output",
        str(output),
    ]


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_calibrate_output_is_written_whole_or_not_at_all(tmp_path, monkeypatch, capsys):
    """Each copy, write and rename of ``hf-ddpm calibrate --output`` fails in turn on a full disk
    (tests/fault_injection.py): exit 1, one line naming --output, and nothing at all where the folder
    was to be (no half folder, no hidden partial one); the source model is untouched, and a rerun once
    there is space writes what a clean run writes."""
    import errno

    from analytic_oracle_helpers import _tiny_pipeline
    from fault_injection import inject_write_faults

    from hf_ddpm.cli import main

    source = tmp_path / "model"
    _tiny_pipeline().save_pretrained(source)
    before = _tree(source)
    clean_parent = tmp_path / "clean"
    clean_parent.mkdir()
    counting = inject_write_faults(monkeypatch, clean_parent, nth=None)
    assert main(_calibrate_argv(source, clean_parent / "calibrated")) == 0
    counting.enabled = False
    clean = _tree(clean_parent / "calibrated")
    kinds = {kind for kind, _ in counting.operations}
    assert kinds == {"copy", "write", "rename"}, counting.operations
    assert sorted(clean) == uploaded_files(source)
    capsys.readouterr()

    parent = tmp_path / "out"
    parent.mkdir()
    output = parent / "calibrated"
    for nth in range(1, len(counting.operations) + 1):
        faults = inject_write_faults(monkeypatch, parent, nth=nth, error=errno.ENOSPC)
        assert main(_calibrate_argv(source, output)) == 1, nth
        faults.enabled = False
        errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert errors == [
            f"hf-ddpm calibrate: error: [Errno {errno.ENOSPC}] No space left on device: "
            f"{str(output)!r}"
        ], (nth, errors)
        assert list(parent.iterdir()) == [], (nth, faults.failed)
    assert _tree(source) == before
    assert main(_calibrate_argv(source, output)) == 0
    # The card names the folder it is in.
    card = clean["README.md"].replace(
        str(clean_parent / "calibrated").encode(), str(output).encode()
    )
    assert _tree(output) == {**clean, "README.md": card}


def test_calibrate_refuses_an_output_folder_that_holds_files(tmp_path, capsys):
    from analytic_oracle_helpers import _tiny_pipeline

    from hf_ddpm.cli import main

    source, output = tmp_path / "model", tmp_path / "taken"
    _tiny_pipeline().save_pretrained(source)
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    assert main(_calibrate_argv(source, output)) == 2
    err = capsys.readouterr().err.strip()
    # Not a model: no advice to calibrate it in place (it used to be given for any folder).
    assert err == (
        f"hf-ddpm calibrate: error: --output {output} already exists and holds files; give a new or "
        "empty folder"
    ), err
    assert [p.name for p in output.iterdir()] == ["notes.txt"]
    (output / "notes.txt").unlink()
    _tiny_pipeline().save_pretrained(output)
    assert main(_calibrate_argv(source, output)) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"or calibrate the model there in place with `hf-ddpm calibrate {output}`")
    assert main(_calibrate_argv(source, source / "model_index.json")) == 2
    assert "model_index.json is a file; give a new or empty folder" in capsys.readouterr().err


def test_calibrate_output_help_says_the_folder_must_be_new_or_empty(capsys):
    from hf_ddpm.cli import main

    with pytest.raises(SystemExit):
        main(["calibrate", "--help"])
    assert "a new or empty folder" in " ".join(capsys.readouterr().out.split())
