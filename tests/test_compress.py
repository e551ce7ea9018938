import json
import os

import pytest
import torch
import yaml

import pocketnas
from pocketnas.cli import main
from pocketnas.compress.deploy import ExportError, export_checked, face_crops
from pocketnas.compress.prune import prune_model, sparsity
from pocketnas.compress.run import checkpoint_recipe
from pocketnas.data import orl_root


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    """A small network trained for a few seconds on the bundled faces (so accuracy means something), at 56 px: the
    commands below resize every face to the model's input, as they do for any size."""
    from pocketnas.config import config_from_dict
    from pocketnas.engine.train_config import TrainConfig
    from pocketnas.engine.trainer import train

    run = tmp_path_factory.mktemp("tiny")
    train(config_from_dict(TrainConfig, {
        "arch": "pocketnet", "model_kwargs": {"channels": 8, "layers": 3, "embedding_size": 64, "input_size": 56},
        "data": orl_root(),
        "batch_size": 32, "workers": 0, "epochs": 4, "lr": 0.1, "lr_reference_batch": 32, "milestones": [4],
        "margin_s": 32.0, "margin_m": 0.3, "threads": 2}), str(run))
    return str(run / "model.pt")


@pytest.mark.slow
def test_masks_hold_through_finetuning(tmp_path, trained_tiny):
    from pocketnas.config import config_from_dict
    from pocketnas.engine.train_config import TrainConfig
    from pocketnas.engine.trainer import train

    model = pocketnas.load(trained_tiny)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = prune_model(model, "global_weight", 8)
    train(config_from_dict(TrainConfig, {"arch": "pocketnet", "data": orl_root(), "batch_size": 16, "workers": 0,
                                         "epochs": 1, "max_batches_per_epoch": 3, "lr": 0.05, "threads": 2,
                                         "compile": "false"}), str(tmp_path / "ft"), backbone=model)
    after = sparsity(model)
    assert after.prunable_nonzero == report.prunable_nonzero  # no pruned weight came back
    moved = [n for n, p in model.named_parameters() if n.endswith("weight_orig")
             and not torch.equal(p.detach(), before[n.replace("_orig", "")])]
    assert moved  # the surviving weights did train
    ft = pocketnas.load(str(tmp_path / "ft" / "model.pt"))  # saved with masks folded in, plain keys
    assert abs(sparsity(ft).compression - 8) < 0.1


