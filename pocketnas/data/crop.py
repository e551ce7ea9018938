"""Regions of aligned faces (periocular, one eye, any box) cut from a RecordIO pack, an image folder or a ``.bin``
into the same kind of file: identities, labels and pairs kept.

Every face pocketnas reads is aligned to the ArcFace template (insightface's ``arcface_dst``, 112x112), which puts
the eye centres at (38.29, 51.70) and (73.53, 51.50), the nose tip at (56.03, 71.74) and the mouth corners at
y = 92.2: so the periocular region of any aligned face is at a known place (Almadan and Rattani, "Compact CNN
models for on-device ocular-based user recognition in mobile devices", IEEE SSCI 2021, study it on VISOB and
UFPR-Periocular crops). Boxes are given in those 112x112 template coordinates and scaled to the image's size.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from ..errors import InputError
from ..outputs import staged_file, staged_folder
from .decode import decode_image, encode_jpeg

logger = logging.getLogger(__name__)

TEMPLATE_SIZE = 112
TEMPLATE_EYES = ((38.2946, 51.6963), (73.5318, 51.5014))  # ArcFace's template, image left first

# (x0, y0, x1, y1) in template pixels. Periocular: both eyes and brows, 21.7 px beyond each eye centre sideways
# (0.6 of the 35.2 px between the eyes), 23.7 px above the eyes (the brows) and 16.3 below (above the nose tip at
# 71.7 and the mouth): 80 x 40. One eye: a 36 x 36 square around its centre.
REGIONS: Dict[str, Tuple[float, float, float, float]] = {
    "periocular": (16.0, 28.0, 96.0, 68.0),
    "left_eye": (20.0, 34.0, 56.0, 70.0),   # the eye on the image's left (the subject's right eye)
    "right_eye": (56.0, 34.0, 92.0, 70.0),  # the eye on the image's right (the subject's left eye)
}


@dataclass(frozen=True)
class Crop:
    """A box in template coordinates and the output size (width, height) its pixels are resized to."""

    region: str
    box: Tuple[float, float, float, float]
    width: int
    height: int

    def record(self) -> Dict[str, Any]:
        return {**asdict(self), "template": f"ArcFace {TEMPLATE_SIZE}x{TEMPLATE_SIZE}",
                "template_eyes": TEMPLATE_EYES}


def parse_box(text: str) -> Tuple[float, float, float, float]:
    """``x0,y0,x1,y1`` in template pixels, inside the 112x112 template with a positive width and height."""
    try:
        box = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--box {text!r}: four numbers x0,y0,x1,y1 in 112x112 template pixels") from None
    if len(box) != 4 or not all(np.isfinite(box)):
        raise InputError(f"--box {text!r}: four numbers x0,y0,x1,y1 in 112x112 template pixels")
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= TEMPLATE_SIZE and 0 <= y0 < y1 <= TEMPLATE_SIZE):
        raise InputError(f"--box {text!r}: needs 0 <= x0 < x1 <= {TEMPLATE_SIZE} and 0 <= y0 < y1 <= "
                         f"{TEMPLATE_SIZE} (template pixels)")
    return box  # type: ignore[return-value]


def make_crop(region: Optional[str] = "periocular", box: Optional[str] = None,
              size: Optional[Tuple[int, int]] = None) -> Crop:
    """The crop a command asks for: a named region or a box, at ``size`` (width, height), by default the box's own
    size in template pixels (80 x 40 for the periocular band)."""
    if box is not None:
        coords, name = parse_box(box), "box"
    elif region in REGIONS:
        coords, name = REGIONS[region], region
    else:
        raise InputError(f"--region {region!r}: one of {', '.join(REGIONS)} (or --box x0,y0,x1,y1)")
    width, height = size or (round(coords[2] - coords[0]), round(coords[3] - coords[1]))
    return Crop(name, coords, int(width), int(height))


def crop_face(image_chw: np.ndarray, crop: Crop, where: str = "image") -> np.ndarray:
    """3 x H x W uint8 aligned face -> 3 x crop.height x crop.width uint8: the box scaled from the template to the
    image's size, resampled bilinearly."""
    from PIL import Image

    _, h, w = image_chw.shape
    if h != w:
        raise InputError(f"{where}: a {w}x{h} image is not an aligned square face (the template is "
                         f"{TEMPLATE_SIZE}x{TEMPLATE_SIZE}); align it first (pocketnas align)")
    scale = w / TEMPLATE_SIZE
    x0, y0, x1, y1 = (c * scale for c in crop.box)
    im = Image.fromarray(np.ascontiguousarray(image_chw.transpose(1, 2, 0)))
    out = im.resize((crop.width, crop.height), Image.BILINEAR, box=(x0, y0, x1, y1))
    return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1).copy()


def _crop_encoded(data: bytes, crop: Crop, where: str, quality: int) -> bytes:
    return encode_jpeg(crop_face(decode_image(data, where), crop, where), quality)


def source_kind(path: str) -> str:
    """``bin``, ``pack`` (a folder with ``train.rec`` or a ``.rec`` file) or ``folder`` (identity folders)."""
    if os.path.isfile(path) and path.endswith(".bin"):
        return "bin"
    if path.endswith(".rec") or os.path.isfile(os.path.join(path, "train.rec")):
        return "pack"
    if os.path.isdir(path):
        return "folder"
    raise InputError(f"{path}: not a .bin file, a RecordIO pack (a folder with train.rec, or a .rec) or a folder "
                     f"of identities")


