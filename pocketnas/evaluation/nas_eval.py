"""Honest architecture evaluation: ``pocketnas nas-eval`` trains a list of genotypes under one recipe with several
seeds, evaluates each on ``.bin`` sets and reports mean +- std, an accuracy-against-parameters plot with error
bars, and the rank correlation between each training-free proxy and trained accuracy (Kendall's tau-b,
:mod:`pocketnas.metrics.ranking`). Resumable: finished runs are read back, an interrupted one resumes. The baseline
searchers it compares against: :mod:`pocketnas.nas.baselines`.

Why: searched cells often fail to beat their space's random architectures at equal size (Li and Talwalkar, UAI
2019; Yang et al., ICLR 2020; Sciuto et al., 2019); a NAS result needs that comparison, with error bars.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..atomic import atomic_write
from ..errors import InputError, MissingFileError
from ..jsonfile import read_json_object, require
from ..genotype import PUBLISHED, Genotype, get_genotype
from ..image_size import recorded
from ..metrics.verification import COLLAPSE_WARNING
from ..metrics.ranking import kendall_p, kendall_tau
from ..nas.baselines import CANDIDATES, face_batch
from ..nas.zero_cost import PROXIES, rank_genotypes

logger = logging.getLogger(__name__)



# ----------------------------------------------------------------------------------------------- evaluation
@dataclass
class Entry:
    name: str
    genotype: Genotype
    source: str
    scores: Dict[str, float] = field(default_factory=dict)


def _search_source(genotype_path: str) -> str:
    """``searched``, or ``searched (beta-DARTS)`` when the search that wrote the genotype used it: read from the
    record the genotype file carries (``{"genotype": ..., "search": {...}}``); files written before it had one
    fall back to the search's config.yaml beside them."""
    import yaml

    from ..jsonfile import read_json_object

    record = read_json_object(genotype_path, "genotype file").get("search")
    if isinstance(record, dict):
        return "searched (beta-DARTS)" if float(record.get("beta_decay") or 0) > 0 else "searched"
    cfg_path = os.path.join(os.path.dirname(os.path.abspath(genotype_path)), "config.yaml")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError):
        return "searched"
    return "searched (beta-DARTS)" if isinstance(cfg, dict) and float(cfg.get("beta_decay") or 0) > 0 else "searched"


def load_entries(specs: Sequence[str]) -> List[Entry]:
    """Genotypes to evaluate: published names (``pocketnet_casia``), genotype files (``genotype.json`` of a search;
    named after their folder), or a ``candidates.json`` of ``pocketnas search --method random|zero-cost`` (every
    entry, with its proxy scores)."""
    out: List[Entry] = []
    for spec in specs:
        if spec in PUBLISHED:
            out.append(Entry(spec, PUBLISHED[spec], "published"))
        elif os.path.isfile(spec) and os.path.basename(spec) == CANDIDATES:
            data = read_json_object(spec, "candidates.json of pocketnas search --method random|zero-cost")
            entries = require(data, ["entries"], spec, [list])["entries"]
            for i, e in enumerate(entries):
                where = f"{spec}: entries[{i}]"
                require(e, ["name", "genotype", "source"], where, [str, object, str])
                scores = e.get("scores", {})
                if not isinstance(scores, dict) or not all(isinstance(v, (int, float)) for v in scores.values()):
                    raise InputError(f"{where}: 'scores' must map proxy names to numbers")
                try:
                    genotype = get_genotype(e["genotype"])
                except (TypeError, ValueError) as err:
                    raise InputError(f"{where}: genotype: {err}") from None
                out.append(Entry(e["name"], genotype, e["source"], dict(scores)))
        elif os.path.isfile(spec):
            stem = os.path.splitext(os.path.basename(spec))[0]
            name = os.path.basename(os.path.dirname(os.path.abspath(spec))) if stem == "genotype" else stem
            out.append(Entry(name, get_genotype(spec), _search_source(spec) if stem == "genotype" else "file"))
        else:
            raise MissingFileError(f"{spec}: neither a genotype file, a candidates.json nor a published genotype "
                                    f"({', '.join(sorted(PUBLISHED))})")
    names = [e.name for e in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"two genotypes are named {', '.join(dupes)}; rename one of the files")
    return out


def _model_cost(genotype: Genotype, cfg) -> Tuple[int, float]:
    from ..models import create_model
    from ..models.complexity import count_flops, count_parameters

    kwargs = dict(cfg.model_kwargs or {})
    model = create_model("pocketnet", genotype=genotype, embedding_size=cfg.embedding_size or 128, **kwargs)
    return count_parameters(model), count_flops(model).total / 1e6