@pytest.mark.slow
def test_export_parity_on_real_faces(tmp_path, trained_tiny):
    model = pocketnas.load(trained_tiny)
    crops = face_crops(None, 64, model.input_size)
    parity = export_checked(model, str(tmp_path / "m.onnx"), crops)
    assert parity["min_cosine"] > 0.9999 and parity["images"] == 64
    import onnx

    proto = onnx.load(str(tmp_path / "m.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["input_norm"] == "arcface" and "RGB" in meta["input_layout"]

    class Broken(torch.nn.Module):  # exports something else than it computes: must fail loudly
        def __init__(self, m):
            super().__init__()
            self.m, self.input_size, self.pocketnas_cfg = m, m.input_size, m.pocketnas_cfg

        def forward(self, x):
            y = self.m(x)
            return y if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() else -y

    with pytest.raises(ExportError, match="ONNX Runtime disagrees with PyTorch on real faces"):
        export_checked(Broken(model), str(tmp_path / "b.onnx"), crops)


@pytest.mark.slow
def test_init_head_refuses_a_head_of_other_identities(trained_tiny):
    from pocketnas.config import ConfigError
    from pocketnas.engine.trainer import load_head_weights
    from pocketnas.losses.heads import MarginHead
    from pocketnas.losses.margins import build_margin

    ckpt = os.path.join(os.path.dirname(trained_tiny), "checkpoint.pt")
    head = MarginHead(64, 40, build_margin("arcface"))
    load_head_weights(head, ckpt)  # the run's 40 ORL identities, 64-d
    trained = torch.load(ckpt, weights_only=True)["model"]["head.fc.weight"]
    assert torch.equal(head.fc.weight.detach(), trained)
    with pytest.raises(ConfigError, match="checkpoint.pt: its margin head .* does not fit"):
        load_head_weights(MarginHead(64, 295, build_margin("arcface")), ckpt)
    with pytest.raises(Exception, match="not a pocketnas training checkpoint"):
        load_head_weights(head, trained_tiny)  # model.pt holds no head


def test_prelu_export_forms_equal_prelu_for_any_slope():
    from pocketnas.models.export import PReLUAsDepthwise, PReLUAsMax, PReLUSplit

    prelu = torch.nn.PReLU(6)
    with torch.no_grad():
        prelu.weight.copy_(torch.tensor([0.0, 0.25, 1.0, -0.5, 1.7, 0.1]))
    at_most_one = torch.nn.PReLU(6)
    with torch.no_grad():
        at_most_one.weight.copy_(torch.tensor([0.0, 0.25, 1.0, -0.5, -1.7, 0.1]))
    for x in (torch.randn(3, 6, 5, 5), torch.randn(4, 6)):  # after convolutions and after a linear layer
        assert torch.allclose(PReLUSplit(prelu)(x), prelu(x), atol=1e-6)
        assert torch.allclose(PReLUAsDepthwise(prelu)(x), prelu(x), atol=1e-6)  # a slope above 1: relu first
        assert torch.allclose(PReLUAsDepthwise(at_most_one)(x), at_most_one(x), atol=1e-6)  # relu after the scale
    in_range = torch.nn.PReLU(6)
    with torch.no_grad():
        in_range.weight.copy_(torch.tensor([0.0, 0.25, 1.0, 0.5, 0.7, 0.1]))
    x = torch.randn(3, 6, 5, 5)
    assert torch.allclose(PReLUAsMax(in_range)(x), in_range(x), atol=1e-6)
    assert not torch.allclose(PReLUAsMax(prelu)(x), prelu(x), atol=1e-3)  # why slopes outside [0, 1] need Split


@pytest.mark.slow
def test_export_writes_no_prelu_kernel_and_keeps_parity(tmp_path, trained_tiny):
    import onnx

    from pocketnas.models.export import PReLUAsDepthwise, PReLUAsMax, PReLUSplit, export_onnx, runtime_friendly

    model = pocketnas.load(trained_tiny)
    prelus = [m for m in model.modules() if isinstance(m, torch.nn.PReLU)]
    with torch.no_grad():
        prelus[0].weight[0] = -0.4  # a slope outside [0, 1]: in the elementwise form that PReLU takes Split
    forms = (PReLUAsMax, PReLUSplit, PReLUAsDepthwise, torch.nn.PReLU)
    kinds = {type(m) for m in runtime_friendly(model, "elementwise").modules() if isinstance(m, forms)}
    assert kinds == {PReLUSplit, PReLUAsMax}
    kinds = [type(m) for m in runtime_friendly(model).modules() if isinstance(m, forms)]
    assert set(kinds) == {PReLUAsDepthwise} and len(kinds) == len(prelus)
    assert sum(isinstance(m, torch.nn.PReLU) for m in model.modules()) == len(prelus)  # the model is untouched
    parity = export_checked(model, str(tmp_path / "fast.onnx"), face_crops(None, 32, model.input_size))
    assert parity["min_cosine"] > 0.9999
    fast = [n.op_type for n in onnx.load(str(tmp_path / "fast.onnx")).graph.node]
    export_onnx(model, str(tmp_path / "plain.onnx"), prelu="onnx")
    plain = [n.op_type for n in onnx.load(str(tmp_path / "plain.onnx")).graph.node]
    assert "PRelu" not in fast and "Max" not in fast and "PRelu" in plain
    assert fast.count("Conv") == plain.count("Conv") + 2 * plain.count("PRelu")  # every PReLU acts on a feature map
    with pytest.raises(ValueError, match="PReLU export form 'fast'"):
        runtime_friendly(model, "fast")


@pytest.mark.slow
def test_int8_export_and_report(tmp_path, trained_tiny, orl_bin, capsys):
    js = tmp_path / "r.json"
    assert main(["export", "--model", trained_tiny, "--format", "onnx-int8", "--out", str(tmp_path / "m.int8.onnx"),
                 "--bin", orl_bin, "--json", str(js)]) == 0
    r = json.loads(js.read_text())
    assert r["int8_mode"].startswith("static") and r["int8"]["size_mb"] < r["fp32"]["size_mb"]
    assert r["int8_vs_fp32"]["mean_cosine"] > 0.95
    acc = {k: v["accuracy_mean"] for k, v in r["verification"].items()}
    assert set(acc) == {"pytorch", "onnx_fp32", "onnx_int8"} and abs(acc["pytorch"] - acc["onnx_fp32"]) < 0.005
    assert "int8 (static) against PyTorch" in capsys.readouterr().out
    assert main(["export", "--model", trained_tiny, "--format", "torchscript", "--out", str(tmp_path / "m.ts")]) == 0


@pytest.mark.slow
def test_prune_command_and_sweep(tmp_path, trained_tiny, orl_bin, capsys):
    assert main(["prune", "--model", trained_tiny, "--method", "layer_grad", "--rate", "4", "--data", orl_root(),
                 "--out", str(tmp_path / "one"), "--finetune-epochs", "1", "--bin", orl_bin,
                 "--set", "batch_size=32", "--set", "workers=0", "--set", "threads=2", "--no-export"]) == 0
    out = capsys.readouterr().out
    assert "layer_grad at rate 4: achieved 4.0" in out and "fine-tuned" in out
    r = json.loads((tmp_path / "one" / "report.json").read_text())
    assert r["masks_held"] and r["accuracy_finetuned"] is not None
    # fine-tuning continued with the margin the model was trained with (recorded in model.pt), not the defaults
    assert checkpoint_recipe(trained_tiny)["margin_s"] == 32.0
    tuned = yaml.safe_load((tmp_path / "one" / "finetune" / "config.yaml").read_text())
    assert (tuned["margin_s"], tuned["margin_m"], tuned["lr"]) == (32.0, 0.3, 0.01)
    # ... and from the trained class centres of the run beside model.pt, not a random head
    assert tuned["init_head"] == os.path.join(os.path.dirname(trained_tiny), "checkpoint.pt")
    assert "margin head initialised from" in (tmp_path / "one" / "finetune" / "log.txt").read_text()
    assert main(["prune", "--model", trained_tiny, "--sweep", "--methods", "global_weight", "random", "--rates", "2",
                 "8", "--data", orl_root(), "--out", str(tmp_path / "sweep"), "--bin",
                 orl_bin]) == 0
    table = (tmp_path / "sweep" / "sweep.md").read_text()
    assert table.count("| global_weight |") == 2 and table.count("| random |") == 2 and "| unpruned | 1 |" in table
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["rows"]
    assert {r["accuracy_of"] for r in rows} == {"onnx"}  # the exported files were evaluated
    by = {(r["method"], r["rate"]): r["accuracy_final"] for r in rows}
    assert by[("global_weight", 2)] >= by[("random", 8)]  # magnitude at 2x keeps more than random at 8x
    assert os.path.getsize(tmp_path / "sweep" / "sweep.png") > 10_000
