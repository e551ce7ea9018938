import os
import pickle

import pytest
import torch

import pocketnas
from pocketnas import CheckpointError
from pocketnas.models.calibrate import calibrate_batchnorm
from pocketnas.models.checkpoint import read_checkpoint, save_release_state_dict


@pytest.fixture(scope="module")
def calibrated_s128(orl_faces):
    images, _ = orl_faces
    torch.manual_seed(1)
    model = pocketnas.create_model("pocketnet_s_128")
    calibrate_batchnorm(model, images[:80].split(40))
    return model.eval(), images[300:316]


def test_self_describing_checkpoint_round_trip(tmp_path, calibrated_s128):
    model, probe = calibrated_s128
    path = tmp_path / "model.pt"
    pocketnas.save(model, str(path), meta={"epoch": 3})
    record = read_checkpoint(str(path))
    assert record["arch"] == "pocketnet_s_128"
    assert record["embedding_size"] == 128 and record["input_size"] == 112 and record["input_norm"] == "arcface"
    assert record["genotype"] == model.genotype.to_dict()
    assert record["pocketnas_version"] == pocketnas.__version__ and len(record["weights_sha256"]) == 64
    loaded = pocketnas.load(str(path))
    with torch.no_grad():
        a, b = model(probe), loaded(probe)
    assert torch.equal(a, b)
    assert a.abs().max() < 1e3  # calibrated statistics: sane magnitudes, so the comparison means something


def test_custom_genotype_is_rebuilt_from_the_checkpoint(tmp_path):
    model = pocketnas.create_model("pocketnet_m_128", genotype="pocketnet_cifar10", embedding_size=64).eval()
    pocketnas.save(model, str(tmp_path / "m.pt"))
    loaded = pocketnas.load(str(tmp_path / "m.pt"))
    assert loaded.genotype == pocketnas.get_genotype("pocketnet_cifar10") and loaded.embedding_size == 64
    again = pocketnas.create_model("pocketnet_m_128", pretrained=str(tmp_path / "m.pt"))
    assert again.genotype == loaded.genotype


@pytest.mark.slow
def test_release_backbone_loads_with_identical_outputs(tmp_path, calibrated_s128):
    model, probe = calibrated_s128
    path = tmp_path / "backbone.pth"
    save_release_state_dict(model, str(path))
    raw = torch.load(path, weights_only=True)
    assert "format" not in raw and "stem.0.weight" in raw and len(raw) == 1275  # a bare state dict
    loaded = pocketnas.create_model("pocketnet_s_128", pretrained=str(path)).eval()
    assert torch.equal(loaded(probe), model(probe))
    assert torch.equal(pocketnas.load(str(path), arch="pocketnet_s_128")(probe), model(probe))


@pytest.mark.slow
def test_ddp_prefixed_and_wrapped_state_dicts(tmp_path, calibrated_s128):
    model, probe = calibrated_s128
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, tmp_path / "ddp.pth")
    loaded = pocketnas.create_model("pocketnet_s_128", pretrained=str(tmp_path / "ddp.pth")).eval()
    assert torch.equal(loaded(probe), model(probe))


def test_bare_state_dict_without_arch_names_what_fits(tmp_path, calibrated_s128):
    model, _ = calibrated_s128
    save_release_state_dict(model, str(tmp_path / "backbone.pth"))
    with pytest.raises(CheckpointError, match="bare state dict.*fit: pocketnet_s_128"):
        pocketnas.load(str(tmp_path / "backbone.pth"))


def test_other_architecture_is_refused_with_keys(tmp_path):
    save_release_state_dict(pocketnas.create_model("pocketnet_s_128"), str(tmp_path / "s.pth"))
    with pytest.raises(CheckpointError) as err:
        pocketnas.create_model("pocketnet_m_128", pretrained=str(tmp_path / "s.pth"))
    msg = str(err.value)
    assert "does not fit pocketnet_m_128" in msg and "missing keys: cells." in msg
    assert "unexpected keys: cells." in msg and "more)" in msg
    assert "first shape mismatch at stem.0.weight: checkpoint (64, 3, 3, 3), model (128, 3, 3, 3)" in msg
    with pytest.raises(CheckpointError, match="missing keys: conv1.weight"):
        pocketnas.create_model("iresnet18", pretrained=str(tmp_path / "s.pth"))


def test_other_embedding_size_is_refused_at_the_first_mismatch(tmp_path):
    pocketnas.save(pocketnas.create_model("pocketnet_s_256"), str(tmp_path / "s256.pt"))
    with pytest.raises(CheckpointError, match=r"first shape mismatch at tail\.6\.weight: checkpoint \(256, 512"):
        pocketnas.create_model("pocketnet_s_128", pretrained=str(tmp_path / "s256.pt"))


def test_damaged_files_are_refused(tmp_path):
    path = tmp_path / "m.pt"
    pocketnas.save(pocketnas.create_model("pocketnet_s_128"), str(path))
    record = torch.load(path, weights_only=True)
    record["state_dict"]["stem.0.weight"][0, 0, 0, 0] += 1.0
    torch.save(record, tmp_path / "tampered.pt")
    with pytest.raises(CheckpointError, match="tampered.pt: weights sha256 .* damaged"):
        pocketnas.load(str(tmp_path / "tampered.pt"))
    data = path.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable PyTorch weights file"):
        pocketnas.load(str(tmp_path / "truncated.pt"))
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        pocketnas.load(str(tmp_path / "missing.pt"))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_is_never_run(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"stem.0.weight": _Payload(str(marker))}, f)
    with pytest.raises(CheckpointError, match="evil.pt: holds Python objects besides tensors") as e:
        pocketnas.create_model("pocketnet_s_128", pretrained=str(tmp_path / "evil.pt"))
    assert not marker.exists()
    assert "weights_only=False" not in str(e.value) and str(e.value).endswith("and load that")


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    model = pocketnas.create_model("pocketnet_s_128")
    path = tmp_path / "m.pt"
    pocketnas.save(model, str(path))
    before = path.read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        pocketnas.save(model, str(path))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.pt"]


def test_pretrained_true_without_registered_weights_is_clear():
    with pytest.raises(CheckpointError, match="no pretrained weights ship for pocketnet_m_256 .*with weights: "
                                              "pocketnet_m_128, pocketnet_s_128"):
        pocketnas.create_model("pocketnet_m_256", pretrained=True)
