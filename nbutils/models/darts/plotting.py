"""Drawings of DARTS cells and of α during search, with matplotlib only (no graphviz).

plot_genotype(genotype, ax_or_path=None) -> Figure   normal and reduction cells as DAGs
plot_alpha_history(arch_history, path=None) -> Figure softmax(α) per edge and op over epochs
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .genotypes import parse_genotype

OP_COLOURS = {
    "none": "#bbbbbb", "max_pool_3x3": "#1f77b4", "avg_pool_3x3": "#17becf", "skip_connect": "#2ca02c",
    "sep_conv_3x3": "#d62728", "sep_conv_5x5": "#ff7f0e", "dil_conv_3x3": "#9467bd", "dil_conv_5x5": "#8c564b",
}


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)  # keep the suffix so matplotlib picks the format
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    tmp.replace(path)


def draw_cell(ax, edges, concat, title: str = "") -> None:
    """One cell as a DAG on `ax`: inputs c_{k-2}, c_{k-1} on the left, nodes 0..n-1, output on the right.

    Edges are coloured and labelled by op; nodes in `concat` feed the output node.
    """
    steps = len(edges) // 2
    # inputs far left, intermediate nodes on a zig-zag left to right, output far right
    pos = {0: (-0.6, 1.7), 1: (-0.6, -1.7)}
    for i in range(steps):
        pos[i + 2] = (1.6 + 1.4 * i, 0.9 if i % 2 == 0 else -0.9)
    out_xy = (1.6 + 1.4 * steps, 0.0)
    names = {0: "$c_{k-2}$", 1: "$c_{k-1}$", **{i + 2: str(i) for i in range(steps)}}
    for k, (op, src) in enumerate(edges):
        dst = k // 2 + 2
        (x0, y0), (x1, y1) = pos[src], pos[dst]
        bend = 0.2 if k % 2 else -0.2
        colour = OP_COLOURS.get(op, "black")
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.6, shrinkA=17, shrinkB=17,
                                    connectionstyle=f"arc3,rad={bend}"))
        # label half-way along the chord, pushed sideways the way the arc bends
        t = 0.5
        dx, dy = x1 - x0, y1 - y0
        length = max((dx * dx + dy * dy) ** 0.5, 1e-6)
        mx = x0 + t * dx + bend * 0.8 * dy / length * length * 0.5
        my = y0 + t * dy - bend * 0.8 * dx / length * length * 0.5
        ax.text(mx, my, op, fontsize=7, color=colour, ha="center", va="center",
                bbox=dict(boxstyle="round,pad=0.12", fc="white", ec="none", alpha=0.85), zorder=5)
    for c in concat:
        (x0, y0) = pos[c]
        ax.annotate("", xy=out_xy, xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="-|>", color="#666666", lw=0.8, ls="--", shrinkA=17, shrinkB=17))
    for node, (x, y) in pos.items():
        face = "#a6cee3" if node < 2 else "#fdd49e"
        ax.scatter([x], [y], s=1300, c=face, edgecolors="black", zorder=3)
        ax.text(x, y, names[node], ha="center", va="center", fontsize=9, zorder=4)
    ax.scatter([out_xy[0]], [out_xy[1]], s=1300, c="#b2df8a", edgecolors="black", zorder=3)
    ax.text(*out_xy, "$c_{k}$", ha="center", va="center", fontsize=9, zorder=4)
    ax.set_title(title)
    ax.set_xlim(-1.2, out_xy[0] + 0.6)
    ax.set_ylim(-2.4, 2.4)
    ax.axis("off")


def plot_genotype(genotype, ax_or_path=None, title: str | None = None):
    """Draw the normal and reduction cells of `genotype` (anything parse_genotype accepts).

    ax_or_path: None (new figure), a sequence of two Axes, or a path (png/svg/pdf) to save to
    atomically. Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    genotype = parse_genotype(genotype)
    path = None
    if ax_or_path is None or isinstance(ax_or_path, (str, Path)):
        path = ax_or_path
        fig, axes = plt.subplots(1, 2, figsize=(15, 5))
    else:
        axes = list(ax_or_path)
        if len(axes) != 2:
            raise ValueError("plot_genotype: pass two Axes (normal, reduce) or a path")
        fig = axes[0].figure
    draw_cell(axes[0], genotype.normal, genotype.normal_concat, "normal cell")
    draw_cell(axes[1], genotype.reduce, genotype.reduce_concat, "reduction cell")
    if title:
        fig.suptitle(title)
    if path is not None:
        _save(fig, path)
    return fig


def plot_alpha_history(arch_history, path=None, keys=("alpha_normal", "alpha_reduce")):
    """softmax(α) over epochs: one panel per cell type and edge, one line per op.

    arch_history: list of {"epoch": e, "alpha_normal": [edges, ops], "alpha_reduce": ..., "primitives": [...]}
    (SearchResult.arch_history, or the lists read back from search_history.json). Returns the Figure.
    """
    import matplotlib.pyplot as plt

    if not arch_history:
        raise ValueError("plot_alpha_history: empty arch history (did the search run any epoch?)")
    epochs = [int(h["epoch"]) + 1 for h in arch_history]
    first = arch_history[0]
    primitives = [str(p) for p in first.get("primitives", [])]
    keys = [k for k in keys if k in first]
    n_edges = np.asarray(first[keys[0]]).shape[0]
    fig, axes = plt.subplots(len(keys), n_edges, figsize=(1.6 * n_edges, 2.2 * len(keys)), sharex=True,
                             sharey=True, squeeze=False)
    for r, key in enumerate(keys):
        values = np.stack([np.asarray(h[key], dtype=float) for h in arch_history])  # [epochs, edges, ops]
        for e in range(n_edges):
            ax = axes[r][e]
            for k in range(values.shape[2]):
                name = primitives[k] if k < len(primitives) else str(k)
                ax.plot(epochs, values[:, e, k], color=OP_COLOURS.get(name), label=name, lw=1.2)
            ax.set_title(f"{key.replace('alpha_', '')} e{e}", fontsize=7)
            ax.tick_params(labelsize=6)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7)
    fig.supxlabel("epoch", fontsize=8)
    fig.supylabel("softmax(α)", fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    if path is not None:
        _save(fig, path)
    return fig
