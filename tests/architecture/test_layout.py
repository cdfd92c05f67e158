"""The package layout is the architecture: these tests fail when a change breaks it.

- ``hf_ddpm/core`` is the remote-code closure every saved model carries: flat, sibling imports only as
  ``from .module import name`` (what diffusers' loader follows), nothing beyond torch, numpy, PIL,
  diffusers and what diffusers itself installs, and no module that the pipelines and the scheduler do
  not reach.
- Dependencies point one way: core <- data, hub <- sampling <- evaluation <- training <- cli.
- No module imports another module's private (underscore) names.
- The bundled model's copies of core are byte-identical to their sources.
"""

import ast
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import hf_ddpm
from hf_ddpm.hub.bundled import REFRESH_COMMAND, bundled_model_path, remote_code_sources

PACKAGE = Path(hf_ddpm.__file__).resolve().parent
CORE_ALLOWED = {"torch", "numpy", "PIL", "diffusers", "huggingface_hub", "safetensors"}
# Which subpackages each may import (besides itself); the picture in docs/ARCHITECTURE.md.
ALLOWED_DEPENDENCIES = {
    "core": set(),
    "data": set(),
    "hub": {"core", "data", "hf_ddpm"},
    "sampling": {"core", "data", "hub"},
    "evaluation": {"core", "data", "hub", "sampling"},
    "training": {"core", "data", "evaluation", "hub", "sampling"},
    "cli": {"core", "data", "evaluation", "hub", "training", "sampling"},
}


def _sources():
    return sorted(
        p for p in PACKAGE.rglob("*.py") if "pretrained" not in p.relative_to(PACKAGE).parts
    )


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name, [alias.name]
        elif isinstance(node, ast.ImportFrom):
            yield node, node.module or "", [alias.name for alias in node.names]


def _where(path, node):
    return f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"


def test_core_is_flat_and_imports_only_its_siblings_and_allowed_libraries():
    core = PACKAGE / "core"
    assert not [p for p in core.iterdir() if p.is_dir() and p.name != "__pycache__"], (
        "core/ must stay flat: diffusers does not follow `from .sub.module import` into a saved folder"
    )
    bad = []
    for path in sorted(core.glob("*.py")):
        for node, module, _ in _imports(path):
            level = getattr(node, "level", 0)
            if level:
                if (
                    level != 1
                    or not module
                    or "." in module
                    or not (core / f"{module}.py").is_file()
                ):
                    bad.append(
                        f"{_where(path, node)}: relative import must be `from .sibling import`"
                    )
                continue
            top = module.split(".")[0]
            if top == "__future__" or top in sys.stdlib_module_names or top in CORE_ALLOWED:
                continue
            bad.append(f"{_where(path, node)}: core may not import {module!r}")
    assert not bad, "\n".join(bad)


# What diffusers loads from a saved folder: the pipeline (and its edit pipelines) and the scheduler.
REMOTE_CODE_ENTRY_POINTS = (
    "pipeline",
    "pipeline_inpaint",
    "pipeline_img2img",
    "scheduling",
    "scheduling_ddim",
)


def _relative_imports(path):
    return {
        module
        for node, module, _ in _imports(path)
        if isinstance(node, ast.ImportFrom) and node.level == 1 and module
    }


def test_every_core_module_is_reached_from_a_pipeline_or_the_scheduler():
    """core/ holds what a saved model runs and nothing else: each of its modules is reached from an
    entry point through ``from .x import`` lines (what diffusers follows), so each is carried and used."""
    core = PACKAGE / "core"
    reached, pending = set(), list(REMOTE_CODE_ENTRY_POINTS)
    while pending:
        module = pending.pop()
        if module not in reached:
            reached.add(module)
            pending += _relative_imports(core / f"{module}.py")
    unreached = sorted({p.stem for p in core.glob("*.py")} - {"__init__"} - reached)
    assert not unreached, (
        f"{unreached}: no pipeline or scheduler imports them, so no saved model carries or runs them; "
        "move them out of core"
    )


def _subpackage(path):
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem


def test_dependencies_point_one_way():
    bad = []
    for path in _sources():
        own = _subpackage(path)
        if own == "__init__":
            continue
        for node, module, _ in _imports(path):
            if getattr(node, "level", 0) or not module.startswith("hf_ddpm"):
                continue
            parts = module.split(".")
            target = parts[1] if len(parts) > 1 else "hf_ddpm"
            if target != own and target not in ALLOWED_DEPENDENCIES[own]:
                bad.append(f"{_where(path, node)}: {own} may not import {module}")
    assert not bad, "\n".join(bad)


