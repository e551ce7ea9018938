"""``pocketnas prune`` and ``pocketnas export``: the compression study as one command, and shippable files."""
from __future__ import annotations

import copy
from contextlib import ExitStack
import json
import logging
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..data.transforms import normalize
from ..image_size import Size, input_hw
from ..models.checkpoint import save
from ..models.factory import load
from ..models.embedders import TorchEmbedder
from ..outputs import staged_file
from .prune import PRUNERS, gradient_scores, make_permanent, prune_model, sparsity

logger = logging.getLogger(__name__)


def bin_result(embedder, bin_path: str) -> Dict[str, Any]:
    """10-fold verification of ``embedder`` on one ``.bin`` set (no flip test), the set's result record."""
    from ..evaluation.run import verify_bins

    stem = os.path.splitext(os.path.basename(bin_path))[0]
    return {"set": stem, **verify_bins(embedder, [bin_path], flip=False, progress=False)[stem]}


def verification_accuracy(model: nn.Module, bin_path: Optional[str]) -> Optional[float]:
    # channels_last=False: the network is pruned and fine-tuned in place afterwards (its masks need plain strides)
    return bin_result(TorchEmbedder(model, channels_last=False), bin_path)["accuracy_mean"] if bin_path else None


def gradient_batches(data: str, input_size: Size, norm: str, batches: int = 8, batch_size: int = 32,
                     seed: int = 0):
    """A few labelled, normalised batches of faces for gradient-based importance scores."""
    from ..data.face_sets import open_face_dataset

    faces = open_face_dataset(data, input_size)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(faces), min(len(faces), batches * batch_size), replace=False)
    out = []
    for start in range(0, len(pick), batch_size):
        chunk = pick[start:start + batch_size]
        samples = [faces.sample_uint8(int(i)) for i in chunk]  # one decode per image
        images = np.stack([image for image, _ in samples])
        labels = torch.as_tensor([label for _, label in samples])
        out.append((normalize(torch.as_tensor(images), norm), labels))
    return out, faces.num_classes


def prune_one(model: nn.Module, method: str, rate: float, data: str, out_dir: str, finetune_epochs: int = 0,
              teacher: Optional[str] = None, bin_path: Optional[str] = None, finetune_overrides: Sequence[str] = (),
              grad_batches: int = 8, seed: int = 0, export: bool = False,
              recipe: Optional[Dict[str, Any]] = None, head: Optional[str] = None,
              overwrite: bool = False) -> Dict[str, Any]:
    """Prune a copy of ``model`` with ``method`` to ``rate``, fine-tune with the masks held (optionally with KD
    from ``teacher``), make the masks permanent, and report compression by counting zeros and accuracy before,
    after pruning and after fine-tuning.

    Fine-tuning uses ``recipe`` (the loss and margin the model was trained with, see :func:`checkpoint_recipe`)
    under ``finetune_overrides`` (``key=value`` train settings), at lr 0.01 with no schedule by default, starting
    the margin head from ``head`` (the training run's ``checkpoint.pt``, see :func:`training_checkpoint`).
    ``out_dir`` is claimed as a run folder (see :mod:`pocketnas.engine.run_folder`)."""
    from ..engine.run_folder import RunFolder

    with RunFolder(out_dir, overwrite=overwrite, kind="prune"):
        return _prune_one(model, method, rate, data, out_dir, finetune_epochs, teacher, bin_path,
                          finetune_overrides, grad_batches, seed, export, recipe, head, overwrite)


