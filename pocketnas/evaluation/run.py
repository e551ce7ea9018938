"""Evaluation runs behind ``pocketnas eval``: verification on .bin sets, on a folder's pairs, IJB, cost, compare."""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .validation import verify_bins  # noqa: F401  (part of this module's interface)
from ..errors import InputError
from ..jsonfile import read_json_object, require
from ..image_size import shape_hw
from ..models.embedders import Embedder, OnnxEmbedder, TorchEmbedder, embed_images
from ..metrics.biometric import roc_curve, tar_at_far
from ..metrics.verification import evaluate_pairs, pair_distances

logger = logging.getLogger(__name__)

META_KEY = "_meta"  # the one key of a results file that is not a data set


def model_cost(embedder: Embedder, threads: int = 2, onnx: bool = True, latency: bool = True) -> Dict[str, Any]:
    """The cost report of what an evaluation ran: a PyTorch model (with its ONNX Runtime figures when available)
    or an ONNX file (parameters from its initialisers, size on disk, ONNX Runtime timings)."""
    from .cost import cost_report

    if isinstance(embedder, TorchEmbedder):
        return cost_report(embedder.model, embedder.name, latency=latency, threads=threads, throughput=latency,
                           onnx=onnx and latency).as_dict()
    if isinstance(embedder, OnnxEmbedder):
        return onnx_file_cost(embedder.path, threads, latency=latency)
    return {"name": embedder.name}


def onnx_file_cost(path: str, threads: int = 2, latency: bool = True) -> Dict[str, Any]:
    import onnx

    from ..onnx_runtime import cpu_session
    from .cost import median_seconds

    proto = onnx.load(path)
    params = int(sum(int(np.prod(t.dims)) for t in proto.graph.initializer))
    out: Dict[str, Any] = {"name": os.path.basename(path), "params": params, "mflops": None,
                           "size_mb": os.path.getsize(path) / 2 ** 20}
    if latency:
        session = cpu_session(path, threads)
        inp = session.get_inputs()[0]
        size = shape_hw(inp.shape)
        x1 = np.random.rand(1, 3, *size).astype(np.float32)
        xb = np.random.rand(32, 3, *size).astype(np.float32)
        out["onnx_latency_ms"] = 1000 * median_seconds(lambda: session.run(None, {inp.name: x1}), 3, 15)
        if not isinstance(inp.shape[0], int):
            out["onnx_throughput_ips"] = 32 / median_seconds(lambda: session.run(None, {inp.name: xb}), 1, 3)
        out["threads"] = threads
    return out


