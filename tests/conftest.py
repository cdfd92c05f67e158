"""Test-session settings: no test touches the network.

These variables must be set before huggingface_hub, diffusers or gradio are imported, which is why they
live at module level here (pytest imports conftest.py before any test module).
"""

import atexit
import os
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
# An empty Hugging Face cache of the session's own, so that no test sees (or depends on) what this machine
# happens to have downloaded before: "not cached" errors are the same on every machine.
_HF_HOME = tempfile.mkdtemp(prefix="hf_ddpm_tests_hf_home_")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ["HF_HOME"] = _HF_HOME
os.environ.pop("HF_HUB_CACHE", None)
os.environ.pop("HF_DATASETS_CACHE", None)
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("NO_PROXY", "localhost,127.0.0.1")
os.environ.setdefault("no_proxy", "localhost,127.0.0.1")
# One intra-op thread: the tiny test UNets run ~20x faster single-threaded on shared 2-core machines, and
# subprocesses (torchrun ranks, remote-code loads) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")


# --- Loopback Hub (issue 3) -------------------------------------------------------------------------
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def hub_server(monkeypatch, tmp_path):
    """A loopback Hub server (tests/hub_server.py), with huggingface_hub pointed at it for this test.

    huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE once, at import, so the fixture patches the
    constants it derives from them (and the endpoint of the module-level HfApi that diffusers' helpers
    are bound to). It also gives the test its own Hub cache. ``server.env`` holds the environment for a
    subprocess that should talk to the same server.
    """
    from hub_server import HubServer
    from huggingface_hub import constants, hf_api

    server = HubServer().start()
    cache = tmp_path / "hf_home"
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        server.url + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache / "hub"))
    monkeypatch.setattr(hf_api.api, "endpoint", server.url)
    server.env = {
        **os.environ,
        "HF_ENDPOINT": server.url,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(cache),
        "HF_MODULES_CACHE": str(tmp_path / "hf_modules"),
    }
    yield server
    server.stop()


@pytest.fixture
def no_hub_retry_sleep(monkeypatch):
    """Skip huggingface_hub's retry back-off, so that uploads to a failing loopback Hub fail fast."""
    import time

    from huggingface_hub.utils import _http

    class _NoSleep:
        def __getattr__(self, name):
            return getattr(time, name)

        @staticmethod
        def sleep(seconds):
            pass

    monkeypatch.setattr(_http, "time", _NoSleep())


def _tiny_unet(in_channels=3, out_channels=None, num_class_embeds=None, seed=0, sample_size=8):
    """The tests' tiny UNet; test modules that build one at module scope import this function."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=out_channels or in_channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        num_class_embeds=num_class_embeds,
    ).eval()


@pytest.fixture
def tiny_unet():
    """Factory for an 8x8 UNet2DModel small enough for CPU tests: ``tiny_unet(in_channels=3, ...)``."""
    return _tiny_unet


_BLOCK_HF_DDPM = """
import importlib.abc, sys
class _BlockHFDDPM(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "hf_ddpm" or name.startswith("hf_ddpm."):
            raise ModuleNotFoundError("hf_ddpm is blocked: this process must work without it")
sys.meta_path.insert(0, _BlockHFDDPM())
"""


@pytest.fixture
def run_without_hf_ddpm(tmp_path):
    """Run a Python snippet in a fresh interpreter in which ``import hf_ddpm`` fails.

    ``python -I`` drops the working directory, PYTHONPATH and user site from sys.path, and a meta-path
    finder refuses hf_ddpm even if it is installed. diffusers gets its own module cache, so no copy of
    the remote code from another test can stand in. Returns the CompletedProcess; fails the test with
    the subprocess's output when it exits non-zero.
    """
    import subprocess
    import sys

    def run(code, env=None, timeout=240):
        script = tmp_path / "without_hf_ddpm.py"
        script.write_text(_BLOCK_HF_DDPM + code)
        env = dict(env or os.environ)
        env.setdefault("HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
        env.setdefault("OMP_NUM_THREADS", "1")
        result = subprocess.run(
            [sys.executable, "-I", str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            pytest.fail(
                f"subprocess failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    return run


@pytest.fixture(scope="session")
def tiny_dinov2_dir(tmp_path_factory):
    """A randomly initialised 1-layer DINOv2 (hidden size 16, 224-pixel input) saved to a folder: the
    feature extractor's tests and evaluate's fd-dinov2 load it as they would a Hub model."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        patch_size=14,
        image_size=224,
    )
    path = tmp_path_factory.mktemp("dinov2")
    Dinov2Model(config).save_pretrained(path)
    return str(path)


# --- Training runs and subprocesses ------------------------------------------------------------------
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Two CPU processes (gloo): `accelerate launch --cpu --num_processes 2` silently runs one, torchrun two.
TORCHRUN_TWO = (
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc_per_node",
    "2",
)
# The smallest real training run: the bundled 8x8 digits, the tiny UNet, 2 steps of 20 timesteps, no
# checkpoints, grids or loggers; each test adds what it is about.
TINY_TRAINING = {
    "dataset": "sklearn-digits",
    "model_preset": "tiny",
    "resolution": 8,
    "batch_size": 8,
    "max_steps": 2,
    "num_train_timesteps": 20,
    "checkpoint_every": 0,
    "sample_every": 0,
    "dataloader_num_workers": 0,
    "logger": "none",
}


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a test's subprocess: one thread, and this checkout first on the path."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **extra}


def run_subprocess(command, cwd=None, timeout=300, env=None) -> subprocess.CompletedProcess:
    """``command`` as a test's subprocess (in :func:`subprocess_env` unless ``env`` is given), its output
    captured as text."""
    return subprocess.run(
        list(command),
        env=env or subprocess_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tiny_train_config(folder, **overrides):
    """:data:`TINY_TRAINING` writing to ``folder``/out, with ``overrides``, as a TrainConfig."""
    from hf_ddpm.training.train_config import TrainConfig

    return TrainConfig(**{**TINY_TRAINING, "output_dir": str(Path(folder) / "out"), **overrides})


def checkpoint_weights(path) -> dict[str, torch.Tensor]:
    """The model and EMA weights of a training checkpoint folder, keyed ``group/name``."""
    from hf_ddpm.training.checkpointing import load_checkpoint

    tensors, _ = load_checkpoint(path)
    return {f"{group}/{k}": v for group in ("model", "ema") for k, v in tensors[group].items()}
