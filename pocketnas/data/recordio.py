"""MXNet RecordIO, read and written without mxnet (which no longer imports with numpy >= 1.24).

Layout, as dmlc-core's ``RecordIOWriter`` writes it: each record is ``uint32 magic 0xced7230a``, ``uint32 lrecord``
(upper 3 bits a continuation flag, lower 29 bits the length), the data, zero padding to 4 bytes. A payload that
contains the magic word at a 4-byte-aligned position is split there into parts (flag 1 = first, 2 = middle,
3 = last) and the magic word itself is dropped; the reader puts it back. The ``.idx`` file holds
``key<TAB>byte offset`` lines. Payloads of image packs start with mxnet's ``IRHeader`` (struct ``IfQQ``: flag,
label, id, id2); when ``flag > 0`` the label is a vector of ``flag`` float32 values following the header.

insightface's packs (MS1MV2, CASIA-WebFace): record 0's label is ``[first identity record, end]``, records
1..N are images (``label = identity``), then one record per identity whose label is ``[first image, end)``.
"""
from __future__ import annotations

import logging
import mmap
import os
import struct
from collections import namedtuple
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import MissingFileError
from .errors import DataFormatError

logger = logging.getLogger(__name__)

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LEN_MASK = (1 << 29) - 1
IRHeader = namedtuple("IRHeader", ["flag", "label", "id", "id2"])
_IR_FORMAT = "IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)

Label = Union[float, np.ndarray]


# ----------------------------------------------------------------------------- image record payloads
def pack_payload(label: Union[float, Sequence[float]], data: bytes, id: int = 0, id2: int = 0) -> bytes:
    """IRHeader + (vector label) + data, as ``mxnet.recordio.pack``."""
    if np.ndim(label) == 0:
        return struct.pack(_IR_FORMAT, 0, float(label), id, id2) + data
    vec = np.asarray(label, dtype=np.float32)
    return struct.pack(_IR_FORMAT, len(vec), 0.0, id, id2) + vec.tobytes() + data


def unpack_payload(payload: bytes, where: str = "record") -> Tuple[IRHeader, Label, bytes]:
    """(header, label (float or float32 vector), data) from an image record's payload."""
    if len(payload) < _IR_SIZE:
        raise DataFormatError(f"{where}: {len(payload)} bytes, too short for a record header ({_IR_SIZE})")
    header = IRHeader(*struct.unpack_from(_IR_FORMAT, payload))
    if header.flag > 0:
        end = _IR_SIZE + 4 * header.flag
        if header.flag > 1 << 20 or end > len(payload):
            raise DataFormatError(f"{where}: header announces a {header.flag}-value label that does not fit in "
                                  f"its {len(payload)} bytes")
        label: Label = np.frombuffer(payload, np.float32, header.flag, _IR_SIZE).copy()
        return header, label, payload[end:]
    return header, float(header.label), payload[_IR_SIZE:]


