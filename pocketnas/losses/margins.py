"""Additive margins on cosine logits, each a small module ``(cosine N x C, labels N) -> scaled logits N x C``.

* ArcFace (Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019, eq. 3):
  the target logit becomes s * cos(theta + m); where theta + m would pass pi the curve continues as
  s * (cos(theta) - m sin(m)) so the logit stays monotonic in theta (insightface's ``th``/``mm``).
* CosFace (Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition", CVPR 2018, eq. 4):
  s * (cos(theta) - m).
* Combined (insightface): s * (cos(m1 theta + m2) - m3); (1, 0.5, 0) is ArcFace, (1, 0, 0.35) CosFace,
  (1.35, 0, 0) SphereFace-like.

Numerics: the release clamps the cosine to 1 + 1e-5 and takes sqrt(1 - cos^2), which is NaN for cos > 1 and has an
infinite gradient at |cos| = 1. Here the cosine is clamped strictly inside (-1, 1) and everything is computed in
float32, so no input (and no gradient) is NaN or infinite, under autocast too.
"""
from __future__ import annotations

import math
from typing import Any, Dict

import torch
import torch.nn as nn

from ..errors import InputError
from ..registry import Registry

MARGINS: Registry[Any] = Registry("margin")
_EPS = 1e-6


def _safe_cos(cosine: torch.Tensor) -> torch.Tensor:
    return cosine.float().clamp(-1.0 + _EPS, 1.0 - _EPS)


def _target_mask(cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(cosine, dtype=torch.bool).scatter_(1, labels.view(-1, 1).long(), True)


@MARGINS.register("arcface")
class ArcFaceMargin(nn.Module):
    def __init__(self, s: float = 64.0, m: float = 0.5):
        super().__init__()
        if not 0 <= m < math.pi / 2:
            raise InputError(f"ArcFace margin m must lie in [0, pi/2), got {m}")
        self.s, self.m = float(s), float(m)
        self.cos_m, self.sin_m = math.cos(m), math.sin(m)
        self.th = math.cos(math.pi - m)
        self.mm = math.sin(math.pi - m) * m

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = _safe_cos(cosine)
        sin = torch.sqrt(1.0 - cos * cos)
        phi = cos * self.cos_m - sin * self.sin_m
        phi = torch.where(cos > self.th, phi, cos - self.mm)
        return self.s * torch.where(_target_mask(cos, labels), phi, cos)


@MARGINS.register("cosface")
class CosFaceMargin(nn.Module):
    def __init__(self, s: float = 64.0, m: float = 0.35):
        super().__init__()
        self.s, self.m = float(s), float(m)

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = cosine.float()
        return self.s * (cos - self.m * _target_mask(cos, labels).float())


@MARGINS.register("combined")
class CombinedMargin(nn.Module):
    """s * (cos(m1 theta + m2) - m3). Past the angle where m1 theta + m2 reaches pi the target continues as the
    plain cosine shifted down to meet it there (for (1, m, 0) exactly ArcFace's continuation)."""

    def __init__(self, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0):
        super().__init__()
        if m1 <= 0:
            raise InputError(f"combined margin m1 must be positive, got {m1}")
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        self.limit = (math.pi - self.m2) / self.m1  # the angle where m1 theta + m2 = pi
        if self.m1 == 1.0 and self.m3 == 0.0:
            self.shift = math.sin(math.pi - self.m2) * self.m2  # ArcFace's mm
        else:
            self.shift = math.cos(min(self.limit, math.pi)) + 1.0 + self.m3

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = _safe_cos(cosine)
        theta = torch.acos(cos)
        target = torch.cos(self.m1 * theta + self.m2) - self.m3
        target = torch.where(theta <= self.limit, target, cos - self.shift)
        return self.s * torch.where(_target_mask(cos, labels), target, cos)


@MARGINS.register("softmax")
class NoMargin(nn.Module):
    """Normalised softmax (cosine logits times a scale, no margin). Not the search's default: that is an
    unnormalised linear classifier (``loss: linear`` in a search recipe)."""

    def __init__(self, s: float = 64.0):
        super().__init__()
        self.s = float(s)

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.s * cosine.float()


def build_margin(name: str, **kwargs: Any) -> nn.Module:
    cls = MARGINS.get(name)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise InputError(f"margin {name!r}: {e}") from None


def margin_kwargs(name: str, cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The subset of a flat config (margin_s, margin_m, margin_m1 ...) a margin takes: read from the registered
    class's own constructor, so a new margin needs no list here (its arguments are ``margin_<arg>`` settings)."""
    import inspect

    params = inspect.signature(MARGINS.get(name).__init__).parameters
    names = [p for p in params if p != "self" and params[p].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    return {k: cfg[f"margin_{k}"] for k in names if cfg.get(f"margin_{k}") is not None}
