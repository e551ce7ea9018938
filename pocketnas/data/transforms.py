"""Input normalisations (each model and teacher declares its own) and light image transforms."""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch

from ..errors import InputError
from ..image_size import Size, as_hw

# name -> (mean, std) applied to RGB uint8 values: x_float = (x - mean) / std
NORMALISATIONS: Dict[str, Tuple[float, float]] = {
    "arcface": (127.5, 127.5),  # (x/255 - 0.5)/0.5: insightface ArcFace models, PocketNet
    "raw255": (0.0, 1.0),       # RGB 0..255 as is: e.g. OpenCV's SFace
}


def check_norm(name: str) -> str:
    if name not in NORMALISATIONS:
        raise InputError(f"unknown input normalisation {name!r} (known: {', '.join(NORMALISATIONS)})")
    return name


def normalize(images: torch.Tensor, norm: str = "arcface") -> torch.Tensor:
    """uint8 (or float 0..255) N x 3 x H x W RGB -> float32 model input under normalisation ``norm``."""
    mean, std = NORMALISATIONS[check_norm(norm)]
    x = images.to(torch.float32, copy=True)
    return x.sub_(mean).div_(std)

def pil_to_chw_uint8(image) -> np.ndarray:
    """A Pillow image -> 3 x H x W uint8 RGB array. Every mode is mapped by what its numbers mean, or refused:

    * 8-bit modes (grey, palette, RGBA, CMYK, YCbCr, ...): Pillow's conversion to RGB;
    * 16-bit grey (``I;16*``, as 16-bit PNGs open): scaled by 255/65535 (Pillow's conversion would clip to white);
    * 32-bit integer grey (``I``, e.g. TIFF): values within 0..255 are 8-bit data and kept, within 0..65535 scaled
      as 16-bit; anything else (negative, wider) is refused: no scale would be a guess;
    * floating-point grey (``F``): values within 0..1 scaled by 255, within 0..255 kept, else refused;
    * anything else (LAB, HSV, ...) refused with its mode named."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not (np.isfinite(low) and np.isfinite(high)) or low < 0:
            raise InputError(f"{mode} image with values {low:g}..{high:g}: not a photograph's range; convert it to "
                             f"8-bit RGB first")
        if mode == "F":
            scale = 255.0 if high <= 1.0 else (1.0 if high <= 255 else None)
        elif mode == "I":
            scale = 1.0 if high <= 255 else (255.0 / 65535.0 if high <= 65535 else None)
        else:
            scale = 255.0 / 65535.0
        if scale is None:
            raise InputError(f"{mode} image with values {low:g}..{high:g}: wider than 16 bits, no scale to 8 bits "
                             f"is certain; convert it to 8-bit RGB first")
        grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[None], 3, axis=0))
    if mode not in _RGB_CONVERTIBLE:
        raise InputError(f"{mode} image: pocketnas reads 8-bit grey, palette, RGB(A), CMYK, YCbCr and 16/32-bit "
                         f"grey; convert it to 8-bit RGB first")
    if mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


_RGB_CONVERTIBLE = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr")


def fit_size(images: torch.Tensor, size: Size) -> torch.Tensor:
    """N x 3 x H x W (uint8 or float) -> float N x 3 x h x w for ``size`` a side or (h, w): unchanged values when
    the size already fits, else bilinear with antialiasing (one rule for every consumer of a view: student and
    teacher)."""
    hw = as_hw(size)
    if tuple(images.shape[-2:]) == hw:
        return images if images.is_floating_point() else images.to(torch.float32)
    import torch.nn.functional as F

    return F.interpolate(images.to(torch.float32), size=hw, mode="bilinear", antialias=True,
                         align_corners=False)