def verification_report(embedder: Embedder, path: str, teacher: Optional[Embedder] = None, batch_size: int = 64,
                        progress: bool = True, teacher_embeddings: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """One ``.bin`` set without and with the flip test from the same two passes (each image and its mirror), and,
    given ``teacher`` (or its ``teacher_embeddings`` of the set's images, computed once for many students), the
    mean cosine between the student's and the teacher's embeddings of the images (no flip; meaningful when the
    student was distilled into the teacher's coordinate frame, about 0 otherwise)."""
    from ..data.binfile import read_bin

    t0 = time.perf_counter()
    images, issame = read_bin(path, size=embedder.input_size, progress=progress)
    t1 = time.perf_counter()
    plain = embed_images(embedder, images, batch_size, flip=False, progress=progress, desc="embedding")
    mirrored = embed_images(embedder, np.ascontiguousarray(images[..., ::-1]), batch_size, flip=False,
                            progress=progress, desc="embedding mirrors")
    t2 = time.perf_counter()
    report: Dict[str, Any] = {"set": os.path.splitext(os.path.basename(path))[0], "path": path,
                              "no_flip": evaluate_pairs(plain, issame),
                              "flip": evaluate_pairs(plain + mirrored, issame),
                              "engine": getattr(embedder, "engine", "?"), "seconds_decode": t1 - t0,
                              "seconds_embed": t2 - t1}
    report["seconds_protocol"] = time.perf_counter() - t2
    if teacher is not None or teacher_embeddings is not None:
        t_emb = teacher_embeddings
        if t_emb is None:
            t_images = images if teacher.input_size == embedder.input_size else read_bin(
                path, size=teacher.input_size, progress=False)[0]
            t_emb = embed_images(teacher, t_images, batch_size, flip=False, progress=progress, desc="teacher")
        if t_emb.shape[1] == plain.shape[1]:
            cos = np.sum(_unit(plain) * _unit(t_emb), axis=1)
            report["teacher_cosine_mean"] = float(cos.mean())
            report["teacher_cosine_median"] = float(np.median(cos))
        report["teacher"] = teacher.name if teacher is not None else "given embeddings"
    report["seconds"] = time.perf_counter() - t0
    for key in ("no_flip", "flip"):
        report[key].pop("roc_fpr", None)
        report[key].pop("roc_tpr", None)
    return report


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def verify_folder(embedder: Embedder, folder: str, n_pairs: int = 600, folds: int = 10, seed: int = 0,
                  flip: bool = True, batch_size: int = 64, progress: bool = True) -> Dict[str, Any]:
    """Generic biometric verification on ``folder/<identity>/<image>`` crops of any size (resized to the model's
    input): genuine/impostor pairs in person-disjoint folds, 10-fold accuracy, EER, TAR at FAR, ROC."""
    from ..data.folder import FolderDataset
    from ..data.pack import make_pairs

    t0 = time.perf_counter()
    ds = FolderDataset(folder, train=False, size=embedder.input_size)
    pairs, issame, disjoint = make_pairs(ds.labels, n_pairs, folds, seed)
    needed = sorted({i for p in pairs for i in p})
    where = {i: k for k, i in enumerate(needed)}
    images = ds.batch_uint8(needed)
    emb = embed_images(embedder, images.numpy(), batch_size, flip=flip, progress=progress)
    order = [where[i] for p in pairs for i in p]
    result = evaluate_pairs(emb[order], issame, folds=folds)
    fpr, tpr, _ = roc_curve(-pair_distances(emb[order]), np.asarray(issame))
    result.update(tar_at_far=tar_at_far(fpr, tpr, (1e-3, 1e-2, 1e-1)), person_disjoint_folds=disjoint,
                  identities=ds.num_classes, images=len(needed), seconds=time.perf_counter() - t0, flip=flip,
                  path=folder, roc_full=(fpr.tolist(), tpr.tolist()))
    return result


def format_verify_table(results: Dict[str, Dict[str, Any]]) -> str:
    from ..metrics.verification import cosine_threshold

    rows = [("set", "pairs", "accuracy %", "VAL@FAR1e-3 %", "AUC", "EER %", "cosine threshold", "seconds")]
    for stem, r in results.items():
        if stem == META_KEY:
            continue
        val = r.get("val_at_far_1e-3")
        rows.append((stem, str(r["pairs"]), f"{100 * r['accuracy_mean']:.2f} +- {100 * r['accuracy_std']:.2f}",
                     f"{100 * val:.2f}" if val is not None else "-", f"{r['auc']:.4f}", f"{100 * r['eer']:.2f}",
                     f"{cosine_threshold(r):.4f}" if "fold_threshold" in r else "-", f"{r['seconds']:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: str, data: Dict[str, Any]) -> None:
    def default(o):
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
        raise TypeError(f"cannot write {type(o).__name__} to JSON")

    from ..atomic import atomic_write_json

    atomic_write_json(path, data, sort_keys=False, default=default)


def compare_results(paths: Sequence[str], out_png: str, data_set: Optional[str] = None) -> List[Dict[str, Any]]:
    """Accuracy against parameters and FLOPs for several ``pocketnas eval verify --json`` results."""
    from .plots import plot_tradeoff

    points = []
    for path in paths:
        data = read_json_object(path, "pocketnas eval --json result")
        meta = data.get(META_KEY, {})
        cost = (meta.get("cost") if isinstance(meta, dict) else None) or {}
        sets = [k for k in data if k != META_KEY]
        stem = data_set or (sets[0] if sets else None)
        if stem not in data:
            raise InputError(f"{path}: no results for set {stem!r} (has: {', '.join(sets)})")
        require(data[stem], ["accuracy_mean"], f"{path}: {stem}", [float])
        if not isinstance(cost, dict) or not isinstance(cost.get("params"), (int, float)) \
                or not isinstance(cost.get("mflops"), (int, float)) or not cost["params"] or not cost["mflops"]:
            raise InputError(f"{path}: no cost report (parameters and MFLOPs) in {META_KEY}; run eval verify with "
                             f"--cost")
        points.append({"name": meta.get("model", os.path.basename(path)), "params": cost["params"],
                       "mflops": cost["mflops"], "accuracy": data[stem]["accuracy_mean"], "set": stem,
                       "path": path})
    plot_tradeoff(points, out_png, metric_label=f"{points[0]['set']} accuracy (%)")
    return points


def verify_ijb(embedder: Embedder, root: str, target: str = "IJBC", flip: bool = True, batch_size: int = 64,
               progress: bool = True, fars: Optional[Sequence[float]] = None):
    """IJB-B/C 1:1 verification of ``embedder`` (TAR at ``fars``, default 1e-6 .. 1e-1):
    ({"ijbc": result}, {"IJBC": (fpr, tpr)})."""
    from .ijb import evaluate_ijb

    def embed_fn(images, flip_):
        return embed_images(embedder, images, batch_size, flip=flip_, progress=progress)

    r = evaluate_ijb(embed_fn, root, target, size=embedder.input_size, flip=flip, progress=progress, fars=fars)
    curves = {target: r.pop("roc")}
    r.pop("scores")
    return {target.lower(): r}, curves


def finish_report(embedder: Embedder, results: Dict[str, Any], curves: Dict[str, Any], meta: Dict[str, Any],
                  cost: bool = True, latency: bool = True, threads: int = 2, plots: Optional[str] = None,
                  json_path: Optional[str] = None) -> Dict[str, Any]:
    """The rest of an evaluation report: the model's cost, ROC and DET pictures (in ``plots``, or beside the JSON
    file), and the JSON file itself (one object per set plus ``_meta``). Returns the meta written."""
    from .plots import plot_det, plot_roc

    meta = dict(meta, engine=getattr(embedder, "engine", "?"))  # after the work: a failed check falls back to torch
    if cost:
        meta["cost"] = model_cost(embedder, threads=threads, latency=latency)
    plots = plots or (os.path.splitext(json_path)[0] + "_plots" if json_path else None)
    if plots:
        meta["plots"] = [plot_roc(curves, os.path.join(plots, "roc.png"), f"ROC: {embedder.name}"),
                         plot_det(curves, os.path.join(plots, "det.png"), f"DET: {embedder.name}")]
    if json_path:
        write_json(json_path, {**results, META_KEY: meta})
    return meta


def record_threshold(model_path: str, results: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Write the first set's decision threshold into the pocketnas checkpoint ``model_path`` (``meta
    ["verification"]``, what ``pocketnas verify`` decides with); the weights are untouched."""
    from ..metrics.verification import verification_record
    from ..models.checkpoint import update_meta

    stem, first = next(iter(results.items()))
    record = verification_record(stem, first)
    update_meta(model_path, verification=record)
    return record