def _evaluate_run(run: str, bins: Sequence[str], flip: bool) -> Dict[str, Any]:
    from ..models import load
    from ..models.embedders import model_embedder
    from .validation import verify_bins

    results = verify_bins(model_embedder(load(os.path.join(run, "model.pt"))), bins, flip=flip, progress=False)
    return {stem: {"accuracy": r["accuracy_mean"], "accuracy_std": r["accuracy_std"], "auc": r["auc"],
                   "eer": r["eer"], "collapsed_pairs": r["collapsed_pairs"]} for stem, r in results.items()}


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _entry_scores(entry: Entry, folder: str, cfg, data: str, proxies: Sequence[str], batch: int = 64,
                  seed: int = 0) -> Dict[str, float]:
    """Every proxy's score of ``entry`` at initialisation, for the network the recipe trains (its width, depth,
    input size and embedding) on ``batch`` faces of ``data``: one setting for every entry, so that the rank
    correlations compare like with like. Cached in ``<entry>/scores.json``."""
    path = os.path.join(folder, "scores.json")
    kwargs = dict(cfg.model_kwargs or {})
    setting = {"proxies": list(proxies), "batch": batch, "seed": seed, "data": os.path.abspath(data),
               "channels": int(kwargs.get("channels", 16)), "layers": int(kwargs.get("layers", 18)),
               "input_size": recorded(kwargs.get("input_size", 112)),
               "embedding_size": int(cfg.embedding_size or kwargs.get("embedding_size", 128)),
               "act": str(kwargs.get("act", "prelu"))}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            cached = json.load(f)
        if cached.get("setting") == setting:
            return cached["scores"]
    images, labels = face_batch(data, batch, setting["input_size"], seed)
    build = {k: setting[k] for k in ("channels", "layers", "embedding_size", "act")}
    scores = rank_genotypes([entry.genotype], images, labels, proxies, progress=False, seed=seed, **build)[0]
    atomic_write(path, json.dumps({"setting": setting, "scores": scores}))
    return scores


def _spread(values: Sequence[float]) -> Dict[str, Any]:
    """Mean, sample standard deviation (0 for one value) and the values themselves."""
    v = [float(x) for x in values]
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "per_seed": v}


