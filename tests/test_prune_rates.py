"""Pruning at each method and rate on PocketNetS-128 (apart from tests/test_compress.py, whose trained network and
command-line runs fill one pytest-xdist worker on their own)."""
import numpy as np
import pytest
import torch

import pocketnas
from pocketnas.compress.prune import METHODS, gradient_scores, make_permanent, prune_model, sparsity
from pocketnas.compress.run import gradient_batches
from pocketnas.data import orl_root
from pocketnas.models.calibrate import calibrate_batchnorm


@pytest.fixture(scope="module")
def s128(orl_faces):
    torch.manual_seed(0)
    model = pocketnas.create_model("pocketnet_s_128")
    calibrate_batchnorm(model, orl_faces[0][::4].split(50))
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("rate", [2, 8, 16])
def test_each_method_reaches_the_rate(method, rate, s128):
    import copy

    model = copy.deepcopy(s128)
    scores = None
    if method.endswith("grad"):
        batches, classes = gradient_batches(orl_root(), 112, "arcface", batches=2, batch_size=16)
        scores = gradient_scores(model, batches, classes)
    report = prune_model(model, method, rate, scores)
    measured = sparsity(make_permanent(model))  # counted from the zeros of the final weights
    assert abs(measured.compression - rate) / rate < 0.01
    assert measured.prunable_nonzero == report.prunable_nonzero
    assert "BatchNorm2d" in measured.dense and "PReLU" in measured.dense
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.affine]
    assert all((m.weight != 0).all() for m in bn)  # BatchNorm left dense


@pytest.mark.slow
def test_layerwise_prunes_every_layer_alike_and_global_does_not(s128):
    import copy

    layer = copy.deepcopy(s128)
    prune_model(layer, "layer_weight", 4)
    fractions = np.array(list(sparsity(layer).per_layer.values()))
    assert np.allclose(fractions, 0.75, atol=0.02)
    glob = copy.deepcopy(s128)
    prune_model(glob, "global_weight", 4)
    g = np.array(list(sparsity(glob).per_layer.values()))
    assert g.std() > 0.05 and abs(sparsity(glob).compression - 4) < 0.04


@pytest.mark.slow
def test_gradient_scores_differ_from_magnitudes(s128):
    import copy

    batches, classes = gradient_batches(orl_root(), 112, "arcface", batches=2, batch_size=16)
    a, b = copy.deepcopy(s128), copy.deepcopy(s128)
    prune_model(a, "global_weight", 4)
    prune_model(b, "global_grad", 4, gradient_scores(b, batches, classes))
    ma = torch.cat([m.weight_mask.flatten() for m in a.modules() if hasattr(m, "weight_mask")])
    mb = torch.cat([m.weight_mask.flatten() for m in b.modules() if hasattr(m, "weight_mask")])
    assert not torch.equal(ma, mb) and ma.sum() == mb.sum()
