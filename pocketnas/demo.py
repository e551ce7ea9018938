"""The main job on the bundled real faces (ORL): build every PocketNet, calibrate it on the faces, save and reload
it both as a self-describing checkpoint and in the original release's layout (checking the embeddings are
bit-identical), print the cost table and draw the cells. Later stages (search, training, evaluation) extend it."""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Optional

import torch
from tqdm import tqdm

from .data import FolderDataset, normalize, orl_root
from .evaluation.cost import cost_report, format_cost_table
from .models.calibrate import calibrate_batchnorm
from .models.checkpoint import save, save_release_state_dict
from .nas.cell_diagram import draw_genotype
from .registry import create_model

logger = logging.getLogger(__name__)

POCKETNETS = ["pocketnet_s_128", "pocketnet_s_256", "pocketnet_m_128", "pocketnet_m_256"]


def run_demo(out_dir: str, models: Optional[List[str]] = None, calib_images: int = 120, threads: int = 2,
             latency: bool = True, seed: int = 0) -> Dict[str, Any]:
    from . import load

    torch.manual_seed(seed)
    models = models or POCKETNETS
    os.makedirs(out_dir, exist_ok=True)
    faces = FolderDataset(orl_root(), train=False)
    logger.info("bundled faces: %d images of %d people (ORL, credit: Olivetti Research Laboratory)",
                len(faces), faces.num_classes)
    # a few images of every person for BatchNorm statistics; one other image per person to compare embeddings
    per_person = max(1, calib_images // faces.num_classes)
    calib_idx = [i for i, (_, y) in enumerate(faces.samples) if (i % 10) < per_person]
    probe_idx = [i for i, (_, y) in enumerate(faces.samples) if (i % 10) == 9]
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
    with open(os.path.join(out_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(table)
    print(f"checkpoints reloaded bit-identically ({len(models)} models); cells: {', '.join(results['cells'])}")
    print(f"report: {os.path.join(out_dir, 'report.json')}")
    return results
