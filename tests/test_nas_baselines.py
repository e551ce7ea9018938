"""Baselines for architecture search: random genotypes at equal size, zero-cost proxies, and nas-eval."""
import json
import math
import os

import numpy as np
import pytest
import torch

import pocketnas
from pocketnas.cli import main
from pocketnas.data import orl_root
from pocketnas.evaluation.nas_eval import Entry, format_table, load_entries, nas_eval, parse_shard
from pocketnas.metrics.ranking import kendall_p, kendall_tau
from pocketnas.nas.baselines import face_batch
from pocketnas.errors import InputError
from pocketnas.genotype import PUBLISHED, Genotype
from pocketnas.nas.random_search import Budget, random_genotype, sample_genotypes
from pocketnas.nas.space import load_space
from pocketnas.nas.zero_cost import PROXIES, score_genotype


@pytest.mark.parametrize("space_name", ["pocketnet", "darts"])
def test_random_genotypes_are_valid_and_build(space_name):
    space = load_space(space_name)
    rng = np.random.default_rng(0)
    for _ in range(10):
        g = random_genotype(space, rng)
        for cell in (g.normal, g.reduce):
            assert len(cell) == space.nodes
            for i, node in enumerate(cell):
                inputs = [j for _, j in node]
                assert len(set(inputs)) == 2 and all(0 <= j < 2 + i for j in inputs)
                assert all(op in space.operations and op != "none" for op, _ in node)
        net = pocketnas.create_model("pocketnet", genotype=g, channels=4, layers=3, input_size=32).eval()
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 128)


def test_the_budget_window_holds_for_twenty_draws():
    space = load_space("pocketnet")
    budget = Budget("params", 1.0e6, 0.05, channels=16, layers=18)
    found = sample_genotypes(space, 20, seed=3, budget=budget)
    assert len({g.to_legacy() for g, _ in found}) == 20
    for g, cost in found:
        assert abs(cost - 1.0e6) <= 0.05e6
        with torch.device("meta"):
            net = pocketnas.create_model("pocketnet", genotype=g)
        assert sum(p.numel() for p in net.parameters()) == cost  # the cost model counts the real network
    assert [g.to_legacy() for g, _ in sample_genotypes(space, 3, 3, budget)] == [g.to_legacy() for g, _ in found[:3]]
    with pytest.raises(ValueError, match="params 3,000,000 \\+- 1 % is out of reach: every genotype of pocketnet"):
        sample_genotypes(space, 2, 0, Budget("params", 3.0e6, 0.01), max_draws=500)  # said before any draw
    # the bound it refuses with holds every genotype of the space
    low, high = budget.cost_model(space).bounds(space.nodes, space.inputs_per_node)
    costs = [c for _, c in sample_genotypes(space, 200, 0, Budget("params", 1.0e6, 0.9))]
    assert low <= min(costs) and max(costs) <= high


@pytest.mark.parametrize("proxy", sorted(PROXIES.names()))
def test_a_proxy_is_deterministic_and_tells_genotypes_apart(proxy):
    images, labels = face_batch(orl_root(), 24, 32, seed=0)
    g1, g2 = PUBLISHED["pocketnet_casia"], random_genotype(load_space("pocketnet"), np.random.default_rng(1))
    kw = dict(channels=4, layers=3, embedding_size=32, seed=0)
    a = score_genotype(g1, proxy, images, labels, **kw)
    assert np.isfinite(a)
    assert a == score_genotype(g1, proxy, images, labels, **kw)
    assert a != score_genotype(g2, proxy, images, labels, **kw)


def test_kendall_tau():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert abs(kendall_tau([1, 2, 3], [1, 3, 2]) - 1 / 3) < 1e-12
    assert np.isnan(kendall_tau([1, 1], [2, 2]))


def test_kendall_p_is_the_permutation_test():
    # exact below 9 values: of the 5! orderings only the two monotone ones reach |tau| = 1
    assert kendall_p([1, 2, 3, 4, 5], [3, 4, 5, 6, 7]) == 2 / 120
    assert kendall_p([1, 2, 3], [1, 3, 2]) == 1.0  # |tau| = 1/3 is the smallest a ranking of 3 can have
    # 12 values: sampled, seeded, close to the normal approximation (here tau 0.606: z = 2.74, p = 0.0061)
    x = np.arange(12.0)
    y = x + np.random.default_rng(0).normal(0, 3, 12)
    z = kendall_tau(x, y) / math.sqrt(2 * (2 * 12 + 5) / (9 * 12 * 11))
    p = kendall_p(x, y)
    assert p == kendall_p(x, y) and 0.7 < p / math.erfc(abs(z) / math.sqrt(2)) < 1.3
    assert kendall_p(x, np.random.default_rng(1).permutation(12)) > 0.05
    assert np.isnan(kendall_p([1, 1, 1], [1, 2, 3]))


