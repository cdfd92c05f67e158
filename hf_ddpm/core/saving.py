"""The folder layout ``HFDDPMPipeline.save_pretrained`` writes.

The layout is the one ``DiffusionPipeline.from_pretrained(folder_or_repo, trust_remote_code=True)`` reads
on a machine without hf_ddpm (diffusers 0.42), and ``hf_ddpm.hub.loading`` reads where it is installed:

- ``model_index.json`` with ``_class_name: ["pipeline", "HFDDPMPipeline"]`` and ``pipeline.py`` plus its
  relative-import closure (``remote_code``) at the root: the math modules, ``pipeline_base.py``, the edit
  pipelines ``pipeline_inpaint.py`` and ``pipeline_img2img.py``, and this module with ``remote_code.py``,
  ``model_card.py`` and ``pushing.py``, so that a pipeline loaded as remote code can save and push itself;
- a component whose class is not diffusers' own, e.g. the scheduler, recorded as
  ``["scheduling", "HFDDPMScheduler"]`` with ``scheduler/scheduling.py`` and every module it imports
  relatively copied beside its config;
- diffusers' own components recorded as ``["diffusers", "<Class>"]``; weights in safetensors only;
- the model card (``model_card``) and, when given, the sample grid.

Copied into every saved folder, so at module level it imports only the standard library and its
siblings; huggingface_hub and diffusers are imported where they are used.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .model_card import MODEL_CARD, SAMPLE_GRID, card_reference, model_card_text, retarget_card
from .remote_code import copy_source_closure

MODEL_INDEX = "model_index.json"


def _is_diffusers_class(cls: type) -> bool:
    return cls.__module__.split(".")[0] == "diffusers"


def plain_file_mode(folder: Path) -> int:
    """The mode a plain ``open()`` gives a new file in ``folder`` (0666 less the umask), read from the
    folder's own mode (0777 less the umask when it was made) without touching the process-wide umask."""
    return folder.stat().st_mode & 0o666


def give_plain_file_mode(folder: Path, pattern: str = "*.safetensors") -> None:
    """Give the files of ``folder`` matching ``pattern`` :func:`plain_file_mode`: safetensors writes
    through a private temporary file (mode 0600), which other users of a shared model folder cannot read."""
    mode = plain_file_mode(folder)
    for path in folder.glob(pattern):
        if path.is_file():
            path.chmod(mode)


def _save_component(component: Any, folder: Path, variant: str | None) -> list[str | None]:
    """Save one component under ``folder``; return its model_index.json entry."""
    from diffusers import ConfigMixin, ModelMixin

    if component is None:
        return [None, None]
    cls = type(component)
    if isinstance(component, ModelMixin):
        component.save_pretrained(folder, safe_serialization=True, variant=variant)
        give_plain_file_mode(folder)
    elif isinstance(component, ConfigMixin):
        component.save_config(folder)
    else:
        raise TypeError(
            f"Cannot save a component of type {cls.__name__} into {folder.name}/: only diffusers models "
            "(ModelMixin) and schedulers or other ConfigMixin objects are supported."
        )
    if _is_diffusers_class(cls):
        return ["diffusers", cls.__name__]
    return [copy_source_closure(cls, folder), cls.__name__]


def pipeline_options(pipeline: Any) -> dict[str, Any]:
    """The pipeline's registered options that are not components and not None (e.g. a set
    ``null_class_label``): stored in model_index.json beside the components, where both loading paths
    (``load_pipeline`` and ``DiffusionPipeline.from_pretrained``) pass them back to ``__init__``."""
    return {
        name: value
        for name, value in pipeline.config.items()
        if not name.startswith("_")
        and name not in pipeline.components
        and value is not None
        and name not in getattr(pipeline, "_optional_components", ())
    }


