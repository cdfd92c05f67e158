"""How good are generated digits? A classifier trained on real digits judges them.

Measures, on 32x32 grey images in [-1, 1]:
- ``confident``: the fraction the classifier labels with probability >= 0.9;
- ``on_class``: for class-conditional samples, the fraction labelled as the class asked for;
- ``frechet``: the Fréchet distance to held-out real digits in the classifier's penultimate features.

Each figure has a floor (uniform noise) and a ceiling (the held-out real digits) computed the same way.

    python benchmarks/digit_quality.py --model hf_ddpm/pretrained/mnist-5k --num-samples 256 --steps 100
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.neural_network import MLPClassifier

from hf_ddpm.core.class_layout import null_label_of
from hf_ddpm.data.image_datasets import load_image_dataset, preprocess
from hf_ddpm.evaluation.frechet import feature_statistics, frechet_distance

RESOLUTION = 32


def real_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    data = preprocess(load_image_dataset("mnist-5k", split=split, class_column="label"), RESOLUTION)
    batch = data[: len(data)]
    images = torch.stack(list(batch["pixel_values"])).numpy().reshape(len(data), -1)
    return images, np.asarray(batch["label"])


@dataclass
class DigitJudge:
    """An MLP on the 4,500 training digits; judges images as (N, 1, 32, 32) arrays in [-1, 1]."""

    classifier: MLPClassifier
    reference_features: np.ndarray  # penultimate features of the 500 held-out digits

    @classmethod
    def train(cls, seed: int = 0) -> DigitJudge:
        x, y = real_digits("train")
        classifier = MLPClassifier(hidden_layer_sizes=(256, 128), max_iter=60, random_state=seed)
        classifier.fit(x, y)
        judge = cls(classifier, np.empty(0))
        judge.reference_features = judge.features(real_digits("test")[0])
        return judge

    def features(self, images: np.ndarray) -> np.ndarray:
        """The last hidden layer's ReLU activations."""
        h = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
        for w, b in zip(self.classifier.coefs_[:-1], self.classifier.intercepts_[:-1]):
            h = np.maximum(h @ w + b, 0.0)
        return h

    def judge(self, images: np.ndarray, classes: np.ndarray | None = None) -> dict[str, float]:
        x = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
        probs = self.classifier.predict_proba(x)
        result = {
            "confident": float((probs.max(1) >= 0.9).mean()),
            "frechet": frechet_distance(
                feature_statistics(self.features(x)), feature_statistics(self.reference_features)
            ),
        }
        if classes is not None:
            result["on_class"] = float((probs.argmax(1) == np.asarray(classes)).mean())
        return result


@dataclass
class QualityReport:
    unconditional: dict[str, float]
    conditional: dict[str, float]
    noise: dict[str, float]
    real_held_out: dict[str, float]
    num_samples: int
    steps: int
    guidance_scale: float
    seed: int


def generate(
    pipeline, num: int, steps: int, seed: int, classes=None, guidance_scale=1.0
) -> np.ndarray:
    kwargs = {}
    if classes is not None:
        kwargs = {"class_labels": torch.as_tensor(classes), "guidance_scale": guidance_scale}
    elif getattr(pipeline.unet.config, "num_class_embeds", None):
        # Unconditional samples of a CFG-trained model: its null label.
        null = null_label_of(
            pipeline.unet.config.num_class_embeds, pipeline.config.null_class_label
        )
        kwargs = {"class_labels": [null] * num}
    generator = torch.Generator().manual_seed(seed)
    out = pipeline(
        batch_size=num, generator=generator, num_inference_steps=steps, output_type="pt", **kwargs
    ).images
    return (out.float() * 2 - 1).numpy()


def measure(
    pipeline,
    judge: DigitJudge,
    num_samples: int = 256,
    steps: int = 100,
    seed: int = 0,
    guidance_scale: float = 2.0,
) -> QualityReport:
    classes = np.arange(num_samples) % 10
    real, real_labels = real_digits("test")
    noise = np.random.default_rng(seed).uniform(-1, 1, size=(num_samples, RESOLUTION * RESOLUTION))
    return QualityReport(
        unconditional=judge.judge(generate(pipeline, num_samples, steps, seed)),
        conditional=judge.judge(
            generate(pipeline, num_samples, steps, seed + 1, classes, guidance_scale), classes
        ),
        noise=judge.judge(noise, classes),
        real_held_out=judge.judge(real, real_labels),
        num_samples=num_samples,
        steps=steps,
        guidance_scale=guidance_scale,
        seed=seed,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--guidance-scale", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from hf_ddpm import HFDDPMPipeline

    pipeline = HFDDPMPipeline.from_pretrained(args.model)
    pipeline.set_progress_bar_config(disable=True)
    report = measure(
        pipeline, DigitJudge.train(), args.num_samples, args.steps, args.seed, args.guidance_scale
    )
    text = json.dumps(asdict(report), indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
