"""The saved folder layout: remote-code loading without hf_ddpm, loading without remote code, round trips,
diffusers' own DDPM folders, the model card, and clear errors."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler
from huggingface_hub import ModelCard

from hf_ddpm.core.pipeline import HFDDPMPipeline
from hf_ddpm.core.remote_code import relative_import_closure
from hf_ddpm.core.scheduling import HFDDPMScheduler

T = 10


def _learned_variance_pipe(tiny_unet):
    scheduler = HFDDPMScheduler(
        num_train_timesteps=T, variance_type="learned_range", beta_schedule="squaredcos_cap_v2"
    )
    pipe = HFDDPMPipeline(unet=tiny_unet(out_channels=6), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sample(pipe, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return pipe(batch_size=2, generator=generator, num_inference_steps=T, output_type="np").images


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _public(config):
    return {key: value for key, value in config.items() if not key.startswith("_")}


def _hf_ddpm_modules_imported_by(module):
    """Oracle for the closure: the hf_ddpm.core modules Python itself loads when importing ``module``."""
    code = f"import sys, {module}; print(' '.join(m for m in sys.modules if m.startswith('hf_ddpm.core.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {name.rsplit(".", 1)[1] + ".py" for name in out.stdout.split()}


_REMOTE_SAMPLE = """
import json, sys
import numpy as np, torch
from diffusers import DiffusionPipeline
torch.set_num_threads(1)

def sample(folder):
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps={T},
                  output_type="np").images
    return pipe, images
"""


def test_saved_layout(tiny_unet, tmp_path):
    folder = tmp_path / "saved"
    _learned_variance_pipe(tiny_unet).save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index.pop("_diffusers_version")
    assert index == {
        "_class_name": ["pipeline", "HFDDPMPipeline"],
        "scheduler": ["scheduling", "HFDDPMScheduler"],
        "unet": ["diffusers", "UNet2DModel"],
    }
    files = _files(folder)
    assert {"pipeline.py", "README.md", "unet/config.json"} <= set(files)
    # The root carries what importing the pipeline loads (saving and pushing included, so a remote
    # copy can save and push itself), and not the installed package's loader.
    root_code = {f for f in files if "/" not in f and f.endswith(".py")}
    assert root_code == _hf_ddpm_modules_imported_by("hf_ddpm.core.pipeline")
    assert {"saving.py", "pushing.py", "model_card.py", "remote_code.py"} <= root_code
    assert "unet/diffusion_pytorch_model.safetensors" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]
    copied = {f.split("/", 1)[1] for f in files if f.startswith("scheduler/") and f.endswith(".py")}
    assert copied == _hf_ddpm_modules_imported_by("hf_ddpm.core.scheduling")


def test_saved_weights_are_readable_as_a_plain_open_makes_them(tiny_unet, tmp_path):
    # safetensors writes 0600; a shared model folder needs the mode open() gives under the umask.
    old = os.umask(0o022)
    try:
        folder = tmp_path / "saved"
        _learned_variance_pipe(tiny_unet).save_pretrained(folder)
    finally:
        os.umask(old)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_mode & 0o777 == 0o644, oct(weights.stat().st_mode)


def test_remote_code_load_without_hf_ddpm(tiny_unet, tmp_path, run_without_hf_ddpm):
    """Save; in a process where hf_ddpm cannot be imported, load with trust_remote_code, sample, save
    again and load that; then load the re-saved folder here without remote code."""
    pipe = _learned_variance_pipe(tiny_unet)
    expected = _sample(pipe)
    saved, resaved = tmp_path / "saved", tmp_path / "resaved"
    pipe.save_pretrained(saved, description="A tiny test run.")
    (saved / "train_config.json").write_text('{"max_steps": 3}')  # as hf-ddpm train leaves it
    run_without_hf_ddpm(
        _REMOTE_SAMPLE.format(T=T)
        + textwrap.dedent(f"""
        pipe, images = sample({str(saved)!r})
        assert type(pipe).__name__ == "HFDDPMPipeline", type(pipe)
        assert type(pipe.scheduler).__name__ == "HFDDPMScheduler", type(pipe.scheduler)
        assert not any(m.split(".")[0] == "hf_ddpm" for m in sys.modules)
        np.save({str(tmp_path / "remote.npy")!r}, images)
        pipe.save_pretrained({str(resaved)!r})
        _, images = sample({str(resaved)!r})
        np.save({str(tmp_path / "remote_resaved.npy")!r}, images)
        """)
    )
    np.testing.assert_array_equal(np.load(tmp_path / "remote.npy"), expected)
    np.testing.assert_array_equal(np.load(tmp_path / "remote_resaved.npy"), expected)
    assert _files(resaved) == _files(saved)
    # the remote-code copy of the class carries the card (pointed at the new folder) and training files
    card = (resaved / "README.md").read_text()
    assert "A tiny test run." in card and f'from_pretrained("{resaved.as_posix()}"' in card
    assert (resaved / "train_config.json").read_text() == '{"max_steps": 3}'
    assert json.loads((resaved / "model_index.json").read_text()) == json.loads(
        (saved / "model_index.json").read_text()
    )
    loaded = HFDDPMPipeline.from_pretrained(resaved)
    assert type(loaded.scheduler) is HFDDPMScheduler
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(_sample(loaded), expected)


def test_load_save_load_without_remote_code(tiny_unet, tmp_path):
    pipe = _learned_variance_pipe(tiny_unet)
    expected = _sample(pipe)
    pipe.save_pretrained(tmp_path / "first")
    loaded = HFDDPMPipeline.from_pretrained(tmp_path / "first")
    assert type(loaded.scheduler) is HFDDPMScheduler
    assert _public(loaded.scheduler.config) == _public(pipe.scheduler.config)
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(_sample(loaded), expected)
    loaded.save_pretrained(tmp_path / "second")
    again = HFDDPMPipeline.from_pretrained(tmp_path / "second")
    again.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(_sample(again), expected)
    assert _files(tmp_path / "second") == _files(tmp_path / "first")


def test_passed_components_replace_saved_ones(tiny_unet, tmp_path):
    _learned_variance_pipe(tiny_unet).save_pretrained(tmp_path)
    scheduler = DDPMScheduler(num_train_timesteps=T, variance_type="learned_range")
    assert HFDDPMPipeline.from_pretrained(tmp_path, scheduler=scheduler).scheduler is scheduler


def _save_diffusers_ddpm_folder(tiny_unet, folder):
    """A folder in google/ddpm-cifar10-32's layout (its scheduler config uses fixed_large)."""
    scheduler = DDPMScheduler(num_train_timesteps=T, variance_type="fixed_large")
    DDPMPipeline(unet=tiny_unet(), scheduler=scheduler).save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert index["unet"] == ["diffusers", "UNet2DModel"]


