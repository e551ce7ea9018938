"""Cell diagrams as PNG files (matplotlib, no Graphviz needed).

Inputs c_{k-2} and c_{k-1} on the left, the intermediate nodes in the middle, the concatenated output c_{k} on the
right; each kept edge is an arrow labelled with its operation, coloured by kind.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

from ..genotype import Genotype

_COLOURS = {"dw_conv": "#1f77b4", "sep_conv": "#6a3d9a", "dil_conv": "#9467bd", "max_pool": "#2ca02c",
            "avg_pool": "#98df8a", "skip_connect": "#7f7f7f", "none": "#d62728"}


def _colour(op: str) -> str:
    for prefix, colour in _COLOURS.items():
        if op.startswith(prefix):
            return colour
    return "#ff7f0e"


def draw_cell(genotype: Genotype, which: str, path: str, title: Optional[str] = None) -> str:
    """Draw the ``which`` ('normal' or 'reduce') cell of ``genotype`` into the PNG file ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    if which not in ("normal", "reduce"):
        raise ValueError(f"which must be 'normal' or 'reduce', not {which!r}")
    cell = genotype.normal if which == "normal" else genotype.reduce
    concat = genotype.normal_concat if which == "normal" else genotype.reduce_concat
    n = len(cell)
    pos: Dict[int, tuple] = {0: (0.0, 1.6), 1: (0.0, -1.6)}
    for i in range(n):
        pos[2 + i] = (1.8 + 1.6 * i, 0.9 if i % 2 == 0 else -0.9)
    out_xy = (1.8 + 1.6 * n + 0.4, 0.0)
    names = {0: "c$_{k-2}$", 1: "c$_{k-1}$", **{2 + i: str(i) for i in range(n)}}

    fig, ax = plt.subplots(figsize=(1.4 + 1.6 * n + 1.1, 4.8), dpi=120)
    ax.set_axis_off()

    def node(xy: tuple, label: str, face: str) -> None:
        ax.text(*xy, label, ha="center", va="center", fontsize=11, zorder=3,
                bbox=dict(boxstyle="round,pad=0.45", fc=face, ec="black", lw=1))

    legend_ops: List[str] = []
    placed: List[tuple] = list(pos.values()) + [out_xy]  # what a label must keep clear of: nodes, other labels
    for i, edges in enumerate(cell):
        for j, (op, src) in enumerate(edges):
            a, b = pos[src], pos[2 + i]
            rad = 0.25 if (j % 2 == 0) else -0.25
            colour = _colour(op)
            ax.add_patch(FancyArrowPatch(a, b, connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>",
                                         mutation_scale=14, lw=1.6, color=colour, shrinkA=16, shrinkB=16,
                                         zorder=1))
            # a point of matplotlib's arc3 quadratic Bezier (control point offset by rad x the chord's normal),
            # chosen along the curve as the one farthest from the nodes and the labels already placed (a label is
            # about five times wider than tall, so horizontal distance counts less)
            cx = (a[0] + b[0]) / 2 + rad * (b[1] - a[1])
            cy = (a[1] + b[1]) / 2 - rad * (b[0] - a[0])

            def at(t: float) -> tuple:
                return ((1 - t) ** 2 * a[0] + 2 * t * (1 - t) * cx + t ** 2 * b[0],
                        (1 - t) ** 2 * a[1] + 2 * t * (1 - t) * cy + t ** 2 * b[1])

            def clearance(p: tuple) -> float:
                return min(((p[0] - q[0]) / 1.1) ** 2 + ((p[1] - q[1]) / 0.28) ** 2 for q in placed)

            mx, my = max((at(t) for t in (0.5, 0.42, 0.58, 0.34, 0.66, 0.27, 0.73)), key=clearance)
            placed.append((mx, my))
            ax.text(mx, my, op, fontsize=7.5, ha="center", va="center", color=colour, zorder=2,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.9))
            if op not in legend_ops:
                legend_ops.append(op)
    for idx in concat:
        ax.add_patch(FancyArrowPatch(pos[idx], out_xy, arrowstyle="-|>", mutation_scale=10, lw=0.8,
                                     color="#555555", linestyle="--", shrinkA=16, shrinkB=18, zorder=0))
    for k, xy in pos.items():
        node(xy, names[k], "#cfe8ff" if k < 2 else "#fff2b3")
    node(out_xy, "c$_{k}$", "#d8f5d0")
    ax.set_xlim(-0.7, out_xy[0] + 0.7)
    ax.set_ylim(-2.4, 2.4)
    ax.set_title(title or f"{which} cell", fontsize=12)
    fig.tight_layout()
    from ..atomic import atomic_savefig

    atomic_savefig(fig, path)
    plt.close(fig)
    return path


def draw_genotype(genotype: Genotype, out_dir: str, prefix: str = "", title: str = "") -> List[str]:
    """Write ``{prefix}normal.png`` and ``{prefix}reduce.png`` into ``out_dir``; returns their paths."""
    paths = []
    for which in ("normal", "reduce"):
        label = f"{title} - {which} cell" if title else f"{which} cell"
        paths.append(draw_cell(genotype, which, os.path.join(out_dir, f"{prefix}{which}.png"), label))
    return paths
