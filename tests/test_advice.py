"""Messages that suggest a fix suggest one that works: the test runs each suggested command (issue 42, items 1-2)."""
import os
import re
import shlex

import numpy as np
import pytest
import torch
from PIL import Image

import pocketnas
from pocketnas.cli import main
from pocketnas.data import orl_root
from pocketnas.engine.run_folder import RunFolder, RunFolderError


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for name, (person, shot) in {"a.png": (4, 1), "b.png": (4, 2)}.items():
        Image.open(os.path.join(orl_root(), f"s{person}", f"{shot}.png")).convert("RGB").save(root / name)
    return str(root / "a.png"), str(root / "b.png")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from pocketnas.data import FolderDataset
    from pocketnas.models.calibrate import calibrate_batchnorm

    torch.manual_seed(0)
    model = pocketnas.create_model("pocketnet", channels=4, layers=3, embedding_size=32)
    faces = FolderDataset(orl_root(), train=False)
    images = torch.as_tensor(np.stack([faces.read_uint8(i) for i in range(0, 400, 10)]))
    calibrate_batchnorm(model, pocketnas.data.normalize(images).split(20))
    path = str(tmp_path_factory.mktemp("model") / "m.pt")
    pocketnas.save(model, path)
    return path


def _suggested(err: str, start: str) -> list:
    """The command a message suggests (in backquotes, or after ``start``), as arguments for ``main``."""
    quoted = re.search(r"`(pocketnas [^`]+)`", err)
    text = quoted.group(1) if quoted else err.split(start, 1)[1].strip().rstrip(".")
    return shlex.split(text)[1:]


def test_verify_refuses_a_network_without_trained_weights(photos, capsys):
    assert main(["verify", *photos, "--model", "mobilefacenet", "--threshold", "0.3", "--aligned"]) == 2
    captured = capsys.readouterr()
    assert "no weights ship for it" in captured.err and "pocketnet_s_128" in captured.err
    assert "same person" not in captured.out and "different people" not in captured.out


@pytest.mark.slow
def test_the_record_threshold_advice_for_a_checkpoint_works(tmp_path, tiny_checkpoint, photos, orl_bin, capsys):
    import shutil

    model = str(tmp_path / "m.pt")
    shutil.copy(tiny_checkpoint, model)
    assert main(["verify", *photos, "--model", model, "--aligned"]) == 2
    err = capsys.readouterr().err
    command = _suggested(err, "record one in the file: ")
    command = [orl_bin if a == "lfw.bin" else a for a in command]
    assert command[:2] == ["eval", "verify"] and "--record-threshold" in command
    assert main(command + ["--no-cost"]) == 0
    capsys.readouterr()
    assert main(["verify", *photos, "--model", model, "--aligned"]) == 0
    assert "recorded in m.pt" in capsys.readouterr().out


@pytest.mark.slow
def test_the_threshold_advice_for_an_onnx_file_works(tmp_path, tiny_checkpoint, photos, orl_bin, capsys):
    onnx = str(tmp_path / "m.onnx")
    assert main(["export", "--model", tiny_checkpoint, "--format", "onnx", "--out", onnx]) == 0
    capsys.readouterr()
    assert main(["verify", *photos, "--model", onnx, "--aligned"]) == 2
    err = capsys.readouterr().err
    assert "an ONNX file cannot record one: pass --threshold COSINE" in err and "--record-threshold" not in err
    command = [orl_bin if a == "lfw.bin" else a for a in _suggested(err, "")]
    assert main(command + ["--no-cost"]) == 0
    table = capsys.readouterr().out
    header, _, row = table.splitlines()[:3]
    threshold = row.split()[header.split().index("cosine") - 1]  # "cosine threshold" is one column of two words
    assert main(["verify", *photos, "--model", onnx, "--aligned", "--threshold", threshold]) == 0
    assert "cosine" in capsys.readouterr().out


def test_demo_and_prune_folders_do_not_advise_resume(tmp_path):
    for kind, marker in (("demo", "report.json"), ("prune", "report.json"), ("train", "checkpoint.pt")):
        folder = tmp_path / kind
        folder.mkdir()
        (folder / marker).write_text("{}")
        with pytest.raises(RunFolderError) as e:
            RunFolder(str(folder), kind=kind).acquire()
        assert ("--resume" in str(e.value)) == (kind == "train") and "--overwrite" in str(e.value)