def _prune_one(model, method, rate, data, out_dir, finetune_epochs, teacher, bin_path, finetune_overrides,
               grad_batches, seed, export, recipe, head, overwrite) -> Dict[str, Any]:
    from ..config import load_config
    from ..engine.train_config import TrainConfig
    from ..engine.trainer import train

    t0 = time.perf_counter()
    norm = model.pocketnas_cfg.input_norm
    size = input_hw(model)
    report: Dict[str, Any] = {"method": method, "rate": rate, "accuracy_before": verification_accuracy(model, bin_path)}
    pruned = copy.deepcopy(model).eval()
    scores = None
    if PRUNERS.get(method).needs_gradients:
        batches, classes = gradient_batches(data, size, norm, grad_batches, seed=seed)
        scores = gradient_scores(pruned, batches, classes)
    sp = prune_model(pruned, method, rate, scores, seed)
    report["accuracy_pruned"] = verification_accuracy(pruned, bin_path)
    if finetune_epochs:
        extra = {**(recipe or {}), "data": data, "epochs": finetune_epochs,
                 "arch": getattr(model, "pocketnas_arch", "pocketnet")}
        if teacher:
            extra.update(kd="embedding", teacher=teacher)
        if head:
            extra["init_head"] = head
        cfg = load_config(TrainConfig, None, ["lr=0.01", "milestones=[]", "compile=false", "warmup_epochs=0",
                                              *finetune_overrides], extra)
        pruned.train()
        from ..evaluation.validation import verify_bins

        train(cfg, os.path.join(out_dir, "finetune"), backbone=pruned, overwrite=overwrite, verifier=verify_bins)
        pruned.eval()
    make_permanent(pruned)
    final = sparsity(pruned)
    path = os.path.join(out_dir, "model.pt")
    save(pruned, path, meta={"pruning": {"method": method, "rate": rate, "achieved": final.compression}})
    report.update(
        achieved_rate=final.compression, model_rate=final.model_compression, prunable=final.prunable,
        remaining=final.prunable_nonzero, dense=final.dense, masks_held=abs(final.compression - sp.compression) < 1e-6,
        accuracy_finetuned=verification_accuracy(pruned, bin_path) if finetune_epochs else None,
        finetune_epochs=finetune_epochs, model=path, seconds=time.perf_counter() - t0)
    if export:
        from .deploy import export_checked, face_crops, file_cost

        onnx_path = os.path.join(out_dir, "model.onnx")
        export_checked(pruned, onnx_path, face_crops(None, 32, size))
        report["onnx"] = file_cost(onnx_path)
    with open(os.path.join(out_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    return report


def checkpoint_recipe(spec: str) -> Optional[Dict[str, Any]]:
    """The training recipe (loss, margin) recorded in a pocketnas checkpoint by ``pocketnas train``, if any."""
    from ..models.checkpoint import load_weights_file, is_pocketnas_checkpoint

    obj = load_weights_file(spec) if os.path.isfile(spec) else None
    if not is_pocketnas_checkpoint(obj):
        return None
    recipe = (obj.get("meta") or {}).get("recipe")
    if recipe:
        logger.info("fine-tuning follows the recipe recorded in %s: %s", spec,
                    ", ".join(f"{k}={v}" for k, v in recipe.items() if v is not None))
    return recipe


def training_checkpoint(spec: str) -> Optional[str]:
    """The ``checkpoint.pt`` beside a ``pocketnas train`` run's ``model.pt`` (its margin head serves fine-tuning)."""
    candidate = os.path.join(os.path.dirname(os.path.abspath(spec)), "checkpoint.pt")
    if not os.path.isfile(spec) or not os.path.isfile(candidate):
        return None
    logger.info("fine-tuning starts the margin head from the training run's %s", candidate)
    return candidate


def onnx_accuracy(path: str, bin_path: str) -> float:
    """Verification accuracy of an exported ONNX file: what ships, measured through ONNX Runtime."""
    from ..models.embedders import OnnxEmbedder

    return bin_result(OnnxEmbedder(path), bin_path)["accuracy_mean"]


def sweep(model: nn.Module, methods: Sequence[str], rates: Sequence[float], data: str, out_dir: str,
          finetune_epochs: int = 0, teacher: Optional[str] = None, bin_path: Optional[str] = None,
          finetune_overrides: Sequence[str] = (), export: bool = True,
          recipe: Optional[Dict[str, Any]] = None, head: Optional[str] = None,
          overwrite: bool = False) -> List[Dict[str, Any]]:
    """Every method at every rate; writes ``sweep.md`` (method x rate -> accuracy, size, latency), ``sweep.json``
    and ``sweep.png``. With ``export`` every accuracy (the unpruned baseline's too) is that of the exported ONNX
    file (what ships, and faster to evaluate on a CPU than eager PyTorch); without, that of the PyTorch model."""
    from ..engine.run_folder import RunFolder

    with RunFolder(out_dir, overwrite=overwrite, kind="prune"):
        return _sweep(model, methods, rates, data, out_dir, finetune_epochs, teacher, bin_path, finetune_overrides,
                      export, recipe, head, overwrite)


def _sweep(model, methods, rates, data, out_dir, finetune_epochs, teacher, bin_path, finetune_overrides, export,
           recipe, head, overwrite) -> List[Dict[str, Any]]:
    from ..evaluation.plots import pyplot, save_figure

    unpruned: Dict[str, Any] = {}
    if export:
        from .deploy import export_checked, face_crops, file_cost

        onnx_path = os.path.join(out_dir, "unpruned", "model.onnx")
        export_checked(model, onnx_path, face_crops(None, 32, input_hw(model)))
        unpruned = file_cost(onnx_path)
        base = onnx_accuracy(onnx_path, bin_path) if bin_path else None
    else:
        base = verification_accuracy(model, bin_path)
    rows: List[Dict[str, Any]] = []

    def write_json() -> None:  # after every row too, so a long sweep's partial results survive
        with open(os.path.join(out_dir, "sweep.json"), "w", encoding="utf-8") as f:
            json.dump({"baseline_accuracy": base, "unpruned": unpruned, "rows": rows}, f, indent=2)

    for method in methods:
        for rate in rates:
            r = prune_one(model, method, rate, data, os.path.join(out_dir, f"{method}_x{rate:g}"), finetune_epochs,
                          teacher, None, finetune_overrides, export=export, recipe=recipe, head=head,
                          overwrite=overwrite)
            r["accuracy_before"] = base
            target = r
            if bin_path and export:
                target["accuracy_final"] = onnx_accuracy(r["onnx"]["path"], bin_path)
                target["accuracy_of"] = "onnx"
            elif bin_path:
                target["accuracy_final"] = verification_accuracy(load(r["model"]), bin_path)
                target["accuracy_of"] = "pytorch"
            rows.append(target)
            write_json()
            logger.info("%s x%g: achieved %.2f, accuracy %s", method, rate, r["achieved_rate"],
                        target.get("accuracy_final"))
    write_json()
    lines = [f"Baseline accuracy: {100 * base:.2f} %" if base is not None else "Baseline accuracy: -", "",
             "| method | rate | achieved | accuracy % | ONNX MB | gzip MB | ORT ms (1 thr) | ORT ms (2 thr) |",
             "|---|---|---|---|---|---|---|---|"]
    baseline_row = {"method": "unpruned", "rate": 1.0, "achieved_rate": 1.0, "accuracy_final": base,
                    "onnx": unpruned}
    for r in [baseline_row, *rows]:
        acc = r.get("accuracy_final")
        o = r.get("onnx", {})
        lines.append(f"| {r['method']} | {r['rate']:g} | {r['achieved_rate']:.2f} | "
                     f"{'-' if acc is None else f'{100 * acc:.2f}'} | {o.get('size_mb', float('nan')):.2f} | "
                     f"{o.get('gzip_mb', float('nan')):.2f} | {o.get('latency_ms_1thread', float('nan')):.1f} | "
                     f"{o.get('latency_ms_2threads', float('nan')):.1f} |")
    with open(os.path.join(out_dir, "sweep.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    if bin_path:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
        for method in methods:
            pts = [(r["rate"], 100 * r["accuracy_final"]) for r in rows if r["method"] == method]
            ax.plot(*zip(*pts), marker="o", label=method)
        if base is not None:
            ax.axhline(100 * base, color="k", ls="--", lw=1, label="unpruned")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("compression rate")
        ax.set_ylabel(f"{os.path.splitext(os.path.basename(bin_path))[0]} accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, os.path.join(out_dir, "sweep.png"))
    return rows


def export_model(model: nn.Module, fmt: str, out: str, calib: Optional[str] = None,
                 bin_path: Optional[str] = None, int8_mode: str = "static", opset: int = 17) -> Dict[str, Any]:
    """Export with a parity check on real face crops; int8 calibrated on face crops; the files' cost. The files
    appear at ``out`` (and, for int8, its ``.fp32.onnx`` sibling) only when every check has passed."""
    from .deploy import face_crops

    size = input_hw(model)
    norm = model.pocketnas_cfg.input_norm
    crops = face_crops(calib, 256, size)
    report: Dict[str, Any] = {"format": fmt, "calibration_images": int(len(crops)), "input_norm": norm}
    final_fp32 = out if fmt in ("onnx", "torchscript") else os.path.splitext(out)[0] + ".fp32.onnx"
    with ExitStack() as stack:  # written aside; moved into place only once every check has passed
        staged = stack.enter_context(staged_file(out))
        fp32 = staged if final_fp32 == out else stack.enter_context(staged_file(final_fp32))
        report.update(_export_files(model, fmt, staged, fp32, crops, norm, bin_path, int8_mode, opset))
    for key, final in (("fp32", final_fp32), ("int8", out)):  # the files' names, not the staging names
        if key in report:
            report[key]["path"] = final
    report["path"] = out
    return report


def _export_files(model: nn.Module, fmt: str, out: str, fp32: str, crops, norm: str, bin_path: Optional[str],
                  int8_mode: str, opset: int) -> Dict[str, Any]:
    from .deploy import (export_checked, export_torchscript, file_cost, onnx_outputs, compare_outputs,
                         quantize_int8, torch_outputs)

    report: Dict[str, Any] = {}
    if fmt == "torchscript":
        report["parity"] = export_torchscript(model, out, crops[:64])
        return report
    report["parity"] = export_checked(model, fp32, crops[:64], opset)
    report["fp32"] = file_cost(fp32)
    if fmt == "onnx-int8":
        try:
            quantize_int8(fp32, out, crops, norm, int8_mode)
            report["int8_mode"] = int8_mode
        except Exception as e:  # static quantisation can fail on unusual graphs: fall back, and say so
            if int8_mode != "static":
                raise
            logger.warning("static int8 quantisation failed (%s); falling back to dynamic", e)
            quantize_int8(fp32, out, None, norm, "dynamic")
            report["int8_mode"] = "dynamic (static failed)"
        report["int8_vs_fp32"] = compare_outputs(torch_outputs(model, crops[:64], norm),
                                                 onnx_outputs(out, crops[:64], norm))
        report["int8"] = file_cost(out)
    if bin_path:
        from ..models.embedders import OnnxEmbedder

        embedders = {"pytorch": TorchEmbedder(model, channels_last=False), "onnx_fp32": OnnxEmbedder(fp32)}
        if fmt == "onnx-int8":
            embedders["onnx_int8"] = OnnxEmbedder(out)
        report["verification"] = {k: {key: r[key] for key in ("set", "accuracy_mean", "accuracy_std")}
                                  for k, r in ((k, bin_result(e, bin_path)) for k, e in embedders.items())}
    return report
