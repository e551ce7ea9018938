"""Intermediate feature maps of any model by module name (forward hooks), for hint distillation."""
from __future__ import annotations

import difflib
from typing import Dict, List, Sequence

import torch
import torch.nn as nn

from ..errors import UnknownNameError
from ..image_size import Size, as_hw


class FeatureTap:
    """Records the outputs of the named submodules on every forward pass: ``tap.maps`` after a call."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        modules = dict(model.named_modules())
        self.names = list(names)
        self.maps: Dict[str, torch.Tensor] = {}
        self._handles = []
        for name in self.names:
            if name not in modules:
                close = difflib.get_close_matches(name, list(modules), n=4)
                raise UnknownNameError(f"{type(model).__name__} has no module {name!r}"
                               + (f"; did you mean {', '.join(close)}?" if close else ""))
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(module, inputs, output):
            self.maps[name] = output

        return hook

    def collect(self) -> List[torch.Tensor]:
        maps = [self.maps[n] for n in self.names]
        self.maps = {}
        return maps

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@torch.no_grad()
def feature_channels(model: nn.Module, names: Sequence[str], input_size: Size = 112) -> List[int]:
    """Channel counts of the named maps (one forward pass on the meta device, nothing computed)."""
    import copy

    probe = copy.deepcopy(model).to("meta").eval()
    tap = FeatureTap(probe, names)
    probe(torch.zeros(1, 3, *as_hw(input_size), device="meta"))
    return [m.shape[1] for m in tap.collect()]
