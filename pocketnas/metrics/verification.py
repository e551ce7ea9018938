"""The LFW-family verification protocol, exactly as insightface's ``verification.py`` computes it.

Embeddings (original + horizontally flipped image, summed, then L2-normalised) give a squared L2 distance per pair;
ten folds in file order (scikit-learn ``KFold`` without shuffling: the first ``n % 10`` folds one pair larger);
in each fold the threshold among ``np.arange(0, 4, 0.01)`` that maximises accuracy on the other nine folds (the
first best, as ``np.argmax``) is applied to the held-out fold; a pair is called genuine when its distance is
strictly below the threshold. VAL at FAR 1e-3 follows insightface's ``calculate_val`` over ``np.arange(0, 4,
0.001)``, but the threshold for the target FAR is found robustly: the original's ``scipy.interpolate.interp1d``
fails on repeated FAR values; here the training-fold FAR curve is interpolated linearly between the last
threshold whose FAR is <= the target and the first whose FAR exceeds it. AUC and EER come from the ROC over all
pairs (similarity = -distance).

The grid cannot tell apart pairs closer than its first step (0.01 in squared distance): a model whose embeddings
have collapsed (most pairs below it) gets an accuracy that understates its ranking, down to the protocol's floor,
50 %, when nearly all pairs are. ``collapsed_pairs`` records the share of pairs below that step and a warning names
it past one half, so such a run is read by its AUC and EER, not mistaken for a chance-level one.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ..errors import InputError
from .biometric import auc as roc_auc
from .biometric import eer as roc_eer
from .biometric import roc_curve

logger = logging.getLogger(__name__)

THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)
# the share of pairs below the grid's first step past which the accuracy says more of the grid than of the model
COLLAPSE_WARNING = 0.5


def check_finite(embeddings: np.ndarray, who: str = "the embeddings") -> None:
    """Refuse NaN or infinite embeddings: scored, they give chance accuracy with a perfect-looking AUC and EER."""
    bad = ~np.isfinite(np.asarray(embeddings)).all(axis=-1)
    if bad.any():
        raise InputError(f"{who}: {int(bad.sum())} of {len(bad)} embeddings are NaN or infinite (first: row "
                         f"{int(np.flatnonzero(bad)[0])}); the model is broken (diverged training, uncalibrated "
                         f"BatchNorm, wrong input normalisation?) and cannot be scored")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def kfold_indices(n: int, folds: int) -> List[np.ndarray]:
    """Test indices of each fold, in order, sized as scikit-learn's KFold(shuffle=False)."""
    if folds < 2 or folds > n:
        raise ValueError(f"need 2 <= folds <= pairs, got folds={folds} for {n} pairs")
    sizes = np.full(folds, n // folds)
    sizes[: n % folds] += 1
    bounds = np.r_[0, np.cumsum(sizes)]
    return [np.arange(bounds[i], bounds[i + 1]) for i in range(folds)]


def _counts_below(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """How many values are strictly below each threshold."""
    return np.searchsorted(sorted_values, thresholds, side="left")


def _accuracy_curve(dist: np.ndarray, same: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    tp = _counts_below(np.sort(dist[same]), thresholds)
    fp = _counts_below(np.sort(dist[~same]), thresholds)
    tn = (~same).sum() - fp
    return (tp + tn) / len(dist)


def _rates(dist: np.ndarray, same: np.ndarray, thresholds: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(tpr, fpr) at each threshold (0 where a class is absent, as insightface)."""
    n_same, n_diff = int(same.sum()), int((~same).sum())
    tp = _counts_below(np.sort(dist[same]), thresholds)
    fp = _counts_below(np.sort(dist[~same]), thresholds)
    tpr = tp / n_same if n_same else np.zeros(len(thresholds))
    fpr = fp / n_diff if n_diff else np.zeros(len(thresholds))
    return tpr, fpr


def threshold_at_far(far: np.ndarray, thresholds: np.ndarray, target: float) -> float:
    """Threshold giving FAR ``target`` on a non-decreasing FAR curve; 0.0 when the curve never reaches it."""
    if far.max() < target:
        return 0.0
    i = int(np.searchsorted(far, target, side="right"))  # far[i-1] <= target < far[i]
    if i == 0:
        return float(thresholds[0])
    if i >= len(far) or far[i - 1] == target:
        return float(thresholds[i - 1])
    t = (target - far[i - 1]) / (far[i] - far[i - 1])
    return float(thresholds[i - 1] + t * (thresholds[i] - thresholds[i - 1]))


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    check_finite(embeddings)
    emb = l2_normalize(embeddings)
    if len(emb) % 2:
        raise ValueError(f"embeddings must come in pairs (rows 2i and 2i+1), got {len(emb)} rows")
    return np.sum((emb[0::2] - emb[1::2]) ** 2, axis=1)


def evaluate_pairs(embeddings: np.ndarray, issame: Sequence[bool], folds: int = 10,
                   far_target: float = 1e-3) -> Dict[str, Any]:
    """insightface's 10-fold verification figures for 2N x D ``embeddings`` (rows 2i and 2i+1 are pair i).

    Returns pairs, accuracy_mean/std, fold_accuracy, fold_threshold, val_at_far_1e-3 (mean over folds), val_std,
    far (achieved, mean), auc, eer, collapsed_pairs (the share of pairs below the grid's first step), and the
    fold-averaged ROC (``roc_fpr``/``roc_tpr`` over the thresholds).
    """
    same = np.asarray(issame, dtype=bool)
    dist = pair_distances(embeddings)
    if len(dist) != len(same):
        raise ValueError(f"{len(dist)} pairs of embeddings for {len(same)} issame labels")
    fold_acc, fold_thr, vals, fars = [], [], [], []
    tprs, fprs = [], []
    for test in kfold_indices(len(same), folds):
        train = np.ones(len(same), dtype=bool)
        train[test] = False
        best = int(np.argmax(_accuracy_curve(dist[train], same[train], THRESHOLDS)))
        threshold = THRESHOLDS[best]
        fold_thr.append(float(threshold))
        fold_acc.append(float(np.mean((dist[test] < threshold) == same[test])))
        tpr, fpr = _rates(dist[test], same[test], THRESHOLDS)
        tprs.append(tpr)
        fprs.append(fpr)
        _, far_train = _rates(dist[train], same[train], VAL_THRESHOLDS)
        thr = threshold_at_far(far_train, VAL_THRESHOLDS, far_target)
        val, far = _rates(dist[test], same[test], np.array([thr]))
        vals.append(float(val[0]))
        fars.append(float(far[0]))
    fpr_all, tpr_all, _ = roc_curve(-dist, same)
    auc = roc_auc(fpr_all, tpr_all)
    collapsed = float(np.mean(dist < THRESHOLDS[1]))
    if collapsed > COLLAPSE_WARNING:
        logger.warning("the embeddings have collapsed: %.0f%% of the %d pairs are closer than the threshold grid's "
                       "step (%.2f in squared distance), which cannot separate them, so the 10-fold accuracy "
                       "understates the model; read the AUC (%.3f) and EER instead",
                       100 * collapsed, len(same), THRESHOLDS[1], auc)
    key = f"val_at_far_{far_target:.0e}".replace("e-0", "e-")
    return {
        "pairs": int(len(same)),
        "accuracy_mean": float(np.mean(fold_acc)),
        "accuracy_std": float(np.std(fold_acc)),
        "fold_accuracy": fold_acc,
        "fold_threshold": fold_thr,
        key: float(np.mean(vals)),
        "val_std": float(np.std(vals)),
        "far": float(np.mean(fars)),
        "auc": auc,
        "eer": roc_eer(fpr_all, tpr_all),
        "collapsed_pairs": collapsed,
        "roc_fpr": np.mean(fprs, axis=0).tolist(),
        "roc_tpr": np.mean(tprs, axis=0).tolist(),
    }


def cosine_threshold(result: Dict[str, Any]) -> float:
    """The decision threshold of a 10-fold result as a cosine: the folds' chosen thresholds are on the squared L2
    distance d of unit embeddings, d = 2 - 2 cos, so cos = 1 - mean(d) / 2."""
    return float(1.0 - np.mean(result["fold_threshold"]) / 2.0)


def verification_record(name: str, result: Dict[str, Any]) -> Dict[str, Any]:
    """What a model records of its verification on a set (checkpoint ``meta["verification"]``): the set, its
    accuracy, the flip rule and the cosine threshold ``pocketnas verify`` decides with."""
    return {"set": name, "accuracy": float(result["accuracy_mean"]), "flip": bool(result.get("flip", True)),
            "cosine_threshold": cosine_threshold(result), "pairs": int(result["pairs"])}
