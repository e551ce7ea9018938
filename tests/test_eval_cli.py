import json
import os

import numpy as np
import pytest
import torch

import pocketnas
from pocketnas.cli import main
from pocketnas.data import orl_root
from pocketnas.models.calibrate import calibrate_batchnorm

VERIFY_KEYS = {"pairs", "accuracy_mean", "accuracy_std", "fold_accuracy", "fold_threshold", "val_at_far_1e-3",
               "val_std", "far", "auc", "eer", "seconds", "roc_fpr", "roc_tpr", "flip", "path", "seconds_decode",
               "seconds_embed", "seconds_protocol", "engine"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, orl_faces):
    torch.manual_seed(0)
    model = pocketnas.create_model("pocketnet", channels=4, layers=3, embedding_size=32)
    calibrate_batchnorm(model, orl_faces[0][::4].split(50))
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    pocketnas.save(model, str(path))
    return str(path)


@pytest.mark.slow
def test_verify_json_schema(tmp_path, tiny_model, orl_bin):
    js = tmp_path / "r.json"
    assert main(["eval", "verify", "--model", tiny_model, "--bin", orl_bin, "--threads", "2",
                 "--json", str(js), "--no-latency", "--cost"]) == 0
    data = json.loads(js.read_text())
    assert set(data) == {"orl", "_meta"}
    assert VERIFY_KEYS <= set(data["orl"]) and data["orl"]["pairs"] == 600 and len(data["orl"]["fold_accuracy"]) == 10
    assert 0.5 < data["orl"]["accuracy_mean"] <= 1.0  # a random tiny net still beats chance on ORL
    meta = data["_meta"]
    assert meta["model"] == "tiny.pt" and meta["input_norm"] == "arcface" and meta["cost"]["params"] > 1000
    assert meta["engine"] == data["orl"]["engine"] == "onnxruntime"  # the default (auto) where it is installed
    assert meta["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # --device auto
    split = sum(data["orl"][f"seconds_{k}"] for k in ("decode", "embed", "protocol"))
    assert 0 < split <= data["orl"]["seconds"] + 1e-6
    assert all(os.path.getsize(p) > 5000 for p in meta["plots"])


def test_onnx_model_needs_its_normalisation(tmp_path, capsys, shared):
    assert main(["eval", "verify", "--model", f"{shared}/weights/sface_fp32.onnx", "--bin",
                 f"{shared}/data/orl/orl.bin"]) == 2
    assert "does not declare its input normalisation; pass --input-norm" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_verify_on_a_missing_cuda_device_is_refused_before_the_work(tiny_model, orl_bin, capsys, monkeypatch):
    import pocketnas.models.factory as factory

    def never(*a, **k):
        raise AssertionError("the model was read before the device was checked")

    monkeypatch.setattr(factory, "load_model", never)
    assert main(["eval", "verify", "--model", tiny_model, "--bin", orl_bin,
                 "--device", "cuda"]) == 2
    assert "device 'cuda', but this machine has no CUDA device" in capsys.readouterr().err
    assert main(["eval", "verify", "--model", tiny_model, "--bin", orl_bin,
                 "--device", "gpu0"]) == 2
    assert "device must be auto, cpu, cuda, cuda:N or mps, got 'gpu0'" in capsys.readouterr().err


def test_exported_onnx_declares_normalisation(tmp_path, tiny_model, orl_faces):
    from pocketnas.models.export import export_onnx
    from pocketnas.models.embedders import OnnxEmbedder, TorchEmbedder

    model = pocketnas.load(tiny_model)
    path = export_onnx(model, str(tmp_path / "tiny.onnx"))
    onnx_emb = OnnxEmbedder(path)
    assert onnx_emb.input_norm == "arcface" and onnx_emb.embedding_size == 32
    from pocketnas.data import FolderDataset

    images = FolderDataset(orl_root(), train=False).batch_uint8(range(0, 400, 40))
    a, b = onnx_emb(images), TorchEmbedder(model)(images)
    assert np.abs(a - b).max() < 1e-3 * np.abs(b).max()


def test_onnxruntime_engine_equals_torch_on_the_bundled_pairs(orl_bin):
    """The engine eval verify uses by default (the model exported in memory, run by ONNX Runtime) against the
    PyTorch path: ORL's 600 pairs give identical accuracies and thresholds with and without flip (and, below, the
    shipped PocketNetS-128 weights the same embeddings to 1e-4 on real faces)."""
    from pocketnas.evaluation.run import verification_report
    from pocketnas.models.embedders import ExportedEmbedder, model_embedder

    torch.manual_seed(0)
    small = pocketnas.create_model("pocketnet", channels=4, layers=3, embedding_size=32, input_size=56)
    calibrate_batchnorm(small, [torch.randn(16, 3, 56, 56)])
    ref = verification_report(model_embedder(small, engine="torch"), orl_bin, progress=False)
    fast = model_embedder(small, engine="auto")
    got = verification_report(fast, orl_bin, progress=False)
    assert isinstance(fast, ExportedEmbedder) and got["engine"] == "onnxruntime" and ref["engine"] == "torch"
    assert fast.max_rel_diff <= 1e-4
    for key in ("no_flip", "flip"):
        assert got[key]["accuracy_mean"] == ref[key]["accuracy_mean"], key
        assert got[key]["fold_threshold"] == ref[key]["fold_threshold"], key
        assert 0.6 < got[key]["accuracy_mean"] < 1.0


@pytest.mark.slow
def test_onnxruntime_engine_equals_torch_for_the_shipped_weights():
    from pocketnas.data import FolderDataset
    from pocketnas.models.embedders import TorchEmbedder, embed_images, model_embedder

    faces = FolderDataset(orl_root(), train=False).batch_uint8(range(0, 400, 10)).numpy()  # 40 real faces
    model = pocketnas.create_model("pocketnet_s_128", pretrained=True)
    a = embed_images(TorchEmbedder(model, channels_last=False), faces, 20, flip=False, progress=False)
    b = embed_images(model_embedder(model), faces, 20, flip=False, progress=False)
    assert np.max(np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)) < 1e-4


