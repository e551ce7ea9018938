"""Ordinary photos in, aligned faces out: detect (MTCNN), keep the most confident face, warp its five landmarks
onto the ArcFace 112x112 template (the alignment every pocketnas network and the shared face sets use)."""
from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..data.align import align_face
from ..data.folder import IMAGE_EXTENSIONS, walk_images
from ..data.transforms import pil_to_chw_uint8
from ..errors import InputError, MissingFileError
from .mtcnn import MTCNN, Face, default_detector

logger = logging.getLogger(__name__)

REPORT = "align_report.json"


def read_photo(path: str) -> np.ndarray:
    """A photo as H x W x 3 uint8 RGB, turned upright by its EXIF orientation (as a phone saved it)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return pil_to_chw_uint8(im).transpose(1, 2, 0).copy()
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{path}: cannot decode image ({e})") from None


def align_photo(image_hwc: np.ndarray, size: int = 112, detector: Optional[MTCNN] = None
                ) -> Tuple[Optional[np.ndarray], List[Face]]:
    """(the most confident face aligned to 3 x size x size uint8, or None; every face found)."""
    faces = (detector or default_detector()).detect(image_hwc)
    if not faces:
        return None, faces
    return align_face(image_hwc, faces[0].landmarks, size), faces


def _photos(root: str) -> List[str]:
    found = [os.path.relpath(p, root) for p in walk_images(root)]  # hidden files left out, link loops entered once
    if not found:
        raise InputError(f"{root}: no photos found ({', '.join(IMAGE_EXTENSIONS)})")
    return found


def _claim(out_dir: str, overwrite: bool) -> None:
    """``out_dir`` must be new or empty, or hold an earlier ``pocketnas align`` (replaced only with ``overwrite``,
    which removes only the files that run wrote)."""
    report = os.path.join(out_dir, REPORT)
    if not os.path.isdir(out_dir) or not os.listdir(out_dir):
        return
    if not os.path.isfile(report):
        raise InputError(f"{out_dir}: holds files that pocketnas align did not write; give an empty or new folder")
    if not overwrite:
        raise InputError(f"{out_dir}: holds an earlier pocketnas align run ({REPORT}); add --overwrite to replace it")
    with open(report, encoding="utf-8") as f:
        written = json.load(f).get("written", [])
    for rel in written:
        path = os.path.abspath(os.path.join(out_dir, rel))
        if path.startswith(os.path.abspath(out_dir) + os.sep) and os.path.isfile(path):  # never outside out_dir
            os.unlink(path)
    os.unlink(report)
    for d, _, _ in sorted(os.walk(out_dir), reverse=True):  # the identity folders it made, if now empty
        if d != out_dir and not os.listdir(d):
            shutil.rmtree(d)


def align_folder(src: str, out_dir: str, size: int = 112, min_face: int = 20, overwrite: bool = False,
                 progress: bool = True) -> Dict[str, Any]:
    """Align every photo below ``src`` into ``out_dir`` as PNG, keeping the folder structure (identity folders
    stay identity folders); photos without a face are counted and listed, not written. Writes ``align_report.json``."""
    from PIL import Image
    from tqdm import tqdm

    if not os.path.isdir(src):
        raise MissingFileError(f"{src}: no such photo folder")
    photos = _photos(src)
    _claim(out_dir, overwrite)
    detector = MTCNN(min_size=min_face)
    report: Dict[str, Any] = {"source": os.path.abspath(src), "size": size, "min_face": min_face,
                              "photos": len(photos), "aligned": 0, "no_face": [], "unreadable": [],
                              "several_faces": 0, "several_faces_photos": [], "written": []}
    for rel in tqdm(photos, desc="aligning", unit="photo", disable=not progress):
        try:
            image = read_photo(os.path.join(src, rel))
        except InputError as e:
            report["unreadable"].append(rel)
            logger.warning("%s", e)
            continue
        aligned, faces = align_photo(image, size, detector)
        if aligned is None:
            report["no_face"].append(rel)
            continue
        if len(faces) > 1:  # named, not only counted: the most confident face was kept, which may not be the one meant
            report["several_faces"] += 1
            report["several_faces_photos"].append(rel)
        target = os.path.splitext(rel)[0] + ".png"
        path = os.path.join(out_dir, target)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(aligned.transpose(1, 2, 0)).save(path)
        report["written"].append(target)
        report["aligned"] += 1
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, REPORT), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    logger.info("aligned %d of %d photos into %s (%d without a face, %d unreadable, %d with several faces: the "
                "most confident kept)", report["aligned"], len(photos), out_dir, len(report["no_face"]),
                len(report["unreadable"]), report["several_faces"])
    return report
