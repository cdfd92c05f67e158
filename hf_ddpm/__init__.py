"""hf_ddpm: DDPM (Ho, Jain & Abbeel 2020) from scratch, as a diffusers plugin.

Public names are imported lazily so that ``hf-ddpm --help`` and the math modules do not pay for
importing the whole diffusers pipeline stack.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that defines it (relative to hf_ddpm); `hf-ddpm space` copies these modules.
PUBLIC_API = {
    "HFDDPMScheduler": "core.scheduling",
    "HFDDPMSchedulerOutput": "core.scheduling",
    "HFDDIMScheduler": "core.scheduling_ddim",
    "variational_bound": "evaluation.bound",
    "VariationalBound": "evaluation.bound",
    "HFDDPMPipeline": "core.pipeline",
    "HFDDPMInpaintPipeline": "core.pipeline_inpaint",
    "HFDDPMImg2ImgPipeline": "core.pipeline_img2img",
}

__all__ = sorted(PUBLIC_API)


def __getattr__(name: str) -> Any:
    if name in PUBLIC_API:
        value = getattr(import_module(f".{PUBLIC_API[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hf_ddpm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
