"""A run's checkpoint: what a training run saves into ``checkpoint-N``, and how it resumes from one.

The folder format (atomic, manifest-checked, no pickle) is ``checkpointing.py``'s. A checkpoint holds the
model, the EMA, the optimizer, LR schedule, timestep-sampler history, AMP scaler and the
python/numpy/torch RNG states, plus the step, the micro-batches seen and the run's options, which is
everything an exact resume needs (``determinism.py``).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpointing import (
    STATE,
    TMP_PREFIX,
    TRAINING_GROUPS,
    OutputWriteError,
    checkpoint_path,
    flatten_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    retry_once_if_transient,
    save_checkpoint,
    unflatten_state,
)
from .determinism import rng_state, set_rng_state
from .setup import TrainingSetup
from .step import TrainingStep
from .train_config import RESUMABLE_OPTIONS, TrainConfig

if TYPE_CHECKING:
    from hf_ddpm.data.image_datasets import ImageDataset

    from .hub_checkpoints import HubCheckpointUploader

logger = logging.getLogger(__name__)

# What --overwrite-output-dir deletes besides the checkpoints: the old run's grids and logs.
OLD_RUN_FOLDERS = ("samples", "logs")


def _json_round_trip(value: object) -> object:
    """``value`` as it reads back from JSON (tuples become lists), for comparisons with saved state."""
    return json.loads(json.dumps(value))


def save_run_checkpoint(
    setup: TrainingSetup, progress: TrainingStep, uploader: HubCheckpointUploader | None
) -> Path | None:
    """Write ``checkpoint-{step}`` on the main process (then hand it to ``uploader`` and prune old ones);
    every process waits for it. Returns the folder on the main process."""
    acc, config = setup.accelerator, setup.config
    path, failure = None, None
    if acc.is_main_process:
        training_state = {
            "optimizer": setup.optimizer.state_dict(),
            "lr_scheduler": setup.lr_scheduler.state_dict(),
            "timestep_sampler": setup.timestep_sampler.state_dict(),
            "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
            "rng": rng_state(),
            "ema": {k: v for k, v in setup.ema.state_dict().items() if k != "shadow"},
        }
        skeleton, tensors = flatten_state(training_state)
        state = {
            "step": progress.step,
            "batches_seen": progress.batches_seen,
            "global_batch": setup.batch_sampler.global_batch,
            "unet_config": _json_round_trip(setup.unet_config),
            "config": config.to_dict(),
            "data": setup.data.record(),
            "training_state": skeleton,
        }
        # TRAINING_GROUPS, each of which a resume requires.
        groups = {
            "model": setup.unwrapped.state_dict(),
            "ema": setup.ema.shadow,
            "training_state": tensors,
        }
        path, failure = _write_with_one_retry(setup.output_dir, progress.step, groups, state)
        if path is not None:
            if uploader is not None:
                # Before pruning: the upload works on hard links, so pruning cannot pull files from
                # under it.
                uploader.submit(path, progress.step)
            prune_checkpoints(setup.output_dir, config.checkpoints_total_limit)
            logger.info("saved %s", path)
    if acc.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        # Every rank stops together, rather than waiting for the main process at the next collective.
        shared = [failure]
        broadcast_object_list(shared)
        failure = shared[0]
    if failure is not None:
        raise OutputWriteError(failure)
    acc.wait_for_everyone()
    return path


def _write_with_one_retry(
    output_dir: Path, step: int, groups: dict[str, Any], state: dict[str, Any]
) -> tuple[Path | None, str | None]:
    """``save_checkpoint``, retried once after a transient error (``retry_once_if_transient``); returns
    the folder, or ``None`` and the one line that says what failed and what is left."""
    try:
        written = retry_once_if_transient(
            lambda: save_checkpoint(output_dir, step, groups, state), f"checkpoint-{step}"
        )
    except OSError as error:
        last = latest_checkpoint(output_dir, TRAINING_GROUPS)
        kept = f"the last complete checkpoint, {last}, is intact" if last else "no checkpoint"
        return None, (
            f"writing {checkpoint_path(output_dir, step)} failed: {error}; {kept}. Free space "
            "or fix the disk, then resume with --resume-from-checkpoint latest"
        )
    return written, None


def read_run_state(path: Path) -> dict[str, Any]:
    """The ``state.json`` of checkpoint ``path``: its step, options (``config``), data and global batch."""
    return json.loads((Path(path) / STATE).read_text(encoding="utf-8"))


def check_output_dir(config: TrainConfig) -> None:
    """Refuse to start a new run in a folder that holds checkpoints, saying whether they are this very
    run's (the same options: the same command run again) or another run's.

    A later ``--resume-from-checkpoint latest`` would otherwise pick up the old run's checkpoint.

    Raises:
        ValueError: ``--output-dir`` holds checkpoints, and neither ``--resume-from-checkpoint`` nor
            ``--overwrite-output-dir`` is given.
    """
    if config.resume_from_checkpoint is not None or config.overwrite_output_dir:
        return
    found = list_checkpoints(config.output_dir)
    if not found:
        return
    latest = latest_checkpoint(config.output_dir, TRAINING_GROUPS)
    saved = None if latest is None else read_run_state(latest)
    if saved is not None and not _option_differences(saved["config"], config):
        step = int(saved["step"])
        finished = step >= config.max_steps
        raise ValueError(
            f"--output-dir {config.output_dir!r} already holds this run, with these options: it "
            f"{'finished' if finished else 'was interrupted'} at step {step} ({latest.name}). "
            "--resume-from-checkpoint latest continues it"
            + (" (trained to the end, it saves the pipeline and extras again)" if finished else "")
            + "; --overwrite-output-dir starts it again (deletes its checkpoints)"
        )
    names = ", ".join(p.name for p in found[-3:])
    raise ValueError(
        f"--output-dir {config.output_dir!r} already holds {len(found)} checkpoint(s) of another "
        f"run (newest: {names}); continue it with --resume-from-checkpoint latest, start over with "
        "--overwrite-output-dir (deletes them), or choose another --output-dir"
    )


def _option_differences(
    saved_config: dict[str, Any], config: TrainConfig, ignored: frozenset[str] = frozenset()
) -> list[str]:
    """The options of ``config`` that change a run's numbers (all but ``RESUMABLE_OPTIONS`` and
    ``ignored``) and differ from the checkpoint's ``saved_config``, as ``"--flag OLD (now NEW)"``.
    ``--batch-size`` / ``--lr-warmup-steps`` not given match the checkpoint's (the defaults it filled
    in, :meth:`TrainConfig.with_scaled_defaults`), ``--dataset`` is not compared where
    ``--train-data-dir`` replaces it, and ``--train-data-dir`` is compared as a resolved folder."""
    now = config.to_dict()
    before = {**TrainConfig().to_dict(), **saved_config}
    skipped = set(RESUMABLE_OPTIONS) | ignored
    skipped |= {name for name in ("batch_size", "lr_warmup_steps") if now[name] is None}
    # --train-data-dir replaces --dataset (older checkpoints still record the unused default).
    if now["train_data_dir"] is not None:
        skipped.add("dataset")
    old, new = before.get("train_data_dir"), now["train_data_dir"]
    if old is not None and new is not None and Path(old).resolve() == Path(new).resolve():
        skipped.add("train_data_dir")
    return [
        f"--{name.replace('_', '-')} {before.get(name)!r} (now {now[name]!r})"
        for name in now
        if name not in skipped and before.get(name) != now[name]
    ]


def clear_output_dir(output_dir: Path) -> list[Path]:
    """``--overwrite-output-dir``: delete the old run's checkpoints, sample grids and logs; return them."""
    doomed = [*list_checkpoints(output_dir), *output_dir.glob(f"{TMP_PREFIX}*")]
    doomed += [output_dir / name for name in OLD_RUN_FOLDERS if (output_dir / name).is_dir()]
    for path in doomed:
        shutil.rmtree(path)
    if doomed:
        logger.info(
            "--overwrite-output-dir: deleted %s from %s",
            ", ".join(p.name for p in doomed),
            output_dir,
        )
    return doomed


