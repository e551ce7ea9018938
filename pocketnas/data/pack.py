"""Packing tools: image folder -> insightface RecordIO pack; image folder -> verification pairs ``.bin``."""
from __future__ import annotations

import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from ..errors import InputError
from ..outputs import staged_folder
from .binfile import write_bin
from .decode import encode_jpeg
from .folder import load_image, scan_folder
from .recordio import write_insightface_pack

logger = logging.getLogger(__name__)


def _encode_all(paths: Sequence[str], size: Optional[int], quality: int, workers: int, desc: str) -> List[bytes]:
    """Decode (to RGB, resized to ``size``) and JPEG-encode every image, in parallel (Pillow releases the GIL)."""

    def work(p: str) -> bytes:
        return encode_jpeg(load_image(p, size), quality)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(tqdm(pool.map(work, paths), total=len(paths), desc=desc, unit="img"))


def pack_folder(folder: str, out_dir: str, size: Optional[int] = 112, quality: int = 95,
                workers: int = 2) -> Dict[str, str]:
    """``folder/<identity>/<image>`` -> ``out_dir/train.rec``, ``train.idx``, ``property`` (insightface layout).

    Labels are the identities in sorted order; images are stored as RGB JPEG (quality ``quality``).
    """
    identities, samples = scan_folder(folder)
    encoded = _encode_all([p for p, _ in samples], size, quality, workers, f"packing {os.path.basename(folder)}")
    h = w = size or 112
    if size is None:
        from .decode import decode_image

        _, h, w = decode_image(encoded[0], samples[0][0]).shape
    with staged_folder(out_dir) as tmp:  # the pack appears in out_dir whole, or not at all
        names = write_insightface_pack(tmp, list(zip(encoded, [y for _, y in samples])), len(identities), h, w)
        with open(os.path.join(tmp, "identities.txt"), "w", encoding="utf-8") as f:
            f.writelines(f"{i}\t{name}\n" for i, name in enumerate(identities))
    paths = {k: os.path.join(out_dir, os.path.basename(v)) for k, v in names.items()}
    logger.info("packed %d images of %d identities into %s", len(samples), len(identities), paths["rec"])
    return paths


def make_pairs(labels: Sequence[int], n_pairs: int, folds: int = 10, seed: int = 0
               ) -> Tuple[List[Tuple[int, int]], List[bool], bool]:
    """Genuine/impostor pairs of sample indices, ``n_pairs`` in ``folds`` equal folds (half genuine, half impostor
    per fold, genuine first, as LFW's view 2). Identities are split across folds so that folds share no person
    when there are enough of them (the third value says whether they do). Seeded, no repeated pair."""
    if n_pairs % (2 * folds):
        raise InputError(f"--pairs must be a multiple of {2 * folds} (half genuine, half impostor in {folds} folds)")
    rng = random.Random(seed)
    by_id: Dict[int, List[int]] = {}
    for i, y in enumerate(labels):
        by_id.setdefault(int(y), []).append(i)
    ids = sorted(by_id)
    rng.shuffle(ids)
    disjoint = len(ids) >= 2 * folds and sum(len(by_id[i]) >= 2 for i in ids) >= folds
    groups = [ids[f::folds] for f in range(folds)] if disjoint else [ids] * folds
    if not disjoint:
        logger.warning("%d identities are too few for person-disjoint folds; folds share people", len(ids))
    per = n_pairs // (2 * folds)
    pairs: List[Tuple[int, int]] = []
    issame: List[bool] = []
    used = set()
    for group in groups:
        multi = [i for i in group if len(by_id[i]) >= 2]
        if not multi or len(group) < 2:
            raise InputError("not enough identities with two or more images to build genuine and impostor pairs")
        for same in (True, False):
            made, attempts = 0, 0
            while made < per:
                attempts += 1
                if attempts > 1000 * per:
                    raise InputError(f"cannot draw {per} distinct {'genuine' if same else 'impostor'} pairs per "
                                     f"fold from these identities; ask for fewer pairs")
                if same:
                    a, b = rng.sample(by_id[rng.choice(multi)], 2)
                else:
                    ia, ib = rng.sample(group, 2)
                    a, b = rng.choice(by_id[ia]), rng.choice(by_id[ib])
                key = (min(a, b), max(a, b))
                if key in used:
                    continue
                used.add(key)
                pairs.append((a, b))
                issame.append(same)
                made += 1
    return pairs, issame, disjoint


