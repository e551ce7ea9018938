"""Augmented views of aligned faces for "consistent" distillation (Beyer et al., "Knowledge distillation: A good
teacher is patient and consistent", CVPR 2022): teacher and student see the same view, so the teacher's targets
change with every view instead of repeating.

The geometric part stays within what alignment tolerates (the ArcFace template puts the eyes at fixed pixels, and
a verifier is tested on aligned crops): a crop of 80-100 % of the area with a near-square aspect, shifted by a few
per cent, resized back to the full size; then a mirror, brightness, contrast and saturation changes and
occasionally grey. Every parameter comes from a :class:`numpy.random.Generator` the caller seeds, so a view is a
function of (seed, image, view number) and a resumed run sees exactly the views the uninterrupted one saw.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

# ITU-R 601 luma weights (as Pillow's convert("L"))
_LUMA = np.asarray([0.299, 0.587, 0.114], dtype=np.float32).reshape(3, 1, 1)


@dataclass(frozen=True)
class FaceViewAugment:
    scale: Tuple[float, float] = (0.80, 1.0)      # crop area / image area
    ratio: Tuple[float, float] = (0.92, 1.08)     # crop width / height
    shift: float = 0.05                           # largest centre shift, as a fraction of the side
    flip: float = 0.5                             # probability of a mirror
    brightness: float = 0.25                      # factor drawn from [1 - b, 1 + b]
    contrast: float = 0.25
    saturation: float = 0.25
    grey: float = 0.1                             # probability of a grey view

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"view scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"view ratio must satisfy 0 < low <= high, got {self.ratio}")
        for name in ("shift", "flip", "brightness", "contrast", "saturation", "grey"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"view {name} must lie in [0, 1], got {getattr(self, name)}")

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """3 x S x S uint8 RGB -> a view of the same shape and type."""
        from PIL import Image

        _, h, w = image.shape
        area = rng.uniform(*self.scale) * h * w
        ratio = np.exp(rng.uniform(np.log(self.ratio[0]), np.log(self.ratio[1])))
        cw = min(w, np.sqrt(area * ratio))
        ch = min(h, np.sqrt(area / ratio))
        cx = w / 2 + rng.uniform(-self.shift, self.shift) * w
        cy = h / 2 + rng.uniform(-self.shift, self.shift) * h
        cx = float(np.clip(cx, cw / 2, w - cw / 2))
        cy = float(np.clip(cy, ch / 2, h - ch / 2))
        box = (cx - cw / 2, cy - ch / 2, cx + cw / 2, cy + ch / 2)
        im = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
        im = im.transform((w, h), Image.Transform.EXTENT, box, Image.Resampling.BILINEAR)
        x = np.asarray(im, dtype=np.float32).transpose(2, 0, 1)
        if rng.random() < self.flip:
            x = x[:, :, ::-1]
        b = rng.uniform(1 - self.brightness, 1 + self.brightness)
        c = rng.uniform(1 - self.contrast, 1 + self.contrast)
        s = rng.uniform(1 - self.saturation, 1 + self.saturation)
        grey_view = rng.random() < self.grey
        x = x * b
        luma = (x * _LUMA).sum(0, keepdims=True)
        x = (x - luma.mean()) * c + luma.mean()
        luma = (x * _LUMA).sum(0, keepdims=True)
        x = luma + (x - luma) * s
        if grey_view:
            x = np.repeat((x * _LUMA).sum(0, keepdims=True), 3, axis=0)
        return np.ascontiguousarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))


def mixup(images: np.ndarray, rng: np.random.Generator, alpha: float = 1.0) -> np.ndarray:
    """Each image mixed with another of the batch (a random pairing), weight drawn from Beta(alpha, alpha) per
    pair (Zhang et al., ICLR 2018; Beyer et al. 2022 use it for function matching): N x 3 x S x S uint8 in and
    out."""
    n = len(images)
    partner = rng.permutation(n)
    lam = rng.beta(alpha, alpha, size=(n, 1, 1, 1)).astype(np.float32)
    mixed = lam * images.astype(np.float32) + (1 - lam) * images[partner].astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
