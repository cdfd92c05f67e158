"""Pushing a saved pipeline folder to the Hub: one commit, and a failed push loses nothing local.

Copied into every saved folder (the pipelines' ``push_to_hub`` is :func:`push_pipeline_to_hub`), so at
module level it imports only the standard library and its siblings; huggingface_hub is imported where
it is used, and the retry hint names only what a user of the saved folder has (huggingface_hub, which
diffusers installs).
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from .model_card import MODEL_CARD, retarget_card
from .saving import MODEL_INDEX, save_pipeline_folder, write_atomically

# The sub-folder of a model folder where `hf-ddpm fit-covariance` and `hf-ddpm train --covariance-head`
# keep the head fit's checkpoints and loss log: apart from the training run's checkpoint-N folders, which
# the fit's pruning must never see.
HEAD_CHECKPOINTS = "covariance-head"
# What a model folder's upload leaves out, as upload_folder's glob patterns (matched against the path
# relative to the folder, where * also matches /): training and covariance-head checkpoints (optimizer
# state, hundreds of MB for ddpm-cifar10), logs (they grow), and hidden entries (partial writes,
# checkpoint upload staging). The one definition: push_folder_to_hub's default, its retry command, and
# what `hf-ddpm calibrate --output` copies (uploaded_files).
UPLOAD_EXCLUDED = ("checkpoint-*", f"{HEAD_CHECKPOINTS}/*", "logs/*", ".*")


def uploaded_files(folder: str | os.PathLike) -> list[str]:
    """The files of ``folder`` that :func:`push_folder_to_hub` uploads by default, as sorted relative
    POSIX paths."""
    folder = Path(folder)
    relative = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return sorted(r for r in relative if not any(fnmatch(r, x) for x in UPLOAD_EXCLUDED))


class HubPushError(RuntimeError):
    """An upload to the Hub failed; ``folder`` (the saved pipeline) is intact and the message says how to retry."""

    def __init__(self, message: str, folder: Path) -> None:
        super().__init__(message)
        self.folder = folder


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

    ``ignore_patterns`` (glob patterns, as ``upload_folder`` takes them) defaults to
    ``UPLOAD_EXCLUDED``: a training output folder uploads as its pipeline, without checkpoints and logs
    (:func:`uploaded_files`). The card's title and usage snippets are pointed at ``repo_id`` first
    (:func:`retarget_card`).

    Raises:
        HubPushError: on any network or Hub error. The folder is left as it was, and the message says
            how to retry.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    if ignore_patterns is None:
        ignore_patterns = list(UPLOAD_EXCLUDED)
    if not (folder / MODEL_INDEX).is_file():
        raise FileNotFoundError(
            f"No {MODEL_INDEX} in {folder}: push a folder written by save_pretrained."
        )
    card = folder / MODEL_CARD
    if card.is_file():
        text = card.read_text(encoding="utf-8")
        if (retargeted := retarget_card(text, repo_id)) != text:
            write_atomically(card, retargeted)
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
            "reached (and your token can write there), retry from a shell with huggingface_hub's CLI "
            "(installed with diffusers; it creates the repo if needed):\n"
            f"    {upload_command(folder, repo_id, private, create_pr, ignore_patterns)}",
            folder.resolve(),
        ) from error
    return str(commit.commit_url)


def upload_command(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    create_pr: bool = False,
    ignore_patterns: list[str] | None = None,
) -> str:
    """The ``hf upload`` command that uploads ``folder`` as :func:`push_folder_to_hub` would (by default
    leaving out ``UPLOAD_EXCLUDED``)."""
    words = ["hf", "upload", repo_id, str(Path(folder).resolve()), "."]
    words += ["--private"] * private + ["--create-pr"] * create_pr
    for pattern in UPLOAD_EXCLUDED if ignore_patterns is None else ignore_patterns:
        words += ["--exclude", pattern]
    return shlex.join(words)


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
