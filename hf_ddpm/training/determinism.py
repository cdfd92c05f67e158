"""Everything random in a training run, as a pure function of the seed: what makes resume exact.

The noise, timesteps, flips and label dropout of a micro-batch come from generators seeded by
``derive_seed(seed, rank, micro-batch index, stream)``, and the global torch seed (dropout) is reset the
same way before each forward pass. The data order of epoch ``e`` is a permutation drawn from
``(seed, e)``. A checkpoint therefore only needs the step and the number of micro-batches seen to continue
with the very same batches and noise as an uninterrupted run, plus the python/numpy/torch RNG states
(:func:`rng_state`) for anything else that draws from them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

# Stream tags for derive_seed: each random quantity gets its own independent stream.
DATA_ORDER, NOISE, AUX, DROPOUT, INIT = 1, 2, 3, 4, 5


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends on all ``keys`` and is independent across them (numpy SeedSequence)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))


class EpochBatchSampler:
    """Infinite per-rank batches: epoch ``e`` visits ``randperm(n, seed=(seed, e))`` in global batches of
    ``batch_size * num_processes`` (the last partial one dropped); rank ``r`` takes slice ``r`` of each.

    ``start`` is the number of micro-batches already consumed, so a resumed run continues mid-epoch.
    """

    def __init__(
        self, num_items: int, batch_size: int, num_processes: int, rank: int, seed: int, start: int
    ) -> None:
        self.num_items, self.batch_size, self.rank, self.seed = num_items, batch_size, rank, seed
        self.global_batch = batch_size * num_processes
        self.batches_per_epoch = num_items // self.global_batch
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the dataset has {num_items} images, fewer than one global batch of "
                f"{self.global_batch} (--batch-size {batch_size} x {num_processes} processes)"
            )
        self.start = start

    def __iter__(self) -> Iterator[list[int]]:
        epoch, index = divmod(self.start, self.batches_per_epoch)
        while True:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, DATA_ORDER, epoch))
            order = torch.randperm(self.num_items, generator=generator)
            for b in range(index, self.batches_per_epoch):
                begin = b * self.global_batch + self.rank * self.batch_size
                yield order[begin : begin + self.batch_size].tolist()
            epoch, index = epoch + 1, 0


def rng_state() -> dict[str, Any]:
    """The python, numpy, torch (and CUDA) global RNG states, in a form ``flatten_state`` can store."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        # uint32 has no safetensors dtype in every version: store the key as int64.
        "numpy": {
            **np_state,
            "state": {**np_state["state"], "key": np_state["state"]["key"].astype(np.int64)},
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np_state["state"]["key"] = np.asarray(np_state["state"]["key"]).astype(np.uint32)
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
