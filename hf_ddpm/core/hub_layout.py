"""The folder layout ``HFDDPMPipeline.save_pretrained`` writes, its model card, loading it back, and pushing it.

The layout is the one ``DiffusionPipeline.from_pretrained(folder_or_repo, trust_remote_code=True)`` reads
on a machine without hf_ddpm (diffusers 0.42):

- ``model_index.json`` with ``_class_name: ["pipeline", "HFDDPMPipeline"]`` and ``pipeline.py`` (plus
  the modules it imports relatively: this file, ``variance.py``, ``diffusion_tables.py``, and the edit
  pipelines ``pipeline_inpaint.py`` and ``pipeline_img2img.py`` with their siblings) at the root;
- a component whose class is not diffusers' own, e.g. the scheduler, recorded as
  ``["scheduling", "HFDDPMScheduler"]`` with ``scheduler/scheduling.py`` and every module it imports
  relatively copied beside its config;
- diffusers' own components recorded as ``["diffusers", "<Class>"]``; weights in safetensors only.

This module is copied into saved folders with ``pipeline.py``, so at module level it imports only the
standard library; huggingface_hub and diffusers are imported where they are used.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

MODEL_INDEX = "model_index.json"
SAMPLE_GRID = "samples.png"
MODEL_CARD = "README.md"
# The distribution whose metadata may name hf_ddpm's source repository (for the card's install line).
_DISTRIBUTION = "hf-ddpm"
# How a card names its model in the usage snippets: push_folder_to_hub and a re-save point them elsewhere.
_CARD_REFERENCE = re.compile(r'from_pretrained\(\s*"([^"]*)"')
_INSTALLED_PACKAGE = "hf_ddpm.core"
# Weight formats this project never reads: skipping them keeps downloads of diffusers repos small.
_IGNORED_DOWNLOADS = ["*.msgpack", "*.h5", "*.onnx", "*.ckpt", "*.onnx_data"]
# The textual forms diffusers follows to copy a remote module's relative imports (dynamic_modules_utils).
_DIFFUSERS_RELATIVE_IMPORT = re.compile(r"^\s*from\s+\.(\S+)\s+import", flags=re.MULTILINE)


class HubPushError(RuntimeError):
    """An upload to the Hub failed; ``folder`` (the saved pipeline) is intact and the message says how to retry."""

    def __init__(self, message: str, folder: Path) -> None:
        super().__init__(message)
        self.folder = folder


# --------------------------------------------------------------------------------------------------
# Remote code: which source files a saved folder needs
# --------------------------------------------------------------------------------------------------


def relative_import_closure(source_file: str | os.PathLike) -> list[Path]:
    """``source_file`` and every sibling module it imports relatively, directly or not, found with ``ast``.

    Raises:
        ValueError: for imports diffusers cannot follow into a flat remote-code folder: ``from .. import``
            (parent packages), ``from .a.b import`` (subpackages) and ``from . import name``.
        FileNotFoundError: when a relatively imported module has no file beside ``source_file``.
    """
    source_file = Path(source_file).resolve()
    folder = source_file.parent
    found: list[Path] = []
    pending = [source_file]
    while pending:
        path = pending.pop()
        if path in found:
            continue
        found.append(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level == 0:
                continue
            where = f"{path.name}, line {node.lineno}"
            if node.level > 1 or node.module is None or "." in node.module:
                raise ValueError(
                    f"{where}: remote code must import siblings as `from .module import name`; diffusers "
                    "cannot copy parent packages, subpackages or `from . import module` into a saved folder."
                )
            target = folder / f"{node.module}.py"
            if not target.is_file():
                raise FileNotFoundError(
                    f"{where} imports .{node.module}, but {target} does not exist."
                )
            pending.append(target)
    return found


def _check_diffusers_can_follow(source_file: Path, closure: list[Path]) -> None:
    # For a local folder, diffusers copies only the relative imports written in the module file itself
    # into its module cache, not theirs; a module reached only indirectly would be missing at import.
    direct = set(_DIFFUSERS_RELATIVE_IMPORT.findall(source_file.read_text(encoding="utf-8")))
    indirect = sorted(path.stem for path in closure[1:] if path.stem not in direct)
    if indirect:
        raise ValueError(
            f"{source_file.name} reaches {indirect} only through other modules. diffusers copies just the "
            f"relative imports written in {source_file.name} itself when it loads remote code from a "
            f"folder, so add `from .<module> import ...` lines for {indirect} to {source_file.name}."
        )


def copy_source_closure(cls: type, destination: Path) -> str:
    """Copy the module defining ``cls`` and its relative imports into ``destination``; return its stem."""
    source = inspect.getsourcefile(cls)
    if source is None or cls.__module__ == "__main__":
        raise ValueError(
            f"{cls.__name__} is defined in {cls.__module__!r}, which has no importable source file; "
            "define it in a module so it can be saved as remote code."
        )
    source_path = Path(source).resolve()
    closure = relative_import_closure(source_path)
    _check_diffusers_can_follow(source_path, closure)
    destination.mkdir(parents=True, exist_ok=True)
    for path in closure:
        shutil.copyfile(path, destination / path.name)
    return source_path.stem


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------


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
        # An absent optional component (a model without a covariance head) keeps the folder's layout as it was.
        if component is not None:
            index[name] = _save_component(component, folder / name, variant)
    index.update(pipeline_options(pipeline))
    _write_atomically(folder / MODEL_INDEX, json.dumps(index, indent=2, sort_keys=True) + "\n")
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
            reference = repo_id or _local_reference(folder)
            _write_atomically(card, retarget_card(card.read_text(encoding="utf-8"), reference))
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


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


# --------------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------------


def _yaml_list(key: str, values: list[str]) -> list[str]:
    return [f"{key}:"] + [f"- {json.dumps(value)}" for value in values]


def _describe_config(folder: Path) -> list[str]:
    """One bullet per fact the saved configs give about the model, for the card."""
    lines = []
    scheduler_config = folder / "scheduler" / "scheduler_config.json"
    if scheduler_config.is_file():
        config = json.loads(scheduler_config.read_text(encoding="utf-8"))
        keys = ("num_train_timesteps", "beta_schedule", "variance_type", "prediction_type")
        facts = ", ".join(f"{key}={config[key]!r}" for key in keys if key in config)
        lines.append(f"- scheduler: {config.get('_class_name', '?')} ({facts})")
    unet_config = folder / "unet" / "config.json"
    if unet_config.is_file():
        config = json.loads(unet_config.read_text(encoding="utf-8"))
        size = config.get("sample_size")
        lines.append(
            f"- unet: {config.get('_class_name', '?')}, {config.get('in_channels')} channels, "
            f"{size}x{size} pixels"
            + (", class-conditional" if config.get("num_class_embeds") else "")
        )
    return lines


def _local_reference(folder: Path) -> str:
    return folder.as_posix()


def _display_name(reference: str) -> str:
    """The card's title for a Hub id or folder: its last part (``user/my-ddpm`` -> ``my-ddpm``)."""
    name = Path(reference).name
    return name if name not in ("", ".", "..") else Path(reference).resolve().name


