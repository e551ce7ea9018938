"""Squeeze-and-excitation (Hu, Shen, Sun, "Squeeze-and-Excitation Networks", CVPR 2018): channel gates from
globally pooled features; an option of PocketNet cells and iResNet blocks (as in Wei et al. 2019's compact face
networks)."""
from __future__ import annotations

import torch
import torch.nn as nn


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 4):
        super().__init__()
        hidden = max(min_hidden, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * w
