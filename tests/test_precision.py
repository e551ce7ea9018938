"""precision: auto | fp32 | bf16 | fp16 for training and search: float32 master weights and losses, bf16 steps that
agree with float32 to bf16 rounding, and a resumed run that keeps its precision."""
import os

import pytest
import torch

from pocketnas.config import ConfigError
from pocketnas.engine.precision import resolve_precision
from pocketnas.engine.search import search
from pocketnas.engine.trainer import StudentModule, train

from test_search import tiny as tiny_search
from test_train import tiny


def _state(run):
    return torch.load(os.path.join(run, "checkpoint.pt"), weights_only=True)


def test_auto_is_float32_on_the_cpu_and_fp16_needs_cuda():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="precision must be one of"):
        tiny(precision="half").validate()


def test_bf16_autocasts_the_backbone_alone_and_keeps_losses_and_weights_float32():
    import pocketnas
    from pocketnas.losses import MarginHead, build_margin

    torch.manual_seed(0)
    backbone = pocketnas.create_model("pocketnet", channels=4, layers=3, embedding_size=16)
    seen = {}
    backbone.register_forward_hook(lambda m, i, out: seen.update(emb=out.dtype))  # (returns None)
    head = MarginHead(16, 5, build_margin("arcface", s=32.0, m=0.3))
    head.register_forward_hook(lambda m, i, out: seen.update(logits=out.dtype))
    module = StudentModule(backbone, head, precision="bf16")
    losses = module(torch.randn(4, 3, 112, 112), torch.tensor([0, 1, 2, 3]))
    assert seen == {"emb": torch.bfloat16, "logits": torch.float32} and losses["ce"].dtype == torch.float32
    losses["ce"].backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in backbone.parameters())


@pytest.mark.slow
def test_bf16_and_fp32_training_agree_to_bf16_rounding(tmp_path):
    runs = {}
    for p in ("fp32", "bf16"):
        history = train(tiny(precision=p, epochs=1, max_batches_per_epoch=1, compile="false"), str(tmp_path / p))
        runs[p] = (history["epochs"][0], _state(str(tmp_path / p)))
    (loss32, s32), (loss16, s16) = runs["fp32"], runs["bf16"]
    assert s32["precision"] == "fp32" and s16["precision"] == "bf16"
    assert loss16["ce"] == pytest.approx(loss32["ce"], rel=0.01)  # bf16 keeps 8 bits of mantissa: ~0.4 %
    import pocketnas

    torch.manual_seed(0)  # the starting weights, as train() builds them (seed 0)
    start = pocketnas.create_model("pocketnet", channels=4, layers=3, embedding_size=32).state_dict()
    keys = [k for k, w in start.items() if w.is_floating_point() and "running" not in k]
    d32 = torch.cat([(s32["model"]["backbone." + k] - start[k]).flatten() for k in keys])
    d16 = torch.cat([(s16["model"]["backbone." + k] - start[k]).flatten() for k in keys])
    # the step's update: the same direction (measured 0.983; single early layers, whose gradients sum many
    # rounded terms, down to 0.91), and weights kept in float32
    assert torch.nn.functional.cosine_similarity(d32, d16, 0) > 0.95
    assert all(s16["model"]["backbone." + k].dtype == torch.float32 for k in keys)


@pytest.mark.slow
def test_a_bf16_run_resumes_in_bf16_and_refuses_another_precision(tmp_path):
    whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
    train(tiny(precision="bf16", compile="false"), whole)
    train(tiny(precision="bf16", compile="false", stop_after_steps=4), broken)
    with pytest.raises(ConfigError, match="ran in bf16"):
        train(tiny(precision="fp32", compile="false"), broken, resume=True)
    train(tiny(compile="false"), broken, resume=True)  # precision auto: the checkpoint's bf16
    a, b = _state(whole), _state(broken)
    assert b["precision"] == "bf16" and b["config"]["precision"] == "bf16"
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert "precision bf16" in (tmp_path / "broken" / "log.txt").read_text()


def test_a_search_runs_in_bf16_and_records_it(tmp_path):
    history = search(tiny_search("precision=bf16", "epochs=1"), str(tmp_path))
    assert len(history["epochs"]) == 1 and torch.isfinite(torch.tensor(history["epochs"][0]["train_loss"]))
    assert _state(str(tmp_path))["config"]["precision"] == "bf16"
