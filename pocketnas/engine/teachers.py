"""Distillation teachers: a fixed embedder (pocketnas checkpoint, release backbone, ONNX) with an optional disk
cache of its embeddings, and PocketNet's multi-step teacher that changes checkpoint every epoch."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..models.embedders import Embedder, TorchEmbedder, load_embedder

logger = logging.getLogger(__name__)


class TeacherCache:
    """Teacher embeddings per (image, flipped) in a float32 memory-mapped file, each entry stamped with the step
    that wrote it. A resumed run forgets entries written after its checkpoint, so it recomputes exactly what the
    uninterrupted run computed; an entry is the teacher's own fp32 output, so caching never changes a result.

    ``key`` (see :func:`cache_key`) holds everything that changes an entry: the teacher's content and input
    convention, the data's identity and the image transform. A cache written under another key is started afresh
    (and the log says which parts differ)."""

    def __init__(self, folder: str, images: int, dim: int, key: Dict[str, Any], create: bool = True):
        os.makedirs(folder, exist_ok=True)
        self.values_path = os.path.join(folder, "embeddings.f32")
        self.steps_path = os.path.join(folder, "written_step.i64")
        meta_path = os.path.join(folder, "cache.json")
        meta = {"images": images, "dim": dim, **key}
        fresh = True
        if os.path.isfile(meta_path):
            try:
                with open(meta_path, encoding="utf-8") as f:
                    old = json.load(f)
            except ValueError:
                old = {}
            fresh = old != meta
            if fresh:
                what = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
                logger.warning("%s: the teacher cache was written for another %s; starting it afresh", folder,
                               ", ".join(what))
        if fresh and create:
            np.memmap(self.values_path, np.float32, "w+", shape=(images, 2, dim)).flush()
            steps = np.memmap(self.steps_path, np.int64, "w+", shape=(images, 2))
            steps[:] = -1
            steps.flush()
            with open(meta_path, "w", encoding="utf-8") as f:
                json.dump(meta, f)
        self.values = np.memmap(self.values_path, np.float32, "r+", shape=(images, 2, dim))
        self.steps = np.memmap(self.steps_path, np.int64, "r+", shape=(images, 2))
        self.hits = self.misses = 0

    def forget_after(self, step: int) -> None:
        stale = self.steps > step
        if stale.any():
            self.steps[stale] = -1
            self.steps.flush()

    def lookup(self, index: np.ndarray, flipped: np.ndarray):
        written = self.steps[index, flipped] >= 0
        return written, self.values[index, flipped]

    def store(self, index: np.ndarray, flipped: np.ndarray, values: np.ndarray, step: int) -> None:
        self.values[index, flipped] = values
        self.steps[index, flipped] = step


class FixedTeacher:
    """A teacher that does not change during training; embeddings of uint8 batches, cached when asked."""

    def __init__(self, embedder: Embedder, cache: Optional[TeacherCache] = None):
        self.embedder = embedder
        self.cache = cache

    @property
    def dim(self) -> int:
        return int(self.embedder.embedding_size)

    def embed(self, images_u8: torch.Tensor, index: torch.Tensor, flipped: torch.Tensor, step: int) -> torch.Tensor:
        if self.cache is None:
            return torch.from_numpy(self.embedder(images_u8))
        idx, flp = index.numpy(), flipped.numpy().astype(np.int64)
        have, values = self.cache.lookup(idx, flp)
        out = np.array(values, dtype=np.float32)
        if not have.all():
            miss = np.flatnonzero(~have)
            fresh = self.embedder(images_u8[torch.from_numpy(miss)])
            out[miss] = fresh
            self.cache.store(idx[miss], flp[miss], fresh, step)
        self.cache.hits += int(have.sum())
        self.cache.misses += int((~have).sum())
        return torch.from_numpy(out)


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def teacher_fingerprint(embedder: Embedder) -> str:
    """The teacher's content: the sha256 of an ONNX file, or of a PyTorch teacher's weights (any file name, any
    time stamp: only the numbers count)."""
    if isinstance(embedder, TorchEmbedder):
        from ..models.checkpoint import weights_sha256

        return f"{type(embedder.model).__name__}:{weights_sha256(embedder.model.state_dict())}"
    path = getattr(embedder, "path", None)
    if path and os.path.isfile(path):
        return f"file:{file_sha256(path)}"
    raise ValueError(f"teacher {embedder.name}: cannot fingerprint it for the teacher cache; set teacher_cache=false")


def cache_key(embedder: Embedder, faces, transform: Dict[str, Any]) -> Dict[str, Any]:
    """Everything that changes a cached teacher embedding: the teacher (content, normalisation, input size,
    embedding size), the data (its fingerprint: pack layout and sampled bytes, or folder listing) and the image
    transform (``transform``: e.g. the decoded size and the flip rule)."""
    return {"teacher": teacher_fingerprint(embedder), "teacher_input_norm": embedder.input_norm,
            "teacher_input_size": int(embedder.input_size), "teacher_dim": int(embedder.embedding_size),
            "data": faces.fingerprint(), "transform": transform}


def epoch_checkpoint(run_dir: str, epoch: int) -> str:
    """Where a run saved with ``--save-every-epoch`` keeps the backbone of epoch ``epoch`` (counting from 1)."""
    return os.path.join(run_dir, "epochs", f"epoch_{epoch:03d}.pt")


class MultiStepTeacher:
    """In student epoch e (from 1) the teacher is the teacher run's checkpoint of epoch e (Boutros et al. 2022,
    multi-step KD). Every checkpoint is checked before training starts."""

    def __init__(self, run_dir: str, epochs: int, device: str = "cpu"):
        if not os.path.isdir(run_dir):
            raise FileNotFoundError(f"{run_dir}: no such teacher run folder (train it with --save-every-epoch)")
        self.run_dir, self.device = run_dir, device
        self.paths = [epoch_checkpoint(run_dir, e) for e in range(1, epochs + 1)]
        missing = [p for p in self.paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"multi-step distillation over {epochs} epochs needs the teacher's checkpoint "
                                    f"of every epoch; missing {len(missing)}: {', '.join(missing[:5])}"
                                    f"{' ...' if len(missing) > 5 else ''}")
        from ..models.checkpoint import read_checkpoint

        dims = {p: int(read_checkpoint(p)["embedding_size"]) for p in (self.paths[0], self.paths[-1])}
        if len(set(dims.values())) > 1:
            raise ValueError("the teacher run's checkpoints disagree on the embedding size: "
                             + ", ".join(f"{p}: {d}-d" for p, d in dims.items()))
        self.dim = dims[self.paths[0]]
        self.current: Optional[FixedTeacher] = None
        self.epoch = -1

    def set_epoch(self, epoch: int) -> None:
        """``epoch`` counts from 0 here (the trainer's loop index): teacher file epoch + 1."""
        if epoch != self.epoch:
            from ..models.checkpoint import load

            path = self.paths[epoch]
            self.current = FixedTeacher(TorchEmbedder(load(path), name=os.path.basename(path), device=self.device))
            self.epoch = epoch
            logger.info("multi-step KD: epoch %d distils from %s", epoch + 1, path)

    def embed(self, images_u8, index, flipped, step):
        assert self.current is not None, "set_epoch first"
        return self.current.embed(images_u8, index, flipped, step)


def build_fixed_teacher(spec: str, arch: Optional[str] = None, input_norm: Optional[str] = None,
                        device: str = "cpu", threads: Optional[int] = None) -> Embedder:
    embedder = load_embedder(spec, arch=arch, input_norm=input_norm, device=device, threads=threads)
    if embedder.embedding_size is None:
        probe = np.zeros((1, 3, embedder.input_size, embedder.input_size), np.uint8)
        embedder.embedding_size = int(embedder(probe).shape[1])
    return embedder


def hint_layers_of(pairs: Sequence[Sequence[str]]) -> List[List[str]]:
    out = []
    for p in pairs:
        if len(p) != 2:
            raise ValueError(f"hint_layers entries are [student_module, teacher_module] pairs, got {p!r}")
        out.append([str(p[0]), str(p[1])])
    return out
