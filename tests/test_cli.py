import json
import os
import shutil
import subprocess
import sys

import pytest

import pocketnas
from pocketnas.cli import main
from pocketnas.losses import DISTILL_LOSSES
from pocketnas.models.checkpoint import save_release_state_dict


def test_models_lists_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in pocketnas.list_models():
        assert name in out
    assert "925,632" in out and "65,156,160" in out


def test_info_registry_name(tmp_path, capsys):
    js = tmp_path / "info.json"
    assert main(["info", "pocketnet_m_256", "--no-latency", "--out", str(tmp_path / "cells"), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "1,752,448" in out and "1099.16" in out
    data = json.loads(js.read_text())
    assert data["params"] == 1_752_448 and round(data["mflops"], 2) == 1099.16 and data["size_mb"] > 6
    assert all(os.path.getsize(p) > 10_000 for p in data["cells"])


@pytest.mark.slow
def test_info_checkpoint_with_latency(tmp_path, capsys):
    pocketnas.save(pocketnas.create_model("pocketnet_s_128"), str(tmp_path / "m.pt"))
    js = tmp_path / "info.json"
    assert main(["info", str(tmp_path / "m.pt"), "--threads", "1", "--out", str(tmp_path / "c"),
                 "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert data["name"] == "pocketnet_s_128" and data["latency_ms"] > 0 and data["threads"] == 1


def test_info_bare_state_dict_needs_arch(tmp_path, capsys):
    save_release_state_dict(pocketnas.create_model("pocketnet_s_256"), str(tmp_path / "backbone.pth"))
    assert main(["info", str(tmp_path / "backbone.pth"), "--no-latency", "--out", str(tmp_path)]) == 2
    assert "fit: pocketnet_s_256" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "backbone.pth"), "--arch", "pocketnet_s_256", "--no-latency",
                 "--out", str(tmp_path)]) == 0
    assert "991,424" in capsys.readouterr().out


def test_genotype_command(tmp_path, capsys):
    assert main(["genotype", "pocketnet_casia", "--format", "legacy", "--json", str(tmp_path / "g.json"),
                 "--draw", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("Genotype(normal=[[('dw_conv_3x3', 0)")
    assert pocketnas.get_genotype(str(tmp_path / "g.json")) == pocketnas.get_genotype("pocketnet_casia")
    assert (tmp_path / "normal.png").exists() and (tmp_path / "reduce.png").exists()
    marker = tmp_path / "pwned"
    assert main(["genotype", f"Genotype(normal=__import__('os').system('touch {marker}'))"]) == 2
    assert "nothing was executed" in capsys.readouterr().err and not marker.exists()


def test_console_script_is_installed():
    exe = shutil.which("pocketnas") or os.path.join(os.path.dirname(sys.executable), "pocketnas")
    assert os.path.exists(exe), "pip install -e . must install the pocketnas console command"
    proc = subprocess.run([exe, "models", "pocketnet_s*"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "pocketnet_s_128" in proc.stdout and "pocketnet_m_128" not in proc.stdout


@pytest.mark.parametrize("kd", [*DISTILL_LOSSES.names(), "feature", "multistep", "embedding,sp"])
def test_train_kd_accepts_every_registered_loss(kd, tmp_path):
    # every DISTILL_LOSSES name, alias and combination reaches the recipe through the command line, as `--kd` promises
    from pocketnas.cli import build_parser
    from pocketnas.engine.train_config import load_train_config

    teacher = tmp_path / ("run" if kd == "multistep" else "sface.onnx")  # the recipe checks that it exists
    teacher.mkdir() if kd == "multistep" else teacher.write_bytes(b"onnx")
    args = build_parser().parse_args(["train", "--out", "x", "--kd", kd, "--teacher", str(teacher)])
    sets = ["hint_layers=[[cells.5, layer2]]"] if kd in ("hint", "feature") else []
    cfg = load_train_config(args.config, sets, {"kd": args.kd, "teacher": args.teacher})
    losses, multistep = cfg.kd_plan()
    assert losses == [{"feature": "hint", "multistep": "embedding"}.get(n, n) for n in kd.split(",")]
    assert multistep == (kd == "multistep")


def test_train_kd_unknown_loss_is_refused_before_the_run_folder_exists(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path), "--out", str(out), "--kd", "embedding,rdk",
                 "--teacher", "sface.onnx"]) == 2
    err = capsys.readouterr().err
    assert "unknown distillation loss 'rdk'" in err and "rkd" in err and not out.exists()
