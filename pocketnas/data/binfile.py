"""insightface verification sets (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin`` ...): read and written safely.

A ``.bin`` is ``pickle.dump((bins, issame_list))``: ``bins`` the encoded images, two per pair, ``issame_list`` one
bool per pair. A pickle can run code when loaded, so it is read by an unpickler that builds only what the format
needs (lists, tuples, bytes, booleans, integers) and refuses every global it is asked for; Python 2 era files
(bytes stored as ``str``) are read with ``encoding='bytes'``, and protocol-2 pickles written by Python 3 (which
store bytes as ``_codecs.encode(text, 'latin1')``) are accepted through a checked stand-in for that one call.
"""
from __future__ import annotations

import io
import logging
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from typing import List, Sequence, Tuple, Union

import numpy as np

from ..atomic import atomic_write
from ..errors import InputError, MissingFileError
from ..image_size import Size, as_hw, hw_text
from .decode import decode_image, encode_jpeg, looks_like_image
from .errors import DataFormatError

logger = logging.getLogger(__name__)


def _latin1_encode(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is accepted only as str.encode('latin1')")
    return text.encode("latin1")


class _BinUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        raise pickle.UnpicklingError(f"refused to build global '{module}.{name}': a .bin holds only lists, "
                                     f"bytes and booleans")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused a persistent id: a .bin holds only lists, bytes and booleans")


def _unpickle(path: str):
    try:
        with open(path, "rb") as f:
            return _BinUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise MissingFileError(f"{path}: no such .bin file") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: not a verification .bin ({type(e).__name__}: {e})") from None


def read_bin_raw(path: str) -> Tuple[List[bytes], List[bool]]:
    """The encoded images and the issame list, checked for shape and types (nothing decoded yet)."""
    obj = _unpickle(path)
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise DataFormatError(f"{path}: expected a pickled (bins, issame_list) pair, got {type(obj).__name__}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise DataFormatError(f"{path}: bins and issame_list must be lists")
    for i, b in enumerate(bins):
        if not isinstance(b, (bytes, bytearray)):
            raise DataFormatError(f"{path}: image {i} (pair {i // 2}) is a {type(b).__name__}, not encoded bytes")
        if not looks_like_image(bytes(b[:16]) + bytes(b[-64:])):  # a damaged image, found before any epoch
            raise DataFormatError(f"{path}: image {i} (pair {i // 2}) is not a JPEG/PNG/BMP image, or is truncated "
                                  f"({len(b)} bytes, starting {bytes(b[:8])!r})")
    for i, s in enumerate(issame):
        if not isinstance(s, (bool, int)) or isinstance(s, int) and s not in (0, 1):
            raise DataFormatError(f"{path}: issame entry {i} is {s!r}, not a boolean")
    if len(bins) != 2 * len(issame):
        raise DataFormatError(f"{path}: {len(bins)} images for {len(issame)} pairs (expected {2 * len(issame)}); "
                              f"the file is damaged or not a pairs file")
    return list(bins), [bool(s) for s in issame]


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 1 << 40


def check_decoded_size(path: str, bins: List[bytes], size: Size) -> None:
    """Refuse a ``.bin`` whose decoded images would not fit in this machine's memory, before allocating them: a
    pickle can list one stored image any number of times at a few bytes each, so a small file can demand
    unbounded memory."""
    h, w = as_hw(size)
    need = len(bins) * 3 * h * w
    have = _physical_memory()
    if need > have // 2:
        distinct = len({id(b) for b in bins})
        raise DataFormatError(f"{path}: {len(bins):,} image entries ({distinct:,} distinct stored images) would "
                              f"take {need / 2 ** 30:.1f} GiB decoded at {hw_text(size)}, more than half of this "
                              f"machine's {have / 2 ** 30:.1f} GiB; refused before decoding")


def read_bin(path: str, size: Size = 112, workers: int = 2, progress: bool = True) -> Tuple[np.ndarray, List[bool]]:
    """(images N x 3 x H x W uint8 RGB in file order, issame list) from an insightface ``.bin``; ``size`` is a side
    or (height, width) (a periocular ``.bin`` from ``pocketnas data crop`` is not square).

    Images stored at another size are resized (bilinear) to ``size`` and a warning says so.
    """
    from tqdm import tqdm

    path = os.fspath(path)
    bins, issame = read_bin_raw(path)
    check_decoded_size(path, bins, size)
    hw = as_hw(size)
    images = np.empty((len(bins), 3, *hw), dtype=np.uint8)
    resized = []

    def work(i: int) -> None:
        where = f"{path}: image {i} (pair {i // 2})"
        arr = decode_image(bins[i], where)
        if arr.shape[1:] != hw:
            resized.append(arr.shape[1:])
            arr = decode_image(bins[i], where, size)
        images[i] = arr

    name = os.path.basename(path)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(tqdm(pool.map(work, range(len(bins))), total=len(bins), desc=f"decoding {name}", unit="img",
                  disable=not progress or len(bins) < 2000))
    if resized:
        logger.warning("%s: %d images were stored at %s, resized to %s", path, len(resized),
                       "x".join(map(str, resized[0])), hw_text(hw))
    return images, issame


def write_bin(path: str, images_or_jpeg_bytes: Union[np.ndarray, Sequence[bytes]], issame: Sequence[bool],
              quality: int = 95) -> None:
    """Write a ``.bin`` as insightface does: uint8 N x 3 x H x W RGB arrays are JPEG-encoded first."""
    if isinstance(images_or_jpeg_bytes, np.ndarray):
        if images_or_jpeg_bytes.ndim != 4 or images_or_jpeg_bytes.shape[1] != 3:
            raise ValueError(f"images must be N x 3 x H x W uint8, got {images_or_jpeg_bytes.shape}")
        bins = [encode_jpeg(im, quality) for im in images_or_jpeg_bytes]
    else:
        bins = [bytes(b) for b in images_or_jpeg_bytes]
    if len(bins) != 2 * len(issame):
        raise InputError(f"{len(bins)} images for {len(issame)} pairs (need two images per pair)")
    buf = io.BytesIO()
    pickle.dump((bins, [bool(s) for s in issame]), buf, protocol=pickle.HIGHEST_PROTOCOL)
    atomic_write(path, buf.getvalue())
