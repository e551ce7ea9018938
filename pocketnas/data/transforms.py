"""Input normalisations (each model and teacher declares its own) and light image transforms."""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch

# name -> (mean, std) applied to RGB uint8 values: x_float = (x - mean) / std
NORMALISATIONS: Dict[str, Tuple[float, float]] = {
    "arcface": (127.5, 127.5),  # (x/255 - 0.5)/0.5: insightface ArcFace models, PocketNet
    "raw255": (0.0, 1.0),       # RGB 0..255 as is: e.g. OpenCV's SFace
}


def check_norm(name: str) -> str:
    if name not in NORMALISATIONS:
        raise ValueError(f"unknown input normalisation {name!r} (known: {', '.join(NORMALISATIONS)})")
    return name


def normalize(images: torch.Tensor, norm: str = "arcface") -> torch.Tensor:
    """uint8 (or float 0..255) N x 3 x H x W RGB -> float32 model input under normalisation ``norm``."""
    mean, std = NORMALISATIONS[check_norm(norm)]
    x = images.to(torch.float32, copy=True)
    return x.sub_(mean).div_(std)

def pil_to_chw_uint8(image) -> np.ndarray:
    """A Pillow image -> 3 x H x W uint8 RGB array (grey and RGBA images are converted)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
