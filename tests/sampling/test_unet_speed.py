"""--dtype / --channels-last (hf_ddpm.sampling.unet_speed): the UNet runs in bf16 under autocast while the
chain stays in float32, and the defaults leave a pipeline's images bit for bit as they were."""

import numpy as np
import pytest
import torch

from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler
from hf_ddpm.sampling.unet_speed import UNetSpeed, apply_unet_speed


def _pipe(tiny_unet):
    pipe = HFDDPMPipeline(unet=tiny_unet(), scheduler=HFDDPMScheduler(num_train_timesteps=10))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _draw(pipe, callback=None):
    return pipe(
        batch_size=2,
        generator=torch.Generator().manual_seed(0),
        num_inference_steps=4,
        output_type="np",
        callback_on_step_end=callback,
    ).images


def test_default_speed_options_change_nothing(tiny_unet):
    plain, fast = _pipe(tiny_unet), _pipe(tiny_unet)
    apply_unet_speed(fast, UNetSpeed())
    assert np.array_equal(_draw(plain), _draw(fast))


def test_bfloat16_autocast_runs_the_unet_in_bf16_and_the_chain_in_float32(tiny_unet):
    plain, fast = _pipe(tiny_unet), _pipe(tiny_unet)
    apply_unet_speed(fast, UNetSpeed(dtype="bfloat16"))
    unet_dtypes, chain_dtypes = [], []
    forward = fast.unet.forward
    fast.unet.forward = lambda *a, **k: (
        unet_dtypes.append(forward(*a, **k).sample.dtype) or forward(*a, **k)
    )

    def record(pipe, i, t, tensors):
        chain_dtypes.append(tensors["latents"].dtype)
        return tensors

    images = _draw(fast, record)
    assert set(unet_dtypes) == {torch.bfloat16}
    assert set(chain_dtypes) == {torch.float32}
    assert fast.unet.dtype == torch.float32  # weights as saved
    assert fast.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    # bf16 keeps ~3 significant digits: the images move, but not far (values in [0, 1])
    assert 0 < np.abs(images - _draw(plain)).max() < 0.1


def test_channels_last_alone_changes_float_rounding_only(tiny_unet):
    plain, fast = _pipe(tiny_unet), _pipe(tiny_unet)
    apply_unet_speed(fast, UNetSpeed(channels_last=True))
    assert np.abs(_draw(plain) - _draw(fast)).max() < 1e-4


def test_float16_on_cpu_and_unknown_dtypes_are_refused(tiny_unet):
    with pytest.raises(ValueError, match="--dtype float16 is not supported on CPU"):
        apply_unet_speed(_pipe(tiny_unet), UNetSpeed(dtype="float16"))
    with pytest.raises(ValueError, match="--dtype must be one of float32, bfloat16, float16"):
        UNetSpeed(dtype="int8")
