"""Photos in, verification out: MTCNN on faces that are not aligned (moved, scaled, rotated on a larger canvas),
`pocketnas align` over a folder, `pocketnas verify` on two photos."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from pocketnas.cli import main
from pocketnas.data import orl_root
from pocketnas.data.align import ARCFACE_TEMPLATE
from pocketnas.detection import MTCNN, align_photo, read_photo
from pocketnas.detection.mtcnn import nms


@pytest.fixture(scope="module")
def detector():
    return MTCNN()


def _orl(person, k):
    with Image.open(os.path.join(orl_root(), f"s{person}", f"{k}.png")) as im:
        return np.asarray(im.convert("RGB"))


def _placed(face, angle_deg, scale, shift, canvas=(420, 400)):
    """``face`` (aligned 112 x 112) warped onto a larger black canvas by p' = scale R p + shift; the 2 x 3 map."""
    a = np.deg2rad(angle_deg)
    m = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    inv = np.linalg.inv(m)
    b = -inv @ np.asarray(shift, float)
    out = Image.fromarray(face).transform(canvas, Image.AFFINE, (inv[0, 0], inv[0, 1], b[0], inv[1, 0], inv[1, 1],
                                                                 b[1]), resample=Image.BILINEAR)
    return np.asarray(out), m, np.asarray(shift, float)


def test_landmarks_follow_the_face_when_it_is_moved_scaled_and_rotated(detector):
    rng = np.random.default_rng(0)
    errors, template = [], []
    for person, k in [(1, 1), (5, 3), (9, 2), (14, 7), (22, 5), (31, 9)]:
        face = _orl(person, k)
        padded = np.zeros((200, 200, 3), np.uint8)
        padded[44:156, 44:156] = face
        upright = detector.detect(padded)
        assert upright, f"no face in ORL s{person}/{k}"
        ref = upright[0].landmarks - 44
        template.append(np.linalg.norm(ref - ARCFACE_TEMPLATE, axis=1).mean())
        canvas, m, t = _placed(face, rng.uniform(-25, 25), rng.uniform(1.4, 2.0), rng.uniform(100, 130, 2))
        faces = detector.detect(canvas)
        assert faces and faces[0].score > 0.9
        back = (faces[0].landmarks.astype(np.float64) - t) @ np.linalg.inv(m).T
        errors.append(np.linalg.norm(back - ref, axis=1).mean())
        # the re-aligned face is the original aligned face again
        aligned, _ = align_photo(canvas)
        again, _ = align_photo(padded)
        assert aligned.shape == (3, 112, 112)
        inner = np.s_[:, 16:96, 16:96]  # the face, away from the borders either picture may lack
        assert np.corrcoef(aligned[inner].ravel(), again[inner].ravel())[0, 1] > 0.7  # 0.75-0.99 measured
    assert max(errors) < 3.0, errors          # landmarks move with the face (pixels of the 112 x 112 crop)
    assert np.mean(template) < 6.0, template  # and land near the ArcFace template the crops were aligned to


def test_no_face_in_an_empty_or_noisy_picture(detector):
    assert detector.detect(np.full((240, 320, 3), 128, np.uint8)) == []
    assert detector.detect(np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)) == []
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        detector.detect(np.zeros((10, 10), np.float32))


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], float)
    assert nms(boxes, np.array([0.8, 0.9, 0.7]), 0.5).tolist() == [1, 2]
    inner = np.array([[0, 0, 20, 20], [2, 2, 8, 8]], float)
    assert nms(inner, np.array([0.9, 0.8]), 0.5).tolist() == [0, 1]           # small overlap over the union
    assert nms(inner, np.array([0.9, 0.8]), 0.5, mode="min").tolist() == [0]  # but inside the larger box


