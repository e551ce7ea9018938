"""Distillation losses as small registered pieces (in the manner of torchdistill), configured by name.

* ``embedding``: PocketNet's KD (Boutros et al., IEEE Access 2022, eq. 6): w * MSE(student / |student|,
  teacher / |teacher|). When the embedding sizes differ, a learned linear projection maps the student's embedding
  to the teacher's size first (and the trainer says so in the log).
* ``hint``: FitNets (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015) as used for face recognition by
  Wei et al. ("Efficient Face Recognition Algorithm Based on Mobile Device", 2019): w * MSE(adapter(student map),
  teacher map) for chosen pairs of intermediate feature maps; each adapter is a 1x1 conv + BN from the student's
  channels to the teacher's, with average pooling when the maps differ in size.
"""
from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import Registry

DISTILL_LOSSES: Registry[Any] = Registry("distillation loss")


@DISTILL_LOSSES.register("embedding")
class EmbeddingKD(nn.Module):
    def __init__(self, student_dim: int, teacher_dim: int, weight: float = 100.0):
        super().__init__()
        self.weight = float(weight)
        self.projection = nn.Linear(student_dim, teacher_dim, bias=False) if student_dim != teacher_dim else None

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s = student.float() if self.projection is None else self.projection(student.float())
        return self.weight * F.mse_loss(F.normalize(s, dim=1), F.normalize(teacher.float(), dim=1))


class HintAdapter(nn.Module):
    def __init__(self, c_student: int, c_teacher: int):
        super().__init__()
        self.conv = nn.Conv2d(c_student, c_teacher, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_teacher)

    def forward(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        x = self.bn(self.conv(x))
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.adaptive_avg_pool2d(x, size)
        return x


@DISTILL_LOSSES.register("hint")
class HintKD(nn.Module):
    def __init__(self, channels: Sequence[Tuple[int, int]], weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)
        self.adapters = nn.ModuleList(HintAdapter(cs, ct) for cs, ct in channels)

    def forward(self, student_maps: List[torch.Tensor], teacher_maps: List[torch.Tensor]) -> torch.Tensor:
        total = student_maps[0].new_zeros((), dtype=torch.float32)
        for adapter, s, t in zip(self.adapters, student_maps, teacher_maps):
            if s.shape[-1] < t.shape[-1]:
                t = F.adaptive_avg_pool2d(t, s.shape[-2:])
            total = total + F.mse_loss(adapter(s.float(), t.shape[-2:]), t.float())
        return self.weight * total / len(self.adapters)


def build_distill_loss(name: str, **kwargs: Any) -> nn.Module:
    return DISTILL_LOSSES.get(name)(**kwargs)
