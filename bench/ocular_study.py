"""The ocular study of docs/ocular.md: for periocular verification on a phone, is a large network pruned to 1/8 of
its weights better than a compact network distilled from it? (Almadan and Rattani, "Compact CNN models for
on-device ocular-based user recognition in mobile devices", IEEE SSCI 2021, on VISOB and UFPR-Periocular with
ResNet-50.) Here on the periocular band of real faces, cut from aligned face packs by `pocketnas data crop`.

    python bench/ocular_study.py --faces ../shared/data/celeba7k --pairs lfw=../shared/data/lfw/lfw.bin \\
        --pairs celeba295=../shared/data/celeba295 --out runs/ocular --seeds 0 1 --markdown docs/results/ocular.md

Every stage is skipped when its result exists and resumed when it was interrupted, so the same command continues
a study across sessions, and the table holds every row the folder has (a second seed may be run for chosen rows
only: `--seeds 1 --methods layer_weight,global_weight`); every row runs a `pocketnas` command a user could type
(printed in the table):

1. data: the periocular band of every training face and of every test set's pairs (a labelled pack gives its
   pairs first, `pocketnas data pairs`);
2. base: the ResNet-50-class network on the crops (`train/ocular_base_cpu.yaml`), the unpruned reference and the
   teacher;
3. rows, per seed: each of the five pruning methods at a compression rate of 8 with fine-tuning (`pocketnas prune
   --finetune-epochs 1`, the masks held), and the compact student of as many non-zero parameters
   (`train/ocular_student_cpu.yaml`) with and without distillation from the base, all on one budget of steps;
4. evaluation of each row's last checkpoint on every pair set (10-fold accuracy, EER, TAR at FAR 1e-3 and 1e-2,
   no flip);
5. cost: ONNX files (dense, and with the zeros stored as sparse initializers) and their batch-1 ONNX Runtime
   latency at 1 thread, every row measured in the same interleaved rounds;
6. the tables and two plots (accuracy against non-zero parameters and against latency).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Tuple

PRUNERS = ("layer_weight", "global_weight", "layer_grad", "global_grad", "random")
FARS = (1e-3, 1e-2)

# what changes between a study and a check that the driver runs end to end (tests/test_ocular_study.py)
TIERS: Dict[str, Dict[str, Any]] = {
    "full": {"size": "64x32", "pairs": 6000, "budget": 300, "rate": 8, "base": [], "student_epochs": 3,
             "student": [],
             # the students' batch (64 images a step, so that 300 steps are the same images for every row) and the
             # base's last learning rate (0.01 at batch 64, not prune's default reference batch of 512)
             "finetune": ["--set", "batch_size=64", "--set", "lr_reference_batch=64", "--set", "precision=bf16"],
             "latency": (5, 30)},
    # the machinery only, in about a minute: small networks, no compilation, a few steps and timings
    "pilot": {"size": "64x32", "pairs": 200, "budget": 2, "rate": 8,
              "base": ["--set", "arch=mobilefacenet", "--set", "epochs=1", "--set", "max_batches_per_epoch=3",
                       "--set", "batch_size=16", "--set", "workers=0", "--set", "precision=fp32", "--set",
                       "compile=false"],
              "student_epochs": 1,
              "student": ["--set", "model_kwargs={input_size: [32, 64], blocks: [1, 1, 1, 1]}", "--set",
                          "batch_size=16", "--set", "workers=0", "--set", "milestones=[]", "--set", "compile=false"],
              "finetune": ["--set", "batch_size=16", "--set", "workers=0", "--set", "compile=false"],
              "latency": (1, 3)},
}


def pocketnas(*args: str, log: str) -> None:
    """Run one pocketnas command (through this interpreter), its output appended to ``log``."""
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n$ pocketnas {' '.join(args)}\n")
        f.flush()
        subprocess.run([sys.executable, "-m", "pocketnas.cli", *args], check=True, stdout=f, stderr=subprocess.STDOUT)


# ----------------------------------------------------------------------------- 1. data
def prepare_data(args: argparse.Namespace, tier: Dict[str, Any]) -> Tuple[str, Dict[str, str]]:
    """(the training crops, {set name: its periocular pairs .bin}), made in this process as `pocketnas data crop
    SRC OUT --region periocular --size WxH` and `pocketnas data pairs SRC OUT --pairs N` make them."""
    from pocketnas.data.crop import crop_any, make_crop, source_kind
    from pocketnas.data.pack import pairs_from_folder, pairs_from_pack

    data = os.path.join(args.out, "data")
    train = os.path.join(data, "train")
    width, height = (int(v) for v in tier["size"].split("x"))
    crop = make_crop("periocular", size=(width, height))
    if not os.path.isfile(os.path.join(train, "crop.json")):
        crop_any(args.faces, train, crop)
    sets = {}
    for spec in args.pairs:
        name, src = spec.split("=", 1)
        out = os.path.join(data, f"{name}_periocular.bin")
        if not os.path.isfile(out):
            if source_kind(src) != "bin":  # a labelled pack or folder: pairs first, as LFW's 10 folds
                pairs = os.path.join(data, f"{name}_pairs.bin")
                make = pairs_from_pack if source_kind(src) == "pack" else pairs_from_folder
                make(src, pairs, tier["pairs"])
                src = pairs
            crop_any(src, out, crop)
        sets[name] = out
    return train, sets


# ----------------------------------------------------------------------------- 2-3. training
def train_base(args: argparse.Namespace, tier: Dict[str, Any], train: str) -> Dict[str, Any]:
    out = os.path.join(args.out, "base")
    arch = next((a.split("=", 1)[1] for a in tier["base"] if a.startswith("arch=")), "iresnet50")
    cmd = ["train", "--config", "ocular_base_cpu", "--data", train, "--out", out, *tier["base"]]
    if not os.path.isfile(os.path.join(out, "model.pt")) or _unfinished(out):
        resume = ["--resume"] if os.path.isfile(os.path.join(out, "checkpoint.pt")) else []
        pocketnas(*cmd, *resume, log=out + ".log")
    return {"row": "base", "kind": "base", "seed": 0, "model": os.path.join(out, "model.pt"),
            "what": f"{arch}, unpruned: the reference and the teacher",
            "command": "pocketnas " + " ".join(cmd)}


def _unfinished(run: str) -> bool:
    """True while a run's checkpoint is behind its configured end (an interrupted run to resume)."""
    import torch
    import yaml

    ckpt, cfg = os.path.join(run, "checkpoint.pt"), os.path.join(run, "config.yaml")
    if not (os.path.isfile(ckpt) and os.path.isfile(cfg)):
        return False
    with open(cfg, encoding="utf-8") as f:
        epochs = int(yaml.safe_load(f).get("epochs", 0))
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"]) < epochs


