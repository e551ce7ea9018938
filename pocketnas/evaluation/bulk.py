"""Many photo pairs in one process (issue 42): a pairs file (CSV or TSV: two paths, an optional label) or a folder
of identities (every pair, or N drawn), each photo detected, aligned and embedded once, every pair scored at the
model's threshold. The per-pair table records the faces found in each photo (a photo with several faces is named:
the most confident face was used; one without a face leaves its pairs undecided, never guessed); with labels, the
accuracy at the threshold and the ROC figures."""
from __future__ import annotations

import csv
import itertools
import logging
import os
import random
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..models.embedders import Embedder, embed_images
from .photos import face_of

logger = logging.getLogger(__name__)

_TRUE = {"1", "true", "same", "yes", "genuine", "match"}
_FALSE = {"0", "false", "different", "no", "impostor", "nonmatch", "non-match"}

Pair = Tuple[str, str, Optional[bool]]


def _label(text: str, where: str) -> Optional[bool]:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InputError(f"{where}: label {text!r} is none of 1/0, true/false, same/different")


def read_pairs_file(path: str) -> List[Pair]:
    """(photo a, photo b, label or None) per row of a CSV or TSV file (tab-separated when its first line holds a
    tab); a first row naming its columns (``a,b,label``) is a header. Relative paths are read from the file's
    folder. Every row must have the same number of columns (two, or three with labels)."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such pairs file")
    folder = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise InputError(f"{path}: no pairs in it (expected rows of: photo_a, photo_b[, label])")
    delimiter = "\t" if "\t" in lines[0] else ","
    rows = list(csv.reader(lines, delimiter=delimiter))
    first = [c.strip().lower() for c in rows[0]]
    if len(first) >= 2 and not any(os.path.exists(os.path.join(folder, c)) or os.path.exists(c) for c in rows[0][:2]) \
            and (first[0] in ("a", "photo_a", "image_a", "path_a", "first") or "label" in first):
        rows = rows[1:]
    pairs: List[Pair] = []
    width = None
    for n, row in enumerate(rows, start=1):
        where = f"{path}: row {n}"
        row = [c.strip() for c in row]
        if len(row) not in (2, 3):
            raise InputError(f"{where}: {len(row)} columns; a pair is two photo paths and an optional label")
        if width is not None and len(row) != width:
            raise InputError(f"{where}: {len(row)} columns where the rows before have {width}: label every pair or "
                             f"none")
        width = len(row)
        a, b = (p if os.path.isabs(p) else os.path.join(folder, p) for p in row[:2])
        pairs.append((a, b, _label(row[2], where) if len(row) == 3 else None))
    missing = sorted({p for a, b, _ in pairs for p in (a, b) if not os.path.isfile(p)})
    if missing:
        raise InputError(f"{path}: {len(missing)} photo(s) it names do not exist: {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''}")
    return pairs


def pairs_of_folder(root: str, sample: int = 0, seed: int = 0) -> List[Pair]:
    """Labelled pairs of ``root/<identity>/<photo>``: every pair of photos, or ``sample`` of them drawn (half
    genuine where the folder has enough, seeded)."""
    from ..data.folder import scan_folder

    _, samples = scan_folder(root)
    every = list(itertools.combinations(range(len(samples)), 2))
    if sample and sample < len(every):
        rng = random.Random(seed)
        genuine = [p for p in every if samples[p[0]][1] == samples[p[1]][1]]
        impostor = [p for p in every if samples[p[0]][1] != samples[p[1]][1]]
        half = min(len(genuine), sample // 2)
        chosen = rng.sample(genuine, half) + rng.sample(impostor, min(len(impostor), sample - half))
        every = sorted(chosen)
    return [(samples[i][0], samples[j][0], samples[i][1] == samples[j][1]) for i, j in every]


def verify_pairs(embedder: Embedder, pairs: Sequence[Pair], threshold: float, aligned: bool = False,
                 flip: bool = True, progress: bool = True) -> Dict[str, Any]:
    """Score every pair; each distinct photo is read, aligned and embedded once. Returns {rows (one per pair),
    photos (faces found per photo), summary}."""
    from tqdm import tqdm

    photos = sorted({p for a, b, _ in pairs for p in (a, b)})
    faces: Dict[str, np.ndarray] = {}
    found: Dict[str, Any] = {}
    for path in tqdm(photos, desc="aligning" if not aligned else "reading", unit="photo", disable=not progress):
        try:
            face, n = face_of(path, embedder.input_size, aligned)
            faces[path], found[path] = face, n
        except InputError as e:  # no face, unreadable: its pairs stay undecided
            found[path] = 0
            logger.warning("%s", e)
    order = sorted(faces)
    emb = embed_images(embedder, np.stack([faces[p] for p in order]), flip=flip, progress=progress,
                       desc="embedding") if order else np.zeros((0, 1), np.float32)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)
    index = {p: i for i, p in enumerate(order)}
    rows = []
    for a, b, label in pairs:
        row: Dict[str, Any] = {"a": a, "b": b, "faces_a": found[a], "faces_b": found[b], "label": label}
        if a in index and b in index:
            cosine = float(emb[index[a]] @ emb[index[b]])
            row.update(cosine=cosine, same=cosine >= threshold)
        else:
            row.update(cosine=None, same=None)
        rows.append(row)
    several = [p for p, n in found.items() if n and n > 1]
    summary: Dict[str, Any] = {"pairs": len(rows), "photos": len(photos), "embedded": len(order),
                               "threshold": float(threshold), "no_face": [p for p, n in found.items() if not n],
                               "several_faces": several, "undecided": sum(r["same"] is None for r in rows)}
    summary.update(_labelled_figures(rows))
    return {"rows": rows, "summary": summary}


def _labelled_figures(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    from ..metrics.biometric import auc, eer, roc_curve

    scored = [r for r in rows if r["label"] is not None and r["cosine"] is not None]
    if not scored:
        return {}
    labels = np.array([r["label"] for r in scored])
    scores = np.array([r["cosine"] for r in scored])
    decided = np.array([r["same"] for r in scored])
    out: Dict[str, Any] = {"labelled": len(scored), "accuracy": float(np.mean(decided == labels))}
    if labels.all() or not labels.any():
        return out
    fpr, tpr, _ = roc_curve(scores, labels)
    out.update(auc=float(auc(fpr, tpr)), eer=float(eer(fpr, tpr)))
    return out


def write_pairs_report(path: str, result: Dict[str, Any]) -> str:
    """The per-pair table as CSV (``.csv``, ``.tsv``) or everything as JSON (any other name)."""
    from ..atomic import atomic_write, atomic_write_json

    if path.lower().endswith((".csv", ".tsv")):
        import io

        buf = io.StringIO()
        writer = csv.writer(buf, delimiter="\t" if path.lower().endswith(".tsv") else ",", lineterminator="\n")
        writer.writerow(["a", "b", "cosine", "same", "label", "faces_a", "faces_b"])
        for r in result["rows"]:
            writer.writerow([r["a"], r["b"], "" if r["cosine"] is None else f"{r['cosine']:.6f}",
                             "" if r["same"] is None else int(r["same"]), "" if r["label"] is None else int(r["label"]),
                             r["faces_a"], r["faces_b"]])
        atomic_write(path, buf.getvalue())
    else:
        atomic_write_json(path, result, sort_keys=False)
    return path
