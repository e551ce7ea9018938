"""The weights that ship inside the package: each registered file loads after its sha256 check, a tampered copy is
refused, the recorded figures are what pocketnas measures, and the model tells real people apart."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

import pocketnas
from pocketnas.errors import InputError
from pocketnas.models import list_models, model_cfg
from pocketnas.models.checkpoint import CheckpointError, file_digest, read_checkpoint
from pocketnas.models.factory import registered_weights_path

SHIPPED = [n for n in list_models() if model_cfg(n).pretrained is not None]


def test_the_two_trained_pocketnets_ship():
    assert {"pocketnet_s_128", "pocketnet_m_128"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_load_after_their_sha256(name, monkeypatch):
    monkeypatch.delenv("POCKETNAS_WEIGHTS", raising=False)
    pre = model_cfg(name).pretrained
    path = registered_weights_path(name, model_cfg(name))
    assert os.path.dirname(path).endswith(os.path.join("pocketnas", "assets", "weights"))
    assert file_digest(path) == pre.sha256
    record = read_checkpoint(path)
    assert record["arch"] == name and record["input_norm"] == pre.input_norm
    assert abs(record["meta"]["verification"]["cosine_threshold"] - pre.threshold) < 1e-3
    assert "non-commercial" in pre.licence and pre.data and pre.teacher and pre.recipe
    model = pocketnas.create_model(name, pretrained=True).eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        assert torch.isfinite(model(torch.zeros(1, 3, 112, 112))).all()


@pytest.mark.parametrize("name", SHIPPED)
def test_a_tampered_copy_is_refused(name, tmp_path, monkeypatch):
    pre = model_cfg(name).pretrained
    shutil.copy(registered_weights_path(name, model_cfg(name)), tmp_path / pre.file)
    data = bytearray((tmp_path / pre.file).read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / pre.file).write_bytes(bytes(data))
    monkeypatch.setenv("POCKETNAS_WEIGHTS", str(tmp_path))  # searched before the package
    with pytest.raises(CheckpointError, match="altered or replaced; refusing"):
        pocketnas.create_model(name, pretrained=True)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_tells_celeba295_people_apart(name, shared):
    """Forty people of celeba295 (disjoint from the training set), two photos each: at the shipped threshold the
    model decides genuine and impostor pairs well above chance, and genuine pairs score higher."""
    from pocketnas.data import RecordDataset
    from pocketnas.models.embedders import TorchEmbedder, embed_images

    ds = RecordDataset(f"{shared}/data/celeba295", train=False)
    by_id = {}
    for i, label in enumerate(ds.labels()):
        by_id.setdefault(int(label), []).append(i)
    people = sorted(by_id)[:40]
    idx = [j for p in people for j in by_id[p][:2]]
    images = np.stack([ds.read_uint8(i)[0] for i in idx])
    emb = embed_images(TorchEmbedder(pocketnas.create_model(name, pretrained=True)), images, flip=True,
                       progress=False)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cos = emb @ emb.T
    genuine = np.array([cos[2 * k, 2 * k + 1] for k in range(len(people))])
    impostor = np.array([cos[2 * a, 2 * b] for a in range(len(people)) for b in range(a + 1, len(people))])
    t = model_cfg(name).pretrained.threshold
    balanced = ((genuine > t).mean() + (impostor <= t).mean()) / 2  # chance: 0.5 (pocketnet_s_128: 0.84, m_128: 0.86)
    assert balanced >= 0.65
    assert genuine.mean() - impostor.mean() > 0.12                 # s_128: 0.48 against 0.16, m_128: 0.52 against 0.25


@pytest.mark.release
@pytest.mark.parametrize("name", SHIPPED)
def test_recorded_lfw_accuracy_is_what_eval_verify_measures(name, shared, tmp_path):
    import json

    from pocketnas.cli import main

    out = tmp_path / "lfw.json"
    assert main(["eval", "verify", "--model", name, "--bin", f"{shared}/data/lfw/lfw.bin", "--no-flip",
                 "--no-latency", "--threads", "2", "--json", str(out)]) == 0
    measured = json.loads(out.read_text())["lfw"]["accuracy_mean"]
    assert abs(measured - model_cfg(name).pretrained.lfw_accuracy) < 1e-4


def _readme_block(marker: str) -> str:
    from conftest import REPO

    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    blocks = [b.split("\n", 1)[1] for b in text.split("```python")[1:]]
    code = [b.split("```", 1)[0] for b in blocks if marker in b.split("```", 1)[0]]
    assert len(code) == 1, f"README.md: one python block with {marker!r} expected"
    return code[0]


def test_readme_verifies_two_photos(shared, tmp_path, monkeypatch):
    """The README's "In code" example, run as written on two photos (celeba295 faces, not in the training set,
    scaled and moved on a larger canvas so that MTCNN has to find them): it decides as `pocketnas verify` does, and
    two photos of one person score higher than photos of two people."""
    from PIL import Image

    from pocketnas.data import RecordDataset
    from pocketnas.evaluation.photos import verify_photos
    from pocketnas.models.embedders import TorchEmbedder

    ds = RecordDataset(f"{shared}/data/celeba295", train=False)
    labels = ds.labels()
    same_id = np.flatnonzero(labels == labels[0])
    cosines = {}
    for case, second in (("same", int(same_id[1])), ("different", int(np.flatnonzero(labels != labels[0])[0]))):
        folder = tmp_path / case
        folder.mkdir()
        for name, index in (("a.jpg", int(same_id[0])), ("b.jpg", second)):
            face = Image.fromarray(ds.read_uint8(index)[0].transpose(1, 2, 0)).resize((180, 180), Image.BILINEAR)
            canvas = Image.new("RGB", (320, 300), (90, 90, 90))
            canvas.paste(face, (70, 50))
            canvas.save(folder / name, quality=95)
        monkeypatch.chdir(folder)
        scope: dict = {}
        exec(compile(_readme_block('pretrained=True)'), "README.md", "exec"), scope)
        cosines[case] = float(scope["emb"][0] @ scope["emb"][1])
        threshold = model_cfg("pocketnet_s_128").pretrained.threshold
        cli = verify_photos(TorchEmbedder(pocketnas.create_model("pocketnet_s_128", pretrained=True)), "a.jpg",
                            "b.jpg", threshold)
        assert scope["same"] == (cosines[case] >= threshold) == bool(cli["same"])
        assert abs(cli["cosine"] - cosines[case]) < 1e-4
    assert cosines["same"] > cosines["different"]
    # a photo without a face: a message naming it, not a numpy shape error
    Image.new("RGB", (320, 300), (90, 90, 90)).save(tmp_path / "different" / "b.jpg")
    with pytest.raises(InputError, match="b.jpg: no face found"):
        exec(compile(_readme_block('pretrained=True)'), "README.md", "exec"), {})
