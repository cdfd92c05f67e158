"""hf_ddpm Space: generate images with a DDPM and watch the diffusion math at work.

Four tabs:

* **Generate** runs the reverse process p(x_{t-1} | x_t) and streams x_t and the predicted x_0 every
  few steps, then shows the samples in a gallery (``elem_id="samples"``). The sampler is the model's
  DDPM scheduler (with a choice of its variance types and timestep spacings), or another of
  ``hf-ddpm sample``'s samplers (diffusers' DDIM or DPM-Solver++) made from the same config.
* **Forward process** draws x_t from the closed form q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)
  (Ho et al. 2020, eq. 4) and plots beta_t, abar_t and SNR(t) = abar_t / (1 - abar_t).
* **Likelihood** evaluates the variational bound L = L_T + sum_{t>1} L_{t-1} + L_0 (Ho et al. eq. 5)
  in bits/dim with ``hf_ddpm.variational_bound``: prior L_T, rate sum_{t>1} L_{t-1}, distortion L_0.
* **Edit** fills a painted region of a picture (RePaint) or turns a rough picture into a clean one
  (SDEdit, image-to-image), streaming x_t as Generate does.

An uploaded image becomes x_0 through ``hf_ddpm.data.image_transform.ImageTransform``, the transform of
``hf-ddpm train`` and ``hf-ddpm evaluate`` (shorter side resized bilinearly, centre crop, scaling to
[-1, 1], snapping onto the data's levels), so the Likelihood tab's bits/dim for an image is the number
the evaluation gives for it. The number of levels comes from the ``train_config.json`` that
``hf-ddpm train`` saves beside the pipeline; a model without one is taken to have 8-bit data (256 levels).

The model comes from ``--model``, else ``HF_DDPM_MODEL``, else the ``models:`` entry of this folder's
README.md (filled in by ``hf-ddpm space``), else the model bundled with hf_ddpm. It loads with
``hf_ddpm.HFDDPMPipeline`` where hf_ddpm is importable, otherwise with
``DiffusionPipeline.from_pretrained(model, trust_remote_code=True)``. A model that is missing or fails
to load leaves a page that says so. Without hf_ddpm (a Space made from this folder alone) the Likelihood
and Edit tabs say that they need hf_ddpm, and the Forward tab resizes an upload to the model's size as
it is.

This file is the wiring: one builder per tab lays out its widgets and connects them to the work, which
lives in plain functions in ``ddpm_space/`` that the tests call directly.

Run locally: ``python spaces_app/app.py [--model PATH_OR_REPO] [--port 7860] [--threads N]``.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if not os.environ.get("GRADIO_TEMP_DIR"):
    # Gradio keeps uploads and streamed frames in one /tmp/gradio shared by every user and process on
    # the machine unless GRADIO_TEMP_DIR names another folder: this process gets its own, read by
    # Gradio when it writes a file, and removed when the process ends.
    os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="hf-ddpm-space-gradio-")
    atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], ignore_errors=True)

import gradio as gr  # noqa: E402  (after GRADIO_TEMP_DIR is set)
import numpy as np
import pandas as pd
from PIL import Image

if __package__:  # imported as spaces_app.app (the tests)
    from .ddpm_space import editing
    from .ddpm_space.forward import forward_noise, schedule_table
    from .ddpm_space.generate import generate_images, spacings_for
    from .ddpm_space.inputs import (
        MAX_IMAGES,
        MAX_QUEUE,
        MAX_SEED,
        MAX_STEPS,
        NO_CLASS,
        requested_class,
    )
    from .ddpm_space.likelihood import likelihood_bound
    from .ddpm_space.loading import (
        DDPM,
        LoadedModel,
        ModelState,
        load_model,
        sampler_help,
        trained_on_bundled_data,
    )
    from .ddpm_space.pictures import ImageTransform, readable_upload
else:  # run as a script (`python app.py`, as a Space runs it), with this folder on sys.path
    from ddpm_space import editing
    from ddpm_space.forward import forward_noise, schedule_table
    from ddpm_space.generate import generate_images, spacings_for
    from ddpm_space.inputs import (
        MAX_IMAGES,
        MAX_QUEUE,
        MAX_SEED,
        MAX_STEPS,
        NO_CLASS,
        requested_class,
    )
    from ddpm_space.likelihood import likelihood_bound
    from ddpm_space.loading import (
        DDPM,
        LoadedModel,
        ModelState,
        load_model,
        sampler_help,
        trained_on_bundled_data,
    )
    from ddpm_space.pictures import ImageTransform, readable_upload

try:  # every hf-ddpm command's --threads, where hf_ddpm is installed (a Space's copy has no cli.py)
    from hf_ddpm.cli import add_threads_flag, set_threads
except ImportError:

    def add_threads_flag(parser: argparse.ArgumentParser) -> None:
        """``--threads N``, as hf-ddpm's commands take it."""

        def positive(text: str) -> int:
            if int(text) < 1:
                raise ValueError(text)
            return int(text)

        positive.__name__ = "positive integer"  # argparse names the type in its message
        parser.add_argument(
            "--threads",
            type=positive,
            metavar="N",
            help="torch intra-op threads (default: torch's own choice, one per core)",
        )

    def set_threads(threads: int | None) -> None:
        """Apply ``--threads`` (None: leave torch's own choice)."""
        if threads is not None:
            import torch

            torch.set_num_threads(threads)