def test_diffusers_ddpm_folder_loads_with_the_same_images(tiny_unet, tmp_path):
    _save_diffusers_ddpm_folder(tiny_unet, tmp_path)
    reference = DDPMPipeline.from_pretrained(tmp_path)
    reference.set_progress_bar_config(disable=True)
    expected = _sample(reference)

    converted = HFDDPMPipeline.from_pretrained(tmp_path)
    assert type(converted.scheduler) is HFDDPMScheduler
    assert converted.scheduler.config.variance_type == "fixed_large"
    assert converted.scheduler.config.num_train_timesteps == T
    converted.set_progress_bar_config(disable=True)
    # float64 tables against diffusers' float32 ones: equal up to rounding.
    np.testing.assert_allclose(_sample(converted), expected, atol=1e-5)

    kept = HFDDPMPipeline.from_pretrained(tmp_path, convert_scheduler=False)
    assert type(kept.scheduler) is DDPMScheduler
    kept.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(_sample(kept), expected)


def test_model_card(tiny_unet, tmp_path):
    pipe = _learned_variance_pipe(tiny_unet)
    grid = PIL.Image.new("RGB", (16, 16), (255, 0, 0))
    pipe.save_pretrained(
        tmp_path / "a", license="mit", datasets=["ylecun/mnist"], tags=["mnist"], sample_grid=grid
    )
    card = ModelCard.load(tmp_path / "a" / "README.md")
    assert card.data.library_name == "diffusers"
    assert card.data.pipeline_tag == "unconditional-image-generation"
    assert card.data.license == "mit"
    assert {"ddpm", "hf-ddpm", "mnist"} <= set(card.data.tags)
    assert card.data.datasets == ["ylecun/mnist"]
    # no Hub id: the title and the snippets name the folder (issue 14 item 9: not "your-model")
    folder = (tmp_path / "a").as_posix()
    assert "your-model" not in card.text and "your-username" not in card.text
    assert card.text.lstrip().startswith("# a\n")
    assert f'DiffusionPipeline.from_pretrained("{folder}", trust_remote_code=True)' in card.text
    assert f'HFDDPMPipeline.from_pretrained("{folder}")' in card.text
    assert "![samples](samples.png)" in card.text
    assert (tmp_path / "a" / "samples.png").is_file()
    assert "learned_range" in card.text

    pipe.save_pretrained(tmp_path / "b", repo_id="alice/tiny")
    card = ModelCard.load(tmp_path / "b" / "README.md")
    assert card.text.lstrip().startswith("# tiny\n")
    assert 'HFDDPMPipeline.from_pretrained("alice/tiny")' in card.text
    assert card.data.license == "apache-2.0" and not card.data.datasets
    assert "samples.png" not in card.text


