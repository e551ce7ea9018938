"""The weights that ship inside the package (``pocketnas/assets/weights/``), as timm's pretrained configurations:
the file, its sha256, what it was trained on and how, and what it measures. ``create_model(name, pretrained=True)``
reads a file after checking its sha256; ``pocketnas release`` writes one and prints the values to put here. pocketnas
never downloads weights. The card of each (data, recipe, figures, limits): docs/pretrained.md.
"""
from __future__ import annotations

from typing import Dict

from .registry import PretrainedCfg

CELEBA_LICENCE = ("weights trained on CelebA images (Liu et al., ICCV 2015; MMLAB, The Chinese University of Hong "
                  "Kong): non-commercial research use only")
CELEBA7K = ("celeba7k: 7,278 CelebA identities, 36,068 images aligned to the ArcFace template (no identity of LFW, "
            "celeba295 or the other evaluation sets)")
SFACE = "SFace (sface_fp32.onnx, 128-d, 99.45 % on LFW), function matching on consistent augmented views, w = 1000"

SHIPPED: Dict[str, PretrainedCfg] = {}
