"""The edit pipelines loaded as remote code, from a folder and from a pushed repo, without hf_ddpm.

Moved from tests/sampling/test_editing.py (issue 18: tests mirror the package).
"""

import textwrap

import numpy as np
import torch

from hf_ddpm import HFDDPMImg2ImgPipeline, HFDDPMInpaintPipeline, HFDDPMPipeline
from hf_ddpm.core.scheduling import HFDDPMScheduler

SIZE = 8


_REMOTE_EDIT = """
import sys
import numpy as np
import torch
from diffusers import DiffusionPipeline

folder = {folder!r}
image = np.load({image!r})
mask = np.zeros(image.shape[:2]); mask[image.shape[0] // 2:] = 1
edit = dict(num_inference_steps=6, output_type="np", class_labels=[1])

def g():
    return torch.Generator().manual_seed(0)

inpaint = DiffusionPipeline.from_pretrained(folder, custom_pipeline="pipeline_inpaint", trust_remote_code=True)
assert type(inpaint).__name__ == "HFDDPMInpaintPipeline", type(inpaint)
a = inpaint(image=image, mask_image=mask, jump_length=2, jump_n_sample=2, generator=g(), **edit).images

pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
img2img_cls = sys.modules[type(pipe).__module__].HFDDPMImg2ImgPipeline
img2img = img2img_cls.from_pipe(pipe)
assert img2img.unet is pipe.unet
b = img2img(image=image, strength=0.5, generator=g(), **edit).images
via_path = DiffusionPipeline.from_pipe(
    pipe, custom_pipeline=folder + "/pipeline_img2img.py", trust_remote_code=True
)
assert type(via_path).__name__ == "HFDDPMImg2ImgPipeline", type(via_path)
np.testing.assert_array_equal(via_path(image=image, strength=0.5, generator=g(), **edit).images, b)
assert not any(m.split(".")[0] == "hf_ddpm" for m in sys.modules)
np.save({out!r}, np.stack([a, b]))
"""


def test_edit_pipelines_load_as_remote_code_without_hf_ddpm(
    tiny_unet, tmp_path, run_without_hf_ddpm
):
    unet = tiny_unet(in_channels=1, num_class_embeds=3)
    pipe = HFDDPMPipeline(
        unet=unet, scheduler=HFDDPMScheduler(num_train_timesteps=20), null_class_label=2
    )
    folder = tmp_path / "saved"
    pipe.save_pretrained(folder)
    image = np.random.default_rng(0).random((SIZE, SIZE, 1)).astype(np.float32)
    np.save(tmp_path / "image.npy", image)
    run_without_hf_ddpm(
        textwrap.dedent(_REMOTE_EDIT).format(
            folder=str(folder), image=str(tmp_path / "image.npy"), out=str(tmp_path / "out.npy")
        )
    )
    remote = np.load(tmp_path / "out.npy")
    mask = np.zeros((SIZE, SIZE))
    mask[SIZE // 2 :] = 1
    edit = dict(num_inference_steps=6, output_type="np", class_labels=[1])
    inpaint = HFDDPMInpaintPipeline.from_pipe(pipe)
    img2img = HFDDPMImg2ImgPipeline.from_pipe(pipe)
    for p in (inpaint, img2img):
        p.set_progress_bar_config(disable=True)
    a = inpaint(
        image=image,
        mask_image=mask,
        jump_length=2,
        jump_n_sample=2,
        generator=torch.Generator().manual_seed(0),
        **edit,
    ).images
    b = img2img(
        image=image, strength=0.5, generator=torch.Generator().manual_seed(0), **edit
    ).images
    # The same code and weights; one float32 rounding apart at most (the subprocess runs one thread).
    np.testing.assert_allclose(remote, np.stack([a, b]), atol=1e-6, rtol=0)


_REMOTE_HUB_EDIT = """
import sys
import numpy as np
from diffusers import DiffusionPipeline

for name, cls_name in (("pipeline_inpaint", "HFDDPMInpaintPipeline"), ("pipeline_img2img", "HFDDPMImg2ImgPipeline")):
    pipe = DiffusionPipeline.from_pretrained("user/edit-me", custom_pipeline=name, trust_remote_code=True)
    assert type(pipe).__name__ == cls_name, type(pipe)
    pipe.set_progress_bar_config(disable=True)
    image = np.zeros((8, 8, 3))
    mask = np.zeros((8, 8)); mask[4:] = 1
    kwargs = dict(mask_image=mask, jump_n_sample=1) if name == "pipeline_inpaint" else dict(strength=0.5)
    assert pipe(image=image, num_inference_steps=3, output_type="np", **kwargs).images.shape == (1, 8, 8, 3)
assert not any(m.split(".")[0] == "hf_ddpm" for m in sys.modules)
"""


def test_edit_pipelines_load_from_a_pushed_repo_without_hf_ddpm(
    tiny_unet, hub_server, run_without_hf_ddpm
):
    HFDDPMPipeline(tiny_unet(), HFDDPMScheduler(num_train_timesteps=20)).push_to_hub("user/edit-me")
    run_without_hf_ddpm(textwrap.dedent(_REMOTE_HUB_EDIT), env=hub_server.env)