def resume_differences(
    saved: dict[str, Any], config: TrainConfig, num_processes: int, data: ImageDataset
) -> list[str]:
    """Each option (and data or process-count change) of ``config`` that differs from the checkpoint's
    ``saved`` state in a way that breaks an exact resume, as ``"--flag OLD (now NEW)"``."""
    now = config.to_dict()
    before = {**TrainConfig().to_dict(), **saved["config"]}
    folder_change = _data_folder_difference(before, now, saved.get("data", {}), data)
    ignored = frozenset() if folder_change is True else frozenset({"train_data_dir"})
    differences = _option_differences(saved["config"], config, ignored)
    if isinstance(folder_change, str):
        differences.append(folder_change)
    saved_images = saved.get("data", {}).get("images")
    if (
        saved_images is not None
        and saved_images != len(data)
        and not isinstance(folder_change, str)
    ):
        differences.append(f"the data: {saved_images} images (now {len(data)})")
    global_batch = config.batch_size * num_processes
    if saved["global_batch"] != global_batch:
        differences.append(
            f"the global batch: {saved['global_batch']} (now {global_batch}: --batch-size "
            f"{config.batch_size} x {num_processes} process(es))"
        )
    return differences


def _data_folder_difference(
    before: dict[str, Any], now: dict[str, Any], saved_data: dict[str, Any], data: ImageDataset
) -> bool | str | None:
    """How ``--train-data-dir`` compares with the checkpoint's: ``None`` for the same images (the same
    folder however it is written, or one with the same content fingerprint, ``folder_fingerprint``),
    a sentence naming the folder whose images changed, or ``True`` where only the option's text can be
    compared (no folder on one side, or a checkpoint that recorded no fingerprint)."""
    old, new = before.get("train_data_dir"), now.get("train_data_dir")
    if old is None or new is None:
        return True if old != new else None
    recorded, current = saved_data.get("fingerprint"), data.fingerprint
    same_place = Path(old).resolve() == Path(new).resolve()
    if recorded is None or current is None:
        return None if same_place else True
    if recorded == current:
        if not same_place:
            logger.info(
                "--train-data-dir %s holds the same images as the checkpoint's %s (names, sizes and "
                "times of its %d files): resuming exactly",
                new,
                old,
                current["files"],
            )
        return None
    where = f"--train-data-dir {new!r}" + ("" if same_place else f" (the checkpoint's: {old!r})")
    return (
        f"the images of {where}: {recorded['files']} files, {recorded['bytes']:,} bytes when the "
        f"checkpoint was written, now {current['files']} files, {current['bytes']:,} bytes, with other "
        "names, sizes or modification times"
    )