# ----------------------------------------------------------------------------- the .idx file
def read_index(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """(keys, offsets) as int64 arrays from a ``.idx`` file."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise DataFormatError(f"{path}: cannot read index ({e.strerror})") from None
    lines = text.split(b"\n")
    if lines and not lines[-1].strip():
        lines.pop()
    try:
        table = np.array([line.split(b"\t") if b"\t" in line else line.split() for line in lines], dtype=np.int64)
    except ValueError:
        for n, line in enumerate(lines, start=1):
            parts = line.split()
            if len(parts) != 2 or not all(p.lstrip(b"-").isdigit() for p in parts):
                raise DataFormatError(f"{path}: line {n} is not 'key<TAB>offset': {line[:60]!r}") from None
        raise DataFormatError(f"{path}: malformed index") from None
    if table.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if table.ndim != 2 or table.shape[1] != 2:
        raise DataFormatError(f"{path}: expected two columns 'key<TAB>offset' on every line")
    keys = table[:, 0].copy()
    uniq, first, counts = np.unique(keys, return_index=True, return_counts=True)
    if (counts > 1).any():
        k = int(uniq[counts > 1][0])
        lines_of = (np.flatnonzero(keys == k) + 1).tolist()
        raise DataFormatError(f"{path}: key {k} appears {len(lines_of)} times "
                              f"(lines {', '.join(map(str, lines_of[:5]))}"
                              f"); one record would silently replace another: rebuild the index (delete it and "
                              f"pocketnas rebuilds it by scanning the .rec)")
    return keys, table[:, 1].copy()


def write_index(path: str, keys: Sequence[int], offsets: Sequence[int]) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.writelines(f"{k}\t{o}\n" for k, o in zip(keys, offsets))


# ----------------------------------------------------------------------------- reader
class RecordIOReader:
    """Random access to a ``.rec`` through its ``.idx``: memory-mapped, never read whole, reopened lazily in each
    process (so a reader can be handed to DataLoader workers). Without an ``.idx`` the index is rebuilt by one
    sequential scan (with progress)."""

    def __init__(self, rec_path: str, idx_path: Optional[str] = None):
        self.rec_path = os.fspath(rec_path)
        self._mm: Optional[mmap.mmap] = None
        self._pid = -1
        if not os.path.isfile(self.rec_path):
            raise MissingFileError(f"{self.rec_path}: no such RecordIO file")
        self.size = os.path.getsize(self.rec_path)
        idx_path = idx_path or os.path.splitext(self.rec_path)[0] + ".idx"
        if os.path.isfile(idx_path) and os.path.getsize(idx_path) == 0 and self.size > 0:
            logger.warning("%s: the index %s is empty (0 bytes) but the pack holds %d bytes; rebuilding the index "
                           "by a sequential scan (it is not rewritten)", self.rec_path, idx_path, self.size)
            idx_path = ""
        if idx_path and os.path.isfile(idx_path):
            self.idx_path: Optional[str] = idx_path
            keys, offsets = read_index(idx_path)
            bad = np.flatnonzero((offsets < 0) | (offsets + 8 > self.size))
            if bad.size:
                k = int(bad[0])
                raise DataFormatError(f"{idx_path}: record {keys[k]} has offset {offsets[k]}, past the end of "
                                      f"{self.rec_path} ({self.size} bytes): index and pack do not belong together "
                                      f"or the pack is truncated")
        else:
            logger.warning("%s: no index file %s; rebuilding it by a sequential scan", self.rec_path, idx_path)
            self.idx_path = None
            offsets = np.asarray(self._scan_offsets(), dtype=np.int64)
            keys = np.arange(len(offsets), dtype=np.int64)
        self.keys = keys
        self.offsets = offsets
        self._dense = bool(len(keys) and keys[0] == 0 and np.array_equal(keys, np.arange(len(keys))))
        self._lookup: Optional[Dict[int, int]] = None if self._dense else {int(k): i for i, k in enumerate(keys)}

    # -- process-local mapping
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_mm"], state["_pid"] = None, -1
        return state

    def _map(self) -> mmap.mmap:
        if self._mm is None or self._pid != os.getpid():
            with open(self.rec_path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if self.size else None
            self._pid = os.getpid()
        return self._mm  # type: ignore[return-value]

    def close(self) -> None:
        if self._mm is not None and self._pid == os.getpid():
            self._mm.close()
        self._mm = None

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: int) -> bool:
        return (0 <= key < len(self.keys)) if self._dense else key in self._lookup  # type: ignore[operator]

    def offset_of(self, key: int) -> int:
        if self._dense:
            if not 0 <= key < len(self.keys):
                raise KeyError(f"{self.rec_path}: no record {key} (records 0..{len(self.keys) - 1})")
            return int(self.offsets[key])
        try:
            return int(self.offsets[self._lookup[key]])  # type: ignore[index]
        except KeyError:
            raise KeyError(f"{self.rec_path}: no record {key} in its index") from None

    # -- record framing
    def _read_at(self, offset: int, key: object) -> Tuple[bytes, int]:
        """Payload of the record starting at ``offset`` (parts joined) and the offset after it."""
        mm = self._map()
        parts: List[bytes] = []
        pos = offset
        while True:
            where = f"{self.rec_path}: record {key} at byte {pos}"
            if pos + 8 > self.size:
                raise DataFormatError(f"{where}: the file ends at byte {self.size} (truncated pack)")
            magic, lrec = struct.unpack_from("<II", mm, pos)
            if magic != MAGIC:
                raise DataFormatError(f"{where}: bad magic number 0x{magic:08x} (expected 0x{MAGIC:08x}); "
                                      f"not a RecordIO record, or the index points into the middle of one")
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            start = pos + 8
            if start + length > self.size:
                raise DataFormatError(f"{where}: needs {length} bytes but the file ends at byte {self.size} "
                                      f"(truncated pack)")
            parts.append(mm[start:start + length])
            pos = start + ((length + 3) & ~3)
            if cflag == 0 and len(parts) == 1 or cflag == 3 and len(parts) > 1:
                break
            if (cflag == 1) != (len(parts) == 1) or cflag not in (1, 2):
                raise DataFormatError(f"{where}: continuation flag {cflag} out of sequence")
        return _MAGIC_BYTES.join(parts), pos

    def read(self, key: int) -> bytes:
        """The payload of record ``key``."""
        return self._read_at(self.offset_of(key), key)[0]

    def read_header(self, key: int) -> Tuple[IRHeader, Label]:
        header, label, _ = unpack_payload(self.read(key), f"{self.rec_path}: record {key}")
        return header, label

    def _scan_offsets(self) -> List[int]:
        from tqdm import tqdm

        offsets, pos = [], 0
        with tqdm(total=self.size, unit="B", unit_scale=True, desc=f"indexing {os.path.basename(self.rec_path)}",
                  disable=self.size < 50 << 20) as bar:
            while pos < self.size:
                offsets.append(pos)
                _, nxt = self._read_at(pos, len(offsets) - 1)
                bar.update(nxt - pos)
                pos = nxt
        return offsets

    def __iter__(self) -> Iterator[Tuple[int, bytes]]:
        for k in self.keys:
            yield int(k), self.read(int(k))


# ----------------------------------------------------------------------------- writer
class RecordIOWriter:
    """Writes records exactly as dmlc-core's writer (magic splitting and padding included) plus the ``.idx``."""

    def __init__(self, rec_path: str, idx_path: Optional[str] = None):
        self.rec_path = os.fspath(rec_path)
        self.idx_path = idx_path or os.path.splitext(self.rec_path)[0] + ".idx"
        os.makedirs(os.path.dirname(os.path.abspath(self.rec_path)), exist_ok=True)
        self._f = open(self.rec_path, "wb")
        self._idx = open(self.idx_path, "w", encoding="ascii")
        self._pos = 0

    def write(self, key: int, payload: bytes) -> int:
        """Append one record under ``key``; returns its byte offset."""
        if len(payload) >= 1 << 29:
            raise ValueError(f"record {key}: RecordIO records are limited to 2^29 bytes, got {len(payload)}")
        offset = self._pos
        out = bytearray()
        view = memoryview(payload)
        n, start = len(payload), 0
        i = payload.find(_MAGIC_BYTES)
        while i != -1:  # split at 4-byte-aligned magic words, as the reference writer does
            if i % 4 == 0:
                out += struct.pack("<II", MAGIC, ((1 if start == 0 else 2) << 29) | (i - start))
                out += view[start:i]
                start = i + 4
            i = payload.find(_MAGIC_BYTES, i + 1)
        out += struct.pack("<II", MAGIC, ((3 if start else 0) << 29) | (n - start))
        out += view[start:]
        out += b"\0" * (((n + 3) & ~3) - n)
        self._f.write(out)
        self._pos += len(out)
        self._idx.write(f"{key}\t{offset}\n")
        return offset

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
            self._idx.close()

    def __enter__(self) -> "RecordIOWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_property(folder: str, num_classes: int, height: int = 112, width: int = 112) -> str:
    path = os.path.join(folder, "property")
    with open(path, "w", encoding="ascii") as f:
        f.write(f"{num_classes},{height},{width}")
    return path


def read_property(path: str) -> Tuple[int, int, int]:
    """``num_classes,height,width`` from an insightface ``property`` file."""
    try:
        text = open(path, encoding="ascii", errors="replace").read().strip()
    except FileNotFoundError:
        raise DataFormatError(f"{path}: missing; it should hold 'num_classes,height,width'") from None
    parts = text.split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) <= 0:
        raise DataFormatError(f"{path}: expected 'num_classes,height,width' (e.g. '85742,112,112'), got {text[:60]!r}")
    return values  # type: ignore[return-value]


