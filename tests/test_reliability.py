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
from pocketnas.evaluation.validation import verify_bins

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


@pytest.mark.slow
def test_case01_search_is_protected_too(tmp_path):
    from pocketnas.engine.search import search
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


@pytest.mark.slow
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


# ----------------------------------------------------------------------------- 4. non-finite embeddings
def _nan_checkpoint(tmp_path):
    import pocketnas

    model = pocketnas.create_model("pocketnet", channels=4, layers=3, embedding_size=16)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    path = str(tmp_path / "nan.pt")
    # pocketnas.save refuses NaN weights (tests/test_finite.py): write the record as a foreign tool would
    from pocketnas.models.checkpoint import FORMAT, FORMAT_VERSION, describe, plain_state_dict, weights_sha256

    state = plain_state_dict(model)
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "pocketnas_version": "0", **describe(model),
                "weights_sha256": weights_sha256(state), "state_dict": state, "meta": {}}, path)
    return path


@pytest.mark.slow
def test_case04_nan_embeddings_are_refused_not_scored(tmp_path, orl_bin, capsys):
    from pocketnas import evaluate_pairs

    emb = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    emb[3, 1] = np.nan
    emb[7, 0] = np.inf
    with pytest.raises(ValueError, match="2 of 20 embeddings are NaN or infinite"):
        evaluate_pairs(emb, [True, False] * 5)
    path = _nan_checkpoint(tmp_path)
    rc = main(["eval", "verify", "--model", path, "--bin", orl_bin, "--no-cost", "--no-flip"])
    err = capsys.readouterr().err
    assert rc == 2 and "model nan.pt: 1200 of 1200 embeddings are NaN or infinite" in err


# ----------------------------------------------------------------------------- 5. 16-bit images
def test_case05_16_bit_png_is_scaled_not_white(tmp_path):
    from PIL import Image

    from pocketnas.data.decode import decode_image
    from pocketnas.data.folder import load_image

    src = os.path.join(orl_root(), "s1", sorted(os.listdir(os.path.join(orl_root(), "s1")))[0])
    grey8 = np.asarray(Image.open(src).convert("L"), dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(grey8 * 257).save(path)  # a 16-bit grey PNG (opens as I;16)
    assert Image.open(path).mode in ("I;16", "I")
    loaded = load_image(str(path))
    assert loaded.std() > 10 and np.abs(loaded[0].astype(int) - grey8).max() <= 1
    decoded = decode_image(path.read_bytes(), str(path))
    assert np.array_equal(decoded, loaded)
    # and through packing
    from pocketnas.data.pack import pack_folder
    from pocketnas.data import RecordDataset

    (tmp_path / "f" / "a").mkdir(parents=True)
    (tmp_path / "f" / "b").mkdir()
    shutil.copy(path, tmp_path / "f" / "a" / "x.png")
    shutil.copy(src, tmp_path / "f" / "b" / "y.png")
    pack_folder(str(tmp_path / "f"), str(tmp_path / "pack"), workers=1)
    image, _ = RecordDataset(str(tmp_path / "pack"), train=False).read_uint8(0)
    assert image.std() > 10 and np.abs(image[0].astype(int) - grey8).mean() < 3


# ----------------------------------------------------------------------------- 6. index files
def _orl_rec(tmp_path, shared):
    for f in ("train.rec", "train.idx", "property"):
        shutil.copy(f"{shared}/data/orl/rec/{f}", tmp_path / f)
    return tmp_path


def test_case06_duplicate_index_key_is_named(tmp_path, shared):
    from pocketnas.data import DataFormatError, RecordDataset

    pack = _orl_rec(tmp_path, shared)
    lines = (pack / "train.idx").read_text().splitlines()
    key, offset = lines[5].split("\t")
    lines[9] = f"{key}\t{lines[9].split(chr(9))[1]}"  # record 9's offset filed under key 5 as well
    (pack / "train.idx").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=rf"train.idx: key {key} appears 2 times \(lines 6, 10\)"):
        RecordDataset(str(pack))


def test_case06_empty_index_is_rebuilt(tmp_path, shared, caplog):
    from pocketnas.data import RecordDataset

    pack = _orl_rec(tmp_path, shared)
    (pack / "train.idx").write_bytes(b"")
    with caplog.at_level("WARNING", logger="pocketnas"):
        ds = RecordDataset(str(pack), train=False)
    assert len(ds) == 400 and ds.num_classes == 40
    assert "is empty (0 bytes)" in caplog.text and "rebuilding the index" in caplog.text