def prune_row(args, tier, train: str, base: str, method: str, seed: int) -> Dict[str, Any]:
    name = f"prune_{method}_s{seed}"
    out = os.path.join(args.out, "rows", name)
    cmd = ["prune", "--model", base, "--data", train, "--out", out, "--method", method, "--rate", str(tier["rate"]),
           "--finetune-epochs", "1", "--set", f"max_batches_per_epoch={tier['budget']}", "--set", f"seed={seed}",
           "--no-export", *tier["finetune"]]
    if not os.path.isfile(os.path.join(out, "model.pt")):
        pocketnas(*cmd, "--overwrite", log=out + ".log")
    return {"row": name, "kind": f"prune:{method}", "seed": seed, "model": os.path.join(out, "model.pt"),
            "what": f"base pruned by {method} at rate {tier['rate']}, fine-tuned {tier['budget']} steps",
            "command": "pocketnas " + " ".join(cmd)}


def student_row(args, tier, train: str, base: str, distil: bool, seed: int) -> Dict[str, Any]:
    name = f"student_{'kd' if distil else 'plain'}_s{seed}"
    out = os.path.join(args.out, "rows", name)
    epochs = tier["student_epochs"]  # the pruned rows' fine-tuning budget, in as many epochs
    cmd = ["train", "--config", "ocular_student_cpu", "--data", train, "--out", out, "--set", f"seed={seed}",
           "--set", f"epochs={epochs}", "--set", f"max_batches_per_epoch={tier['budget'] // epochs}", *tier["student"]]
    if distil:
        cmd += ["--kd", "embedding", "--teacher", base,
                "--set", f"teacher_cache_dir={os.path.join(args.out, 'teacher_cache')}"]
    if not os.path.isfile(os.path.join(out, "model.pt")) or _unfinished(out):
        resume = ["--resume"] if os.path.isfile(os.path.join(out, "checkpoint.pt")) else []
        pocketnas(*cmd, *resume, log=out + ".log")
    what = ("compact student (MobileFaceNet as many non-zero parameters as a pruned row)"
            + (", distilled from the base" if distil else ", ArcFace only"))
    return {"row": name, "kind": "student:kd" if distil else "student:plain", "seed": seed,
            "model": os.path.join(out, "model.pt"), "what": what, "command": "pocketnas " + " ".join(cmd)}


