"""Distillation pieces: relational losses, consistent views with a live teacher, view banks, label-free runs."""
import os
import shutil

import numpy as np
import pytest
import torch

from pocketnas.data import FolderDataset, orl_root
from pocketnas.data.views import FaceViewAugment, mixup
from pocketnas.engine.sampling import EpochBatchSampler, TrainSamples, ViewBatches
from pocketnas.engine.teachers import LiveTeacher
from pocketnas.engine.trainer import train
from pocketnas.losses import build_distill_loss

from test_train import tiny


@pytest.fixture(scope="module")
def small_teacher(tmp_path_factory):
    """A tiny trained pocketnas network as a teacher (48-d, 112 px)."""
    run = str(tmp_path_factory.mktemp("t"))
    train(tiny(model_kwargs={"channels": 8, "layers": 3, "embedding_size": 48}, epochs=1), run)
    return os.path.join(run, "model.pt")


def _rotation(d, seed=0):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.float()


@pytest.mark.parametrize("name", ["rkd", "sp"])
def test_relational_loss_is_zero_for_a_rotation_and_positive_otherwise(name):
    teacher = torch.randn(16, 64)
    loss = build_distill_loss(name, weight=1.0)
    rotated = teacher @ _rotation(64) * 3.0  # another coordinate frame, another scale
    assert float(loss(rotated, teacher)) < 1e-6
    assert float(loss(torch.randn(16, 64), teacher)) > 1e-3
    # a smaller student (no projection needed): a rotation of the teacher's 64-d within a 64-d space of 80
    wide = torch.cat([rotated, torch.zeros(16, 16)], 1)
    assert float(loss(wide, teacher)) < 1e-6


def test_rkd_matches_hand_computed_distances_and_angles():
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    rkd = build_distill_loss("rkd", weight=1.0, distance_weight=1.0, angle_weight=0.0)
    # pair distances (01, 02, 12): teacher (sqrt2, 2, sqrt2), student (sqrt2, sqrt2, 2), both of mean
    # m = (2 sqrt2 + 2) / 3; pairs 02 and 12 differ by (2 - sqrt2) / m, each in both halves of the 3 x 3 matrix
    m = (2 * 2 ** 0.5 + 2) / 3
    diff = (2 - 2 ** 0.5) / m
    expected = 4 * 0.5 * diff ** 2 / 9  # Huber (smooth L1) below 1: x^2 / 2, averaged over 9 entries
    assert abs(float(rkd(s, t)) - float(expected)) < 1e-5
    angle = build_distill_loss("rkd", weight=1.0, distance_weight=0.0, angle_weight=1.0)
    # the angle at the middle point: teacher 90 degrees (cos 0), student 90 degrees too
    assert float(angle(t, t)) == 0.0


def test_views_are_deterministic_consistent_and_change_every_epoch():
    faces = FolderDataset(orl_root(), train=False)
    samples = TrainSamples(faces, seed=3, augment=FaceViewAugment())
    a = samples[5][0]
    assert torch.equal(a, samples[5][0]) and a.dtype == torch.uint8 and a.shape == (3, 112, 112)
    samples.set_epoch(1)
    b = samples[5][0]
    assert not torch.equal(a, b) and samples[5][3] == -1
    bank = TrainSamples(faces, seed=3, augment=FaceViewAugment(), view_bank=4)
    seen = {}
    for epoch in range(12):
        bank.set_epoch(epoch)
        x, _, _, v = bank[5]
        assert 0 <= v < 4
        if v in seen:
            assert torch.equal(seen[v], x)  # a view of the bank is always the same pixels
        seen[v] = x
    assert len(seen) > 1
    # a view stays a face: close to the original on average, not a constant image
    orig = torch.from_numpy(faces.read_uint8(5)).float()
    assert (a.float() - orig).abs().mean() < 60 and a.float().std() > 10


def test_mixup_mixes_pairs():
    rng = np.random.default_rng(0)
    images = np.stack([np.full((3, 4, 4), v, np.uint8) for v in (0, 100, 200)])
    out = mixup(images, rng, alpha=1.0)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert not np.array_equal(out, images)


def test_live_teacher_in_workers_sees_the_students_pixels(small_teacher):
    """Teacher and student receive the same views: the embeddings computed in the DataLoader workers are the
    teacher's embeddings of exactly the batch the training step gets."""
    import pocketnas

    faces = FolderDataset(orl_root(), train=False)
    samples = TrainSamples(faces, seed=0, augment=FaceViewAugment())
    sampler = EpochBatchSampler(len(faces), 8, seed=0, max_batches=3)
    loader = torch.utils.data.DataLoader(samples, batch_sampler=sampler, num_workers=2,
                                         collate_fn=ViewBatches(samples, teacher=LiveTeacher(small_teacher)))
    teacher = pocketnas.load(small_teacher).eval()
    batches = 0
    for images, labels, index, views, live in loader:
        assert live.shape == (8, 48) and (views == -1).all()
        with torch.no_grad():
            direct = teacher(pocketnas.data.normalize(images))
        assert torch.allclose(live, direct, rtol=1e-4, atol=1e-4)  # float rounding: workers run on other threads
        for i, k in enumerate(index.tolist()):
            assert torch.equal(images[i], samples[k][0])
        batches += 1
    assert batches == 3


