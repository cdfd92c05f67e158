"""Run hf_ddpm.training.train.train in a subprocess for the resume-after-SIGKILL/SIGTERM and the 2-process
tests.

Usage: python tests/training/train_helper.py CONFIG_JSON REPORT_DIR [SIGNALS]

- CONFIG_JSON: TrainConfig fields.
- REPORT_DIR: each rank writes ``rank-R.json`` there: a SHA-256 of its final (unwrapped) model weights
  and the list of file-writing calls it made (checkpoints, pipeline saves, images), so the test can check
  that the ranks stay in sync and that only rank 0 writes.
- SIGNALS: comma-separated events. ``K`` SIGKILLs this process at the start of the UNet's forward call
  number K (1-based), i.e. in the middle of a training step; ``K:SIGTERM`` sends it SIGTERM (or any
  signal) there instead, ``K:SIGTERM@R`` only on rank R; ``save#N:SIGTERM`` sends it at the start of the
  N-th checkpoint save.
- With ``TRAIN_HELPER_CLI=1`` the run goes through ``hf-ddpm train --config CONFIG_JSON`` and the helper
  exits with its status.
"""

import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)


def main() -> None:
    config_path, report_dir = sys.argv[1], Path(sys.argv[2])
    rank = int(os.environ.get("RANK", "0"))
    at_forward: dict[int, signal.Signals] = {}
    at_save: dict[int, signal.Signals] = {}
    for event in filter(None, (sys.argv[3] if len(sys.argv) > 3 else "").split(",")):
        where, _, name = event.partition(":")
        name, _, only_rank = name.partition("@")
        if only_rank and int(only_rank) != rank:
            continue
        number = signal.Signals[name] if name else signal.SIGKILL
        if where.startswith("save#"):
            at_save[int(where.removeprefix("save#"))] = number
        else:
            at_forward[int(where)] = number

    from diffusers import UNet2DModel
    from PIL import Image

    from hf_ddpm.core import pipeline
    from hf_ddpm.training import run_checkpoint, train

    writes: list[str] = []

    def recording(name, original):
        def wrapper(*args, **kwargs):
            writes.append(name)
            return original(*args, **kwargs)

        return wrapper

    config = train.TrainConfig.from_dict(json.loads(Path(config_path).read_text()))
    output_dir = str(Path(config.output_dir).resolve())

    def inside_output(target) -> bool:
        # datasets also saves PIL images (PNG-encoding the data): only writes into the output count.
        return isinstance(target, str | os.PathLike) and str(Path(target).resolve()).startswith(
            output_dir
        )

    image_save, write_text = Image.Image.save, Path.write_text

    def recording_image_save(self, fp, *args, **kwargs):
        if inside_output(fp):
            writes.append("image_save")
        return image_save(self, fp, *args, **kwargs)

    def recording_write_text(self, *args, **kwargs):
        if inside_output(self):
            writes.append("write_text")
        return write_text(self, *args, **kwargs)

    save_checkpoint = recording("save_checkpoint", run_checkpoint.save_checkpoint)
    saves = [0]

    def signalling_save_checkpoint(*args, **kwargs):
        saves[0] += 1
        if saves[0] in at_save:
            os.kill(os.getpid(), at_save[saves[0]])
        return save_checkpoint(*args, **kwargs)

    run_checkpoint.save_checkpoint = signalling_save_checkpoint
    pipeline.HFDDPMPipeline.save_pretrained = recording(
        "save_pretrained", pipeline.HFDDPMPipeline.save_pretrained
    )
    Image.Image.save = recording_image_save
    Path.write_text = recording_write_text

    if at_forward:
        calls = [0]
        forward = UNet2DModel.forward

        def signalled_forward(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] in at_forward:
                os.kill(os.getpid(), at_forward[calls[0]])
            return forward(self, *args, **kwargs)

        UNet2DModel.forward = signalled_forward

    trainer_result = {}
    original_run = train._Trainer.run

    def run_and_report(self):
        result = original_run(self)
        weights = self.setup.unwrapped.state_dict()
        digest = hashlib.sha256()
        for key in sorted(weights):
            digest.update(key.encode())
            digest.update(weights[key].detach().cpu().contiguous().numpy().tobytes())
        trainer_result.update(
            rank=self.setup.accelerator.process_index,
            world=self.setup.accelerator.num_processes,
            weights_sha256=digest.hexdigest(),
            step=result.step,
        )
        return result

    train._Trainer.run = run_and_report
    status = 0
    if os.environ.get("TRAIN_HELPER_CLI") == "1":
        from hf_ddpm.cli import main as cli_main

        status = cli_main(["train", "--config", config_path])
    else:
        train.train(config)
    report_dir.mkdir(parents=True, exist_ok=True)
    trainer_result["writes"] = writes
    (report_dir / f"rank-{trainer_result.get('rank', rank)}.json").write_text(
        json.dumps(trainer_result)
    )
    sys.exit(status)


if __name__ == "__main__":
    main()
