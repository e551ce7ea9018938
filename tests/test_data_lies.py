"""Issue 39, patterns 3-6: data and files that lie are refused or handled, values are checked where they enter,
and every such failure is one message naming the file, the record or the value."""
from __future__ import annotations

import logging
import os
import shutil
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import pocketnas
from pocketnas.cli import main
from pocketnas.data import orl_root
from pocketnas.errors import InputError, PocketnasError


def _faces(tmp_path, people=3, per=2):
    """A small identity folder of real ORL faces."""
    root = tmp_path / "faces"
    people = sorted(d for d in os.listdir(orl_root()) if os.path.isdir(os.path.join(orl_root(), d)))[:people]
    for person in people:
        src = os.path.join(orl_root(), person)
        (root / person).mkdir(parents=True)
        for f in sorted(os.listdir(src))[:per]:
            shutil.copy(os.path.join(src, f), root / person / f)
    return root


def _png_header(width, height):
    """A PNG that declares ``width`` x ``height`` in a valid IHDR and holds no pixels: a decompression bomb's
    header (a real bomb's few kilobytes of zlib would decode to gigabytes)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


# ----------------------------------------------------------------------------- folders
def test_hidden_and_empty_folders_are_not_identities(tmp_path, caplog):
    from pocketnas.data.folder import scan_folder

    root = _faces(tmp_path)
    face = next((root / sorted(os.listdir(root))[0]).iterdir())
    (root / ".ipynb_checkpoints").mkdir()
    shutil.copy(face, root / ".ipynb_checkpoints" / "x.pgm")
    (root / "empty_person").mkdir()
    (root / sorted(os.listdir(root))[1] / ".DS_Store").write_bytes(b"junk")
    with caplog.at_level(logging.INFO, logger="pocketnas"):
        identities, samples = scan_folder(str(root))
    assert ".ipynb_checkpoints" not in identities and "empty_person" not in identities and len(identities) == 3
    assert len(samples) == 6 and not any(".DS_Store" in p for p, _ in samples)
    assert "1 hidden folder(s)" in caplog.text and "1 folder(s) without images" in caplog.text


def test_symlink_loops_are_followed_once(tmp_path):
    from pocketnas.data.folder import scan_folder, walk_images
    from pocketnas.detection.photos import _photos

    root = _faces(tmp_path)
    person = root / sorted(os.listdir(root))[0]
    os.symlink(person, person / "again")  # a link to itself
    os.symlink(root, person / "up")  # and one to its parent: two loops
    t = time.perf_counter()
    found = walk_images(str(root))
    assert time.perf_counter() - t < 5
    assert len(found) == 6 and len({os.path.realpath(p) for p in found}) == 6
    assert len(_photos(str(root))) == 6
    assert len(scan_folder(str(root))[1]) == 6


# ----------------------------------------------------------------------------- images
def test_a_decompression_bomb_is_refused_by_name_before_decoding(tmp_path):
    from pocketnas.data.folder import FolderDataset, load_image

    root = _faces(tmp_path)
    bomb = root / sorted(os.listdir(root))[0] / "bomb.png"
    bomb.write_bytes(_png_header(30000, 30000))
    with pytest.raises(InputError, match="bomb.png.*30000 x 30000 pixels"):
        load_image(str(bomb))
    ds = FolderDataset(str(root), train=False)
    with pytest.raises(InputError, match="bomb.png.*decompression bomb"):
        ds.check_records()  # before training's first step
    assert len(FolderDataset(str(root), train=False, skip_bad=True)) == 6  # --skip-bad leaves it out


def test_a_decompression_bomb_in_a_pack_is_refused_by_record(tmp_path):
    from pocketnas.data.record_dataset import RecordDataset
    from pocketnas.data.recordio import write_insightface_pack

    faces = [(open(os.path.join(orl_root(), "s1", f), "rb").read(), 0) for f in sorted(os.listdir(
        os.path.join(orl_root(), "s1")))[:2]]
    faces.append((_png_header(20000, 20000), 1))
    write_insightface_pack(str(tmp_path), faces + [(faces[0][0], 1)], 2)
    with pytest.raises(PocketnasError, match="record 3: 20000 x 20000 pixels"):
        RecordDataset(str(tmp_path), train=False).check_records()


@pytest.mark.parametrize("mode,values,expect", [
    ("I", np.arange(256, dtype=np.int32), "kept"),           # 32-bit integer holding 8-bit data: not scaled dark
    ("I", np.arange(0, 65536, 257, dtype=np.int32), "scaled"),  # 16-bit data in a 32-bit image
    ("F", np.linspace(0, 1, 256, dtype=np.float32), "scaled"),
])
def test_every_image_mode_means_what_it_holds(mode, values, expect, tmp_path):
    from pocketnas.data.transforms import pil_to_chw_uint8

    grid = np.resize(values, (16, 16))
    out = pil_to_chw_uint8(Image.fromarray(grid, mode))
    assert out.shape == (3, 16, 16) and out.max() == 255 and out.min() == 0  # full range, whatever the storage


@pytest.mark.parametrize("mode,array", [
    ("I", np.full((8, 8), 70000, np.int32)),
    ("I", np.full((8, 8), -5, np.int32)),
    ("F", np.full((8, 8), 300.5, np.float32)),
])
def test_image_values_without_a_certain_scale_are_refused(mode, array):
    from pocketnas.data.transforms import pil_to_chw_uint8

    with pytest.raises(InputError, match="convert it to 8-bit RGB"):
        pil_to_chw_uint8(Image.fromarray(array, mode))


def test_modes_without_a_meaning_here_are_refused():
    from pocketnas.data.transforms import pil_to_chw_uint8

    with pytest.raises(InputError, match="HSV image"):
        pil_to_chw_uint8(Image.new("HSV", (8, 8)))


# ----------------------------------------------------------------------------- packs
def test_idx_keys_are_checked_against_record_headers(tmp_path, shared):
    from pocketnas.data.record_dataset import RecordDataset

    pack = tmp_path / "pack"
    shutil.copytree(os.path.join(shared, "data", "orl", "rec"), pack)
    lines = (pack / "train.idx").read_text().splitlines()
    k1, off1 = lines[1].split("\t")
    k2, off2 = lines[2].split("\t")
    lines[1], lines[2] = f"{k1}\t{off2}", f"{k2}\t{off1}"  # two keys pointing at each other's records
    (pack / "train.idx").write_text("\n".join(lines) + "\n")
    with pytest.raises(PocketnasError, match=r"record 1: the index points to a record whose header says id 2"):
        RecordDataset(str(pack), train=False).check_records()


# ----------------------------------------------------------------------------- the teacher cache
def _cache(folder, key=None):
    from pocketnas.engine.teachers import TeacherCache

    return TeacherCache(str(folder), images=4, dim=3, key=key or {"teacher": "t"}, views=2)


def test_a_damaged_teacher_cache_entry_is_recomputed_never_used(tmp_path, caplog):
    cache = _cache(tmp_path)
    cache.store(np.array([0, 1]), np.array([0, 1]), np.ones((2, 3), np.float32), step=5)
    cache.values.flush(), cache.steps.flush(), cache.sums.flush()
    del cache
    raw = np.memmap(tmp_path / "embeddings.f32", np.float32, "r+", shape=(4, 2, 3))
    raw[1, 1] = 0.0  # a block zero-filled (a truncated file extended again, a bad sector)
    raw.flush()
    del raw
    cache = _cache(tmp_path)
    with caplog.at_level(logging.WARNING, logger="pocketnas"):
        written, values = cache.lookup(np.array([0, 1]), np.array([0, 1]))
    assert written.tolist() == [True, False] and cache.damaged == 1 and "fails its checksum" in caplog.text
    assert np.allclose(values[0], 1.0)


def test_a_truncated_teacher_cache_starts_afresh(tmp_path, caplog):
    cache = _cache(tmp_path)
    cache.store(np.array([0]), np.array([0]), np.ones((1, 3), np.float32), step=1)
    cache.values.flush()
    del cache
    with open(tmp_path / "embeddings.f32", "r+b") as f:
        f.truncate(10)
    with caplog.at_level(logging.WARNING, logger="pocketnas"):
        cache = _cache(tmp_path)
    assert "do not have their recorded length" in caplog.text and "embeddings.f32 (10 bytes" in caplog.text
    assert not cache.lookup(np.array([0]), np.array([0]))[0].any()


# ----------------------------------------------------------------------------- teachers and thresholds
def test_a_registry_teacher_without_weights_is_refused_before_the_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", orl_root(), "--out", str(out), "--teacher", "iresnet18", "--kd", "embedding"]) == 2
    assert "iresnet18: no weights ship for it" in capsys.readouterr().err and not out.exists()


@pytest.mark.onnx
def test_a_teacher_with_the_wrong_output_shape_is_refused_by_name(tmp_path, monkeypatch):
    from pocketnas.engine.teachers import build_fixed_teacher

    class Maps(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x, 28)  # N x 3 x 4 x 4: a map, not an embedding

    path = tmp_path / "maps.onnx"
    torch.onnx.export(Maps(), torch.zeros(1, 3, 112, 112), str(path), input_names=["data"], output_names=["out"],
                      dynamic_axes={"data": {0: "n"}, "out": {0: "n"}}, dynamo=False)
    with pytest.raises(InputError, match=r"maps.onnx: its output is \['n', 3, 4, 4\]; a face embedder gives N x D"):
        build_fixed_teacher(str(path), input_norm="arcface")  # its declared output shape, when it is opened
    # an embedder that declares nothing (a network, or a graph ONNX Runtime cannot infer) is caught by the probe
    import pocketnas.engine.teachers as teachers

    class Undeclared:
        input_size, embedding_size = 112, None

        def __call__(self, images):
            return np.zeros((len(images), 3, 4, 4), np.float32)

    monkeypatch.setattr(teachers, "load_embedder", lambda *a, **k: Undeclared())
    with pytest.raises(InputError, match=r"maps.onnx: answers two images with an array of shape \(2, 3, 4, 4\)"):
        build_fixed_teacher(str(path), input_norm="arcface")


def test_a_recorded_threshold_outside_cosine_range_is_refused(tmp_path, capsys):
    from pocketnas.models.checkpoint import CheckpointError, read_checkpoint

    model = pocketnas.create_model("pocketnet", channels=4, layers=3, embedding_size=32)
    face = os.path.join(orl_root(), "s1", sorted(os.listdir(os.path.join(orl_root(), "s1")))[0])
    for value in (float("nan"), 7.5):
        path = tmp_path / f"m{value}.pt"
        pocketnas.save(model, str(path), meta={"verification": {"cosine_threshold": value, "set": "x",
                                                                 "accuracy": 0.9}})
        with pytest.raises(CheckpointError, match="not a cosine in"):
            read_checkpoint(str(path))
        assert main(["verify", face, face, "--model", str(path), "--aligned"]) == 2
        assert "not a cosine in [-1, 1]" in capsys.readouterr().err


@pytest.mark.parametrize("image", [np.zeros((112, 112), np.uint8), np.full((1, 1), 128, np.uint8)])
def test_a_blank_or_tiny_aligned_image_is_not_a_face(image, tmp_path, capsys):
    path = tmp_path / "blank.png"
    Image.fromarray(image).save(path)
    assert main(["verify", str(path), str(path), "--model", "pocketnet_s_128", "--aligned"]) == 2
    err = capsys.readouterr().err
    assert "blank.png" in err and ("flat colour" in err or "too small" in err)


# ----------------------------------------------------------------------------- files of another kind
@pytest.mark.onnx
def test_an_onnx_file_named_pt_is_diagnosed(tmp_path, shared):
    from pocketnas.models.checkpoint import CheckpointError, read_checkpoint

    fake = tmp_path / "model.pt"
    shutil.copy(os.path.join(shared, "weights", "sface_fp32.onnx"), fake)
    with pytest.raises(CheckpointError, match="an ONNX model, not a PyTorch file"):
        read_checkpoint(str(fake))


@pytest.mark.parametrize("field,value", [("arch", 5), ("kwargs", "x"), ("format_version", "1"),
                                         ("input_size", -1), ("input_norm", "bgr")])
def test_a_checkpoint_header_of_the_wrong_type_is_refused(field, value, tmp_path):
    from pocketnas.models.checkpoint import CheckpointError, read_checkpoint

    path = tmp_path / "m.pt"
    pocketnas.save(pocketnas.create_model("pocketnet", channels=4, layers=3, embedding_size=32), str(path))
    record = torch.load(path, weights_only=True)
    record[field] = value
    torch.save(record, path)
    with pytest.raises(CheckpointError, match=field):
        read_checkpoint(str(path))


@pytest.mark.parametrize("content,message", [("{not json", "malformed JSON"), ("[1, 2]", "a JSON list"),
                                              ('{"entries": [{"name": "a"}]}', r"entries\[0\]: lacks 'genotype'"),
                                              ('{"entries": 3}', "'entries' is a int")])
def test_a_malformed_candidates_json_is_named(content, message, tmp_path, capsys):
    path = tmp_path / "candidates.json"
    path.write_text(content)
    from pocketnas.evaluation.nas_eval import load_entries

    with pytest.raises(InputError, match=message):
        load_entries([str(path)])


def test_a_malformed_compare_input_is_named(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text('{"lfw": {"accuracy_mean": "high"}, "_meta": {"cost": {"params": 1, "mflops": 1}}}')
    assert main(["eval", "compare", str(path), "--out", str(tmp_path / "t.png")]) == 2
    assert "r.json: lfw: 'accuracy_mean' is a str" in capsys.readouterr().err


def test_a_malformed_search_space_is_a_message(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("name: x\noperations: [conv_9x9, max_pool_3x3]\n")
    assert main(["search", "--space", str(space), "--method", "random", "--out", str(tmp_path / "s")]) == 2
    assert "conv_9x9" in capsys.readouterr().err


def test_an_unreachable_budget_is_said_at_once(tmp_path, capsys):
    t = time.perf_counter()
    assert main(["search", "--method", "random", "--budget-params", "1", "--out", str(tmp_path / "s")]) == 2
    assert "out of reach" in capsys.readouterr().err and time.perf_counter() - t < 60


def test_seed_minus_one_and_a_missing_data_path_are_refused_before_the_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", orl_root(), "--out", str(out), "--set", "seed=-1"]) == 2
    assert "seed must be >= 0" in capsys.readouterr().err and not out.exists()
    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "nope: no such file or folder" in capsys.readouterr().err and not out.exists()


@pytest.mark.onnx
def test_a_wrong_teacher_or_hint_layer_is_refused_before_the_run_folder(tmp_path, capsys):
    class Maps(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x, 28)

    maps = tmp_path / "maps.onnx"
    torch.onnx.export(Maps(), torch.zeros(1, 3, 112, 112), str(maps), input_names=["data"], output_names=["out"],
                      dynamic_axes={"data": {0: "n"}, "out": {0: "n"}}, dynamo=False)
    out = tmp_path / "run"
    assert main(["train", "--data", orl_root(), "--out", str(out), "--kd", "embedding", "--teacher", str(maps),
                 "--teacher-input-norm", "arcface"]) == 2
    assert "maps.onnx: its output is" in capsys.readouterr().err and not out.exists()
    teacher = tmp_path / "t.pt"
    pocketnas.save(pocketnas.create_model("pocketnet", channels=4, layers=3, embedding_size=32), str(teacher))
    for hint, who in (("[[cells.99, cells.0]]", "the student"), ("[[cells.0, cells.77]]", "the teacher")):
        assert main(["train", "--data", orl_root(), "--out", str(out), "--kd", "hint", "--teacher", str(teacher),
                     "--set", f"hint_layers={hint}", "--set", "arch=pocketnet",
                     "--set", "model_kwargs={channels: 4, layers: 3, embedding_size: 32}"]) == 2
        err = capsys.readouterr().err
        assert f"hint_layers: {who}" in err and "has no module" in err and not out.exists(), err
