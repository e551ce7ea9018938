import math

import pytest
import torch
import torch.nn.functional as F

from pocketnas.losses import MarginHead, build_distill_loss, build_margin
from pocketnas.losses.heads import NormalizedLinear


def test_arcface_by_hand():
    cos = torch.tensor([[0.5, 0.2], [-0.9, 0.1]])
    labels = torch.tensor([0, 0])
    out = build_margin("arcface", s=64.0, m=0.5)(cos, labels)
    theta = math.acos(0.5)
    assert out[0, 0].item() == pytest.approx(64 * math.cos(theta + 0.5), rel=1e-5)
    assert out[0, 1].item() == pytest.approx(64 * 0.2, rel=1e-6)  # non-target logits keep their cosine
    # theta + m past pi: the original's continuation cos(theta) - m sin(m)... as insightface: cos - sin(pi-m)*m
    assert out[1, 0].item() == pytest.approx(64 * (-0.9 - math.sin(math.pi - 0.5) * 0.5), rel=1e-5)


def test_cosface_and_combined_by_hand():
    cos = torch.tensor([[0.7, -0.3]])
    y = torch.tensor([1])
    assert build_margin("cosface", s=30.0, m=0.35)(cos, y)[0].tolist() == pytest.approx([21.0, 30 * (-0.3 - 0.35)])
    out = build_margin("combined", s=10.0, m1=1.2, m2=0.1, m3=0.05)(cos, y)
    assert out[0, 1].item() == pytest.approx(10 * (math.cos(1.2 * math.acos(-0.3) + 0.1) - 0.05), rel=1e-5)
    # (1, m, 0) is ArcFace exactly, everywhere
    c = torch.linspace(-1, 1, 201).view(-1, 1).repeat(1, 2)
    y0 = torch.zeros(201, dtype=torch.long)
    assert torch.allclose(build_margin("combined", s=64, m1=1, m2=0.5, m3=0)(c, y0),
                          build_margin("arcface", s=64, m=0.5)(c, y0), atol=1e-4)


@pytest.mark.parametrize("name,kw", [("arcface", {}), ("cosface", {}), ("combined", {"m1": 1.35, "m2": 0.0}),
                                     ("combined", {"m1": 1.0, "m2": 0.3, "m3": 0.2}), ("softmax", {})])
def test_no_nan_or_inf_anywhere(name, kw):
    margin = build_margin(name, **kw)
    # exactly +-1 (an embedding on its class centre), beyond (rounding), zero, and fp16 inputs
    cos = torch.tensor([[1.0, -1.0, 0.0, 1.0000001, -1.0000001, 0.3]] * 6, requires_grad=True)
    labels = torch.arange(6)
    logits = margin(cos, labels)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    assert torch.isfinite(logits).all() and torch.isfinite(loss) and torch.isfinite(cos.grad).all()
    half = margin(cos.detach().half(), labels)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    # the target logit never increases with the angle (monotonic: no reward for moving away)
    c = torch.linspace(-1, 1, 2001).view(-1, 1).repeat(1, 2)
    t = margin(c, torch.zeros(2001, dtype=torch.long))[:, 0]
    assert (t[1:] >= t[:-1] - 1e-3).all()


def test_head_gradients_through_an_embedding_on_its_centre():
    head = MarginHead(8, 3, build_margin("arcface"))
    emb = head.fc.weight.detach()[1:2].clone().requires_grad_(True)  # cos = 1 exactly for class 1
    loss = F.cross_entropy(head(emb, torch.tensor([1])), torch.tensor([1]))
    loss.backward()
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.fc.weight.grad).all()


def test_class_centres_initialised_like_the_release():
    w = NormalizedLinear(128, 5000).weight
    assert abs(w.mean().item()) < 1e-3 and w.std().item() == pytest.approx(0.01, rel=0.02)


def test_embedding_kd_formula_and_projection():
    s, t = torch.randn(4, 16), torch.randn(4, 16)
    kd = build_distill_loss("embedding", student_dim=16, teacher_dim=16, weight=100.0)
    expected = 100 * ((s / s.norm(dim=1, keepdim=True) - t / t.norm(dim=1, keepdim=True)) ** 2).mean()
    assert kd(s, t).item() == pytest.approx(expected.item(), rel=1e-5)
    assert kd(t, t).item() == pytest.approx(0.0, abs=1e-7)
    proj = build_distill_loss("embedding", student_dim=16, teacher_dim=32)
    assert proj.projection is not None and proj(s, torch.randn(4, 32)).item() > 0


def test_hint_kd_handles_sizes():
    hint = build_distill_loss("hint", channels=[(8, 16), (4, 32)], weight=2.0)
    loss = hint([torch.randn(2, 8, 14, 14), torch.randn(2, 4, 7, 7)],
                [torch.randn(2, 16, 14, 14), torch.randn(2, 32, 14, 14)])
    assert loss.ndim == 0 and loss.item() > 0