def test_card_install_lines_are_true(tiny_unet, tmp_path, monkeypatch):
    """Issue 14 item 9: hf_ddpm is not on PyPI. The remote-code path needs no hf_ddpm; the package
    installs from its repository, named only when the installed metadata names one."""
    from email.message import Message
    from importlib import metadata

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "metadata", not_installed)
    pipe = _learned_variance_pipe(tiny_unet)
    pipe.save_pretrained(tmp_path / "a")
    card = (tmp_path / "a" / "README.md").read_text()
    assert "pip install hf-ddpm" not in card and "pip install hf_ddpm" not in card
    assert "hf_ddpm itself need not be installed" in card and "not on PyPI" in card
    assert "pip install git+" not in card  # no repository known

    known = Message()
    known["Name"] = "hf-ddpm"
    known["Project-URL"] = "Repository, https://example.org/hf_ddpm.git"
    monkeypatch.setattr(metadata, "metadata", lambda name: known)
    pipe.save_pretrained(tmp_path / "b")
    assert (
        "`pip install git+https://example.org/hf_ddpm.git`"
        in (tmp_path / "b" / "README.md").read_text()
    )


def _training_folder(pipe, folder):
    """What hf-ddpm train leaves: its card, samples.png, train_config.json, checkpoints and logs."""
    grid = PIL.Image.new("RGB", (16, 16), (0, 255, 0))
    pipe.save_pretrained(
        folder, description="Trained for 3 steps by hf-ddpm train.", sample_grid=grid
    )
    (folder / "train_config.json").write_text('{"max_steps": 3}')
    (folder / "checkpoint-3").mkdir()
    (folder / "checkpoint-3" / "optimizer.bin").write_bytes(b"state")
    (folder / "logs").mkdir()
    return folder


def test_resaving_a_loaded_training_folder_keeps_what_training_wrote(tiny_unet, tmp_path):
    """Issue 14 item 10: a loaded folder's card, samples.png and train_config.json survive a re-save,
    into the same folder or another; new card fields replace the carried card."""
    run = _training_folder(_learned_variance_pipe(tiny_unet), tmp_path / "out" / "run")
    before = {
        name: (run / name).read_bytes()
        for name in ("README.md", "samples.png", "train_config.json")
    }
    loaded = HFDDPMPipeline.from_pretrained(run)
    assert loaded.name_or_path == str(run)  # as diffusers records it

    loaded.save_pretrained(run)
    assert {name: (run / name).read_bytes() for name in before} == before

    copy = tmp_path / "copy"
    loaded.save_pretrained(copy)
    card = (copy / "README.md").read_text()
    assert "Trained for 3 steps by hf-ddpm train." in card and "![samples](samples.png)" in card
    assert f'HFDDPMPipeline.from_pretrained("{copy.as_posix()}")' in card
    assert card.lstrip("-").split("---", 1)[1].lstrip().startswith("# copy\n")
    assert str(run) not in card
    assert (copy / "samples.png").read_bytes() == before["samples.png"]
    assert (copy / "train_config.json").read_bytes() == before["train_config.json"]
    assert not (copy / "checkpoint-3").exists() and not (copy / "logs").exists()

    fresh = tmp_path / "fresh"
    loaded.save_pretrained(
        fresh, description="Fine-tuned further.", sample_grid=PIL.Image.new("RGB", (8, 8))
    )
    card = (fresh / "README.md").read_text()
    assert "Fine-tuned further." in card and "Trained for 3 steps" not in card
    assert PIL.Image.open(fresh / "samples.png").size == (8, 8)
    assert (fresh / "train_config.json").read_bytes() == before["train_config.json"]

    built = tmp_path / "built"
    _learned_variance_pipe(tiny_unet).save_pretrained(built)  # built in memory: nothing to carry
    assert not (built / "train_config.json").exists() and not (built / "samples.png").exists()


