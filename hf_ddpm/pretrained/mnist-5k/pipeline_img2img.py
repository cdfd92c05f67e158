"""``HFDDPMImg2ImgPipeline``: turn a rough image into one the model would draw, by SDEdit (Meng et al. 2022).

The image is noised part of the way with the forward process in closed form, x_{t0} ~ q(x_{t0} | x_0),
t0 = strength * T, and the reverse chain runs from there: a small strength keeps the picture and cleans
its details, strength 1 keeps (almost) nothing. docs/editing.md has the math.

Remote code: copied next to ``pipeline.py`` in every saved folder, and loadable there with
``DiffusionPipeline.from_pretrained(folder, custom_pipeline="pipeline_img2img", trust_remote_code=True)``;
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
from .diffusion_tables import DiffusionTables  # noqa: F401  (imported by variance)
from .edit_inputs import ImageArg
from .model_card import MODEL_CARD  # noqa: F401  (imported by saving)
from .pipeline_base import CallbackArg, ClassLabelsArg, GeneratorArg, HFDDPMPipelineMixin
from .pushing import HubPushError  # noqa: F401  (imported by pipeline_base)
from .remote_code import copy_source_closure  # noqa: F401  (imported by saving)
from .saving import MODEL_INDEX  # noqa: F401  (imported by pipeline_base)
from .variance import LEARNED_VARIANCE_TYPES  # noqa: F401  (imported by pipeline_base)


def sdedit_timesteps(timesteps: list[int], strength: float, num_train_timesteps: int) -> list[int]:
    """The steps of a (respaced) chain that SDEdit runs: those at or below t0 = strength * T.

    Timestep index t holds x_{t+1} in the paper's 1-based numbering, so index t is kept when
    t + 1 <= strength * T; strength 1 keeps the whole chain. When no step is that low (a tiny
    strength on a coarse chain), the chain's last step alone is kept, so every strength edits.
    """
    if isinstance(strength, bool) or not isinstance(strength, int | float) or not 0 < strength <= 1:
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}.")
    t0 = strength * num_train_timesteps
    kept = [t for t in timesteps if t + 1 <= t0]
    return kept or [timesteps[-1]]


class HFDDPMImg2ImgPipeline(HFDDPMPipelineMixin, DiffusionPipeline):
    """Image-to-image with an unconditional or class-conditional DDPM by SDEdit (Meng et al. 2022).

    Constructed like ``HFDDPMPipeline`` (``unet``, ``scheduler``, ``null_class_label``), or from one
    without a reload: ``HFDDPMImg2ImgPipeline.from_pipe(pipe)``.
    """

    @torch.no_grad()
    def __call__(
        self,
        image: ImageArg,
        strength: float = 0.5,
        num_inference_steps: int = 1000,
        generator: GeneratorArg = None,
        output_type: str = "pil",
        return_dict: bool = True,
        class_labels: ClassLabelsArg = None,
        guidance_scale: float = 1.0,
        callback_on_step_end: CallbackArg = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Noise ``image`` to t0 = ``strength`` * T with q(x_{t0} | x_0), then denoise it to x_0.

        Args:
            image: the image(s) to edit, at the model's size and channel count: PIL, a numpy array
                (H, W[, C]) or (B, H, W, C) in [0, 1], or a tensor (C, H, W) or (B, C, H, W) in [-1, 1].
            strength: in (0, 1]: how far into the forward process the image goes. The chain of
                ``num_inference_steps`` steps is cut to its steps at or below t0
                (``sdedit_timesteps``), so about ``strength * num_inference_steps`` model evaluations.
            num_inference_steps: steps of the whole (respaced) chain, from 1 to ``num_train_timesteps``.
            generator: one ``torch.Generator``, or one per image (the batch is then that long). Its first
                draw is the forward-process noise, the same draw ``HFDDPMPipeline`` takes for x_T.
            output_type, return_dict, class_labels, guidance_scale, callback_on_step_end,
            callback_on_step_end_tensor_inputs: as in ``HFDDPMPipeline``.

        Returns:
            ``ImagePipelineOutput(images=...)``, or ``(images,)`` when ``return_dict`` is False.
        """
        x0, _, batch_size = self._edit_inputs(image, generator)
        tensor_names = self._check_common_inputs(
            batch_size,
            generator,
            num_inference_steps,
            output_type,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        device = self._execution_device
        num_train_timesteps = self.scheduler.config.num_train_timesteps
        self.scheduler.set_timesteps(num_inference_steps)
        kept = sdedit_timesteps(self.scheduler.timesteps.tolist(), strength, num_train_timesteps)
        labels = self._class_labels(class_labels, guidance_scale, batch_size, device)

        # The cut chain is a chain of its own: the same steps, each between the same two timesteps.
        self.scheduler.set_timesteps(timesteps=kept, device=device)
        shape = self._sample_shape(batch_size)
        noise = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        t0 = torch.full((batch_size,), kept[0], device=device)
        latents = self.scheduler.add_noise(x0.expand(shape), noise, t0)
        latents = self._run_chain(
            latents, labels, guidance_scale, generator, callback_on_step_end, tensor_names
        )
        return self._output(latents, output_type, return_dict)