def pairs_from_folder(folder: str, out_bin: str, n_pairs: int = 600, folds: int = 10, seed: int = 0,
                      size: Optional[int] = 112, quality: int = 95, workers: int = 2) -> Dict[str, object]:
    """Random genuine/impostor pairs of ``folder``'s images written as an insightface ``.bin``."""
    identities, samples = scan_folder(folder)
    pairs, issame, disjoint = make_pairs([y for _, y in samples], n_pairs, folds, seed)
    needed = sorted({i for p in pairs for i in p})
    encoded = dict(zip(needed, _encode_all([samples[i][0] for i in needed], size, quality, workers,
                                           "encoding pairs")))
    write_bin(out_bin, [encoded[i] for p in pairs for i in p], issame)
    return {"pairs": len(pairs), "genuine": sum(issame), "folds": folds, "person_disjoint_folds": disjoint,
            "path": out_bin}


def pairs_from_pack(pack: str, out_bin: str, n_pairs: int = 600, folds: int = 10, seed: int = 0,
                    size: Optional[int] = 112, quality: int = 95) -> Dict[str, object]:
    """Random genuine/impostor pairs of a labelled RecordIO pack's images (as :func:`pairs_from_folder` draws them)
    written as an insightface ``.bin``. The stored JPEG bytes are copied; an image is re-encoded only where ``size``
    asks for another size than it has (``None``: keep every image as stored)."""
    from .decode import decode_image, image_dimensions
    from .record_dataset import RecordDataset
    from .recordio import unpack_payload

    ds = RecordDataset(pack, train=False)
    try:
        pairs, issame, disjoint = make_pairs(ds.labels().tolist(), n_pairs, folds, seed)
        needed = sorted({i for p in pairs for i in p})
        encoded: Dict[int, bytes] = {}
        for i in tqdm(needed, desc="reading pairs", unit="img"):
            key = int(ds.keys[i])
            where = ds._where(key)
            _, _, data = unpack_payload(ds.reader.read(key), where)
            dims = image_dimensions(data) or decode_image(data, where).shape[:0:-1]  # (width, height)
            if size is not None and tuple(dims) != (size, size):
                data = encode_jpeg(decode_image(data, where, size), quality)
            encoded[i] = data
    finally:
        ds.reader.close()
    write_bin(out_bin, [encoded[i] for p in pairs for i in p], issame)
    return {"pairs": len(pairs), "genuine": sum(issame), "folds": folds, "person_disjoint_folds": disjoint,
            "path": out_bin}


def subset_pack(src: str, out_dir: str, identities: int, seed: Optional[int] = None) -> Dict[str, str]:
    """The first ``identities`` identities of a labelled pack (or ``identities`` drawn with ``seed``) as a new
    insightface pack, labels renumbered 0..identities-1; the JPEG bytes are copied, never re-encoded. For
    comparisons sized to a CPU and for the 64 MiB a device run carries."""
    import numpy as np

    from .record_dataset import RecordDataset
    from .recordio import unpack_payload

    ds = RecordDataset(src, train=False)
    labels = ds.labels()
    if not 0 < identities <= ds.num_classes:
        raise InputError(f"{src}: --identities must lie in 1..{ds.num_classes}, got {identities}")
    chosen = (np.arange(identities) if seed is None
              else np.sort(np.random.default_rng(seed).choice(ds.num_classes, identities, replace=False)))
    new_label = {int(c): i for i, c in enumerate(chosen)}
    images = []
    for i in tqdm(np.flatnonzero(np.isin(labels, chosen)).tolist(), desc="subset", unit="img"):
        key = int(ds.keys[i])
        _, _, data = unpack_payload(ds.reader.read(key), ds._where(key))
        images.append((data, new_label[int(labels[i])]))
    images.sort(key=lambda t: t[1])
    ds.reader.close()
    with staged_folder(out_dir) as tmp:  # never over the source: the command line refuses out_dir == src first
        names = write_insightface_pack(tmp, images, identities)
        with open(os.path.join(tmp, "subset.txt"), "w", encoding="utf-8") as f:
            f.write(f"source {os.path.abspath(src)}\nseed {seed}\n")
            f.writelines(f"{i}\t{int(c)}\n" for i, c in enumerate(chosen))
    paths = {k: os.path.join(out_dir, os.path.basename(v)) for k, v in names.items()}
    logger.info("wrote %d images of %d identities of %s into %s", len(images), identities, src, paths["rec"])
    return paths