def save_pipeline_folder(
    pipeline: Any,
    save_directory: str | os.PathLike,
    *,
    variant: str | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    datasets: list[str] | None = None,
    tags: list[str] | None = None,
    description: str | None = None,
    sample_grid: Any = None,
) -> Path:
    """Write ``pipeline`` to ``save_directory`` in the layout both loading paths read; return the folder.

    The same code runs whether the pipeline class came from the installed package or from a remote-code
    copy, so a pipeline loaded with ``trust_remote_code=True`` and saved again stays loadable (diffusers'
    own ``save_pretrained`` would record ``diffusers_modules.local`` entries and copy no code).

    A pipeline loaded from a folder or Hub repo (see :func:`source_folder`) keeps what that folder holds
    besides the pipeline itself: its model card (pointed at the new folder or ``repo_id``), samples.png,
    train_config.json and any other top-level file. So ``from_pretrained("out/run").save_pretrained(...)``
    or ``.push_to_hub(...)`` loses nothing ``hf-ddpm train`` wrote. Card fields or ``sample_grid`` given
    here replace the carried card or grid.

    Args:
        pipeline: an ``HFDDPMPipeline`` (from either origin).
        save_directory: created if missing; files of the same names are overwritten.
        variant: weight-file variant passed to the models' ``save_pretrained``.
        repo_id, license, datasets, tags, description: model card fields (see ``write_model_card``).
        sample_grid: a PIL image saved as samples.png and shown in the card.
    """
    import diffusers

    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    source = source_folder(pipeline)
    pipeline_class = type(pipeline)
    index: dict[str, Any] = {
        "_class_name": [copy_source_closure(pipeline_class, folder), pipeline_class.__name__],
        "_diffusers_version": diffusers.__version__,
    }
    for name, component in pipeline.components.items():
        # An absent optional component (no covariance head) keeps the folder's layout as it was.
        if component is not None:
            index[name] = _save_component(component, folder / name, variant)
    index.update(pipeline_options(pipeline))
    write_atomically(folder / MODEL_INDEX, json.dumps(index, indent=2, sort_keys=True) + "\n")
    card_fields = {
        "license": license,
        "datasets": datasets,
        "tags": tags,
        "description": description,
    }
    carried = _carry_extra_files(source, folder) if source is not None else set()
    if sample_grid is not None:
        sample_grid.save(folder / SAMPLE_GRID)
    if MODEL_CARD in carried and all(value is None for value in card_fields.values()):
        if repo_id is not None or source.resolve() != folder.resolve():
            card = folder / MODEL_CARD
            reference = card_reference(folder, repo_id)
            write_atomically(card, retarget_card(card.read_text(encoding="utf-8"), reference))
    else:
        write_model_card(
            folder, repo_id=repo_id, **{k: v for k, v in card_fields.items() if v is not None}
        )
    return folder


def source_folder(pipeline: Any) -> Path | None:
    """The saved folder ``pipeline`` was loaded from, or None for one built in memory.

    It is found from ``pipeline.name_or_path`` (diffusers' record of what ``from_pretrained`` was given,
    set by both loading paths): a local folder as is, a Hub repo id through the local Hub cache only.
    """
    name = getattr(pipeline, "name_or_path", None)
    if not name:
        return None
    path = Path(name)
    if not path.is_dir():
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

        try:
            path = Path(snapshot_download(str(name), local_files_only=True))
        except (HFValidationError, LocalEntryNotFoundError, OSError):
            return None  # not a repo id, or not in the cache: then there is nothing to carry
    return path if (path / MODEL_INDEX).is_file() else None


def _carry_extra_files(source: Path, folder: Path) -> set[str]:
    """Copy the top-level files of ``source`` that are not the pipeline itself (the card, samples.png,
    train_config.json, ...) into ``folder``; return their names. Sub-folders (components, checkpoints,
    logs) and hidden files stay behind."""
    if source.resolve() == folder.resolve():
        return {p.name for p in folder.iterdir() if p.is_file()}
    carried = set()
    for path in sorted(source.iterdir()):
        if path.is_dir() or path.name.startswith(".") or path.name == MODEL_INDEX:
            continue
        if path.suffix == ".py":  # the code was just written from the running classes
            continue
        shutil.copyfile(path, folder / path.name)
        carried.add(path.name)
    return carried


def partial_path(path: str | os.PathLike) -> Path:
    """The hidden file or folder that a write of ``path`` goes through before it is renamed onto
    ``path``: ``.{name}.{pid}.partial`` beside it, one per process, so two processes writing the same
    path (a shared cache) never mix their bytes, and a leftover one is recognisably hidden and partial.
    (``data/image_grid``, which cannot import core, names its partial files by the same rule.)"""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def write_atomically(path: str | os.PathLike, content: str | bytes) -> None:
    """Write ``content`` (text, as UTF-8, or bytes) to ``path`` through a hidden partial file
    (:func:`partial_path`) and ``os.replace``, so that a reader (or a crash) never sees half a file.

    Raises:
        OSError: of the same kind (``OSError(errno, strerror, path)``: the subclass of that errno, the
            OS's words as ``strerror``, ``path`` as ``filename``, not the partial file), when the write
            fails; the old file is then whole and no partial one is left beside it.
    """
    path = Path(path)
    partial = partial_path(path)
    try:
        if isinstance(content, str):
            partial.write_text(content, encoding="utf-8")
        else:
            partial.write_bytes(content)
        partial.replace(path)
    except BaseException as error:
        partial.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno is not None:
            strerror = error.strerror or os.strerror(error.errno)
            raise OSError(error.errno, strerror, str(path)) from error
        raise


def write_model_card(
    folder: str | os.PathLike,
    *,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    datasets: list[str] | None = None,
    tags: list[str] | None = None,
    description: str | None = None,
) -> Path:
    """Write README.md (``model_card.model_card_text``) into a saved pipeline folder; return its path.

    Call it again after adding samples.png to the folder to show the grid.
    """
    folder = Path(folder)
    card = folder / MODEL_CARD
    text = model_card_text(
        folder,
        repo_id=repo_id,
        license=license,
        datasets=datasets,
        tags=tags,
        description=description,
    )
    write_atomically(card, text)
    return card
