"""Image folders ``root/<identity>/<image>`` as a face dataset (for people with loose files)."""
from __future__ import annotations

import logging
import os
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError, MissingFileError
from ..image_size import Size, pil_size, recorded
from .transforms import check_norm, normalize, pil_to_chw_uint8

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".webp", ".tif", ".tiff")


def is_hidden(name: str) -> bool:
    """Names that tools leave behind and no one means as data: ``.ipynb_checkpoints``, ``.DS_Store``, ``.git``,
    macOS ``._`` resource forks, ``__MACOSX``."""
    return name.startswith(".") or name == "__MACOSX"


def walk_images(root: str) -> List[str]:
    """Every image file below ``root`` at any depth, sorted, each listed once: hidden folders and files are left
    out, and a folder reached again through a symbolic link (a link to itself or to a parent: a loop) is not
    entered twice."""
    seen, found = set(), []
    for folder, dirs, files in os.walk(root, followlinks=True):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        found += [os.path.join(folder, f) for f in files
                  if not is_hidden(f) and f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def scan_folder(root: str) -> Tuple[List[str], List[Tuple[str, int]]]:
    """Sorted identity names and (path, label) for every image in ``root/<identity>/`` (directly, not deeper).
    Hidden folders and files are not identities or images, and a folder without an image is not an identity (both
    counted in the log); a file reached twice through links is listed once."""
    if not os.path.isdir(root):
        raise MissingFileError(f"{root}: no such image folder")
    names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    hidden = [d for d in names if is_hidden(d)]
    identities: List[str] = []
    samples: List[Tuple[str, int]] = []
    empty, seen = [], set()
    for name in (d for d in names if not is_hidden(d)):
        folder = os.path.join(root, name)
        files = []
        for f in sorted(os.listdir(folder)):
            path = os.path.join(folder, f)
            if is_hidden(f) or not f.lower().endswith(IMAGE_EXTENSIONS) or not os.path.isfile(path):
                continue
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            files.append(path)
        if not files:
            empty.append(name)
            continue
        samples += [(p, len(identities)) for p in files]
        identities.append(name)
    if hidden or empty:
        logger.info("%s: left out %d hidden folder(s)%s and %d folder(s) without images%s", root, len(hidden),
                    f" ({', '.join(hidden[:3])})" if hidden else "", len(empty),
                    f" ({', '.join(empty[:3])}{' ...' if len(empty) > 3 else ''})" if empty else "")
    if not samples:
        raise InputError(f"{root}: no images found in identity sub-folders (expected root/<identity>/<image>)")
    return identities, samples


def load_image(path: str, size: Optional[Size] = 112) -> np.ndarray:
    """Decode one image to 3 x H x W uint8 RGB (resized with bilinear filtering to ``size``, a side or (height,
    width), when it differs)."""
    from PIL import Image, UnidentifiedImageError

    from .decode import check_pixels, image_dimensions

    try:
        with open(path, "rb") as f:
            dims = image_dimensions(f.read(65536))
        if dims:  # from the header, before Pillow is asked: a decompression bomb is never decoded
            check_pixels(dims[0], dims[1], path)
        with Image.open(path) as im:
            check_pixels(im.size[0], im.size[1], path)
            im.load()
            if size is not None and im.size != pil_size(size):
                im = im.resize(pil_size(size), Image.BILINEAR)
            return pil_to_chw_uint8(im)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as e:
        raise InputError(f"{path}: cannot decode image ({e})") from None


def scan_images(root: str) -> List[Tuple[str, int]]:
    """(path, -1) for every image below ``root`` at any depth, sorted: an unlabelled face set."""
    if not os.path.isdir(root):
        raise MissingFileError(f"{root}: no such image folder")
    found = walk_images(root)
    if not found:
        raise InputError(f"{root}: no images found")
    return [(p, -1) for p in found]


class FolderDataset(Dataset):
    """``root/<identity>/<image>`` -> (float tensor 3 x S x S normalised, int label); identities sorted by name.

    ``train=True`` enables the training transform (random horizontal flip). ``labelled=False``: every image
    below ``root``, at any depth, with label -1 (for training on a teacher alone).
    """

    def __init__(self, root: str, train: bool = True, size: Optional[Size] = 112, norm: str = "arcface",
                 labelled: bool = True, skip_bad: bool = False):
        self.root = root
        self.train = train
        self.size = size
        self.norm = check_norm(norm)
        if labelled:
            self.identities, self.samples = scan_folder(root)
        else:
            self.identities, self.samples = [], scan_images(root)
        self.skip_bad = skip_bad
        self.bad_files: List[str] = []
        if skip_bad:
            bad = [p for p, _ in self.samples if self._damage(p)]
            for p in bad:
                logger.warning("skipping %s: %s", p, self._damage(p))
            if bad:
                logger.warning("%s: %d damaged images left out of %d", root, len(bad), len(self.samples))
                dropped = set(bad)
                self.samples = [(p, y) for p, y in self.samples if p not in dropped]
                self.bad_files = bad

    @staticmethod
    def _damage(path: str) -> Optional[str]:
        from .decode import looks_like_image

        from .decode import MAX_PIXELS, image_dimensions

        try:
            with open(path, "rb") as f:
                head = f.read(65536)  # enough for a JPEG's frame header after its EXIF block, in practice
                size = os.fstat(f.fileno()).st_size
                tail = b""
                if head.startswith(b"\xff\xd8\xff"):
                    f.seek(max(0, size - 64))
                    tail = f.read()
        except OSError as e:
            return f"cannot read ({e.strerror})"
        if size == 0:
            return "empty file (0 bytes)"
        if not looks_like_image(head[:16] + tail):
            return "not a JPEG/PNG/BMP image (or a truncated JPEG)"
        dims = image_dimensions(head)
        if dims and dims[0] * dims[1] > MAX_PIXELS:
            return f"{dims[0]} x {dims[1]} pixels: a decompression bomb, or not a face photo"
        return None

    def check_records(self) -> None:
        """Check every image up front without decoding (size, format signature, a JPEG's end marker)."""
        for path, _ in self.samples:
            problem = self._damage(path)
            if problem:
                raise InputError(f"{path}: {problem}; pass --skip-bad (skip_bad=true) to leave damaged images out")

    @property
    def num_classes(self) -> int:
        return len(self.identities)

    @property
    def labels(self) -> List[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def fingerprint(self) -> str:
        """What identifies these samples for a cache of per-image results: every image's path below the root,
        label, size in bytes and modification time, and the decoded size."""
        import hashlib

        h = hashlib.sha256(f"folder:{self.size if self.size is None else recorded(self.size)}:".encode())
        for path, label in self.samples:
            st = os.stat(path)
            h.update(f"{os.path.relpath(path, self.root)}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def read_uint8(self, index: int) -> np.ndarray:
        return load_image(self.samples[index][0], self.size)

    def sample_uint8(self, index: int) -> Tuple[np.ndarray, int]:
        """(3 x S x S uint8 RGB, label) of image ``index``; with ``skip_bad`` an image that fails to decode is
        replaced by the next one that decodes (and logged)."""
        for attempt in range(len(self.samples) if self.skip_bad else 1):
            i = (index + attempt) % len(self.samples)
            try:
                return self.read_uint8(i), self.samples[i][1]
            except InputError as e:
                if not self.skip_bad:
                    raise
                logger.warning("skipping %s", e)
        raise InputError(f"{self.root}: no readable image left")  # pragma: no cover

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.read_uint8(index))
        if self.train and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return normalize(image, self.norm), self.samples[index][1]

    def batch_uint8(self, indices) -> torch.Tensor:
        """Stack decoded images (no flip, not normalised) as an N x 3 x S x S uint8 tensor."""
        return torch.from_numpy(np.stack([self.read_uint8(i) for i in indices]))
