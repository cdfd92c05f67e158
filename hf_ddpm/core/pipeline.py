"""``HFDDPMPipeline``: ancestral sampling from a DDPM (Ho et al. 2020, Algorithm 2) as a diffusers pipeline.

This file is remote code: ``save_pretrained`` copies it to the root of every saved folder, and
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` imports it where hf_ddpm is not
installed. So it imports only torch, numpy, PIL, diffusers and the standard library at module level,
and writes a ``from .module import`` line for every sibling it needs, directly or not: diffusers copies
exactly those into its module cache. The edit pipelines are imported here too, so every saved folder
carries them (``pipeline_inpaint.py``, ``pipeline_img2img.py``) and a remote-code module offers them.
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
from .diffusion_tables import DiffusionTables  # noqa: F401  (remote-code closure of the edit pipelines)
from .edit_inputs import prepare_images  # noqa: F401
from .forward_process import q_transition_sample  # noqa: F401
from .gaussian import reparameterize  # noqa: F401
from .model_card import MODEL_CARD  # noqa: F401  (imported by saving)
from .pipeline_base import (
    CallbackArg,
    ClassLabelsArg,
    GeneratorArg,
    HFDDPMPipelineMixin,
    expected_unet_out_channels,  # noqa: F401  (public here since the first release)
)
from .pipeline_img2img import HFDDPMImg2ImgPipeline  # noqa: F401
from .pipeline_inpaint import HFDDPMInpaintPipeline  # noqa: F401
from .pushing import HubPushError  # noqa: F401  (imported by pipeline_base)
from .remote_code import copy_source_closure  # noqa: F401  (imported by saving)
from .saving import MODEL_INDEX  # noqa: F401  (imported by pipeline_base)
from .variance import LEARNED_VARIANCE_TYPES  # noqa: F401  (imported by pipeline_base)


class HFDDPMPipeline(HFDDPMPipelineMixin, DiffusionPipeline):
    """Unconditional or class-conditional image generation by DDPM ancestral sampling.

    Args:
        unet: a ``UNet2DModel`` (or any ``ModelMixin`` with its call signature) predicting the scheduler's
            ``prediction_type``; with a learned variance it has ``out_channels = 2 * in_channels``.
        scheduler: ``HFDDPMScheduler`` or any diffusers scheduler.
        null_class_label: the "no class" label of a UNet trained for classifier-free guidance (Ho &
            Salimans 2022; ``hf-ddpm train`` uses ``num_class_embeds - 1``); a call without
            ``class_labels`` then samples unconditionally. See ``HFDDPMPipelineMixin``.
        class_names: the names of labels 0, 1, ... (``hf-ddpm train`` records its class folders).

    ``HFDDPMInpaintPipeline.from_pipe(pipe)`` and ``HFDDPMImg2ImgPipeline.from_pipe(pipe)`` share its
    components without a reload.
    """

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: GeneratorArg = None,
        num_inference_steps: int = 1000,
        output_type: str = "pil",
        return_dict: bool = True,
        class_labels: ClassLabelsArg = None,
        guidance_scale: float = 1.0,
        callback_on_step_end: CallbackArg = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Draw ``batch_size`` images: x_T ~ N(0, I), then x_{t-1} ~ p(x_{t-1} | x_t) down to x_0.

        Args:
            batch_size: number of images, at least 1.
            generator: one ``torch.Generator`` for the whole batch, or a list with one per image. With a
                list, image i depends only on generator i, so it is the same alone or in any batch.
            num_inference_steps: sampling steps, from 1 to the scheduler's ``num_train_timesteps``.
            output_type: ``"pil"`` (list of PIL images), ``"np"`` (float array, NHWC, in [0, 1]) or
                ``"pt"`` (float tensor, NCHW, in [0, 1]).
            return_dict: return an ``ImagePipelineOutput`` rather than a one-element tuple.
            class_labels: one label for the whole batch, or one per image, for a class-conditional UNet:
                integers, or names from the pipeline's ``class_names``; without them a pipeline with a ``null_class_label`` samples unconditionally.
            guidance_scale: classifier-free guidance weight ``s`` in
                ``eps = eps(x, none) + s * (eps(x, y) - eps(x, none))``; 1 disables guidance.
            callback_on_step_end: called after each step as ``fn(pipe, step_index, timestep, kwargs)``
                with the tensors named in ``callback_on_step_end_tensor_inputs``; it may return a new
                ``"latents"`` to continue from.
            callback_on_step_end_tensor_inputs: names from ``pipe._callback_tensor_inputs``:
                ``"latents"`` (x_{t-1}), ``"pred_original_sample"`` (predicted x0), ``"model_output"``.
                Defaults to ``["latents"]``.

        Returns:
            ``ImagePipelineOutput(images=...)``, or ``(images,)`` when ``return_dict`` is False.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
        tensor_names = self._check_common_inputs(
            batch_size,
            generator,
            num_inference_steps,
            output_type,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        device = self._execution_device
        labels = self._class_labels(class_labels, guidance_scale, batch_size, device)

        shape = self._sample_shape(batch_size)
        # Drawn exactly as DDPMPipeline draws it, so both give the same images from one seed. The chain
        # itself stays in float32 whatever the UNet's dtype: fp16 steps lose the small late updates.
        latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = self._run_chain(
            latents, labels, guidance_scale, generator, callback_on_step_end, tensor_names
        )
        return self._output(latents, output_type, return_dict)