def test_search_methods_write_candidates(tmp_path, capsys):
    common = ["--set", "final_channels=4", "--set", "final_layers=3", "--set", "input_size=32",
              "--set", "embedding_size=32"]
    assert main(["search", "--method", "random", "--count", "3", "--out", str(tmp_path / "r"), *common]) == 0
    data = json.loads((tmp_path / "r" / "candidates.json").read_text())
    assert [e["name"] for e in data["entries"]] == ["random_00", "random_01", "random_02"]
    assert Genotype.from_json(str(tmp_path / "r" / "random_01.json")).to_dict() == data["entries"][1]["genotype"]
    assert main(["search", "--method", "random", "--count", "3", "--out", str(tmp_path / "r"), *common]) == 2
    assert "add --overwrite" in capsys.readouterr().err
    assert main(["search", "--method", "zero-cost", "--candidates", "4", "--count", "2", "--data", orl_root(),
                 "--out", str(tmp_path / "z"), *common]) == 0
    zc = json.loads((tmp_path / "z" / "candidates.json").read_text())
    every = json.loads((tmp_path / "z" / "all_candidates.json").read_text())
    naswot = [c["scores"]["naswot"] for c in every]
    assert [e["scores"]["naswot"] for e in zc["entries"]] == sorted(naswot, reverse=True)[:2]
    assert {e.source for e in load_entries([str(tmp_path / "z" / "candidates.json")])} == {"zero-cost (naswot)"}


def test_a_search_folder_says_whether_beta_darts_made_it(tmp_path):
    for name, cfg in (("plain", "beta_decay: 0.0\n"), ("beta", "beta_decay: 50.0\n"), ("bare", None)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "genotype.json").write_text(PUBLISHED["pocketnet_casia"].to_json())
        if cfg:
            (tmp_path / name / "config.yaml").write_text(cfg)
    # a genotype file that carries its search's record needs no config.yaml beside it (nor is fooled by one)
    (tmp_path / "recorded").mkdir()
    (tmp_path / "recorded" / "genotype.json").write_text(json.dumps(
        {"genotype": PUBLISHED["pocketnet_casia"].to_dict(), "search": {"method": "darts", "beta_decay": 50.0}}))
    (tmp_path / "recorded" / "config.yaml").write_text("beta_decay: 0.0\n")
    entries = load_entries([str(tmp_path / n / "genotype.json") for n in ("plain", "beta", "bare", "recorded")])
    assert [(e.name, e.source) for e in entries] == [("plain", "searched"), ("beta", "searched (beta-DARTS)"),
                                                     ("bare", "searched"), ("recorded", "searched (beta-DARTS)")]


