"""argparse types that check a number where it enters (issue 39): a bad value is refused by the parser with one
line naming the option and the value, before any file is read or written.

Each type is a small callable with a readable ``__name__`` (argparse prints it: "invalid positive integer value:
'0'")."""
from __future__ import annotations

import argparse
import math
from typing import Callable, Optional


def _number(kind: type, name: str, low: Optional[float] = None, high: Optional[float] = None,
            low_open: bool = False, what: str = "") -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {what}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{text!r}: must be {what}")
        return value

    parse.__name__ = name
    return parse


positive_int = _number(int, "positive integer", 1, what="a positive integer (1 or more)")
nonnegative_int = _number(int, "non-negative integer", 0, what="0 or more")
finite_float = _number(float, "finite number")
positive_float = _number(float, "positive number", 0.0, low_open=True, what="above 0")
nonnegative_float = _number(float, "non-negative number", 0.0, what="0 or more")
fraction = _number(float, "fraction", 0.0, 1.0, what="between 0 and 1")
cosine = _number(float, "cosine", -1.0, 1.0, what="a cosine, between -1 and 1")
compression_rate = _number(float, "compression rate", 1.0, low_open=True,
                           what="above 1 (prunable weights / remaining weights: 8 keeps one in eight)")
jpeg_quality = _number(int, "JPEG quality", 1, 100, what="between 1 and 100")
image_side = _number(int, "image side", 8, 4096, what="between 8 and 4096 pixels")
size_or_keep = _number(int, "image side", 0, 4096, what="0 (keep the size) or a side up to 4096 pixels")


def width_height(text: str):
    """``WxH`` (e.g. 96x48): an image size that need not be square, each side 8 to 4096 pixels."""
    parts = text.lower().split("x")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"{text!r}: give WIDTHxHEIGHT, e.g. 96x48")
    return tuple(image_side(p) for p in parts)


width_height.__name__ = "WIDTHxHEIGHT size"


def opset(text: str) -> int:
    """An ONNX opset that torch's exporter writes and ONNX Runtime runs (checked against the installed torch)."""
    value = nonnegative_int(text)
    low, high = 9, _max_opset()
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{text!r}: the ONNX opset must lie in {low}..{high} (this torch's "
                                         f"exporter; 17 is the default)")
    return value


opset.__name__ = "ONNX opset"


def _max_opset() -> int:
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET  # a private constant: fall back when it moves
        return int(ONNX_MAX_OPSET)
    except Exception:  # pragma: no cover
        return 20
