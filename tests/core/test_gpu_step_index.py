"""On CUDA, a chain whose timesteps are device tensors steps with the same coefficients as on the CPU (run
by hand: pytest -m gpu).

The step index follows diffusers' rule (core/stepping.py): the first ``step`` after ``set_timesteps`` looks
its timestep up in ``timesteps``, reading a device tensor back once. Before that rule, a device-tensor
timestep started the index at 0, so a chain that begins mid-schedule without ``set_begin_index`` took
``timesteps[0]``'s coefficients for its first step and was one schedule position off from then on,
while the same chain on the CPU (whose timesteps were looked up) was right. These tests compare CUDA with
the CPU on the same noise (CPU generators: diffusers' ``randn_tensor`` draws on the generator's device),
in float32 without TF32, so the two differ by the UNet's rounding only.
"""

from __future__ import annotations

import pytest
import torch
from conftest import _tiny_unet

from hf_ddpm import HFDDPMScheduler
from hf_ddpm.core.pipeline_img2img import HFDDPMImg2ImgPipeline

pytestmark = pytest.mark.gpu

T, STEPS = 20, 10
# Far below what a shifted step changes (each step's coefficients differ by tens of percent), far above
# float32 rounding of a tiny UNet on two devices.
TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def _needs_cuda_without_tf32():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _img2img(device: str) -> torch.Tensor:
    pipe = HFDDPMImg2ImgPipeline(
        unet=_tiny_unet(in_channels=3).to(device), scheduler=HFDDPMScheduler(num_train_timesteps=T)
    )
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return pipe(
        image=image,
        strength=0.55,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images.cpu()


def test_img2img_on_cuda_equals_the_cpu_result():
    """SDEdit starts at t0 = strength * T, mid-schedule, without set_begin_index, its timesteps on the
    device. It runs the cut chain as a schedule of its own (``set_timesteps(timesteps=kept)``), whose
    index 0 is t0, so the old rule happened to be right here; the end-to-end equality pins that it stays
    so whatever the pipeline's chain becomes."""
    on_cuda, on_cpu = _img2img("cuda"), _img2img("cpu")
    torch.testing.assert_close(on_cuda, on_cpu, rtol=0, atol=TOLERANCE)


def _chain_from_the_middle(device: str, start: int) -> torch.Tensor:
    """The full schedule of STEPS steps, stepped from ``timesteps[start]`` on, as a hand-written loop
    that starts mid-schedule (without set_begin_index) steps it. Under the old rule a device chain
    started at index 0: its result differed from the CPU's and it ended at step_index STEPS - start."""
    unet = _tiny_unet(in_channels=3).to(device)
    scheduler = HFDDPMScheduler(num_train_timesteps=T)
    scheduler.set_timesteps(STEPS, device=device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=generator).to(device)
    with torch.no_grad():
        for t in scheduler.timesteps[start:]:
            assert t.device.type == torch.device(device).type
            x = scheduler.step(unet(x, t).sample, t, x, generator=generator).prev_sample
    assert scheduler.step_index == STEPS
    return x.cpu()


@pytest.mark.parametrize("start", [0, 4])
def test_a_chain_started_mid_schedule_on_cuda_equals_the_cpu_result(start):
    on_cuda, on_cpu = _chain_from_the_middle("cuda", start), _chain_from_the_middle("cpu", start)
    torch.testing.assert_close(on_cuda, on_cpu, rtol=0, atol=TOLERANCE)