def _source_repository() -> str | None:
    """hf_ddpm's source repository URL from its installed metadata (``Project-URL``), if it names one."""
    from importlib import metadata

    try:
        urls = metadata.metadata(_DISTRIBUTION).get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        return None
    for entry in urls:
        label, _, url = entry.partition(",")
        if label.strip().lower() in ("repository", "source", "source code"):
            if url.strip().startswith(("https://", "http://")):
                return url.strip()
    return None


def _install_line() -> str:
    """How to get hf_ddpm, truthfully: it is not on PyPI."""
    repository = _source_repository()
    where = (
        f"`pip install git+{repository}`"
        if repository
        else "`pip install -e .` in a checkout of its source repository"
    )
    return f"With hf_ddpm installed (it is not on PyPI: {where}; no remote code runs):"


def write_model_card(
    folder: str | os.PathLike,
    *,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    datasets: list[str] | None = None,
    tags: list[str] | None = None,
    description: str | None = None,
) -> Path:
    """Write README.md for a saved pipeline folder: YAML metadata, usage for both loading paths, samples.

    Call it again after adding samples.png to the folder to show the grid. Without ``repo_id`` the title
    and the snippets name the folder (as given); ``push_folder_to_hub`` points them at the repo.
    """
    folder = Path(folder)
    repo = repo_id or _local_reference(folder)
    call = "pipe(batch_size=4, num_inference_steps=1000)"
    unet_config = folder / "unet" / "config.json"
    if unet_config.is_file() and json.loads(unet_config.read_text()).get("num_class_embeds"):
        # A class-conditional UNet needs labels; the last embedding is the null label of guidance.
        call = (
            "pipe(batch_size=4, class_labels=[0, 1, 2, 3], guidance_scale=2.0, "
            "num_inference_steps=1000)"
        )
    all_tags = list(dict.fromkeys(["ddpm", "hf-ddpm", "diffusers", *(tags or [])]))
    front = ["---", "library_name: diffusers", "pipeline_tag: unconditional-image-generation"]
    front += [f"license: {license}"] + _yaml_list("tags", all_tags)
    if datasets:
        front += _yaml_list("datasets", list(datasets))
    front.append("---")
    body = [
        "",
        f"# {_display_name(repo)}",
        "",
        description
        or "A denoising diffusion probabilistic model (Ho, Jain & Abbeel 2020) trained with hf_ddpm "
        "and sampled by ancestral sampling.",
        "",
        *_describe_config(folder),
        "",
        "## Usage",
        "",
        "With only diffusers installed (`pip install diffusers torch`): the sampling code in this "
        "repository runs as remote code, so hf_ddpm itself need not be installed.",
        "",
        "```python",
        "from diffusers import DiffusionPipeline",
        "",
        f'pipe = DiffusionPipeline.from_pretrained("{repo}", trust_remote_code=True)',
        f"images = {call}.images",
        "```",
        "",
        _install_line(),
        "",
        "```python",
        "from hf_ddpm import HFDDPMPipeline",
        "",
        f'pipe = HFDDPMPipeline.from_pretrained("{repo}")',
        f"images = {call}.images",
        "```",
    ]
    if (folder / SAMPLE_GRID).is_file():
        body += ["", "## Samples", "", f"![samples]({SAMPLE_GRID})"]
    card = folder / MODEL_CARD
    _write_atomically(card, "\n".join(front + body) + "\n")
    return card


