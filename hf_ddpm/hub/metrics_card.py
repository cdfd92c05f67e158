"""A report of ``hf-ddpm evaluate`` in a model card's ``model-index``: the card of a saved folder (what
``hf-ddpm train`` writes after its last evaluation) and the card of a Hub repo (``evaluate --push-to-hub``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# metric -> (model-index metric type, display name)
_CARD_METRICS = {
    "nll": ("nll_bpd", "NLL bound (bits/dim)"),
    "fid": ("fid", "FID"),
    "fd-dinov2": ("fd_dinov2", "FD_DINOv2"),
}


def card_eval_results(report: dict[str, Any]) -> list[Any]:
    """The report's metrics as huggingface_hub ``EvalResult`` entries of a card's ``model-index``.

    Raises:
        ValueError: the report has no metrics.
    """
    from huggingface_hub import EvalResult

    settings = report["settings"]
    results = [
        EvalResult(
            task_type="unconditional-image-generation",
            task_name="Unconditional image generation",
            dataset_type=settings["dataset"],
            dataset_name=settings["dataset"],
            dataset_split=settings["split"],
            metric_type=_CARD_METRICS[name][0],
            metric_name=_CARD_METRICS[name][1],
            metric_value=round(values["bpd"] if name == "nll" else values["value"], 4),
        )
        for name, values in report["metrics"].items()
    ]
    if not results:
        raise ValueError("the report has no metrics to push")
    return results


def write_metrics_to_card(folder: str | Path, report: dict[str, Any], model_name: str) -> Path:
    """Put the report's metrics into the ``model-index`` of a saved folder's README.md (written
    atomically), as :func:`push_metrics_to_hub` does on the Hub."""
    from huggingface_hub import ModelCard

    from hf_ddpm.core.model_card import MODEL_CARD
    from hf_ddpm.core.saving import write_atomically

    path = Path(folder) / MODEL_CARD
    card = ModelCard.load(path)
    card.data.model_name = model_name
    card.data.eval_results = card_eval_results(report)
    write_atomically(path, str(card))
    return path


def push_metrics_to_hub(
    repo_id: str, report: dict[str, Any], token: str | None = None, model_name: str | None = None
) -> str:
    """Add the report's metrics to the ``model-index`` of the Hub repo's model card.

    Results with the same task, dataset, split and metric type are replaced; others are kept. Returns the
    commit URL.
    """
    from huggingface_hub import ModelCardData, metadata_update

    name = model_name or repo_id.split("/")[-1]
    return metadata_update(
        repo_id,
        ModelCardData(model_name=name, eval_results=card_eval_results(report)).to_dict(),
        overwrite=True,
        token=token,
        commit_message="Update evaluation metrics (hf-ddpm evaluate)",
    )
