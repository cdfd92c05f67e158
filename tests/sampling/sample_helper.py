"""Run ``hf-ddpm sample`` (cli.main) in a subprocess, for the 2-process and the SIGKILL tests.

Usage: python tests/sampling/sample_helper.py REPORT_DIR [KILL_AT_SAVE] -- SAMPLE_ARGS...

- REPORT_DIR: each rank writes ``rank-R.json`` there: the images its UNet calls saw (the sum of their
  batch sizes, so N x steps over all ranks means no image was drawn twice) and the exit status.
- KILL_AT_SAVE: SIGKILL this process in the middle of its K-th PNG write (1-based), after half of the
  file's bytes are on disk.
"""

import json
import os
import signal
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)


def main() -> None:
    split = sys.argv.index("--")
    report_dir = Path(sys.argv[1])
    kill_at = int(sys.argv[2]) if split > 2 else None
    argv = sys.argv[split + 1 :]

    from diffusers import UNet2DModel
    from PIL import Image

    from hf_ddpm import cli

    seen = {"unet_images": 0, "saves": 0}
    forward = UNet2DModel.forward

    def counting_forward(self, sample, *args, **kwargs):
        seen["unet_images"] += int(sample.shape[0])
        return forward(self, sample, *args, **kwargs)

    UNet2DModel.forward = counting_forward
    save = Image.Image.save

    def killing_save(self, fp, *args, **kwargs):
        seen["saves"] += 1
        if seen["saves"] == kill_at:
            save(self, fp, *args, **kwargs)
            data = Path(fp).read_bytes()
            Path(fp).write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return save(self, fp, *args, **kwargs)

    Image.Image.save = killing_save
    status = cli.main(argv)
    rank = int(os.environ.get("RANK", "0"))
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / f"rank-{rank}.json").write_text(json.dumps({**seen, "status": status}))
    sys.exit(status)


if __name__ == "__main__":
    main()
