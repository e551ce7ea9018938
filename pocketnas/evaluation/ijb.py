"""IJB-B / IJB-C 1:1 template verification, as insightface's ``eval_ijbc.py`` (Whitelam et al., IARPA Janus
Benchmark-B, CVPRW 2017; Maze et al., IARPA Janus Benchmark-C, ICB 2018).

Files under ``ROOT`` (insightface's layout): ``meta/{t}_face_tid_mid.txt`` (image, template id, media id),
``meta/{t}_template_pair_label.txt`` (template 1, template 2, label), ``meta/{t}_name_5pts_score.txt`` (image,
ten landmark coordinates, detector score) and the images in ``loose_crop/``, where ``t`` is ``ijbb`` or ``ijbc``.

Pipeline (insightface's TestMode N1D1F1): align each image with its five points, embed it and its mirror (sum),
keep the embedding norm, weight by the detector score; within a template, average the images of each media, sum
the media; L2-normalise each template; score a pair by the cosine of its templates; ROC and TAR at FAR 1e-6..1e-1.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from ..data.align import align_face
from ..errors import InputError, MissingFileError
from ..metrics.biometric import summarize_scores

logger = logging.getLogger(__name__)


@dataclass
class IJBProtocol:
    images: np.ndarray       # image file names, in the order of the landmark file
    landmarks: np.ndarray    # N x 5 x 2
    scores: np.ndarray       # detector (faceness) scores, N
    templates: np.ndarray    # template id per image, N
    medias: np.ndarray       # media id per image, N
    pairs: np.ndarray        # P x 2 template ids
    labels: np.ndarray       # P, 1 genuine / 0 impostor
    image_dir: str


def _read_table(path: str, columns: int) -> np.ndarray:
    if not os.path.isfile(path):
        raise MissingFileError(f"{path}: IJB protocol file missing")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != columns:
                raise InputError(f"{path}: line {n} has {len(parts)} fields, expected {columns}")
            rows.append(parts)
    return np.array(rows, dtype=object).reshape(-1, columns)


def read_protocol(root: str, target: str = "IJBC") -> IJBProtocol:
    t = target.lower()
    if t not in ("ijbb", "ijbc"):
        raise InputError(f"target must be IJBB or IJBC, not {target!r}")
    meta = os.path.join(root, "meta")
    tid = _read_table(os.path.join(meta, f"{t}_face_tid_mid.txt"), 3)
    pairs = _read_table(os.path.join(meta, f"{t}_template_pair_label.txt"), 3)
    pts = _read_table(os.path.join(meta, f"{t}_name_5pts_score.txt"), 12)
    names = pts[:, 0].astype(str)
    if not np.array_equal(names, tid[:, 0].astype(str)):
        raise InputError(f"{meta}: the landmark file and face_tid_mid file list different images (or orders)")
    try:
        return IJBProtocol(images=names, landmarks=pts[:, 1:11].astype(np.float64).reshape(-1, 5, 2),
                           scores=pts[:, 11].astype(np.float64), templates=tid[:, 1].astype(np.int64),
                           medias=tid[:, 2].astype(np.int64), pairs=pairs[:, :2].astype(np.int64),
                           labels=pairs[:, 2].astype(np.int64), image_dir=os.path.join(root, "loose_crop"))
    except ValueError as e:
        raise InputError(f"{meta}: non-numeric protocol field ({e})") from None


def load_aligned(protocol: IJBProtocol, size: int = 112, workers: int = 2, progress: bool = True) -> np.ndarray:
    """Every image of the protocol aligned to size x size, N x 3 x S x S uint8."""
    from PIL import Image
    from tqdm import tqdm

    out = np.empty((len(protocol.images), 3, size, size), dtype=np.uint8)

    def work(i: int) -> None:
        path = os.path.join(protocol.image_dir, protocol.images[i])
        try:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"))
        except (FileNotFoundError, OSError) as e:
            raise InputError(f"{path}: cannot read image ({e})") from None
        out[i] = align_face(rgb, protocol.landmarks[i], size)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(tqdm(pool.map(work, range(len(out))), total=len(out), desc="aligning", unit="img",
                  disable=not progress or len(out) < 1000))
    return out


def template_features(image_feats: np.ndarray, templates: np.ndarray, medias: np.ndarray
                      ) -> Tuple[np.ndarray, np.ndarray]:
    """Media-averaged, template-summed, L2-normalised features and the sorted unique template ids."""
    unique = np.unique(templates)
    feats = np.zeros((len(unique), image_feats.shape[1]), dtype=np.float64)
    for k, t in enumerate(unique):
        idx = np.flatnonzero(templates == t)
        for m in np.unique(medias[idx]):
            sel = idx[medias[idx] == m]
            feats[k] += image_feats[sel].mean(axis=0)
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    return feats / np.maximum(norms, 1e-12), unique


def pair_scores(template_feats: np.ndarray, unique: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    pos = {int(t): i for i, t in enumerate(unique)}
    try:
        a = np.array([pos[int(t)] for t in pairs[:, 0]])
        b = np.array([pos[int(t)] for t in pairs[:, 1]])
    except KeyError as e:
        raise InputError(f"pair file names template {e.args[0]}, which has no image") from None
    return np.sum(template_feats[a] * template_feats[b], axis=1)


def evaluate_ijb(embed_fn, root: str, target: str = "IJBC", size: int = 112, batch_size: int = 64,
                 flip: bool = True, detector_weight: bool = True, progress: bool = True,
                 fars: Optional[Sequence[float]] = None) -> Dict[str, Any]:
    """Run the whole 1:1 protocol; ``embed_fn(uint8 images, flip) -> N x D`` (un-normalised) embeddings."""
    protocol = read_protocol(root, target)
    aligned = load_aligned(protocol, size, progress=progress)
    feats = np.asarray(embed_fn(aligned, flip), dtype=np.float64)
    if detector_weight:
        feats = feats * protocol.scores[:, None]
    tfeats, unique = template_features(feats, protocol.templates, protocol.medias)
    scores = pair_scores(tfeats, unique, protocol.pairs)
    summary = summarize_scores(scores, protocol.labels == 1, *([fars] if fars else []))
    summary.update(images=int(len(aligned)), templates=int(len(unique)), scores=scores)
    return summary
