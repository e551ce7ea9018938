"""The main job on the bundled real faces (ORL), end to end in a few minutes on a laptop CPU:

1. build every PocketNet, calibrate it on the faces, save and reload it both as a self-describing checkpoint and in
   the original release's layout (checking the embeddings are bit-identical), print the cost table, draw the cells;
2. search: a short DARTS cell search on the faces of 28 people (56x56 crops);
3. train: a small PocketNet built from the searched genotype, ArcFace, on the same 28 people;
4. evaluate: verification on pairs of the 12 people it never saw (person-disjoint folds), with ROC/DET pictures.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Any, Dict, Iterator, List, Optional

import torch
from tqdm import tqdm

from .data import FolderDataset, normalize, orl_root
from .evaluation.cost import cost_report, format_cost_table
from .models.calibrate import calibrate_batchnorm
from .models.checkpoint import save, save_release_state_dict
from .nas.cell_diagram import draw_genotype
from .models import create_model

logger = logging.getLogger(__name__)

POCKETNETS = ["pocketnet_s_128", "pocketnet_s_256", "pocketnet_m_128", "pocketnet_m_256"]
PROBE_IMAGES = 10  # faces embedded before and after each save/reload (bit-identical embeddings)


@contextlib.contextmanager
def stage_clock(record: Dict[str, Dict[str, float]], stage: str) -> Iterator[None]:
    """CPU seconds (user + sys of every thread of this process: what load on the machine does not inflate much)
    and wall seconds of one stage of the demo, into ``record[stage]``."""
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        yield
    finally:
        record[stage] = {"cpu_seconds": round(time.process_time() - cpu, 1),
                         "wall_seconds": round(time.perf_counter() - wall, 1)}


def run_demo(out_dir: str, models: Optional[List[str]] = None, calib_images: int = 40, threads: int = 2,
             latency: bool = False, seed: int = 0, pipeline: bool = True, overwrite: bool = False) -> Dict[str, Any]:
    """The main job into ``out_dir`` (claimed as a run folder: a previous demo there needs ``overwrite``)."""
    from .engine.run_folder import RunFolder

    with RunFolder(out_dir, overwrite=overwrite, kind="demo"):
        return _run_demo(out_dir, models, calib_images, threads, latency, seed, pipeline)


def _run_demo(out_dir: str, models: Optional[List[str]], calib_images: int, threads: int, latency: bool, seed: int,
              pipeline: bool) -> Dict[str, Any]:
    torch.manual_seed(seed)
    models = models or POCKETNETS
    stages: Dict[str, Dict[str, float]] = {}
    with stage_clock(stages, "build"):
        results = build_pocketnets(out_dir, models, calib_images, threads, latency)
    results["stages"] = stages
    _write_report(out_dir, results)
    if pipeline:
        results["pipeline"] = run_pipeline(out_dir, threads=threads, seed=seed, stages=stages)
        _write_report(out_dir, results)
    print("CPU time by stage (user + sys): " + ", ".join(f"{k} {v['cpu_seconds']:.0f} s" for k, v in stages.items())
          + f"; {sum(v['cpu_seconds'] for v in stages.values()):.0f} s in all")
    print(f"report: {os.path.join(out_dir, 'report.json')}")
    return results


def _write_report(out_dir: str, results: Dict[str, Any]) -> None:
    with open(os.path.join(out_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)


def build_pocketnets(out_dir: str, models: List[str], calib_images: int, threads: int,
                     latency: bool) -> Dict[str, Any]:
    """Stage 1: every PocketNet built, its BatchNorm calibrated on the faces, saved and reloaded (checkpoint and
    release layout, embeddings bit-identical), its cost (latency only when asked), and the cells drawn."""
    from .models import load

    faces = FolderDataset(orl_root(), train=False)
    logger.info("bundled faces: %d images of %d people (ORL, credit: Olivetti Research Laboratory)",
                len(faces), faces.num_classes)
    # a few images of every person for BatchNorm statistics; another image of ten people to compare embeddings
    per_person = max(1, calib_images // faces.num_classes)
    calib_idx = [i for i, (_, y) in enumerate(faces.samples) if (i % 10) < per_person]
    probe_idx = [i for i, (_, y) in enumerate(faces.samples) if (i % 10) == 9][:PROBE_IMAGES]
    calib = normalize(faces.batch_uint8(calib_idx))
    probe = normalize(faces.batch_uint8(probe_idx))

    results: Dict[str, Any] = {"faces": {"images": len(faces), "identities": faces.num_classes}, "models": {}}
    reports = []
    for name in tqdm(models, desc="PocketNets", unit="model"):
        model = create_model(name)
        calibrate_batchnorm(model, calib.split(40))
        model.eval()
        with torch.no_grad():
            reference = model(probe)
        ckpt_path = os.path.join(out_dir, "checkpoints", f"{name}.pt")
        save(model, ckpt_path, meta={"note": "random weights, BatchNorm calibrated on ORL"})
        release_path = os.path.join(out_dir, "checkpoints", f"{name}_backbone.pth")
        save_release_state_dict(model, release_path)
        with torch.no_grad():
            same_ckpt = torch.equal(load(ckpt_path)(probe), reference)
            same_release = torch.equal(create_model(name, pretrained=release_path).eval()(probe), reference)
        if not (same_ckpt and same_release):
            raise RuntimeError(f"{name}: reloaded weights give different embeddings "
                               f"(checkpoint {same_ckpt}, release layout {same_release})")
        report = cost_report(model, name, latency=latency, threads=threads)
        reports.append(report)
        results["models"][name] = {**report.as_dict(), "checkpoint": ckpt_path, "release_state_dict": release_path,
                                   "reload_identical": True, "embedding_shape": list(reference.shape)}
    genotype = create_model(models[0]).genotype
    results["cells"] = draw_genotype(genotype, os.path.join(out_dir, "cells"), "pocketnet_casia_",
                                     "pocketnet_casia")
    table = format_cost_table(reports)
    with open(os.path.join(out_dir, "cost.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    print(table)
    print(f"checkpoints reloaded bit-identically ({len(models)} models); cells: {', '.join(results['cells'])}")
    return results


def split_people(out_dir: str, train_people: int = 28) -> Dict[str, str]:
    """Person-disjoint views of the bundled faces (links, no copies): the first people to search and train on,
    the others only to evaluate."""
    root = orl_root()
    people = sorted((d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))),
                    key=lambda d: int(d[1:]) if d[1:].isdigit() else d)
    views = {}
    for name, group in (("train", people[:train_people]), ("test", people[train_people:])):
        folder = os.path.join(out_dir, "data", name)
        os.makedirs(folder, exist_ok=True)
        for person in group:
            link = os.path.join(folder, person)
            if not os.path.lexists(link):
                os.symlink(os.path.join(root, person), link)
        views[name] = folder
    return views


# The demo's search (first-order DARTS, Liu et al. 2019): a small supernet (4 cells of 8 channels) on 32x32 crops of
# 28 people, 2 epochs of 5 steps. Its architecture learning rate is 1,000 times DARTS's 3e-4 because it has ten
# steps, not thousands: at 0.003 the alphas did not move (entropy 2.0794 -> 2.0794, uniform 2.0794); at 0.3 they
# leave uniform (tests/test_demo.py checks by how much). A short search shows the machinery, not a good cell.
DEMO_SEARCH = {"layers": 4, "channels": 8, "input_size": 32, "batch_size": 28, "epochs": 2, "order": "first",
               "w_lr": 0.05, "alpha_lr": 0.3, "log_every": 5}

DEMO_NETWORK = {"channels": 8, "layers": 6, "embedding_size": 128, "input_size": 56}  # the network the demo trains


def demo_search(data: str, out_dir: str, threads: int = 2, seed: int = 0) -> Dict[str, Any]:
    """The demo's cell search on the faces in ``data``; returns the search's history (genotype, alpha entropy)."""
    from .engine.search import search, search_config

    return search(search_config("pocketnet", None, [f"threads={threads}", "workers=0"],
                                {"data": data, "seed": seed, **DEMO_SEARCH}), out_dir)


def run_pipeline(out_dir: str, threads: int = 2, seed: int = 0,
                 stages: Optional[Dict[str, Dict[str, float]]] = None) -> Dict[str, Any]:
    """search -> train -> evaluate -> ship on person-disjoint splits of the bundled faces; each stage's CPU and wall
    seconds go into ``stages``."""
    from .config import config_from_dict
    from .engine.train_config import TrainConfig
    from .engine.trainer import train
    from .evaluation.plots import plot_det, plot_roc
    from .evaluation.run import verify_folder
    from .models.embedders import TorchEmbedder
    from .models import create_model as build, load

    stages = {} if stages is None else stages
    views = split_people(out_dir)
    search_dir = os.path.join(out_dir, "search")
    print("search: a short first-order DARTS search on 28 people, 32x32 crops")
    with stage_clock(stages, "search"):
        found = demo_search(views["train"], search_dir, threads=threads, seed=seed)
    genotype_path = os.path.join(search_dir, "genotype.json")
    print(f"  alpha entropy {found['alpha_entropy_start']:.4f} -> {found['alpha_entropy_end']:.4f} (uniform "
          f"{found['alpha_entropy_uniform']:.4f}); genotype: {genotype_path} (cells in "
          f"{os.path.join(search_dir, 'cells')})")
    train_dir = os.path.join(out_dir, "train")
    print("train: a small PocketNet (8 channels x 6 cells, 128-d, 56x56 input) from that genotype, ArcFace, 28 people")
    cfg = config_from_dict(TrainConfig, {
        "arch": "pocketnet", "genotype": genotype_path, "data": views["train"], "threads": threads, "seed": seed,
        "model_kwargs": DEMO_NETWORK, "batch_size": 28, "workers": 0,
        "epochs": 8, "lr": 0.1, "lr_reference_batch": 28, "milestones": [6], "margin_s": 32.0, "margin_m": 0.3,
        "log_every": 5, "compile": "false"})
    with stage_clock(stages, "train"):
        history = train(cfg, train_dir)
    model_path = os.path.join(train_dir, "model.pt")
    print("evaluate: verification on the 12 unseen people (300 pairs, 5 person-disjoint folds)")
    with stage_clock(stages, "evaluate"):
        trained = TorchEmbedder(load(model_path))
        random_net = build("pocketnet", genotype=genotype_path, **DEMO_NETWORK)
        faces = FolderDataset(views["train"], train=False, size=DEMO_NETWORK["input_size"])
        faces = faces.batch_uint8(range(0, 280, 2))
        calibrate_batchnorm(random_net, [normalize(faces)])
        results = {}
        curves = {}
        for name, embedder in (("trained", trained), ("untrained (same network)", TorchEmbedder(random_net.eval()))):
            r = verify_folder(embedder, views["test"], n_pairs=300, folds=5, seed=seed, progress=False)
            curves[name] = r.pop("roc_full")
            results[name] = {k: r[k] for k in ("accuracy_mean", "accuracy_std", "auc", "eer", "tar_at_far")}
            print(f"  {name}: accuracy {100 * r['accuracy_mean']:.2f} % +- {100 * r['accuracy_std']:.2f}, "
                  f"EER {100 * r['eer']:.2f} %, AUC {r['auc']:.4f}")
        plots = [plot_roc(curves, os.path.join(out_dir, "eval", "roc.png"), "ORL, unseen people"),
                 plot_det(curves, os.path.join(out_dir, "eval", "det.png"), "ORL, unseen people")]
    print(f"  plots: {', '.join(plots)}")
    with stage_clock(stages, "ship"):
        shipped = ship(load(model_path), views["test"], os.path.join(out_dir, "ship", "model.onnx"))
    return {"search": {"genotype": genotype_path, "epochs": len(found["epochs"]),
                       "val_acc": found["epochs"][-1]["val_acc"],
                       **{k: found[k] for k in ("alpha_entropy_start", "alpha_entropy_end", "alpha_entropy_uniform")}},
            "train": {"model": model_path, "epochs": history["epochs"], "minutes": history["minutes"]},
            "evaluation": results, "plots": plots, "ship": shipped}


def ship(model, faces: str, path: str) -> Dict[str, Any]:
    """Export to ONNX, checked against PyTorch on real faces, and time it in ONNX Runtime (when installed)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("ship: skipped (pip install 'pocketnas[onnx]' for ONNX export and ONNX Runtime)")
        return {}
    from .compress.deploy import export_checked, face_crops, file_cost

    print("ship: ONNX export, checked against PyTorch on the unseen people's faces")
    parity = export_checked(model, path, face_crops(faces, 64, int(getattr(model, "input_size", 112))))
    cost = file_cost(path)
    print(f"  {path}: {cost['size_mb']:.2f} MB, min cosine to PyTorch {parity['min_cosine']:.6f}, ONNX Runtime "
          f"batch 1: {cost['latency_ms_1thread']:.1f} ms (1 thread), {cost['latency_ms_2threads']:.1f} ms (2)")
    return {"onnx": path, "parity": parity, **{k: v for k, v in cost.items() if k != "path"}}
