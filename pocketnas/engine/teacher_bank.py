"""A teacher bank: a fixed teacher's embeddings of K consistent views of every training image, computed once before
training (``pocketnas teacher-bank``, or the first phase of ``pocketnas train`` given ``teacher_bank``), so that a
function-matching step (Beyer et al., "Knowledge distillation: A good teacher is patient and consistent", CVPR 2022)
costs what a step without distillation costs: the student reads its targets instead of waiting for the teacher.

On disk, a folder:

* ``bank.json``: the format, the key (everything that defines an entry: the teacher's content hash, input
  normalisation, input and embedding size; the data's fingerprint; the view recipe, view size and view seed), the
  number of images, views and dimensions, and for every finished view its file, byte count and sha256;
* ``view_000.f16`` ... : one file per view, N x D float16, row i the teacher's embedding of view v of image i;
* while building, ``view_VVV.f16.partial`` and ``progress.json`` (the finished blocks of images), so an interrupted
  build resumes where it stopped; blocks are computed by ``workers`` processes in parallel.

Reading checks the key against the run's (any difference is refused, naming the parts that differ), every view
file's length and sha256 against ``bank.json`` (a truncated or altered file is refused, never read as zeros) and
that every value is finite. Views depend on (view seed, image, view number) only, so runs with other seeds (another
order, other picks among the K views) and other students share one bank.
"""
from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..atomic import atomic_write_json
from ..errors import InputError
from ..image_size import HW, Size, as_hw, input_hw, recorded

logger = logging.getLogger(__name__)

BANK_FORMAT = "pocketnas.teacher_bank"
BANK_VERSION = 1
BANK_JSON = "bank.json"
PROGRESS_JSON = "progress.json"
DTYPE = np.float16


class TeacherBankError(InputError):
    """A teacher bank that is missing, damaged, or made for another teacher, data or view recipe."""


def view_file(v: int) -> str:
    return f"view_{v:03d}.f16"


def default_view_hw(teacher: HW) -> HW:
    """Views cut for a bank built on its own: at least 112 px for a square teacher (a 112-px student's views), at
    the teacher's own size for a non-square one (a periocular teacher)."""
    if teacher[0] == teacher[1]:
        side = max(112, teacher[0])
        return side, side
    return teacher


def bank_key(teacher_fingerprint: str, input_norm: str, input_size: Size, dim: int, data_fingerprint: str,
             view_size: Size, augment: Any, view_seed: int) -> Dict[str, Any]:
    """Everything that defines a bank entry; two banks with equal keys hold the same numbers (up to the float16
    rounding of one deterministic teacher)."""
    return {"teacher": teacher_fingerprint, "teacher_input_norm": input_norm,
            "teacher_input_size": recorded(input_size), "teacher_dim": int(dim), "data": data_fingerprint,
            "view_size": recorded(view_size), "view_recipe": repr(augment), "view_seed": int(view_seed)}