# ----------------------------------------------------------------------------- 7. one identity
def test_case07_a_margin_loss_needs_two_identities(tmp_path):
    from pocketnas.config import ConfigError
    from pocketnas.engine.search import search
    from test_search import tiny as tiny_search

    one = tmp_path / "one"
    shutil.copytree(os.path.join(orl_root(), "s1"), one / "s1")
    with pytest.raises(ConfigError, match="1 identity: a margin loss needs at least two"):
        train(tiny(data=str(one), batch_size=4, lr_reference_batch=4), str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    cfg = tiny_search("epochs=1")
    cfg.data = str(one)
    with pytest.raises(ConfigError, match="needs at least two"):
        search(cfg, str(tmp_path / "s"))


# ----------------------------------------------------------------------------- 8. damaged data found up front
def _damaged_pack(tmp_path, shared, record=7):
    import struct

    pack = _orl_rec(tmp_path, shared)
    keys = dict(line.split("\t") for line in (pack / "train.idx").read_text().splitlines())
    data = bytearray((pack / "train.rec").read_bytes())
    start = int(keys[str(record)])
    n = struct.unpack_from("<I", data, start + 4)[0]
    data[start + 8 + n - 2:start + 8 + n] = b"\x00\x00"  # a JPEG cut short: no end marker
    (pack / "train.rec").write_bytes(bytes(data))
    return pack


def test_case08_damaged_record_refused_before_training_and_logged(tmp_path, shared):
    from pocketnas.data import DataFormatError

    (tmp_path / "p").mkdir()
    pack = _damaged_pack(tmp_path / "p", shared)
    run = tmp_path / "run"
    with pytest.raises(DataFormatError, match=r"train.rec: record 7: not a JPEG.*--skip-bad"):
        train(tiny(data=str(pack)), str(run))
    log = (run / "log.txt").read_text()
    assert "run failed:" in log and "record 7" in log and "epoch 1/" not in log
    history = train(tiny(data=str(pack), skip_bad=True, epochs=1), str(tmp_path / "run2"))
    assert history["epochs"] and "1 damaged records left out of 400" in (tmp_path / "run2" / "log.txt").read_text()


def test_case08_empty_png_and_missing_val_bin_found_up_front(tmp_path):
    from pocketnas.errors import InputError

    data = tmp_path / "faces"
    for p in ("s1", "s2"):
        shutil.copytree(os.path.join(orl_root(), p), data / p)
    (data / "s2" / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"s2/empty.png: empty file \(0 bytes\)"):
        train(tiny(data=str(data)), str(tmp_path / "a"))
    with pytest.raises(FileNotFoundError, match="val_bins: .*nope.bin: no such .bin file"):
        train(tiny(val_bins=[str(tmp_path / "nope.bin")]), str(tmp_path / "b"), verifier=verify_bins)
    assert not (tmp_path / "b" / "checkpoint.pt").exists()
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "c"), "--skip-bad", "--set", "epochs=1",
                 "--set", "batch_size=8", "--set", "max_batches_per_epoch=1", "--set", "arch=pocketnet",
                 "--set", "model_kwargs={channels: 4, layers: 3, embedding_size: 16}", "--set", "workers=0"]) == 0


@pytest.mark.slow
def test_case08_worker_errors_keep_their_message(tmp_path, shared):
    """A record that only decoding finds damaged fails inside a DataLoader worker: the error that reaches the
    user is pocketnas's message, not 'Caught DataFormatError in DataLoader worker process 0 ...'."""
    import struct

    from pocketnas.data import DataFormatError

    pack = _orl_rec(tmp_path, shared)
    keys = dict(line.split("\t") for line in (pack / "train.idx").read_text().splitlines())
    data = bytearray((pack / "train.rec").read_bytes())
    start = int(keys["3"])
    n = struct.unpack_from("<I", data, start + 4)[0]
    data[start + 8 + 24 + 20:start + 8 + n - 2] = b"\x00" * (n - 46)
    (pack / "train.rec").write_bytes(bytes(data))
    with pytest.raises(DataFormatError) as e:
        train(tiny(data=str(pack), workers=2, batch_size=50, lr_reference_batch=50, max_batches_per_epoch=8),
              str(tmp_path / "run"))
    assert str(e.value).startswith(f"{pack}/train.rec: record 3: cannot decode image")
    assert "DataLoader worker" in e.value.worker_traceback


