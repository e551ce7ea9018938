"""``pocketnas data inspect``: what a pack, a ``.bin`` or an image folder holds, with a contact sheet PNG."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import numpy as np


def _histogram_text(counts: np.ndarray) -> List[str]:
    if not len(counts):
        return []
    edges = [1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 10 ** 9]
    lines = []
    for lo, hi in zip(edges, edges[1:]):
        n = int(((counts >= lo) & (counts < hi)).sum())
        if n:
            label = f"{lo}" if hi == lo + 1 else (f"{lo}-{hi - 1}" if hi < 10 ** 9 else f">={lo}")
            lines.append(f"  {label:>8} images: {n:6d} identities {'#' * max(1, int(50 * n / len(counts)))}")
    return lines


def contact_sheet(images: np.ndarray, path: str, columns: int = 8, captions: Optional[List[str]] = None) -> str:
    """Tile N x 3 x H x W uint8 images into one PNG (with optional captions under each tile)."""
    from PIL import Image, ImageDraw

    n = len(images)
    rows = max(1, (n + columns - 1) // columns)
    _, h, w = images.shape[1:]
    cap = 14 if captions else 0
    sheet = Image.new("RGB", (columns * w, rows * (h + cap)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, im in enumerate(images):
        x, y = (i % columns) * w, (i // columns) * (h + cap)
        sheet.paste(Image.fromarray(np.ascontiguousarray(im.transpose(1, 2, 0))), (x, y))
        if captions:
            draw.text((x + 3, y + h + 1), captions[i][:18], fill="black")
    from ..atomic import atomic_save_image

    return atomic_save_image(sheet, path)


def _identity_names(pack: str) -> List[str]:
    """The identity names ``pocketnas data pack`` keeps beside a pack (``identities.txt``: label, tab, folder
    name); empty where there is none (insightface's packs name no one)."""
    folder = pack if os.path.isdir(pack) else os.path.dirname(pack)
    path = os.path.join(folder, "identities.txt")
    if not os.path.isfile(path):
        return []
    names: List[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            label, _, name = line.rstrip("\n").partition("\t")
            if label.strip().isdigit() and int(label) == len(names):
                names.append(name)
    return names


def inspect_path(path: str, out_png: Optional[str] = None, samples: int = 32, seed: int = 0) -> Dict[str, Any]:
    """Summarise a RecordIO pack (folder or ``.rec``), a ``.bin`` or an image folder; write a contact sheet."""
    from .binfile import read_bin
    from .folder import FolderDataset
    from .record_dataset import RecordDataset

    rng = np.random.default_rng(seed)
    info: Dict[str, Any] = {"path": path}
    base = os.path.basename(os.path.normpath(path))
    out_png = out_png or f"{base}_contact.png"
    if path.endswith(".bin"):
        images, issame = read_bin(path)
        info.update(kind="bin", pairs=len(issame), genuine=int(sum(issame)), impostor=len(issame) - sum(issame),
                    images=len(images), image_size=list(images.shape[2:]))
        pick = np.sort(rng.choice(len(issame), min(samples // 2, len(issame)), replace=False))
        tiles = np.stack([images[2 * p + k] for p in pick for k in (0, 1)])
        captions = [f"pair {p} {'same' if issame[p] else 'diff'}" for p in pick for _ in (0, 1)]
        info["contact_sheet"] = contact_sheet(tiles, out_png, columns=8, captions=captions)
        info["summary"] = [f"{info['pairs']} pairs ({info['genuine']} genuine, {info['impostor']} impostor), "
                           f"{info['images']} images of {info['image_size'][0]}x{info['image_size'][1]}"]
        return info
    if path.endswith(".rec") or os.path.isfile(os.path.join(path, "train.rec")):
        ds = RecordDataset(path, train=False)
        labels = ds.labels()
        info.update(kind="recordio", num_classes=ds.num_classes)
        names = _identity_names(path)

        def read(i):
            return ds.read_uint8(i)[0]
    else:
        ds = FolderDataset(path, train=False, size=None)
        labels = np.asarray(ds.labels)
        info.update(kind="folder", num_classes=ds.num_classes)
        names = list(ds.identities)  # captions by folder name, as the user knows the people

        def read(i):
            return ds.read_uint8(i)
    counts = np.bincount(labels, minlength=info["num_classes"])
    present = counts[counts > 0]
    info.update(images=int(len(labels)), identities=int(len(present)),
                per_identity={"min": int(present.min()), "median": float(np.median(present)),
                              "mean": float(present.mean()), "max": int(present.max())},
                histogram=_histogram_text(present))
    pick = np.sort(rng.choice(len(labels), min(samples, len(labels)), replace=False))
    tiles = [read(int(i)) for i in pick]
    size = tiles[0].shape[1:]
    if any(t.shape[1:] != size for t in tiles):
        from PIL import Image

        tiles = [np.asarray(Image.fromarray(t.transpose(1, 2, 0)).resize(size[::-1])).transpose(2, 0, 1)
                 for t in tiles]
    captions = [names[labels[i]] if names and 0 <= labels[i] < len(names) else f"id {labels[i]}" for i in pick]
    info["contact_sheet"] = contact_sheet(np.stack(tiles), out_png, captions=captions)
    pi = info["per_identity"]
    info["summary"] = [f"{info['images']} images of {info['identities']} identities "
                       f"({info['num_classes']} classes declared); images per identity: min {pi['min']}, "
                       f"median {pi['median']:g}, mean {pi['mean']:.1f}, max {pi['max']}", *info["histogram"]]
    return info
