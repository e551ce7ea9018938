"""Embedding speed behind `pocketnas eval verify`, side by side in one run: PocketNetS-128 at batch 64 on 2 threads,
on real aligned faces (the bundled ORL set, repeated), as

  eager_nchw    the model as built (NCHW): what eval verify ran before channels-last
  torch         pocketnas's TorchEmbedder (channels-last, inference mode): ``--engine torch``
  onnx_b64      the model exported in memory, one two-thread ONNX Runtime session running each batch of 64 whole
  onnxruntime   the same export run as parallel batch-1 passes on one-thread runs of the session, checked against
                torch on its first batch (ExportedEmbedder): what eval verify runs by default (``--engine auto``)

Prints images/s, ratios against eager_nchw, the time LFW's 12,000 images would take without and with the flip test
(24,000 forward passes), and the fraction of this machine's float32 matrix-product peak measured in the same run
(PocketNetS-128: 587 MFLOPs, i.e. 1.17 GFLOP counting a multiply-add as two, per image).

    python bench/eval.py [--images 512] [--markdown FILE]
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import GFLOP_PER_IMAGE, matmul_peak, print_environment, run_main  # noqa: E402


def main() -> None:
    import numpy as np
    import torch

    import pocketnas
    from pocketnas.data import FolderDataset, orl_root
    from pocketnas.models.calibrate import calibrate_batchnorm
    from pocketnas.models.embedders import ExportedEmbedder, MicroBatchRunner, TorchEmbedder, _exported_session
    from pocketnas.models.embedders import embed_images

    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    print_environment()
    torch.set_num_threads(args.threads)
    ds = FolderDataset(orl_root(), train=False)
    faces = ds.batch_uint8(range(len(ds))).numpy()
    faces = np.concatenate([faces] * (args.images // len(faces) + 1))[: args.images]
    torch.manual_seed(0)
    model = pocketnas.create_model("pocketnet_s_128")
    calibrate_batchnorm(model, pocketnas.data.normalize(torch.as_tensor(faces[:256])).split(64))
    model.eval()
    peak = matmul_peak(args.threads)
    rows = {}
    embedders = {"eager_nchw": TorchEmbedder(copy.deepcopy(model), channels_last=False)}
    reference = embed_images(embedders["eager_nchw"], faces[:64], 64, flip=False, progress=False)
    embedders["torch"] = TorchEmbedder(copy.deepcopy(model))
    t = time.perf_counter()
    embedders["onnxruntime"] = ExportedEmbedder(model, threads=args.threads)
    export_seconds = time.perf_counter() - t
    whole = ExportedEmbedder(model, threads=args.threads)
    whole.runner = MicroBatchRunner(_exported_session(model, args.threads), 1, 1 << 30)  # one call per batch
    embedders = {"eager_nchw": embedders["eager_nchw"], "torch": embedders["torch"], "onnx_b64": whole,
                 "onnxruntime": embedders["onnxruntime"]}
    for name, e in embedders.items():
        embed_images(e, faces[:64], 64, flip=False, progress=False)  # warm-up (and the exported path's check)
        t = time.perf_counter()
        out = embed_images(e, faces, 64, flip=False, progress=False)
        seconds = time.perf_counter() - t
        first = out[:64]
        rel = float(np.max(np.linalg.norm(first - reference, axis=1) / np.linalg.norm(reference, axis=1)))
        rows[name] = {"ips": len(faces) / seconds, "rel": rel}
    assert embedders["onnxruntime"].engine == "onnxruntime", "the exported path fell back to torch"
    base = rows["eager_nchw"]["ips"]
    print(f"\nembedding {len(faces)} aligned faces, PocketNetS-128, batch 64, {args.threads} threads; "
          f"matrix-product peak {peak:.0f} GFLOP/s")
    print(f"{'path':<12}{'images/s':>10}{'vs eager':>10}{'LFW s':>8}{'LFW+flip s':>12}{'of peak':>9}"
          f"{'max rel diff':>14}")
    for name, r in rows.items():
        print(f"{name:<12}{r['ips']:>10.1f}{r['ips'] / base:>9.2f}x{12000 / r['ips']:>8.0f}{24000 / r['ips']:>12.0f}"
              f"{r['ips'] * GFLOP_PER_IMAGE / peak:>9.1%}{r['rel']:>14.1e}")
    print(f"\nexport and session set-up of the onnxruntime path: {export_seconds:.1f} s (once per evaluation)")
    print(f"flip test with the default path (onnxruntime) / eager without flip: "
          f"{2 * base / rows['onnxruntime']['ips']:.2f}x the time; channels-last torch: "
          f"{2 * base / rows['torch']['ips']:.2f}x (issue target <= 0.42x)")
    # the protocol after the embedding: 10-fold threshold search and AUC / EER over LFW's 6,000 pairs
    from pocketnas.metrics.verification import evaluate_pairs

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(12000, 128))
    same = np.tile([True] * 300 + [False] * 300, 10)
    emb[1::2][same] = emb[0::2][same] + rng.normal(size=(3000, 128))
    t = time.perf_counter()
    evaluate_pairs(emb, same)
    protocol = time.perf_counter() - t
    print(f"LFW protocol on 6,000 pairs (10 folds, thresholds, AUC, EER): {protocol:.2f} s, "
          f"{protocol / (24000 / rows['onnxruntime']['ips']):.1%} of the default path's embedding with flip")


if __name__ == "__main__":
    run_main(main)