@pytest.mark.slow
def test_consistent_views_run_with_a_live_teacher_and_resume_exactly(tmp_path, small_teacher):
    kw = dict(kd="embedding,rkd", teacher=small_teacher, augment=True, workers=2, epochs=2, batch_size=8,
              lr_reference_batch=8, max_batches_per_epoch=2)
    history = train(tiny(**kw), str(tmp_path / "a"))
    log = (tmp_path / "a" / "log.txt").read_text()
    assert "in the 2 DataLoader worker(s), ahead of the student" in log
    assert {"ce", "kd", "rkd"} <= set(history["epochs"][0])
    train(tiny(stop_after_steps=3, **kw), str(tmp_path / "b"))
    train(tiny(**kw), str(tmp_path / "b"), resume=True)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_view_bank_is_cached(tmp_path, small_teacher):
    history = train(tiny(kd="sp", teacher=small_teacher, augment=True, view_bank=2, epochs=3, batch_size=8,
                         lr_reference_batch=8, max_batches_per_epoch=1, data=_people(tmp_path, 1, 2)),
                    str(tmp_path / "run"))
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "embeddings cached (2 views per image)" in log
    # 20 images, 8 a step, 3 epochs, 2 views each: by the third epoch some views come back from the cache
    last = [line for line in log.splitlines() if "teacher cache:" in line][-1]
    hits = int(last.split("teacher cache: ")[1].split(" hits")[0])
    assert hits > 0 and "sp" in history["epochs"][0]


@pytest.mark.slow
def test_a_shared_teacher_cache_serves_the_next_run_and_keeps_keys_apart(tmp_path, small_teacher):
    shared = tmp_path / "cache"
    kw = dict(kd="embedding", teacher=small_teacher, epochs=1, batch_size=8, lr_reference_batch=8,
              max_batches_per_epoch=2, data=_people(tmp_path, 1, 2), teacher_cache_dir=str(shared))

    def hits(run):
        log = (tmp_path / run / "log.txt").read_text()
        last = [line for line in log.splitlines() if "teacher cache:" in line][-1]
        return int(last.split("teacher cache: ")[1].split(" hits")[0])

    train(tiny(**kw), str(tmp_path / "a"))
    assert hits("a") == 0 and not (tmp_path / "a" / "teacher_cache").exists()
    folders = os.listdir(shared)
    assert len(folders) == 1
    train(tiny(**kw), str(tmp_path / "b"))  # the same teacher, data, views and seed: every embedding is a hit
    assert hits("b") == 16 and os.listdir(shared) == folders
    train(tiny(seed=1, **kw), str(tmp_path / "c"))  # another seed, the same image-and-mirror views: shared
    assert hits("c") > 0 and os.listdir(shared) == folders  # (other batches: only some of them were computed)
    train(tiny(augment=True, view_bank=2, **kw), str(tmp_path / "d"))  # other views: another key, its own folder
    assert hits("d") == 0 and len(os.listdir(shared)) == 2


def _people(tmp_path, *ids):
    root = tmp_path / "people"
    for i in ids:
        shutil.copytree(os.path.join(orl_root(), f"s{i}"), root / f"s{i}")
    return str(root)


def test_label_free_run_on_a_flat_folder(tmp_path, small_teacher):
    flat = tmp_path / "flat"
    flat.mkdir()
    for k, person in enumerate(("s1", "s2", "s3")):
        for f in sorted(os.listdir(os.path.join(orl_root(), person)))[:6]:
            shutil.copy(os.path.join(orl_root(), person, f), flat / f"{k}_{f}")
    history = train(tiny(data=str(flat), kd="embedding", teacher=small_teacher, margin_weight=0.0, epochs=2,
                         batch_size=8, lr_reference_batch=8, save_every_epoch=True), str(tmp_path / "run"))
    assert set(history["epochs"][0]) == {"epoch", "kd", "loss"}
    assert history["epochs"][1]["kd"] < history["epochs"][0]["kd"]
    for f in ("model.pt", "checkpoint.pt", "epochs/epoch_001.pt", "epochs/epoch_002.pt"):
        assert (tmp_path / "run" / f).exists(), f
    assert "no labels used, 18 images" in (tmp_path / "run" / "log.txt").read_text()


def test_label_free_run_on_a_pack_without_identity_records(tmp_path, small_teacher):
    """As im2rec writes them: image records only, every label 0, no property file."""
    from pocketnas.data.decode import encode_jpeg
    from pocketnas.data.recordio import RecordIOWriter, pack_payload

    faces = FolderDataset(orl_root(), train=False)
    pack = tmp_path / "im2rec"
    pack.mkdir()
    with RecordIOWriter(str(pack / "train.rec")) as w:
        for k in range(24):
            w.write(k, pack_payload(0.0, encode_jpeg(faces.read_uint8(k * 7)), id=k))
    with pytest.raises(Exception, match="property"):  # with labels it is refused: no class count
        train(tiny(data=str(pack), epochs=1), str(tmp_path / "labelled"))
    history = train(tiny(data=str(pack), kd="rkd", teacher=small_teacher, margin_weight=0.0, epochs=1,
                         batch_size=8, lr_reference_batch=8), str(tmp_path / "run"))
    assert set(history["epochs"][0]) == {"epoch", "rkd", "loss"} and (tmp_path / "run" / "model.pt").exists()