@pytest.mark.slow
def test_nas_eval_writes_its_table_and_plot_and_resumes(tmp_path, orl_bin):
    rng = np.random.default_rng(5)
    entries = [Entry("casia", PUBLISHED["pocketnet_casia"], "published", {"naswot": 1.0}),
               Entry("rand", random_genotype(load_space("pocketnet"), rng), "random", {"naswot": 2.0})]
    overrides = ["model_kwargs={channels: 4, layers: 3, input_size: 32}", "embedding_size=32", "epochs=1",
                 "batch_size=16", "lr_reference_batch=16", "max_batches_per_epoch=3", "workers=0", "milestones=[]",
                 "warmup_epochs=0"]
    orl = orl_bin
    # an interrupted run: the first seed of "rand" stops after 2 steps (no eval.json yet)
    with pytest.raises(SystemExit):
        def stop(*a, **k):
            raise SystemExit("killed")
        import pocketnas.evaluation.nas_eval as ne
        real = ne._evaluate_run
        ne._evaluate_run = stop
        try:
            nas_eval(entries[1:], orl_root(), [orl], str(tmp_path), seeds=[0], overrides=overrides)
        finally:
            ne._evaluate_run = real
    assert (tmp_path / "rand" / "seed_0" / "model.pt").exists()
    assert not (tmp_path / "rand" / "seed_0" / "eval.json").exists()
    report = nas_eval(entries, orl_root(), [orl], str(tmp_path), seeds=[0, 1], overrides=overrides)
    assert [r["name"] for r in report["rows"]] == ["casia", "rand"]
    for r in report["rows"]:
        a = r["accuracy"]["orl"]
        assert len(a["per_seed"]) == 2 and 0.4 < a["mean"] <= 1 and r["params"] > 1000
        assert len(r["auc"]["orl"]["per_seed"]) == 2 and 0 < r["auc"]["orl"]["mean"] <= 1
        per_seed = [json.loads((tmp_path / r["name"] / f"seed_{k}" / "eval.json").read_text()) for k in (0, 1)]
        assert r["eer"]["orl"]["per_seed"] == [e["orl"]["eer"] for e in per_seed]
    # every entry is scored by every proxy under one setting (the recipe's network), whatever it came with
    assert set(report["kendall_tau"]) == set(report["kendall_tau_auc"]) == {"grad_norm", "naswot", "synflow"}
    rank = [r["scores"]["naswot"] for r in report["rows"]], [r["auc"]["orl"]["mean"] for r in report["rows"]]
    assert report["kendall_tau_auc"]["naswot"] == kendall_tau(*rank)
    # two genotypes: tau is +-1 and either ordering of two values is as extreme, p = 1
    assert report["kendall_p_auc"]["naswot"] == kendall_p(*rank) == 1.0
    assert "(p 1)" in (tmp_path / "table.md").read_text()
    images, labels = face_batch(orl_root(), 64, 32, seed=0)
    assert report["rows"][0]["scores"]["naswot"] == score_genotype(
        PUBLISHED["pocketnet_casia"], "naswot", images, labels, channels=4, layers=3, embedding_size=32, seed=0)
    assert "| genotype | source | params | MFLOPs | orl % mean +- std | per seed | AUC | EER % | grad_norm |" in \
        (tmp_path / "table.md").read_text()
    assert os.path.getsize(tmp_path / "accuracy_vs_params.png") > 10000
    # a seed whose embeddings collapsed below the protocol's grid is marked in the table
    saved = json.loads((tmp_path / "rand" / "seed_1" / "eval.json").read_text())["orl"]
    assert 0 <= saved["collapsed_pairs"] <= 1
    assert report["rows"][1]["collapsed_seeds"]["orl"] == ([1] if saved["collapsed_pairs"] > 0.5 else [])
    marked = dict(report, rows=[report["rows"][0], dict(report["rows"][1], collapsed_seeds={"orl": [1]})])
    row = next(line for line in format_table(marked).splitlines() if line.startswith("| rand |"))
    assert f"{100 * report['rows'][1]['accuracy']['orl']['per_seed'][1]:.2f}* |" in row
    assert "collapsed" in format_table(marked) and "collapsed" not in format_table(
        dict(report, rows=[dict(r, collapsed_seeds={"orl": []}) for r in report["rows"]]))
    # a second call trains nothing: every run has its eval.json
    stamp = os.path.getmtime(tmp_path / "casia" / "seed_0" / "model.pt")
    again = nas_eval(entries, orl_root(), [orl], str(tmp_path), seeds=[0, 1], overrides=overrides)
    assert os.path.getmtime(tmp_path / "casia" / "seed_0" / "model.pt") == stamp
    assert again["rows"][0]["accuracy"] == report["rows"][0]["accuracy"]


@pytest.mark.slow
def test_nas_eval_shards_share_one_study(tmp_path, orl_bin, capsys):
    rng = np.random.default_rng(7)
    entries = [Entry("casia", PUBLISHED["pocketnet_casia"], "published"),
               Entry("rand", random_genotype(load_space("pocketnet"), rng), "random")]
    overrides = ["model_kwargs={channels: 4, layers: 3, input_size: 32}", "embedding_size=32", "epochs=1",
                 "batch_size=16", "lr_reference_batch=16", "max_batches_per_epoch=2", "workers=0", "milestones=[]",
                 "warmup_epochs=0"]
    orl = orl_bin
    first = nas_eval(entries, orl_root(), [orl], str(tmp_path), seeds=[0, 1], overrides=overrides,
                     proxies=["naswot"], shard=(0, 2))
    # runs 0 and 2 of (casia, rand) x (seed 0, seed 1): each entry's seed 0
    assert first == {"complete": False, "pending": ["casia/seed_1", "rand/seed_1"]}
    assert (tmp_path / "rand" / "seed_0" / "eval.json").exists() and not (tmp_path / "table.md").exists()
    # the other shard, from the command line: it finishes the study, so it writes the table
    (tmp_path / "rand.json").write_text(entries[1].genotype.to_json())
    argv = ["nas-eval", "pocketnet_casia", str(tmp_path / "rand.json"), "--data", orl_root(), "--bin", orl,
            "--out", str(tmp_path), "--seeds", "0", "1", "--proxies", "naswot", "--shard", "1/2"]
    (tmp_path / "casia").rename(tmp_path / "pocketnet_casia")
    assert main(argv + [a for o in overrides for a in ("--set", o)]) == 0
    assert "| pocketnet_casia | published |" in capsys.readouterr().out
    last = json.loads((tmp_path / "results.json").read_text())
    assert last["complete"] and [len(r["accuracy"]["orl"]["per_seed"]) for r in last["rows"]] == [2, 2]
    assert (tmp_path / "table.md").exists() and set(last["kendall_tau"]) == {"naswot"}
    assert main(argv[:-1] + ["2/2"]) == 2
    assert "0..N-1" in capsys.readouterr().err
    with pytest.raises(InputError, match="K/N"):
        parse_shard("2")