def earlier_rows(args, tier, train: str, base: str, wanted_seeds) -> List[Any]:
    """Rows an earlier invocation trained in the same folder (e.g. a second seed run with ``--methods`` for the rows
    within a fold's deviation of each other), so that the table holds every row the study has: nothing is retrained
    (each row's model exists)."""
    found = []
    folder = os.path.join(args.out, "rows")
    methods = set(args.methods.split(","))
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not os.path.isfile(os.path.join(folder, name, "model.pt")) or _unfinished(os.path.join(folder, name)):
            continue
        stem, _, seed = name.rpartition("_s")
        if not seed.isdigit():
            continue
        kind, _, what = stem.partition("_")
        planned = int(seed) in wanted_seeds and kind in args.rows  # already in this invocation's plan
        if kind == "prune" and what in PRUNERS and not (planned and what in methods):
            found.append(lambda m=what, s=int(seed): prune_row(args, tier, train, base, m, s))
        elif kind == "student" and what in ("kd", "plain") and not planned:
            found.append(lambda d=what == "kd", s=int(seed): student_row(args, tier, train, base, d, s))
    return found


# ----------------------------------------------------------------------------- 4. evaluation
def nonzero_parameters(model) -> Tuple[int, int]:
    """(non-zero, all) parameter values of a network."""
    values = [p.detach() for p in model.parameters()]
    return sum(int((v != 0).sum()) for v in values), sum(v.numel() for v in values)


def evaluate(row: Dict[str, Any], sets: Dict[str, str]) -> Dict[str, Any]:
    """Each pair set: 10-fold accuracy, EER, AUC and TAR at FAR 1e-3 / 1e-2 of the row's last checkpoint (no flip),
    cached in ``eval.json`` beside the model."""
    import numpy as np
    import torch

    import pocketnas as pn
    from pocketnas.data.binfile import read_bin
    from pocketnas.image_size import input_hw
    from pocketnas.metrics.biometric import summarize_scores
    from pocketnas.metrics.verification import evaluate_pairs
    from pocketnas.models.embedders import TorchEmbedder, embed_images

    path = os.path.join(os.path.dirname(row["model"]), "study_eval.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            cached = json.load(f)
        if set(cached["sets"]) == set(sets):
            return cached
    torch.set_num_threads(2)
    model = pn.load(row["model"])
    nonzero, total = nonzero_parameters(model)
    embedder = TorchEmbedder(model)
    result: Dict[str, Any] = {"nonzero_params": nonzero, "params": total, "sets": {}}
    for name, bin_path in sets.items():
        images, issame = read_bin(bin_path, size=input_hw(model), progress=False)
        emb = embed_images(embedder, images, 64, flip=False, progress=False)
        r = evaluate_pairs(emb, issame)
        unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        scores = np.sum(unit[0::2] * unit[1::2], axis=1)
        tars = summarize_scores(scores, np.asarray(issame, bool), FARS)["tar_at_far"]
        result["sets"][name] = {"accuracy": r["accuracy_mean"], "accuracy_std": r["accuracy_std"], "eer": r["eer"],
                                "auc": r["auc"], "pairs": len(issame),
                                **{f"tar_at_far_{k}": v for k, v in tars.items()}}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    return result


# ----------------------------------------------------------------------------- 5. cost
def sparse_copy(dense: str, out: str) -> str:
    """The ONNX file with every initializer that is at least half zeros stored as a sparse initializer (COO values
    and flat indices, ONNX's SparseTensorProto): what the zeros save on disk and in memory before the runtime
    loads it (ONNX Runtime makes them dense again at load)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(dense)
    keep, sparse = [], []
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        flat = array.reshape(-1)
        nz = np.flatnonzero(flat)
        if array.dtype == np.float32 and array.size >= 64 and len(nz) <= array.size // 2:
            values = numpy_helper.from_array(flat[nz].astype(np.float32), init.name)
            indices = numpy_helper.from_array(nz.astype(np.int64), init.name + "_indices")
            sparse.append(onnx.helper.make_sparse_tensor(values, indices, list(array.shape)))
        else:
            keep.append(init)
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    model.graph.sparse_initializer.extend(sparse)
    onnx.save(model, out)
    return out


def export_row(row: Dict[str, Any]) -> Dict[str, str]:
    """The row's ONNX file (as `pocketnas export` writes it, checked against PyTorch on periocular crops of the
    bundled faces) and its sparse-initializer copy."""
    import pocketnas as pn
    from pocketnas.compress.deploy import export_checked, face_crops
    from pocketnas.image_size import input_hw

    folder = os.path.dirname(row["model"])
    dense = os.path.join(folder, "model.onnx")
    if not os.path.isfile(dense):
        model = pn.load(row["model"])
        export_checked(model, dense, face_crops(None, 32, input_hw(model)))
    sparse = os.path.join(folder, "model.sparse.onnx")
    if not os.path.isfile(sparse):
        sparse_copy(dense, sparse)
    return {"dense": dense, "sparse": sparse}


def measure_latency(files: Dict[str, str], rounds: int = 5, runs: int = 30) -> Dict[str, float]:
    """Median batch-1 ONNX Runtime latency (ms, 1 thread) of every file, measured in interleaved rounds so that a
    change in the machine's speed falls on every row alike."""
    import numpy as np

    from pocketnas.image_size import shape_hw
    from pocketnas.onnx_runtime import cpu_session

    sessions = {}
    for key, path in files.items():
        s = cpu_session(path, 1)
        inp = s.get_inputs()[0]
        x = np.random.default_rng(0).standard_normal((1, 3, *shape_hw(inp.shape))).astype(np.float32)
        sessions[key] = (s, inp.name, x)
        for _ in range(10):
            s.run(None, {inp.name: x})
    times: Dict[str, List[float]] = {k: [] for k in files}
    for _ in range(rounds):
        for key, (s, name, x) in sessions.items():
            for _ in range(runs):
                t0 = time.perf_counter()
                s.run(None, {name: x})
                times[key].append(time.perf_counter() - t0)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


