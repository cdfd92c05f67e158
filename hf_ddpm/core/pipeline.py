"""``HFDDPMPipeline``: ancestral sampling from a DDPM (Ho et al. 2020, Algorithm 2) as a diffusers pipeline.

This file is remote code: ``save_pretrained`` copies it to the root of every saved folder, and
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` imports it where hf_ddpm is not
installed. So besides torch, numpy, PIL, diffusers and the standard library it imports only siblings, each
with the textual form diffusers follows (``from .x import``), so that diffusers copies them next to this
file: ``variance`` (the variance types, with its own siblings ``diffusion_tables`` and ``analytic``) at module level, and
``hub_layout`` inside the methods that need it, so that a pipeline loaded through remote code saves the
same loadable layout as one built from the installed package.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils.torch_utils import randn_tensor

# diffusers' remote-code loader copies only the relative imports written in this file, not theirs.
from .analytic import check_eps_second_moment  # noqa: F401
from .diffusion_tables import DiffusionTables  # noqa: F401
from .variance import LEARNED_VARIANCE_TYPES

_OUTPUT_TYPES = ("pil", "np", "pt")
# True only for the installed package; a remote-code copy lives in diffusers' module cache instead.
_RUNNING_AS_HF_DDPM = __package__ == "hf_ddpm.core"

GeneratorArg = torch.Generator | list[torch.Generator] | None
StepCallback = Callable[["HFDDPMPipeline", int, torch.Tensor, dict[str, Any]], dict[str, Any]]


def expected_unet_out_channels(scheduler: Any, in_channels: int) -> int:
    """Number of output channels a UNet needs for ``scheduler``.

    A learned variance (Nichol & Dhariwal 2021, eq. 15) doubles them: the first half predicts the mean
    parameterisation (epsilon, x0 or v), the second the variance. ``HFDDPMScheduler`` answers itself
    through ``model_output_channels``; any other diffusers scheduler is judged by its ``variance_type``.
    """
    if hasattr(scheduler, "model_output_channels"):
        return int(scheduler.model_output_channels(in_channels))
    variance_type = getattr(scheduler.config, "variance_type", None)
    return 2 * in_channels if variance_type in LEARNED_VARIANCE_TYPES else in_channels


def _check_unet_matches_scheduler(unet: Any, scheduler: Any) -> None:
    if unet is None or scheduler is None:
        return
    in_channels, out_channels = unet.config.in_channels, unet.config.out_channels
    needed = expected_unet_out_channels(scheduler, in_channels)
    if out_channels != needed:
        variance_type = getattr(scheduler.config, "variance_type", None)
        raise ValueError(
            f"The unet has in_channels={in_channels} and out_channels={out_channels}, but the scheduler "
            f"({type(scheduler).__name__}, variance_type={variance_type!r}) needs out_channels={needed}: "
            f"2 x in_channels for the variance types {list(LEARNED_VARIANCE_TYPES)}, in_channels otherwise. "
            "Use a UNet that matches, or a scheduler with the variance_type the UNet was trained for."
        )


class HFDDPMPipeline(DiffusionPipeline):
    """Unconditional or class-conditional image generation by DDPM ancestral sampling.

    Args:
        unet: a ``UNet2DModel`` (or any ``ModelMixin`` with its call signature) predicting the scheduler's
            ``prediction_type``; with a learned variance it has ``out_channels = 2 * in_channels``.
        scheduler: ``HFDDPMScheduler`` or any diffusers scheduler.

    Classifier-free guidance (Ho & Salimans 2022) needs a UNet trained with ``num_class_embeds = K + 1``
    for K classes, with label ``K`` (the last embedding) as the "no class" token.
    """

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["latents", "pred_original_sample", "model_output"]

    def __init__(self, unet: Any, scheduler: Any) -> None:
        super().__init__()
        _check_unet_matches_scheduler(unet, scheduler)
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: GeneratorArg = None,
        num_inference_steps: int = 1000,
        output_type: str = "pil",
        return_dict: bool = True,
        class_labels: int | list[int] | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        callback_on_step_end: StepCallback
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
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
            class_labels: one label for the whole batch, or one per image, for a class-conditional UNet.
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
        if isinstance(callback_on_step_end, PipelineCallback | MultiPipelineCallbacks):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        tensor_inputs = list(callback_on_step_end_tensor_inputs or ["latents"])
        self._check_inputs(batch_size, generator, num_inference_steps, output_type, tensor_inputs)
        device = self._execution_device
        labels = self._class_labels(class_labels, guidance_scale, batch_size, device)

        sample_size = self.unet.config.sample_size
        height, width = (sample_size, sample_size) if isinstance(sample_size, int) else sample_size
        shape = (batch_size, self.unet.config.in_channels, height, width)
        # Drawn exactly as DDPMPipeline draws it, so both give the same images from one seed. The chain
        # itself stays in float32 whatever the UNet's dtype: fp16 steps lose the small late updates.
        latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for step_index, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_input = self.scheduler.scale_model_input(latents, t)
            model_output = self._predict(model_input, t, labels, guidance_scale).float()
            step = self.scheduler.step(model_output, t, latents, generator=generator)
            latents = step.prev_sample
            if callback_on_step_end is not None:
                available = {
                    "latents": latents,
                    "pred_original_sample": getattr(step, "pred_original_sample", None),
                    "model_output": model_output,
                }
                requested = {name: available[name] for name in tensor_inputs}
                returned = callback_on_step_end(self, step_index, t, requested) or {}
                latents = returned.get("latents", latents)

        images = self._postprocess(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    def _check_inputs(
        self,
        batch_size: int,
        generator: GeneratorArg,
        num_inference_steps: int,
        output_type: str,
        tensor_inputs: list[str],
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
        num_train_timesteps = self.scheduler.config.num_train_timesteps
        if (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, int)
            or not 1 <= num_inference_steps <= num_train_timesteps
        ):
            raise ValueError(
                f"num_inference_steps must be an integer from 1 to the scheduler's num_train_timesteps "
                f"({num_train_timesteps}), got {num_inference_steps!r}."
            )
        if output_type not in _OUTPUT_TYPES:
            raise ValueError(
                f"output_type must be one of {list(_OUTPUT_TYPES)}, got {output_type!r}."
            )
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"generator is a list of {len(generator)} generators, but batch_size is {batch_size}: "
                "pass one generator per image, or a single generator."
            )
        unknown = [name for name in tensor_inputs if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs has {unknown}, which this pipeline does not provide; "
                f"allowed: {self._callback_tensor_inputs}."
            )

    def _class_labels(
        self,
        class_labels: int | list[int] | torch.Tensor | None,
        guidance_scale: float,
        batch_size: int,
        device: torch.device,
    ) -> torch.Tensor | None:
        """Validate the labels and return them as a (batch_size,) long tensor, or None."""
        num_class_embeds = getattr(self.unet.config, "num_class_embeds", None)
        if guidance_scale < 0:
            raise ValueError(
                f"guidance_scale must be >= 0 (1 disables guidance), got {guidance_scale}."
            )
        if class_labels is None:
            if num_class_embeds is not None:
                raise ValueError(
                    f"This UNet is class-conditional (num_class_embeds={num_class_embeds}): pass class_labels, "
                    f"integers from 0 to {num_class_embeds - 1} (for a model trained for classifier-free "
                    f"guidance, label {num_class_embeds - 1} asks for no class)."
                )
            if guidance_scale != 1.0:
                raise ValueError(
                    f"guidance_scale={guidance_scale} needs class_labels (classifier-free guidance); "
                    "use guidance_scale=1.0 for an unconditional UNet."
                )
            return None
        if num_class_embeds is None:
            raise ValueError(
                "class_labels were given, but this UNet is unconditional (its config has no "
                "num_class_embeds); drop class_labels or load a class-conditional UNet."
            )
        labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
        if labels.numel() == 1:
            labels = labels.expand(batch_size)
        if labels.numel() != batch_size:
            raise ValueError(
                f"class_labels has {labels.numel()} labels for batch_size={batch_size}: "
                "give one label, or one per image."
            )
        # With guidance, the last embedding is the "no class" token, which is not a class to ask for.
        num_classes = num_class_embeds - 1 if guidance_scale != 1.0 else num_class_embeds
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(
                f"class_labels must lie in [0, {num_classes - 1}] for this UNet "
                f"(num_class_embeds={num_class_embeds}, guidance_scale={guidance_scale}), "
                f"got {labels.tolist()}."
            )
        return labels.to(device)

    def _predict(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor | None,
        guidance_scale: float,
    ) -> torch.Tensor:
        """The UNet's output at (x_t, t), with classifier-free guidance when ``guidance_scale != 1``."""
        x = latents.to(self.unet.dtype)
        if labels is None:
            return self.unet(x, t).sample
        if guidance_scale == 1.0:
            return self.unet(x, t, class_labels=labels).sample
        null_labels = torch.full_like(labels, self.unet.config.num_class_embeds - 1)
        both = self.unet(torch.cat([x, x]), t, class_labels=torch.cat([labels, null_labels])).sample
        conditional, unconditional = both.chunk(2)
        channels = latents.shape[1]
        # Guidance acts on the mean's parameterisation only; a learned variance is taken as predicted
        # for the class (as in GLIDE), since extrapolating it can leave the allowed range.
        guided = unconditional[:, :channels] + guidance_scale * (
            conditional[:, :channels] - unconditional[:, :channels]
        )
        return torch.cat([guided, conditional[:, channels:]], dim=1)

    def _postprocess(
        self, latents: torch.Tensor, output_type: str
    ) -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
        images = (latents / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return images
        array = images.cpu().permute(0, 2, 3, 1).numpy()
        return array if output_type == "np" else self.numpy_to_pil(array)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> None:
        """Write the folder layout that both loading paths read (see ``hub_layout.save_pipeline_folder``).

        Unlike ``DiffusionPipeline.save_pretrained`` this copies the remote code next to the weights, and
        it writes the same layout however this class was imported (installed package or remote code).
        Keyword arguments ``license``, ``datasets``, ``tags``, ``repo_id``, ``description`` and
        ``sample_grid`` (a PIL image saved as samples.png) go into the model card. With
        ``push_to_hub=True``, ``repo_id`` is required and ``private``, ``token`` and
        ``commit_message`` are passed on to ``push_to_hub``.
        """
        from .hub_layout import save_pipeline_folder

        if not safe_serialization:
            raise ValueError(
                "HFDDPMPipeline saves safetensors only; drop safe_serialization=False."
            )
        if push_to_hub:
            if "repo_id" not in kwargs:
                raise ValueError("save_pretrained(push_to_hub=True) needs repo_id='user/name'.")
            push_keys = ("private", "token", "commit_message")
            push_kwargs = {key: kwargs.pop(key) for key in push_keys if key in kwargs}
            repo_id = kwargs.pop("repo_id")
            self.push_to_hub(
                repo_id, save_directory=save_directory, variant=variant, **push_kwargs, **kwargs
            )
            return
        save_pipeline_folder(self, save_directory, variant=variant, **kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool = False,
        token: str | None = None,
        create_pr: bool = False,
        save_directory: str | os.PathLike | None = None,
        **card: Any,
    ) -> str:
        """Save this pipeline (to ``save_directory``, or a temporary folder) and upload it to ``repo_id``.

        On a network error the folder is kept and the raised error says where it is and how to retry.
        Returns the URL of the commit.
        """
        from .hub_layout import push_pipeline_to_hub

        return push_pipeline_to_hub(
            self,
            repo_id,
            commit_message=commit_message,
            private=private,
            token=token,
            create_pr=create_pr,
            save_directory=save_directory,
            **card,
        )

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> HFDDPMPipeline:
        """Load from a saved folder or a Hub repo id, with no remote code run.

        Our own components map to the installed hf_ddpm classes, diffusers components to diffusers
        classes; a diffusers ``DDPMScheduler`` (as in google/ddpm-cifar10-32) becomes an
        ``HFDDPMScheduler`` unless ``convert_scheduler=False``. See ``hub_layout.load_pipeline`` for
        the keyword arguments. A remote-code copy of this class has no installed package to map to,
        so it defers to ``DiffusionPipeline.from_pretrained``.
        """
        if not _RUNNING_AS_HF_DDPM:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        from .hub_layout import load_pipeline

        return load_pipeline(cls, pretrained_model_name_or_path, **kwargs)
