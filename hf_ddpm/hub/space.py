"""``hf-ddpm space``: create (or update) a Gradio Space on the Hub that serves a model with spaces_app/.

The Space's folder is assembled in a temporary directory, then uploaded in one commit:

- the files of ``spaces_app/`` (``app.py``, ``requirements.txt``, helpers), and its example digits
  (``examples/``) only for a model trained on a bundled digit set (its ``train_config.json`` names one);
- its ``README.md`` with the model id in the front matter's ``models:`` list, which is where the app
  looks for its model when ``HF_DDPM_MODEL`` is not set;
- a copy of the hf_ddpm modules the app uses (the pipeline, the scheduler, the variational bound and
  the image transform of training, with what they import), so the deployed Space loads the model
  without remote code and has the likelihood tab, without hf_ddpm being on PyPI.

The upload goes through huggingface_hub: ``create_repo(repo_type="space", space_sdk="gradio",
exist_ok=True)``, then ``upload_folder``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import SpaceCard, create_repo, upload_folder
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from hf_ddpm.data.bundled_datasets import IMAGE_FOLDER, trained_on, trained_on_bundled_data
from hf_ddpm.data.image_datasets import model_train_record

_PACKAGE_DIR = Path(__file__).resolve().parents[1]
# spaces_app/ sits next to the package in a source checkout (and in an editable install).
DEFAULT_APP_DIR = _PACKAGE_DIR.parent / "spaces_app"
_APP_FILES = ("app.py", "requirements.txt", "README.md")
# Held-out MNIST digits: examples for a model of the bundled digit sets, none for one of photos.
_EXAMPLES = "examples"
_SKIPPED_NAMES = ("__pycache__", "*.pyc", ".*")
_SKIPPED = shutil.ignore_patterns(*_SKIPPED_NAMES)
# Modules the app imports beyond hf_ddpm's public names: the transform that makes an upload the model's
# input exactly as in training, so the likelihood tab's bits/dim match `hf-ddpm evaluate`, and the
# sampler registry, so the page offers the choices `hf-ddpm sample` has.
_APP_MODULES = ("data.image_transform", "sampling.samplers")


def _check_repo_id(kind: str, repo_id: str) -> None:
    if "/" not in repo_id:
        raise ValueError(f"{kind} must be a Hub repo id of the form 'user/name', got {repo_id!r}.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"{kind} {repo_id!r} is not a valid Hub repo id: {error}") from error


def package_modules() -> list[Path]:
    """The hf_ddpm source files a Space needs, as paths relative to the package: ``__init__.py`` of the
    package and of each subpackage on the way, the modules of its public names (pipeline, scheduler,
    variational bound), the image transform and the pipeline's loader, with every sibling they import."""
    from hf_ddpm import PUBLIC_API
    from hf_ddpm.core.pipeline_base import INSTALLED_LOADER
    from hf_ddpm.core.remote_code import relative_import_closure

    # The copied pipeline runs as the installed package, so its from_pretrained imports this loader.
    loader = INSTALLED_LOADER.removeprefix("hf_ddpm.")
    files = {Path("__init__.py")}
    for module in {*PUBLIC_API.values(), *_APP_MODULES, loader}:
        source = _PACKAGE_DIR / f"{module.replace('.', '/')}.py"
        for path in relative_import_closure(source):
            relative = path.relative_to(_PACKAGE_DIR)
            files.add(relative)
            files.update(
                parent / "__init__.py" for parent in relative.parents if parent != Path(".")
            )
    return sorted(files)


