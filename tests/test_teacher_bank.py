"""The teacher bank: built once before training, read instead of the teacher, refused when it is not this run's."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import pocketnas
from pocketnas.cli import main
from pocketnas.data import orl_root
from pocketnas.data.views import FaceViewAugment
from pocketnas.data.face_sets import open_face_dataset
from pocketnas.engine.sampling import TrainSamples
from pocketnas.engine.teacher_bank import TeacherBank, TeacherBankError, build_teacher_bank, read_manifest
from pocketnas.engine.teachers import build_fixed_teacher
from pocketnas.engine.trainer import train

from test_train import tiny


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    """Three ORL people (30 images): small enough to embed in seconds."""
    root = tmp_path_factory.mktemp("people")
    for i in (1, 2, 3):
        shutil.copytree(os.path.join(orl_root(), f"s{i}"), root / f"s{i}")
    return str(root)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("teacher") / "teacher.pt")
    pocketnas.save(pocketnas.create_model("pocketnet", channels=4, layers=3, embedding_size=24), path)
    return path


def _build(out, people, teacher, **kw):
    return build_teacher_bank(str(out), people, teacher, **{"views": 2, "workers": 0, "threads": 1,
                                                            "block": 8, "progress": False, **kw})


def test_bank_holds_the_teachers_embeddings_of_the_training_views(tmp_path, people, teacher):
    manifest = _build(tmp_path / "bank", people, teacher, view_seed=3)
    assert sorted(manifest["finished"]) == ["view_000.f16", "view_001.f16"] and manifest["images"] == 30
    bank = TeacherBank(str(tmp_path / "bank"))
    # the views a training run of any seed makes with view_seed 3, embedded live
    samples = TrainSamples(open_face_dataset(people, 112), seed=11, augment=FaceViewAugment(), view_bank=2,
                           view_seed=3)
    live = build_fixed_teacher(teacher)
    for v in (0, 1):
        samples.view_of = lambda index, v=v: v
        views = torch.stack([samples[i][0] for i in range(30)])
        want = live(views)
        got = bank.embed(None, torch.arange(30), torch.full((30,), v), 0).numpy()
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())  # float16 on disk
    assert bank.values.dtype == np.float16


def test_an_interrupted_build_resumes_and_a_larger_view_count_grows_the_bank(tmp_path, people, teacher,
                                                                              monkeypatch):
    from pocketnas.engine import teacher_bank as tb

    calls = []
    original = tb._BlockWorker.__call__

    def failing(self, view, start, stop):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append((view, start))
        return original(self, view, start, stop)

    monkeypatch.setattr(tb._BlockWorker, "__call__", failing)
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path / "bank", people, teacher)  # 2 views x 4 blocks: stopped after 5 blocks
    assert list(read_manifest(str(tmp_path / "bank"))["finished"]) == ["view_000.f16"]
    monkeypatch.setattr(tb._BlockWorker, "__call__", lambda self, *a: (calls.append(a), original(self, *a))[1])
    _build(tmp_path / "bank", people, teacher)
    assert len(calls) == 8  # 5 before the interruption, the 3 missing after it
    whole = tmp_path / "whole"
    _build(whole, people, teacher)
    for name in ("view_000.f16", "view_001.f16"):
        assert (tmp_path / "bank" / name).read_bytes() == (whole / name).read_bytes()
    _build(tmp_path / "bank", people, teacher, views=3)  # grows: only the third view is computed
    assert len(calls) == 8 + 8 + 4 and TeacherBank(str(tmp_path / "bank")).views == 3


def test_a_damaged_or_foreign_bank_is_refused(tmp_path, people, teacher):
    bank = tmp_path / "bank"
    _build(bank, people, teacher)
    good = (bank / "view_001.f16").read_bytes()
    (bank / "view_001.f16").write_bytes(good[:-100])  # truncated
    with pytest.raises(TeacherBankError, match="truncated"):
        TeacherBank(str(bank))
    altered = bytearray(good)
    altered[10] ^= 0xFF
    (bank / "view_001.f16").write_bytes(bytes(altered))
    with pytest.raises(TeacherBankError, match="sha256"):
        TeacherBank(str(bank))
    (bank / "view_001.f16").write_bytes(good)
    key = TeacherBank(str(bank)).key
    with pytest.raises(TeacherBankError, match="view_seed"):
        TeacherBank(str(bank), {**key, "view_seed": 1})
    with pytest.raises(TeacherBankError, match="views 2 of the 3 needed"):
        TeacherBank(str(bank), key, views=3)
    # building into it with another key: refused, nothing lost; with --overwrite: rebuilt for the new key
    with pytest.raises(TeacherBankError, match="view_seed"):
        _build(bank, people, teacher, view_seed=1)
    assert (bank / "view_001.f16").read_bytes() == good
    _build(bank, people, teacher, view_seed=1, overwrite=True)
    assert TeacherBank(str(bank)).key["view_seed"] == 1
    (bank / "bank.json").write_text(json.dumps({"format": "pocketnas.teacher_bank", "format_version": 1,
                                                "images": "30", "views": 2, "dim": 24, "key": {}, "finished": {}}))
    with pytest.raises(TeacherBankError, match="images must be a positive integer"):
        TeacherBank(str(bank))


def test_training_reads_the_bank_and_matches_a_run_that_computes_the_teacher(tmp_path, people, teacher):
    # lr tiny: the weights barely move, so each epoch's losses compare the targets themselves (at a training lr a
    # tiny network's trajectory amplifies float16's rounding of the targets within a few steps)
    kw = dict(kd="embedding", teacher=teacher, augment=True, view_bank=2, epochs=2, batch_size=8, lr=1e-6,
              lr_reference_batch=8, max_batches_per_epoch=2, data=people, workers=0, seed=5, view_seed=0)
    cached = train(tiny(**kw), str(tmp_path / "cached"))
    banked = train(tiny(teacher_bank=str(tmp_path / "bank"), **kw), str(tmp_path / "banked"))
    log = (tmp_path / "banked" / "log.txt").read_text()
    assert "building 2 views per image before training" in log and "read from the teacher bank" in log
    for a, b in zip(cached["epochs"], banked["epochs"]):  # the same targets, to float16 rounding
        assert a["kd"] == pytest.approx(b["kd"], rel=2e-3) and a["ce"] == pytest.approx(b["ce"], rel=1e-4)
    # a second run (another seed: another order and other picks among the views) reuses the bank as it is
    stamp = os.path.getmtime(tmp_path / "bank" / "view_000.f16")
    train(tiny(teacher_bank=str(tmp_path / "bank"), **{**kw, "seed": 6}), str(tmp_path / "again"))
    assert os.path.getmtime(tmp_path / "bank" / "view_000.f16") == stamp
    # another view seed draws other views: the bank is refused before any step
    with pytest.raises(TeacherBankError, match="view_seed"):
        train(tiny(teacher_bank=str(tmp_path / "bank"), **{**kw, "view_seed": 1}), str(tmp_path / "other"))


def test_teacher_bank_command(tmp_path, people, teacher, capsys):
    out = tmp_path / "bank"
    assert main(["teacher-bank", "--teacher", teacher, "--data", people, "--out", str(out), "--views", "1",
                 "--workers", "0", "--threads", "1"]) == 0
    assert "30 images x 1 views x 24 dims" in capsys.readouterr().out
    (out / "view_000.f16").write_bytes(b"")
    assert main(["train", "--data", people, "--out", str(tmp_path / "run"), "--teacher", teacher, "--kd", "embedding",
                 "--set", "augment=true", "--set", "view_bank=1", "--set", f"teacher_bank={out}", "--set", "epochs=1",
                 "--set", "batch_size=8", "--set", "max_batches_per_epoch=1"]) == 2
    assert "view_000.f16" in capsys.readouterr().err
