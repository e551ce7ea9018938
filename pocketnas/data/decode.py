"""Image decoding to RGB uint8 (Pillow), shared by every reader."""
from __future__ import annotations

import io
from typing import Optional

import numpy as np

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


def decode_image(data: bytes, where: str, size: Optional[int] = None) -> np.ndarray:
    """JPEG/PNG bytes -> 3 x H x W uint8 RGB; resized (bilinear) to ``size`` x ``size`` when given and different."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return pil_to_chw_uint8(im)
    except Exception as e:  # Pillow raises several types for damaged data
        raise DataFormatError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from None


def encode_jpeg(image_chw: np.ndarray, quality: int = 95) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image_chw.transpose(1, 2, 0))).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
