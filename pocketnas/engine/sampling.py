"""Data order that a resumed run reproduces exactly: per-epoch permutations from (seed, epoch), split across
processes like DistributedSampler, and horizontal flips decided by (seed, epoch, index) rather than by whichever
worker happens to load an image."""
from __future__ import annotations

import os
from typing import Iterator, List, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def open_face_dataset(path: str, size: int = 112):
    """A RecordIO pack (folder with ``train.rec`` or a ``.rec``) or an image folder ``root/<identity>/<image>``."""
    from ..data.folder import FolderDataset
    from ..data.record_dataset import RecordDataset

    if path.endswith(".rec") or os.path.isfile(os.path.join(path, "train.rec")):
        return RecordDataset(path, train=False, size=size)
    return FolderDataset(path, train=False, size=size)


def flip_decision(seed: int, epoch: int, index: int) -> bool:
    return bool(np.random.default_rng([seed, epoch, index]).random() < 0.5)


class TrainSamples(Dataset):
    """(uint8 3 x H x W tensor, label, index, flipped): normalisation is left to each consumer (student, teacher)."""

    def __init__(self, faces, flip: bool = True, seed: int = 0):
        self.faces = faces
        self.flip = flip
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int, int, bool]:
        image, label = self.faces.sample_uint8(index)
        x = torch.from_numpy(image)
        flipped = self.flip and flip_decision(self.seed, self.epoch, index)
        if flipped:
            x = x.flip(-1)
        return x, label, index, flipped


class EpochBatchSampler(Sampler[List[int]]):
    """Batches of one process's share of a seeded per-epoch permutation; can start part-way into an epoch."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 max_batches: int = 0):
        per_rank = n // world_size
        if per_rank < batch_size:
            raise ValueError(f"{n} images are too few for batches of {batch_size} on {world_size} process(es)")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches = per_rank // batch_size
        if max_batches:
            self.batches = min(self.batches, max_batches)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start = epoch, start_batch

    def __len__(self) -> int:
        return self.batches - self.start

    def __iter__(self) -> Iterator[List[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)
        mine = perm[self.rank::self.world_size][: self.batches * self.batch_size].tolist()
        for b in range(self.start, self.batches):
            yield mine[b * self.batch_size:(b + 1) * self.batch_size]
