"""The small pretrained model shipped inside the package, so that sampling and the Space work offline."""

from __future__ import annotations

from pathlib import Path

BUNDLED_MODEL_DIR = Path(__file__).resolve().parent / "pretrained" / "mnist-5k"


def bundled_model_path() -> Path | None:
    """The bundled pipeline folder, or None when this checkout does not ship one yet."""
    return BUNDLED_MODEL_DIR if (BUNDLED_MODEL_DIR / "model_index.json").is_file() else None
