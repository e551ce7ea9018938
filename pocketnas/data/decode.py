"""Image decoding to RGB uint8 (Pillow), shared by every reader."""
from __future__ import annotations

import io
from typing import Optional

import numpy as np

from .errors import DataFormatError
from .transforms import pil_to_chw_uint8


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
