"""Weights to ship inside the package: a trained checkpoint, stored at half precision where that leaves
verification unchanged, with the figures its pretrained configuration (``models.registry.PretrainedCfg``) records.

``release_weights`` evaluates the checkpoint on ``.bin`` sets at full precision, writes it with float16 tensors,
evaluates the written file again, and keeps float16 only when every set's accuracy (with and without the flip test)
is identical to three decimals of a percent and the decision thresholds stay within one step of the folds' grid;
otherwise it writes float32 and says why. The file records the verification threshold of the flip test
(``meta["verification"]``: what ``pocketnas verify`` decides with, flip being its default), and the report gives
the sha256 to register.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional, Sequence

import torch

from ..errors import InputError, OutputError
from ..outputs import staged_file
from ..metrics.verification import cosine_threshold, verification_record
from ..models.checkpoint import check_finite_state, file_digest, read_checkpoint, save
from ..models.embedders import model_embedder
from ..models.factory import load
from .run import verification_report

logger = logging.getLogger(__name__)

# the folds choose thresholds on a grid of 0.01 in squared distance, 0.005 in cosine: one step is not a change
THRESHOLD_TOLERANCE = 0.0051


def _summary(report: Dict[str, Any]) -> Dict[str, Any]:
    nf, fl = report["no_flip"], report["flip"]
    record = verification_record(report["set"], {**fl, "flip": True})
    return {"accuracy": float(nf["accuracy_mean"]), "accuracy_std": float(nf["accuracy_std"]),
            "accuracy_flip": float(fl["accuracy_mean"]), "auc": float(nf["auc"]), "eer": float(nf["eer"]),
            "threshold": cosine_threshold(nf), "threshold_flip": cosine_threshold(fl), "record": record}


def _evaluate(path: str, bins: Sequence[str], batch_size: int, progress: bool) -> Dict[str, Dict[str, Any]]:
    """One model's results on each set, as ``pocketnas eval verify`` measures them (without and with flip)."""
    embedder = model_embedder(load(path), engine="auto")
    reports = [verification_report(embedder, b, batch_size=batch_size, progress=progress) for b in bins]
    return {r["set"]: _summary(r) for r in reports}


def same_verification(a: Dict[str, Any], b: Dict[str, Any]) -> Optional[str]:
    """None when two sets of results agree to three decimals of a percent (accuracies) and within one grid step
    (thresholds), else what differs."""
    for name in a:
        for key in ("accuracy", "accuracy_flip"):
            if round(100 * a[name][key], 3) != round(100 * b[name][key], 3):
                return f"{name} {key}: {100 * a[name][key]:.3f} % at float32, {100 * b[name][key]:.3f} % at float16"
        for key in ("threshold", "threshold_flip"):
            if abs(a[name][key] - b[name][key]) > THRESHOLD_TOLERANCE:
                return f"{name} {key}: {a[name][key]:.4f} at float32, {b[name][key]:.4f} at float16"
    return None


def release_weights(model_path: str, out_path: str, bins: Sequence[str], fp16: bool = True, batch_size: int = 64,
                    progress: bool = True, meta: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Write ``model_path`` (a pocketnas checkpoint) as the file to ship at ``out_path``; see the module docstring.
    Returns {file, sha256, storage, why_float32, results (per set), pretrained_cfg (keyword arguments)}."""
    if not bins:
        raise InputError("release needs at least one .bin set to measure the weights on (e.g. lfw.bin)")
    for b in bins:
        if not os.path.isfile(b):
            raise InputError(f"{b}: no such .bin file")
    record = read_checkpoint(model_path)  # a damaged or foreign file stops here, before any evaluation
    if os.path.exists(out_path) and os.path.samefile(model_path, out_path):
        raise OutputError(f"{out_path}: is the checkpoint being released; write the release elsewhere")
    model = load(model_path)
    check_finite_state(model.state_dict(), f"releasing {model_path}")  # before any evaluation or file
    keep = {k: v for k, v in record.get("meta", {}).items() if k in ("epoch", "step", "recipe", "training")}
    why = None
    with staged_file(out_path) as staged:  # out_path is replaced only by the finished, checked file
        if fp16:
            save(model, staged, {**keep, **(meta or {})}, storage_dtype=torch.float16)
            full = _evaluate(model_path, bins, batch_size, progress)
            half = _evaluate(staged, bins, batch_size, progress)
            why = same_verification(full, half)
            results, storage = (half, "float16") if why is None else (full, "float32")
            if why is not None:
                logger.warning("float16 changes verification (%s): writing float32", why)
        else:
            results, storage = _evaluate(model_path, bins, batch_size, progress), "float32"
        first = next(iter(results))
        own_meta = {**keep, **(meta or {}), "verification": results[first]["record"]}
        save(model, staged, own_meta, storage_dtype=torch.float16 if storage == "float16" else None)
    for r in results.values():
        r.pop("record")
    first_r = results[first]
    return {"file": out_path, "sha256": file_digest(out_path), "storage": storage, "why_float32": why,
            "results": results, "bytes": os.path.getsize(out_path),
            "pretrained_cfg": {"file": os.path.basename(out_path), "sha256": file_digest(out_path),
                               "lfw_accuracy": round(first_r["accuracy"], 5),
                               "lfw_accuracy_flip": round(first_r["accuracy_flip"], 5),
                               "threshold": round(first_r["threshold_flip"], 4)}}
