"""The IJB pipeline on a small synthetic set in IJB's file layout, built from the bundled faces."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

import pocketnas
from pocketnas.data import FolderDataset, orl_root
from pocketnas.data.align import ARCFACE_TEMPLATE, align_face, similarity_transform
from pocketnas.evaluation.ijb import evaluate_ijb, read_protocol
from pocketnas.models.calibrate import calibrate_batchnorm
from pocketnas.models.embedders import TorchEmbedder, embed_images

PEOPLE = 8
OFFSET = np.array([23.0, 17.0])


@pytest.fixture(scope="module")
def ijb_root(tmp_path_factory):
    """Loose crops (faces pasted into larger frames, landmarks shifted with them), templates of 2-3 media."""
    root = tmp_path_factory.mktemp("IJBC")
    os.makedirs(root / "meta")
    os.makedirs(root / "loose_crop")
    ds = FolderDataset(orl_root(), train=False)
    rng = np.random.default_rng(0)
    rows_tid, rows_pts, originals = [], [], []
    template_of_person = {}
    tid = 0
    for person in range(PEOPLE):
        template_of_person[person] = []
        for half in range(2):  # two templates per person, five images each, in 2-3 media
            tid += 1
            template_of_person[person].append(tid)
            for j in range(5):
                k = person * 10 + half * 5 + j
                face = ds.read_uint8(k).transpose(1, 2, 0)
                frame = np.full((160, 150, 3), 90, np.uint8)
                frame[17:129, 23:135] = face
                name = f"{k}.png"
                Image.fromarray(frame).save(root / "loose_crop" / name)
                media = tid * 10 + (0 if j < 2 else 1 if j < 4 else 2)
                score = float(rng.uniform(0.6, 1.0))
                pts = ARCFACE_TEMPLATE + OFFSET
                rows_tid.append(f"{name} {tid} {media}")
                rows_pts.append(name + " " + " ".join(f"{v:.4f}" for v in pts.ravel()) + f" {score:.4f}")
                originals.append((k, tid, media, score))
    pairs = []
    for a in range(PEOPLE):
        pairs.append(f"{template_of_person[a][0]} {template_of_person[a][1]} 1")
        for b in range(a + 1, PEOPLE):
            pairs.append(f"{template_of_person[a][0]} {template_of_person[b][1]} 0")
    (root / "meta" / "ijbc_face_tid_mid.txt").write_text("\n".join(rows_tid) + "\n")
    (root / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(rows_pts) + "\n")
    (root / "meta" / "ijbc_template_pair_label.txt").write_text("\n".join(pairs) + "\n")
    return str(root), originals


def test_similarity_transform_recovers_a_known_map():
    angle, scale, shift = 0.3, 1.7, np.array([5.0, -3.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = ARCFACE_TEMPLATE @ rot.T + shift
    m = similarity_transform(ARCFACE_TEMPLATE, dst)
    assert np.allclose(m[:, :2], rot) and np.allclose(m[:, 2], shift)


def test_alignment_of_loose_crops_gives_back_the_faces(ijb_root):
    root, originals = ijb_root
    ds = FolderDataset(orl_root(), train=False)
    frame = np.asarray(Image.open(os.path.join(root, "loose_crop", "0.png")).convert("RGB"))
    aligned = align_face(frame, ARCFACE_TEMPLATE + OFFSET)
    assert np.array_equal(aligned, ds.read_uint8(0))


@pytest.mark.slow
def test_ijb_pipeline_matches_a_direct_computation(ijb_root, orl_faces):
    root, originals = ijb_root
    torch.manual_seed(0)
    model = pocketnas.create_model("pocketnet", channels=4, layers=3, embedding_size=32)
    calibrate_batchnorm(model, [orl_faces[0][::5]])
    embedder = TorchEmbedder(model)
    result = evaluate_ijb(lambda im, flip: embed_images(embedder, im, 16, flip=flip, progress=False), root,
                          "IJBC", progress=False)
    protocol = read_protocol(root, "IJBC")
    assert result["images"] == PEOPLE * 10 and result["templates"] == PEOPLE * 2
    assert result["pairs"] == len(protocol.pairs) and result["genuine"] == PEOPLE

    # direct: embed the original aligned faces (image + mirror), weight by score, mean per media, sum, normalise
    ds = FolderDataset(orl_root(), train=False)
    feats = {}
    for k, tid, media, score in originals:
        x = ds.batch_uint8([k])
        e = embedder(x)[0] + embedder(x.flip(-1))[0]
        feats.setdefault(tid, {}).setdefault(media, []).append(score * e.astype(np.float64))
    template = {}
    for tid, medias in feats.items():
        t = sum(np.mean(v, axis=0) for v in medias.values())
        template[tid] = t / np.linalg.norm(t)
    direct = np.array([template[a] @ template[b] for a, b in protocol.pairs])
    assert np.allclose(result["scores"], direct, atol=1e-5)
    assert set(result["tar_at_far"]) == {"1e-06", "1e-05", "1e-04", "1e-03", "1e-02", "1e-01"}


def test_ijb_cli(ijb_root, tmp_path, capsys, orl_faces):
    from pocketnas.cli import main

    root, _ = ijb_root
    model = pocketnas.create_model("pocketnet", channels=4, layers=3, embedding_size=32)
    calibrate_batchnorm(model, [orl_faces[0][::5]])
    pocketnas.save(model, str(tmp_path / "m.pt"))
    js = tmp_path / "ijb.json"
    assert main(["eval", "ijb", "--model", str(tmp_path / "m.pt"), "--root", root, "--json", str(js),
                 "--no-latency"]) == 0
    assert "TAR at FAR: 1e-06" in capsys.readouterr().out
    import json

    data = json.loads(js.read_text())
    assert data["ijbc"]["templates"] == 16 and os.path.exists(data["_meta"]["plots"][0])
    (tmp_path / "broken").mkdir()
    assert main(["eval", "ijb", "--model", str(tmp_path / "m.pt"), "--root", str(tmp_path / "broken")]) == 2
    assert "ijbc_face_tid_mid.txt: IJB protocol file missing" in capsys.readouterr().err


def test_eval_config_runs_ijb_at_its_fars(ijb_root, tmp_path, orl_faces):
    import json

    from pocketnas.cli import main

    root, _ = ijb_root
    model = pocketnas.create_model("pocketnet", channels=4, layers=3, embedding_size=32)
    calibrate_batchnorm(model, [orl_faces[0][::5]])
    pocketnas.save(model, str(tmp_path / "m.pt"))
    cfg = tmp_path / "ijb.yaml"
    os.makedirs(tmp_path / "release")
    os.symlink(root, tmp_path / "release" / "IJBC")  # the layout the configuration names: ROOT/IJBC
    cfg.write_text(f"ijb_root: {tmp_path / 'release'}\nijb_targets: [IJBC]\nfars: [0.01, 0.1]\n")
    js = tmp_path / "r.json"
    assert main(["eval", "--config", str(cfg), "--model", str(tmp_path / "m.pt"), "--json", str(js)]) == 0
    r = json.loads(js.read_text())["ijbc"]
    assert set(r["tar_at_far"]) == {"1e-02", "1e-01"} and r["templates"] == 16 and len(r["roc_fpr"]) > 2