# ----------------------------------------------------------------------------- 9. teacher and student sizes
def test_case09_student_at_56_with_sface(tmp_path, shared):
    history = train(tiny(kd="embedding", teacher=f"{shared}/weights/sface_fp32.onnx", teacher_input_norm="raw255",
                         epochs=1, max_batches_per_epoch=1, batch_size=8, lr_reference_batch=8,
                         model_kwargs={"channels": 4, "layers": 3, "embedding_size": 32, "input_size": 56}),
                    str(tmp_path))
    assert np.isfinite(history["epochs"][0]["kd"])
    assert "the student sees the views resized to 56 px" in (tmp_path / "log.txt").read_text()


# ----------------------------------------------------------------------------- 10. damaged checkpoints
@pytest.mark.parametrize("content,message", [(b"", "empty file"), (b"PK\x03\x04garbage", "truncated, or another"),
                                             (None, "its format is 'pocketnas.model'")])
def test_case10_damaged_or_foreign_checkpoints(tmp_path, capsys, content, message):
    import pocketnas

    run = tmp_path / "run"
    train(tiny(epochs=1, stop_after_steps=1), str(run))
    if content is None:  # a model checkpoint where the training state should be
        pocketnas.save(pocketnas.create_model("pocketnet", channels=4, layers=3), str(run / "checkpoint.pt"))
    else:
        (run / "checkpoint.pt").write_bytes(content)
    from pocketnas.models.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match=message):
        train(tiny(epochs=1), str(run), resume=True)
    assert main(["train", "--data", orl_root(), "--out", str(run), "--resume"]) == 2
    assert message.split("'")[0] in capsys.readouterr().err
    if content is not None:
        (run / "x.bin").write_bytes(b"a placeholder: the model is refused first")
        for argv in (["info", str(run / "checkpoint.pt")], ["eval", "verify", "--model", str(run / "checkpoint.pt"),
                                                            "--bin", str(run / "x.bin")]):
            assert main(argv) == 2
            assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------- 11. values checked once, up front
@pytest.mark.parametrize("setting,message", [
    ("model_kwargs={bogus: 1}", "cannot be built with .*bogus"),
    ("model_kwargs={channels: abc}", "cannot be built with"),
    ("model_kwargs={input_size: 0}", "cannot be built with"),
    ("threads=-3", "threads must not be negative"),
    ("device=tpu", "device must be auto, cpu"),
    ("gamma=-1", "gamma must be positive"),
    ("warmup_epochs=-1", "warmup_epochs must not be negative"),
    ("save_every_steps=-1", "save_every_steps must not be negative"),
    ("embedding_size=0", "embedding_size must be >= 1"),
])
def test_case11_bad_values_refused_before_the_run_folder_exists(tmp_path, capsys, setting, message):
    import re

    out = tmp_path / "run"
    rc = main(["train", "--data", orl_root(), "--out", str(out), "--set", "arch=pocketnet", "--set", setting])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(message, err), err
    assert not out.exists()


@pytest.mark.slow
def test_case11_numbers_as_people_write_them():
    from pocketnas.config import ConfigError
    from pocketnas.engine.search import search_config

    assert tiny(lr=1e-3).lr == 0.001
    from pocketnas.config import load_config
    from pocketnas.engine.train_config import TrainConfig

    cfg = load_config(TrainConfig, None, ["lr=1e-3", "weight_decay=5E-4", "epochs=1.0e+1"], {"data": "x"})
    assert (cfg.lr, cfg.weight_decay, cfg.epochs) == (0.001, 0.0005, 10)
    with pytest.raises(ConfigError, match="lr must be float, got 'fast'"):
        load_config(TrainConfig, None, ["lr=fast"])
    with pytest.raises(ConfigError, match="w_lr must be positive"):
        search_config("pocketnet", None, ["w_lr=-0.1"])