try:  # ZeroGPU Spaces ship `spaces`; elsewhere the decorator is a no-op.
    import spaces

    _gpu: Callable[[Callable[..., Any]], Callable[..., Any]] = spaces.GPU
except ImportError:

    def _gpu(fn: Callable[..., Any]) -> Callable[..., Any]:
        return fn


__all__ = [
    "CSS",
    "MAX_IMAGES",
    "MAX_STEPS",
    "NO_CLASS",
    "ModelState",
    "build_demo",
    "edit_image",
    "forward_noise",
    "generate_images",
    "likelihood_bound",
    "load_model",
    "resolve_model",
]

edit_image = editing.edit_image
_HERE = Path(__file__).resolve().parent
_BUNDLED_MODEL = Path("pretrained") / "mnist-5k"
# PIL modes of example images, by the channel count of the models they suit.
_EXAMPLE_MODES = {1: "L", 3: "RGB"}

# Launch-time CSS (Gradio 6 takes it in launch()): blow tiny images up as crisp pixels.
CSS = (
    ".pixelated img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }"
    " #samples img { image-rendering: pixelated; }"
    " #edit_input canvas { image-rendering: pixelated; }"
)


# --------------------------------------------------------------------------------------------------
# Choosing the model and its examples
# --------------------------------------------------------------------------------------------------


def _readme_models(readme: Path) -> list[str]:
    if not readme.is_file():
        return []
    from huggingface_hub import SpaceCard

    return list(SpaceCard.load(readme).data.models or [])


def _bundled_model() -> Path | None:
    spec = importlib.util.find_spec("hf_ddpm")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / _BUNDLED_MODEL
    return folder if (folder / "model_index.json").is_file() else None


def resolve_model(cli_model: str | None = None) -> str | None:
    """The model to serve: ``--model``, ``HF_DDPM_MODEL``, README ``models:``, the bundled model."""
    if cli_model:
        return cli_model
    if os.environ.get("HF_DDPM_MODEL"):
        return os.environ["HF_DDPM_MODEL"]
    listed = _readme_models(_HERE / "README.md")
    if listed:
        return listed[0]
    bundled = _bundled_model()
    return str(bundled) if bundled is not None else None


def examples_for(loaded: LoadedModel | None) -> list[str]:
    """The example pictures (examples/*.png: held-out MNIST digits, the bundled model's data) whose
    colour matches the model: grey ones for a 1-channel model, RGB ones for a 3-channel one. None for a
    model whose train_config.json names other data than a bundled digit set (a folder of photos, a Hub
    dataset): digits are no example of what it draws."""
    if loaded is not None and loaded.trained_on is not None:
        if not trained_on_bundled_data(loaded.trained_on):
            return []
    mode = _EXAMPLE_MODES.get(loaded.channels) if loaded else None
    paths = sorted((_HERE / "examples").glob("*.png"))
    return [str(path) for path in paths if mode is not None and Image.open(path).mode == mode]


