"""Finite or fail: a diverged training or search stops with a message naming the step, keeps its last good
checkpoint, and nothing non-finite is ever written as a model, a checkpoint or a genotype."""
import os

import pytest
import torch

import pocketnas
from pocketnas.cli import main
from pocketnas.config import ConfigError
from pocketnas.engine import trainer as trainer_module
from pocketnas.engine.search import search
from pocketnas.errors import DivergedError

from test_search import tiny as tiny_search
from test_train import tiny


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_config_numbers_are_refused_before_a_run_folder_exists(tmp_path, value, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path), "--out", str(out), "--set", f"lr={value}"]) == 2
    assert "lr must be a finite number" in capsys.readouterr().err and not out.exists()
    with pytest.raises(ConfigError, match="w_lr must be a finite number"):
        tiny_search(f"w_lr={value}")


def test_a_diverged_training_stops_at_that_step_and_keeps_its_last_checkpoint(tmp_path, monkeypatch):
    forward = trainer_module.StudentModule.forward
    calls = []

    def nan_at_step_3(self, *args, **kwargs):
        losses = forward(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            losses["ce"] = losses["ce"] * float("nan")
        return losses

    monkeypatch.setattr(trainer_module.StudentModule, "forward", nan_at_step_3)
    run = str(tmp_path / "run")
    with pytest.raises(DivergedError, match=r"step 3 \(epoch 1\): the loss is not finite \(ce nan\)"):
        trainer_module.train(tiny(save_every_steps=1, compile="false"), run)
    state = torch.load(os.path.join(run, "checkpoint.pt"), weights_only=True)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not os.path.exists(os.path.join(run, "model.pt"))
    assert "run failed: step 3 (epoch 1): the loss is not finite" in open(os.path.join(run, "log.txt")).read()


def test_non_finite_teacher_targets_stop_the_run(tmp_path, monkeypatch):
    model = str(tmp_path / "teacher.pt")
    pocketnas.save(pocketnas.create_model("pocketnet", channels=4, layers=3, embedding_size=16), model)
    monkeypatch.setattr(trainer_module.FixedTeacher, "embed",
                        lambda self, images, index, view, step: torch.full((len(index), 16), float("nan")))
    with pytest.raises(DivergedError, match="step 1: the teacher's embeddings of images"):
        trainer_module.train(tiny(kd="embedding", teacher=model, compile="false"), str(tmp_path / "run"))


def test_a_model_with_nan_weights_is_never_saved(tmp_path):
    model = pocketnas.create_model("pocketnet", channels=4, layers=3, embedding_size=16)
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    with pytest.raises(DivergedError, match="non-finite"):
        pocketnas.save(model, str(tmp_path / "m.pt"))
    assert not os.listdir(tmp_path)


def test_a_diverged_search_stops_and_writes_no_genotype(tmp_path, monkeypatch):
    from pocketnas.engine import search as search_module

    step = search_module.search_step

    def nan_loss(*args, **kwargs):
        val, loss, logits = step(*args, **kwargs)
        return float("nan"), loss, logits

    monkeypatch.setattr(search_module, "search_step", nan_loss)
    with pytest.raises(DivergedError, match="search epoch 1, step 1: the loss is not finite"):
        search(tiny_search(), str(tmp_path))
    assert not (tmp_path / "genotype.json").exists()


def test_a_model_with_nan_weights_is_not_exported(tmp_path):
    import numpy as np

    from pocketnas.compress.deploy import export_checked

    model = pocketnas.create_model("pocketnet", channels=4, layers=3, embedding_size=16).eval()
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    crops = np.zeros((2, 3, 112, 112), np.uint8)
    with pytest.raises(DivergedError, match="exporting"):
        export_checked(model, str(tmp_path / "m.onnx"), crops)
    assert not os.listdir(tmp_path)
