"""Verification on ``.bin`` pair sets during training (and for ``pocketnas eval verify``): insightface's 10-fold
protocol over an embedder's embeddings."""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict, Sequence

from ..data.binfile import read_bin
from ..metrics.verification import evaluate_pairs
from ..models.embedders import Embedder, embed_images

logger = logging.getLogger(__name__)


def verify_bins(embedder: Embedder, bins: Sequence[str], flip: bool = True, batch_size: int = 64,
                progress: bool = True) -> Dict[str, Dict[str, Any]]:
    """insightface's 10-fold protocol on each ``.bin``; results keyed by file stem (``lfw``, ``cfp_fp`` ...)."""
    results: Dict[str, Dict[str, Any]] = {}
    for path in bins:
        stem = os.path.splitext(os.path.basename(path))[0]
        t0 = time.perf_counter()
        images, issame = read_bin(path, size=embedder.input_size, progress=progress)
        t1 = time.perf_counter()
        emb = embed_images(embedder, images, batch_size, flip=flip, progress=progress, desc=f"embedding {stem}")
        t2 = time.perf_counter()
        result = evaluate_pairs(emb, issame)
        t3 = time.perf_counter()
        result.update(seconds=t3 - t0, seconds_decode=t1 - t0, seconds_embed=t2 - t1, seconds_protocol=t3 - t2,
                      flip=flip, path=path, engine=getattr(embedder, "engine", "?"))
        results[stem] = result
        logger.info("%s: %.2f%% +- %.2f (%d pairs, %.1f s: decode %.1f, embed %.1f on %s, protocol %.1f)", stem,
                    100 * result["accuracy_mean"], 100 * result["accuracy_std"], result["pairs"], t3 - t0, t1 - t0,
                    t2 - t1, result["engine"], t3 - t2)
    return results
