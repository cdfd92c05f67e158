"""Training checkpoints on the Hub (``hf-ddpm train --push-to-hub --hub-strategy checkpoint | every_save``).

:class:`HubCheckpointUploader` uploads each new checkpoint in the background while training goes on, so
that a lost machine loses at most the steps since the last upload; :func:`download_hub_checkpoint`
(``--resume-from-checkpoint hub``) brings the newest one back into an output folder, where it must pass
the same manifest check (:func:`hf_ddpm.training.checkpointing.verify_checkpoint`) as a local one before training
resumes from it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from hf_ddpm.core.pushing import network_errors

from .checkpointing import (
    CHECKPOINT_NAME,
    MANIFEST,
    TMP_PREFIX,
    TRAINING_GROUPS,
    CorruptCheckpointError,
    checkpoint_path,
    rename_into_place,
    verify_checkpoint,
)

logger = logging.getLogger(__name__)

# Hub strategies of ``hf-ddpm train``: when checkpoints are uploaded besides the final pipeline.
HUB_STRATEGIES = ("end", "checkpoint", "every_save")
# The repo folder that the "checkpoint" strategy keeps replacing, and the download falls back from.
LAST_CHECKPOINT = "last-checkpoint"
# Hard-linked snapshots of checkpoints waiting for upload; a pattern the final push must leave out.
HUB_STAGING_PREFIX = ".hub-upload-"
# Queued uploads beyond which submit() warns that uploads fall behind.
_WARN_PENDING = 2


class HubCheckpointUploader:
    """Upload training checkpoints to a Hub model repo in the background, so that a lost machine loses
    at most the steps since the last upload.

    - ``strategy="checkpoint"``: each checkpoint goes to ``last-checkpoint/`` in one commit that also
      deletes the previous one's files there, so the folder always holds exactly one checkpoint. An upload
      still waiting behind a running one is dropped when a newer checkpoint arrives: only the newest matters.
    - ``strategy="every_save"``: each checkpoint goes to its own ``checkpoint-N/`` and all of them are
      uploaded; the repo keeps them even when ``--checkpoints-total-limit`` prunes the local copies.

    Uploads run one at a time, in order, on huggingface_hub's single background worker
    (``HfApi.run_as_future``); the first job creates the repo (``private`` honoured). :meth:`submit` only
    hard-links the checkpoint's files into a staging folder (``.hub-upload-*``), so pruning or re-writing
    the checkpoint cannot change what is being uploaded. A failed upload or repo creation is logged as a
    warning and recorded in :attr:`errors`; it never raises into training. A repo creation that failed is
    retried before the next upload. A checkpoint is whole on the Hub when its files match its
    ``manifest.json``; :func:`download_hub_checkpoint` checks that.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        repo_id: str,
        strategy: str,
        *,
        private: bool = False,
        token: str | None = None,
    ) -> None:
        from huggingface_hub import HfApi

        if strategy not in HUB_STRATEGIES[1:]:
            raise ValueError(
                f"checkpoint upload strategy {strategy!r} is not one of {', '.join(HUB_STRATEGIES[1:])}"
            )
        self.output_dir = Path(output_dir)
        self.repo_id = repo_id
        self.errors: list[str] = []
        self._replace = strategy == "checkpoint"
        self._folder_in_repo: Callable[[Path], str] = (
            (lambda _checkpoint: LAST_CHECKPOINT) if self._replace else (lambda c: c.name)
        )
        self._private = private
        self._api = HfApi(token=token)
        self._repo_ready = False
        self._pending: list[tuple[Future[None], Path | None]] = []
        self._staged = 0
        # Left behind by a run that was killed mid-upload.
        for stale in self.output_dir.glob(f"{HUB_STAGING_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        self._pending.append((self._api.run_as_future(self._create_repo), None))

    def submit(self, checkpoint: str | os.PathLike[str], step: int) -> None:
        """Queue an upload of the complete checkpoint folder ``checkpoint`` (of ``step``); returns at once."""
        staging = self._stage(Path(checkpoint))
        if self._replace:
            for future, waiting in self._pending:
                # cancel() succeeds only for jobs that have not started: they would upload an older
                # checkpoint into last-checkpoint/ just before this one replaces it.
                if waiting is not None and future.cancel():
                    shutil.rmtree(waiting, ignore_errors=True)
        self._pending = [(f, s) for f, s in self._pending if not f.done()]
        folder = self._folder_in_repo(Path(checkpoint))
        future = self._api.run_as_future(self._upload, staging, folder, Path(checkpoint).name, step)
        self._pending.append((future, staging))
        waiting = sum(1 for _, s in self._pending if s is not None)
        if waiting > _WARN_PENDING:
            # every_save never drops a job: staged copies of pruned checkpoints hold their disk space
            # until uploaded.
            logger.warning(
                "%d checkpoint uploads to %s are queued: uploads are slower than --checkpoint-every, "
                "and the queued checkpoints keep their disk space until uploaded",
                waiting,
                self.repo_id,
            )

    def wait(self) -> list[str]:
        """Block until every queued upload has finished or failed; return :attr:`errors`."""
        for future, _ in self._pending:
            if not future.cancelled():
                future.result()
        self._pending = []
        return self.errors

    def _stage(self, checkpoint: Path) -> Path:
        self._staged += 1
        staging = self.output_dir / f"{HUB_STAGING_PREFIX}{self._staged}-{os.getpid()}"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        for file in checkpoint.iterdir():
            try:
                os.link(file, staging / file.name)
            except OSError:
                # No hard links on this file system: a copy costs disk space but is just as safe.
                shutil.copy2(file, staging / file.name)
        return staging

    def _warn(self, what: str, error: Exception) -> None:
        message = f"{what} failed ({type(error).__name__}: {error})"
        self.errors.append(message)
        logger.warning("%s; training goes on and the local checkpoints are unaffected", message)

    def _create_repo(self) -> None:
        try:
            self._api.create_repo(
                self.repo_id, private=self._private, exist_ok=True, repo_type="model"
            )
        # Runs on the upload worker: nothing may escape into training, whatever the client raises.
        except Exception as error:
            self._warn(f"creating the Hub repo {self.repo_id}", error)
            return
        self._repo_ready = True

    def _upload(self, staging: Path, folder: str, name: str, step: int) -> None:
        try:
            if not self._repo_ready:
                self._create_repo()
                if not self._repo_ready:
                    return
            try:
                self._api.upload_folder(
                    repo_id=self.repo_id,
                    folder_path=staging,
                    path_in_repo=folder,
                    commit_message=f"hf-ddpm train: checkpoint at step {step}",
                    delete_patterns="*" if self._replace else None,
                )
            except Exception as error:
                self._warn(f"uploading {name} to the Hub repo {self.repo_id} as {folder}/", error)
            else:
                logger.info("uploaded %s to %s/%s", name, self.repo_id, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _newest_hub_checkpoint(files: list[str]) -> str | None:
    """The repo folder to resume from: ``last-checkpoint`` if it is there, else the highest
    ``checkpoint-N`` (the ``every_save`` layout); ``None`` if the repo holds no checkpoint."""
    if f"{LAST_CHECKPOINT}/{MANIFEST}" in files:
        return LAST_CHECKPOINT
    steps = [
        int(m.group(1))
        for name in files
        if name.endswith(f"/{MANIFEST}") and (m := CHECKPOINT_NAME.match(name.split("/")[0]))
    ]
    return f"checkpoint-{max(steps)}" if steps else None


def download_hub_checkpoint(
    output_dir: str | os.PathLike[str],
    repo_id: str,
    *,
    token: str | None = None,
    revision: str | None = None,
) -> Path | None:
    """Download the checkpoint that training pushed to ``repo_id`` into ``output_dir/checkpoint-N``.

    Takes ``last-checkpoint/`` (``--hub-strategy checkpoint``), or else the highest ``checkpoint-N/``
    (``every_save``), from one commit of the repo: a repo that holds both (its runs changed strategy)
    resumes from ``last-checkpoint/``, whatever its step. The files land in a temporary folder, must
    pass :func:`verify_checkpoint`, and are then renamed into place (replacing a local ``checkpoint-N``).

    Returns:
        The local checkpoint folder, or ``None`` when the repo does not exist or holds no checkpoint
        (a fresh start, as ``--resume-from-checkpoint latest`` does with an empty output folder).

    Raises:
        CorruptCheckpointError: the pushed checkpoint is partial or does not match its manifest.
        ConnectionError: the Hub could not be reached.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    output_dir = Path(output_dir)
    api = HfApi(token=token)
    try:
        info = api.model_info(repo_id, revision=revision)
    except (RepositoryNotFoundError, RevisionNotFoundError):
        logger.warning(
            "the Hub repo %s does not exist (or is private and needs a token); starting fresh",
            repo_id,
        )
        return None
    except network_errors() as error:
        raise ConnectionError(
            f"--resume-from-checkpoint hub: cannot reach the Hub repo {repo_id}: {error}"
        ) from error
    folder = _newest_hub_checkpoint([s.rfilename for s in info.siblings or []])
    if folder is None:
        logger.warning("the Hub repo %s holds no checkpoint; starting fresh", repo_id)
        return None
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / f"{TMP_PREFIX}hub-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        # Pinned to the commit just read, so an upload landing meanwhile cannot mix two checkpoints.
        try:
            snapshot_download(
                repo_id,
                revision=info.sha,
                token=token,
                allow_patterns=[f"{folder}/*"],
                local_dir=tmp,
            )
        except network_errors() as error:
            raise ConnectionError(
                f"--resume-from-checkpoint hub: downloading {folder}/ from the Hub repo {repo_id} "
                f"failed: {error}"
            ) from error
        downloaded = tmp / folder
        try:
            verify_checkpoint(downloaded, TRAINING_GROUPS)
        except (CorruptCheckpointError, FileNotFoundError) as error:
            raise CorruptCheckpointError(
                f"the checkpoint {folder}/ in the Hub repo {repo_id} (commit {info.sha}) is unusable: "
                f"{error}"
            ) from error
        step = json.loads((downloaded / MANIFEST).read_text(encoding="utf-8"))["step"]
        final = checkpoint_path(output_dir, int(step))
        rename_into_place(downloaded, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("downloaded %s/%s (commit %s) to %s", repo_id, folder, info.sha, final)
    return final