def test_onnxruntime_engine_falls_back_to_torch_when_it_disagrees(tiny_model, monkeypatch, caplog):
    from pocketnas.data import FolderDataset
    from pocketnas.models.embedders import ExportedEmbedder, TorchEmbedder

    faces = FolderDataset(orl_root(), train=False).batch_uint8(range(8)).numpy()
    monkeypatch.setattr(ExportedEmbedder, "tolerance", 0.0)  # float rounding alone now counts as disagreement
    fast = ExportedEmbedder(pocketnas.load(tiny_model))
    out = fast(faces)
    assert fast.engine == "torch" and fast.max_rel_diff > 0 and "embedding with PyTorch" in caplog.text
    assert np.array_equal(out, TorchEmbedder(pocketnas.load(tiny_model))(faces))
    assert np.array_equal(fast(faces), out)
    with pytest.raises(pocketnas.errors.InputError, match="engine 'fast'"):
        pocketnas.models.embedders.model_embedder(pocketnas.load(tiny_model), engine="fast")


@pytest.mark.slow
def test_pairs_on_a_folder(tmp_path, tiny_model, capsys):
    js = tmp_path / "p.json"
    assert main(["eval", "pairs", orl_root(), "--model", tiny_model, "--pairs", "200", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "TAR at FAR: 1e-03" in out and "MFLOPs" not in out  # the cost report is opt-in (--cost)
    assert "cost" not in json.loads(js.read_text())["_meta"]
    r = json.loads(js.read_text())["orl"]
    assert r["pairs"] == 200 and r["person_disjoint_folds"] and set(r["tar_at_far"]) == {"1e-03", "1e-02", "1e-01"}
    assert 0 <= r["eer"] <= 0.5


@pytest.mark.slow
def test_cost_command(tmp_path, capsys):
    js = tmp_path / "c.json"
    assert main(["eval", "cost", "--model", "pocketnet_s_128", "--threads", "1", "--json", str(js)]) == 0
    cost = json.loads(js.read_text())["_meta"]["cost"]
    assert cost["params"] == 925_632 and round(cost["mflops"], 2) == 587.11
    for key in ("latency_ms", "throughput_ips", "onnx_latency_ms", "onnx_throughput_ips"):
        assert cost[key] > 0, key
    assert "ORT ms (b1)" in capsys.readouterr().out


@pytest.mark.slow
def test_compare_plot(tmp_path, tiny_model, orl_bin, capsys):
    small = tmp_path / "small.json"
    assert main(["eval", "verify", "--model", tiny_model, "--bin", orl_bin, "--no-flip",
                 "--json", str(small), "--no-latency", "--cost"]) == 0
    other = json.loads(small.read_text())
    other["_meta"]["model"], other["_meta"]["cost"]["params"] = "bigger", 10 * other["_meta"]["cost"]["params"]
    (tmp_path / "big.json").write_text(json.dumps(other))
    out = tmp_path / "tradeoff.png"
    assert main(["eval", "compare", str(small), str(tmp_path / "big.json"), "--out", str(out)]) == 0
    assert os.path.getsize(out) > 10_000 and "bigger: orl" in capsys.readouterr().out


@pytest.mark.slow
def test_eval_config_runs_every_set_it_names(tmp_path, tiny_model, shared, capsys):
    from pocketnas.evaluation.config import load_eval_config

    cfg = tmp_path / "two.yaml"
    cfg.write_text(f"root: {shared}/data\nbins: [orl/orl.bin, orl/orl.bin]\nflip: false\n")
    js = tmp_path / "r.json"
    assert main(["eval", "--config", str(cfg), "--model", tiny_model, "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert VERIFY_KEYS <= set(data["orl"]) and data["orl"]["flip"] is False and data["orl"]["pairs"] == 600
    assert main(["eval", "verify", "--model", tiny_model, "--bin", f"{shared}/data/orl/orl.bin", "--no-flip",
                 "--no-cost", "--json", str(tmp_path / "d.json")]) == 0
    direct = json.loads((tmp_path / "d.json").read_text())
    assert data["orl"]["accuracy_mean"] == direct["orl"]["accuracy_mean"]
    # the packaged configurations load by name; a set that is not there is named before the model is loaded
    assert load_eval_config("shared", [f"root={shared}/data"]).bin_paths()[0].endswith("lfw/lfw.bin")
    capsys.readouterr()
    assert main(["eval", "--config", "lfw_family", "--model", "no_such_model.pt", "--set",
                 f"root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert f"missing {tmp_path}/lfw.bin, {tmp_path}/cfp_fp.bin" in err and "--set root=FOLDER" in err
    assert main(["eval", "--config", "lfw_famly", "--model", tiny_model]) == 2
    assert "did you mean lfw_family" in capsys.readouterr().err
    assert main(["eval", "--config", "ijb", "--model", tiny_model, "--set", "fars=[2.0]"]) == 2
    assert "every FAR must lie in (0, 1)" in capsys.readouterr().err