def _differences(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def read_manifest(folder: str) -> Dict[str, Any]:
    """``bank.json`` of ``folder``, its types checked (it is an input: a hand-edited or foreign file is refused
    with a message)."""
    path = os.path.join(folder, BANK_JSON)
    if not os.path.isfile(path):
        raise TeacherBankError(f"{folder}: no teacher bank here ({BANK_JSON} missing); build one with "
                               f"`pocketnas teacher-bank --teacher T --data D --out {folder}`")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise TeacherBankError(f"{path}: not a readable teacher bank manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BANK_FORMAT:
        raise TeacherBankError(f"{path}: not a pocketnas teacher bank (format {BANK_FORMAT!r} expected)")
    if manifest.get("format_version") != BANK_VERSION:
        raise TeacherBankError(f"{path}: teacher bank format version {manifest.get('format_version')!r}; this "
                               f"pocketnas reads version {BANK_VERSION}")
    for name in ("images", "views", "dim"):
        if not isinstance(manifest.get(name), int) or manifest[name] < 1:
            raise TeacherBankError(f"{path}: {name} must be a positive integer, got {manifest.get(name)!r}")
    if not isinstance(manifest.get("key"), dict) or not isinstance(manifest.get("finished"), dict):
        raise TeacherBankError(f"{path}: key and finished must be objects")
    return manifest


def bank_is_complete(folder: str, views: int) -> bool:
    """Whether ``folder`` holds a bank whose first ``views`` views are finished (its key is checked on reading)."""
    if not os.path.isfile(os.path.join(folder, BANK_JSON)):
        return False
    finished = read_manifest(folder)["finished"]
    return all(view_file(v) in finished for v in range(views))


class TeacherBank:
    """The finished views of a bank, checked and held in memory as float16 (N x K x D; celeba7k's 36,068 images x
    8 views x 128 dims are 74 MB). ``key``: the run's, refused when it differs; ``views``: how many views the run
    needs (the first ``views`` of the bank)."""

    def __init__(self, folder: str, key: Optional[Dict[str, Any]] = None, views: Optional[int] = None,
                 images: Optional[int] = None):
        manifest = read_manifest(folder)
        self.folder = folder
        self.key = manifest["key"]
        if key is not None and self.key != key:
            what = _differences(self.key, key)
            raise TeacherBankError(f"{folder}: this teacher bank was built for another "
                                   f"{', '.join(what)} than this run's; build a bank for this run "
                                   f"(`pocketnas teacher-bank ... --out NEW_FOLDER`) or use the settings it was "
                                   f"built with ({', '.join(f'{k}={self.key.get(k)!r}' for k in what)})")
        self.images, self.dim = manifest["images"], manifest["dim"]
        if images is not None and images != self.images:
            raise TeacherBankError(f"{folder}: the bank holds {self.images} images, the data {images}")
        self.views = int(views or manifest["views"])
        missing = [v for v in range(self.views) if view_file(v) not in manifest["finished"]]
        if missing:
            raise TeacherBankError(f"{folder}: views {', '.join(map(str, missing))} of the {self.views} needed are "
                                   f"not built (the bank holds {len(manifest['finished'])}); finish it with "
                                   f"`pocketnas teacher-bank` (it resumes) or use view_bank="
                                   f"{len(manifest['finished'])}")
        self.values = np.empty((self.images, self.views, self.dim), DTYPE)
        for v in range(self.views):
            self.values[:, v] = _read_view(folder, view_file(v), manifest["finished"][view_file(v)],
                                           self.images, self.dim)
        self.hits = self.misses = 0

    def embed(self, images_u8, index: torch.Tensor, view: torch.Tensor, step: int) -> torch.Tensor:
        """The teacher's embeddings of views ``view`` of images ``index`` (float32 N x D); the interface of
        :meth:`~.teachers.FixedTeacher.embed`, without a teacher."""
        v = view.numpy().astype(np.int64)
        if (v < 0).any() or (v >= self.views).any():
            raise TeacherBankError(f"{self.folder}: view numbers {sorted(set(v.tolist()))} outside the bank's "
                                   f"0..{self.views - 1}")
        self.hits += len(v)
        return torch.from_numpy(self.values[index.numpy(), v].astype(np.float32))


def _read_view(folder: str, name: str, record: Any, images: int, dim: int) -> np.ndarray:
    path = os.path.join(folder, name)
    expected = images * dim * np.dtype(DTYPE).itemsize
    if not isinstance(record, dict) or record.get("bytes") != expected or not isinstance(record.get("sha256"), str):
        raise TeacherBankError(f"{os.path.join(folder, BANK_JSON)}: the record of {name} is damaged: {record!r}")
    if not os.path.isfile(path):
        raise TeacherBankError(f"{path}: missing (the bank lists it as finished)")
    size = os.path.getsize(path)
    if size != expected:
        raise TeacherBankError(f"{path}: {size:,} bytes where {images} images x {dim} float16 values are "
                               f"{expected:,}: the file is truncated or not this bank's; rebuild the bank")
    with open(path, "rb") as f:
        raw = f.read()
    import hashlib

    if hashlib.sha256(raw).hexdigest() != record["sha256"]:
        raise TeacherBankError(f"{path}: its sha256 differs from the one recorded when it was written: the file "
                               f"was altered or damaged; rebuild the bank")
    values = np.frombuffer(raw, DTYPE).reshape(images, dim)
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values).all(1))[0])
        raise TeacherBankError(f"{path}: non-finite teacher embedding for image {bad}: the teacher diverged or "
                               f"overflowed float16")
    return values


# ---------------------------------------------------------------------------------------------------- building
class _BlockWorker:
    """What one process needs to embed blocks: the data opened at the view size, the teacher, the view recipe.
    Built once per process (``_init_worker``), since neither an ONNX Runtime session nor a file handle survives a
    fork safely."""

    def __init__(self, data: str, teacher: str, teacher_arch: Optional[str], input_norm: Optional[str],
                 view_size: Size, view_seed: int, threads: int, labelled: bool, skip_bad: bool):
        from ..data.views import FaceViewAugment
        from ..data.face_sets import open_face_dataset
        from .teachers import FixedTeacher, build_fixed_teacher

        self.faces = open_face_dataset(data, view_size, labelled=labelled, skip_bad=skip_bad)
        self.teacher = FixedTeacher(build_fixed_teacher(teacher, teacher_arch, input_norm, "cpu", threads))
        self.augment, self.view_seed = FaceViewAugment(), view_seed

    def __call__(self, view: int, start: int, stop: int) -> np.ndarray:
        from .sampling import bank_view

        images = np.stack([bank_view(self.augment, self.faces.sample_uint8(i)[0], self.view_seed, i, view)
                           for i in range(start, stop)])
        with torch.inference_mode():
            out = self.teacher(torch.from_numpy(images))
        if not np.isfinite(out).all():
            bad = start + int(np.flatnonzero(~np.isfinite(out).all(1))[0])
            raise TeacherBankError(f"the teacher's embedding of view {view} of image {bad} is not finite: the "
                                   f"teacher is broken for this input; nothing of it was written")
        emb = out.astype(DTYPE)
        if not np.isfinite(emb).all():
            raise TeacherBankError(f"the teacher's embeddings of view {view}, images {start}-{stop - 1}, overflow "
                                   f"float16 (largest {float(np.abs(out).max()):.3g})")
        return emb


