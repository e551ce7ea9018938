"""Issue 39, pattern 1: no command destroys its inputs or an earlier good output. One rule (pocketnas.outputs):
an output that is an input is refused (even with --overwrite), an existing one needs --overwrite, and a file
appears only once its command has succeeded."""
from __future__ import annotations

import hashlib
import os
import shutil

import pytest
import torch

import pocketnas
from pocketnas.cli import main
from pocketnas.data import orl_root
from pocketnas.engine.run_folder import RunFolder
from pocketnas.errors import OutputError
from pocketnas.outputs import Output, check_outputs, staged_file, staged_folder

from test_train import tiny


def _digest(path):
    """sha256 over a file, or over a folder's file names and contents."""
    h = hashlib.sha256()
    if os.path.isfile(path):
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    for folder, _, files in sorted(os.walk(path)):
        for f in sorted(files):
            with open(os.path.join(folder, f), "rb") as fh:
                h.update(f.encode() + fh.read())
    return h.hexdigest()


@pytest.fixture
def model_pt(tmp_path):
    path = tmp_path / "m.pt"
    pocketnas.save(pocketnas.create_model("pocketnet", channels=4, layers=3, embedding_size=32), str(path))
    return path


@pytest.fixture
def orl_pack(tmp_path, shared):
    dst = tmp_path / "pack"
    shutil.copytree(os.path.join(shared, "data", "orl", "rec"), dst)
    return dst


def test_subset_into_its_own_pack_is_refused_and_the_pack_kept(orl_pack, capsys):
    before = _digest(orl_pack)
    for extra in ([], ["--overwrite"]):
        assert main(["data", "subset", str(orl_pack), str(orl_pack), "--identities", "5", *extra]) == 2
        assert "is also this command's input" in capsys.readouterr().err
    assert _digest(orl_pack) == before


def test_subset_into_an_existing_pack_needs_overwrite_and_then_replaces_it_whole(orl_pack, tmp_path, capsys):
    out = tmp_path / "subset"
    assert main(["data", "subset", str(orl_pack), str(out), "--identities", "5"]) == 0
    first = _digest(out)
    assert main(["data", "subset", str(orl_pack), str(out), "--identities", "3"]) == 2
    assert "add --overwrite" in capsys.readouterr().err and _digest(out) == first
    assert main(["data", "subset", str(orl_pack), str(out), "--identities", "3", "--overwrite"]) == 0
    assert _digest(out) != first and not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
    assert pocketnas.data.RecordDataset(str(out), train=False).num_classes == 3


@pytest.mark.parametrize("argv", [
    ["export", "--model", "{m}", "--out", "{m}"],
    ["export", "--model", "{m}", "--out", "{m}", "--overwrite"],
    ["release", "{m}", "{m}", "--bin", "{bin}"],
    ["release", "{m}", "{m}", "--bin", "{bin}", "--overwrite"],
    ["eval", "verify", "--model", "{m}", "--bin", "{bin}", "--json", "{m}", "--overwrite"],
    ["info", "{m}", "--json", "{m}", "--overwrite"],
])
def test_an_output_that_is_an_input_is_refused(argv, model_pt, orl_bin, capsys):
    lfw = orl_bin
    before = _digest(model_pt)
    argv = [a.format(m=model_pt, bin=lfw) for a in argv]
    assert main(argv) == 2
    assert "is also this command's input" in capsys.readouterr().err
    assert _digest(model_pt) == before


def test_a_hard_link_or_symlink_to_an_input_is_the_input(model_pt, tmp_path, capsys):
    os.link(model_pt, tmp_path / "hard.pt")
    os.symlink(model_pt, tmp_path / "soft.pt")
    for out in ("hard.pt", "soft.pt"):
        assert main(["export", "--model", str(model_pt), "--out", str(tmp_path / out), "--overwrite"]) == 2
        assert "is also this command's input" in capsys.readouterr().err


@pytest.mark.onnx
def test_a_failed_export_leaves_the_earlier_file(model_pt, tmp_path, capsys, monkeypatch):
    good = tmp_path / "good.onnx"
    good.write_bytes(b"an earlier, good export")
    with pytest.raises(SystemExit) as exit_:  # argparse refuses the value before anything runs
        main(["export", "--model", str(model_pt), "--out", str(good), "--opset", "1", "--overwrite"])
    assert exit_.value.code == 2 and "--opset" in capsys.readouterr().err
    import pocketnas.compress.deploy as deploy

    monkeypatch.setattr(deploy, "compare_outputs", lambda a, b: {"max_abs_diff": float("nan"), "min_cosine": 0.5,
                                                                  "max_rel_diff": 1.0, "mean_cosine": 0.5})
    assert main(["export", "--model", str(model_pt), "--out", str(good), "--overwrite"]) == 2
    assert "disagrees with PyTorch" in capsys.readouterr().err
    assert good.read_bytes() == b"an earlier, good export"
    assert sorted(os.listdir(tmp_path)) == ["good.onnx", "m.pt"]  # no staging file left behind


