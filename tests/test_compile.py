"""torch.compile sees every registered network as one graph.

The trainer compiles the backbone for runs of 300 steps and more; a graph break inside a layer (a Python call dynamo
refuses to trace) silently splits the forward into one graph per cell and, past dynamo's recompile limit, back into
eager: a training then runs at eager speed with compilation's start-up cost on top. This happened once (the ONNX-export
check of pocketnas's own kernels was asked before ``torch.compiler.is_compiling()``: 35 graphs for PocketNetS-128).
``torch._dynamo.explain`` traces without compiling, so the check costs seconds.
"""
from __future__ import annotations

import pytest
import torch

import pocketnas
from pocketnas.models import list_models, model_cfg

# every concrete variant the trainer may compile; iResNet-100 is the same code as iResNet-18 at 5x the trace time
NAMES = [pytest.param(n, marks=pytest.mark.slow) if model_cfg(n).family == "iresnet" else n
         for n in list_models() if "generic" not in model_cfg(n).tags and n != "iresnet100"]


@pytest.mark.parametrize("name", NAMES)
def test_training_forward_is_one_graph(name):
    torch._dynamo.reset()
    model = pocketnas.create_model(name).train().to(memory_format=torch.channels_last)
    size = model_cfg(name).input_size
    x = torch.randn(2, 3, size, size).contiguous(memory_format=torch.channels_last)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, [str(r.reason)[:300] for r in explained.break_reasons]
    assert explained.graph_count == 1
