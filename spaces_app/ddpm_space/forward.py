"""The Forward process tab: x_t drawn in one step from q(x_t | x_0), and plots of the schedule.

q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (Ho et al. 2020, eq. 4); the plots show beta_t,
abar_t and SNR(t) = abar_t / (1 - abar_t).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from .inputs import MAX_SEED, int_in, require_image
from .loading import ModelState
from .pictures import image_to_tensor, to_uint8


def schedule_table(scheduler: Any) -> pd.DataFrame:
    """beta_t, abar_t and log10 SNR(t) of ``scheduler`` for every training timestep."""
    betas = scheduler.betas.double().cpu()
    abar = scheduler.alphas_cumprod.double().cpu()
    return pd.DataFrame(
        {
            "t": np.arange(len(betas)),
            "beta_t": betas.numpy(),
            "alpha_bar_t": abar.numpy(),
            "log10_snr": torch.log10(abar / (1 - abar)).numpy(),
        }
    )


def forward_noise(
    state: ModelState, image: np.ndarray | None, t: float, noise_seed: float
) -> tuple[np.ndarray, np.ndarray, str]:
    """(x_0 as the model sees it, x_t ~ q(x_t | x_0), a line with the closed form's numbers)."""
    loaded = state.require()
    image = require_image(image)
    t = int_in("t", t, 0, loaded.num_train_timesteps - 1)
    noise_seed = int_in("Noise seed", noise_seed, 0, MAX_SEED)
    x0 = image_to_tensor(image, loaded.transform)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(noise_seed))
    scheduler = loaded.pipe.scheduler
    x_t = scheduler.add_noise(x0, noise, torch.tensor([t]))
    abar = float(scheduler.alphas_cumprod[t])
    info = (
        f"t = {t}: x_t = {math.sqrt(abar):.4f} x_0 + {math.sqrt(1 - abar):.4f} eps, "
        f"alpha-bar = {abar:.4g}, SNR = {abar / (1 - abar):.4g}."
    )
    return to_uint8(x0)[0], to_uint8(x_t)[0], info
