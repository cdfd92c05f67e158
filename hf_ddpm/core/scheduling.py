"""``HFDDPMScheduler``: the DDPM sampler and training objective behind diffusers' scheduler API.

It reads and writes the same config as diffusers' ``DDPMScheduler`` (so ``from_config`` works both ways) and
adds what diffusers leaves out: the posterior and p_theta as functions, the variational bound terms, the
training losses, and correct fixed_large_log and respaced variances. All schedule arithmetic is float64.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput

from .analytic import check_eps_second_moment, last_step_pixels, optimal_timesteps
from .covariance import x0_covariance  # noqa: F401  (imported by variance)
from .diffusion_tables import DiffusionTables, check_num_inference_steps, extract
from .forward_process import q_posterior_mean_variance as _q_posterior_mean_variance
from .forward_process import q_sample

# diffusers' remote-code loader copies only the relative imports written in this file, not theirs.
from .gaussian import normal_kl  # noqa: F401
from .losses import LossInputs, resolve_loss_type
from .parameterization import resolve_parameterization, velocity, x0_from_prediction
from .reverse_process import PMeanVariance, ReverseProcess, split_model_output
from .reverse_process import p_mean_variance as _p_mean_variance
from .schedules import (
    SPACINGS,
    checked_custom_timesteps,
    make_betas,
    spaced_timesteps,
)
from .stepping import StepIndexMixin, computes_upcast, standard_normal_noise, x0_processing
from .variance import (
    NoiseScale,
    check_head_prediction_type,
    resolve_variance_type,
)
from .vlb import prior_bpd as _prior_bpd
from .vlb import vlb_terms_bpd as _vlb_terms_bpd

TIMESTEP_SPACINGS = (*SPACINGS, "optimal")


@dataclass(init=False)
class HFDDPMSchedulerOutput(BaseOutput):
    """``prev_sample`` x_{t-1} and ``pred_original_sample``, the x_0 predicted at this step."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None

    def __init__(
        self, prev_sample: torch.Tensor, pred_original_sample: torch.Tensor | None = None
    ) -> None:
        # BaseOutput's dataclass __post_init__ walks fields() and sets each value twice: about 4 us, which
        # is 2% of a step on a 16x3x32x32 batch. This fills the same dict entries and attributes directly.
        object.__setattr__(self, "prev_sample", prev_sample)
        object.__setattr__(self, "pred_original_sample", pred_original_sample)
        OrderedDict.__setitem__(self, "prev_sample", prev_sample)
        if pred_original_sample is not None:
            OrderedDict.__setitem__(self, "pred_original_sample", pred_original_sample)


@dataclass(frozen=True)
class _Step:
    """Float64 constants of one sampling step t -> prev_t of the (possibly respaced) chain."""

    x0_coef_xt: float  # x_0 = x0_coef_xt * x_t + x0_coef_out * prediction (the parameterization's)
    x0_coef_out: float
    posterior_mean_coef1: (
        float  # eq. 7's mu-tilde = coef1 x_0 + coef2 x_t, for this step's effective beta
    )
    posterior_mean_coef2: float
    noise_scale: NoiseScale  # the variance type's sigma of this step
    adds_noise: bool


