"""The options of ``hf-ddpm train``: :class:`TrainConfig`, its validation, and its command line.

One dataclass field per option, with its default and help; the command line has one flag per field
(``--learning-rate`` for ``learning_rate``), and ``--config FILE`` reads any of them from JSON. Flags given
on the command line win over the file, which wins over the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_ddpm.data.ingest import CHANNEL_CHOICES
from hf_ddpm.sampling.samplers import default_sampling_steps_in_words

MIXED_PRECISIONS = ("no", "fp16", "bf16")
LOGGERS = ("tensorboard", "none")
# --resume-from-checkpoint value that downloads the checkpoint pushed to --hub-model-id.
RESUME_FROM_HUB = "hub"
# Key of train_config.json that records what the run found in its data (image count, channels, skipped
# files); not an option, so reading the file back as --config ignores it.
DATA_RECORD = "data"
# The paper's batch and warm-up (Ho et al. 2020), used when the flags are not given and the run is big
# enough: the batch is capped at the number of images, the warm-up at WARMUP_FRACTION of --max-steps.
PAPER_BATCH_SIZE = 128
PAPER_WARMUP_STEPS = 5000
WARMUP_FRACTION = 0.1
# Options that a resumed run may change without changing its numbers: how long it runs, where and how
# often it writes, logs and pushes, and how it loads data. Every other option must match the checkpoint's
# (``run_checkpoint.check_resume_options``), so a new option is checked unless it is listed here.
RESUMABLE_OPTIONS = frozenset(
    {
        "max_steps",
        "output_dir",
        "checkpoint_every",
        "checkpoints_total_limit",
        "resume_from_checkpoint",
        "overwrite_output_dir",
        "allow_config_change",
        "sample_every",
        "grid",
        "calibrate",
        "calibrate_images",
        "covariance_head",
        "covariance_head_steps",
        "num_samples",
        "sample_steps",
        "eval_every",
        "eval_metrics",
        "eval_samples",
        "eval_images",
        "eval_steps",
        "logger",
        "log_every",
        "push_to_hub",
        "hub_model_id",
        "hub_private",
        "hub_strategy",
        "dataloader_num_workers",
        "compile",
        "skip_bad_images",
    }
)


def _opt(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    return field(default=default, metadata={"help": help, **argparse_kwargs})


def _choices() -> dict[str, tuple[str, ...]]:
    """The options with a closed list of choices, each list read from its registry (imported here, when
    options are checked or the help is built, not when ``hf-ddpm --help`` imports this module)."""
    from hf_ddpm.core.losses import LOSS_FUNCTIONS
    from hf_ddpm.core.parameterization import PARAMETERIZATIONS
    from hf_ddpm.core.schedules import BETA_SCHEDULES
    from hf_ddpm.core.variance import VARIANCE_TYPES

    from .hub_checkpoints import HUB_STRATEGIES
    from .unet_presets import PRESETS

    return {
        "loss": tuple(LOSS_FUNCTIONS),
        "prediction_type": tuple(PARAMETERIZATIONS),
        "variance_type": tuple(VARIANCE_TYPES),
        "beta_schedule": BETA_SCHEDULES,
        "mixed_precision": MIXED_PRECISIONS,
        "logger": LOGGERS,
        "hub_strategy": HUB_STRATEGIES,
        "model_preset": tuple(PRESETS),
    }


def _listed_in_help() -> dict[str, tuple[str, ...]]:
    """The names each option's help lists: its choices, and the bundled sets for ``--dataset`` (which
    also takes any Hub dataset id)."""
    from hf_ddpm.data.bundled_datasets import BUNDLED_DATASETS

    listed = {**_choices(), "dataset": tuple(BUNDLED_DATASETS)}
    del listed["hub_strategy"]  # its help says what each choice uploads
    return listed


@dataclass
class TrainConfig:
    """Every option of ``hf-ddpm train``; field ``foo_bar`` is the flag ``--foo-bar``."""

    dataset: str = _opt("mnist-5k", "Hub dataset id, or a bundled set")
    train_data_dir: str | None = _opt(None, "local image folder (overrides --dataset)", type=str)
    split: str = _opt("train", "dataset split to train on")
    image_column: str | None = _opt(
        None, "image column (default: image, img, or the Image column)", type=str
    )
    class_column: str | None = _opt(
        None, "label column: trains a class-conditional model", type=str
    )
    class_from_folders: bool = _opt(
        False,
        "the sub-folders of --train-data-dir are the classes (cats/, dogs/, ...): trains a "
        "class-conditional model that records their names, so `hf-ddpm sample --class-label cats` works",
    )
    channels: int | None = _opt(
        None,
        "image channels to train on: 1 (grey) or 3 (RGB); default: 3 if any image of the folder is in "
        "colour, else 1",
        type=int,
    )
    skip_bad_images: bool = _opt(
        False,
        "leave out the files of --train-data-dir that cannot be read (listed in the log and "
        "train_config.json) instead of stopping",
    )
    class_dropout: float = _opt(0.1, "probability of the null label (classifier-free guidance)")
    resolution: int = _opt(32, "image side after resize and center crop")
    random_flip: bool = _opt(False, "random horizontal flips")
    batch_size: int | None = _opt(
        None,
        f"batch size per process (default: {PAPER_BATCH_SIZE}, or fewer so that one global batch fits "
        "in the data)",
        type=int,
    )
    max_steps: int = _opt(10_000, "optimizer steps to train for")
    learning_rate: float = _opt(2e-4, "Adam learning rate")
    lr_warmup_steps: int | None = _opt(
        None,
        f"linear learning-rate warm-up steps (default: {PAPER_WARMUP_STEPS}, or "
        f"{WARMUP_FRACTION:.0%} of --max-steps when that is fewer)",
        type=int,
    )
    max_grad_norm: float = _opt(1.0, "gradient-norm clip")
    ema_decay: float = _opt(0.9999, "EMA decay (with warm-up)")
    model_preset: str = _opt("ddpm-cifar10", "UNet preset")
    unet_config: str | None = _opt(
        None, "UNet2DModel config JSON (overrides --model-preset)", type=str
    )
    loss: str = _opt("simple", "training objective")
    min_snr_gamma: float | None = _opt(None, "Min-SNR-gamma weighting of L_simple", type=float)
    prediction_type: str = _opt("epsilon", "what the UNet predicts")
    variance_type: str = _opt("fixed_small", "reverse-process variance")
    beta_schedule: str = _opt("linear", "beta schedule")
    num_train_timesteps: int = _opt(1000, "diffusion steps T")
    mixed_precision: str = _opt("no", "mixed precision")
    gradient_accumulation_steps: int = _opt(1, "micro-batches per optimizer step")
    seed: int = _opt(0, "seed of every random stream (data order, noise, init)")
    dataloader_num_workers: int = _opt(2, "DataLoader worker processes")
    compile: bool = _opt(False, "torch.compile the UNet (CUDA)")
    output_dir: str = _opt("outputs/hf-ddpm", "where checkpoints and the final pipeline go")
    checkpoint_every: int = _opt(1000, "steps between checkpoints (0: only at the end)")
    checkpoints_total_limit: int | None = _opt(None, "keep only the newest N checkpoints", type=int)
    resume_from_checkpoint: str | None = _opt(
        None,
        "'latest', 'hub' (download the checkpoint pushed to --hub-model-id) or a checkpoint-N folder",
        type=str,
    )
    overwrite_output_dir: bool = _opt(
        False,
        "start over in an --output-dir that holds another run: deletes its checkpoints, samples/ "
        "and logs/",
    )
    allow_config_change: bool = _opt(
        False,
        "resume although options that change the run's numbers (batch size, seed, model, data, "
        "learning rate, ...) differ from the checkpoint's; the resume is then not exact",
    )
    sample_every: int = _opt(1000, "steps between sample grids (0: none during training)")
    grid: bool = _opt(
        True, "draw the final sample grid (samples.png, shown in the card); --no-grid skips it"
    )
    calibrate: bool = _opt(
        True,
        "estimate Analytic-DPM's eps_second_moment on the EMA model at the end (--calibrate-images x T "
        "network calls) and save it in the scheduler config, so the model samples well in few steps; "
        "--no-calibrate skips it",
    )
    calibrate_images: int = _opt(
        16,
        "training images of the end-of-training calibration (fewer if the data has fewer); on the "
        "bundled model the 10-step optimal trajectory from 16 is within 0.013 bits/dim of the one "
        "from 64 (docs/analytic-dpm.md)",
    )
    covariance_head: str | None = _opt(
        None,
        "fit SN-DDPM's (sn) or NPR-DDPM's (npr) per-pixel covariance head on the EMA model at the end, "
        "as `hf-ddpm fit-covariance` does; the saved model then samples with it",
        type=str,
    )
    covariance_head_steps: int = _opt(
        2000, "optimizer steps of the end-of-training covariance head fit (--covariance-head)"
    )
    num_samples: int = _opt(16, "images in each sample grid")
    sample_steps: int | None = _opt(
        None,
        f"respaced sampling steps of the grids (default: {default_sampling_steps_in_words()})",
        type=int,
    )
    eval_every: int = _opt(
        0,
        "steps between evaluations of the EMA model, as hf-ddpm evaluate (0: none); logged and, the "
        "last one, written into the model card",
    )
    eval_metrics: str = _opt(
        "nll", "what --eval-every measures: nll, fid, fd-dinov2, comma-separated"
    )
    eval_samples: int = _opt(1000, "samples of each evaluation's Fréchet distances")
    eval_images: int = _opt(100, "held-out images (the test split) of each evaluation")
    eval_steps: int | None = _opt(
        None,
        "sampling steps of each evaluation's samples, and the K-step chain its nll bounds (default: T)",
        type=int,
    )
    logger: str = _opt("tensorboard", "experiment tracker: tensorboard or none")
    log_every: int = _opt(
        10,
        "steps between reads of the loss from the device: logs, progress bar and the NaN check "
        "(each read waits for the GPU)",
    )
    push_to_hub: bool = _opt(False, "push the final pipeline to the Hub")
    hub_model_id: str | None = _opt(None, "Hub repo id for --push-to-hub", type=str)
    hub_private: bool = _opt(False, "create the Hub repo as private")
    hub_strategy: str = _opt(
        "end",
        "what --push-to-hub uploads: end (the final pipeline only), checkpoint (also each checkpoint, "
        "to last-checkpoint/, replacing the previous one), every_save (each checkpoint to its own "
        "checkpoint-N/)",
    )
    hub_token: str | None = _opt(
        None, "Hub token (default: the logged-in one); never saved", type=str
    )

    def _check_covariance_head(self) -> None:
        from hf_ddpm.core.variance import HEAD_VARIANCE_TYPES, LEARNED_VARIANCE_TYPES

        if self.covariance_head is None:
            return
        if self.covariance_head not in HEAD_VARIANCE_TYPES:
            raise ValueError(
                f"--covariance-head {self.covariance_head!r} is not one of {', '.join(HEAD_VARIANCE_TYPES)}"
            )
        if self.variance_type in LEARNED_VARIANCE_TYPES:
            raise ValueError(
                f"--covariance-head {self.covariance_head} (hf-ddpm fit-covariance at the end) needs a "
                f"UNet that predicts the mean only; --variance-type {self.variance_type} learns the "
                "variance itself"
            )

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad option and its allowed values."""
        from hf_ddpm.core.diffusion_tables import check_num_inference_steps
        from hf_ddpm.core.losses import check_loss_fits_variance

        choices = _choices()
        if self.unet_config is not None:
            del choices["model_preset"]
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"--{_flag(name)} {getattr(self, name)!r} is not one of {', '.join(allowed)}"
                )
        self._check_covariance_head()
        at_least = {
            "resolution": 1,
            "batch_size": 1,
            "max_steps": 1,
            "num_train_timesteps": 2,
            "gradient_accumulation_steps": 1,
            "lr_warmup_steps": 0,
            "checkpoint_every": 0,
            "sample_every": 0,
            "num_samples": 1,
            "calibrate_images": 1,
            "covariance_head_steps": 1,
            "dataloader_num_workers": 0,
            "log_every": 1,
            "eval_every": 0,
            "eval_images": 1,
            "eval_steps": 1,
        }
        for name, low in at_least.items():
            if getattr(self, name) is not None and getattr(self, name) < low:
                raise ValueError(f"--{_flag(name)} must be >= {low}, got {getattr(self, name)}")
        if self.class_from_folders and (self.train_data_dir is None or self.class_column):
            raise ValueError(
                "--class-from-folders takes the classes from the sub-folders of --train-data-dir: give "
                "--train-data-dir FOLDER, and no --class-column"
            )
        if self.channels is not None and self.channels not in CHANNEL_CHOICES:
            raise ValueError(f"--channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ValueError(
                f"--checkpoints-total-limit must be >= 1, got {self.checkpoints_total_limit}"
            )
        if self.sample_steps is not None:
            check_num_inference_steps(self.sample_steps, self.num_train_timesteps, "--sample-steps")
        if self.eval_every:
            from hf_ddpm.evaluation.evaluate import parse_metrics

            try:
                metrics = parse_metrics(self.eval_metrics)
            except ValueError as error:
                raise ValueError(str(error).replace("--metrics", "--eval-metrics")) from None
            if set(metrics) - {"nll"} and self.eval_samples < 2:
                raise ValueError(
                    f"--eval-samples must be >= 2 for a Fréchet distance, got {self.eval_samples}"
                )
            if self.eval_steps is not None:
                check_num_inference_steps(self.eval_steps, self.num_train_timesteps, "--eval-steps")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning-rate must be > 0, got {self.learning_rate}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"--max-grad-norm must be > 0, got {self.max_grad_norm}")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise ValueError(f"--min-snr-gamma must be > 0, got {self.min_snr_gamma}")
        if not 0.0 <= self.class_dropout < 1.0:
            raise ValueError(f"--class-dropout must be in [0, 1), got {self.class_dropout}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        check_loss_fits_variance(self.loss, self.variance_type, ("--loss", "--variance-type"))
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push-to-hub needs --hub-model-id user/name")
        if self.hub_model_id is not None:
            from huggingface_hub.errors import HFValidationError
            from huggingface_hub.utils import validate_repo_id

            # Caught here, not by a failed upload after hours of training.
            try:
                validate_repo_id(self.hub_model_id)
            except HFValidationError as error:
                raise ValueError(
                    f"--hub-model-id {self.hub_model_id!r} is not a Hub repo id (user/name or name: "
                    f"letters, digits, '-', '_', '.'): {error}"
                ) from error
        if self.hub_strategy != "end" and not self.push_to_hub:
            raise ValueError(
                f"--hub-strategy {self.hub_strategy} uploads checkpoints with --push-to-hub; add "
                "--push-to-hub --hub-model-id user/name, or use --hub-strategy end"
            )
        if self.overwrite_output_dir and self.resume_from_checkpoint is not None:
            raise ValueError(
                "--overwrite-output-dir deletes the checkpoints that --resume-from-checkpoint "
                f"{self.resume_from_checkpoint} would continue from; give one of them"
            )
        if self.resume_from_checkpoint == RESUME_FROM_HUB and not self.hub_model_id:
            raise ValueError(
                f"--resume-from-checkpoint {RESUME_FROM_HUB} needs --hub-model-id user/name (the repo "
                "the checkpoints were pushed to)"
            )

    def with_scaled_defaults(
        self, num_images: int, num_processes: int, saved: dict[str, Any] | None = None
    ) -> tuple[TrainConfig, list[str]]:
        """This config with ``--batch-size`` and ``--lr-warmup-steps`` filled in when not given, and a
        note for each default that was scaled down to fit the run.

        The batch is the paper's 128, capped so that one global batch (``batch_size * num_processes``)
        fits in ``num_images``; the warm-up is the paper's 5,000 steps, capped at ``WARMUP_FRACTION`` of
        ``--max-steps``. A resumed run (``saved``: the checkpoint's options) keeps the checkpoint's
        values, so that changing ``--max-steps`` does not change its learning-rate schedule.

        Raises:
            ValueError: a given ``--batch-size`` is more than the data holds, or even one image per
                process is more than the data holds.
        """
        notes: list[str] = []
        batch_size, warmup = self.batch_size, self.lr_warmup_steps
        saved = saved or {}
        if batch_size is None and saved.get("batch_size") is not None:
            batch_size = saved["batch_size"]
        if warmup is None and saved.get("lr_warmup_steps") is not None:
            warmup = saved["lr_warmup_steps"]
        fits = num_images // num_processes
        if batch_size is None:
            if fits < 1:
                raise ValueError(
                    f"the dataset has {num_images} images, fewer than one per process "
                    f"({num_processes} processes); use more images or fewer processes"
                )
            batch_size = min(PAPER_BATCH_SIZE, fits)
            if batch_size < PAPER_BATCH_SIZE:
                notes.append(
                    f"--batch-size {batch_size}: the default {PAPER_BATCH_SIZE} x {num_processes} "
                    f"process(es) is more than the {num_images} images of the data"
                )
        elif batch_size * num_processes > num_images:
            raise ValueError(
                f"--batch-size {batch_size} x {num_processes} process(es) is more than the "
                f"{num_images} images of the data, fewer than one global batch; give "
                f"--batch-size {max(fits, 1)} or less, or leave it out to fit the data"
            )
        if warmup is None:
            cap = math.ceil(WARMUP_FRACTION * self.max_steps)
            warmup = min(PAPER_WARMUP_STEPS, cap)
            if warmup < PAPER_WARMUP_STEPS:
                notes.append(
                    f"--lr-warmup-steps {warmup}: the default {PAPER_WARMUP_STEPS} is capped at "
                    f"{WARMUP_FRACTION:.0%} of --max-steps {self.max_steps}"
                )
        elif warmup >= self.max_steps:
            notes.append(
                f"--lr-warmup-steps {warmup} is not less than --max-steps {self.max_steps}: the "
                "learning rate never reaches --learning-rate"
            )
        return dataclasses.replace(self, batch_size=batch_size, lr_warmup_steps=warmup), notes

    def to_dict(self) -> dict[str, Any]:
        """The resolved options, without the Hub token; ``dataset`` is ``None`` when ``train_data_dir``
        replaces it, so a record never names a dataset the run did not read, and ``train_data_dir`` is
        absolute, so the commands that read the model's own data (``evaluation/data_options``) find it
        from any folder (a resume compares folders resolved, and by their content fingerprint)."""
        values = dataclasses.asdict(self)
        values.pop("hub_token")
        if self.train_data_dir is not None:
            values["dataset"] = None
            values["train_data_dir"] = str(Path(self.train_data_dir).resolve())
        return values

    def command(self) -> str:
        """An ``hf-ddpm train`` command line that reproduces this config (non-default options only)."""
        parts = ["hf-ddpm", "train"]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "hub_token" or value == f.default or value is None:
                continue
            if isinstance(value, bool):
                parts.append(f"--{_flag(f.name)}" if value else f"--no-{_flag(f.name)}")
            else:
                parts += [f"--{_flag(f.name)}", str(value)]
        return shlex.join(parts)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from ``{field or flag name: value}``; unknown keys raise ``ValueError`` listing the known."""
        names = {f.name for f in dataclasses.fields(cls)}
        normalised = {k.replace("-", "_"): v for k, v in values.items() if k != DATA_RECORD}
        unknown = sorted(set(normalised) - names)
        if unknown:
            raise ValueError(f"unknown train options {unknown}; the options are {sorted(names)}")
        return cls(**normalised)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _help(field_: dataclasses.Field, text: str) -> str:
    """``text`` with its default appended, unless the text already says it or there is none; escaped
    for argparse, which %-formats help strings."""
    if field_.default is not None and "default" not in text:
        text = f"{text} (default: {field_.default})"
    return text.replace("%", "%%")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`TrainConfig` field, plus ``--config FILE``; an option with choices lists them
    from its registry."""
    parser.add_argument("--config", default=None, help="JSON file of options (flags override it)")
    listed = _listed_in_help()
    for f in dataclasses.fields(TrainConfig):
        meta = dict(f.metadata)
        text = meta.pop("help")
        if f.name in listed:
            text = f"{text}: {', '.join(listed[f.name])}"
        help_text = _help(f, text)
        flag = f"--{_flag(f.name)}"
        if isinstance(f.default, bool):
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
            continue
        kind = meta.pop("type", type(f.default))
        parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_text, **meta)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then the ``--config`` file, then the flags given on the command line."""
    values: dict[str, Any] = {}
    config_file = getattr(args, "config", None)
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"--config {config_file!r} does not exist")
        loaded = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {config_file!r} must hold a JSON object of options")
        values.update(loaded)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return TrainConfig.from_dict(values)
