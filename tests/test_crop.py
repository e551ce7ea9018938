"""`pocketnas data crop`: periocular (and any) regions of aligned faces from packs, folders and .bin files, with
identities, labels and pairs kept and the crop where the ArcFace template says."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from pocketnas.cli import build_parser, main
from pocketnas.data import orl_root
from pocketnas.data.binfile import read_bin_raw, write_bin
from pocketnas.data.crop import REGIONS, TEMPLATE_EYES, crop_face, make_crop, parse_box
from pocketnas.data.decode import decode_image
from pocketnas.data.pack import pack_folder
from pocketnas.data.record_dataset import RecordDataset
from pocketnas.errors import InputError


def _marked_face(side: int, box) -> np.ndarray:
    """A side x side image, 200 inside ``box`` (template pixels scaled to ``side``) and 20 elsewhere."""
    image = np.full((3, side, side), 20, np.uint8)
    s = side / 112
    x0, y0, x1, y1 = (round(c * s) for c in box)
    image[:, y0:y1, x0:x1] = 200
    return image


@pytest.mark.parametrize("side", [112, 224])
def test_the_crop_is_where_the_template_says(side):
    crop = make_crop("periocular")
    assert (crop.width, crop.height) == (80, 40)
    out = crop_face(_marked_face(side, crop.box), crop)
    assert out.shape == (3, 40, 80)
    assert out[:, 1:-1, 1:-1].min() >= 190  # all of it inside the marked box, at either image size


def test_regions_hold_what_they_name():
    (lx, ly), (rx, ry) = TEMPLATE_EYES
    x0, y0, x1, y1 = REGIONS["periocular"]
    assert x0 < lx < rx < x1 and y0 < ly < y1 and y1 < 71.7  # both eyes, above the nose tip (56.0, 71.7)
    for name, (ex, ey) in (("left_eye", (lx, ly)), ("right_eye", (rx, ry))):
        bx0, by0, bx1, by1 = REGIONS[name]
        assert bx0 < ex < bx1 and by0 < ey < by1
    assert parse_box("10,20,50,40") == (10.0, 20.0, 50.0, 40.0)
    for bad in ("10,20,50", "50,20,10,40", "0,0,120,40", "a,b,c,d", "nan,0,10,10"):
        with pytest.raises(InputError, match="--box"):
            parse_box(bad)
    assert make_crop(None, "0,0,112,56", (64, 32)).width == 64


def test_cli_regions_are_the_table():
    data = next(a for a in build_parser()._actions if getattr(a, "choices", None) and "data" in a.choices)
    crop = next(a for a in data.choices["data"]._actions if getattr(a, "choices", None) and "crop" in a.choices)
    region = next(a for a in crop.choices["crop"]._actions if a.dest == "region")
    assert list(region.choices) == list(REGIONS)


def test_crop_a_folder_keeps_identities_and_pixels(tmp_path):
    src = tmp_path / "faces"
    for person in ("s1", "s2", "s3"):
        os.makedirs(src / person)
        for k in (1, 2):
            Image.open(os.path.join(orl_root(), person, f"{k}.png")).save(src / person / f"{k}.png")
    out = tmp_path / "eyes"
    assert main(["data", "crop", str(src), str(out), "--region", "left_eye", "--picture",
                 str(tmp_path / "eyes.png")]) == 0
    assert sorted(os.listdir(out)) == ["crop.json", "s1", "s2", "s3"]
    assert json.loads((out / "crop.json").read_text())["region"] == "left_eye"
    original = np.asarray(Image.open(src / "s2" / "1.png").convert("RGB")).transpose(2, 0, 1)
    cut = np.asarray(Image.open(out / "s2" / "1.png")).transpose(2, 0, 1)
    assert cut.shape == (3, 36, 36)
    np.testing.assert_array_equal(cut, crop_face(original, make_crop("left_eye")))  # PNG: lossless
    assert os.path.getsize(tmp_path / "eyes.png") > 5000
    # the output is never an input, and an existing one needs --overwrite
    assert main(["data", "crop", str(src), str(src)]) == 2
    assert main(["data", "crop", str(src), str(out)]) == 2
    assert main(["data", "crop", str(src), str(out), "--overwrite"]) == 0


def test_crop_a_pack_keeps_labels_and_records_the_size(tmp_path):
    pack = tmp_path / "pack"
    pack_folder(orl_root(), str(pack), workers=1)
    out = tmp_path / "peri"
    assert main(["data", "crop", str(pack), str(out), "--size", "96x48"]) == 0
    src, dst = RecordDataset(str(pack), train=False, size=None), RecordDataset(str(out), train=False, size=None)
    assert len(dst) == len(src) == 400 and dst.num_classes == 40
    np.testing.assert_array_equal(dst.labels(), src.labels())
    assert (out / "property").read_text().strip() == "40,48,96"
    image, label = dst.sample_uint8(123)
    expected = crop_face(src.sample_uint8(123)[0], make_crop("periocular", size=(96, 48)))
    assert image.shape == (3, 48, 96) and label == src.sample_uint8(123)[1]
    assert np.abs(image.astype(int) - expected).mean() < 3  # JPEG, quality 95


def test_crop_a_bin_keeps_pairs(tmp_path, orl_bin):
    out = tmp_path / "peri.bin"
    assert main(["data", "crop", orl_bin, str(out)]) == 0
    bins, issame = read_bin_raw(str(out))
    src_bins, src_issame = read_bin_raw(orl_bin)
    assert issame == src_issame and len(bins) == len(src_bins)
    assert decode_image(bins[7], "crop").shape == (3, 40, 80)


def test_a_face_that_is_not_square_is_refused_by_name(tmp_path, capsys):
    path = tmp_path / "wide.bin"
    wide = np.zeros((2, 3, 112, 150), np.uint8)
    write_bin(str(path), wide, [True])
    assert main(["data", "crop", str(path), str(tmp_path / "out.bin")]) == 2
    assert "wide.bin: image 0 (pair 0): a 150x112 image is not an aligned square face" in capsys.readouterr().err
    assert not (tmp_path / "out.bin").exists()


def test_crop_refuses_a_pickle_that_is_not_pairs(tmp_path):
    path = tmp_path / "not_pairs.bin"
    path.write_bytes(pickle.dumps({"a": 1}))
    assert main(["data", "crop", str(path), str(tmp_path / "o.bin")]) == 2
    assert not (tmp_path / "o.bin").exists()
