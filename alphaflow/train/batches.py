"""Deterministic, resumable, rank-sharded batches of dataset indices.

Epoch e is a permutation of the dataset drawn from a generator seeded with (seed, e); global
batch j of the run is the slice [j·B, (j+1)·B) of its epoch's permutation (an incomplete tail is
dropped), and rank r takes rows [r·b, (r+1)·b) of it, b = B / world. The whole stream is a pure
function of (seed, j), so resuming at batch j needs only j, and worker processes can fetch any
batch independently.
"""

from __future__ import annotations

from typing import Iterator, cast

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from alphaflow.data.base import TrainData


class EpochBatches:
    """Batch number → (raw [b, ...], labels [b]) for one rank. Picklable (DataLoader workers)."""

    def __init__(self, data: TrainData, *, global_batch: int, seed: int, rank: int = 0, world_size: int = 1,
                 pin_memory: bool = False) -> None:
        if global_batch % world_size:
            raise ValueError(f"train.batch_size={global_batch} must be divisible by the number of processes ({world_size})")
        if global_batch > len(data):
            raise ValueError(f"train.batch_size={global_batch} exceeds the dataset size ({len(data)} samples)")
        self.data, self.global_batch, self.seed = data, global_batch, seed
        self.rank, self.per_rank = rank, global_batch // world_size
        self.per_epoch = len(data) // global_batch
        self.pin_memory = pin_memory  # page-locked host batches: the copy to the GPU can overlap the step
        self._perm: tuple[int, Tensor] | None = None

    def indices(self, batch_no: int) -> Tensor:
        epoch, j = divmod(batch_no, self.per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.data), generator=gen))
        start = j * self.global_batch + self.rank * self.per_rank
        return self._perm[1][start:start + self.per_rank]

    def __getitem__(self, batch_no: int) -> tuple[Tensor, Tensor]:
        return self.data.get(self.indices(batch_no))

    def iterate(self, start: int, stop: int, workers: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches start, start + 1, …, stop − 1, prefetched by ``workers`` processes when > 0
        (pinned when ``pin_memory``, so ``.to(device, non_blocking=True)`` does not block the host)."""
        if workers <= 0:
            if not self.pin_memory:
                return (self[j] for j in range(start, stop))
            pinned = (tuple(t.pin_memory() for t in self[j]) for j in range(start, stop))
            return cast(Iterator[tuple[Tensor, Tensor]], pinned)  # each batch still (raw, labels)
        # DataLoader takes any map-style dataset (here: batch number → batch), not only ``Dataset`` subclasses
        loader = DataLoader(cast("Dataset[tuple[Tensor, Tensor]]", self), batch_size=None, sampler=range(start, stop),
                            num_workers=workers, persistent_workers=False, prefetch_factor=2,
                            pin_memory=self.pin_memory)
        return iter(loader)
