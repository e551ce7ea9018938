"""Losses: margins (ArcFace, CosFace, combined), the normalised classifier head, and distillation pieces."""
from .distill import DISTILL_LOSSES, build_distill_loss
from .heads import MarginHead, NormalizedLinear
from .margins import MARGINS, ArcFaceMargin, CombinedMargin, CosFaceMargin, build_margin

__all__ = ["MARGINS", "ArcFaceMargin", "CosFaceMargin", "CombinedMargin", "build_margin", "NormalizedLinear",
           "MarginHead", "DISTILL_LOSSES", "build_distill_loss"]
