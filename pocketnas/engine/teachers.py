"""Distillation teachers: a fixed embedder (pocketnas checkpoint, release backbone, ONNX) with an optional disk
cache of its embeddings, and PocketNet's multi-step teacher that changes checkpoint every epoch."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..atomic import atomic_write_json
from ..data.transforms import fit_size
from ..errors import InputError, MissingFileError
from ..image_size import as_hw, hw_text, input_hw, recorded
from ..models.embedders import Embedder, TorchEmbedder, load_embedder

logger = logging.getLogger(__name__)


class TeacherCache:
    """Teacher embeddings per (image, view) in a float32 memory-mapped file, each entry stamped with the step
    that wrote it. A resumed run forgets entries written after its checkpoint, so it recomputes exactly what the
    uninterrupted run computed; an entry is the teacher's own fp32 output, so caching never changes a result.

    ``key`` (see :func:`cache_key`) holds everything that changes an entry: the teacher's content and input
    convention, the data's identity and the image transform. A cache written under another key is started afresh
    (and the log says which parts differ).

    A cache never answers with something it did not write: its files must have the length the meta records (a
    truncated or grown file starts the cache afresh, named in the log), and every entry carries the CRC-32 of the
    values written; an entry whose values no longer match it (a file cut and zero-filled, bytes altered) is
    recomputed, counted and logged, never used as a target."""

    FORMAT = 2  # entries with CRC-32 (format 1 had none: such a cache is started afresh)

    def __init__(self, folder: str, images: int, dim: int, key: Dict[str, Any], create: bool = True,
                 views: int = 2, shared: bool = False):
        os.makedirs(folder, exist_ok=True)
        self.shared = shared
        self.values_path = os.path.join(folder, "embeddings.f32")
        self.steps_path = os.path.join(folder, "written_step.i64")
        self.sums_path = os.path.join(folder, "entry_crc32.u32")
        meta_path = os.path.join(folder, "cache.json")
        meta = {"images": images, "views": views, "dim": dim, "format": self.FORMAT, **key}
        sizes = {self.values_path: images * views * dim * 4, self.steps_path: images * views * 8,
                 self.sums_path: images * views * 4}
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
            else:
                wrong = [f"{os.path.basename(p)} ({os.path.getsize(p) if os.path.exists(p) else 'missing'} bytes, "
                         f"{n} expected)" for p, n in sizes.items()
                         if not os.path.isfile(p) or os.path.getsize(p) != n]
                if wrong:
                    fresh = True
                    logger.warning("%s: the teacher cache's files do not have their recorded length (%s); starting "
                                   "it afresh", folder, ", ".join(wrong))
        if fresh and create:
            np.memmap(self.values_path, np.float32, "w+", shape=(images, views, dim)).flush()
            steps = np.memmap(self.steps_path, np.int64, "w+", shape=(images, views))
            steps[:] = -1
            steps.flush()
            np.memmap(self.sums_path, np.uint32, "w+", shape=(images, views)).flush()
            atomic_write_json(meta_path, meta)
        self.values = np.memmap(self.values_path, np.float32, "r+", shape=(images, views, dim))
        self.steps = np.memmap(self.steps_path, np.int64, "r+", shape=(images, views))
        self.sums = np.memmap(self.sums_path, np.uint32, "r+", shape=(images, views))
        self.hits = self.misses = self.damaged = 0

    def forget_after(self, step: int) -> None:
        """Forget what was written after ``step`` (a resumed run's checkpoint). A cache shared between runs keeps
        everything: its entries are the teacher's outputs for a key, whichever run wrote them."""
        if self.shared:
            return
        stale = self.steps > step
        if stale.any():
            self.steps[stale] = -1
            self.steps.flush()

    def lookup(self, index: np.ndarray, view: np.ndarray):
        """(written, values) of the entries; an entry whose values fail its CRC-32 counts as not written."""
        written = self.steps[index, view] >= 0
        values = np.array(self.values[index, view], dtype=np.float32)
        if written.any():
            sums = self.sums[index, view]
            for i in np.flatnonzero(written):
                if _crc(values[i]) != int(sums[i]):
                    written[i] = False
                    self.damaged += 1
                    if self.damaged <= 3:
                        logger.warning("%s: the cached teacher embedding of image %d, view %d fails its checksum; "
                                       "recomputing it%s", self.values_path, int(index[i]), int(view[i]),
                                       " (further ones are counted, not logged)" if self.damaged == 3 else "")
        return written, values

    def store(self, index: np.ndarray, view: np.ndarray, values: np.ndarray, step: int) -> None:
        values = np.asarray(values, dtype=np.float32)
        self.values[index, view] = values
        self.sums[index, view] = [_crc(v) for v in values]
        self.steps[index, view] = step


def _crc(row: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(row, dtype=np.float32).tobytes())


class FixedTeacher:
    """A teacher that does not change during training; embeddings of uint8 batches (resized to the teacher's
    input size when the views are another size), cached when asked."""

    def __init__(self, embedder: Embedder, cache: Optional[TeacherCache] = None):
        self.embedder = embedder
        self.cache = cache

    @property
    def dim(self) -> int:
        return int(self.embedder.embedding_size)

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        return self.embedder(fit_size(images, self.embedder.input_size))

    def embed(self, images_u8: torch.Tensor, index: torch.Tensor, view: torch.Tensor, step: int) -> torch.Tensor:
        """Embeddings of the views ``images_u8`` (image ``index``, view number ``view``), cached when asked."""
        if self.cache is None:
            return torch.from_numpy(self(images_u8))
        idx, views = index.numpy(), view.numpy().astype(np.int64)
        have, values = self.cache.lookup(idx, views)
        out = np.array(values, dtype=np.float32)
        if not have.all():
            miss = np.flatnonzero(~have)
            fresh = self(images_u8[torch.from_numpy(miss)])
            out[miss] = fresh
            self.cache.store(idx[miss], views[miss], fresh, step)
        self.cache.hits += int(have.sum())
        self.cache.misses += int((~have).sum())
        return torch.from_numpy(out)


class LiveTeacher:
    """A fixed teacher for every view, built in whichever process first calls it (a DataLoader worker builds its
    own ONNX Runtime session or network: neither survives a fork safely), so the teacher runs ahead of the
    student. Calling it: N x 3 x S x S uint8 views -> float32 N x D tensor."""

    def __init__(self, spec: str, arch: Optional[str] = None, input_norm: Optional[str] = None,
                 threads: Optional[int] = None):
        self.spec, self.arch, self.input_norm, self.threads = spec, arch, input_norm, threads
        self._teacher: Optional[FixedTeacher] = None
        self._pid = -1

    def __getstate__(self):
        return {**self.__dict__, "_teacher": None, "_pid": -1}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self._teacher is None or self._pid != os.getpid():
            if self.threads:
                torch.set_num_threads(self.threads)
            self._teacher = FixedTeacher(build_fixed_teacher(self.spec, self.arch, self.input_norm, "cpu",
                                                             self.threads))
            self._pid = os.getpid()
        with torch.inference_mode():
            return torch.from_numpy(self._teacher(images))


def teacher_fingerprint(embedder: Embedder) -> str:
    """The teacher's content: the sha256 of an ONNX file, or of a PyTorch teacher's weights (any file name, any
    time stamp: only the numbers count)."""
    from ..models.checkpoint import file_digest, weights_sha256

    if isinstance(embedder, TorchEmbedder):
        return f"{type(embedder.model).__name__}:{weights_sha256(embedder.model.state_dict())}"
    path = getattr(embedder, "path", None)
    if path and os.path.isfile(path):
        return f"file:{file_digest(path)}"
    raise InputError(f"teacher {embedder.name}: cannot fingerprint it for the teacher cache; set teacher_cache=false")


def cache_key(embedder: Embedder, faces, transform: Dict[str, Any]) -> Dict[str, Any]:
    """Everything that changes a cached teacher embedding: the teacher (content, normalisation, input size,
    embedding size), the data (its fingerprint: pack layout and sampled bytes, or folder listing) and the image
    transform (``transform``: e.g. the decoded size and the flip rule)."""
    return {"teacher": teacher_fingerprint(embedder), "teacher_input_norm": embedder.input_norm,
            "teacher_input_size": recorded(input_hw(embedder)), "teacher_dim": int(embedder.embedding_size),
            "data": faces.fingerprint(), "transform": transform}


def shared_cache_folder(root: str, key: Dict[str, Any]) -> str:
    """The subfolder of a shared teacher cache ``root`` for ``key``: runs with one key share it, runs with another
    teacher, data or transform get their own (so they never overwrite each other's entries)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return os.path.join(root, digest)


def epoch_checkpoint(run_dir: str, epoch: int) -> str:
    """Where a run saved with ``--save-every-epoch`` keeps the backbone of epoch ``epoch`` (counting from 1)."""
    return os.path.join(run_dir, "epochs", f"epoch_{epoch:03d}.pt")


class MultiStepTeacher:
    """In student epoch e (from 1) the teacher is the teacher run's checkpoint of epoch e (Boutros et al. 2022,
    multi-step KD). Every checkpoint is checked before training starts."""

    def __init__(self, run_dir: str, epochs: int, device: str = "cpu"):
        if not os.path.isdir(run_dir):
            raise MissingFileError(f"{run_dir}: no such teacher run folder (train it with --save-every-epoch)")
        self.run_dir, self.device = run_dir, device
        self.paths = [epoch_checkpoint(run_dir, e) for e in range(1, epochs + 1)]
        missing = [p for p in self.paths if not os.path.isfile(p)]
        if missing:
            raise MissingFileError(f"multi-step distillation over {epochs} epochs needs the teacher's checkpoint "
                                    f"of every epoch; missing {len(missing)}: {', '.join(missing[:5])}"
                                    f"{' ...' if len(missing) > 5 else ''}")
        from ..models.checkpoint import read_checkpoint

        heads = {p: read_checkpoint(p) for p in self.paths}  # each read whole: a truncated one is found now
        shapes = {p: (int(h["embedding_size"]), as_hw(h["input_size"])) for p, h in heads.items()}
        if len(set(shapes.values())) > 1:
            raise InputError("the teacher run's checkpoints disagree on the embedding or input size: "
                             + ", ".join(f"{p}: {d}-d, {hw_text(s)} px" for p, (d, s) in shapes.items()))
        self.dim, self.input_size = shapes[self.paths[0]]
        self.current: Optional[FixedTeacher] = None
        self.epoch = -1

    def set_epoch(self, epoch: int) -> None:
        """``epoch`` counts from 0 here (the trainer's loop index): teacher file epoch + 1."""
        if epoch != self.epoch:
            from ..models import load

            path = self.paths[epoch]
            self.current = FixedTeacher(TorchEmbedder(load(path), name=os.path.basename(path), device=self.device))
            self.epoch = epoch
            logger.info("multi-step KD: epoch %d distils from %s", epoch + 1, path)

    def embed(self, images_u8, index, view, step):
        assert self.current is not None, "set_epoch first"
        return self.current.embed(images_u8, index, view, step)


def build_fixed_teacher(spec: str, arch: Optional[str] = None, input_norm: Optional[str] = None,
                        device: str = "cpu", threads: Optional[int] = None) -> Embedder:
    """A fixed teacher, probed once on two images before training: its output must be one finite embedding per
    image (N x D), of the size it declares; a teacher that answers otherwise (a classifier's logits map, a wrong
    ONNX output) is refused here, naming the file and the shape, not at the first step."""
    embedder = load_embedder(spec, arch=arch, input_norm=input_norm, device=device, threads=threads)
    h, w = input_hw(embedder)
    probe = np.random.default_rng(0).integers(0, 256, (2, 3, h, w), dtype=np.uint8)
    try:
        out = np.asarray(embedder(probe))
    except Exception as e:  # an ONNX graph that rejects its own declared input, and the like
        raise InputError(f"teacher {spec}: fails on two {w} x {h} images of its declared input size "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    declared = embedder.embedding_size
    if out.ndim != 2 or out.shape[0] != 2 or (declared is not None and out.shape[1] != int(declared)):
        raise InputError(f"teacher {spec}: answers two images with an array of shape {tuple(out.shape)}; a "
                         f"teacher must give one embedding per image (2 x {declared or 'D'})")
    if not np.isfinite(out).all():
        raise InputError(f"teacher {spec}: gives non-finite embeddings (NaN or inf) for ordinary images")
    embedder.embedding_size = int(out.shape[1])
    return embedder


def hint_layers_of(pairs: Sequence[Sequence[str]]) -> List[List[str]]:
    out = []
    for p in pairs:
        if len(p) != 2:
            raise InputError(f"hint_layers entries are [student_module, teacher_module] pairs, got {p!r}")
        out.append([str(p[0]), str(p[1])])
    return out
