"""hf_ddpm: DDPM (Ho, Jain & Abbeel 2020) from scratch, as a diffusers plugin.

Public names are imported lazily so that ``hf-ddpm --help`` and the math modules do not pay for
importing the whole diffusers pipeline stack.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "HFDDPMScheduler": "scheduling",
    "HFDDPMSchedulerOutput": "scheduling",
    "variational_bound": "vlb",
    "VariationalBound": "vlb",
    "HFDDPMPipeline": "pipeline",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hf_ddpm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
