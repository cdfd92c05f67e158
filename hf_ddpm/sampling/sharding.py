"""Work split over the processes of a launch (``torchrun``, ``accelerate launch``), and what they exchange.

One process (no launcher, or a launch of one) is the group of one: every call here is then a no-op or the
identity, so code written for many processes runs unchanged alone. Under a launcher, the processes join
torch.distributed through accelerate (gloo on CPU, NCCL on GPUs). Work is split by :meth:`ProcessGroup.shard`:
each process takes every world-th item of one list that all of them hold (positions ``rank``,
``rank + world``, ...), so their loads differ by at most one item. Of ``range(N)`` that is the indices ``i``
with ``i % world == rank``; a resumed sample folder splits only the indices still missing, which the main
process lists once for all (:meth:`ProcessGroup.broadcast`), so that a folder missing, say, every odd image
still keeps every process busy.

Seeds: :func:`image_generator` gives image ``i`` its own CPU generator, seeded from ``(seed, i)`` alone, so
an image does not depend on the batch it is drawn in nor on the process that draws it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "ProcessGroup",
    "image_generator",
    "image_seed",
    "multi_process_without_accelerator",
    "process_group",
]


def image_seed(seed: int, index: int) -> int:
    """The 64-bit seed of item ``index`` of a run seeded ``seed``: numpy's ``SeedSequence`` with the
    index as spawn key, so distinct (seed, index) pairs give independent streams (no seed + i overlap)."""
    state = np.random.SeedSequence(entropy=seed, spawn_key=(index,)).generate_state(1, np.uint64)
    return int(state[0])


def image_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator for item ``index`` alone: the same draws on any device, batch or process."""
    return torch.Generator("cpu").manual_seed(image_seed(seed, index))


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the launch: ``rank`` of ``world``, and the device its collectives use."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """The process that writes shared files and shows the progress bar."""
        return self.rank == 0

    def shard(self, indices: Sequence[int]) -> list[int]:
        """This process's part of ``indices``: those at positions ``rank``, ``rank + world``, ..."""
        return list(indices[self.rank :: self.world])

    def barrier(self) -> None:
        """Wait until every process has got here."""
        if self.world > 1:
            torch.distributed.barrier()

    def sum(self, value: int) -> int:
        """The sum of ``value`` over the processes (each gets it)."""
        return int(self._reduce(value, torch.distributed.ReduceOp.SUM) if self.world > 1 else value)

    def max(self, value: int) -> int:
        """The largest ``value`` of the processes (each gets it)."""
        return int(self._reduce(value, torch.distributed.ReduceOp.MAX) if self.world > 1 else value)

    def _reduce(self, value: int, op: Any) -> int:
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(tensor, op=op)
        return int(tensor.item())

    def broadcast(self, value: Any) -> Any:
        """The main process's ``value`` (any picklable object), on every process; the others' are ignored."""
        if self.world == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value`` (any picklable object), in rank order, on every process."""
        if self.world == 1:
            return [value]
        values: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(values, value)
        return values

    def agree(self, error: BaseException | None) -> None:
        """Raise on every process when any of them met ``error`` (the first one's, by rank), so that one
        process's bad input or failed write does not leave the others waiting at a barrier."""
        errors = [e for e in self.gather(error) if e is not None]
        if errors:
            raise errors[0] if error is None else error


def multi_process_without_accelerator() -> bool:
    """True under a multi-process launch (torchrun sets WORLD_SIZE) on a machine without GPU/XPU/MPS.

    accelerate only picks its gloo MULTI_CPU mode when told ``cpu=True``; otherwise every process
    silently works alone on its own copy.
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()


def process_group(device: str | torch.device | None = None) -> ProcessGroup:
    """The group of this process: rank and world from the launcher's environment (``WORLD_SIZE``,
    ``RANK``), joined through accelerate's ``PartialState`` when there are several.

    Under a multi-GPU launch each process takes its own GPU (``LOCAL_RANK``), as accelerate assigns it.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return ProcessGroup(
            device=torch.device(device) if device is not None else _default_device()
        )
    import atexit

    from accelerate import PartialState

    wants_cpu = device is not None and torch.device(device).type == "cpu"
    state = PartialState(cpu=wants_cpu or multi_process_without_accelerator())
    # Leave the process group before the interpreter tears down: a gloo group still alive then can abort
    # the process ("terminate called without an active exception") after its work is done.
    atexit.register(state.destroy_process_group)
    return ProcessGroup(state.process_index, state.num_processes, state.device)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
