import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import pocketnas
from pocketnas.cli import main
from pocketnas.config import ConfigError, config_from_dict, load_config, packaged_yaml_dir
from pocketnas.data import orl_root
from pocketnas.engine.train_config import TrainConfig
from pocketnas.engine.trainer import train
from pocketnas.evaluation.validation import verify_bins


TINY = dict(arch="pocketnet", model_kwargs={"channels": 4, "layers": 3, "embedding_size": 32}, batch_size=16,
            workers=0, epochs=2, max_batches_per_epoch=3, lr=0.1, lr_reference_batch=16, milestones=[2],
            margin_s=32.0, margin_m=0.3, log_every=1, threads=2)


def tiny(**kw):
    return config_from_dict(TrainConfig, {**TINY, "data": orl_root(), **kw})


def _weights(run):
    return torch.load(os.path.join(run, "checkpoint.pt"), weights_only=True)


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    run = str(tmp_path_factory.mktemp("teacher"))
    train(tiny(model_kwargs={"channels": 8, "layers": 3, "embedding_size": 48}, save_every_epoch=True), run)
    return run


def test_val_bins_need_a_verifier_from_above(tmp_path, orl_bin):
    """The engine does not import evaluation: a run that verifies on .bin sets is given the verifier (the command
    line gives evaluation.validation.verify_bins), and without one is refused before its folder is made."""
    with pytest.raises(ConfigError, match="needs a verifier"):
        train(tiny(val_bins=[orl_bin]), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_run_writes_everything(tmp_path, orl_bin):
    history = train(tiny(val_bins=[orl_bin]), str(tmp_path), verifier=verify_bins)
    for f in ("checkpoint.pt", "model.pt", "log.txt", "config.yaml"):
        assert (tmp_path / f).exists(), f
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tb"))
    assert len(history["epochs"]) == 2 and history["epochs"][1]["ce"] < history["epochs"][0]["ce"] * 1.5
    assert 0.5 < history["verification"][2]["orl"] <= 1.0
    log = (tmp_path / "log.txt").read_text()
    assert "verification orl after epoch 2" in log and "3 steps per epoch" in log
    model = pocketnas.load(str(tmp_path / "model.pt"))
    assert model.embedding_size == 32
    state = _weights(str(tmp_path))
    assert state["epoch"] == 2 and state["step"] == 6 and "optimizer" in state and "rng" in state


@pytest.mark.slow
def test_resume_is_bit_exact(tmp_path, tiny_teacher):
    kd = dict(kd="embedding", teacher=os.path.join(tiny_teacher, "model.pt"), kd_weight=10.0)
    full = str(tmp_path / "full")
    train(tiny(**kd), full)
    broken = str(tmp_path / "broken")
    history = train(tiny(**kd, stop_after_steps=4, workers=2), broken)  # killed in epoch 2, after its 1st batch
    assert history["stopped_at_step"] == 4
    train(tiny(**kd), broken, resume=True)
    a, b = _weights(full), _weights(broken)
    _assert_same_state(a["model"], b["model"])
    assert a["step"] == b["step"] == 6
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert "resumed at epoch 2, batch 1 (global step 4)" in open(os.path.join(broken, "log.txt")).read()


def test_a_run_stopped_as_asked_leaves_its_backbone(tmp_path):
    """stop_after_steps writes model.pt as well as checkpoint.pt: the weights at that step, ready to release."""
    from pocketnas.models.checkpoint import read_checkpoint

    run = str(tmp_path)
    train(tiny(stop_after_steps=2), run)  # epoch 1 of 3 steps, stopped in it: no epoch ended
    record = read_checkpoint(os.path.join(run, "model.pt"))
    assert record["meta"]["step"] == 2 and record["meta"]["epoch"] == 0
    trained = _weights(run)["model"]
    prefix = "backbone."
    _assert_same_state(record["state_dict"], {k[len(prefix):]: v for k, v in trained.items() if k.startswith(prefix)})


def test_a_run_resumed_at_its_stop_writes_the_checkpoints_backbone_and_takes_no_step(tmp_path):
    """A stage killed after a checkpoint becomes a model: --resume --set stop_after_steps=<the checkpoint's step>."""
    from pocketnas.models.checkpoint import read_checkpoint

    run = str(tmp_path)
    train(tiny(save_every_steps=2, stop_after_steps=4), run)  # as if killed after the checkpoint of step 4
    os.unlink(os.path.join(run, "model.pt"))
    before = _weights(run)
    history = train(tiny(save_every_steps=2, stop_after_steps=4), run, resume=True)
    assert history["stopped_at_step"] == 4 and _weights(run)["step"] == 4
    record = read_checkpoint(os.path.join(run, "model.pt"))
    assert record["meta"]["step"] == 4
    prefix = "backbone."
    _assert_same_state(record["state_dict"],
                       {k[len(prefix):]: v for k, v in before["model"].items() if k.startswith(prefix)})


def test_resume_refuses_a_different_data_order(tmp_path):
    run = str(tmp_path)
    train(tiny(stop_after_steps=2), run)
    with pytest.raises(ConfigError, match="batch_size differ from the checkpoint's run"):
        train(tiny(batch_size=8), run, resume=True)


def test_onnx_teacher_uses_its_own_normalisation(tmp_path, shared):
    """SFace takes raw 0..255 RGB; the student takes (x/255-0.5)/0.5. The cached teacher embeddings must equal
    SFace run directly on the raw pixels of exactly the (possibly flipped) images the student saw."""
    from pocketnas.data import FolderDataset
    from pocketnas.engine.sampling import flip_decision
    from pocketnas.onnx_runtime import cpu_session

    sface = f"{shared}/weights/sface_fp32.onnx"
    run = tmp_path / "kd"
    train(tiny(kd="embedding", teacher=sface, teacher_input_norm="raw255", epochs=1, max_batches_per_epoch=2,
               batch_size=8, lr_reference_batch=8), str(run))
    log = (run / "log.txt").read_text()
    assert "input normalisation raw255, 112 px, 128-d" in log and "a learned linear projection" in log
    steps = np.fromfile(run / "teacher_cache" / "written_step.i64", dtype=np.int64).reshape(-1, 2)
    values = np.fromfile(run / "teacher_cache" / "embeddings.f32", dtype=np.float32).reshape(-1, 2, 128)
    written = np.argwhere(steps >= 0)
    assert len(written) == 16
    faces = FolderDataset(orl_root(), train=False)
    session = cpu_session(sface, 2)
    for index, flipped in written[:4]:
        assert bool(flipped) == flip_decision(0, 0, int(index))
        image = faces.read_uint8(int(index)).astype(np.float32)
        if flipped:
            image = image[:, :, ::-1].copy()
        direct = session.run(None, {"data": image[None]})[0][0]
        assert np.allclose(values[index, flipped], direct, rtol=1e-4, atol=1e-3)


@pytest.mark.slow
def test_multistep_kd_follows_the_teacher_epochs(tmp_path, tiny_teacher):
    assert os.path.isfile(os.path.join(tiny_teacher, "epochs", "epoch_001.pt"))
    run = tmp_path / "student"
    history = train(tiny(kd="multistep", teacher=tiny_teacher), str(run))
    log = (run / "log.txt").read_text()
    assert "epoch 1 distils from" in log and "epoch_001.pt" in log and "epoch 2 distils from" in log
    assert "epoch_002.pt" in log and "kd" in history["epochs"][0]
    assert "a learned linear projection" in log  # 32-d student, 48-d teacher


@pytest.mark.slow
def test_multistep_kd_missing_teacher_epoch_fails_up_front(tmp_path, tiny_teacher):
    with pytest.raises(FileNotFoundError, match=r"needs the teacher's checkpoint of every epoch; missing 1: .*"
                                                r"epoch_003.pt"):
        train(tiny(kd="multistep", teacher=tiny_teacher, epochs=3), str(tmp_path / "s"))
    assert not (tmp_path / "s" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_feature_kd_with_squeeze_excitation(tmp_path, tiny_teacher):
    run = tmp_path / "feat"
    history = train(tiny(kd="feature", teacher=os.path.join(tiny_teacher, "model.pt"), se=True, epochs=1,
                         hint_layers=[["cells.0", "cells.0"], ["cells.1", "cells.2"]]), str(run))
    log = (run / "log.txt").read_text()
    assert "cells.0 (16 ch) -> cells.0 (32 ch)" in log and "hint" in history["epochs"][0]
    model = pocketnas.load(str(run / "model.pt"))
    assert model.se and any(".se." in k for k in model.state_dict())


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'batchsize'; did you mean batch_size"):
        config_from_dict(TrainConfig, {"batchsize": 3})
    with pytest.raises(ConfigError, match="lr must be float, got 'fast'"):
        config_from_dict(TrainConfig, {"lr": "fast"})
    with pytest.raises(ConfigError, match=r"distillation \(embedding\) needs a teacher"):
        config_from_dict(TrainConfig, {"kd": "embedding"})
    with pytest.raises(ConfigError, match="arch 'pocketnet_x' is not a registered model"):
        config_from_dict(TrainConfig, {"arch": "pocketnet_x"})
    (tmp_path / "bad.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="bad.yaml: expected a mapping"):
        load_config(TrainConfig, str(tmp_path / "bad.yaml"))
    cfg = load_config(TrainConfig, os.path.join(packaged_yaml_dir("train"), "tiny_orl.yaml"), ["epochs=7",
                                                                                             "milestones=[2, 5]"])
    assert cfg.epochs == 7 and cfg.milestones == [2, 5]
    assert load_config(TrainConfig, "tiny_orl").epochs == load_config(TrainConfig, "tiny_orl.yaml").epochs  # by name
    with pytest.raises(ConfigError, match="no packaged train configuration of that name; did you mean tiny_orl"):
        load_config(TrainConfig, "tiny_orll")


@pytest.mark.parametrize("recipe", sorted(f for f in os.listdir(packaged_yaml_dir("train")) if f.endswith(".yaml")))
def test_every_recipe_is_valid(recipe):
    if recipe.startswith("search_"):
        from pocketnas.engine.search import search_config

        assert search_config("pocketnet", os.path.join(packaged_yaml_dir("train"), recipe)).epochs >= 1
        return
    import yaml

    path = os.path.join(packaged_yaml_dir("train"), recipe)
    with open(path, encoding="utf-8") as f:
        needs_teacher = bool(yaml.safe_load(f).get("kd"))  # a distillation recipe takes its teacher from --teacher
    cfg = load_config(TrainConfig, path, [], {"teacher": "sface_fp32.onnx"} if needs_teacher else None)
    assert cfg.epochs >= 1


@pytest.mark.slow
def test_train_command(tmp_path, capsys):
    assert main(["train", "--config", "tiny_orl", "--data", orl_root(),
                 "--out", str(tmp_path), "--set", "epochs=1", "--set", "max_batches_per_epoch=2"]) == 0
    assert "trained pocketnet for 1 epochs" in capsys.readouterr().out
    # a resume needs nothing but the run folder: the checkpoint's own configuration is the base
    assert main(["train", "--config", os.path.join(packaged_yaml_dir("train"), "tiny_orl.yaml"), "--data",
                 orl_root(), "--out", str(tmp_path / "r"), "--set", "epochs=2", "--set", "max_batches_per_epoch=2",
                 "--set", "stop_after_steps=3"]) == 0
    assert main(["train", "--out", str(tmp_path / "r"), "--resume", "--set", "stop_after_steps=0"]) == 0
    assert "resumed at epoch 2, batch 1 (global step 3)" in (tmp_path / "r" / "log.txt").read_text()
    assert main(["train", "--data", orl_root(), "--out", str(tmp_path / "x"), "--set", "epochz=1"]) == 2
    assert "unknown key 'epochz'; did you mean epochs" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_gloo_run(tmp_path):
    cfg = tmp_path / "ddp.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump({**TINY, "epochs": 1, "batch_size": 8, "lr_reference_batch": 16, "threads": 1}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "pocketnas.cli", "train", "--config", str(cfg), "--data", orl_root(),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = _weights(str(tmp_path / "run"))
    assert state["world_size"] == 2 and state["step"] == 3
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "on 2 process(es)" in log and "global batch 16" in log


@pytest.mark.distributed
def test_one_process_under_torchrun_joins_a_process_group(monkeypatch):
    """torchrun with one process (a one-GPU machine) runs the same process-group path as many: DDP, all-reduce."""
    import socket

    import torch.distributed as dist

    from pocketnas.engine import distributed as dist_utils

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(k, v)
    env = dist_utils.setup("cpu")
    try:
        assert env.distributed and env.world_size == 1 and dist.is_initialized() and dist.get_backend() == "gloo"
        value = torch.tensor([1.0, 2.0, 3.0])
        assert torch.equal(dist_utils.mean_across(env, value), value)
    finally:
        dist_utils.teardown(env)
    assert not dist.is_initialized()
    monkeypatch.delenv("MASTER_ADDR")  # a plain process: no group
    plain = dist_utils.setup("cpu")
    assert not plain.distributed and not dist.is_initialized()


def test_init_backbone_starts_from_a_checkpoint_of_the_same_network(tmp_path):
    """Continued training: the network of a new run starts from a model.pt's weights exactly (its own schedule,
    head and optimiser fresh); a checkpoint of another network is refused before any work starts."""
    from pocketnas.engine.trainer import Trainer

    torch.manual_seed(3)
    start = pocketnas.create_model("pocketnet", channels=4, layers=3, embedding_size=32)
    pocketnas.save(start, str(tmp_path / "start.pt"))
    trainer = Trainer(tiny(init_backbone=str(tmp_path / "start.pt")), str(tmp_path / "run"))
    _assert_same_state(start.state_dict(), {k: v for k, v in trainer.backbone.state_dict().items()})
    other = pocketnas.create_model("pocketnet", channels=8, layers=3, embedding_size=32)
    pocketnas.save(other, str(tmp_path / "wide.pt"))
    with pytest.raises(pocketnas.CheckpointError, match="init_backbone .*wide.pt does not fit pocketnet"):
        Trainer(tiny(init_backbone=str(tmp_path / "wide.pt")), str(tmp_path / "run2"))
    pocketnas.save(pocketnas.create_model("mobilefacenet"), str(tmp_path / "mfn.pt"))
    with pytest.raises(ConfigError, match="mfn.pt holds a mobilefacenet, not this run's pocketnet"):
        Trainer(tiny(init_backbone=str(tmp_path / "mfn.pt")), str(tmp_path / "run3"))


def test_the_schedule_is_logged_epoch_by_epoch_as_the_steps_will_run():
    """Milestones count epochs from 1; the log line spells out which epochs run at which rate, checked against the
    rate lr_factor gives each epoch's last step (a run of PocketNetS-128 planned 900 steps at 0.01 and gave
    milestones=[3], which switches after the second epoch)."""
    from pocketnas.engine.trainer import lr_factor, lr_schedule_text

    cfg = TrainConfig(epochs=4, milestones=[3], warmup_epochs=0.0)
    assert lr_schedule_text(cfg, 0.01, 300) == "epochs 1-2 at 0.01, epochs 3-4 at 0.001"
    assert [0.01 * lr_factor(cfg, 300 * e + 299, 300) for e in range(4)] == pytest.approx([0.01] * 2 + [0.001] * 2)
    cfg = TrainConfig(epochs=3, milestones=[2, 3], warmup_epochs=0.1)
    assert (lr_schedule_text(cfg, 0.1, 300)
            == "epoch 1 at 0.1, epoch 2 at 0.01, epoch 3 at 0.001, after a 30-step warm-up")
    # the warm-up climbs to the rate and never past it (1.1 x 100 steps is 110.00000000000001 in floats)
    cfg = TrainConfig(epochs=3, milestones=[], warmup_epochs=1.1)
    assert max(lr_factor(cfg, step, 100) for step in range(300)) == 1.0 and lr_factor(cfg, 108, 100) < 1.0
    assert lr_schedule_text(TrainConfig(epochs=2, milestones=[], warmup_epochs=0.0), 0.1, 10) == "epochs 1-2 at 0.1"


def test_resume_with_new_milestones_follows_the_new_schedule_from_its_first_step(tmp_path):
    """A run stopped in epoch 2 of a schedule that decays at epoch 3, resumed with the decay moved to epoch 2: the
    first resumed step already runs at lr x 0.1 (the optimizer state's saved rate was the old schedule's 0.1)."""
    from pocketnas.engine.trainer import Trainer

    run = str(tmp_path)
    train(tiny(epochs=3, milestones=[3], stop_after_steps=4), run)
    assert _weights(run)["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.1)
    trainer = Trainer(tiny(epochs=3, milestones=[2]), run, resume=True)
    try:
        assert trainer.step == 4
        assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx([0.01] * 2)
    finally:
        trainer.close()
    unchanged = Trainer(tiny(epochs=3, milestones=[3]), run, resume=True)
    try:
        assert [g["lr"] for g in unchanged.optimizer.param_groups] == pytest.approx([0.1] * 2)
    finally:
        unchanged.close()


@pytest.mark.slow
def test_distill_terms_are_the_kd_flags_in_a_list(tmp_path, tiny_teacher):
    # issue 40: distillation configured as a list of {name, weight, ...} terms (torchdistill-style); the old
    # flags stay and mean the same terms, step for step
    teacher = os.path.join(tiny_teacher, "model.pt")
    old = tiny(kd="embedding,rkd", teacher=teacher, kd_weight=10.0, rkd_weight=2.0, epochs=1, stop_after_steps=2)
    new = tiny(distill=[{"name": "embedding", "weight": 10.0}, {"name": "rkd", "weight": 2.0}], teacher=teacher,
               epochs=1, stop_after_steps=2)
    assert old.distill_terms() == new.distill_terms()
    train(old, str(tmp_path / "old"))
    train(new, str(tmp_path / "new"))
    _assert_same_state(_weights(tmp_path / "old")["model"], _weights(tmp_path / "new")["model"])
    # a term's own arguments reach its loss; unknown ones are named
    with pytest.raises(ConfigError, match="distillation term rkd: .*bogus"):
        train(tiny(distill=[{"name": "rkd", "bogus": 1}], teacher=teacher, epochs=1), str(tmp_path / "bad"))
