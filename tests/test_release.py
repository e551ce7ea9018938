"""pocketnas release: a trained checkpoint becomes the file to ship (float16 where verification is unchanged)."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

import pocketnas
from pocketnas.cli import main
from pocketnas.evaluation.release import release_weights, same_verification
from pocketnas.models import registry
from pocketnas.models.calibrate import calibrate_batchnorm
from pocketnas.models.checkpoint import file_digest, read_checkpoint


def _tiny(tmp_path, orl_faces) -> str:
    torch.manual_seed(0)
    model = pocketnas.create_model("pocketnet", channels=4, layers=3, embedding_size=32)
    calibrate_batchnorm(model, orl_faces[0][::4].split(50))
    path = str(tmp_path / "model.pt")
    pocketnas.save(model, path)
    return path


def _easy_bin(tmp_path) -> str:
    """100 pairs of bundled ORL faces: genuine = an image and itself (cosine 1 under any weights), impostor = two
    people; every model verifies it perfectly with a wide margin, so float16 cannot change a decision."""
    from pocketnas.data import FolderDataset, orl_root, write_bin

    ds = FolderDataset(orl_root(), train=False)
    faces = ds.batch_uint8(range(0, 400, 4)).numpy()  # 100 faces, person i // 10 ... 10 per person
    labels = [ds.labels[i] for i in range(0, 400, 4)]
    images, issame = [], []
    for k in range(50):
        a, b = 2 * k, (2 * k + 37) % 100
        images += [faces[a], faces[a]] if k % 2 == 0 else [faces[a], faces[b]]
        issame.append(k % 2 == 0)
        assert k % 2 == 0 or labels[a] != labels[b]
    path = str(tmp_path / "easy.bin")
    write_bin(path, np.stack(images * 2), issame * 2)
    return path


def test_release_writes_half_precision_with_its_measurements(tmp_path, orl_faces, capsys):
    src = _tiny(tmp_path, orl_faces)
    out = str(tmp_path / "ship" / "tiny_orl.pt")
    assert main(["release", src, out, "--bin", _easy_bin(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "float16" in printed and file_digest(out) in printed
    record = read_checkpoint(out)
    floats = [v for v in record["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert os.path.getsize(out) < 0.75 * os.path.getsize(src)
    v = record["meta"]["verification"]
    assert v["set"] == "easy" and v["accuracy"] == 1.0 and v["flip"] is True and -1.0 < v["cosine_threshold"] < 1.0

    # the shipped file loads through a pretrained configuration into float32 parameters, the fp16 values exactly
    pre = registry.PretrainedCfg(file=os.path.basename(out), sha256=file_digest(out), data="ORL (test)",
                                 teacher="none", recipe="test")
    original = pocketnas.load(src)
    loaded = pocketnas.load(out)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for (k, a), (_, b) in zip(original.state_dict().items(), loaded.state_dict().items()):
        if a.is_floating_point():
            assert torch.equal(a.half().float(), b), k
    assert pre.sha256 == file_digest(out)


@pytest.mark.slow
def test_release_reports_what_float16_would_change(tmp_path, orl_faces, orl_bin, monkeypatch):
    """Where half precision changes a figure, the float32 file is written and the report says why: this random tiny
    network has pairs of ORL's 600 so close to its threshold that float16 decides one of them differently."""
    src = _tiny(tmp_path, orl_faces)
    out = str(tmp_path / "f32.pt")
    r = release_weights(src, out, [orl_bin], progress=False)
    assert r["storage"] == "float32" and r["why_float32"].startswith("orl accuracy: ")
    assert all(v.dtype == torch.float32 for v in read_checkpoint(out)["state_dict"].values() if v.is_floating_point())


def test_same_verification_compares_three_decimals_of_a_percent():
    base = {"lfw": {"accuracy": 0.874167, "accuracy_flip": 0.88, "threshold": 0.31, "threshold_flip": 0.30}}
    assert same_verification(base, {"lfw": dict(base["lfw"], accuracy=0.8741671)}) is None
    assert "accuracy" in same_verification(base, {"lfw": dict(base["lfw"], accuracy=0.874333)})
    assert same_verification(base, {"lfw": dict(base["lfw"], threshold_flip=0.304)}) is None  # within a grid step
    assert "threshold_flip" in same_verification(base, {"lfw": dict(base["lfw"], threshold_flip=0.306)})


def test_a_registry_name_with_shipped_weights_loads_them(tmp_path, orl_faces, monkeypatch):
    """On the command line (load_model), a bare registry name means its shipped weights when it has some."""
    from pocketnas.models.factory import load_model

    torch.manual_seed(1)
    model = pocketnas.create_model("pocketnet_s_128").eval()
    path = tmp_path / "s128.pt"
    pocketnas.save(model, str(path), storage_dtype=torch.float16)
    pre = registry.PretrainedCfg(file=path.name, sha256=file_digest(str(path)), data="test", teacher="none",
                                 recipe="test", threshold=0.25)
    monkeypatch.setitem(registry._CFGS, "pocketnet_s_128",
                        dataclasses.replace(registry.model_cfg("pocketnet_s_128"), pretrained=pre))
    monkeypatch.setenv("POCKETNAS_WEIGHTS", str(tmp_path))
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(load_model("pocketnet_s_128")(x), pocketnas.load(str(path))(x), atol=1e-6)
    from pocketnas.evaluation.photos import recorded_threshold

    assert recorded_threshold("pocketnet_s_128")[0] == 0.25