def _write_package(root, name, scheduling_source):
    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "my_scheduling.py").write_text(textwrap.dedent(scheduling_source))
    (package / "helper_a.py").write_text("from .helper_b import B\n\nA = B + 1\n")
    (package / "helper_b.py").write_text("B = 1\n")


def _import_from(root, module, monkeypatch):
    monkeypatch.syspath_prepend(str(root))
    return __import__(module, fromlist=["MyScheduler"]).MyScheduler


def test_custom_component_code_is_copied_with_its_imports(tiny_unet, tmp_path, monkeypatch):
    source = """
        from diffusers import DDPMScheduler

        from .helper_a import A
        from .helper_b import B


        class MyScheduler(DDPMScheduler):
            pass
        """
    _write_package(tmp_path, "custom_ok", source)
    scheduler_class = _import_from(tmp_path, "custom_ok.my_scheduling", monkeypatch)
    folder = tmp_path / "saved"
    HFDDPMPipeline(tiny_unet(), scheduler_class(num_train_timesteps=T)).save_pretrained(folder)
    assert json.loads((folder / "model_index.json").read_text())["scheduler"] == [
        "my_scheduling",
        "MyScheduler",
    ]
    copied = {p.name for p in (folder / "scheduler").iterdir() if p.suffix == ".py"}
    assert copied == {"my_scheduling.py", "helper_a.py", "helper_b.py"}
    # Not hf_ddpm's own code: loading without remote code must refuse and point to the remote-code path.
    with pytest.raises(
        ValueError, match=r"\['my_scheduling', 'MyScheduler'\].*trust_remote_code=True"
    ):
        HFDDPMPipeline.from_pretrained(folder)


def test_module_reached_only_indirectly_is_refused(tiny_unet, tmp_path, monkeypatch):
    # diffusers copies only the relative imports written in the component's own file, so helper_b,
    # reached through helper_a, would be missing when the folder is loaded as remote code.
    source = """
        from diffusers import DDPMScheduler

        from .helper_a import A


        class MyScheduler(DDPMScheduler):
            pass
        """
    _write_package(tmp_path, "custom_indirect", source)
    scheduler_class = _import_from(tmp_path, "custom_indirect.my_scheduling", monkeypatch)
    pipe = HFDDPMPipeline(tiny_unet(), scheduler_class(num_train_timesteps=T))
    with pytest.raises(
        ValueError, match=r"my_scheduling.py reaches \['helper_b'\] only through other modules"
    ):
        pipe.save_pretrained(tmp_path / "saved")


@pytest.mark.parametrize(
    ("statement", "error", "message"),
    [
        ("from ..up import x", ValueError, r"line 1: remote code must import siblings"),
        ("from .sub.mod import x", ValueError, r"line 1: remote code must import siblings"),
        ("from . import helper", ValueError, r"line 1: remote code must import siblings"),
        (
            "from .missing import x",
            FileNotFoundError,
            r"imports \.missing, but .*missing.py does not exist",
        ),
    ],
)
def test_relative_imports_diffusers_cannot_follow(tmp_path, statement, error, message):
    (tmp_path / "helper.py").write_text("")
    (tmp_path / "mod.py").write_text(statement + "\n")
    with pytest.raises(error, match=message):
        relative_import_closure(tmp_path / "mod.py")


def test_closure_follows_imports_inside_functions(tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    from .b import g\n    return g\n")
    (tmp_path / "b.py").write_text("from .c import h\ng = 1\n")
    (tmp_path / "c.py").write_text("h = 2\n")
    (tmp_path / "unused.py").write_text("")
    assert {p.name for p in relative_import_closure(tmp_path / "a.py")} == {"a.py", "b.py", "c.py"}


def test_no_model_index(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"No model_index.json in the folder .*empty"):
        HFDDPMPipeline.from_pretrained(tmp_path / "empty")
    (tmp_path / "file.txt").write_text("")
    with pytest.raises(NotADirectoryError, match="file.txt is a file"):
        HFDDPMPipeline.from_pretrained(tmp_path / "file.txt")


def test_unknown_repo_while_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="not in the local cache"):
        HFDDPMPipeline.from_pretrained("nobody/nothing-here")
    with pytest.raises(
        FileNotFoundError, match="neither an existing folder nor a valid Hub repo id"
    ):
        HFDDPMPipeline.from_pretrained("no/such/folder/here")