def _check_arguments(app_dir: Path, model_id: str) -> None:
    missing = [name for name in _APP_FILES if not (app_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{app_dir} is not a Space folder: it has no {', '.join(missing)}. "
            "Pass --app-dir pointing at hf_ddpm's spaces_app/ folder."
        )
    if Path(model_id).exists():
        raise ValueError(
            f"--model {model_id!r} is a local folder, which a Space cannot read: push it to the Hub "
            "first (HFDDPMPipeline.push_to_hub, or `hf-ddpm train --push-to-hub`) and pass its repo id."
        )
    _check_repo_id("--model", model_id)


def digit_examples_fit(model_id: str, token: str | None = None) -> tuple[bool, str]:
    """Whether the Space's example digits suit ``model_id``: it was trained on a bundled set (all of them
    digits), as the ``train_config.json`` in its Hub repo says (:func:`.bundled_datasets.trained_on`, which
    the Space reads too); and why, in words."""
    record, where = model_train_record(model_id, token=token)
    data = trained_on(record)
    if record is None:
        return False, f"no train_config.json in {where}"
    if data is None:
        return (
            False,
            f"the train_config.json in {where} names neither a dataset nor an image folder",
        )
    if data == IMAGE_FOLDER:
        return False, f"the model was trained on the image folder {record['train_data_dir']}"
    if not trained_on_bundled_data(data):
        return False, f"the model was trained on {data}, not a bundled digit set"
    return True, f"the model was trained on the bundled {data}"


def prepare_space_folder(
    app_dir: str | Path, model_id: str, destination: str | Path, examples: bool = False
) -> Path:
    """Write the Space's files into ``destination`` (created) and return it.

    Args:
        app_dir: the Space template folder (``spaces_app/``): must hold app.py, README.md and
            requirements.txt.
        model_id: Hub repo id of the pipeline the Space serves, written into README.md ``models:``.
        destination: an empty or missing folder.
        examples: copy the template's example digits (``examples/``) too; only for a model of digits
            (:func:`digit_examples_fit`).

    Raises:
        FileNotFoundError: ``app_dir`` lacks one of the files above.
        ValueError: ``model_id`` is not a Hub repo id (a local folder cannot be read by a Space).
    """
    app_dir, destination = Path(app_dir), Path(destination)
    _check_arguments(app_dir, model_id)
    skipped = _SKIPPED if examples else shutil.ignore_patterns(*_SKIPPED_NAMES, _EXAMPLES)
    shutil.copytree(app_dir, destination, ignore=skipped, dirs_exist_ok=True)
    card = SpaceCard.load(app_dir / "README.md")
    card.data.models = [model_id]
    card.save(destination / "README.md")
    package = destination / "hf_ddpm"
    package.mkdir(exist_ok=True)
    for relative in package_modules():
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(_PACKAGE_DIR / relative, package / relative)
    return destination


def deploy_space(
    space_id: str,
    model_id: str,
    app_dir: str | Path = DEFAULT_APP_DIR,
    private: bool = False,
    token: str | None = None,
) -> str:
    """Create the Gradio Space ``space_id`` if needed and upload the app serving ``model_id``.

    Returns the Space's URL. Raises ValueError or FileNotFoundError for bad arguments (before any
    network access), and huggingface_hub's errors for Hub failures.
    """
    _check_repo_id("The Space id", space_id)
    _check_arguments(Path(app_dir), model_id)
    examples, why = digit_examples_fit(model_id, token)
    # Printed, not logged: the command configures no logging, and the user must see what was left out.
    print(f"hf-ddpm space: {'with' if examples else 'without'} the example digits: {why}")
    with tempfile.TemporaryDirectory(prefix="hf_ddpm_space_") as tmp:
        folder = prepare_space_folder(app_dir, model_id, Path(tmp) / "space", examples)
        url = create_repo(
            space_id,
            repo_type="space",
            space_sdk="gradio",
            exist_ok=True,
            private=private,
            token=token,
        )
        upload_folder(
            repo_id=space_id,
            repo_type="space",
            folder_path=folder,
            commit_message=f"Deploy the hf_ddpm Space for {model_id}",
            token=token,
        )
    return str(url)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``hf-ddpm space``."""
    parser.add_argument("space_id", help="the Space to create or update, as 'user/name'")
    parser.add_argument(
        "--app-dir",
        type=Path,
        default=DEFAULT_APP_DIR,
        help=f"the Space template folder (default: {DEFAULT_APP_DIR})",
    )
    parser.add_argument("--private", action="store_true", help="create the Space as private")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``hf-ddpm space``. Bad options are raised as ``ValueError`` or
    ``FileNotFoundError`` and a refused upload as huggingface_hub's error; cli.py reports either as one
    line (exit 2 and 1)."""
    url = deploy_space(args.space_id, args.model, args.app_dir, args.private, args.token)
    print(f"hf-ddpm space: deployed {args.model} to {url}")
    return 0