def edit_examples(loaded: LoadedModel | None) -> list[dict[str, Any]]:
    """ImageEditor values for the Edit tab: each example digit of a matching model with a painted
    layer from examples/edit/ (``<digit>_mask.png``, its lower half painted)."""
    values = []
    for picture in examples_for(loaded):
        mask = _HERE / "examples" / "edit" / f"{Path(picture).stem}_mask.png"
        composite = mask.with_name(f"{Path(picture).stem}_composite.png")
        if mask.is_file() and composite.is_file():
            values.append(
                {"background": picture, "layers": [str(mask)], "composite": str(composite)}
            )
    return values


# --------------------------------------------------------------------------------------------------
# The tabs
# --------------------------------------------------------------------------------------------------


def _steps_limit(loaded: LoadedModel | None) -> tuple[int, int]:
    """(T, the most inference steps a request may ask for)."""
    num_steps_train = loaded.num_train_timesteps if loaded else 1000
    return num_steps_train, min(num_steps_train, MAX_STEPS)


def _steps_slider(loaded: LoadedModel | None, default: int | None, elem_id: str) -> gr.Slider:
    num_steps_train, max_steps = _steps_limit(loaded)
    capped = f"at most {max_steps} here; " if max_steps < num_steps_train else ""
    return gr.Slider(
        1,
        max_steps,
        value=min(default or max_steps, max_steps),
        step=1,
        label=f"Inference steps ({capped}respaced from T = {num_steps_train})",
        elem_id=elem_id,
    )


def _seed_box(label: str) -> gr.Number:
    """A seed field. Its upper end is checked by the work function, whose message names the field and
    the range, rather than by Gradio, whose message names neither (and shows a 20-digit seed rounded
    by the browser)."""
    return gr.Number(0, label=label, precision=0, minimum=0, info=f"0 to {MAX_SEED}")


def _class_choice(loaded: LoadedModel | None) -> gr.Dropdown:
    """A class picker by name, shown only for a class-conditional model."""
    names = loaded.class_names if loaded else ()
    # Custom values reach the work function, whose message names the allowed range, not Gradio's.
    return gr.Dropdown(
        [(name, k) for k, name in enumerate(names)] or [("class 0", 0)],
        value=0,
        label="Class",
        visible=bool(names),
        allow_custom_value=True,
    )


def _guidance_slider(loaded: LoadedModel | None) -> gr.Slider:
    return gr.Slider(
        0,
        20,
        value=1,
        step=0.5,
        label="Guidance scale (1: none)",
        visible=bool(loaded and loaded.num_classes),
    )


def _condition_dropdown(loaded: LoadedModel | None, none_label: str) -> gr.Dropdown:
    """A condition for a class-conditional model: none (the default, the null label) or a class y."""
    num_classes = loaded.num_classes if loaded else None
    choices = [(none_label, NO_CLASS)]
    choices += [(name, k) for k, name in enumerate(loaded.class_names if loaded else ())]
    # Custom values reach the work function, whose message names the allowed range, not Gradio's.
    return gr.Dropdown(
        choices,
        value=NO_CLASS,
        label="Condition on",
        visible=num_classes is not None,
        allow_custom_value=True,
    )


def _upload(label: str) -> gr.Image:
    return readable_upload(
        gr.Image(
            label=label,
            type="numpy",
            image_mode="RGB",
            format="png",
            elem_classes="pixelated",
            height=240,
        )
    )


def _pixel_image(label: str, **kwargs: Any) -> gr.Image:
    return gr.Image(label=label, format="png", elem_classes="pixelated", height=240, **kwargs)