def parse_shard(text: str) -> Tuple[int, int]:
    """``"K/N"`` -> (K, N): this process trains the runs whose index (entries x seeds, in order) is K modulo N."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise InputError(f"--shard must be K/N (e.g. 0/2), got {text!r}") from None
    if n < 1 or not 0 <= k < n:
        raise InputError(f"--shard {text}: K must be in 0..N-1 and N >= 1")
    return k, n


def nas_eval(entries: Sequence[Entry], data: str, bins: Sequence[str], out_dir: str, seeds: Sequence[int] = (0, 1),
             recipe: Optional[str] = None, overrides: Sequence[str] = (), flip: bool = False,
             proxies: Optional[Sequence[str]] = None, shard: Tuple[int, int] = (0, 1)) -> Dict[str, Any]:
    """Train every entry with every seed under ``recipe`` (+ ``overrides``), evaluate its last checkpoint on
    ``bins``; write ``results.json``, ``table.md`` and ``accuracy_vs_params.png`` into ``out_dir``.

    Args:
        entries: the genotypes (:func:`load_entries`).
        data: the training faces; bins: ``.bin`` sets (the first is the table's).
        seeds: training seeds of every entry; recipe, overrides: the one training recipe all share.
        proxies: zero-cost proxies scored for every entry under one setting (:func:`_entry_scores`), so that
            Kendall's tau covers every trained genotype (None: every registered one); empty: the entries' own
            scores (from their candidates.json).
        shard: ``(K, N)``: train only the runs whose index is K modulo N (N processes or machines share a study).

    Returns:
        The report (rows, Kendall's tau and p), written by whichever shard finds every run finished; else
        ``{"complete": False, "pending": [...]}``."""
    proxies = PROXIES.names() if proxies is None else list(proxies)
    if not entries:
        raise InputError("nas-eval needs at least one genotype")
    missing = [b for b in bins if not os.path.isfile(b)]
    if missing:
        raise MissingFileError(f"no such .bin file: {', '.join(missing)}")
    for p in proxies:
        PROXIES.get(p)
    plan = _plan(entries, out_dir, seeds)
    cfgs = _run_plan(plan, data, bins, recipe, overrides, flip, shard)
    pending = [f"{e.name}/seed_{seed}" for e, _, _, seed, run in plan
               if not os.path.isfile(os.path.join(run, "eval.json"))]
    if pending:
        logger.info("nas-eval shard %d/%d done; runs of other shards still to finish: %s", shard[0], shard[1],
                    ", ".join(pending))
        return {"complete": False, "pending": pending}
    rows = [_row(e, out_dir, seeds, cfgs[e.name, seeds[-1]], data, proxies) for e in entries]
    report = _report(rows, bins, seeds, recipe, overrides, proxies)
    atomic_write(os.path.join(out_dir, "results.json"), json.dumps(report, indent=1))
    atomic_write(os.path.join(out_dir, "table.md"), format_table(report) + "\n")
    plot_accuracy_vs_params(report, os.path.join(out_dir, "accuracy_vs_params.png"))
    return report


def _plan(entries: Sequence[Entry], out_dir: str, seeds: Sequence[int]) -> List[Tuple[Entry, str, str, int, str]]:
    """(entry, folder, genotype path, seed, run folder) of every run, each entry's genotype written once."""
    os.makedirs(out_dir, exist_ok=True)
    plan = []
    for e in entries:
        folder = os.path.join(out_dir, e.name)
        os.makedirs(folder, exist_ok=True)
        gpath = os.path.join(folder, "genotype.json")
        text = e.genotype.to_json()
        if not os.path.isfile(gpath) or _read(gpath) != text:
            atomic_write(gpath, text)
        plan += [(e, folder, gpath, seed, os.path.join(folder, f"seed_{seed}")) for seed in seeds]
    return plan


def _run_plan(plan, data: str, bins: Sequence[str], recipe: Optional[str], overrides: Sequence[str], flip: bool,
              shard: Tuple[int, int]) -> Dict[Tuple[str, int], Any]:
    """Train and evaluate this shard's unfinished runs (resuming an interrupted one); every run's config."""
    from ..engine.train_config import load_train_config
    from ..engine.trainer import train
    from .validation import verify_bins

    k_shard, n_shards = shard
    cfgs = {}
    for index, (e, folder, gpath, seed, run) in enumerate(plan):
        cfgs[e.name, seed] = cfg = load_train_config(recipe, [*overrides, "arch=pocketnet", f"seed={seed}"],
                                                     {"data": data, "genotype": gpath})
        done = os.path.join(run, "eval.json")
        if os.path.isfile(done) or index % n_shards != k_shard:
            continue
        resume = os.path.isfile(os.path.join(run, "checkpoint.pt"))
        logger.info("nas-eval: %s seed %d (%s)", e.name, seed, "resuming" if resume else "training")
        # a folder without a checkpoint holds nothing to keep (a run killed before its first epoch ended)
        train(cfg, run, resume=resume, overwrite=not resume, verifier=verify_bins)
        atomic_write(done, json.dumps(_evaluate_run(run, bins, flip)))
    return cfgs


def _row(e: Entry, out_dir: str, seeds: Sequence[int], cfg, data: str, proxies: Sequence[str]) -> Dict[str, Any]:
    """One genotype's line of the report: size, proxy scores, and each metric's mean +- std over the seeds."""
    folder = os.path.join(out_dir, e.name)
    per_seed = {seed: read_json_object(os.path.join(folder, f"seed_{seed}", "eval.json"), "nas-eval result")
                for seed in seeds}
    scores = _entry_scores(e, folder, cfg, data, proxies) if proxies else dict(e.scores)
    params, mflops = _model_cost(e.genotype, cfg)
    sets = sorted(next(iter(per_seed.values())))
    return {"name": e.name, "source": e.source, "params": params, "mflops": mflops, "scores": scores,
            "genotype": e.genotype.to_legacy(), "seeds": list(seeds),
            **{metric: {s: _spread([per_seed[k][s][metric] for k in seeds]) for s in sets}
               for metric in ("accuracy", "auc", "eer")},
            # seeds whose embeddings collapsed below the protocol's grid (recorded since the protocol measures it;
            # runs evaluated before have no record)
            "collapsed_seeds": {s: [k for k in seeds if per_seed[k][s].get("collapsed_pairs", 0.0)
                                    > COLLAPSE_WARNING] for s in sets}}


def _report(rows: List[Dict[str, Any]], bins: Sequence[str], seeds: Sequence[int], recipe: Optional[str],
            overrides: Sequence[str], proxies: Sequence[str]) -> Dict[str, Any]:
    """The rows with the rank correlation of every proxy against trained accuracy and against AUC (accuracy has a
    floor at 50 %, where no threshold on the grid separates crowded embeddings; AUC still orders the genotypes)."""
    first = os.path.splitext(os.path.basename(bins[0]))[0]  # the first .bin is the table's
    main = first if first in rows[0]["accuracy"] else sorted(rows[0]["accuracy"])[0]
    names = sorted({p for r in rows for p in r["scores"]})
    pairs = {metric: {p: ([r["scores"][p] for r in rows if p in r["scores"]],
                          [r[metric][main]["mean"] for r in rows if p in r["scores"]]) for p in names}
             for metric in ("accuracy", "auc")}
    taus = {m: {p: kendall_tau(*xy) for p, xy in v.items()} for m, v in pairs.items()}
    p_values = {m: {p: kendall_p(*xy) for p, xy in v.items()} for m, v in pairs.items()}
    return {"complete": True, "set": main, "bins": list(bins), "seeds": list(seeds), "recipe": recipe,
            "overrides": list(overrides), "proxies": list(proxies), "rows": rows,
            "kendall_tau": taus["accuracy"], "kendall_tau_auc": taus["auc"],
            "kendall_p": p_values["accuracy"], "kendall_p_auc": p_values["auc"]}


def format_table(report: Dict[str, Any]) -> str:
    """The report as a Markdown table, best mean accuracy first. AUC and EER (threshold-free, from the same
    embeddings) stand beside the 10-fold accuracy: a network whose embeddings crowd into one direction can sit at
    50 % accuracy on the protocol's 0.01 threshold grid and still rank pairs better than chance."""
    main = report["set"]
    proxies = sorted(report["kendall_tau"])
    lines = [f"| genotype | source | params | MFLOPs | {main} % mean +- std | per seed | AUC | EER % |" +
             "".join(f" {p} |" for p in proxies), "|---|---|---|---|---|---|---|---|" + "---|" * len(proxies)]
    for r in sorted(report["rows"], key=lambda r: -r["accuracy"][main]["mean"]):
        a = r["accuracy"][main]
        collapsed = r.get("collapsed_seeds", {}).get(main, [])
        seeds = ", ".join(f"{100 * v:.2f}" + ("*" if k in collapsed else "") for k, v in zip(r["seeds"], a["per_seed"]))
        lines.append(f"| {r['name']} | {r['source']} | {r['params']:,} | {r['mflops']:.1f} | "
                     f"{100 * a['mean']:.2f} +- {100 * a['std']:.2f} | "
                     f"{seeds} | "
                     f"{r['auc'][main]['mean']:.3f} | {100 * r['eer'][main]['mean']:.1f} |" +
                     "".join(f" {r['scores'][p]:.4g} |" if p in r["scores"] else " |" for p in proxies))
    if any(r.get("collapsed_seeds", {}).get(main) for r in report["rows"]):
        lines += ["", "\\* the seed's embeddings collapsed: most pairs are closer than the threshold grid's step, "
                  "which cannot separate them, so its accuracy understates it (down to the protocol's floor, "
                  "50 %); its AUC and EER still rank it"]

    def taus(metric: str) -> str:
        p_values = report.get(f"kendall_p{metric}", {})
        return ", ".join(f"{p} {t:+.2f}" + (f" (p {p_values[p]:.2g})" if p in p_values else "")
                         for p, t in report.get(f"kendall_tau{metric}", {}).items())

    if report["kendall_tau"]:
        lines += ["", "Kendall tau-b between each proxy's score at initialisation and the mean accuracy, over the "
                  f"{len(report['rows'])} genotypes: {taus('')}; and the mean AUC: {taus('_auc')} (two-sided "
                  "permutation p-values)"]
    return "\n".join(lines)


def plot_accuracy_vs_params(report: Dict[str, Any], path: str) -> str:
    """Two panels against parameters, one point per genotype with its spread over seeds as error bars: the
    10-fold accuracy of the report's set, and the AUC (which still orders networks stuck at 50 % accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = report["set"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    sources = sorted({r["source"] for r in report["rows"]})
    panels = ((axes[0], "accuracy", 100, f"{main} accuracy %"), (axes[1], "auc", 1, f"{main} AUC"))
    for ax, metric, scale, label in panels:
        for k, src in enumerate(sources):
            rs = [r for r in report["rows"] if r["source"] == src]
            ax.errorbar([r["params"] / 1e6 for r in rs], [scale * r[metric][main]["mean"] for r in rs],
                        yerr=[scale * r[metric][main]["std"] for r in rs], fmt="o", capsize=3, label=src,
                        color=f"C{k}")
            for r in rs:
                ax.annotate(r["name"], (r["params"] / 1e6, scale * r[metric][main]["mean"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("parameters (M)")
        ax.set_ylabel(f"{label} (mean +- std over {len(report['seeds'])} seeds)")
        ax.grid(alpha=0.3)
    axes[0].set_title("trained accuracy against size")
    axes[1].set_title("AUC (threshold-free) against size")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    from ..atomic import atomic_savefig

    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return path