def test_no_module_imports_another_modules_private_names():
    bad = []
    for path in _sources():
        for node, module, names in _imports(path):
            ours = getattr(node, "level", 0) or module.startswith("hf_ddpm")
            if ours and isinstance(node, ast.ImportFrom):
                bad += [f"{_where(path, node)}: {module}.{n}" for n in names if n.startswith("_")]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


@pytest.mark.skipif(bundled_model_path() is None, reason="this checkout ships no bundled model")
def test_bundled_models_code_is_its_sources_copy():
    folder = bundled_model_path()
    wanted = remote_code_sources(folder)
    present = set(folder.rglob("*.py"))
    stale = sorted(str(p.relative_to(folder)) for p in present - set(wanted))
    missing = sorted(str(p.relative_to(folder)) for p in set(wanted) - present)
    differ = sorted(
        str(copy.relative_to(folder))
        for copy, source in wanted.items()
        if copy in present and copy.read_bytes() != source.read_bytes()
    )
    assert not (stale or missing or differ), (
        f"the bundled model's remote code drifted from hf_ddpm/core: differ {differ}, missing {missing}, "
        f"stale {stale}. Refresh it (no retraining) with: {REFRESH_COMMAND}"
    )


@pytest.mark.skipif(bundled_model_path() is None, reason="this checkout ships no bundled model")
def test_bundled_model_generates_the_same_images_through_its_own_code_and_the_package():
    """The folder's remote code (what a user without hf_ddpm runs) and the installed package agree bit
    for bit, so re-saving the folder with today's core changed no image."""
    from diffusers import DiffusionPipeline

    from hf_ddpm import HFDDPMPipeline

    def draw(pipe):
        pipe.set_progress_bar_config(disable=True)
        kwargs = dict(batch_size=3, num_inference_steps=8, output_type="np")
        return pipe(
            class_labels=[1, 4, 7], generator=torch.Generator().manual_seed(3), **kwargs
        ).images

    remote = DiffusionPipeline.from_pretrained(bundled_model_path(), trust_remote_code=True)
    assert type(remote).__module__.startswith("diffusers_modules")
    installed = HFDDPMPipeline.from_pretrained(bundled_model_path())
    np.testing.assert_array_equal(draw(remote), draw(installed))


def test_the_architecture_picture_matches_the_code():
    import subprocess

    script = PACKAGE.parent / "docs" / "import_graph.py"
    if not script.is_file():
        pytest.skip("no docs/ in this installation")
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(bundled_model_path() is None, reason="this checkout ships no bundled model")
def test_bundled_model_draws_the_images_it_drew_before_the_layout_change():
    """A regression pin, not an oracle: 4 class-conditional digits in 20 steps, drawn with a fixed seed
    by the code before this round's move and refactors (commit 629b38b) and saved as 8-bit images (what
    output_type="pil" gives). The same draw today must give the same bytes."""
    from hf_ddpm import HFDDPMPipeline

    reference = np.load(
        Path(__file__).resolve().parents[1] / "fixtures" / "bundled_mnist5k_629b38b.npz"
    )["images"]
    pipe = HFDDPMPipeline.from_pretrained(bundled_model_path())
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        batch_size=4,
        class_labels=[1, 2, 3, 4],
        num_inference_steps=20,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    np.testing.assert_array_equal((images * 255).round().astype(np.uint8), reference)


def _statement_strings(tree):
    """The text of the string literals of each statement, docstrings left out, by line."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for statement in ast.walk(tree):
        if not isinstance(statement, ast.stmt) or isinstance(
            statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
        ):
            continue
        inner = [n for n in ast.iter_child_nodes(statement) if not isinstance(n, ast.stmt)]
        texts = [
            node.value
            for child in inner
            for node in ast.walk(child)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ]
        if texts:
            yield statement.lineno, " ".join(texts)


def test_core_messages_say_that_hf_ddpm_commands_come_with_hf_ddpm():
    """A saved model's code runs where only diffusers is installed: a message of core/ that tells its
    user to run an `hf-ddpm` command says that the command comes with hf_ddpm."""
    import re

    from hf_ddpm.cli import SUBCOMMANDS

    command = re.compile(rf"hf-ddpm ({'|'.join(map(re.escape, SUBCOMMANDS))})\b")
    bad = []
    for path in sorted((PACKAGE / "core").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for line, text in _statement_strings(tree):
            if command.search(text) and "hf_ddpm installed" not in text:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {text[:120]}")
    assert not bad, "\n".join(bad)