def build_generate_tab(state: ModelState) -> None:
    """Seed, count, steps, sampler, variance, spacing (and class) -> streamed x_t, x_0 and samples."""
    loaded = state.model
    variance_types = loaded.variance_types if loaded else ()
    samplers = loaded.samplers if loaded else (DDPM,)
    spacings = spacings_for(loaded, DDPM) if loaded else ()
    with gr.Row():
        with gr.Column(scale=1):
            seed = _seed_box("Seed")
            num_images = gr.Slider(
                1, MAX_IMAGES, value=min(4, MAX_IMAGES), step=1, label="Number of images"
            )
            steps = _steps_slider(
                loaded, loaded.sampling_steps if loaded else None, "generate_steps"
            )
            sampler = gr.Dropdown(
                list(samplers),
                value=DDPM,
                label="Sampler",
                info=sampler_help(samplers),
                elem_id="sampler",
            )
            variance = gr.Dropdown(
                list(variance_types),
                value=loaded.default_variance_type if variance_types else None,
                label="Variance type (ddpm sampler)",
                elem_id="variance_type",
                # Without a model there is nothing to choose; the request then says why.
                allow_custom_value=loaded is None,
            )
            spacing = gr.Dropdown(
                list(spacings),
                value=spacings[0] if spacings else None,
                label="Timestep spacing",
                elem_id="timestep_spacing",
                visible=bool(spacings),
                allow_custom_value=loaded is None,
            )
            class_label = _class_choice(loaded)
            guidance = _guidance_slider(loaded)
            button = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Column(scale=2):
            status = gr.Markdown(elem_id="generate_status")
            with gr.Row():
                x_t = _pixel_image("x_t", elem_id="x_t", interactive=False)
                x0_hat = _pixel_image("predicted x_0", elem_id="x0_hat", interactive=False)
            gallery = gr.Gallery(
                label="Samples", elem_id="samples", format="png", columns=4, height="auto"
            )

    @_gpu
    def generate(
        seed: float,
        num_images: float,
        steps: float,
        variance_type: str,
        class_label: str | float | None,
        guidance_scale: float | None,
        sampler: str,
        timestep_spacing: str | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio's injection idiom)
    ) -> Iterator[tuple[Any, Any, Any, str]]:
        """Sample with the reverse process, streaming x_t and predicted x_0."""
        yield from generate_images(
            state,
            seed,
            num_images,
            steps,
            variance_type,
            requested_class(state, class_label, none_allowed=False),
            guidance_scale,
            progress,
            sampler=sampler,
            timestep_spacing=timestep_spacing,
        )

    button.click(
        generate,
        inputs=[seed, num_images, steps, variance, class_label, guidance, sampler, spacing],
        outputs=[x_t, x0_hat, gallery, status],
        api_name="generate",
        concurrency_limit=1,
        concurrency_id="model",
    )

    def sampler_changed(sampler: str) -> tuple[Any, Any]:
        """The variance type matters to DDPM alone; each sampler has its own spacings."""
        if loaded is None or sampler not in samplers:
            return gr.skip(), gr.skip()
        choices = spacings_for(loaded, sampler)
        return (
            gr.Dropdown(interactive=sampler == DDPM),
            gr.Dropdown(choices=list(choices), value=choices[0] if choices else None),
        )

    sampler.change(sampler_changed, sampler, [variance, spacing], api_visibility="private")