def test_align_command_keeps_identities_lists_misses_and_protects_the_folder(tmp_path, capsys):
    src = tmp_path / "photos"
    for person, k, name in [(3, 1, "a"), (3, 2, "b"), (7, 4, "c")]:
        canvas, _, _ = _placed(_orl(person, k), 12.0 * (k - 2), 1.7, (90, 70))
        (src / f"s{person}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(canvas).save(src / f"s{person}" / f"{name}.jpg", quality=92)
    Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(src / "s7" / "wall.png")
    (src / "s7" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    out = tmp_path / "aligned"
    assert main(["align", str(src), str(out)]) == 0
    assert "aligned 3 of 5 photos" in capsys.readouterr().out
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["s3/a.png", "s3/b.png", "s7/c.png"]
    report = json.loads((out / "align_report.json").read_text())
    assert report["no_face"] == ["s7/wall.png"] and report["unreadable"] == ["s7/broken.jpg"]
    with Image.open(out / "s3" / "a.png") as im:
        assert im.size == (112, 112)
    # the aligned folder is a face set pocketnas reads
    from pocketnas.data import FolderDataset

    assert FolderDataset(str(out), train=False).identities == ["s3", "s7"]
    assert main(["align", str(src), str(out)]) == 2
    assert "add --overwrite" in capsys.readouterr().err
    (out / "mine.txt").write_text("keep")
    assert main(["align", str(src), str(out), "--overwrite"]) == 0
    assert (out / "mine.txt").read_text() == "keep"
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("x")
    assert main(["align", str(src), str(other)]) == 2
    assert "did not write" in capsys.readouterr().err


def test_read_photo_turns_an_exif_rotated_photo_upright(tmp_path):
    face = _orl(2, 1)
    im = Image.fromarray(np.ascontiguousarray(np.rot90(face)))  # stored sideways, as a phone does
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter anticlockwise: "rotate 90 clockwise to view"
    im.save(tmp_path / "side.jpg", exif=exif, quality=95)
    upright = read_photo(str(tmp_path / "side.jpg"))
    assert upright.shape == (112, 112, 3)
    assert np.abs(upright.astype(float) - face.astype(float)).mean() < 8


@pytest.mark.slow
@pytest.mark.onnx
def test_verify_two_photos_with_a_real_embedder(tmp_path, shared, capsys):
    pytest.importorskip("onnxruntime")
    from pocketnas.data import RecordDataset

    ds = RecordDataset(f"{shared}/data/celeba295", train=False)
    labels = ds.labels()
    first = np.flatnonzero(labels == labels[0])[:2]
    other = np.flatnonzero(labels != labels[0])[0]
    paths = []
    for i, idx in enumerate([first[0], first[1], other]):
        canvas, _, _ = _placed(ds.read_uint8(int(idx))[0].transpose(1, 2, 0).copy(), (-10, 15, 5)[i], 1.8, (90, 70))
        paths.append(str(tmp_path / f"{i}.jpg"))
        Image.fromarray(canvas).save(paths[-1], quality=95)
    sface = f"{shared}/weights/sface_fp32.onnx"
    common = ["--model", sface, "--input-norm", "raw255", "--threshold", "0.35", "--threads", "2"]
    assert main(["verify", paths[0], paths[1], *common, "--json", str(tmp_path / "same.json"),
                 "--save-faces", str(tmp_path / "faces")]) == 0
    assert "the same person" in capsys.readouterr().out
    assert main(["verify", paths[0], paths[2], *common, "--json", str(tmp_path / "diff.json")]) == 0
    assert "different people" in capsys.readouterr().out
    same = json.loads((tmp_path / "same.json").read_text())
    diff = json.loads((tmp_path / "diff.json").read_text())
    assert same["cosine"] > diff["cosine"] + 0.2 and same["faces_found"] == [1, 1]
    assert (tmp_path / "faces" / "a.png").exists()
    # without --threshold, an ONNX file records none: the message says how to get one
    assert main(["verify", paths[0], paths[1], "--model", sface, "--input-norm", "raw255"]) == 2
    assert "records no verification threshold" in capsys.readouterr().err


@pytest.mark.slow
def test_verify_uses_the_threshold_recorded_with_a_checkpoint(tmp_path, orl_bin, capsys):
    import torch

    import pocketnas
    from pocketnas.models.calibrate import calibrate_batchnorm

    torch.manual_seed(0)
    model = pocketnas.create_model("pocketnet", channels=4, layers=3, embedding_size=32)
    faces = pocketnas.data.normalize(torch.as_tensor(np.stack([_orl(p, 1).transpose(2, 0, 1) for p in range(1, 41)])))
    calibrate_batchnorm(model, faces.split(20))
    path = str(tmp_path / "m.pt")
    pocketnas.save(model, path)
    before = pocketnas.models.checkpoint.read_checkpoint(path)["weights_sha256"]
    assert main(["eval", "verify", "--model", path, "--bin", orl_bin, "--record-threshold",
                 "--no-cost", "--threads", "2"]) == 0
    record = pocketnas.models.checkpoint.read_checkpoint(path)
    v = record["meta"]["verification"]
    assert v["set"] == "orl" and v["pairs"] == 600 and -1 < v["cosine_threshold"] < 1
    assert record["weights_sha256"] == before
    a = tmp_path / "a.png"
    Image.fromarray(_orl(4, 1)).save(a)
    b = tmp_path / "b.png"
    Image.fromarray(_orl(4, 2)).save(b)
    capsys.readouterr()
    assert main(["verify", str(a), str(b), "--model", path, "--aligned", "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert f"threshold {v['cosine_threshold']:.4f} (recorded in m.pt: orl" in out
