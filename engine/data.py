"""Batches for training and evaluation, with a position that a checkpoint can restore.

A map-style dataset (such as `stretto.tokenizer.TokenDataset`) is read in epochs: the
order of epoch e is a permutation drawn from `(seed, e)` alone, so the same seed gives
the same batches in every process, and a run resumed at (epoch, batch) continues with
exactly the batches it would have drawn. In a distributed run each rank reads its own
slice of that order (`rank::world_size`, the tail padded by repeats so every rank runs
as many steps), like `DistributedSampler`. An iterable of ready batches is cycled (each
batch a global batch that the ranks split by rows).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochBatchSampler(Sampler[list[int]]):
    """The batches of indices of one epoch for one rank, from batch `start` on."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        shuffle: bool,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ) -> None:
        if n < world_size:
            raise ValueError(f"the dataset has {n} windows for {world_size} ranks")
        if shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        else:
            order = torch.arange(n)
        if world_size > 1:
            drop = shuffle and n >= world_size * batch_size
            total = (n // world_size if drop else -(-n // world_size)) * world_size
            order = torch.cat([order, order[: total - n]]) if total > n else order[:total]
            order = order[rank:total:world_size]
        mine = order.tolist()
        batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
        if shuffle and len(mine) >= batch_size and len(batches[-1]) < batch_size:
            batches.pop()  # training drops the last, short batch
        self.batches = batches[start:]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class BatchStream:
    """Batches of `data` for one rank: endless epochs when `shuffle` (training), one
    pass otherwise (evaluation). `position` / `state_dict()` say how many batches were
    drawn; `load_state_dict` resumes there."""

    def __init__(
        self,
        data: Any,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.data, self.batch_size, self.shuffle = data, batch_size, shuffle
        self.seed, self.num_workers = seed, num_workers
        self.rank, self.world_size = rank, world_size
        self.mapped = isinstance(data, Dataset) and hasattr(data, "__len__")
        if self.mapped and len(data) == 0:
            raise ValueError("the dataset has no windows")
        self.epoch = self.batch = 0
        self._it: Iterator[dict] | None = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self._it = None

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        if self._it is None:
            self._it = self._open()
        try:
            batch = next(self._it)
        except StopIteration:
            if not self.shuffle:
                raise
            # the next epoch; an iterable that yields nothing more cannot train
            self.epoch, self.batch = self.epoch + 1, 0
            self._it = self._open()
            batch = next(self._it, None)
            if batch is None:
                raise ValueError(
                    "the training data yielded no batch (an exhausted iterator?)"
                ) from None
        self.batch += 1
        return batch

    def _open(self) -> Iterator[dict]:
        if self.mapped:
            sampler = EpochBatchSampler(
                len(self.data),
                self.batch_size,
                seed=self.seed,
                epoch=self.epoch,
                shuffle=self.shuffle,
                rank=self.rank,
                world_size=self.world_size,
                start=self.batch,
            )
            # Its own generator: a DataLoader iterator draws its workers' base seed from
            # it, which would otherwise shift the global RNG that a resume restores.
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            loader = DataLoader(
                self.data,
                batch_sampler=sampler,
                num_workers=self.num_workers,
                generator=generator,
            )
            return iter(loader)
        # ready batches: one pass is an epoch, resumed by skipping what was drawn
        source = itertools.islice(self.data, self.batch, None)
        return (self._share(batch) for batch in source)

    def _share(self, batch: dict) -> dict:
        if self.world_size == 1:
            return batch
        return {k: _rows(v, self.rank, self.world_size) for k, v in batch.items()}


def _rows(tensor: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    if tensor.shape[0] % world_size:
        raise ValueError(
            f"a ready batch of {tensor.shape[0]} rows does not split over {world_size} ranks"
        )
    return tensor.chunk(world_size)[rank]


def rank_batches(
    data: Any,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int,
    rank: int,
    world_size: int,
) -> BatchStream:
    """This rank's batches (a `BatchStream`; see the module docstring)."""
    return BatchStream(
        data,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        num_workers=num_workers,
        rank=rank,
        world_size=world_size,
    )
