"""Measure the bundled mnist-5k model and write its evaluation into its model card and docs.

    python benchmarks/bundled_model.py --model hf_ddpm/pretrained/mnist-5k --nll-json nll.json \
        --hardware "2-core AMD EPYC (CPU only)" --wall-time "81 min"

Writes ``samples.png`` (64 digits, classes in turn), ``classes.png`` (one row per class), ``quality.json``
into the model folder, appends an "Evaluation" section to its README.md, and writes docs/bundled-model.md.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from digit_quality import DigitJudge, generate, measure

from hf_ddpm import HFDDPMPipeline
from hf_ddpm.data.image_grid import image_grid
from hf_ddpm.sampling.samplers import DEFAULT_SAMPLING_STEPS

DOC = Path(__file__).resolve().parent.parent / "docs" / "bundled-model.md"
MARK = "\n## Evaluation\n"
REFRESH_NOTE = (
    "The folder carries byte copies of `hf_ddpm/core` (its remote code). After a change to core, refresh them "
    "without retraining with `python -m hf_ddpm.hub.bundled --refresh-code`; `tests/architecture/test_layout.py` fails, naming "
    "that command, while any copy differs from its source.\n"
)


def _grid(pipeline, classes, steps, seed, guidance):
    images = generate(pipeline, len(classes), steps, seed, classes, guidance)
    return image_grid((np.transpose(images, (0, 2, 3, 1)) + 1) / 2)


def _quality_table(report) -> list[str]:
    rows = [
        ("generated, unconditional (null label)", report.unconditional),
        (f"generated, class-conditional (guidance {report.guidance_scale:g})", report.conditional),
        ("floor: uniform noise", report.noise),
        ("ceiling: 500 held-out real digits", report.real_held_out),
    ]
    lines = [
        "| images | confident (p >= 0.9) | on-class | Fréchet distance (classifier features) |",
        "| --- | --- | --- | --- |",
    ]
    for name, m in rows:
        on_class = f"{m['on_class']:.1%}" if "on_class" in m else "n/a"
        lines.append(f"| {name} | {m['confident']:.1%} | {on_class} | {m['frechet']:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument(
        "--nll-json", required=True, help="report of hf-ddpm evaluate --metrics nll"
    )
    parser.add_argument("--hardware", required=True)
    parser.add_argument("--wall-time", required=True)
    parser.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_SAMPLING_STEPS,
        help="sampling steps for the measurements",
    )
    parser.add_argument("--guidance-scale", type=float, default=2.0)
    parser.add_argument("--num-samples", type=int, default=256)
    args = parser.parse_args()

    folder = Path(args.model)
    pipeline = HFDDPMPipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    torch.manual_seed(0)
    g = args.guidance_scale
    _grid(pipeline, np.arange(64) % 10, args.steps, 0, g).save(folder / "samples.png")
    _grid(pipeline, np.repeat(np.arange(10), 10), args.steps, 1, g).save(folder / "classes.png")
    report = measure(pipeline, DigitJudge.train(), args.num_samples, args.steps, 0, g)
    (folder / "quality.json").write_text(json.dumps(asdict(report), indent=2) + "\n")

    nll = json.loads(Path(args.nll_json).read_text())
    m = nll["metrics"]["nll"]
    nll_lines = [
        f"- NLL bound on the 500 held-out digits (`mnist-5k` split `test`, never trained on): "
        f"**{m['bpd']:.3f} ± {m['bpd_stderr']:.3f} bits/dim**",
        f"  - prior L_T {m['prior_bpd']:.4f}, rate {m['rate_bpd']:.3f}, distortion L_0 "
        f"{m['distortion_bpd']:.3f} bits/dim",
        f"  - estimator: {m['estimator']}, {m['timesteps_per_image']} timesteps per image; settings: "
        f"`{json.dumps(nll.get('settings', {}), sort_keys=True)}`",
    ]
    section = [
        "",
        "## Evaluation",
        "",
        f"- Hardware: {args.hardware}; wall time of training: {args.wall_time}",
        *nll_lines,
        "",
        f"Sample quality, judged by an MLP classifier trained on the 4,500 training digits "
        f"(`benchmarks/digit_quality.py`), {report.num_samples} samples, {report.steps} sampling steps, "
        f"seed {report.seed}:",
        "",
        *_quality_table(report),
        "",
        "One row per class (guidance as above):",
        "",
        "![one row per class](classes.png)",
        "",
    ]
    card = folder / "README.md"
    text = card.read_text(encoding="utf-8").split(MARK)[0].rstrip("\n")
    card.write_text(text + "\n" + "\n".join(section), encoding="utf-8")
    DOC.write_text(
        "# The bundled model: `hf_ddpm/pretrained/mnist-5k`\n\n"
        "Its model card, with the training command and figures, is "
        "[hf_ddpm/pretrained/mnist-5k/README.md](../hf_ddpm/pretrained/mnist-5k/README.md).\n\n"
        + REFRESH_NOTE
        + "\n".join(section).replace(
            "(classes.png)", "(../hf_ddpm/pretrained/mnist-5k/classes.png)"
        ),
        encoding="utf-8",
    )
    print("\n".join(section))


if __name__ == "__main__":
    main()
