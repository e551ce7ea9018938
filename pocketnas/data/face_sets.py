"""One door to a set of face images: a RecordIO pack or an image folder, checked up front."""
from __future__ import annotations

import os

from ..image_size import Size


def open_face_dataset(path: str, size: Size = 112, labelled: bool = True, skip_bad: bool = False):
    """A RecordIO pack (folder with ``train.rec`` or a ``.rec``) or an image folder ``root/<identity>/<image>``.
    ``labelled=False``: labels are not read (every label -1): a pack without identity records or ``property``, or
    a folder of images at any depth, will do. Every image is checked up front (framing, label, format signature:
    no decoding); ``skip_bad`` leaves damaged ones out (and counts them) instead of refusing the set."""
    from .folder import FolderDataset
    from .record_dataset import RecordDataset

    if path.endswith(".rec") or os.path.isfile(os.path.join(path, "train.rec")):
        faces = RecordDataset(path, train=False, size=size, labelled=labelled, skip_bad=skip_bad)
    else:
        faces = FolderDataset(path, train=False, size=size, labelled=labelled, skip_bad=skip_bad)
    if not skip_bad:
        faces.check_records()
    return faces
