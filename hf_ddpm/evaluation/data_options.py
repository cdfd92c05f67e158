"""The data ``hf-ddpm evaluate``, ``calibrate`` and ``fit-covariance`` read when no data flag is given: the
model's own.

``hf-ddpm train`` writes ``train_config.json`` beside the pipeline, naming the dataset or image folder (as
an absolute path) the model was trained on, and whether it left out unreadable files
(``--skip-bad-images``); without ``--dataset`` or ``--train-data-dir`` these commands read that data, the
same way. A model
without the file (one not trained by hf-ddpm, or saved by hand) needs a data flag: no dataset is assumed,
since the bundled grey digits fit only grey 32x32 models.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_ddpm.data.image_datasets import BUNDLED_DATASETS, TRAIN_RECORD, model_train_record


def resolve_data_flags(args: argparse.Namespace, command: str) -> None:
    """Fill ``args.dataset``, ``args.train_data_dir``, ``args.image_column`` and (for a folder the run
    read with it) ``args.skip_bad_images`` from the model's ``train_config.json`` when neither data flag
    is given, and log which data that is.

    Raises:
        ValueError: no data flag, and the model records no data, or names a folder that is not here.
    """
    if args.dataset is not None or args.train_data_dir is not None:
        return
    record, where = model_train_record(args.model)
    flags = (
        f"pass --dataset NAME (a Hub dataset id, or the bundled {' or '.join(BUNDLED_DATASETS)}) or "
        "--train-data-dir FOLDER"
    )
    if record is None or not (record.get("train_data_dir") or record.get("dataset")):
        raise ValueError(
            f"which data? No --dataset or --train-data-dir was given, and the model has no "
            f"{TRAIN_RECORD} naming the data it was trained on (looked in {where}); {flags}"
        )
    folder = record.get("train_data_dir")
    if folder:
        if not Path(folder).is_dir():
            raise ValueError(
                f"the model's {TRAIN_RECORD} names --train-data-dir {folder!r}, which is not a folder "
                f"here (relative paths are read from the current folder); {flags}"
            )
        args.train_data_dir = folder
        chosen = f"--train-data-dir {folder}"
        # The files the run left out are still there and still unreadable.
        if record.get("skip_bad_images") and not args.skip_bad_images:
            args.skip_bad_images = True
            chosen += " --skip-bad-images"
    else:
        args.dataset = record["dataset"]
        chosen = f"--dataset {args.dataset}"
    if args.image_column is None:
        args.image_column = record.get("image_column")
    # Printed, not logged: these commands configure no logging, and the user must see what was read.
    print(
        f"hf-ddpm {command}: reading the model's own data, {chosen} (split {args.split}), as its "
        f"{TRAIN_RECORD} names it; --dataset or --train-data-dir reads other data"
    )
