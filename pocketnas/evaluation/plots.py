"""Pictures of evaluation results: ROC and DET curves, and the accuracy-versus-cost trade-off."""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str) -> str:
    from ..atomic import atomic_savefig

    fig.tight_layout()
    atomic_savefig(fig, path)
    pyplot().close(fig)
    return path


def _curves(curves: Dict[str, Tuple[np.ndarray, np.ndarray]], path: str, title: str, det: bool) -> str:
    """ROC (TAR against FAR) or DET (FRR against FAR) curves on log axes; a curve with nothing to show on them (a
    perfectly separable set) is named in the picture instead of breaking the plot."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    drawn = 0
    for name, (fpr, tpr) in curves.items():
        fpr, tpr = np.asarray(fpr), np.asarray(tpr)
        y = 1 - tpr if det else tpr
        keep = (fpr > 0) & (y > 0) if det else fpr > 0
        if keep.any():
            ax.plot(fpr[keep], y[keep], label=name, lw=1.6)
            drawn += 1
        else:
            what = "errors of one kind only (separable)" if det else "no false accept at any threshold"
            ax.text(0.5, 0.5 - 0.08 * drawn, f"{name}: {what}", transform=ax.transAxes, ha="center")
    if drawn:
        ax.set_xscale("log")
        if det:
            ax.set_yscale("log")
        ax.legend(loc="upper right" if det else "lower right", fontsize=8)
    ax.set_xlabel("false accept rate (FAR)")
    ax.set_ylabel("false reject rate (FRR)" if det else "true accept rate (TAR)")
    if not det:
        ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    return save_figure(fig, path)


def plot_roc(curves: Dict[str, Tuple[np.ndarray, np.ndarray]], path: str, title: str = "ROC") -> str:
    """TAR against FAR (log scale) for each named (fpr, tpr) curve."""
    return _curves(curves, path, title, det=False)


def plot_det(curves: Dict[str, Tuple[np.ndarray, np.ndarray]], path: str, title: str = "DET") -> str:
    """False reject rate against false accept rate, both on log scales."""
    return _curves(curves, path, title, det=True)


def plot_tradeoff(points: Sequence[Dict[str, object]], path: str, metric_label: str = "LFW accuracy (%)") -> str:
    """Accuracy against parameters and against MFLOPs (log scales), one labelled point per model."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120)
    for ax, key, label in ((axes[0], "params", "parameters (M)"), (axes[1], "mflops", "MFLOPs")):
        for p in points:
            x = float(p[key]) / (1e6 if key == "params" else 1.0)
            y = float(p["accuracy"]) * 100
            ax.scatter([x], [y], s=40, zorder=3)
            ax.annotate(str(p["name"]), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(metric_label)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("accuracy against cost")
    return save_figure(fig, path)


def roc_of(result: Dict[str, object]) -> Tuple[List[float], List[float]]:
    return result["roc_fpr"], result["roc_tpr"]  # type: ignore[return-value]