def write_insightface_pack(out_dir: str, images: Sequence[Tuple[bytes, int]], num_classes: int,
                           height: int = 112, width: int = 112, prefix: str = "train") -> Dict[str, str]:
    """Write ``train.rec``/``.idx``/``property`` in insightface's layout from (encoded image, label) pairs sorted by
    label (labels 0..num_classes-1)."""
    labels = [label for _, label in images]
    if any(b < a for a, b in zip(labels, labels[1:])):
        raise ValueError("images must be sorted by label for the insightface layout")
    if labels and (labels[0] < 0 or labels[-1] >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    n = len(images)
    rec = os.path.join(out_dir, f"{prefix}.rec")
    with RecordIOWriter(rec) as w:
        w.write(0, pack_payload([n + 1, n + 1 + num_classes], b"", id=0))
        for k, (data, label) in enumerate(images, start=1):
            w.write(k, pack_payload(float(label), data, id=k))
        starts = np.searchsorted(labels, np.arange(num_classes + 1), side="left") + 1
        for c in range(num_classes):
            key = n + 1 + c
            w.write(key, pack_payload([float(starts[c]), float(starts[c + 1])], b"", id=key))
    return {"rec": rec, "idx": w.idx_path, "property": write_property(out_dir, num_classes, height, width)}
