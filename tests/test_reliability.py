"""One test (at least) per case of docs/reliability.md: each failed on the code before the fix."""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from pocketnas.cli import main
from pocketnas.data import orl_root
from pocketnas.engine.run_folder import LOCK_NAME, RunFolder, RunFolderError
from pocketnas.engine.trainer import train

from conftest import REPO
from test_train import tiny


def _state(run):
    return torch.load(os.path.join(run, "checkpoint.pt"), weights_only=True)


# ----------------------------------------------------------------------------- 1. a run folder is never destroyed
def test_case01_second_run_into_a_finished_run_is_refused(tmp_path):
    run = str(tmp_path / "run")
    train(tiny(epochs=1), run)
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    config_before = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(RunFolderError, match="already holds a train run .*--resume.*--overwrite"):
        train(tiny(epochs=1, stop_after_steps=1), run)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before
    assert (tmp_path / "run" / "config.yaml").read_text() == config_before
    # the command line says the same, and exits 2 without a traceback
    assert main(["train", "--data", orl_root(), "--out", run, "--set", "stop_after_steps=1"]) == 2
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before
    # --overwrite replaces it (and only what pocketnas wrote there)
    (tmp_path / "run" / "my_notes.txt").write_text("keep me")
    train(tiny(epochs=1, stop_after_steps=1), run, overwrite=True)
    assert _state(run)["step"] == 1 and (tmp_path / "run" / "my_notes.txt").read_text() == "keep me"
    with pytest.raises(RunFolderError, match="give one of them"):
        train(tiny(epochs=1), run, resume=True, overwrite=True)


def test_case01_search_is_protected_too(tmp_path):
    from pocketnas.nas.search import search
    from test_search import tiny as tiny_search

    run = str(tmp_path / "s")
    cfg = tiny_search("epochs=1", "order=first", "max_batches_per_epoch=1")
    search(cfg, run)
    genotype = (tmp_path / "s" / "genotype.json").read_text()
    with pytest.raises(RunFolderError, match="already holds a search run"):
        search(cfg, run)
    assert (tmp_path / "s" / "genotype.json").read_text() == genotype
    search(cfg, run, overwrite=True)


# ----------------------------------------------------------------------------- 2. one run per folder at a time
HOLD = """
import sys, time
from pocketnas.engine.run_folder import RunFolder
with RunFolder(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_case02_a_folder_in_use_is_refused_and_the_holder_named(tmp_path, caplog):
    run = str(tmp_path / "busy")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, run], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": REPO})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match=f"in use by process {holder.pid} on "):
            train(tiny(epochs=1), run)
        assert not os.path.exists(os.path.join(run, "log.txt"))  # nothing written by the refused run
    finally:
        holder.kill()
        holder.wait()
    # killed with SIGKILL: the kernel dropped its flock; the lock file it left is taken over with a warning
    assert os.path.exists(os.path.join(run, LOCK_NAME))
    with caplog.at_level("WARNING", logger="pocketnas"):
        train(tiny(epochs=1, stop_after_steps=1), run)
    assert f"taking over a stale lock of process {holder.pid}" in caplog.text
    assert not os.path.exists(os.path.join(run, LOCK_NAME))  # released at the end


def test_case02_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    run = tmp_path / "stale"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": "gone", "started": time.time(),
                                             "command": "pocketnas train"}))
    with caplog.at_level("WARNING", logger="pocketnas"):
        with RunFolder(str(run)) as folder:
            assert folder.held
            assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert "taking over a stale lock of process 999999 on gone" in caplog.text


def test_case02_two_claims_in_one_process_conflict(tmp_path):
    with RunFolder(str(tmp_path)):
        with pytest.raises(RunFolderError, match=f"in use by process {os.getpid()}"):
            RunFolder(str(tmp_path)).acquire()
    with RunFolder(str(tmp_path)):  # released: free again
        pass


# ----------------------------------------------------------------------------- 3. the teacher cache key
def _orl_subset(root, people):
    os.makedirs(root)
    for p in people:
        shutil.copytree(os.path.join(orl_root(), p), os.path.join(root, p))
    return root


def test_case03_cache_key_covers_teacher_norm_data_and_transform(tmp_path, shared):
    from pocketnas.data import FolderDataset
    from pocketnas.engine.teachers import build_fixed_teacher, cache_key, teacher_fingerprint

    sface = f"{shared}/weights/sface_fp32.onnx"
    a = FolderDataset(_orl_subset(str(tmp_path / "a"), ["s1", "s2"]), train=False)
    b = FolderDataset(_orl_subset(str(tmp_path / "b"), ["s3", "s4"]), train=False)
    assert len(a) == len(b) == 20
    raw = build_fixed_teacher(sface, input_norm="raw255", threads=2)
    arc = build_fixed_teacher(sface, input_norm="arcface", threads=2)
    t = {"decoded_size": 112, "flip": "mirror"}
    k = cache_key(raw, a, t)
    assert k != cache_key(arc, a, t)                      # normalisation
    assert k != cache_key(raw, b, t)                      # another set of the same size
    assert k != cache_key(raw, a, {**t, "decoded_size": 56})
    assert k == cache_key(build_fixed_teacher(sface, input_norm="raw255", threads=2), a, t)
    # the teacher's identity is its content, not its path, size or time stamp
    import hashlib

    assert teacher_fingerprint(raw) == "file:" + hashlib.sha256(open(sface, "rb").read()).hexdigest()
    copy = tmp_path / "renamed.onnx"
    shutil.copy(sface, copy)
    assert teacher_fingerprint(build_fixed_teacher(str(copy), input_norm="raw255")) == teacher_fingerprint(raw)


def test_case03_changed_norm_recomputes_instead_of_hitting(tmp_path, shared, caplog):
    """The reported failure: after --teacher-input-norm raw255 -> arcface the cache answered with the raw255
    teacher's embeddings ('64 hits, 0 computed'). Now it is started afresh: every embedding is recomputed."""
    sface = f"{shared}/weights/sface_fp32.onnx"
    data = _orl_subset(str(tmp_path / "two"), ["s1", "s2"])  # 20 images, 16 a epoch: most repeat in epoch 2
    run = str(tmp_path / "kd")
    kw = dict(data=data, kd="embedding", teacher=sface, epochs=2, max_batches_per_epoch=2, batch_size=8,
              lr_reference_batch=8, flip=False)
    train(tiny(teacher_input_norm="raw255", stop_after_steps=2, **kw), run)
    with caplog.at_level("WARNING", logger="pocketnas"):
        train(tiny(teacher_input_norm="arcface", **kw), run, resume=True)
    assert "the teacher cache was written for another teacher_input_norm" in caplog.text
    resumed = open(os.path.join(run, "log.txt")).read().split("resumed at epoch")[1]
    assert "teacher cache: 0 hits, 16 computed so far" in resumed
