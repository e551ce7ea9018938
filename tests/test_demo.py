import pytest
import json
import os

from pocketnas.demo import run_demo


@pytest.mark.slow
def test_demo_on_bundled_faces(tmp_path, capsys):
    result = run_demo(str(tmp_path), models=["pocketnet_s_128", "pocketnet_m_256"], latency=False, pipeline=False)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["faces"] == {"images": 400, "identities": 40}
    assert report["models"]["pocketnet_s_128"]["params"] == 925_632
    assert report["models"]["pocketnet_m_256"]["embedding_shape"] == [40, 256]
    assert all(m["reload_identical"] for m in report["models"].values())
    for p in result["cells"]:
        assert os.path.getsize(p) > 10_000
    assert "pocketnet_m_256" in (tmp_path / "cost.md").read_text()
    assert "reloaded bit-identically" in capsys.readouterr().out


@pytest.mark.slow
def test_search_train_evaluate_pipeline(tmp_path, capsys):
    from pocketnas.demo import run_pipeline

    out = run_pipeline(str(tmp_path), threads=2)
    ev = out["evaluation"]
    assert os.path.exists(out["search"]["genotype"]) and os.path.exists(out["train"]["model"])
    # trained on 28 people, verified on 12 others: training must beat the same network untrained
    assert ev["trained"]["accuracy_mean"] > ev["untrained (same network)"]["accuracy_mean"]
    assert ev["trained"]["accuracy_mean"] > 0.7
    assert all(os.path.getsize(p) > 5000 for p in out["plots"])
    # shipped: an ONNX file that reproduces the trained network on real faces
    assert os.path.getsize(out["ship"]["onnx"]) > 10_000 and out["ship"]["parity"]["min_cosine"] > 0.9999
    assert out["ship"]["latency_ms_1thread"] > 0
