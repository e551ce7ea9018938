"""bench/ocular_study.py, the driver of docs/ocular.md's table, run end to end on its pilot tier (the bundled ORL
faces, a few steps per row): crops and pairs made, the base trained, pruned rows at rate 8 and students trained,
every row evaluated and exported, the tables and plots written; run again with fewer methods, it redoes nothing
and keeps every row the folder holds."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pocketnas.data import orl_root

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "ocular_study.py")


def _run(out, md, methods="layer_weight,global_grad"):
    return subprocess.run([sys.executable, SCRIPT, "--faces", orl_root(), "--pairs", f"orl={orl_root()}", "--out",
                           str(out), "--tier", "pilot", "--methods", methods, "--markdown", str(md)],
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_the_ocular_study_runs_end_to_end_and_resumes(tmp_path):
    out, md = tmp_path / "study", tmp_path / "ocular.md"
    done = _run(out, md)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["row"]: r for r in json.loads((out / "study.json").read_text())}
    assert set(rows) == {"base", "prune_layer_weight_s0", "prune_global_grad_s0", "student_kd_s0",
                         "student_plain_s0"}
    base = rows["base"]["eval"]
    for name in ("prune_layer_weight_s0", "prune_global_grad_s0"):
        pruned = rows[name]
        assert pruned["eval"]["params"] == base["params"]
        assert pruned["eval"]["nonzero_params"] < base["nonzero_params"] / 6  # rate 8 on the conv/linear weights
        cost = pruned["cost"]
        assert cost["sparse"]["size_mb"] < cost["dense"]["size_mb"] / 2  # the zeros left out of the file
    assert rows["student_plain_s0"]["eval"]["params"] < base["params"]
    for r in rows.values():
        s = r["eval"]["sets"]["orl"]
        assert s["pairs"] == 200 and 0.0 <= s["eer"] <= 1.0 and 0.0 <= s["tar_at_far_1e-02"] <= 1.0
        assert r["cost"]["ms_dense"] > 0
    crop = json.loads((out / "data" / "train" / "crop.json").read_text())
    assert (crop["width"], crop["height"]) == (64, 32)
    text = md.read_text()
    assert "| prune:global_grad |" in text and "| student:kd |" in text and "TAR@1e-3" in text
    assert (tmp_path / "ocular_orl.png").stat().st_size > 10_000

    stamp = os.path.getmtime(out / "rows" / "prune_global_grad_s0" / "model.pt")
    again = _run(out, md, methods="layer_weight")  # e.g. a second seed for chosen rows: the others stay in the table
    assert again.returncode == 0, again.stderr[-3000:]
    assert os.path.getmtime(out / "rows" / "prune_global_grad_s0" / "model.pt") == stamp  # nothing redone
    assert {r["row"] for r in json.loads((out / "study.json").read_text())} == set(rows)
    assert "| prune:global_grad |" in md.read_text()
