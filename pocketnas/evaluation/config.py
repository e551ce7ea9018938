"""Evaluation sets as configuration (``eval/*.yaml``, as ``train/`` holds training recipes):
which ``.bin`` pair sets under which root, which IJB benchmarks, with or without the flip test.

    pocketnas eval --config lfw_family --model model.pt --set root=/data/faces_emore
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List

from ..config import ConfigError, load_config
from .validation import verify_bins
from ..models.embedders import Embedder
from .run import verify_ijb

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    root: str = ""                                   # folder of the .bin sets (and the base of a relative ijb_root)
    bins: List[str] = field(default_factory=list)    # set names (root/NAME.bin) or paths
    flip: bool = True                                # the flip test: each image and its mirror, embeddings summed
    ijb_root: str = ""                               # folder holding IJBB/ and IJBC/ (each with meta/, loose_crop/)
    ijb_targets: List[str] = field(default_factory=list)  # IJBB, IJBC
    fars: List[float] = field(default_factory=lambda: [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
    batch_size: int = 64

    def bin_paths(self) -> List[str]:
        out = []
        for b in self.bins:
            path = b if (os.sep in b or b.endswith(".bin")) else f"{b}.bin"
            out.append(path if os.path.isabs(path) else os.path.join(os.path.expanduser(self.root), path))
        return out

    def ijb_folder(self, target: str) -> str:
        base = os.path.expanduser(self.ijb_root)
        if not os.path.isabs(base) and self.root:
            base = os.path.join(os.path.expanduser(self.root), base)
        return os.path.join(base, target)


def load_eval_config(spec: str, overrides: Iterable[str] = ()) -> EvalConfig:
    """An evaluation configuration from a file or a packaged name, every set checked to exist before any work."""
    cfg = load_config(EvalConfig, spec, overrides, packaged="eval")
    where = f"{spec} (root {cfg.root or '.'})"
    if not cfg.bins and not cfg.ijb_targets:
        raise ConfigError(f"{where}: names no .bin set and no IJB target")
    bad = [t for t in cfg.ijb_targets if t not in ("IJBB", "IJBC")]
    if bad:
        raise ConfigError(f"{where}: ijb_targets must be IJBB or IJBC, got {', '.join(bad)}")
    if cfg.ijb_targets and not cfg.ijb_root:
        raise ConfigError(f"{where}: ijb_targets need ijb_root")
    if any(not 0 < f < 1 for f in cfg.fars):
        raise ConfigError(f"{where}: every FAR must lie in (0, 1)")
    missing = [p for p in cfg.bin_paths() if not os.path.isfile(p)]
    missing += [cfg.ijb_folder(t) for t in cfg.ijb_targets if not os.path.isdir(cfg.ijb_folder(t))]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)} (set the root with --set root=FOLDER)")
    return cfg


def run_eval_config(embedder: Embedder, cfg: EvalConfig, progress: bool = True) -> Dict[str, Dict[str, Any]]:
    """Every set of ``cfg``: results keyed by set (``lfw``, ``cfp_fp`` ..., ``ijbc``), as ``eval verify`` and
    ``eval ijb`` report them."""
    results: Dict[str, Dict[str, Any]] = {}
    if cfg.bins:
        results.update(verify_bins(embedder, cfg.bin_paths(), flip=cfg.flip, batch_size=cfg.batch_size,
                                   progress=progress))
    for target in cfg.ijb_targets:
        ijb, curves = verify_ijb(embedder, cfg.ijb_folder(target), target, flip=cfg.flip,
                                 batch_size=cfg.batch_size, progress=progress, fars=cfg.fars)
        r = ijb[target.lower()]
        r["roc_fpr"], r["roc_tpr"] = (list(map(float, a)) for a in curves[target])
        results[target.lower()] = r
        logger.info("%s: AUC %.4f, TAR %s", target, r["auc"],
                    ", ".join(f"{k}: {100 * v:.2f} %" for k, v in r["tar_at_far"].items()))
    return results


def config_names() -> List[str]:
    from ..config import packaged_yaml_names

    return packaged_yaml_names("eval")


__all__ = ["EvalConfig", "config_names", "load_eval_config", "run_eval_config"]
