"""Drawings of DenseNAS architectures (matplotlib only).

`draw_architecture(arch)` puts every block of the searched spec on a stage x resolution grid
(x: stage, blocks of one stage and resolution side by side; y: feature-map size relative to the
input, finest at the top), draws the candidate routing edges faintly, the kept path(s) in colour
(path 1 blue, path 2 orange), and writes each kept block's channels and derived layers
(e.g. "k5e6" = mbconv_k5_e6, "sep3" = sep_conv_3x3, "basic") under it; the head-layer op of
each kept edge is written at the edge's middle. The tail (heatmap head) sits at the heatmap
resolution (input / 4).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from . import spaces
from .derive import load_arch

PATH_COLORS = ("tab:blue", "tab:orange", "tab:green")
STEM_STRIDES = {"densenas": 2, "hrnet": 4}


def short_op(name: str) -> str:
    """Compact op label: mbconv_k5_e6 -> k5e6, sep_conv_3x3 -> sep3, dil_conv_5x5 -> dil5, basic_block -> basic."""
    if name.startswith("mbconv_"):
        return name[len("mbconv_"):].replace("_", "")
    if name.endswith("_conv_3x3") or name.endswith("_conv_5x5"):
        return name[:3] + name[-1]
    return {"basic_block": "basic"}.get(name, name)


def grid_positions(spec: dict, stem: str) -> dict:
    """{block id: (x, y)} for the drawing; the tail is id len(CHS). y = log2(input side / map side)."""
    n = len(spec["CHS"])
    stem_level = math.log2(STEM_STRIDES.get(stem, 4))
    levels = [stem_level + math.log2(d) for d in spaces.block_downsample(spec)]
    groups = {}
    for b in range(n):
        groups.setdefault((spec["STAGE"][b], levels[b]), []).append(b)
    positions = {}
    for (stage, level), members in groups.items():
        for rank, b in enumerate(members):
            positions[b] = (stage + (rank + 1) / (len(members) + 1) - 0.5, level)
    positions[n] = (spaces.tail_stage(spec), 2.0)  # heatmap = input / 4
    return positions


def draw_architecture(arch, ax=None, show_candidates: bool = True, title: str | None = None):
    """Draw an architecture JSON (dict or path) on a matplotlib Axes; returns the Figure."""
    import matplotlib.pyplot as plt

    arch = load_arch(arch)
    spec = arch["spec"]
    n = len(spec["CHS"])
    searched_head = (arch.get("knobs") or {}).get("heatmap_head", "searched") == "searched"
    graph = spaces.block_graph(spec, searched_head)
    pos = grid_positions(spec, arch["stem"])
    if ax is None:
        stages = spaces.tail_stage(spec) + 1
        fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * stages), 5.0))
    fig = ax.figure

    if show_candidates:
        for i, targets in enumerate(graph["outputs"]):
            for j in targets:
                (x0, y0), (x1, y1) = pos[i], pos[j]
                ax.plot([x0, x1], [y0, y1], color="0.85", lw=0.6, zorder=1)
        xs, ys = zip(*(pos[b] for b in range(n)))
        ax.scatter(xs, ys, s=40, color="0.8", zorder=2)

    kept = {b["id"]: b for b in arch["blocks"]}
    for k, path in enumerate(arch.get("paths") or []):
        color = PATH_COLORS[k % len(PATH_COLORS)]
        offset = 0.03 * k
        for a, b in zip(path[:-1], path[1:]):
            (x0, y0), (x1, y1) = pos[a], pos[b]
            ax.plot([x0, x1], [y0 + offset, y1 + offset], color=color, lw=2.2, zorder=3)
    for b, block in kept.items():
        x, y = pos[b]
        ax.scatter([x], [y], s=90, color="black", zorder=4)
        layers = " ".join(short_op(l["op"]) for l in block["layers"]) or "-"
        ax.annotate(f"#{b} {block['channels']}ch\n{layers}", (x, y), textcoords="offset points", xytext=(0, -22),
                    ha="center", va="top", fontsize=7, zorder=5)
        for entry in block["inputs"]:
            (x0, y0), (x1, y1) = pos[entry["from"]], pos[b]
            ax.annotate(short_op(entry["op"]), ((x0 + x1) / 2, (y0 + y1) / 2), fontsize=6, color="0.25",
                        ha="center", va="bottom", zorder=5)
    tx, ty = pos[n]
    ax.scatter([tx], [ty], s=140, marker="s", color="tab:red", zorder=4)
    ax.annotate("heatmaps", (tx, ty), textcoords="offset points", xytext=(0, 10), ha="center", fontsize=8)

    levels = sorted({round(y) for _, y in pos.values()})
    ax.set_yticks(levels)
    ax.set_yticklabels([f"1/{2 ** level}" for level in levels])
    ax.set_ylim(max(levels) + 0.9, min(levels) - 0.6)
    ax.set_xticks(range(spaces.tail_stage(spec) + 1))
    ax.set_xticklabels([f"stage {s}" if s < spaces.tail_stage(spec) else "head"
                        for s in range(spaces.tail_stage(spec) + 1)])
    ax.set_ylabel("feature map / input side")
    scores = ", ".join(f"{s:.2f}" for s in arch.get("path_log_probs") or [])
    ax.set_title(title or f"DenseNAS derived ({arch['stem']} stem, transition {arch.get('transition', 1)}; "
                          f"log p: {scores})", fontsize=9)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return fig


def save_architecture_figure(arch, path, dpi: int = 150) -> Path:
    """Draw `arch` and write the image atomically (format from the suffix, e.g. .png / .svg)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = draw_architecture(arch)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
    return path
