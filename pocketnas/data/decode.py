"""Image decoding to RGB uint8 (Pillow), shared by every reader."""
from __future__ import annotations

import io
import struct
from typing import Optional, Tuple

import numpy as np

from ..image_size import Size, pil_size
from .errors import DataFormatError
from .transforms import pil_to_chw_uint8


# magic numbers of the image formats Pillow reads that face data comes in
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"RIFF", b"II*\x00", b"MM\x00*", b"GIF8", b"P5", b"P6",
          b"P2", b"P3")


def looks_like_image(data: bytes) -> bool:
    """A cheap test (no decoding) that ``data`` starts like an image file; a JPEG must also end like one (a
    truncated JPEG lacks its end marker)."""
    if not data or not data.startswith(_MAGIC):
        return False
    if data.startswith(b"\xff\xd8\xff"):
        return b"\xff\xd9" in data[-64:]
    return True


# the most pixels an image may have: a 50-megapixel phone photo fits, a decompression bomb (a small file that
# decodes to gigabytes) does not; checked from the header, before decoding
MAX_PIXELS = 64_000_000


def image_dimensions(data: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) from a JPEG, PNG, BMP or GIF header without decoding (None when the header does not say:
    other formats, or a header cut short)."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data.startswith(b"BM") and len(data) >= 26:
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if data.startswith(b"GIF8") and len(data) >= 10:
            return struct.unpack("<HH", data[6:10])
        if data.startswith(b"\xff\xd8"):
            pos = 2
            while pos + 9 < len(data):
                if data[pos] != 0xFF:
                    return None
                marker = data[pos + 1]
                if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
                    pos += 2
                    continue
                length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
                    h, w = struct.unpack(">HH", data[pos + 5:pos + 9])
                    return w, h
                pos += 2 + length
    except struct.error:
        return None
    return None


def check_pixels(width: int, height: int, where: str) -> None:
    """Refuse an image larger than :data:`MAX_PIXELS` (named by ``where``) before it is decoded."""
    if width * height > MAX_PIXELS:
        raise DataFormatError(f"{where}: {width} x {height} pixels, more than pocketnas decodes "
                              f"({MAX_PIXELS / 1e6:.0f} M): a decompression bomb, or not a face photo")


def decode_image(data: bytes, where: str, size: Optional[Size] = None) -> np.ndarray:
    """JPEG/PNG bytes -> 3 x H x W uint8 RGB; resized (bilinear) to ``size`` (a side or (height, width)) when given
    and different.
    An image over :data:`MAX_PIXELS` is refused from its header, before decoding."""
    from PIL import Image

    dims = image_dimensions(data)
    if dims:
        check_pixels(dims[0], dims[1], where)
    try:
        with Image.open(io.BytesIO(data)) as im:
            check_pixels(im.size[0], im.size[1], where)
            im.load()
            if size is not None and im.size != pil_size(size):
                im = im.resize(pil_size(size), Image.BILINEAR)
            return pil_to_chw_uint8(im)
    except DataFormatError:
        raise
    except Exception as e:  # Pillow raises several types for damaged data
        raise DataFormatError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from None


def encode_jpeg(image_chw: np.ndarray, quality: int = 95) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image_chw.transpose(1, 2, 0))).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
