"""Every registered piece, tested by walking its registry (issue 40): a new operation, activation, margin or model
is covered without editing this file."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pocketnas
from pocketnas.layers import ACTIVATIONS, OPS, activation, make_op
from pocketnas.losses.margins import MARGINS, build_margin

BIG = {"iresnet50", "iresnet100"}  # tens of millions of parameters: their gradient and round trip run with --run-slow


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", OPS.names())
def test_every_operation_keeps_shape_and_trains(name, stride):
    torch.manual_seed(0)
    op = make_op(name, 8, stride)
    x = torch.randn(2, 8, 14, 14, requires_grad=True)
    y = op(x)
    assert y.shape == (2, 8, 14 // stride, 14 // stride)
    if name == "none":
        assert not y.abs().sum()
        return
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in op.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: {pname} got no gradient"


@pytest.mark.onnx
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", [n for n in OPS.names() if n != "none"])
def test_every_operation_exports_to_onnx_and_agrees(name, stride, tmp_path):
    import numpy as np
    import onnxruntime as ort

    op = make_op(name, 8, stride).eval()
    x = torch.randn(2, 8, 14, 14)
    path = str(tmp_path / "op.onnx")
    torch.onnx.export(op, (x,), path, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        assert np.allclose(got, op(x).numpy(), atol=1e-4)


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_every_activation_builds_and_passes_gradients(name):
    act = activation(name, 4)
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    act(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", MARGINS.names())
def test_every_margin_penalises_only_the_target_class(name):
    margin = build_margin(name, s=10.0)
    cosine = torch.tensor([[0.6, 0.2, -0.1], [0.1, 0.7, 0.3]], requires_grad=True)
    labels = torch.tensor([0, 1])
    logits = margin(cosine, labels)
    assert logits.shape == cosine.shape and torch.isfinite(logits).all()
    plain = 10.0 * cosine.detach()
    target = torch.nn.functional.one_hot(labels, 3).bool()
    assert torch.allclose(logits.detach()[~target], plain[~target])  # the other classes: scaled cosine only
    assert (logits.detach()[target] <= plain[target] + 1e-6).all()  # the target: never easier than without
    F.cross_entropy(logits, labels).backward()
    assert torch.isfinite(cosine.grad).all()


def _models():
    return [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in pocketnas.list_models()]


@pytest.mark.parametrize("name", _models())
def test_every_model_trains_every_parameter_and_round_trips(name, tmp_path, orl_faces):
    images, labels = orl_faces
    torch.manual_seed(0)
    model = pocketnas.create_model(name).train()
    x = images[:4]
    model(x).square().mean().backward()
    missing = [n for n, p in model.named_parameters()  # frozen ones (iResNet's embedding BN scale) excepted
               if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, f"{name}: no (finite) gradient for {missing[:5]}"
    path = str(tmp_path / "m.pt")
    pocketnas.save(model.eval(), path)
    again = pocketnas.load(path)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