# ----------------------------------------------------------------------------- 12. unbounded .bin
def test_case12_bin_repeating_one_image_is_refused_before_allocation(tmp_path):
    import pickle

    from pocketnas.data import DataFormatError, read_bin

    one = open(os.path.join(orl_root(), "s1", sorted(os.listdir(os.path.join(orl_root(), "s1")))[0]), "rb").read()
    pairs = 2_000_000
    path = tmp_path / "bomb.bin"
    with open(path, "wb") as f:
        pickle.dump(([one] * (2 * pairs), [True] * pairs), f, protocol=4)
    assert path.stat().st_size < 20 * 2 ** 20  # a small file ...
    with pytest.raises(DataFormatError, match=r"4,000,000 image entries \(1 distinct stored images\) would take "
                                              r"140.2 GiB"):
        read_bin(str(path))  # ... refused before 140 GiB are allocated


# ----------------------------------------------------------------------------- 13. interrupted writes
@pytest.mark.slow
def test_case13_stale_temporaries_are_cleaned_at_start(tmp_path, caplog):
    run = tmp_path / "run"
    train(tiny(epochs=2, stop_after_steps=2), str(run))
    (run / ".tmp-abc123.pt").write_bytes(b"half a checkpoint")
    (run / "epochs").mkdir(exist_ok=True)
    (run / "epochs" / ".tmp-zz.pt").write_bytes(b"x")
    with caplog.at_level("WARNING", logger="pocketnas"):
        train(tiny(epochs=2), str(run), resume=True)
    assert not (run / ".tmp-abc123.pt").exists() and not (run / "epochs" / ".tmp-zz.pt").exists()
    assert "removed 2 temporary file(s) of an interrupted write" in caplog.text


# ----------------------------------------------------------------------------- 14. python -m pocketnas
def test_case14_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "pocketnas", "models", "pocketnet_s*"], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": REPO}, timeout=120)
    assert out.returncode == 0 and "pocketnet_s_128" in out.stdout


# ----------------------------------------------------------------------------- 15. messages
def test_case15_cli_shows_bugs_and_hides_only_its_own_errors(tmp_path, capsys, monkeypatch):
    import pocketnas.cli as cli

    def bug(args):
        raise KeyError("a bug")

    parser = cli.build_parser

    def patched():
        p = parser()
        for action in p._subparsers._group_actions[0].choices.values():
            action.set_defaults(func=bug) if action.prog.endswith("models") else None
        return p

    monkeypatch.setattr(cli, "build_parser", patched)
    with pytest.raises(KeyError, match="a bug"):  # a real bug keeps its traceback
        cli.main(["models"])
    monkeypatch.undo()
    assert cli.main(["info", str(tmp_path / "none.pt")]) == 2  # pocketnas's own error: a message
    with pytest.raises(FileNotFoundError):  # ... and with --log-level DEBUG its traceback
        cli.main(["--log-level", "DEBUG", "info", str(tmp_path / "none.pt")])


def test_case15_bare_state_dict_suggests_arch(tmp_path, capsys):
    import pocketnas

    model = pocketnas.create_model("pocketnet_s_128")
    torch.save(model.state_dict(), tmp_path / "backbone.pth")
    assert main(["info", str(tmp_path / "backbone.pth"), "--no-latency"]) == 2
    err = capsys.readouterr().err
    assert "bare state dict" in err and "pocketnet_s_128" in err and "add --arch NAME" in err


@pytest.mark.slow
def test_a_teacher_normalisation_that_contradicts_its_checkpoint_is_refused(tmp_path):
    """Found by the multi-step study: --teacher-input-norm raw255 (meant for SFace) given with a pocketnas teacher
    fed it raw pixels without a word. A self-describing teacher's own normalisation now wins or the run stops."""
    from pocketnas.config import ConfigError
    from pocketnas.errors import InputError

    run = tmp_path / "t"
    train(tiny(epochs=1, save_every_epoch=True), str(run))
    with pytest.raises(InputError, match="records its input normalisation \\(arcface\\); the 'raw255'"):
        train(tiny(kd="embedding", teacher=str(run / "model.pt"), teacher_input_norm="raw255"), str(tmp_path / "s"))
    with pytest.raises(ConfigError, match="multi-step teacher .* drop teacher_input_norm"):
        tiny(kd="multistep", teacher=str(run), teacher_input_norm="raw255", epochs=1)
    train(tiny(kd="embedding", teacher=str(run / "model.pt"), teacher_input_norm="arcface", epochs=1),
          str(tmp_path / "ok"))  # agreeing with the checkpoint is fine