def retarget_card(text: str, reference: str) -> str:
    """``text`` of a model card with its usage snippets and title naming ``reference`` (a Hub repo id or
    a folder) instead of what they named before; the rest of the card is left as it is."""
    previous = dict.fromkeys(_CARD_REFERENCE.findall(text))
    for old in previous:
        text = text.replace(f'from_pretrained("{old}"', f'from_pretrained("{reference}"')
        text = re.sub(
            rf"^# {re.escape(_display_name(old))}$",
            f"# {_display_name(reference)}",
            text,
            count=1,
            flags=re.MULTILINE,
        )
    return text


# --------------------------------------------------------------------------------------------------
# Loading without remote code
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Pushing
# --------------------------------------------------------------------------------------------------


def network_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the Hub could not be reached or refused", as opposed to a bug."""
    from huggingface_hub.errors import HfHubHTTPError

    # HfHubHTTPError derives from the HTTP client's base error (httpx or httpx2, by huggingface_hub
    # version), which is also what a refused or dropped connection raises.
    return (OSError, *HfHubHTTPError.__bases__)


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    ignore_patterns: list[str] | None = None,
) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` to it in one commit; return the commit URL.

    The training command calls this for its output folder, leaving out its checkpoints and logs through
    ``ignore_patterns`` (glob patterns, as ``upload_folder`` takes them). The card's title and usage
    snippets are pointed at ``repo_id`` first (:func:`retarget_card`).

    Raises:
        HubPushError: on any network or Hub error. The folder is left as it was, and the message says
            how to retry.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / MODEL_INDEX).is_file():
        raise FileNotFoundError(
            f"No {MODEL_INDEX} in {folder}: push a folder written by save_pretrained."
        )
    card = folder / MODEL_CARD
    if card.is_file():
        text = card.read_text(encoding="utf-8")
        if (retargeted := retarget_card(text, repo_id)) != text:
            _write_atomically(card, retargeted)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message or "Upload HFDDPMPipeline with hf_ddpm",
            create_pr=create_pr,
            ignore_patterns=ignore_patterns,
        )
    except network_errors() as error:
        raise HubPushError(
            f"Pushing {folder} to the Hub repo {repo_id} failed: {error}\n"
            f"Nothing local was lost: the pipeline is saved in {folder.resolve()}. Once the Hub can be "
            "reached (and your token can write there), retry with\n"
            f"    hf_ddpm.core.hub_layout.push_folder_to_hub({str(folder.resolve())!r}, {repo_id!r})\n"
            f"or from a shell: hf upload {repo_id} {folder.resolve()} .",
            folder.resolve(),
        ) from error
    return str(commit.commit_url)


def push_pipeline_to_hub(
    pipeline: Any,
    repo_id: str,
    commit_message: str | None = None,
    private: bool = False,
    token: str | None = None,
    create_pr: bool = False,
    save_directory: str | os.PathLike | None = None,
    **card: Any,
) -> str:
    """Save ``pipeline`` (to ``save_directory`` or a new temporary folder) and push it to ``repo_id``.

    A temporary folder is removed after a successful push and kept after a failed one, so the retry
    command in the ``HubPushError`` message works. ``card`` goes to ``save_pipeline_folder``. Returns the
    URL of the commit. It is also the pipelines' ``push_to_hub`` method, ``pipeline`` their ``self``.
    """
    folder = (
        Path(save_directory) if save_directory else Path(tempfile.mkdtemp(prefix="hf_ddpm-push-"))
    )
    card.setdefault("repo_id", repo_id)
    save_pipeline_folder(pipeline, folder, **card)
    url = push_folder_to_hub(
        folder,
        repo_id,
        private=private,
        token=token,
        commit_message=commit_message,
        create_pr=create_pr,
    )
    if save_directory is None:
        shutil.rmtree(folder, ignore_errors=True)
    return url