def test_release_of_nan_weights_writes_nothing(model_pt, tmp_path, orl_bin, capsys):
    from pocketnas.models.checkpoint import weights_sha256

    record = torch.load(model_pt, weights_only=True)  # a valid header over NaN weights (with their right sha256)
    first = next(k for k, v in record["state_dict"].items() if v.is_floating_point())
    record["state_dict"][first] = torch.full_like(record["state_dict"][first], float("nan"))
    record["weights_sha256"] = weights_sha256(record["state_dict"])
    bad = tmp_path / "nan.pt"
    torch.save(record, bad)
    out = tmp_path / "out.pt"
    out.write_bytes(b"an earlier release")
    argv = ["release", str(bad), str(out), "--bin", orl_bin, "--overwrite"]
    assert main(argv) == 2
    assert "non-finite" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier release"
    assert sorted(os.listdir(tmp_path)) == ["m.pt", "nan.pt", "out.pt"]


def test_existing_outputs_need_overwrite(model_pt, tmp_path, capsys):
    js = tmp_path / "g.json"
    js.write_text("mine")
    assert main(["genotype", "pocketnet_casia", "--json", str(js)]) == 2
    assert "exists; add --overwrite" in capsys.readouterr().err and js.read_text() == "mine"
    assert main(["genotype", "pocketnet_casia", "--json", str(js), "--overwrite"]) == 0
    assert js.read_text().startswith("{")
    draw = tmp_path / "cells"
    draw.mkdir()
    (draw / "normal.png").write_bytes(b"mine")
    assert main(["genotype", "pocketnet_casia", "--draw", str(draw)]) == 2
    assert "holds normal.png already" in capsys.readouterr().err


def test_staged_file_and_folder_appear_only_on_success(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with staged_file(str(target)) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("the command failed")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["x.json"]
    with staged_file(str(target)) as tmp:
        open(tmp, "w").write("new")
    assert target.read_text() == "new"
    folder = tmp_path / "pack"
    with pytest.raises(RuntimeError):
        with staged_folder(str(folder)) as tmp:
            open(os.path.join(tmp, "train.rec"), "w").write("half")
            raise RuntimeError("failed")
    assert not folder.exists() and os.listdir(tmp_path) == ["x.json"]


def test_check_outputs_names_the_problem(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_outputs([Output(str(f / "out.json"), "--json")], [])
    with pytest.raises(OutputError, match="is a folder; name the file"):
        check_outputs([Output(str(tmp_path), "--json")], [])
    with pytest.raises(OutputError, match="named as two outputs"):
        check_outputs([Output(str(tmp_path / "a"), "--out"), Output(str(tmp_path / "a"), "--json")], [])


def test_cleanup_never_follows_a_symlink_out_of_the_run_folder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".tmp-precious.pt").write_bytes(b"not pocketnas's")
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(outside, run / "linked")
    os.symlink(outside / ".tmp-precious.pt", run / ".tmp-link.pt")
    (run / ".tmp-stale.pt").write_bytes(b"half")
    with RunFolder(str(run), kind="train"):
        pass
    assert (outside / ".tmp-precious.pt").read_bytes() == b"not pocketnas's"
    assert not os.path.lexists(run / ".tmp-link.pt") and not (run / ".tmp-stale.pt").exists()


def test_a_run_whose_set_up_failed_does_not_block_the_retry(tmp_path, capsys):
    bad_bin = tmp_path / "broken.bin"
    bad_bin.write_bytes(b"not a pickle")
    run = tmp_path / "run"
    cfg = tiny(epochs=1, stop_after_steps=1, val_bins=[str(bad_bin)])
    from pocketnas.engine.trainer import train
    from pocketnas.evaluation.validation import verify_bins

    with pytest.raises(pocketnas.errors.PocketnasError):
        train(cfg, str(run), verifier=verify_bins)
    assert sorted(os.listdir(run)) == ["log.txt"] and "broken.bin" in (run / "log.txt").read_text()
    train(tiny(epochs=1, stop_after_steps=1), str(run))  # the retry is not refused as "already holds a run"
    assert (run / "checkpoint.pt").exists()


def test_run_folder_equal_to_an_input_is_refused(tmp_path, capsys):
    data = tmp_path / "faces"
    shutil.copytree(orl_root(), data)
    assert main(["train", "--data", str(data), "--out", str(data)]) == 2
    assert "is also this command's input" in capsys.readouterr().err


def test_a_full_disk_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    import errno

    import pocketnas.atomic as atomic

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", dst)

    monkeypatch.setattr(atomic.os, "replace", full)
    out = tmp_path / "g.json"
    assert main(["genotype", "pocketnet_casia", "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not os.listdir(tmp_path)  # the temporary went with the failure


def test_torch_failing_to_write_is_an_output_error(tmp_path, monkeypatch):
    from pocketnas.models import checkpoint

    def enforce_fail(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(checkpoint.torch, "save", enforce_fail)
    with pytest.raises(OutputError, match="m.pt: cannot be written .*disk full"):
        checkpoint.atomic_torch_save({"x": 1}, str(tmp_path / "m.pt"))
    assert not os.listdir(tmp_path)
