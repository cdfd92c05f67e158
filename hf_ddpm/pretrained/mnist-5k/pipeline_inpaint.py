"""``HFDDPMInpaintPipeline``: fill a masked region with a trained DDPM, by RePaint (Lugmayr et al. 2022).

The model is not retrained. At every reverse step the known pixels are drawn from the forward process
of the given image, q(x_{t-1} | x_0), and the unknown ones from p_theta(x_{t-1} | x_t); RePaint's
resampling then jumps back up the chain with q(x_t | x_{t-1}) and denoises again, so that the filled
region has time to agree with the known one (Algorithm 1, with the jump schedule of its section 4.2).
docs/editing.md has the math.

Remote code: copied next to ``pipeline.py`` in every saved folder, and loadable there with
``DiffusionPipeline.from_pretrained(folder, custom_pipeline="pipeline_inpaint", trust_remote_code=True)``;
it writes a ``from .module import`` line for every sibling it needs, directly or not, because diffusers
copies exactly those. It must define exactly one ``DiffusionPipeline`` subclass.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

# diffusers copies into a remote-code folder only the siblings that the loaded file itself names, so the
# noqa imports below name what the modules it uses import in turn (shown in brackets).
from .analytic import check_eps_second_moment  # noqa: F401  (imported by variance)
from .class_layout import null_label_of  # noqa: F401  (imported by pipeline_base, model_card)
from .covariance import x0_covariance  # noqa: F401  (imported by variance)
from .covariance_head import CovarianceHead  # noqa: F401  (imported by pipeline_base)
from .diffusion_tables import DiffusionTables  # noqa: F401  (imported by forward_process)
from .edit_inputs import ImageArg
from .forward_process import q_transition_sample
from .gaussian import reparameterize  # noqa: F401  (imported by forward_process)
from .model_card import MODEL_CARD  # noqa: F401  (imported by saving)
from .pipeline_base import CallbackArg, ClassLabelsArg, GeneratorArg, HFDDPMPipelineMixin
from .pushing import HubPushError  # noqa: F401  (imported by pipeline_base)
from .remote_code import copy_source_closure  # noqa: F401  (imported by saving)
from .saving import MODEL_INDEX  # noqa: F401  (imported by pipeline_base)
from .variance import LEARNED_VARIANCE_TYPES  # noqa: F401  (imported by pipeline_base)


def repaint_schedule(num_steps: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """The levels of an ``num_steps``-step chain that RePaint visits, in order.

    Level n >= 1 is the sample at the chain's n-th smallest timestep, level 0 the finished x_0; the walk
    starts at ``num_steps`` (pure noise) and ends at 0, one level per move. A move down is a reverse step,
    a move up a forward jump. Every ``jump_length`` levels from the bottom (levels 1, 1 + j, 1 + 2j, ...
    below ``num_steps - j + 1``), the walk climbs ``jump_length`` levels back up ``jump_n_sample - 1``
    times before going on, so each of those stretches is denoised ``jump_n_sample`` times (Lugmayr et
    al. 2022, section 4.2). ``jump_n_sample = 1`` is the plain chain. The walk has about
    ``num_steps * jump_n_sample`` moves down, one model evaluation each.
    """
    for name, value in (
        ("num_steps", num_steps),
        ("jump_length", jump_length),
        ("jump_n_sample", jump_n_sample),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    climbs_left = dict.fromkeys(
        range(1, num_steps - jump_length + 1, jump_length), jump_n_sample - 1
    )
    level = num_steps
    levels = [level]
    while level > 0:
        level -= 1
        levels.append(level)
        if climbs_left.get(level, 0) > 0:
            climbs_left[level] -= 1
            levels.extend(range(level + 1, level + jump_length + 1))
            level += jump_length
    return levels


class HFDDPMInpaintPipeline(HFDDPMPipelineMixin, DiffusionPipeline):
    """Inpainting with an unconditional or class-conditional DDPM by RePaint (Lugmayr et al. 2022).

    Constructed like ``HFDDPMPipeline`` (``unet``, ``scheduler``, ``null_class_label``), or from one
    without a reload: ``HFDDPMInpaintPipeline.from_pipe(pipe)``. Works with respaced schedules and every
    variance type of the scheduler: the unknown region takes the scheduler's own step.
    """

    @torch.no_grad()
    def __call__(
        self,
        image: ImageArg,
        mask_image: ImageArg,
        num_inference_steps: int = 250,
        jump_length: int = 10,
        jump_n_sample: int = 10,
        generator: GeneratorArg = None,
        output_type: str = "pil",
        return_dict: bool = True,
        class_labels: ClassLabelsArg = None,
        guidance_scale: float = 1.0,
        callback_on_step_end: CallbackArg = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Fill the white region of ``mask_image`` in ``image``.

        Args:
            image: the image(s) to edit, in any form ``HFDDPMImg2ImgPipeline`` takes.
            mask_image: white (>= 0.5) where new content goes, black where ``image`` is kept: PIL, a
                numpy array (H, W[, 1]) in [0, 1], or a tensor (H, W), (1, H, W) or (B, 1, H, W) in
                [0, 1]. One mask for all images, or one per image; neither all black nor all white.
            num_inference_steps: steps of the (respaced) chain, from 1 to ``num_train_timesteps``.
            jump_length: levels of each resampling jump (RePaint's j).
            jump_n_sample: times each stretch of ``jump_length`` steps is denoised (RePaint's r); 1 turns
                resampling off. The model runs about ``num_inference_steps * jump_n_sample`` times.
            generator: one ``torch.Generator``, or one per image (the batch is then that long).
            output_type, return_dict, class_labels, guidance_scale: as in ``HFDDPMPipeline``.
            callback_on_step_end: called after every reverse step (``step_index`` counts them,
                ``len(repaint_schedule(...))`` bounds them) as ``fn(pipe, step_index, timestep, kwargs)``;
                ``"latents"`` is the merged sample, and a returned ``"latents"`` is continued from.
            callback_on_step_end_tensor_inputs: as in ``HFDDPMPipeline``; defaults to ``["latents"]``.

        Returns:
            ``ImagePipelineOutput(images=...)``, or ``(images,)`` when ``return_dict`` is False.
        """
        x0, fill, batch_size = self._edit_inputs(image, generator, mask_image)
        tensor_names = self._check_common_inputs(
            batch_size,
            generator,
            num_inference_steps,
            output_type,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        device = self._execution_device
        levels = repaint_schedule(num_inference_steps, jump_length, jump_n_sample)
        labels = self._class_labels(class_labels, guidance_scale, batch_size, device)
        shape = self._sample_shape(batch_size)
        x0, keep = x0.expand(shape), (1.0 - fill).expand(shape)

        def noise() -> torch.Tensor:
            return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        # Level n is the n-th smallest timestep; read once, so stepping out of order never syncs.
        by_level = [None] + timesteps.flip(0).tolist()
        alpha_bars = self.scheduler.alphas_cumprod.double()

        latents = noise()
        head = self._sampling_head()
        step_index = 0
        with self.progress_bar(total=len(levels) - 1) as progress:
            for level, next_level in zip(levels, levels[1:]):
                t = by_level[level]
                if next_level > level:
                    # Jump back up: x_{t'} ~ q(x_{t'} | x_t), the chain's one-step forward kernel.
                    latents = q_transition_sample(
                        latents,
                        float(alpha_bars[t]),
                        float(alpha_bars[by_level[next_level]]),
                        noise(),
                    )
                else:
                    if hasattr(self.scheduler, "set_begin_index"):
                        # After a jump the chain is no longer where the scheduler's step index says.
                        self.scheduler.set_begin_index(num_inference_steps - level)
                    step, model_output = self._reverse_step(
                        latents, t, labels, guidance_scale, generator, head
                    )
                    if next_level == 0:
                        known = x0
                    else:
                        t_known = torch.full((batch_size,), by_level[next_level], device=device)
                        known = self.scheduler.add_noise(x0, noise(), t_known)
                    latents = torch.lerp(step.prev_sample, known, keep)
                    latents = self._after_step(
                        callback_on_step_end,
                        tensor_names,
                        step_index,
                        timesteps[num_inference_steps - level],
                        latents,
                        step,
                        model_output,
                    )
                    step_index += 1
                progress.update()

        return self._output(latents, output_type, return_dict)
