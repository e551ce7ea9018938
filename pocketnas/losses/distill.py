"""Distillation losses as small registered pieces (in the manner of torchdistill), configured by name.

* ``embedding``: PocketNet's KD (Boutros et al., IEEE Access 2022, eq. 6): w * MSE(student / |student|,
  teacher / |teacher|). When the embedding sizes differ, a learned linear projection maps the student's embedding
  to the teacher's size first (and the trainer says so in the log).
* ``rkd``: relational KD (Park et al., "Relational Knowledge Distillation", CVPR 2019, eqs. 4-8): the student's
  pairwise distances (each divided by their batch mean) and the angles of its triplets match the teacher's under
  the Huber loss, w * (25 * distance + 50 * angle) with the paper's weights. Computed on L2-normalised
  embeddings (verification compares directions), so no shared coordinate frame or embedding size is needed.
* ``sp``: similarity-preserving KD (Tung and Mori, ICCV 2019, eq. 2-4): the row-normalised batch similarity
  matrices of student and teacher agree, w * ||G_s - G_t||_F^2 / b^2 (on normalised embeddings, G is the batch's
  cosine matrix).
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
    inputs = "embedding"   # what of the teacher it needs: its embeddings ("embedding") or feature maps ("maps")
    weight_key = "kd_weight"  # the training config's key for its weight

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


@DISTILL_LOSSES.register("rkd")
class RelationalKD(nn.Module):
    inputs = "embedding"
    weight_key = "rkd_weight"

    def __init__(self, student_dim: int = 0, teacher_dim: int = 0, weight: float = 1.0,
                 distance_weight: float = 25.0, angle_weight: float = 50.0):
        super().__init__()
        self.weight, self.distance_weight, self.angle_weight = float(weight), distance_weight, angle_weight

    @staticmethod
    def _distances(e: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(e, e).clamp_min(1e-12)
        off = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
        return d / d[off].mean()

    @staticmethod
    def _angles(e: torch.Tensor) -> torch.Tensor:
        diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [j, i] = unit vector e_i - e_j
        return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)           # cos of angle i-j-k, per j

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s, t = F.normalize(student.float(), dim=1), F.normalize(teacher.float(), dim=1).detach()
        loss = self.distance_weight * F.smooth_l1_loss(self._distances(s), self._distances(t))
        loss = loss + self.angle_weight * F.smooth_l1_loss(self._angles(s), self._angles(t))
        return self.weight * loss


@DISTILL_LOSSES.register("sp")
class SimilarityPreservingKD(nn.Module):
    inputs = "embedding"
    weight_key = "sp_weight"

    def __init__(self, student_dim: int = 0, teacher_dim: int = 0, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s, t = F.normalize(student.float(), dim=1), F.normalize(teacher.float(), dim=1).detach()
        gs, gt = F.normalize(s @ s.T, dim=1), F.normalize(t @ t.T, dim=1)
        return self.weight * (gs - gt).pow(2).sum() / len(s) ** 2


@DISTILL_LOSSES.register("hint")
class HintKD(nn.Module):
    inputs = "maps"
    weight_key = "hint_weight"

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
