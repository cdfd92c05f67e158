"""On CUDA, the training step and the sampling loop after its first step never wait for the GPU (run by
hand: pytest -m gpu). The first step reads its timestep back once to find its place in the schedule
(diffusers' step-index rule, core/stepping.py); the guard starts after it.

``torch.cuda.set_sync_debug_mode("error")`` raises on any operation that synchronises the host with the
device: ``.item()``, a copy from pageable memory, a data-dependent shape. A sync per step would leave the
GPU idle while the host queues the next step's kernels.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")


@contextlib.contextmanager
def _no_host_sync():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("class_conditional", [False, True])
def test_training_steps_do_not_sync(tmp_path, class_conditional):
    from test_train import _tiny

    from hf_ddpm.data.image_datasets import collate
    from hf_ddpm.training.step import TrainingStep
    from hf_ddpm.training.train import prepare_training

    config = _tiny(
        tmp_path,
        max_steps=4,
        checkpoint_every=0,
        random_flip=True,
        class_column="label" if class_conditional else None,
    )
    setup, _ = prepare_training(config)
    training_step = TrainingStep(setup)
    assert setup.accelerator.device.type == "cuda"
    examples = [setup.train_data[i] for i in range(config.batch_size)]
    batch = {name: value.pin_memory() for name, value in collate(examples).items()}
    training_step.micro_step(batch)  # the first step initialises CUDA state and the optimizer's
    losses = []
    with _no_host_sync():
        for _ in range(3):
            losses.append(training_step.micro_step(batch))
            setup.lr_scheduler.step()
            setup.ema.update(setup.unwrapped)
    assert torch.isfinite(torch.stack(losses)).all()


def test_sampling_loop_does_not_sync(tiny_unet):
    """From the first step's callback to the end of the loop, including the ``pt`` output."""
    from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler

    pipe = HFDDPMPipeline(
        unet=tiny_unet().to("cuda"), scheduler=HFDDPMScheduler(num_train_timesteps=20)
    )
    pipe.set_progress_bar_config(disable=True)
    steps = 10
    stack = contextlib.ExitStack()

    def guard_from_first_step(pipeline, step_index, timestep, tensors):
        if step_index == 0:
            stack.enter_context(_no_host_sync())
        return tensors

    generator = torch.Generator("cuda").manual_seed(0)
    with stack:
        images = pipe(
            batch_size=4,
            generator=generator,
            num_inference_steps=steps,
            output_type="pt",
            callback_on_step_end=guard_from_first_step,
        ).images
    assert images.device.type == "cuda" and torch.isfinite(images).all()