_WORKER: Optional[_BlockWorker] = None


def _init_worker(*args) -> None:
    global _WORKER
    torch.set_num_threads(args[6])  # this worker's share (in-process building leaves the caller's setting alone)
    _WORKER = _BlockWorker(*args)


def _run_block(job: Tuple[int, int, int]) -> Tuple[int, int, int, np.ndarray]:
    view, start, stop = job
    return view, start, stop, _WORKER(view, start, stop)


def build_teacher_bank(out: str, data: str, teacher: str, views: int = 8, view_seed: int = 0,
                       teacher_arch: Optional[str] = None, teacher_input_norm: Optional[str] = None,
                       view_size: Size = 0, workers: int = 2, threads: int = 2, block: int = 512,
                       overwrite: bool = False, labelled: bool = True, skip_bad: bool = False,
                       progress: bool = True) -> Dict[str, Any]:
    """Build (or finish) the bank in ``out``: ``views`` views of every image of ``data`` embedded by ``teacher``.
    A folder holding a bank of another key is refused unless ``overwrite``; one of the same key is resumed (its
    finished views and blocks kept) or grown to more views. ``workers`` processes (0: this one) share ``threads``
    threads. ``labelled=False`` lists the data as a run without labels does (a folder of images at any depth).
    Returns the manifest."""
    from ..data.views import FaceViewAugment
    from ..data.face_sets import open_face_dataset
    from .teachers import build_fixed_teacher, teacher_fingerprint

    for name, value in (("views", views), ("threads", threads), ("block", block)):
        if int(value) < 1:
            raise InputError(f"teacher bank: {name} must be >= 1, got {value}")
    if workers < 0 or view_seed < 0:
        raise InputError(f"teacher bank: workers and view_seed must be >= 0, got {workers}, {view_seed}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"{out}: exists and is not a folder")
    embedder = build_fixed_teacher(teacher, teacher_arch, teacher_input_norm, "cpu", threads)
    size = as_hw(view_size) if view_size else default_view_hw(input_hw(embedder))
    faces = open_face_dataset(data, size, labelled=labelled, skip_bad=skip_bad)
    n, dim = len(faces), int(embedder.embedding_size)
    key = bank_key(teacher_fingerprint(embedder), embedder.input_norm, embedder.input_size, dim,
                   faces.fingerprint(), size, FaceViewAugment(), view_seed)
    del embedder
    manifest = _open_or_start(out, key, n, views, dim, overwrite)
    todo = [(v, start, min(n, start + block)) for v in range(views) if view_file(v) not in manifest["finished"]
            for start in range(0, n, block)]
    done = _read_progress(out, manifest)
    todo = [job for job in todo if f"{job[0]}:{job[1]}:{job[2]}" not in done]
    if todo:
        logger.info("teacher bank %s: %d images x %d views (%d finished), %d blocks of up to %d images to embed "
                    "in %d process(es)", out, n, views, len(manifest["finished"]), len(todo), block, max(1, workers))
    args = (data, teacher, teacher_arch, teacher_input_norm, size, view_seed,
            max(1, threads // max(1, workers)), labelled, skip_bad)
    _embed_blocks(out, manifest, key, todo, done, args, workers, n, dim, block, progress)
    for v in range(views):  # views whose blocks were all done before an interruption at the rename
        if view_file(v) not in manifest["finished"] and os.path.isfile(os.path.join(out, view_file(v) + ".partial")):
            _finish_view(out, manifest, v, n, dim)
    if os.path.isfile(os.path.join(out, PROGRESS_JSON)):
        os.unlink(os.path.join(out, PROGRESS_JSON))
    return manifest


def _embed_blocks(out: str, manifest: Dict[str, Any], key: Dict[str, Any], todo, done, args, workers: int, n: int,
                  dim: int, block: int, progress: bool) -> None:
    """Embed the blocks still to do (in ``workers`` processes), each written into its view's ``.partial`` file and
    recorded in the progress file as it lands; a view whose blocks are all in is finished (checked and renamed)."""
    from tqdm import tqdm

    partial = {}
    bar = tqdm(total=sum(stop - start for _, start, stop in todo), desc="teacher bank", unit="view",
               disable=not progress or not todo, dynamic_ncols=True)
    try:
        for v, start, stop, emb in _blocks(todo, args, workers):
            if v not in partial:
                path = os.path.join(out, view_file(v) + ".partial")
                partial[v] = np.memmap(path, DTYPE, "r+" if os.path.isfile(path) else "w+", shape=(n, dim))
            partial[v][start:stop] = emb
            partial[v].flush()
            done.add(f"{v}:{start}:{stop}")
            atomic_write_json(os.path.join(out, PROGRESS_JSON), {"key": key, "blocks": sorted(done)})
            bar.update(stop - start)
            if all(f"{v}:{s}:{min(n, s + block)}" in done for s in range(0, n, block)):
                del partial[v]
                _finish_view(out, manifest, v, n, dim)
    finally:
        bar.close()


def _open_or_start(out: str, key: Dict[str, Any], n: int, views: int, dim: int, overwrite: bool) -> Dict[str, Any]:
    if os.path.isfile(os.path.join(out, BANK_JSON)):
        manifest = read_manifest(out)
        what = _differences(manifest["key"], key)
        if (what or manifest["images"] != n) and not overwrite:
            raise TeacherBankError(f"{out} holds a teacher bank for another {', '.join(what) or 'image count'}; "
                                   f"give another --out, or --overwrite to replace it")
        if not what and manifest["images"] == n:
            if views > manifest["views"]:
                logger.info("%s: growing the bank from %d to %d views", out, manifest["views"], views)
                manifest["views"] = views
                atomic_write_json(os.path.join(out, BANK_JSON), manifest)
            return manifest
        _remove_bank_files(out)
    elif os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise TeacherBankError(f"{out}: the folder holds other files; a teacher bank needs a new or empty folder "
                               f"(or --overwrite)")
    os.makedirs(out, exist_ok=True)
    manifest = {"format": BANK_FORMAT, "format_version": BANK_VERSION, "key": key, "images": n, "views": views,
                "dim": dim, "dtype": "float16", "finished": {}}
    atomic_write_json(os.path.join(out, BANK_JSON), manifest)
    return manifest


def _remove_bank_files(out: str) -> None:
    """--overwrite: what a bank writes, and nothing else (never following a link out of the folder)."""
    for name in os.listdir(out):
        if name in (BANK_JSON, PROGRESS_JSON) or (name.startswith("view_") and ".f16" in name) \
                or name.startswith(".tmp-"):
            path = os.path.join(out, name)
            if os.path.isfile(path) or os.path.islink(path):
                os.unlink(path)


def _read_progress(out: str, manifest: Dict[str, Any]) -> set:
    path = os.path.join(out, PROGRESS_JSON)
    try:
        with open(path, encoding="utf-8") as f:
            progress = json.load(f)
    except (OSError, ValueError):
        return set()
    if not isinstance(progress, dict) or progress.get("key") != manifest["key"]:
        return set()
    done = set()
    for b in progress.get("blocks", []):  # "view:start:stop"; anything else (a damaged file) is recomputed
        parts = b.split(":") if isinstance(b, str) else []
        if len(parts) == 3 and all(p.isdigit() for p in parts) \
                and os.path.isfile(os.path.join(out, view_file(int(parts[0])) + ".partial")):
            done.add(b)
    return done


def _blocks(todo: Sequence[Tuple[int, int, int]], args: tuple, workers: int
            ) -> Iterator[Tuple[int, int, int, np.ndarray]]:
    if not todo:
        return
    if workers <= 1:
        worker = _BlockWorker(*args)
        for v, start, stop in todo:
            yield v, start, stop, worker(v, start, stop)
        return
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=args) as pool:
        yield from pool.map(_run_block, todo)


def _finish_view(out: str, manifest: Dict[str, Any], v: int, n: int, dim: int) -> None:
    """The view's file is whole: its sha256 recorded, then renamed into place (a crash between the two leaves a
    ``.partial`` whose blocks are all done, finished on the next run)."""
    from ..models.checkpoint import file_digest

    partial = os.path.join(out, view_file(v) + ".partial")
    values = np.fromfile(partial, DTYPE)
    if values.size != n * dim or not np.isfinite(values).all():
        raise TeacherBankError(f"{partial}: incomplete or non-finite after all its blocks were written; rebuild "
                               f"the bank (--overwrite)")
    record = {"bytes": int(values.nbytes), "sha256": file_digest(partial)}
    os.replace(partial, os.path.join(out, view_file(v)))
    manifest["finished"][view_file(v)] = record
    atomic_write_json(os.path.join(out, BANK_JSON), manifest)
    logger.info("teacher bank %s: view %d finished", out, v)
