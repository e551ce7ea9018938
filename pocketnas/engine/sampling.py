"""Data order that a resumed run reproduces exactly: per-epoch permutations from (seed, epoch), split across
processes like DistributedSampler, and horizontal flips decided by (seed, epoch, index) rather than by whichever
worker happens to load an image."""
from __future__ import annotations

from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..errors import InputError


def flip_decision(seed: int, epoch: int, index: int) -> bool:
    return bool(np.random.default_rng([seed, epoch, index]).random() < 0.5)


def bank_view(augment, image: np.ndarray, view_seed: int, index: int, view: int) -> np.ndarray:
    """View ``view`` of image ``index`` in a bank of fixed views: its parameters come from (view_seed, index,
    view) alone, so the training run and a teacher bank built before it (:mod:`.teacher_bank`) make the same
    pixels."""
    return augment(image, np.random.default_rng([view_seed, index, view, 2]))


class TrainSamples(Dataset):
    """(uint8 3 x H x W view, label, index, view number): normalisation is left to each consumer (student,
    teacher), which also resize the view to their own input size.

    Views: without ``augment``, view 0 is the image and view 1 its mirror (the mirror decided by (seed, epoch,
    index), as always). With ``augment`` (:class:`~pocketnas.data.views.FaceViewAugment`) and ``view_bank`` K > 0,
    each image has K fixed views: epoch e shows view v = f(seed, e, index), drawn with parameters from (seed,
    index, v), so a teacher's embedding of a view can be cached. With ``view_bank`` 0 every (epoch, image) gets
    fresh parameters and the view number is -1 (never repeats; a teacher must see it live). ``view_seed`` (default:
    ``seed``) draws the bank's views: runs with other seeds (another order, other picks among the K views) share
    one bank of teacher embeddings when they share it."""

    def __init__(self, faces, flip: bool = True, seed: int = 0, augment=None, view_bank: int = 0,
                 view_seed: Optional[int] = None):
        self.faces = faces
        self.flip = flip
        self.seed = seed
        self.view_seed = seed if view_seed is None else int(view_seed)
        self.augment = augment
        self.view_bank = int(view_bank)
        self.epoch = 0

    @property
    def views_per_image(self) -> int:
        """How many distinct views an image has (0: unbounded)."""
        if self.augment is None:
            return 2
        return self.view_bank

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.faces)

    def view_of(self, index: int) -> int:
        if self.augment is None:
            return int(self.flip and flip_decision(self.seed, self.epoch, index))
        if self.view_bank:
            return int(np.random.default_rng([self.seed, self.epoch, index, 1]).integers(self.view_bank))
        return -1

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int, int, int]:
        image, label = self.faces.sample_uint8(index)
        view = self.view_of(index)
        if self.augment is None:
            x = torch.from_numpy(image)
            return (x.flip(-1) if view else x), label, index, view
        if view >= 0:
            return torch.from_numpy(bank_view(self.augment, image, self.view_seed, index, view)), label, index, view
        fresh = self.augment(image, np.random.default_rng([self.seed, self.epoch, index, 3]))
        return torch.from_numpy(fresh), label, index, view


class ViewBatches:
    """The DataLoader's ``collate_fn``: stacks (view, label, index, view number) samples, optionally mixes the
    views (mixup, seeded by the batch's indices) and, given ``teacher`` (a :class:`~.teachers.LiveTeacher`),
    embeds the final views with it. In DataLoader workers this runs ahead of the student's step, in another
    process: the teacher's time overlaps the student's (``bench/train.py`` measures by how much)."""

    def __init__(self, samples: TrainSamples, mixup_alpha: float = 0.0, teacher=None):
        self.samples, self.mixup_alpha, self.teacher = samples, float(mixup_alpha), teacher

    def __call__(self, batch):
        images = torch.stack([b[0] for b in batch])
        labels = torch.tensor([b[1] for b in batch], dtype=torch.int64)
        index = torch.tensor([b[2] for b in batch], dtype=torch.int64)
        views = torch.tensor([b[3] for b in batch], dtype=torch.int64)
        if self.mixup_alpha > 0:
            from ..data.views import mixup

            rng = np.random.default_rng([self.samples.seed, self.samples.epoch, *index[:8].tolist()])
            images = torch.from_numpy(mixup(images.numpy(), rng, self.mixup_alpha))
        teacher = self.teacher(images) if self.teacher is not None else torch.empty(0)
        return images, labels, index, views, teacher


class EpochBatchSampler(Sampler[List[int]]):
    """Batches of one process's share of a seeded per-epoch permutation; can start part-way into an epoch."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 max_batches: int = 0):
        per_rank = n // world_size
        if per_rank < batch_size:
            raise InputError(f"{n} images are too few for batches of {batch_size} on {world_size} process(es)")
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
