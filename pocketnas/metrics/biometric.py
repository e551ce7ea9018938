"""Score-level verification figures: ROC, AUC, EER, TAR at FAR (ISO/IEC 19795-1 vocabulary: a genuine pair is
the same person, FAR = false accept rate = FPR, TAR = 1 - FRR = TPR)."""
from __future__ import annotations

from typing import Dict, Iterable, Tuple

import numpy as np

from ..errors import InputError

FAR_TARGETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def roc_curve(scores: np.ndarray, genuine: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score (higher score = more alike), starting at (0, 0)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    genuine = np.asarray(genuine, dtype=bool).ravel()
    if scores.shape != genuine.shape:
        raise ValueError(f"{len(scores)} scores for {len(genuine)} labels")
    pos, neg = int(genuine.sum()), int((~genuine).sum())
    if pos == 0 or neg == 0:
        raise InputError(f"a ROC needs genuine and impostor pairs (got {pos} genuine, {neg} impostor)")
    order = np.argsort(-scores, kind="mergesort")
    s, g = scores[order], genuine[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each run of equal scores
    tps = np.cumsum(g)[last]
    fps = (last + 1) - tps
    return np.r_[0.0, fps / neg], np.r_[0.0, tps / pos], np.r_[np.inf, s[last]]


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under the ROC (trapezoids; equals the Mann-Whitney statistic with ties counted one half)."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def eer(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Equal error rate: where FAR = FRR on the piecewise-linear ROC."""
    fnr = 1.0 - tpr
    diff = fnr - fpr
    i = int(np.argmax(diff <= 0))  # first point where FRR has come down to FAR
    if i == 0:
        return float(fpr[0])
    a0, a1, b0, b1 = fpr[i - 1], fpr[i], fnr[i - 1], fnr[i]
    denom = (a1 - a0) - (b1 - b0)
    t = 0.0 if denom == 0 else (b0 - a0) / denom
    return float(a0 + t * (a1 - a0))


def tar_at_far(fpr: np.ndarray, tpr: np.ndarray, targets: Iterable[float] = FAR_TARGETS) -> Dict[str, float]:
    """TAR at each FAR target: the TPR of the ROC point whose FPR is closest to the target (insightface's IJB rule).
    Targets below the smallest non-zero FAR that the number of impostor pairs can resolve are still reported but
    mean little."""
    out = {}
    for x in targets:
        i = int(np.argmin(np.abs(fpr - x)))
        out[f"{x:.0e}"] = float(tpr[i])
    return out


def summarize_scores(scores: np.ndarray, genuine: np.ndarray,
                     fars: Iterable[float] = FAR_TARGETS) -> Dict[str, object]:
    fpr, tpr, _ = roc_curve(scores, genuine)
    return {"pairs": int(len(scores)), "genuine": int(np.sum(genuine)), "auc": auc(fpr, tpr), "eer": eer(fpr, tpr),
            "tar_at_far": tar_at_far(fpr, tpr, fars), "roc": (fpr, tpr)}
