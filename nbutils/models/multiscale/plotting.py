"""Drawings of a multi-scale architecture: the "red lines" over the stage x resolution grid.

    draw_architecture(arch, ax=None) -> Figure      nodes at (stage, resolution); kept connections red,
                                                    line width proportional to the path weight; the
                                                    candidates that were not kept thin grey; pruned
                                                    nodes hollow; each kept node labelled with its layers
    save_architecture_figure(arch, path) -> Path    the same drawing as a PNG (written atomically)
    plot_path_weights(arch_history, node) -> Figure path weights of the nodes over the search epochs
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .space import candidate_sources, grid_nodes, node_name, parse_node

OP_SHORT = {"basic_block": "B", "mbconv_k3_e3": "M3", "mbconv_k5_e3": "M5", "skip": "-"}
RESOLUTION_LABELS = ("1/4", "1/8", "1/16", "1/32", "1/64", "1/128")


def _layers_label(layers) -> str:
    kept = [OP_SHORT.get(op, op) for op in layers if op != "skip"]
    return " ".join(kept) if kept else "(fuse only)"


def draw_architecture(arch: dict, ax=None, title: str | None = None):
    """Draw `arch` (space.derive_arch format) on `ax` (a new figure if None); returns the Figure.

    x: stage (1 = stem side, left), y: resolution (1/4 at the top); the head on the right reads
    every last-stage node.
    """
    branches = arch["stage_branches"]
    if ax is None:
        fig, ax = plt.subplots(figsize=(2.2 * len(branches) + 1.5, 1.2 * branches[-1] + 1.2))
    else:
        fig = ax.figure
    kept = arch["nodes"]
    position = {node_name(s, r): (s, -r) for s, r in grid_nodes(branches)}
    kept_edges = {(edge["from"], name) for name, node in kept.items() for edge in node["inputs"]}
    for stage in range(2, len(branches) + 1):   # candidates that were not kept: thin grey
        for r in range(branches[stage - 1]):
            target = node_name(stage, r)
            for source in candidate_sources(stage, branches):
                if (source, target) not in kept_edges:
                    (x0, y0), (x1, y1) = position[source], position[target]
                    ax.plot([x0, x1], [y0, y1], color="0.85", lw=0.8, zorder=1)
    for source, target in kept_edges:   # the red lines
        weight = next(e["weight"] for e in kept[target]["inputs"] if e["from"] == source)
        (x0, y0), (x1, y1) = position[source], position[target]
        ax.plot([x0, x1], [y0, y1], color="tab:red", lw=0.8 + 6.0 * weight, alpha=0.85, zorder=2,
                solid_capstyle="round")
    head_x = len(branches) + 0.8
    for name in arch["head"]:
        x, y = position[name]
        ax.plot([x, head_x], [y, 0], color="tab:blue", lw=1.0, ls="--", zorder=1)
    ax.scatter([head_x], [0], marker="s", s=160, color="tab:blue", zorder=3)
    ax.annotate("head", (head_x, 0), xytext=(0, 10), textcoords="offset points", ha="center", fontsize=8)
    for name, (x, y) in position.items():
        alive = name in kept
        ax.scatter([x], [y], s=140, zorder=3, facecolor="black" if alive else "white", edgecolor="black")
        if alive:
            ax.annotate(_layers_label(kept[name]["layers"]), (x, y), xytext=(0, -15), textcoords="offset points",
                        ha="center", fontsize=7)
    ax.set_xticks(range(1, len(branches) + 1), [f"stage {s}" for s in range(1, len(branches) + 1)])
    ax.set_yticks([-r for r in range(branches[-1])],
                  [f"{RESOLUTION_LABELS[r] if r < len(RESOLUTION_LABELS) else f'r{r}'} ({arch['channels'][r]} ch)"
                   for r in range(branches[-1])])
    ax.set_xlim(0.5, head_x + 0.5)
    ax.set_ylim(-branches[-1] + 0.4, 0.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title(title or f"kept connections (transition {arch.get('transition')}); "
                          f"line width = path weight; B basic, M3/M5 MBConv k3/k5", fontsize=9)
    fig.tight_layout()
    return fig


def save_architecture_figure(arch: dict, path, dpi: int = 150) -> Path:
    """Draw `arch` and write it to `path` as PNG through a temporary file; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = draw_architecture(arch)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(temporary, format="png", dpi=dpi)
        os.replace(temporary, path)
    finally:
        plt.close(fig)
        if temporary.exists():
            temporary.unlink()
    return path


def plot_path_weights(arch_history: list, ax=None):
    """Softmax path weights of every node of stage >= 2 over the search epochs (one panel line per
    candidate connection, labelled source -> node); arch_history as search_history.json holds it."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.5))
    else:
        fig = ax.figure
    if not arch_history:
        ax.set_title("no search epochs recorded")
        return fig
    epochs = [entry["epoch"] + 1 for entry in arch_history]
    keys = [k for k in arch_history[0] if k.startswith("beta/")]
    for key in keys:
        target = key.split("/", 1)[1]
        stage = parse_node(target)[0]
        values = np.array([np.asarray(entry[key], dtype=float) for entry in arch_history])
        for j in range(values.shape[1]):
            ax.plot(epochs, values[:, j], lw=1, label=f"s{stage - 1}r{j}->{target}")
    ax.set_xlabel("search epoch")
    ax.set_ylabel("path weight (softmax β)")
    if len(keys) <= 9:
        ax.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    return fig