def crop_bin(src: str, out: str, crop: Crop, quality: int = 95) -> Dict[str, Any]:
    """A ``.bin`` of pairs -> the same pairs (order and issame kept) of crops."""
    from .binfile import read_bin_raw, write_bin

    bins, issame = read_bin_raw(src)
    crops = [_crop_encoded(b, crop, f"{src}: image {i} (pair {i // 2})", quality)
             for i, b in enumerate(tqdm(bins, desc="crop", unit="img"))]
    with staged_file(out) as tmp:
        write_bin(tmp, crops, issame)
    return {"kind": "bin", "out": out, "images": len(crops), "pairs": len(issame)}


def crop_pack(src: str, out_dir: str, crop: Crop, quality: int = 95) -> Dict[str, Any]:
    """A labelled RecordIO pack -> an insightface pack of crops, every label kept, ``property`` with the crop's
    height and width."""
    from .record_dataset import RecordDataset
    from .recordio import unpack_payload, write_insightface_pack

    ds = RecordDataset(src, train=False)
    labels = ds.labels()
    images: List[Tuple[bytes, int]] = []
    try:
        for i in tqdm(range(len(ds)), desc="crop", unit="img"):
            key = int(ds.keys[i])
            where = ds._where(key)
            _, _, data = unpack_payload(ds.reader.read(key), where)
            images.append((_crop_encoded(data, crop, where, quality), int(labels[i])))
    finally:
        ds.reader.close()
    images.sort(key=lambda t: t[1])
    with staged_folder(out_dir) as tmp:
        write_insightface_pack(tmp, images, ds.num_classes, height=crop.height, width=crop.width)
        _write_record(tmp, src, crop)
    return {"kind": "pack", "out": out_dir, "images": len(images), "identities": ds.num_classes}


def crop_folder(src: str, out_dir: str, crop: Crop) -> Dict[str, Any]:
    """``src/<identity>/<image>`` -> ``out_dir/<identity>/<image stem>.png`` (lossless), identities kept."""
    from PIL import Image

    from .folder import load_image, scan_folder

    classes, samples = scan_folder(src)
    with staged_folder(out_dir) as tmp:
        for path, label in tqdm(samples, desc="crop", unit="img"):
            face = crop_face(load_image(path, size=None), crop, path)
            folder = os.path.join(tmp, classes[label])
            os.makedirs(folder, exist_ok=True)
            name = os.path.splitext(os.path.basename(path))[0] + ".png"
            Image.fromarray(face.transpose(1, 2, 0)).save(os.path.join(folder, name))
        _write_record(tmp, src, crop)
    return {"kind": "folder", "out": out_dir, "images": len(samples), "identities": len(classes)}


def _write_record(folder: str, src: str, crop: Crop) -> None:
    with open(os.path.join(folder, "crop.json"), "w", encoding="utf-8") as f:
        json.dump({"source": os.path.abspath(src), **crop.record()}, f, indent=1)


def crop_any(src: str, out: str, crop: Crop, quality: int = 95) -> Dict[str, Any]:
    """Whatever ``src`` is (:func:`source_kind`), the same kind of file of crops at ``out``."""
    kind = source_kind(src)
    result = (crop_bin(src, out, crop, quality) if kind == "bin" else crop_pack(src, out, crop, quality)
              if kind == "pack" else crop_folder(src, out, crop))
    logger.info("cropped %d images of %s (%s, box %s, %dx%d) into %s", result["images"], src, crop.region, crop.box,
                crop.width, crop.height, out)
    return {**result, "crop": crop.record()}


def crop_picture(faces: Sequence[np.ndarray], crop: Crop, path: str) -> str:
    """A PNG of a few aligned faces with the box drawn on each, and each crop beside its face (tiled by
    :func:`pocketnas.data.inspect.contact_sheet`)."""
    from PIL import Image, ImageDraw

    from .inspect import contact_sheet

    tiles = []
    for face in faces:
        im = Image.fromarray(np.ascontiguousarray(face.transpose(1, 2, 0))).resize((TEMPLATE_SIZE, TEMPLATE_SIZE))
        ImageDraw.Draw(im).rectangle(crop.box, outline=(255, 64, 64), width=2)
        cut = Image.fromarray(crop_face(face, crop).transpose(1, 2, 0))
        scale = min(TEMPLATE_SIZE / cut.width, TEMPLATE_SIZE / cut.height)
        cut = cut.resize((max(1, round(cut.width * scale)), max(1, round(cut.height * scale))))
        tile = Image.new("RGB", (2 * TEMPLATE_SIZE + 12, TEMPLATE_SIZE + 8), (255, 255, 255))
        tile.paste(im, (0, 0))
        tile.paste(cut, (TEMPLATE_SIZE + 4, (TEMPLATE_SIZE - cut.height) // 2))
        tiles.append(np.asarray(tile).transpose(2, 0, 1))
    return contact_sheet(np.stack(tiles), path, columns=min(4, len(tiles)))


def sample_faces(src: str, n: int = 8) -> List[np.ndarray]:
    """``n`` aligned faces spread over ``src`` (pack, folder or ``.bin``), 3 x H x W uint8, for :func:`crop_picture`."""
    if source_kind(src) == "bin":
        from .binfile import read_bin_raw

        bins, _ = read_bin_raw(src)
        picks = np.unique(np.linspace(0, len(bins) - 1, num=min(n, len(bins))).astype(int))
        return [decode_image(bins[i], f"{src}: image {i}") for i in picks.tolist()]
    from .face_sets import open_face_dataset

    faces = open_face_dataset(src, size=TEMPLATE_SIZE)
    picks = np.unique(np.linspace(0, len(faces) - 1, num=min(n, len(faces))).astype(int))
    return [faces.sample_uint8(i)[0] for i in picks.tolist()]