class HFDDPMScheduler(StepIndexMixin, SchedulerMixin, ConfigMixin):
    """DDPM (Ho et al. 2020) with Nichol & Dhariwal 2021's cosine schedule, respacing and learned variances.

    Args:
        num_train_timesteps: T, the length of the forward process.
        beta_start, beta_end, beta_schedule, trained_betas: the noise schedule; ``beta_schedule`` is one of
            "linear", "scaled_linear", "squaredcos_cap_v2" (cosine), "sigmoid", "laplace".
        variance_type: Sigma_theta: "fixed_small" (beta-tilde), "fixed_large" (beta), their "_log" twins (same
            distribution), "learned" (the network outputs log Sigma), "learned_range" (Nichol & Dhariwal eq. 15),
            "analytic" (Bao et al. 2022's optimal variance, from ``eps_second_moment``), or "sn" / "npr" (the
            per-pixel optimal variance of a covariance head, Bao et al. ICML 2022); learned types need a network
            with twice the sample's channels, and sn / npr a model output of eps then the head's channels.
        clip_sample, clip_sample_range: clip the predicted x_0 to [-range, range] when sampling.
        prediction_type: "epsilon", "sample" (x_0) or "v_prediction".
        thresholding, dynamic_thresholding_ratio, sample_max_value: Imagen's dynamic thresholding of x_0.
        timestep_spacing, steps_offset: how ``set_timesteps`` picks a subset: "leading", "trailing", "linspace",
            or "optimal", the K timesteps that minimise the K-step bound under the analytic variance (Bao et al.
            2022, section 4; needs ``eps_second_moment``).
        rescale_betas_zero_snr: rescale to zero terminal SNR (Lin et al. 2024).
        scale_linear_betas_by_timesteps: multiply beta_start and beta_end by 1000 / T (improved-diffusion).
        eps_second_moment: Gamma_n = E ||eps_theta(x_n, n)||^2 / d for n = 0..T-1, the statistic of the trained
            network that the analytic variance and the optimal spacing need (``hf-ddpm calibrate`` writes it),
            checked by them; diffusers' own schedulers ignore the key.
        analytic_clip_last_step: with the optimal variances (analytic, sn, npr), cap the last noise-adding step's variance at about a
            pixel bin of 8-bit data (2 bins for the linear schedule, 1 otherwise), the paper's setting for
            sampling; it loosens the bound of few-step chains, so it is off by default.
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
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        scale_linear_betas_by_timesteps: bool = False,
        eps_second_moment: list[float] | None = None,
        analytic_clip_last_step: bool = False,
    ) -> None:
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"Unknown timestep_spacing {timestep_spacing!r}; allowed values: {', '.join(TIMESTEP_SPACINGS)}"
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
        if rescale_betas_zero_snr and prediction_type == "epsilon":
            raise ValueError(
                "rescale_betas_zero_snr makes alpha_bar_T = 0, where x_0 cannot be recovered from an epsilon "
                "prediction; use prediction_type 'v_prediction' (or 'sample') with it"
            )
        self._tables = DiffusionTables.from_betas(betas)
        # Checked only where used: a config derived from a calibrated one with another T (a test's short
        # chain, say) keeps working with the other variance types.
        needed_by = tuple(
            f"{key} {value!r}"
            for key, value, needs_moments in (
                ("variance_type", variance_type, variance_type == "analytic"),
                ("timestep_spacing", timestep_spacing, timestep_spacing == "optimal"),
            )
            if needs_moments
        )
        self._eps_second_moment = (
            check_eps_second_moment(eps_second_moment, num_train_timesteps, needed_by)
            if needed_by
            else None
        )
        self._optimal_timesteps: dict[int, np.ndarray] = {}
        # diffusers' public float32 views.
        self.betas = torch.from_numpy(betas).float()
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = self._tables.alphas_cumprod.float()
        self.init_noise_sigma = 1.0

        self._parameterization = resolve_parameterization(prediction_type)
        self._variance = resolve_variance_type(
            variance_type,
            self._eps_second_moment,
            last_step_pixels(analytic_clip_last_step, beta_schedule, trained_betas),
            # beta-tilde_1: the head types' decoder (Ho et al.'s clipped fixed_small one)
            float(self._tables.posterior_variance[1]) if num_train_timesteps > 1 else None,
        )
        check_head_prediction_type(self._variance, prediction_type)
        self._splits_output = self._variance.learned or self._variance.head
        x0_options = (
            clip_sample,
            clip_sample_range,
            thresholding,
            dynamic_thresholding_ratio,
            sample_max_value,
        )
        self._process_x0 = x0_processing(*x0_options)
        # step() computes x_0 into a buffer of its own, so it may clip it in place: one allocation fewer.
        self._step_process_x0 = x0_processing(*x0_options, in_place=True)
        self._processes: dict[tuple[torch.device, bool], ReverseProcess] = {}

        self.num_inference_steps: int | None = None
        self.custom_timesteps = False
        self._set_schedule(np.arange(num_train_timesteps - 1, -1, -1, dtype=np.int64), device=None)

    # ----------------------------------------------------------------------------------------- schedule

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Choose the sampling timesteps: ``num_inference_steps`` spaced by ``timestep_spacing``, or custom
        strictly descending ``timesteps`` in [0, T). Each step then uses the effective beta between the two
        kept timesteps (Nichol & Dhariwal 2021, section 4), for every variance type."""
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("Pass exactly one of num_inference_steps or timesteps")
        if timesteps is not None:
            ts = checked_custom_timesteps(timesteps, self.config.num_train_timesteps)
            self.custom_timesteps = True
        elif self.config.timestep_spacing == "optimal":
            ts = self._optimal_spacing(num_inference_steps)
            self.custom_timesteps = False
        else:
            ts = spaced_timesteps(
                self.config.timestep_spacing,
                num_inference_steps,
                self.config.num_train_timesteps,
                self.config.steps_offset,
            )
            self.custom_timesteps = False
        self.num_inference_steps = len(ts)
        self._set_schedule(ts, device)

    def _optimal_spacing(self, num_inference_steps: int) -> np.ndarray:
        n = int(num_inference_steps)
        check_num_inference_steps(n, self.config.num_train_timesteps)
        ts = self._optimal_timesteps.get(n)
        if ts is None:
            ts = np.asarray(
                optimal_timesteps(self._tables.alphas_cumprod.numpy(), self._eps_second_moment, n)
            )
            self._optimal_timesteps[n] = ts
        return ts

    def _set_schedule(self, ts: np.ndarray, device: str | torch.device | None) -> None:
        # The kept timesteps form a chain of their own, with effective betas 1 - alpha_bar_t / alpha_bar_prev
        # (Nichol & Dhariwal 2021, section 4): its tables hold every step's constants, t ascending.
        ascending = ts[::-1].copy()
        chain = DiffusionTables.from_alphas_cumprod(self._tables.alphas_cumprod.numpy()[ascending])
        columns = (
            *self._parameterization.x0_coefficients(
                chain.sqrt_alphas_cumprod, chain.sqrt_one_minus_alphas_cumprod
            ),
            chain.posterior_mean_coef1,
            chain.posterior_mean_coef2,
        )
        noise_scales = self._variance.on_chain(chain, torch.from_numpy(ascending)).noise_scales()
        self._schedule_chain = (chain, torch.from_numpy(ascending))
        self._schedule_processes: dict[torch.device, tuple[ReverseProcess, torch.Tensor]] = {}
        prev = np.append(ts[1:], -1)
        self._steps = [
            _Step(*row, noise_scale=scale, adds_noise=bool(p >= 0))
            for row, scale, p in zip(
                torch.stack(columns, 1).flip(0).tolist(), noise_scales[::-1], prev
            )
        ]
        self._prev_of = {int(t): int(p) for t, p in zip(ts, prev)}
        self.timesteps = torch.from_numpy(ts.copy()).to(device)
        self._reset_step_index()

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """The timestep that follows ``timestep`` on the current schedule (-1 after the last)."""
        prev = self._prev_of.get(int(timestep))
        if prev is None:
            raise ValueError(f"timestep {int(timestep)} is not on the current schedule")
        return torch.tensor(prev) if isinstance(timestep, torch.Tensor) else prev

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """DDPM feeds x_t to the network unscaled."""
        return sample

    def model_output_channels(self, sample_channels: int) -> int:
        """Channels the model output must have: twice the sample's for learned variances, and for a
        covariance head's (eps, then the head's channels)."""
        return 2 * sample_channels if self._splits_output else sample_channels

    # ----------------------------------------------------------------------------------------- sampling

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> HFDDPMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """x_{t-1} ~ p_theta(x_{t-1} | x_t): one step of Ho et al.'s Algorithm 2, on the respaced chain.

        The step is ``timesteps[step_index]`` (diffusers' rule, :mod:`.stepping`): the first call after
        ``set_timesteps`` finds ``timestep`` on the schedule, each call advances by one. The noise is drawn
        like diffusers' ``DDPMScheduler`` (one ``randn`` of the sample's shape and the model output's dtype),
        so both give the same samples with the same generator. Half-precision inputs are computed in
        float32 and cast back.
        """
        c = self._steps[self._current_step_index(timestep)]
        if self._splits_output or model_output.shape != sample.shape:
            prediction, values = split_model_output(model_output, sample, self._variance)
        else:
            prediction, values = model_output, None  # the common case, without the checks' overhead
        upcast = computes_upcast(sample.dtype)
        x_t = sample.float() if upcast else sample

        # 1. Predict x_0 from the network's output (for epsilon, eq. 15: (x_t - sqrt(1 - alpha_bar_t) eps) /
        #    sqrt(alpha_bar_t)); x0_from_prediction writes a fresh buffer.
        x0 = x0_from_prediction(
            prediction.float() if upcast else prediction, x_t, c.x0_coef_xt, c.x0_coef_out
        )
        # 2. Clip it to the data's range (or threshold it), in place.
        if self._step_process_x0 is not None:
            x0 = self._step_process_x0(x0)
        if c.adds_noise:
            # 3. The standard deviation sigma_t of the variance type (fixed, learned, or optimal).
            sigma = (
                c.noise_scale
                if values is None
                else c.noise_scale(values.float() if upcast else values)
            )
            # 4. sigma_t z, z ~ N(0, I), drawn into the buffer that becomes x_{t-1} (one allocation fewer).
            prev = standard_normal_noise(prediction.shape, generator, prediction, x_t.dtype).mul_(
                sigma
            )
            # 5. x_{t-1} = mu-tilde_t + sigma_t z with eq. 7's posterior mean
            #    mu-tilde_t = posterior_mean_coef1 x_0 + posterior_mean_coef2 x_t.
            prev.add_(x_t, alpha=c.posterior_mean_coef2).add_(x0, alpha=c.posterior_mean_coef1)
        else:
            # 3.-5. The last step (Algorithm 2's t = 1) adds no noise: x_0 = mu-tilde_1.
            prev = torch.mul(x_t, c.posterior_mean_coef2).add_(x0, alpha=c.posterior_mean_coef1)
        self._advance_step_index()
        if upcast:
            prev, x0 = prev.to(sample.dtype), x0.to(sample.dtype)
        if not return_dict:
            return prev, x0
        return HFDDPMSchedulerOutput(prev, x0)

    # ------------------------------------------------------------------------------------ forward process

    def _process(self, device: torch.device, process_x0: bool = True) -> ReverseProcess:
        """The reverse process on ``device``; ``process_x0=False`` drops the clipping of x_0, which
        training must not see (a clipped x_0 has no gradient), as improved-diffusion trains unclipped."""
        process = self._processes.get((device, process_x0))
        if process is None:
            if process_x0:
                process = ReverseProcess.on_chain(
                    self._tables.to(device),
                    self._parameterization,
                    self._variance,
                    self._process_x0,
                )
            else:
                process = dataclasses.replace(self._process(device), process_x0=None)
            self._processes[(device, process_x0)] = process
        return process

    def _schedule_process(self, device: torch.device) -> tuple[ReverseProcess, torch.Tensor]:
        """p_theta on the chain of the current schedule (``set_timesteps``), and the chain index of each
        full-chain timestep (-1 off the schedule)."""
        cached = self._schedule_processes.get(device)
        if cached is None:
            chain, timesteps = self._schedule_chain
            process = ReverseProcess.on_chain(
                chain.to(device),
                self._parameterization,
                self._variance,
                self._process_x0,
                timesteps=timesteps.to(device),
            )
            index = torch.full((self.config.num_train_timesteps,), -1, dtype=torch.long)
            index[timesteps] = torch.arange(len(timesteps))
            cached = self._schedule_processes[device] = (process, index.to(device))
        return cached

    def _schedule_index(self, t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        k = index[t]
        if bool((k < 0).any()):
            raise ValueError(
                f"timesteps {t[k < 0].unique().tolist()[:5]} are not on the current schedule; call "
                "set_timesteps and use scheduler.timesteps"
            )
        return k

    @staticmethod
    def _as_batch_timesteps(timesteps: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(timesteps, device=like.device).long()
        if t.ndim == 0:
            t = t.expand(like.shape[0])
        return t.reshape(-1)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor | int
    ) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, q(x_t | x_0) of Ho et al. eq. 4, with one
        timestep per sample."""
        t = self._as_batch_timesteps(timesteps, original_samples)
        return q_sample(self._process(original_samples.device).tables, original_samples, t, noise)

    def get_velocity(
        self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor | int
    ) -> torch.Tensor:
        """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (Salimans & Ho 2022)."""
        t = self._as_batch_timesteps(timesteps, sample)
        tables = self._process(sample.device).tables
        return velocity(
            sample,
            noise,
            extract(tables.sqrt_alphas_cumprod, t, sample),
            extract(tables.sqrt_one_minus_alphas_cumprod, t, sample),
        )

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (Ho et al. eqs. 6-7)."""
        t = self._as_batch_timesteps(t, x_t)
        return _q_posterior_mean_variance(self._process(x_t.device).tables, x0, x_t, t)

    def p_mean_variance(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int
    ) -> PMeanVariance:
        """p_theta(x_{t-1} | x_t) on the full T-step chain: mean, variance, log-variance and predicted x_0.

        At t = 0 the decoder's variance follows Ho et al. and improved-diffusion: beta-tilde_2 for
        fixed_large, the clipped log beta-tilde for fixed_small."""
        t = self._as_batch_timesteps(t, x_t)
        return _p_mean_variance(self._process(x_t.device), model_output, x_t, t)

    # --------------------------------------------------------------------------------- bound and losses

    def vlb_terms_bpd(
        self,
        model_output: torch.Tensor,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor | int,
        num_bins: int = 256,
        on_schedule: bool = False,
    ) -> torch.Tensor:
        """L_t in bits/dim per sample: KL(q(x_{t-1}|x_t,x_0) || p_theta(x_{t-1}|x_t)) for t > 0, the discretized
        decoder -log p_theta(x_0 | x_1) for t = 0 (Ho et al. eqs. 5 and 13).

        With ``on_schedule=True``, the terms of the chain of ``set_timesteps``: for t = ``timesteps[i]``, the
        KL of its step t -> ``timesteps[i + 1]``, with that step's effective beta and this variance type,
        and the decoder for the last timestep."""
        t = self._as_batch_timesteps(t, x_t)
        if on_schedule:
            process, index = self._schedule_process(x_t.device)
            t = self._schedule_index(t, index)
        else:
            process = self._process(x_t.device)
        return _vlb_terms_bpd(process, model_output, x0, x_t, t, num_bins=num_bins)

    def prior_bpd(self, x0: torch.Tensor, on_schedule: bool = False) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) in bits/dim per sample; with ``on_schedule=True`` at the first
        timestep of the current schedule, where its chain starts."""
        if on_schedule:
            return _prior_bpd(self._schedule_process(x0.device)[0], x0)
        return _prior_bpd(self._process(x0.device), x0)

    def training_loss(
        self,
        model_output: torch.Tensor,
        x0: torch.Tensor,
        noise: torch.Tensor,
        t: torch.Tensor,
        loss_type: str = "simple",
        min_snr_gamma: float | None = None,
        x_t: torch.Tensor | None = None,
        num_bins: int = 256,
    ) -> torch.Tensor:
        """Per-sample training loss (B,) for a network output at x_t = add_noise(x0, noise, t).

        - "simple": L_simple, Ho et al. eq. 14, with the target of ``prediction_type``; ``min_snr_gamma``
          applies Min-SNR-gamma weighting (Hang et al. 2023).
        - "vlb": T * L_t in bits/dim, an unbiased estimate of the bound's sum for uniform t (pair with
          ``LossSecondMomentResampler`` weights).
        - "hybrid": L_simple + 0.001 * L_vlb with a stop-gradient on the mean (Nichol & Dhariwal eq. 16);
          needs a learned variance.
        """
        loss = resolve_loss_type(loss_type)
        inputs = LossInputs(
            process=self._process(x0.device, process_x0=False),
            model_output=model_output,
            x0=x0,
            noise=noise,
            t=self._as_batch_timesteps(t, x0),
            x_t=x_t,
            min_snr_gamma=min_snr_gamma,
            num_bins=num_bins,
        )
        return loss(inputs)
