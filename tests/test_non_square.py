"""Networks of non-square input (a periocular band cut by `pocketnas data crop`) through every step a face network
takes: build, train (distilled too), checkpoint, evaluation on .bin sets and folders, ONNX export, pruning."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import pocketnas
from pocketnas.cli import main
from pocketnas.config import ConfigError, config_from_dict
from pocketnas.data import orl_root
from pocketnas.data.binfile import read_bin
from pocketnas.data.crop import crop_face, make_crop
from pocketnas.data.face_sets import open_face_dataset
from pocketnas.data.transforms import fit_size
from pocketnas.engine.train_config import TrainConfig
from pocketnas.engine.trainer import train, view_hw
from pocketnas.errors import InputError
from pocketnas.image_size import as_hw, hw_text, px_text, recorded, shape_hw
from pocketnas.models import create_model
from pocketnas.models.checkpoint import CheckpointError, check_header, save
from pocketnas.models.embedders import OnnxEmbedder, TorchEmbedder

BAND = [48, 96]  # height, width: the periocular band (80 x 40 template pixels) at 1.2x, sides multiples of 16
TINY = dict(arch="pocketnet", model_kwargs={"channels": 4, "layers": 3, "embedding_size": 32, "input_size": BAND},
            batch_size=16, workers=0, epochs=1, max_batches_per_epoch=3, lr=0.1, lr_reference_batch=16,
            milestones=[1], margin_s=32.0, margin_m=0.3, log_every=1, threads=2)


@pytest.fixture(scope="module")
def band(tmp_path_factory, orl_bin):
    """The bundled ORL faces and their pairs, cut to the periocular band at 96 x 48."""
    root = tmp_path_factory.mktemp("band")
    folder, pairs = str(root / "orl_band"), str(root / "orl_band.bin")
    assert main(["data", "crop", orl_root(), folder, "--region", "periocular", "--size", "96x48"]) == 0
    assert main(["data", "crop", orl_bin, pairs, "--region", "periocular", "--size", "96x48"]) == 0
    return folder, pairs


def test_sizes_read_either_way():
    assert as_hw(112) == (112, 112) and as_hw([48, 96]) == (48, 96) and as_hw((40, 80)) == (40, 80)
    assert recorded((112, 112)) == 112 and recorded((48, 96)) == [48, 96]
    assert hw_text([48, 96]) == "48x96" and px_text(112) == "112" and px_text([48, 96]) == "48x96"
    assert shape_hw(["N", 3, 48, 96]) == (48, 96)
    assert shape_hw(["N", 3, "h", "w"]) == (112, 112)
    for bad in (0, -4, [48], [48, 0], True, "112", [48.0, 96]):
        with pytest.raises(InputError, match="height, width"):
            as_hw(bad)


@pytest.mark.parametrize("arch,final", [("pocketnet_s_128", (3, 6)), ("mobilefacenet", (3, 6)), ("iresnet18", None)])
def test_every_family_takes_a_band_and_sizes_its_tail_to_the_final_map(arch, final):
    model = create_model(arch, input_size=BAND).eval()
    assert model.input_size == BAND
    with torch.no_grad():
        out = model(torch.randn(2, 3, 48, 96))
    assert out.shape == (2, model.embedding_size) and torch.isfinite(out).all()
    if arch.startswith("pocketnet"):
        assert model.tail[4].kernel_size == final  # the global depthwise conv covers the whole 3 x 6 map
    elif arch == "mobilefacenet":
        assert model.features.layers[0].layers[0].kernel_size == final
    else:
        assert model.fc.in_features == 512 * 3 * 6
    with pytest.raises(InputError, match="48 x 96"):
        model(torch.randn(1, 3, 96, 48))  # the band turned on its side is refused, naming the expected shape


def test_a_square_network_is_unchanged():
    """Square inputs keep the integer size in the header and the square tail kernel (old checkpoints load)."""
    model = create_model("pocketnet_s_128")
    assert model.input_size == 112 and model.tail[4].kernel_size == (7, 7)


@pytest.mark.parametrize("arch,size", [("pocketnet_s_128", [40, 44]), ("mobilefacenet", [40, 96]),
                                       ("iresnet18", [48, 100])])
def test_sides_the_network_cannot_take_are_refused(arch, size):
    with pytest.raises(InputError, match="multiples of"):
        create_model(arch, input_size=size)


def test_a_band_checkpoint_describes_itself_and_round_trips(tmp_path):
    model = create_model("pocketnet_s_128", input_size=BAND, channels=4, layers=3).eval()
    path = str(tmp_path / "band.pt")
    save(model, path)
    back = pocketnas.load(path).eval()
    assert back.input_size == BAND
    header = torch.load(path, weights_only=True)
    assert header["input_size"] == BAND
    x = torch.randn(2, 3, 48, 96)
    with torch.no_grad():
        assert torch.equal(model(x), back(x))
    for bad in ([0, 96], [48], "48x96", [48, 96, 3]):
        with pytest.raises(CheckpointError, match="input_size"):
            check_header({**header, "input_size": bad}, path)


def test_crops_are_read_at_their_own_shape(band, caplog):
    folder, pairs = band
    images, issame = read_bin(pairs, size=BAND, progress=False)
    assert images.shape == (1200, 3, 48, 96) and len(issame) == 600
    assert "resized" not in caplog.text  # stored at 96 x 48 already: no resampling
    faces = open_face_dataset(folder, BAND)
    image, _ = faces.sample_uint8(0)
    assert image.shape == (3, 48, 96)
    x = fit_size(torch.from_numpy(images[:2]), BAND)
    assert x.shape == (2, 3, 48, 96) and torch.equal(x, torch.from_numpy(images[:2]).float())
    assert fit_size(torch.from_numpy(images[:2]), 56).shape == (2, 3, 56, 56)


def test_views_take_the_students_shape_and_refuse_a_teacher_of_another():
    assert view_hw(0, (48, 96), None) == (48, 96)
    assert view_hw(0, (48, 96), (48, 96)) == (48, 96)
    assert view_hw(0, (56, 56), (112, 112)) == (112, 112)  # squares: the larger, as before
    with pytest.raises(ConfigError, match="112x112.*48x96"):
        view_hw(0, (48, 96), (112, 112))
    with pytest.raises(ConfigError, match="view_size"):
        view_hw(64, (48, 96), None)


@pytest.mark.slow
def test_a_band_network_trains_distils_verifies_exports_and_prunes(tmp_path, band):
    """The whole road on periocular crops of real faces, through the command line where a user takes it."""
    from pocketnas.evaluation.validation import verify_bins

    folder, pairs = band
    teacher_run = str(tmp_path / "teacher")
    history = train(config_from_dict(TrainConfig, {**TINY, "data": folder, "val_bins": [pairs]}), teacher_run,
                    verifier=verify_bins)
    assert 0.5 <= history["verification"][1]["orl_band"] <= 1.0
    teacher = os.path.join(teacher_run, "model.pt")
    assert pocketnas.load(teacher).input_size == BAND

    student = str(tmp_path / "student")  # distilled from the band teacher: the same views for both
    kd = {"kd": "embedding", "teacher": teacher, "kd_weight": 10.0,
          "model_kwargs": {**TINY["model_kwargs"], "channels": 2}}
    history = train(config_from_dict(TrainConfig, {**TINY, **kd, "data": folder}), student)
    assert np.isfinite(history["epochs"][0]["kd"])
    log = open(os.path.join(student, "log.txt")).read()
    assert "views 48x96 px" in log

    square = {"kd": "embedding", "teacher": teacher, "kd_weight": 10.0,
              "model_kwargs": {"channels": 2, "layers": 3, "embedding_size": 32}}
    with pytest.raises(ConfigError, match="aspects must match"):
        train(config_from_dict(TrainConfig, {**TINY, **square, "data": folder}), str(tmp_path / "mixed"))

    onnx_path = str(tmp_path / "band.onnx")
    assert main(["export", "--model", teacher, "--out", onnx_path, "--bin", pairs]) == 0
    onnx = OnnxEmbedder(onnx_path)
    assert onnx.input_size == BAND
    images, _ = read_bin(pairs, size=BAND, progress=False)
    torch_emb = TorchEmbedder(pocketnas.load(teacher))(images[:8])
    np.testing.assert_allclose(onnx(images[:8]), torch_emb, rtol=1e-3, atol=1e-4)

    assert main(["eval", "pairs", folder, "--model", onnx_path, "--json", str(tmp_path / "pairs.json")]) == 0
    assert main(["prune", "--model", teacher, "--data", folder, "--out", str(tmp_path / "pruned"), "--method",
                 "layer_weight", "--rate", "8", "--finetune-epochs", "1", "--bin", pairs]) == 0
    pruned = pocketnas.load(str(tmp_path / "pruned" / "model.pt"))
    assert pruned.input_size == BAND
    weights = [m.weight for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros > 0.8


def test_calibration_faces_for_a_band_are_the_bundled_periocular_crops():
    from pocketnas.compress.deploy import face_crops

    crops = face_crops(None, 4, BAND)
    assert crops.shape == (4, 3, 48, 96)
    faces = open_face_dataset(orl_root(), 112)
    first = int(np.sort(np.random.default_rng(0).choice(len(faces), 4, replace=False))[0])
    assert np.array_equal(crops[0], crop_face(faces.sample_uint8(first)[0], make_crop("periocular", size=(96, 48))))


def test_photos_need_aligned_crops_for_a_band_network(tmp_path):
    from PIL import Image

    from pocketnas.evaluation.photos import face_of

    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 110, 3), dtype=np.uint8)).save(photo)
    with pytest.raises(InputError, match="48x96 crops"):
        face_of(str(photo), BAND, aligned=False)
    face, n = face_of(str(photo), BAND, aligned=True)
    assert face.shape == (3, 48, 96) and n == 1
