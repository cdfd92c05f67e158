"""What every hf_ddpm pipeline shares: components, class labels and guidance, one reverse step, callbacks,
output conversion, and saving and loading.

``HFDDPMPipelineMixin`` is deliberately not a ``DiffusionPipeline``: diffusers finds the pipeline of a
remote-code module as its only ``DiffusionPipeline`` subclass, so each pipeline module (``pipeline.py``,
``pipeline_inpaint.py``, ``pipeline_img2img.py``) must hold exactly one, and this module none.

Remote code: this file is copied next to ``pipeline.py`` in every saved folder, so it imports only torch,
diffusers, the standard library and its siblings (``saving`` and ``pushing`` import only the standard
library at module level). Loading without remote code is the installed package's alone
(``hf_ddpm.hub.loading``), so saved folders do not carry it.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers import ImagePipelineOutput, ModelMixin, SchedulerMixin, UNet2DModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

# diffusers' remote-code loader copies only the relative imports written in a module, not theirs.
from .class_layout import null_label_of, num_classes_of
from .covariance import x0_covariance  # noqa: F401  (imported by variance)
from .covariance_head import CovarianceHead, eps_and_head
from .diffusion_tables import (
    DiffusionTables,  # noqa: F401  (imported by variance)
    check_num_inference_steps,
)
from .edit_inputs import ImageArg, broadcast_batch, prepare_images, prepare_masks
from .pushing import push_pipeline_to_hub
from .saving import save_pipeline_folder
from .variance import HEAD_VARIANCE_TYPES, LEARNED_VARIANCE_TYPES

OUTPUT_TYPES = ("pil", "np", "pt")
# True only for the installed package; a remote-code copy lives in diffusers' module cache instead.
RUNNING_AS_HF_DDPM = __package__ == "hf_ddpm.core"
# Where the installed package loads saved folders without running their code (from_pretrained).
INSTALLED_LOADER = "hf_ddpm.hub.loading"

GeneratorArg = torch.Generator | list[torch.Generator] | None
StepCallback = Callable[[Any, int, torch.Tensor, dict[str, Any]], dict[str, Any]]
CallbackArg = StepCallback | PipelineCallback | MultiPipelineCallbacks | None
ClassLabelsArg = int | str | Sequence[int | str] | torch.Tensor | None


def expected_unet_out_channels(scheduler: Any, in_channels: int) -> int:
    """Number of output channels a UNet needs for ``scheduler``.

    A learned variance (Nichol & Dhariwal 2021, eq. 15) doubles them: the first half predicts the mean
    parameterisation (epsilon, x0 or v), the second the variance. ``HFDDPMScheduler`` answers itself
    through ``model_output_channels``; any other diffusers scheduler is judged by its ``variance_type``.
    With a covariance head ("sn", "npr") the UNet predicts the mean only: the head gives the other half.
    """
    if getattr(scheduler.config, "variance_type", None) in HEAD_VARIANCE_TYPES:
        return in_channels
    if hasattr(scheduler, "model_output_channels"):
        return int(scheduler.model_output_channels(in_channels))
    variance_type = getattr(scheduler.config, "variance_type", None)
    return 2 * in_channels if variance_type in LEARNED_VARIANCE_TYPES else in_channels


def check_unet_matches_scheduler(unet: Any, scheduler: Any) -> None:
    """Raise a ValueError when the UNet's output channels do not fit the scheduler's variance type."""
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


def reads_covariance_head(scheduler: Any) -> bool:
    """Whether ``scheduler``'s step takes a covariance head's channels after eps: its variance type is a
    head's ("sn", "npr") and it is one of ours, which split the model output (``model_output_channels``).
    A diffusers scheduler made from such a model's config (DPM-Solver++ keeps its ``variance_type``) takes
    eps alone."""
    variance_type = getattr(scheduler.config, "variance_type", None)
    return variance_type in HEAD_VARIANCE_TYPES and hasattr(scheduler, "model_output_channels")


def check_covariance_head(unet: Any, scheduler: Any, covariance_head: Any) -> None:
    """Raise a ValueError when the scheduler's variance needs a covariance head the pipeline lacks, the
    head does not fit the UNet (its sample channels, or the channels of its last feature map), or the
    scheduler would read it as another kind than it was fitted as (an NPR head's E[(eps - eps_theta)^2]
    taken for SN's E[eps^2]); a head of unrecorded kind (``kind`` None) is accepted."""
    if unet is None or scheduler is None:
        return
    variance_type = getattr(scheduler.config, "variance_type", None)
    if covariance_head is None:
        if reads_covariance_head(scheduler):
            raise ValueError(
                f"variance_type {variance_type!r} needs a covariance head (pipeline component "
                "covariance_head), and this model has none: with hf_ddpm installed, fit one with "
                "`hf-ddpm fit-covariance MODEL "
                f"--kind {variance_type}`, or sample with another variance_type."
            )
        return
    head, channels = covariance_head.config, unet.config.in_channels
    features = getattr(getattr(unet, "conv_norm_out", None), "num_channels", None)
    if head.out_channels != channels or head.feature_channels != features:
        raise ValueError(
            f"the covariance head maps {head.feature_channels} feature channels to {head.out_channels}, "
            f"but this UNet has {features} channels in its last feature map and samples of {channels}: "
            "the head was fitted for another UNet. With hf_ddpm installed, fit one for this model with "
            "`hf-ddpm fit-covariance`."
        )
    kind = getattr(head, "kind", None)
    if reads_covariance_head(scheduler) and kind is not None and kind != variance_type:
        raise ValueError(
            f"variance_type {variance_type!r} reads the covariance head as an {variance_type} head, but "
            f"this model's head was fitted as {kind!r} (covariance_head/config.json): sample with "
            f"variance_type {kind!r}, or, with hf_ddpm installed, fit an {variance_type} head with "
            f"`hf-ddpm fit-covariance MODEL --kind {variance_type} --output NEW_FOLDER`."
        )


def _adopt_scheduler_head_kind(scheduler: Any, covariance_head: Any) -> None:
    """Record in a head saved before kinds were recorded (``kind`` None) the head variance type of the
    scheduler it comes with, the one it was saved to sample with (``hf-ddpm fit-covariance`` sets both);
    beside any other variance type its kind stays unknown."""
    variance_type = getattr(scheduler.config, "variance_type", None)
    if (
        getattr(covariance_head.config, "kind", None) is None
        and variance_type in HEAD_VARIANCE_TYPES
    ):
        covariance_head.register_to_config(kind=variance_type)


def covariance_head_in_use(unet: Any, scheduler: Any, covariance_head: Any) -> Any:
    """The covariance head that a chain or a bound with ``scheduler`` runs: ``covariance_head`` when the
    scheduler reads one (:func:`reads_covariance_head`), else None (a head beside another variance type,
    or beside a diffusers scheduler, is not run).
    Raises :func:`check_covariance_head`'s ValueError when it is missing or does not fit the UNet."""
    check_covariance_head(unet, scheduler, covariance_head)
    return covariance_head if reads_covariance_head(scheduler) else None


def check_null_class_label(unet: Any, null_class_label: int | None) -> None:
    """The null label of classifier-free guidance must be one of the UNet's class embeddings."""
    if null_class_label is None or unet is None:
        return
    num_class_embeds = getattr(unet.config, "num_class_embeds", None)
    if num_class_embeds is None:
        raise ValueError(
            f"null_class_label={null_class_label} needs a class-conditional UNet; this one has no "
            "num_class_embeds. Use null_class_label=None."
        )
    if isinstance(null_class_label, bool) or not 0 <= int(null_class_label) < num_class_embeds:
        raise ValueError(
            f"null_class_label must be an integer in [0, {num_class_embeds - 1}] "
            f"(num_class_embeds={num_class_embeds}), got {null_class_label!r}."
        )


def check_class_names(
    unet: Any, null_class_label: int | None, class_names: Sequence[str] | None
) -> None:
    """``class_names`` name the labels 0..K-1 of a class-conditional UNet (``hf-ddpm train`` records its
    class folders or ClassLabel names): distinct non-empty strings, at most one per class embedding, and
    the null label of guidance is not among them."""
    if class_names is None or unet is None:
        return
    num_class_embeds = getattr(unet.config, "num_class_embeds", None)
    if num_class_embeds is None:
        raise ValueError(
            "class_names needs a class-conditional UNet; this one has no num_class_embeds. "
            "Use class_names=None."
        )
    names = list(class_names)
    if (
        not names
        or not all(isinstance(n, str) and n for n in names)
        or len(set(names)) < len(names)
    ):
        raise ValueError(f"class_names must be distinct non-empty strings, got {names!r}.")
    most = num_class_embeds if null_class_label is None else int(null_class_label)
    if len(names) > most:
        raise ValueError(
            f"class_names has {len(names)} names, but the UNet has {num_class_embeds} class embeddings"
            + (
                ""
                if null_class_label is None
                else f" and label {null_class_label} is the null label"
            )
            + f": at most {most} names."
        )


def callback_tensor_names(
    callback: CallbackArg, requested: list[str] | None, allowed: Sequence[str]
) -> list[str]:
    """The tensors a step callback asked for (a ``PipelineCallback`` names its own), checked."""
    if isinstance(callback, PipelineCallback | MultiPipelineCallbacks):
        requested = callback.tensor_inputs
    names = list(requested or ["latents"])
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise ValueError(
            f"callback_on_step_end_tensor_inputs has {unknown}, which this pipeline does not provide; "
            f"allowed: {list(allowed)}."
        )
    return names


def check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {list(OUTPUT_TYPES)}, got {output_type!r}.")


def check_generator(generator: GeneratorArg, batch_size: int) -> None:
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(
            f"generator is a list of {len(generator)} generators, but batch_size is {batch_size}: "
            "pass one generator per image, or a single generator."
        )


@functools.cache
def _step_takes_generator(scheduler_class: type) -> bool:
    return "generator" in inspect.signature(scheduler_class.step).parameters


class HFDDPMPipelineMixin:
    """The machinery of ``HFDDPMPipeline``, ``HFDDPMInpaintPipeline`` and ``HFDDPMImg2ImgPipeline``.

    Args:
        unet: a ``UNet2DModel`` (or any ``ModelMixin`` with its call signature) predicting the scheduler's
            ``prediction_type``; with a learned variance it has ``out_channels = 2 * in_channels``.
        scheduler: ``HFDDPMScheduler`` or any diffusers scheduler.
        covariance_head: a :class:`CovarianceHead` fitted on this frozen UNet (``hf-ddpm fit-covariance``),
            or None. It runs only when the scheduler's ``variance_type`` is "sn" or "npr", on the features
            of the same UNet call; its output follows eps in the model output the scheduler gets.
        null_class_label: for a class-conditional UNet trained for classifier-free guidance (Ho & Salimans
            2022), the label that means "no class"; it is saved with the pipeline, guidance compares
            against it, and a call without ``class_labels`` samples with it (unconditionally). ``None``
            (a UNet trained without label dropout, or an unconditional one) keeps class labels required
            for class-conditional UNets, and guidance then takes the last embedding as the null label.
        class_names: names of the labels 0, 1, ... (``hf-ddpm train`` records its class folders); saved
            with the pipeline, so ``class_labels`` may then name classes (``["cats", "dogs"]``).
    """

    model_cpu_offload_seq = "unet->covariance_head"
    _optional_components = ["covariance_head"]
    _callback_tensor_inputs = ["latents", "pred_original_sample", "model_output"]

    def __init__(
        self,
        unet: UNet2DModel | ModelMixin,
        scheduler: SchedulerMixin,
        null_class_label: int | None = None,
        class_names: Sequence[str] | None = None,
        # ModelMixin, not CovarianceHead: a remote-code load imports the head's module twice (root and
        # covariance_head/), and diffusers checks component types against this hint.
        covariance_head: ModelMixin | None = None,
    ) -> None:
        super().__init__()
        # DiffusionPipeline.from_pipe passes an absent optional component as its config entry.
        if isinstance(covariance_head, (tuple, list)) and not any(covariance_head):
            covariance_head = None
        check_unet_matches_scheduler(unet, scheduler)
        if covariance_head is not None and scheduler is not None:
            _adopt_scheduler_head_kind(scheduler, covariance_head)
        check_covariance_head(unet, scheduler, covariance_head)
        check_null_class_label(unet, null_class_label)
        check_class_names(unet, null_class_label, class_names)
        self.register_modules(unet=unet, scheduler=scheduler, covariance_head=covariance_head)
        self.register_to_config(
            null_class_label=None if null_class_label is None else int(null_class_label),
            class_names=None if class_names is None else list(class_names),
        )

    # ------------------------------------------------------------------------------------ inputs

    def _check_common_inputs(
        self,
        batch_size: int,
        generator: GeneratorArg,
        num_inference_steps: int,
        output_type: str,
        callback: CallbackArg,
        tensor_inputs: list[str] | None,
    ) -> list[str]:
        """Check the arguments every pipeline takes; return the tensor names the callback asked for."""
        check_num_inference_steps(num_inference_steps, self.scheduler.config.num_train_timesteps)
        check_output_type(output_type)
        check_generator(generator, batch_size)
        return callback_tensor_names(callback, tensor_inputs, self._callback_tensor_inputs)

    def _guidance_null_label(self) -> int:
        return null_label_of(self.unet.config.num_class_embeds, self.config.null_class_label)

    def class_label(self, label: int | str) -> int:
        """The integer label of ``label``: a class name from ``class_names``, or an integer as it is."""
        if not isinstance(label, str):
            return label
        names = self.config.get("class_names") or []
        if label not in names:
            known = f"its classes are {', '.join(names)}" if names else "it records no class names"
            raise ValueError(
                f"class {label!r} is not a class of this model: {known} (or pass integer labels)."
            )
        return names.index(label)

    def _class_labels(
        self,
        class_labels: ClassLabelsArg,
        guidance_scale: float,
        batch_size: int,
        device: torch.device,
    ) -> torch.Tensor | None:
        """Validate the labels and return them as a (batch_size,) long tensor, or None."""
        num_class_embeds = getattr(self.unet.config, "num_class_embeds", None)
        null_label = self.config.null_class_label
        if guidance_scale < 0:
            raise ValueError(
                f"guidance_scale must be >= 0 (1 disables guidance), got {guidance_scale}."
            )
        if class_labels is None:
            if guidance_scale != 1.0:
                raise ValueError(
                    f"guidance_scale={guidance_scale} needs class_labels (classifier-free guidance); "
                    "use guidance_scale=1.0 without them."
                )
            if null_label is not None:
                # A model trained with label dropout models p(x) under its null label.
                return torch.full((batch_size,), null_label, dtype=torch.long, device=device)
            if num_class_embeds is not None:
                raise ValueError(
                    f"This UNet is class-conditional (num_class_embeds={num_class_embeds}): pass class_labels, "
                    f"integers from 0 to {num_class_embeds - 1} (the pipeline records no null_class_label "
                    "to sample without a class)."
                )
            return None
        if num_class_embeds is None:
            raise ValueError(
                "class_labels were given, but this UNet is unconditional (its config has no "
                "num_class_embeds); drop class_labels or load a class-conditional UNet."
            )
        if isinstance(class_labels, str):
            class_labels = self.class_label(class_labels)
        elif isinstance(class_labels, Sequence):
            class_labels = [self.class_label(label) for label in class_labels]
        labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
        if labels.numel() == 1:
            labels = labels.expand(batch_size)
        if labels.numel() != batch_size:
            raise ValueError(
                f"class_labels has {labels.numel()} labels for batch_size={batch_size}: "
                "give one label, or one per image."
            )
        guided = guidance_scale != 1.0
        # With guidance, the null label is what the class is compared against, not a class to ask for.
        last_is_null = guided and self._guidance_null_label() == null_label_of(num_class_embeds)
        num_classes = num_classes_of(num_class_embeds) if last_is_null else num_class_embeds
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(
                f"class_labels must lie in [0, {num_classes - 1}] for this UNet "
                f"(num_class_embeds={num_class_embeds}, guidance_scale={guidance_scale}), "
                f"got {labels.tolist()}."
            )
        if guided and bool((labels == self._guidance_null_label()).any()):
            raise ValueError(
                f"class_labels {labels.tolist()} include the null label {self._guidance_null_label()}, "
                f"which guidance (guidance_scale={guidance_scale}) compares against; ask for real classes."
            )
        return labels.to(device)

    # -------------------------------------------------------------------------------- the chain

    def _sampling_head(self) -> CovarianceHead | None:
        """The covariance head when the scheduler's variance type uses one ("sn", "npr"), else None:
        resolved once per chain, since ``pipe.scheduler`` may have been swapped since construction."""
        return covariance_head_in_use(
            self.unet, self.scheduler, getattr(self, "covariance_head", None)
        )

    def _unet_output(
        self, x: torch.Tensor, t: torch.Tensor | int, labels: torch.Tensor | None, head: Any
    ) -> torch.Tensor:
        """One UNet call in float32; with a head, its output on that call's last feature map follows."""
        kwargs = {} if labels is None else {"class_labels": labels}
        if head is None:
            return self.unet(x, t, **kwargs).sample.float()
        return eps_and_head(self.unet, head, x, t, **kwargs)

    def _predict(
        self,
        latents: torch.Tensor,
        t: torch.Tensor | int,
        labels: torch.Tensor | None,
        guidance_scale: float,
        head: CovarianceHead | None = None,
    ) -> torch.Tensor:
        """The model output at (x_t, t) in float32 (the UNet's, then ``head``'s if given), with
        classifier-free guidance when ``guidance_scale != 1``."""
        # The first parameter's dtype rather than ModelMixin.dtype, which walks every module on each
        # call (0.6 ms a step on benchmarks/cpu.py's UNet, 2% of its sampling time).
        first = next(iter(self.unet.parameters()), None)
        x = self.scheduler.scale_model_input(latents, t)
        x = x.to(self.unet.dtype if first is None else first.dtype)
        if labels is None or guidance_scale == 1.0:
            return self._unet_output(x, t, labels, head)
        null_labels = torch.full_like(labels, self._guidance_null_label())
        both = self._unet_output(torch.cat([x, x]), t, torch.cat([labels, null_labels]), head)
        conditional, unconditional = both.chunk(2)
        channels = latents.shape[1]
        # Guidance acts on the mean's parameterisation only; a learned variance (or a head's second
        # moment) is taken as predicted for the class (as in GLIDE), since extrapolating it can leave
        # the allowed range.
        guided = unconditional[:, :channels] + guidance_scale * (
            conditional[:, :channels] - unconditional[:, :channels]
        )
        return torch.cat([guided, conditional[:, channels:]], dim=1)

    def _reverse_step(
        self,
        latents: torch.Tensor,
        t: torch.Tensor | int,
        labels: torch.Tensor | None,
        guidance_scale: float,
        generator: GeneratorArg,
        head: CovarianceHead | None = None,
    ) -> tuple[Any, torch.Tensor]:
        """One draw x_{t-1} ~ p_theta(x_{t-1} | x_t): the scheduler's step output and the model output
        (``head``: :meth:`_sampling_head`)."""
        model_output = self._predict(latents, t, labels, guidance_scale, head)
        # A deterministic diffusers scheduler (UniPC) has no generator argument.
        noise = {"generator": generator} if _step_takes_generator(type(self.scheduler)) else {}
        return self.scheduler.step(model_output, t, latents, **noise), model_output

    def _after_step(
        self,
        callback: CallbackArg,
        tensor_names: list[str],
        step_index: int,
        t: torch.Tensor | int,
        latents: torch.Tensor,
        step: Any,
        model_output: torch.Tensor,
    ) -> torch.Tensor:
        """Run ``callback_on_step_end``; return the latents to continue from (its ``"latents"``, if any)."""
        if callback is None:
            return latents
        available = {
            "latents": latents,
            "pred_original_sample": getattr(step, "pred_original_sample", None),
            "model_output": model_output,
        }
        returned = callback(self, step_index, t, {name: available[name] for name in tensor_names})
        return (returned or {}).get("latents", latents)

    def _run_chain(
        self,
        latents: torch.Tensor,
        labels: torch.Tensor | None,
        guidance_scale: float,
        generator: GeneratorArg,
        callback: CallbackArg,
        tensor_names: list[str],
    ) -> torch.Tensor:
        """Ancestral sampling along ``self.scheduler.timesteps`` from ``latents`` (x at the first one)."""
        head = self._sampling_head()
        for step_index, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            step, model_output = self._reverse_step(
                latents, t, labels, guidance_scale, generator, head
            )
            latents = self._after_step(
                callback, tensor_names, step_index, t, step.prev_sample, step, model_output
            )
        return latents

    def _sample_shape(self, batch_size: int) -> tuple[int, int, int, int]:
        """(batch_size, channels, height, width) of the UNet's samples."""
        config = self.unet.config
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else size
        return (batch_size, config.in_channels, height, width)

    def _edit_inputs(
        self, image: ImageArg, generator: GeneratorArg, mask_image: ImageArg | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """The images to edit in [-1, 1], the masks (1 = fill) if given, and the batch size they and a
        list of generators agree on (each gives 1 or B)."""
        device = self._execution_device
        _, channels, height, width = self._sample_shape(1)
        x0 = prepare_images(image, channels, height, width, device)
        sizes = {"image": x0.shape[0]}
        fill = None
        if mask_image is not None:
            fill = prepare_masks(mask_image, height, width, device)
            sizes["mask_image"] = fill.shape[0]
        if isinstance(generator, list):
            sizes["generator"] = len(generator)
        return x0, fill, broadcast_batch(sizes)

    def _output(
        self, latents: torch.Tensor, output_type: str, return_dict: bool
    ) -> ImagePipelineOutput | tuple:
        """The finished samples as ``output_type``, in an ``ImagePipelineOutput`` or a 1-tuple."""
        images = (latents / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            array = images.cpu().permute(0, 2, 3, 1).numpy()
            images = array if output_type == "np" else self.numpy_to_pil(array)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    # -------------------------------------------------------------------------- saving and loading

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> None:
        """Write the folder layout that both loading paths read (see ``saving.save_pipeline_folder``).

        Unlike ``DiffusionPipeline.save_pretrained`` this copies the remote code next to the weights, and
        it writes the same layout however this class was imported (installed package or remote code).
        Keyword arguments ``license``, ``datasets``, ``tags``, ``repo_id``, ``description`` and
        ``sample_grid`` (a PIL image saved as samples.png) go into the model card. With
        ``push_to_hub=True``, ``repo_id`` is required and ``private``, ``token`` and
        ``commit_message`` are passed on to ``push_to_hub``.
        """
        if not safe_serialization:
            raise ValueError(
                f"{type(self).__name__} saves safetensors only; drop safe_serialization=False."
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

    # Diffusers' positional order (repo_id, commit_message, private, token, create_pr), defined once.
    push_to_hub = push_pipeline_to_hub

    @classmethod
    def from_pipe(cls, pipeline: Any, **kwargs: Any) -> Any:
        """``DiffusionPipeline.from_pipe``: a pipeline of this class on ``pipeline``'s components (and its
        ``null_class_label``), without a reload. The models (the UNet, a covariance head) are passed on
        explicitly: diffusers keeps only a model whose class is exactly one its type hint names, and
        drops any other ``ModelMixin`` with a warning, as it would the head (a subclass)."""
        for name in ("unet", "covariance_head"):
            if getattr(pipeline, name, None) is not None:
                kwargs.setdefault(name, getattr(pipeline, name))
        # diffusers' from_pipe casts every model with .to(dtype), and ModelMixin.to then warns of its
        # modules "that should be kept in float32" even when that list is empty, as a UNet2DModel's is.
        cast_warnings = logging.getLogger("diffusers.models.modeling_utils")
        level = cast_warnings.level
        cast_warnings.setLevel(logging.ERROR)
        try:
            return super().from_pipe(pipeline, **kwargs)
        finally:
            cast_warnings.setLevel(level)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> Any:
        """Load from a saved folder or a Hub repo id, with no remote code run.

        Our own components map to the installed hf_ddpm classes, diffusers components to diffusers
        classes; a diffusers ``DDPMScheduler`` (as in google/ddpm-cifar10-32) becomes an
        ``HFDDPMScheduler`` unless ``convert_scheduler=False``. See ``hf_ddpm.hub.loading.load_pipeline``
        for the keyword arguments. A remote-code copy of this class has no installed package to map to,
        so it defers to ``DiffusionPipeline.from_pretrained``.
        """
        if not RUNNING_AS_HF_DDPM:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        # The installed package's loader, which saved folders do not carry. It is imported by name, not
        # by an import statement: diffusers scans a Hub repo's remote code for import lines and would
        # tell its users to install hf_ddpm.
        loading = importlib.import_module(INSTALLED_LOADER)
        return loading.load_pipeline(cls, pretrained_model_name_or_path, **kwargs)
