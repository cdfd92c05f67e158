"""The model card (README.md) of a saved pipeline folder, as text: written by ``saving``, pointed at a
Hub repo by ``pushing``.

Copied into every saved folder, so it imports only the standard library and ``class_layout`` (which
imports nothing).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .class_layout import null_label_of, num_classes_of

MODEL_CARD = "README.md"
SAMPLE_GRID = "samples.png"
# The distribution whose metadata may name hf_ddpm's source repository (for the card's install line).
_DISTRIBUTION = "hf-ddpm"
# How a card names its model in the usage snippets: push_folder_to_hub and a re-save point them elsewhere.
_CARD_REFERENCE = re.compile(r'from_pretrained\(\s*"([^"]*)"')
# The labels of the card's facts about the model, one bullet each: _describe_config writes them, and
# refresh_card_facts finds them by these.
_FACTS = ("scheduler", "unet", "covariance head", "classes")
_FACT_LINE = re.compile(rf"^- ({'|'.join(_FACTS)}): ")
_SAMPLES_SECTION = f"## Samples\n\n![samples]({SAMPLE_GRID})"


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
    head_config = folder / "covariance_head" / "config.json"
    if head_config.is_file():
        kind = _read_json(head_config).get("kind") or "kind not recorded"
        lines.append(f"- covariance head: {kind} (per-pixel optimal variance, Bao et al. 2022)")
    classes, _ = _model_classes(folder)
    if classes and isinstance(classes[0], str):
        lines.append(
            f"- classes: {', '.join(classes)} (`class_labels` takes these names, or 0..{len(classes) - 1})"
        )
    return lines


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _model_classes(folder: Path) -> tuple[list[int | str], bool]:
    """The classes a saved class-conditional pipeline draws, as its card names them (the recorded
    ``class_names``, else the integer labels that are not the null label), and whether it has a null
    label for guidance; ``([], False)`` for an unconditional one."""
    embeds = _read_json(folder / "unet" / "config.json").get("num_class_embeds")
    if not embeds:
        return [], False
    index = _read_json(folder / "model_index.json")
    null, names = index.get("null_class_label"), index.get("class_names")
    if names:
        return list(names), null is not None
    # hf-ddpm train's layout reserves the last embedding for the null label, trained or not; a null
    # label recorded elsewhere leaves every other embedding a class.
    classes = num_classes_of(embeds) if null in (None, null_label_of(embeds)) else embeds
    return [k for k in range(classes) if k != null], null is not None


def _sampling_call(folder: Path) -> str:
    """The card's example call: all T steps, and for a class-conditional model labels it has (by name
    where it records names) with guidance where it has a null label to guide against."""
    steps = _read_json(folder / "scheduler" / "scheduler_config.json").get(
        "num_train_timesteps", 1000
    )
    classes, guided = _model_classes(folder)
    if not classes:
        return f"pipe(batch_size=4, num_inference_steps={steps})"
    labels = json.dumps([classes[i % len(classes)] for i in range(4)])
    guidance = ", guidance_scale=2.0" if guided else ""
    return f"pipe(batch_size=4, class_labels={labels}{guidance}, num_inference_steps={steps})"


def card_reference(folder: Path, repo_id: str | None = None) -> str:
    """What a card's title and usage snippets name: ``repo_id``, else the folder as given."""
    return repo_id or folder.as_posix()


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


def model_card_text(
    folder: Path,
    *,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    datasets: list[str] | None = None,
    tags: list[str] | None = None,
    description: str | None = None,
) -> str:
    """README.md for the saved pipeline ``folder``: YAML metadata, usage for both loading paths, and the
    sample grid when ``folder`` holds one. Without ``repo_id`` the title and the snippets name the folder
    (as given); ``push_folder_to_hub`` points them at the repo (:func:`retarget_card`)."""
    repo = card_reference(folder, repo_id)
    call = _sampling_call(folder)
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
        body += ["", _SAMPLES_SECTION]
    return "\n".join(front + body) + "\n"


def refresh_card_facts(text: str, folder: Path) -> str:
    """``text`` of a card carried into the saved ``folder`` with what a rewrite of the model changes made
    true of ``folder``: its facts about the model (the bullets :func:`model_card_text` lists: scheduler,
    unet, covariance head, classes) drawn anew from ``folder``'s configs, and its sample grid section
    dropped where ``folder`` holds no grid. The rest (description, training record, sections added by
    hand) is left as it is; a card without those bullets gets them before its ``## Usage``."""
    lines = text.split("\n")
    facts = _describe_config(folder)
    found = [i for i, line in enumerate(lines) if _FACT_LINE.match(line)]
    if found:
        end = found[0]
        while end < len(lines) and _FACT_LINE.match(lines[end]):
            end += 1
        lines[found[0] : end] = facts
    elif "## Usage" in lines and facts:
        usage = lines.index("## Usage")
        lines[usage:usage] = [*facts, ""]
    text = "\n".join(lines)
    if not (folder / SAMPLE_GRID).is_file():
        text = text.replace(f"\n\n{_SAMPLES_SECTION}", "")
    return text


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
