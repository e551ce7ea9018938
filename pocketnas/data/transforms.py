"""Input normalisations (each model and teacher declares its own) and light image transforms."""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch

from ..errors import InputError

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
    """A Pillow image -> 3 x H x W uint8 RGB array (grey and RGBA images are converted; 16-bit grey, as 16-bit
    PNGs open, is scaled to 8 bits: Pillow's own conversion would clip it to white)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        if values.min() < 0 or values.max() > 65535:
            raise InputError(f"{image.mode} image with values {values.min():.0f}..{values.max():.0f}: not a 16-bit "
                             f"photograph; convert it to 8-bit RGB first")
        grey = np.rint(values * (255.0 / 65535.0)).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[None], 3, axis=0))
    if image.mode == "F":
        raise InputError("floating-point ('F' mode) image: convert it to 8-bit RGB first")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


def fit_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """N x 3 x H x W (uint8 or float) -> float N x 3 x size x size: unchanged values when the size already
    fits, else bilinear with antialiasing (one rule for every consumer of a view: student and teacher)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images if images.is_floating_point() else images.to(torch.float32)
    import torch.nn.functional as F

    return F.interpolate(images.to(torch.float32), size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)