def build_forward_tab(state: ModelState) -> None:
    """An image, t and a noise seed -> x_t ~ q(x_t | x_0), redrawn as they change; schedule plots."""
    loaded = state.model
    num_steps_train, _ = _steps_limit(loaded)
    with gr.Row():
        with gr.Column():
            source = _upload("x_0")
            t_slider = gr.Slider(
                0, num_steps_train - 1, value=num_steps_train // 4, step=1, label="t"
            )
            noise_seed = _seed_box("Noise seed")
            forward_button = gr.Button("Add noise")
            examples = examples_for(loaded)
            if examples:
                gr.Examples(examples, inputs=source, label="Held-out MNIST digits")
        with gr.Column():
            x0_shown = _pixel_image("x_0 as the model sees it")
            x_t_forward = _pixel_image("x_t ~ q(x_t | x_0)", elem_id="x_t_forward")
            forward_info = gr.Markdown(elem_id="forward_info")

    def forward(
        image: np.ndarray | None, t: float, noise_seed: float
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """x_t drawn in one step from q(x_t | x_0)."""
        return forward_noise(state, image, t, noise_seed)

    forward_inputs = [source, t_slider, noise_seed]
    forward_outputs = [x0_shown, x_t_forward, forward_info]
    forward_button.click(
        forward, forward_inputs, forward_outputs, api_name="forward", concurrency_limit=4
    )

    def forward_preview(image: np.ndarray | None, t: float, noise_seed: float) -> Any:
        """Redraw x_t when the image or t changes; with no image yet there is nothing to do."""
        if image is None:
            return gr.skip(), gr.skip(), gr.skip()
        return forward_noise(state, image, t, noise_seed)

    for event in (source.change, t_slider.release):
        event(
            forward_preview,
            forward_inputs,
            forward_outputs,
            api_visibility="private",
            concurrency_limit=4,
        )
    if loaded is not None:
        table = schedule_table(loaded.pipe.scheduler)
        with gr.Row():
            gr.LinePlot(table, x="t", y="beta_t", title="beta_t")
            gr.LinePlot(table, x="t", y="alpha_bar_t", title="alpha-bar_t")
            gr.LinePlot(table, x="t", y="log10_snr", title="log10 SNR(t)")


def _preparation_note(loaded: LoadedModel | None) -> str:
    """The Likelihood tab's words on how an upload becomes x_0, and on which levels."""
    if loaded is None:
        return ""
    if ImageTransform is None:
        return " It needs the hf_ddpm package, which this Space does not have."
    size = loaded.sample_size
    return (
        f" An upload is prepared as `hf-ddpm train` and `hf-ddpm evaluate` prepare data: its shorter "
        f"side resized (bilinear) to {size}, the centre {size}x{size} cropped, and its pixels scaled "
        f"to [-1, 1] on the data's {loaded.num_bins} levels ({loaded.num_bins_source})."
    )


def build_likelihood_tab(state: ModelState) -> None:
    """An image, a seed (and a condition) -> the bound's terms per timestep and its total."""
    loaded = state.model
    gr.Markdown(
        "The variational bound on -log p(x_0) in bits/dim: prior L_T, rate "
        "(sum of L_1 .. L_{T-1}) and distortion L_0. It runs the model once per timestep."
        + _preparation_note(loaded),
        elem_id="likelihood_help",
    )
    with gr.Row():
        with gr.Column():
            lik_image = _upload("x_0")
            lik_seed = _seed_box("Seed")
            lik_class = _condition_dropdown(loaded, "none: -log p(x), as hf-ddpm evaluate reports")
            lik_button = gr.Button("Compute the bound")
            examples = examples_for(loaded)
            if examples:
                gr.Examples(examples, inputs=lik_image, label="Held-out MNIST digits")
        with gr.Column():
            lik_summary = gr.JSON(label="bits/dim")
            lik_plot = gr.LinePlot(x="t", y="L_t_bpd", title="L_t (bits/dim)")

    @_gpu
    def likelihood(
        image: np.ndarray | None, seed: float, class_label: str | float | None
    ) -> tuple[pd.DataFrame, dict[str, float]]:
        """Per-timestep terms and the total variational bound, in bits/dim."""
        return likelihood_bound(
            state, image, seed, requested_class(state, class_label, none_allowed=True)
        )

    lik_button.click(
        likelihood,
        [lik_image, lik_seed, lik_class],
        [lik_plot, lik_summary],
        api_name="likelihood",
        concurrency_limit=1,
        concurrency_id="model",
    )


def build_edit_tab(state: ModelState) -> None:
    """A picture with a painted mask (or a rough picture) -> RePaint's fill (or SDEdit's clean-up)."""
    loaded = state.model
    available = editing.editing_pipelines() is not None
    gr.Markdown(
        "**Inpaint**: upload a picture and paint the region to fill with the brush; RePaint "
        "(Lugmayr et al. 2022) draws the known pixels from q(x_{t-1} | x_0) and the painted ones from "
        "the model, resampling each stretch of steps. **Image-to-image**: draw or paint a rough "
        "picture; SDEdit (Meng et al. 2022) noises it to t_0 = strength x T and denoises it."
        + (
            ""
            if available
            else " This installation's hf_ddpm has no editing pipelines, so the tab is idle."
        ),
        elem_id="edit_help",
    )
    with gr.Row():
        with gr.Column():
            editor = readable_upload(
                gr.ImageEditor(
                    label="Picture (paint the mask on it)",
                    type="numpy",
                    image_mode="RGBA",
                    format="png",
                    sources=("upload", "clipboard"),
                    # A radius of 3 pixels paints a model-sized (28 or 32 pixel) picture quickly.
                    brush=gr.Brush(default_size=3, colors=["#ff00ff"], color_mode="fixed"),
                    transforms=(),
                    layers=False,
                    height=360,
                    elem_id="edit_input",
                )
            )
            mode = gr.Radio(list(editing.MODES), value=editing.INPAINT, label="Mode")
            strength = gr.Slider(
                0.05, 1, value=0.5, step=0.05, label="Strength (t_0 / T)", visible=False
            )
            steps = _steps_slider(loaded, 50, "edit_steps")
            jumps = gr.Slider(
                1,
                10,
                # The default request stays within the cap on steps x resamplings.
                value=max(1, min(5, MAX_STEPS // steps.value)),
                step=1,
                label=f"Resamplings per stretch of {editing.JUMP_LENGTH} steps (RePaint's r)",
            )
            seed = _seed_box("Seed")
            condition = _condition_dropdown(loaded, "none")
            guidance = _guidance_slider(loaded)
            button = gr.Button("Edit", variant="primary", elem_id="edit", interactive=available)
            examples = edit_examples(loaded)
            if examples:
                gr.Examples(
                    [[value] for value in examples],
                    inputs=editor,
                    label="A held-out digit with its lower half painted",
                )
        with gr.Column():
            status = gr.Markdown(elem_id="edit_status")
            x_t = _pixel_image("x_t", elem_id="edit_x_t", interactive=False)
            result = _pixel_image("result", elem_id="edit_result", interactive=False)

    @_gpu
    def edit(
        editor: dict[str, Any] | None,
        mode: str,
        strength: float,
        steps: float,
        jump_n_sample: float,
        seed: float,
        class_label: str | float | None,
        guidance_scale: float | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio's injection idiom)
    ) -> Iterator[tuple[Any, Any, str]]:
        """Inpaint or clean up the picture, streaming x_t."""
        yield from edit_image(
            state,
            editor,
            mode,
            strength,
            steps,
            jump_n_sample,
            seed,
            requested_class(state, class_label, none_allowed=True),
            guidance_scale,
            progress,
        )

    button.click(
        edit,
        [editor, mode, strength, steps, jumps, seed, condition, guidance],
        [x_t, result, status],
        api_name="edit",
        concurrency_limit=1,
        concurrency_id="model",
    )

    def mode_changed(mode: str) -> tuple[Any, Any]:
        """Strength is image-to-image's knob, resampling inpainting's."""
        return gr.Slider(visible=mode == editing.IMG2IMG), gr.Slider(
            visible=mode == editing.INPAINT
        )

    mode.change(mode_changed, mode, [strength, jumps], api_visibility="private")


def build_demo(state: ModelState) -> gr.Blocks:
    """The Blocks app for ``state``; comes up (with a message) even when no model loaded."""
    with gr.Blocks(title="hf_ddpm: denoising diffusion") as demo:
        gr.Markdown("# Denoising diffusion (DDPM)\n" + state.message, elem_id="model_status")
        with gr.Tab("Generate"):
            build_generate_tab(state)
        with gr.Tab("Forward process"):
            build_forward_tab(state)
        with gr.Tab("Likelihood"):
            build_likelihood_tab(state)
        with gr.Tab("Edit"):
            build_edit_tab(state)
    demo.queue(max_size=MAX_QUEUE)
    return demo


def main(argv: list[str] | None = None) -> None:
    """Serve the Space locally (127.0.0.1 unless GRADIO_SERVER_NAME says otherwise, as on Spaces)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # MODEL or --model MODEL, as every hf-ddpm command takes it (the Space may run without hf_ddpm).
    what = "Hub repo id or local pipeline folder (else HF_DDPM_MODEL)"
    parser.add_argument("model", nargs="?", metavar="MODEL", help=f"{what}; or give --model")
    parser.add_argument("--model", dest="model_option", metavar="MODEL", help=what)
    parser.add_argument(
        "--port", type=int, default=None, help="port (else GRADIO_SERVER_PORT, 7860)"
    )
    add_threads_flag(parser)
    args = parser.parse_args(argv)
    if args.model and args.model_option and args.model != args.model_option:
        parser.error(
            f"the model is given twice, as {args.model!r} and --model {args.model_option!r}"
        )
    set_threads(args.threads)  # before the model loads, as every hf-ddpm command does
    demo = build_demo(load_model(resolve_model(args.model_option or args.model)))
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=args.port or int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        css=CSS,
    )


if __name__ == "__main__":
    main()
