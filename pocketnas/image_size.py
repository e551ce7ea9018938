"""Input sizes of networks and images: one square side (``112``) or a (height, width) pair (``(48, 96)``).

Faces are square crops of the ArcFace template; periocular bands are not (``pocketnas data crop``), so every
place that sizes an image takes either form. Code reads sizes through :func:`as_hw`; what is written down (a
checkpoint header, a config, a report) goes through :func:`recorded`, which keeps the plain integer for a square
so that files written before non-square inputs existed read back unchanged.
"""
from __future__ import annotations

from typing import Any, List, Sequence, Tuple, Union

from .errors import InputError

Size = Union[int, Tuple[int, int]]
HW = Tuple[int, int]

__all__ = ["HW", "Size", "as_hw", "hw_text", "input_hw", "is_size", "pil_size", "px_text", "recorded", "shape_hw"]


def is_size(value: Any) -> bool:
    """True for a positive int or a sequence of two positive ints (bools are not sizes)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value > 0
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    return False


def as_hw(size: Union[Size, Sequence[int]], what: str = "input size") -> HW:
    """``112`` -> ``(112, 112)``; ``(48, 96)`` or ``[48, 96]`` -> ``(48, 96)`` (height, width)."""
    if not is_size(size):
        raise InputError(f"{what} must be a positive integer or [height, width], got {size!r}")
    if isinstance(size, int):
        return int(size), int(size)
    return int(size[0]), int(size[1])


def recorded(size: Union[Size, Sequence[int]]) -> Union[int, List[int]]:
    """How a size is written down: the integer for a square, ``[height, width]`` otherwise."""
    h, w = as_hw(size)
    return h if h == w else [h, w]


def hw_text(size: Union[Size, Sequence[int]]) -> str:
    """``112`` -> ``"112x112"``, ``(48, 96)`` -> ``"48x96"`` (height x width, as a tensor's last two sides)."""
    h, w = as_hw(size)
    return f"{h}x{w}"


def px_text(size: Union[Size, Sequence[int]]) -> str:
    """How a log line names a size in pixels: ``"112"`` for a square, ``"32x64"`` (height x width) otherwise."""
    h, w = as_hw(size)
    return str(h) if h == w else f"{h}x{w}"


def pil_size(size: Union[Size, Sequence[int]]) -> Tuple[int, int]:
    """The (width, height) Pillow's ``resize`` and ``Image.size`` use."""
    h, w = as_hw(size)
    return w, h


def shape_hw(shape: Sequence[Any], default: int = 112) -> HW:
    """The (height, width) of a declared N x C x H x W input shape (an ONNX graph's), where a side left symbolic
    (a string or None) takes ``default``."""
    return tuple(int(s) if isinstance(s, int) and s > 0 else default for s in shape[-2:])  # type: ignore[return-value]


def input_hw(model: Any, default: int = 112) -> HW:
    """The (height, width) a network or embedder takes, from its ``input_size`` (``default`` when it has none)."""
    return as_hw(getattr(model, "input_size", default) or default)
