"""The classifier head between embedding and margin: cosine similarity to learned class centres."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class NormalizedLinear(nn.Module):
    """cos(theta_j) = <x / |x|, W_j / |W_j|>; class centres initialised N(0, 0.01) as PocketNet's release."""

    def __init__(self, embedding_size: int, num_classes: int, std: float = 0.01):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size).normal_(0.0, std))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(self.weight.float(), dim=1))


class MarginHead(nn.Module):
    """normalised linear -> margin -> (logits); the loss is plain cross-entropy on what this returns."""

    def __init__(self, embedding_size: int, num_classes: int, margin: nn.Module):
        super().__init__()
        self.fc = NormalizedLinear(embedding_size, num_classes)
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.margin(self.fc(embeddings), labels)