def check_resume_options(
    path: Path, saved: dict[str, Any], config: TrainConfig, num_processes: int, data: ImageDataset
) -> None:
    """Refuse to resume from ``path`` with options that break exactness, naming each difference; with
    ``--allow-config-change`` they are logged as a warning instead.

    Raises:
        ValueError: an option that changes the run's numbers differs from the checkpoint's.
    """
    differences = resume_differences(saved, config, num_processes, data)
    if not differences:
        return
    listed = "; ".join(differences)
    if config.allow_config_change:
        logger.warning("--allow-config-change: resuming %s, but not bit-for-bit: %s", path, listed)
        return
    raise ValueError(
        f"--resume-from-checkpoint {str(path)!r} was trained with other options, and resuming with "
        f"these would not continue it exactly: {listed}. Give the checkpoint's values, or pass "
        "--allow-config-change to resume anyway"
    )


def load_run_checkpoint(setup: TrainingSetup, progress: TrainingStep, path: Path) -> None:
    """Restore every piece of state :func:`save_run_checkpoint` wrote, and the counters of ``progress``.

    Raises:
        ValueError: the checkpoint holds a UNet of another shape.
    """
    tensors, state = load_checkpoint(path, TRAINING_GROUPS)
    if state["unet_config"] != _json_round_trip(setup.unet_config):
        raise ValueError(
            f"checkpoint {path} holds a UNet with a different config; resume with the same "
            "--model-preset/--unet-config, resolution, data channels, classes and variance type"
        )
    training_state = unflatten_state(state["training_state"], tensors["training_state"])
    setup.unwrapped.load_state_dict(tensors["model"])
    setup.ema.load_state_dict({**training_state["ema"], "shadow": tensors["ema"]})
    setup.optimizer.load_state_dict(training_state["optimizer"])
    setup.lr_scheduler.load_state_dict(training_state["lr_scheduler"])
    setup.timestep_sampler.load_state_dict(training_state["timestep_sampler"])
    scaler = setup.accelerator.scaler
    if scaler is not None and training_state["scaler"] is not None:
        scaler.load_state_dict(training_state["scaler"])
    set_rng_state(training_state["rng"])
    progress.step = int(state["step"])
    progress.batches_seen = int(state["batches_seen"])
    logger.info("resumed from %s at step %d", path, progress.step)
