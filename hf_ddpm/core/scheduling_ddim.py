"""``HFDDIMScheduler``: DDIM (Song, Meng & Ermon 2021) behind diffusers' ``DDIMScheduler`` API, with the
optimal variances of Analytic-DDIM (Bao et al. 2022, arXiv 2201.06503) and SN/NPR-DDIM (Bao et al. ICML 2022).

Eq. 12 of Song et al., for a step t -> s with sigma_t = eta sqrt(beta-tilde_{s|t}) (eq. 16):

    x_s = sqrt(alpha-bar_s) x_0-hat + sqrt(1 - alpha-bar_s - sigma_t^2) eps-hat + sigma_t z.

"fixed_small" is that step itself (plain DDIM; eta = 0 is deterministic). The optimal types keep its mean and
add the uncertainty about x_0 to its variance: sigma^2 = lambda^2 + gain^2 Cov[x_0 | x_t] with
lambda = eta sqrt(beta-tilde_{s|t}) (:func:`.covariance.step_variance_coefficients`), so they add noise even
at eta = 0, except on the last step, which returns the mean as the authors' sampler does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin

from .analytic import check_eps_second_moment, last_step_pixels
from .covariance import step_variance_coefficients
from .diffusion_tables import DiffusionTables, extract
from .forward_process import q_sample
from .gaussian import reparameterize  # noqa: F401  (imported by forward_process)
from .parameterization import resolve_parameterization, velocity, x0_from_prediction
from .reverse_process import split_model_output
from .schedules import SPACINGS, checked_custom_timesteps, make_betas, spaced_timesteps
from .stepping import StepIndexMixin, computes_upcast, standard_normal_noise, x0_processing
from .variance import (
    HEAD_VARIANCE_TYPES,
    AnalyticVariance,
    NoiseScale,
    check_head_prediction_type,
    resolve_variance_type,
)

# "fixed_small" is DDIM's own sigma_t; the others are the optimal variances that have a DDIM form.
DDIM_VARIANCE_TYPES: tuple[str, ...] = ("fixed_small", AnalyticVariance.name, *HEAD_VARIANCE_TYPES)


@dataclass(frozen=True)
class _DDIMStep:
    """Float64 constants of one step t -> s of eq. 12 for one eta."""

    x0_coef_xt: float  # x_0-hat = x0_coef_xt x_t + x0_coef_out output (the parameterization's)
    x0_coef_out: float
    sqrt_one_minus_alpha_bar: (
        float  # eps-hat = (x_t - sqrt(alpha-bar_t) x_0-hat) / sqrt(1 - alpha-bar_t)
    )
    sqrt_alpha_bar: float
    sqrt_alpha_bar_prev: float  # eq. 12's coefficient of x_0-hat
    direction_coef: float  # sqrt(1 - alpha-bar_s - lambda^2), eq. 12's coefficient of eps-hat
    noise_scale: NoiseScale
    adds_noise: bool


class HFDDIMScheduler(StepIndexMixin, SchedulerMixin, ConfigMixin):
    """DDIM (Song et al. 2021, eq. 12) with diffusers' ``DDIMScheduler`` config and the optimal variances.

    Args:
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr: the
            noise schedule, as diffusers' (computed in float64); scale_linear_betas_by_timesteps as
            HFDDPMScheduler's, so that a DDPM model's config gives the same betas.
        clip_sample, clip_sample_range, thresholding, dynamic_thresholding_ratio, sample_max_value: what is
            done to the predicted x_0.
        set_alpha_to_one: the last step goes to alpha-bar = 1 (the data), else to alpha-bar_0.
        prediction_type: "epsilon", "sample" or "v_prediction".
        timestep_spacing, steps_offset: "leading", "trailing" or "linspace", as diffusers' DDIM. Each step goes
            to the next timestep on the schedule (diffusers' DDIM goes to t - T // K, the same timestep except
            with "linspace").
        variance_type: "fixed_small" (DDIM's sigma_t = eta sqrt(beta-tilde)), "analytic" (Analytic-DDIM, from
            ``eps_second_moment``), "sn" or "npr" (a covariance head's per-pixel variance: the model output is
            eps then the head's channels).
        eps_second_moment: Gamma_n of the trained network (``hf-ddpm calibrate``), for "analytic".
        analytic_clip_last_step: with an optimal variance, cap the last noise-adding step's variance at about a
            pixel bin (the authors' sampling setting).
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        scale_linear_betas_by_timesteps: bool = False,
        variance_type: str = "fixed_small",
        eps_second_moment: list[float] | None = None,
        analytic_clip_last_step: bool = False,
    ) -> None:
        if timestep_spacing not in SPACINGS:
            raise ValueError(
                f"Unknown timestep_spacing {timestep_spacing!r} for HFDDIMScheduler; allowed values: "
                f"{', '.join(SPACINGS)}"
            )
        if variance_type not in DDIM_VARIANCE_TYPES:
            raise ValueError(
                f"variance_type {variance_type!r} has no DDIM form; HFDDIMScheduler allows "
                f"{', '.join(DDIM_VARIANCE_TYPES)}"
            )
        betas = make_betas(
            beta_schedule,
            num_train_timesteps,
            beta_start,
            beta_end,
            trained_betas,
            rescale_betas_zero_snr,
            scale_linear_betas_by_timesteps,
        )
        self._tables = DiffusionTables.from_betas(betas)
        self._device_tables: dict[torch.device, DiffusionTables] = {}
        moments = (
            check_eps_second_moment(eps_second_moment, num_train_timesteps)
            if variance_type == AnalyticVariance.name
            else None
        )
        self._variance = resolve_variance_type(
            variance_type,
            moments,
            last_step_pixels(analytic_clip_last_step, beta_schedule, trained_betas),
        )
        check_head_prediction_type(self._variance, prediction_type)
        self._splits_output = self._variance.head
        self._parameterization = resolve_parameterization(prediction_type)
        self._process_x0 = x0_processing(
            clip_sample,
            clip_sample_range,
            thresholding,
            dynamic_thresholding_ratio,
            sample_max_value,
            in_place=True,
        )
        # diffusers' public float32 views.
        self.betas = torch.from_numpy(betas).float()
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = self._tables.alphas_cumprod.float()
        self._final_alpha_cumprod = (
            1.0 if set_alpha_to_one else float(self._tables.alphas_cumprod[0])
        )
        self.final_alpha_cumprod = torch.tensor(self._final_alpha_cumprod)
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = torch.from_numpy(np.arange(num_train_timesteps)[::-1].copy())
        self._schedule = self.timesteps.numpy().copy()
        self._steps_by_eta: dict[float, list[_DDIMStep]] = {}

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Choose the sampling timesteps: ``num_inference_steps`` spaced by ``timestep_spacing``, or custom
        strictly descending ``timesteps`` in [0, T)."""
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("Pass exactly one of num_inference_steps or timesteps")
        if timesteps is not None:
            ts = checked_custom_timesteps(timesteps, self.config.num_train_timesteps)
        else:
            ts = spaced_timesteps(
                self.config.timestep_spacing,
                num_inference_steps,
                self.config.num_train_timesteps,
                self.config.steps_offset,
            )
        self.num_inference_steps = len(ts)
        self._schedule = ts
        self._steps_by_eta = {}
        self.timesteps = torch.from_numpy(ts.copy()).to(device)
        self._reset_step_index()

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """DDIM feeds x_t to the network unscaled."""
        return sample

    def model_output_channels(self, sample_channels: int) -> int:
        """Channels the model output must have: for a covariance head's type, eps then the head's."""
        return 2 * sample_channels if self._splits_output else sample_channels

    def _steps_for(self, eta: float) -> list[_DDIMStep]:
        """The constants of every step of the schedule for ``eta``, in sampling order (computed once)."""
        steps = self._steps_by_eta.get(eta)
        if steps is not None:
            return steps
        ab_all = self._tables.alphas_cumprod.numpy()
        ts = self._schedule
        final = self._final_alpha_cumprod
        ab_t = ab_all[ts]
        ab_s = np.append(ab_all[ts[1:]], final)
        floor, _ = step_variance_coefficients(ab_t, ab_s, eta)
        c_xt, c_out = self._parameterization.x0_coefficients(np.sqrt(ab_t), np.sqrt(1.0 - ab_t))
        last = len(ts) - 1
        if self._variance.name == "fixed_small":
            # DDIM's own noise, drawn at every step when eta > 0, the last included, as diffusers does.
            scales: list[NoiseScale] = np.sqrt(floor).tolist()
            adds_noise = [eta > 0] * len(ts)
        else:
            ascending = torch.from_numpy(ts[::-1].copy())
            chain = self._variance.on_steps(
                torch.from_numpy(ab_t[::-1].copy()), ascending, eta, final
            )
            scales = chain.noise_scales()[::-1]
            adds_noise = [k < last for k in range(len(ts))]
        steps = [
            _DDIMStep(
                float(np.broadcast_to(c_xt, ab_t.shape)[k]),
                float(np.broadcast_to(c_out, ab_t.shape)[k]),
                math.sqrt(1.0 - ab_t[k]),
                math.sqrt(ab_t[k]),
                math.sqrt(ab_s[k]),
                math.sqrt(max(1.0 - ab_s[k] - floor[k], 0.0)),
                scales[k],
                adds_noise[k],
            )
            for k in range(len(ts))
        ]
        self._steps_by_eta[eta] = steps
        return steps

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | list[torch.Generator] | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """x_s from x_t by eq. 12 of Song et al., the step ``timesteps[step_index]`` (diffusers' index rule,
        :mod:`.stepping`), with diffusers' ``DDIMScheduler.step`` arguments: ``eta`` scales DDIM's noise,
        ``use_clipped_model_output`` recomputes eps-hat from the clipped x_0-hat, ``variance_noise`` replaces
        the draw from ``generator``."""
        if self.num_inference_steps is None:
            raise ValueError("Call set_timesteps before step")
        if variance_noise is not None and generator is not None:
            raise ValueError("Pass either generator or variance_noise to step, not both")
        c = self._steps_for(float(eta))[self._current_step_index(timestep)]
        if self._splits_output or model_output.shape != sample.shape:
            prediction, values = split_model_output(model_output, sample, self._variance)
        else:
            prediction, values = model_output, None
        upcast = computes_upcast(sample.dtype)
        x_t = sample.float() if upcast else sample
        output = prediction.float() if upcast else prediction

        # 1. Predict x_0 and eps from the network's output (eq. 12's "predicted x_0"; for epsilon, eq. 9).
        x0 = x0_from_prediction(output, x_t, c.x0_coef_xt, c.x0_coef_out)
        if self._parameterization.name == "epsilon":
            eps = output
        else:
            eps = (x_t - c.sqrt_alpha_bar * x0) / c.sqrt_one_minus_alpha_bar
        # 2. Clip x_0 (or threshold it), in place: x0 is a buffer of this step's own.
        if self._process_x0 is not None:
            x0 = self._process_x0(x0)
            if use_clipped_model_output:
                eps = (x_t - c.sqrt_alpha_bar * x0) / c.sqrt_one_minus_alpha_bar
        # 3. The mean: sqrt(alpha-bar_s) x_0-hat + sqrt(1 - alpha-bar_s - lambda^2) eps-hat (eq. 12).
        prev = torch.mul(eps, c.direction_coef).add_(x0, alpha=c.sqrt_alpha_bar_prev)
        # 4. The variance (DDIM's lambda^2, plus gain^2 Cov[x_0 | x_t] for the optimal types), and
        # 5. its noise sigma z.
        if c.adds_noise:
            if variance_noise is None:
                z = standard_normal_noise(prediction.shape, generator, prediction, x_t.dtype)
            else:
                z = variance_noise.to(x_t.dtype)
            sigma = (
                c.noise_scale
                if values is None
                else c.noise_scale(values.float() if upcast else values)
            )
            prev = prev.add_(z * sigma)
        self._advance_step_index()
        if upcast:
            prev, x0 = prev.to(sample.dtype), x0.to(sample.dtype)
        if not return_dict:
            return prev, x0
        return DDIMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def _tables_on(self, device: torch.device) -> DiffusionTables:
        tables = self._device_tables.get(device)
        if tables is None:
            tables = self._device_tables[device] = self._tables.to(device)
        return tables

    @staticmethod
    def _batch_timesteps(timesteps: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(timesteps, device=like.device).long()
        return (t.expand(like.shape[0]) if t.ndim == 0 else t).reshape(-1)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor | int
    ) -> torch.Tensor:
        """x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) eps (Song et al. eq. 4), one timestep per
        sample."""
        t = self._batch_timesteps(timesteps, original_samples)
        return q_sample(self._tables_on(original_samples.device), original_samples, t, noise)

    def get_velocity(
        self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor | int
    ) -> torch.Tensor:
        """v = sqrt(alpha-bar_t) eps - sqrt(1 - alpha-bar_t) x_0 (Salimans & Ho 2022)."""
        t = self._batch_timesteps(timesteps, sample)
        tables = self._tables_on(sample.device)
        return velocity(
            sample,
            noise,
            extract(tables.sqrt_alphas_cumprod, t, sample),
            extract(tables.sqrt_one_minus_alphas_cumprod, t, sample),
        )
