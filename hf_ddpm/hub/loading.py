"""Loading a saved pipeline folder or Hub repo into the installed hf_ddpm classes, with no remote code run.

``HFDDPMPipeline.from_pretrained`` comes here when hf_ddpm is installed; a remote-code copy of the
pipeline (a saved folder loaded by diffusers alone) defers to ``DiffusionPipeline.from_pretrained``
instead, so saved folders do not carry this module.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
from pathlib import Path
from typing import Any

from hf_ddpm.core.saving import MODEL_INDEX

_INSTALLED_PACKAGE = "hf_ddpm.core"
# The folders hf-ddpm train checkpoints into (training/checkpointing.py writes them), inside the run's folder.
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
# Weight formats this project never reads: skipping them keeps downloads of diffusers repos small.
_IGNORED_DOWNLOADS = ["*.msgpack", "*.h5", "*.onnx", "*.ckpt", "*.onnx_data"]


def resolve_pipeline_folder(
    path_or_repo_id: str | os.PathLike,
    *,
    revision: str | None = None,
    token: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> Path:
    """A local folder as is, or a Hub repo id downloaded with ``snapshot_download``; checks model_index.json."""
    path = Path(path_or_repo_id)
    if path.is_dir():
        folder = path
        where = f"the folder {folder}"
    elif path.exists():
        raise NotADirectoryError(f"{path} is a file; pass the folder that holds {MODEL_INDEX}.")
    else:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )

        try:
            folder = Path(
                snapshot_download(
                    str(path_or_repo_id),
                    revision=revision,
                    token=token,
                    cache_dir=cache_dir,
                    local_files_only=local_files_only,
                    ignore_patterns=_IGNORED_DOWNLOADS,
                )
            )
        except HFValidationError as error:
            raise FileNotFoundError(
                f"{path_or_repo_id!r} is neither an existing folder nor a valid Hub repo id ('user/name')."
            ) from error
        except RepositoryNotFoundError as error:
            raise FileNotFoundError(
                f"No folder {path_or_repo_id!r} here and no Hub repo of that name (or it is private: "
                "pass token=...)."
            ) from error
        except LocalEntryNotFoundError as error:
            raise FileNotFoundError(
                f"No folder {path_or_repo_id!r} here, and the Hub repo of that name is not in the local "
                "cache while the Hub cannot be reached (HF_HUB_OFFLINE=1, or no network)."
            ) from error
        where = f"the Hub repo {path_or_repo_id} (downloaded to {folder})"
    if not (folder / MODEL_INDEX).is_file():
        if CHECKPOINT_NAME.match(folder.name):
            # hf-ddpm train's checkpoint-N holds training state; the run's pipeline is its parent.
            parent = folder.parent
            advice = (
                f"pass the run's folder {parent}, which holds the pipeline"
                if (parent / MODEL_INDEX).is_file()
                else f"the run saves its pipeline in {parent} when it ends; to continue training, use "
                "hf-ddpm train --resume-from-checkpoint"
            )
            raise FileNotFoundError(
                f"{where} is a training checkpoint ({folder.name}), not a pipeline: {advice}."
            )
        raise FileNotFoundError(
            f"No {MODEL_INDEX} in {where}: it is not a saved diffusers pipeline. "
            "Save one with HFDDPMPipeline.save_pretrained(folder)."
        )
    return folder


def _installed_class(module: str, class_name: str, component: str) -> type:
    if not module.isidentifier():
        raise ValueError(f"component {component!r}: {module!r} is not a module name.")
    try:
        return getattr(importlib.import_module(f".{module}", _INSTALLED_PACKAGE), class_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"component {component!r} is declared as [{module!r}, {class_name!r}], which the installed "
            f"hf_ddpm does not provide. To run the folder's own code, load it with "
            "diffusers.DiffusionPipeline.from_pretrained(..., trust_remote_code=True)."
        ) from error


def _component_class(entry: Any, component: str, folder: Path) -> type:
    import diffusers

    if not (isinstance(entry, list | tuple) and len(entry) == 2) or entry[0] is None:
        raise ValueError(
            f"{folder / MODEL_INDEX} has no usable entry for the component {component!r} "
            f"(got {entry!r}); expected [library or module file, class name]."
        )
    library, class_name = entry
    if library == "diffusers":
        cls = getattr(diffusers, class_name, None)
        if cls is None:
            raise ValueError(f"component {component!r}: diffusers has no class {class_name!r}.")
        return cls
    if (folder / component / f"{library}.py").is_file():
        return _installed_class(library, class_name, component)
    raise ValueError(
        f"component {component!r} is declared as [{library!r}, {class_name!r}], but {component}/"
        f"{library}.py is missing and only 'diffusers' components or hf_ddpm's own files are supported."
    )


def _load_component(cls: type, folder: Path, torch_dtype: Any) -> Any:
    from diffusers import ConfigMixin, ModelMixin

    if issubclass(cls, ModelMixin):
        kwargs = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
        return cls.from_pretrained(folder, **kwargs)
    if issubclass(cls, ConfigMixin):
        return cls.from_config(cls.load_config(folder))
    raise TypeError(
        f"Cannot load {cls.__name__} from {folder}: not a diffusers model or scheduler."
    )


def load_pipeline(
    pipeline_class: type,
    path_or_repo_id: str | os.PathLike,
    *,
    convert_scheduler: bool = True,
    torch_dtype: Any = None,
    revision: str | None = None,
    token: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    **components: Any,
) -> Any:
    """Build ``pipeline_class`` from a saved folder or Hub repo without running the folder's code.

    Args:
        pipeline_class: ``HFDDPMPipeline`` (or a subclass).
        path_or_repo_id: a local folder, or a Hub repo id (downloaded with ``snapshot_download``).
        convert_scheduler: turn a diffusers ``DDPMScheduler`` into an ``HFDDPMScheduler`` with the same
            config (the default); False keeps the saved class.
        torch_dtype: dtype for the models' weights.
        revision, token, cache_dir, local_files_only: passed to ``snapshot_download``.
        **components: ready-made components (``unet=...``, ``scheduler=...``) that replace saved ones.
    """
    parameters = inspect.signature(pipeline_class.__init__).parameters
    # Components have no default, or are optional components (None when the index has none); options
    # (e.g. null_class_label) have a default, and are read from the index.
    optional = set(getattr(pipeline_class, "_optional_components", ()))
    expected = [
        n for n, p in parameters.items() if n != "self" and (p.default is p.empty or n in optional)
    ]
    options = [n for n, p in parameters.items() if n not in ("self", *expected)]
    unknown = sorted(set(components) - set(expected) - set(options))
    if unknown:
        raise TypeError(
            f"{pipeline_class.__name__}.from_pretrained got unexpected arguments {unknown}; components are "
            f"{expected}, options are convert_scheduler, torch_dtype, revision, token, cache_dir, "
            "local_files_only."
        )
    folder = resolve_pipeline_folder(
        path_or_repo_id,
        revision=revision,
        token=token,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
    )
    index = json.loads((folder / MODEL_INDEX).read_text(encoding="utf-8"))
    loaded = dict(components)
    loaded.update((n, index[n]) for n in options if n in index and n not in components)
    for name in expected:
        if name in loaded:
            continue
        if name in optional and (name not in index or index[name][0] is None):
            continue
        if name not in index:
            raise ValueError(
                f"{folder / MODEL_INDEX} lists no component {name!r}; {pipeline_class.__name__} needs "
                f"{expected}."
            )
        cls = _component_class(index[name], name, folder)
        if not (folder / name).is_dir():
            raise FileNotFoundError(
                f"component {name!r}: {MODEL_INDEX} declares it, but the folder {folder / name} is missing."
            )
        loaded[name] = _load_component(cls, folder / name, torch_dtype)
    scheduler = loaded.get("scheduler")
    if (
        convert_scheduler
        and "scheduler" not in components
        and type(scheduler).__name__ == "DDPMScheduler"
    ):
        scheduler_class = _installed_class("scheduling", "HFDDPMScheduler", "scheduler")
        loaded["scheduler"] = scheduler_class.from_config(scheduler.config)
    pipeline = pipeline_class(**loaded)
    # What diffusers' own from_pretrained records (``pipe.name_or_path``); a save or push of this
    # pipeline finds the folder's card and training files through it (source_folder).
    pipeline.register_to_config(_name_or_path=str(path_or_repo_id))
    return pipeline