def _edit_index(folder, **changes):
    index = json.loads((folder / "model_index.json").read_text())
    index.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del index[key]
    (folder / "model_index.json").write_text(json.dumps(index))


def test_missing_or_unusable_components(tiny_unet, tmp_path):
    _save_diffusers_ddpm_folder(tiny_unet, tmp_path)
    _edit_index(tmp_path, scheduler=None)
    with pytest.raises(ValueError, match=r"model_index.json lists no component 'scheduler'"):
        HFDDPMPipeline.from_pretrained(tmp_path)
    _edit_index(tmp_path, scheduler=["transformers", "CLIPTokenizer"])
    with pytest.raises(ValueError, match=r"component 'scheduler' is declared as \['transformers'"):
        HFDDPMPipeline.from_pretrained(tmp_path)
    _edit_index(tmp_path, scheduler=["diffusers", "NoSuchScheduler"])
    with pytest.raises(
        ValueError, match="component 'scheduler': diffusers has no class 'NoSuchScheduler'"
    ):
        HFDDPMPipeline.from_pretrained(tmp_path)
    _edit_index(tmp_path, scheduler=["diffusers", "DDPMScheduler"])
    for path in (tmp_path / "unet").iterdir():
        path.unlink()
    (tmp_path / "unet").rmdir()
    with pytest.raises(FileNotFoundError, match=r"component 'unet'.*folder .*unet is missing"):
        HFDDPMPipeline.from_pretrained(tmp_path)


def test_unet_channels_must_match_the_saved_variance_type(tiny_unet, tmp_path):
    _save_diffusers_ddpm_folder(tiny_unet, tmp_path)
    config_file = tmp_path / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config["variance_type"] = "learned_range"
    config_file.write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"out_channels=3.*variance_type='learned_range'.*needs out_channels=6"
    ):
        HFDDPMPipeline.from_pretrained(tmp_path)


def test_bad_load_and_save_arguments(tiny_unet, tmp_path):
    pipe = _learned_variance_pipe(tiny_unet)
    with pytest.raises(ValueError, match="safetensors only"):
        pipe.save_pretrained(tmp_path, safe_serialization=False)
    pipe.save_pretrained(tmp_path)
    with pytest.raises(TypeError, match=r"unexpected arguments \['text_encoder'\]"):
        HFDDPMPipeline.from_pretrained(tmp_path, text_encoder=None)


@pytest.mark.parametrize("code", [28, 5])  # ENOSPC, EIO
@pytest.mark.parametrize("content", ["text é\n", b"\x00bytes\xff"])
def test_the_one_atomic_writer_keeps_the_old_file_and_names_it(
    tmp_path, monkeypatch, code, content
):
    """core/saving.write_atomically, the writer of model folders, the calibrated config, evaluate's
    report, the metrics card and the statistics cache: a failed write (half written, as a full disk
    does) leaves the old file whole and no hidden partial file, and the error names the file."""
    from fault_injection import inject_write_faults

    from hf_ddpm.core.saving import write_atomically

    path = tmp_path / "report.json"
    path.write_text("old", encoding="utf-8")
    faults = inject_write_faults(monkeypatch, tmp_path, error=code)
    with pytest.raises(OSError) as raised:
        write_atomically(path, content)
    # Python's own shape: the OS's words as strerror, the file written (not the partial one) as filename.
    assert (raised.value.errno, raised.value.strerror) == (
        code,
        os.strerror(code),
    ) and faults.failed
    assert raised.value.filename == str(path)
    assert str(raised.value) == f"[Errno {code}] {os.strerror(code)}: {str(path)!r}"
    assert path.read_text(encoding="utf-8") == "old" and sorted(os.listdir(tmp_path)) == [path.name]
    faults.enabled = False
    write_atomically(path, content)
    written = path.read_bytes()
    assert written == (content.encode("utf-8") if isinstance(content, str) else content)
    assert sorted(os.listdir(tmp_path)) == [path.name]
