"""The Likelihood tab: the variational bound L = L_T + sum_{t>1} L_{t-1} + L_0 (Ho et al. 2020, eq. 5)
in bits/dim, computed by ``hf_ddpm.variational_bound``: prior L_T, rate sum_{t>1} L_{t-1}, distortion L_0.

An upload is prepared as ``hf-ddpm train`` and ``hf-ddpm evaluate`` prepare data, so the bits/dim for
an image is the number the evaluation gives for it.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
import torch

from .inputs import MAX_SEED, class_or_null, int_in, require_image
from .loading import ModelState
from .pictures import image_to_tensor


def likelihood_bound(
    state: ModelState, image: np.ndarray | None, seed: float, class_label: float | None
) -> tuple[pd.DataFrame, dict[str, float]]:
    """(per-timestep terms L_t in bits/dim, the total and its prior, rate and distortion parts)."""
    loaded = state.require()
    image = require_image(image)
    seed = int_in("Seed", seed, 0, MAX_SEED)
    model = loaded.pipe.unet
    if loaded.num_classes is not None:
        # No class (the null label) bounds -log p(x), which is what `hf-ddpm evaluate` reports for a
        # class-conditional model; a class gives -log p(x | y).
        label = class_or_null(class_label, loaded.num_classes)

        def model(x_t: torch.Tensor, t: torch.Tensor) -> Any:
            labels = torch.full((x_t.shape[0],), label, dtype=torch.long, device=x_t.device)
            return loaded.pipe.unet(x_t, t, class_labels=labels)

    try:
        from hf_ddpm import HFDDPMScheduler, variational_bound
    except ImportError as err:
        raise gr.Error(
            "The likelihood tab needs the hf_ddpm package, which this Space does not have "
            "(deploy it with `hf-ddpm space`, which includes it)."
        ) from err
    pipe = loaded.pipe
    scheduler = HFDDPMScheduler.from_config(pipe.scheduler.config)
    x0 = image_to_tensor(image, loaded.transform).to(pipe.device)
    with torch.no_grad():
        bound = variational_bound(
            model,
            scheduler,
            x0,
            generator=torch.Generator().manual_seed(seed),
            num_bins=loaded.num_bins,
        )
    terms = bound.terms_bpd[0].double().cpu()
    summary = {
        "total_bpd": float(bound.total_bpd[0]),
        "prior_bpd": float(bound.prior_bpd[0]),
        "rate_bpd": float(bound.rate_bpd[0]),
        "distortion_bpd": float(bound.distortion_bpd[0]),
    }
    table = pd.DataFrame({"t": np.arange(len(terms)), "L_t_bpd": terms.numpy()})
    return table, summary
