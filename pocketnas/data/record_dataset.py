"""A face-identity dataset over an insightface RecordIO pack (or a plain image pack)."""
from __future__ import annotations

import logging
import os
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .decode import check_pixels, decode_image, image_dimensions, looks_like_image
from ..errors import MissingFileError
from ..image_size import Size, recorded
from .errors import DataFormatError
from .recordio import RecordIOReader, read_property, unpack_payload
from .transforms import check_norm, normalize

logger = logging.getLogger(__name__)


def resolve_pack(path: str) -> Tuple[str, str, str]:
    """(rec, idx, property) paths for a folder holding ``train.rec`` or for a ``.rec`` file itself."""
    path = os.fspath(path)
    if os.path.isdir(path):
        rec = os.path.join(path, "train.rec")
        if not os.path.isfile(rec):
            recs = sorted(f for f in os.listdir(path) if f.endswith(".rec"))
            if len(recs) != 1:
                raise MissingFileError(f"{path}: expected train.rec (or exactly one .rec file) in the folder")
            rec = os.path.join(path, recs[0])
    else:
        rec = path
    folder = os.path.dirname(os.path.abspath(rec))
    return rec, os.path.splitext(rec)[0] + ".idx", os.path.join(folder, "property")


class RecordDataset(Dataset):
    """(float tensor 3 x H x W normalised, int label) from a RecordIO pack.

    ``path``: a folder holding ``train.rec``/``train.idx``/``property``, or the ``.rec`` itself. The insightface
    layout (record 0 header -> image range, identity records) is used when present; otherwise every record is an
    image. ``train=True`` enables the random horizontal flip. ``skip_bad=True`` checks every record's framing and
    label once at start (no decoding), leaves damaged ones out and reports how many; an image that then fails to
    decode is replaced by the next good one and counted. Labels out of range are always an error.
    """

    def __init__(self, path: str, train: bool = True, norm: str = "arcface", num_classes: Optional[int] = None,
                 skip_bad: bool = False, size: Optional[Size] = None, labelled: bool = True):
        self.rec_path, idx_path, self.property_path = resolve_pack(path)
        self.reader = RecordIOReader(self.rec_path, idx_path)
        self.train = train
        self.norm = check_norm(norm)
        self.size = size
        self.skip_bad = skip_bad
        self.bad_records: List[int] = []
        self.identity_ranges: Optional[np.ndarray] = None
        self.labelled = labelled
        self.keys = self._image_keys()
        self.num_classes = self._num_classes(num_classes) if labelled else 0
        if skip_bad:
            self._drop_bad_records()
        self.reader.close()  # each process (DataLoader worker) maps the pack itself on first use

    # ------------------------------------------------------------------ layout
    def _image_keys(self) -> np.ndarray:
        if 0 not in self.reader:
            return self.reader.keys.copy()
        header, label = self.reader.read_header(0)
        if header.flag == 2 and isinstance(label, np.ndarray):  # insightface header record
            first_id, end = int(label[0]), int(label[1])
            if not (1 <= first_id <= end and first_id in self.reader or first_id == end):
                raise DataFormatError(f"{self.rec_path}: record 0 says images are records 1..{first_id - 1} and "
                                      f"identities {first_id}..{end - 1}, which the index does not hold")
            ranges = []
            for key in range(first_id, end):
                if key not in self.reader:
                    raise DataFormatError(f"{self.rec_path}: identity record {key} is missing from the index")
                _, r = self.reader.read_header(key)
                if not isinstance(r, np.ndarray) or len(r) < 2:
                    raise DataFormatError(f"{self.rec_path}: record {key} should be an identity record "
                                          f"[first image, end), found label {r!r}")
                ranges.append((int(r[0]), int(r[1])))
            self.identity_ranges = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
            missing = [k for k in range(1, first_id) if k not in self.reader]
            if missing:
                raise DataFormatError(f"{self.rec_path}: image record {missing[0]} is missing from the index")
            return np.arange(1, first_id, dtype=np.int64)
        return self.reader.keys.copy()

    def _num_classes(self, given: Optional[int]) -> int:
        derived = len(self.identity_ranges) if self.identity_ranges is not None else None
        if given is not None:
            n = int(given)
        elif os.path.isfile(self.property_path):
            n = read_property(self.property_path)[0]
        else:
            hint = (f"this pack's identity records say {derived} classes: write '{derived},112,112' to it, or pass "
                    f"num_classes={derived}" if derived is not None else "pass num_classes=N")
            raise DataFormatError(f"{self.property_path}: missing; it should hold 'num_classes,height,width' ({hint})")
        if derived is not None and derived != n:
            raise DataFormatError(f"{self.property_path}: says {n} classes but {self.rec_path} has {derived} "
                                  f"identity records")
        return n

    def _check_record(self, key: int) -> None:
        """What can be checked without decoding: framing, label, and that the payload looks like an image."""
        header, label, data = unpack_payload(self.reader.read(key), self._where(key))
        if self.reader.idx_path and header.id not in (key, 0):  # insightface and mxnet write the key as the id
            raise DataFormatError(f"{self._where(key)}: the index points to a record whose header says id "
                                  f"{header.id}: {self.reader.idx_path} does not belong to this .rec (or is stale); "
                                  f"delete it and pocketnas rebuilds it by a scan")
        self._label_of(key, label)
        if not looks_like_image(data):
            raise DataFormatError(f"{self._where(key)}: {'empty image' if not data else 'not a JPEG/PNG/BMP image'} "
                                  f"({len(data)} bytes, starting {data[:8]!r})")
        dims = image_dimensions(data)
        if dims:
            check_pixels(dims[0], dims[1], self._where(key))

    def check_records(self) -> None:
        """Check every image record up front (no decoding, about a second for 36 k records): the first damaged
        one is an error naming the file and the record, before any work starts."""
        for k in self.keys.tolist():
            try:
                self._check_record(k)
            except DataFormatError as e:
                raise DataFormatError(f"{e}; pass --skip-bad (skip_bad=true) to leave damaged records out") from None
        self.reader.close()

    def _drop_bad_records(self) -> None:
        good = []
        for k in self.keys.tolist():
            try:
                self._check_record(k)
                good.append(k)
            except DataFormatError as e:
                self.bad_records.append(k)
                logger.warning("skipping %s", e)
        if self.bad_records:
            logger.warning("%s: %d damaged records left out of %d", self.rec_path, len(self.bad_records),
                           len(self.keys))
        self.keys = np.asarray(good, dtype=np.int64)

    # ------------------------------------------------------------------ labels without decoding
    def labels(self) -> np.ndarray:
        """The label of every image, from the identity records when present (no image is read), else headers."""
        if self.identity_ranges is not None and not self.bad_records:
            counts = self.identity_ranges[:, 1] - self.identity_ranges[:, 0]
            if counts.sum() == len(self.keys) and (self.identity_ranges[1:, 0] == self.identity_ranges[:-1, 1]).all():
                return np.repeat(np.arange(len(counts)), counts)
        return np.asarray([self._label_of(k, self.reader.read_header(k)[1]) for k in self.keys.tolist()])

    def _where(self, key: int) -> str:
        return f"{self.rec_path}: record {key}"

    def _label_of(self, key: int, label) -> int:
        if not self.labelled:
            return -1
        value = float(label[0]) if isinstance(label, np.ndarray) else float(label)
        if not value.is_integer() or not 0 <= value < self.num_classes:
            raise DataFormatError(f"{self._where(key)}: label {value} is not a class index in "
                                  f"0..{self.num_classes - 1}")
        return int(value)

    def fingerprint(self) -> str:
        """What identifies these samples for a cache of per-image results: the pack's size, the keys and offsets
        of the images used, the bytes of up to 64 records spread over it, and the decoded size."""
        import hashlib

        h = hashlib.sha256()
        h.update(f"recordio:{self.reader.size}:{self.size if self.size is None else recorded(self.size)}:".encode())
        h.update(np.ascontiguousarray(self.keys, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(self.reader.offsets, dtype=np.int64).tobytes())
        for i in np.unique(np.linspace(0, len(self.keys) - 1, num=min(64, len(self.keys))).astype(np.int64)):
            h.update(self.reader.read(int(self.keys[i])))
        self.reader.close()
        return h.hexdigest()

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        return len(self.keys)

    def read_uint8(self, index: int) -> Tuple[np.ndarray, int]:
        key = int(self.keys[index])
        header, label, data = unpack_payload(self.reader.read(key), self._where(key))
        return decode_image(data, self._where(key), self.size), self._label_of(key, label)

    def sample_uint8(self, index: int) -> Tuple[np.ndarray, int]:
        """(3 x H x W uint8 RGB, label) of image ``index``; with ``skip_bad`` a damaged image is replaced by the
        next good one (and counted)."""
        if not -len(self.keys) <= index < len(self.keys):
            raise IndexError(f"{self.rec_path}: index {index} out of range for {len(self.keys)} images")
        index %= len(self.keys)
        tries = len(self.keys) if self.skip_bad else 1
        for attempt in range(tries):
            try:
                return self.read_uint8((index + attempt) % len(self.keys))
            except DataFormatError as e:
                if not self.skip_bad:
                    raise
                self.bad_records.append(int(self.keys[(index + attempt) % len(self.keys)]))
                logger.warning("skipping %s", e)
        raise DataFormatError(f"{self.rec_path}: no readable image left")  # pragma: no cover

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        image, label = self.sample_uint8(index)
        x = torch.from_numpy(image)
        if self.train and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return normalize(x, self.norm), label
