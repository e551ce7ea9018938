"""Training in little memory: activation checkpointing (exact gradients, running statistics updated once), glibc's
lean mode, and the folder recipe's peak on 300 real faces."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from pocketnas.config import ConfigError
from pocketnas.engine.process import MALLOC_MODES, malloc_mode
from pocketnas.engine.train_config import TrainConfig
from pocketnas.models import create_model

TINY = {
    "pocketnet_s_128": dict(channels=4, layers=3, input_size=32, embedding_size=16),
    "mobilefacenet": dict(input_size=32, embedding_size=16),
    "iresnet18": dict(input_size=32, embedding_size=16),
}


def _step(model: torch.nn.Module, x: torch.Tensor):
    out = model(x)
    out.square().sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    return out.detach(), grads, buffers


@pytest.mark.parametrize("arch", sorted(TINY))
def test_checkpointed_step_equals_the_ordinary_one(arch):
    torch.manual_seed(0)
    plain = create_model(arch, **TINY[arch]).train()
    ckpt = create_model(arch, **TINY[arch]).train()
    ckpt.load_state_dict(plain.state_dict())
    ckpt.set_grad_checkpointing(True)
    x = torch.randn(4, 3, 32, 32)
    out_a, grads_a, buf_a = _step(plain, x)
    out_b, grads_b, buf_b = _step(ckpt, x)
    torch.testing.assert_close(out_b, out_a)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)
    # BatchNorm folded this batch into its running statistics once, not twice (the recomputation left them alone)
    assert buf_a.keys() == buf_b.keys()
    for name in buf_a:
        torch.testing.assert_close(buf_b[name], buf_a[name], msg=name)
    moved = [n for n in buf_a if n.endswith("running_mean") and buf_a[n].abs().sum() > 0]
    assert moved, "the step should have moved some running means"


def _kept_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass of one forward."""
    seen, total = set(), [0]

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total[0] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return total[0]


def test_checkpointing_keeps_a_fraction_of_the_activations():
    model = create_model("pocketnet_s_128", input_size=56).train()
    x = torch.randn(2, 3, 56, 56)
    full = _kept_bytes(model, x)
    model.set_grad_checkpointing(True)
    kept = _kept_bytes(model, x)
    assert kept < full / 5, (kept, full)
    model.set_grad_checkpointing(False)
    assert _kept_bytes(model, x) == full


def test_checkpointing_is_a_plain_call_without_autograd():
    model = create_model("pocketnet_s_128", **TINY["pocketnet_s_128"]).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model.set_grad_checkpointing(True)
        torch.testing.assert_close(model(x), ref)


def test_malloc_modes():
    assert malloc_mode(True) == "speed" and malloc_mode("true") == "speed"
    assert malloc_mode(False) is None and malloc_mode("lean") == "lean"
    assert MALLOC_MODES["lean"][0] < MALLOC_MODES["speed"][0]
    with pytest.raises(ValueError, match="true, false or lean"):
        malloc_mode("fast")


@pytest.mark.parametrize("settings, match", [
    (dict(tune_malloc="fast"), "tune_malloc must be true, false or lean"),
    (dict(grad_checkpointing=True, compile="true"), "drop compile: true"),
    (dict(grad_checkpointing=True, hint_layers=[["cells.1", "layer2"]], kd="hint", teacher="iresnet18"),
     "hint loss taps"),
])
def test_memory_settings_refused_when_they_cannot_work(settings, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(arch="pocketnet_s_128", **settings).validate()


def test_init_backbone_pretrained_needs_shipped_weights(tmp_path):
    cfg = TrainConfig(arch="pocketnet_s_256", init_backbone="pretrained", data=str(tmp_path))
    with pytest.raises(ConfigError, match="no weights ship for pocketnet_s_256"):
        cfg.check_inputs()
    TrainConfig(arch="pocketnet_s_128", init_backbone="pretrained", data=str(tmp_path)).check_inputs()


# The peak is read from /proc/self/status (VmHWM: this process's own address space), not getrusage's ru_maxrss,
# which Linux carries over an exec from the forking parent (a pytest worker of several GB).
PEAK_SCRIPT = """
import sys
from pocketnas.cli import main
code = main(sys.argv[1:])
with open("/proc/self/status") as f:
    print("PEAK_RSS_KB", next(line.split()[1] for line in f if line.startswith("VmHWM:")), flush=True)
sys.exit(code or 0)
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak from Linux's /proc")
def test_folder_recipe_fine_tunes_300_faces_in_under_2_gb(tmp_path):
    """The folder recipe (no DataLoader workers: one process holds all) on 30 people x 10 real faces: the shipped
    network, an imprinted head, two steps of batch 32; the process's peak resident memory stays under 2 GB."""
    from pocketnas.data.bundled import orl_root

    data = tmp_path / "faces"
    for i in range(1, 31):
        shutil.copytree(os.path.join(orl_root(), f"s{i}"), data / f"s{i}")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, "train", "--config", "folder_cpu", "--data", str(data),
                           "--out", str(out), "--set", "stop_after_steps=2"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    peak_kb = int(proc.stdout.split("PEAK_RSS_KB")[1].split()[0])
    assert 100_000 < peak_kb < 2_000_000, f"peak RSS {peak_kb / 1e6:.2f} GB"
    assert (out / "model.pt").is_file()
    log = proc.stderr + proc.stdout
    assert "activation checkpointing" in log and "tuned for lean" in log