# ----------------------------------------------------------------------------- 6. tables and plots
def _fmt(values: List[float], scale: float = 100.0, digits: int = 2) -> str:
    if len(values) == 1:
        return f"{scale * values[0]:.{digits}f}"
    return f"{scale * statistics.mean(values):.{digits}f} ({', '.join(f'{scale * v:.{digits}f}' for v in values)})"


def tables(rows: List[Dict[str, Any]], sets: List[str]) -> str:
    kinds: Dict[str, List[Dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: r["seed"]):
        kinds.setdefault(r["kind"], []).append(r)
    lines = ["### Verification (last checkpoint, no flip; mean over seeds, each seed in brackets)", ""]
    head = "| row | what | seeds | non-zero params |"
    rule = "|---|---|---|---|"
    for s in sets:
        head += f" {s} acc % | {s} EER % | {s} TAR@1e-3 % | {s} TAR@1e-2 % |"
        rule += "---|---|---|---|"
    lines += [head, rule]
    for kind, rs in kinds.items():
        line = (f"| {kind} | {rs[0]['what']} | {', '.join(str(r['seed']) for r in rs)} | "
                f"{statistics.mean(r['eval']['nonzero_params'] for r in rs) / 1e6:.2f} M |")
        for s in sets:
            ev = [r["eval"]["sets"][s] for r in rs]
            std = statistics.mean(e["accuracy_std"] for e in ev)
            line += (f" {_fmt([e['accuracy'] for e in ev])} +- {100 * std:.2f} | {_fmt([e['eer'] for e in ev])} | "
                     f"{_fmt([e['tar_at_far_1e-03'] for e in ev], digits=1)} | "
                     f"{_fmt([e['tar_at_far_1e-02'] for e in ev], digits=1)} |")
        lines.append(line)
    lines += ["", "### Cost on the phone's side (ONNX Runtime, batch 1, 1 thread, interleaved rounds)", "",
              "| row | ONNX MB | gzip MB | sparse-initializer ONNX MB | ms dense | ms sparse file |",
              "|---|---|---|---|---|---|"]
    for kind, rs in kinds.items():
        dense, sparse = rs[0]["cost"]["dense"], rs[0]["cost"]["sparse"]
        lines.append(f"| {kind} | {dense['size_mb']:.2f} | {dense['gzip_mb']:.2f} | {sparse['size_mb']:.2f} | "
                     f"{statistics.mean(r['cost']['ms_dense'] for r in rs):.2f} | "
                     f"{statistics.mean(r['cost']['ms_sparse'] for r in rs):.2f} |")
    lines += ["", "Commands (one per row; `bench/ocular_study.py` runs them):", ""]
    lines += [f"- `{r['row']}`: `{r['command']}`" for r in rows]
    return "\n".join(lines)


def plots(rows: List[Dict[str, Any]], set_name: str, out_png: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    markers = {"base": "s", "prune": "o", "student": "^"}
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    colours = {k: plt.get_cmap("tab10")(i % 10) for i, k in enumerate(kinds)}
    first_seed = {k: min(r["seed"] for r in rows if r["kind"] == k) for k in kinds}
    same_size: Dict[float, List[str]] = {}
    for r in rows:
        group = same_size.setdefault(round(r["eval"]["nonzero_params"], -5), [])
        if r["kind"] not in group:
            group.append(r["kind"])
    for r in rows:
        kind = r["kind"]
        acc = 100 * r["eval"]["sets"][set_name]["accuracy"]
        # one colour per row, filled for its first seed and hollow for the others; the rows that share a parameter
        # count are spread sideways (a few per cent of the log axis) so that each stays visible
        style = dict(marker=markers[kind.split(":")[0]], s=42, edgecolors=colours[kind], linewidths=1.4,
                     facecolors=colours[kind] if r["seed"] == first_seed[kind] else "none",
                     label=kind if r["seed"] == first_seed[kind] else None)
        group = same_size[round(r["eval"]["nonzero_params"], -5)]
        spread = 1.0 + 0.02 * (group.index(kind) - (len(group) - 1) / 2)
        axes[0].scatter(spread * r["eval"]["nonzero_params"] / 1e6, acc, **style)
        axes[1].scatter(r["cost"]["ms_dense"], acc, **style)
    axes[0].set_xscale("log")
    axes[0].xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axes[0].xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if v in (2, 3, 4, 5, 20, 30) else ""))
    axes[0].set_xlabel("non-zero parameters (M, log; rows of one size spread sideways)")
    axes[1].set_xlabel("ONNX Runtime batch-1 latency, 1 thread (ms)")
    for ax in axes:
        ax.set_ylabel(f"{set_name} periocular accuracy % (no flip)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, title="filled: first seed, hollow: the others", title_fontsize=7)
    fig.suptitle("Periocular verification: pruning at rate 8 against a distilled compact network")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faces", required=True, help="aligned face pack or folder to train on (e.g. celeba7k)")
    p.add_argument("--pairs", action="append", required=True, metavar="NAME=PATH",
                   help="a test set: a face .bin of pairs, or a labelled pack/folder to draw pairs from")
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--rows", default="prune,student", help="prune, student or both (the base always)")
    p.add_argument("--methods", default=",".join(PRUNERS), help="the pruning methods (default: all five)")
    p.add_argument("--tier", choices=sorted(TIERS), default="full")
    p.add_argument("--markdown", help="write the tables here (and the plots beside it)")
    p.add_argument("--data-only", action="store_true", help="prepare the crops and pairs, then stop")
    args = p.parse_args()
    tier = TIERS[args.tier]
    os.makedirs(args.out, exist_ok=True)
    train, sets = prepare_data(args, tier)
    if args.data_only:
        print(f"training crops: {train}; pairs: {', '.join(sets.values())}")
        return
    base = train_base(args, tier, train)
    wanted = set(args.rows.split(","))
    plan = [lambda: base]
    for seed in args.seeds:
        if "prune" in wanted:
            plan += [lambda m=m, s=seed: prune_row(args, tier, train, base["model"], m, s)
                     for m in args.methods.split(",")]
        if "student" in wanted:
            plan += [lambda d=d, s=seed: student_row(args, tier, train, base["model"], d, s) for d in (True, False)]
    plan += earlier_rows(args, tier, train, base["model"], wanted_seeds=set(args.seeds))
    rows = []
    for make in plan:  # each row trained, evaluated and exported before the next starts: results accumulate
        r = make()
        r["eval"] = evaluate(r, sets)
        r["files"] = export_row(r)
        rows.append(r)
    files = {f"{r['row']}:{k}": v for r in rows for k, v in r["files"].items()}
    ms = measure_latency(files, *tier["latency"])
    from pocketnas.compress.deploy import file_sizes

    for r in rows:
        r["cost"] = {"dense": file_sizes(r["files"]["dense"]), "sparse": file_sizes(r["files"]["sparse"]),
                     "ms_dense": ms[f"{r['row']}:dense"], "ms_sparse": ms[f"{r['row']}:sparse"]}
    with open(os.path.join(args.out, "study.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
    text = tables(rows, list(sets))
    print(text)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(f"# Ocular study: results (tier {args.tier})\n\n{text}\n")
        for name in sets:
            plots(rows, name, os.path.splitext(args.markdown)[0] + f"_{name}.png")


if __name__ == "__main__":
    main()