@pytest.mark.slow
def test_teacher_only_phase_then_joint(tmp_path, small_teacher):
    history = train(tiny(kd="embedding", teacher=small_teacher, kd_only_epochs=1, epochs=2), str(tmp_path))
    assert "ce" not in history["epochs"][0] and "ce" in history["epochs"][1]
    assert "kd" in history["epochs"][0] and "kd" in history["epochs"][1]


@pytest.mark.slow
def test_the_head_is_imprinted_as_the_margin_loss_joins_and_a_resume_at_that_boundary_imprints_the_same(
        tmp_path, small_teacher, monkeypatch):
    from pocketnas.config import ConfigError
    from pocketnas.engine import trainer as trainer_module
    from pocketnas.engine.imprint import class_centres

    with pytest.raises(ConfigError, match="imprint_at_joint needs a teacher-only phase"):
        tiny(kd="embedding", teacher=small_teacher, imprint_at_joint=True)
    seen = []
    original = trainer_module.Trainer._imprint_at_joint

    def spy(self):
        original(self)
        expected = class_centres(self.backbone, self.faces, self.faces.num_classes, input_norm=self.student_norm,
                                 progress=False)
        seen.append((self.epoch, self.head.fc.weight.detach().clone(), expected))

    monkeypatch.setattr(trainer_module.Trainer, "_imprint_at_joint", spy)
    kw = dict(kd="embedding", teacher=small_teacher, kd_only_epochs=1, imprint_at_joint=True, epochs=2)
    full = str(tmp_path / "full")
    history = train(tiny(**kw), full)
    assert "ce" not in history["epochs"][0] and "ce" in history["epochs"][1]
    assert len(seen) == 1 and seen[0][0] == 1  # once, as epoch 2 starts
    assert torch.allclose(seen[0][1], seen[0][2], atol=1e-5)  # the centres of the network after epoch 1
    broken = str(tmp_path / "broken")  # killed after epoch 1's last step, before the head joined
    assert train(tiny(**kw, stop_after_steps=3), broken)["stopped_at_step"] == 3 and len(seen) == 1
    train(tiny(**kw), broken, resume=True)
    assert len(seen) == 2 and torch.equal(seen[1][1], seen[0][1])
    a, b = (torch.load(os.path.join(r, "checkpoint.pt"), weights_only=True)["model"] for r in (full, broken))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_student_at_56_learns_from_a_teacher_at_112_on_the_same_views(tmp_path, small_teacher):
    history = train(tiny(kd="embedding", teacher=small_teacher, augment=True, epochs=1,
                         model_kwargs={"channels": 4, "layers": 3, "embedding_size": 32, "input_size": 56}),
                    str(tmp_path))
    log = (tmp_path / "log.txt").read_text()
    assert "views 112 px" in log and "the student sees the views resized to 56 px" in log
    assert np.isfinite(history["epochs"][0]["kd"])


def test_kd_names_are_checked():
    from pocketnas.config import ConfigError

    with pytest.raises(ConfigError, match="unknown distillation loss 'rdk'"):
        tiny(kd="embedding,rdk", teacher="x.pt")
    with pytest.raises(ConfigError, match="mixing faces needs margin_weight=0"):
        tiny(kd="embedding", teacher="x.pt", mixup_alpha=0.5)
    with pytest.raises(ConfigError, match="needs a distillation loss"):
        tiny(margin_weight=0.0)


def test_pretrained_true_checks_the_sha256(tmp_path, monkeypatch):
    """The mechanism behind create_model(name, pretrained=True): the shipped file is hash-checked before it is
    read, and a tampered one is refused with a message."""
    import dataclasses

    import pocketnas
    from pocketnas.models import registry
    from pocketnas.models.checkpoint import CheckpointError, file_digest

    model = pocketnas.create_model("pocketnet_s_128").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    path = tmp_path / "pocketnet_s_128_test.pt"
    pocketnas.save(model, str(path))
    pre = registry.PretrainedCfg(file=path.name, sha256=file_digest(str(path)), data="ORL (test)", teacher="none",
                                 recipe="test", lfw_accuracy=0.5)
    cfg = dataclasses.replace(registry.model_cfg("pocketnet_s_128"), pretrained=pre)
    monkeypatch.setitem(registry._CFGS, "pocketnet_s_128", cfg)
    monkeypatch.setenv("POCKETNAS_WEIGHTS", str(tmp_path))
    loaded = pocketnas.create_model("pocketnet_s_128", pretrained=True).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="differs from the one registered for pocketnet_s_128.*altered"):
        pocketnas.create_model("pocketnet_s_128", pretrained=True)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="no pretrained weights ship for pocketnet_m_256"):
        pocketnas.create_model("pocketnet_m_256", pretrained=True)
