"""The Likelihood tab: the variational bound L = L_T + sum_{t>1} L_{t-1} + L_0 (Ho et al. 2020, eq. 5)
in bits/dim, computed by ``hf_ddpm.variational_bound``: prior L_T, rate sum_{t>1} L_{t-1}, distortion L_0.

An upload is prepared as ``hf-ddpm train`` and ``hf-ddpm evaluate`` prepare data, so the bits/dim for
an image is the number the evaluation gives for it.
"""

from __future__ import annotations

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
    try:
        from hf_ddpm import HFDDPMScheduler, variational_bound
        from hf_ddpm.core.pipeline_base import covariance_head_in_use
        from hf_ddpm.evaluation.bound import network_of
    except ImportError as err:
        raise gr.Error(
            "The likelihood tab needs the hf_ddpm package, which this Space does not have "
            "(deploy it with `hf-ddpm space`, which includes it)."
        ) from err
    pipe = loaded.pipe
    # No class (the null label) bounds -log p(x), which is what `hf-ddpm evaluate` reports for a
    # class-conditional model; a class gives -log p(x | y).
    label = None if loaded.num_classes is None else class_or_null(class_label, loaded.num_classes)
    scheduler = HFDDPMScheduler.from_config(pipe.scheduler.config)
    # The bound of the model's own scheduler: with its covariance head where its variance type is one.
    head = covariance_head_in_use(pipe.unet, scheduler, getattr(pipe, "covariance_head", None))
    model = network_of(pipe.unet, label, head)
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
