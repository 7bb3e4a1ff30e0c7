"""Multi-scale search ("HRNet with red lines"): HRNet's grid with searchable cross-resolution connections.

    build_supernet(cfg) -> MultiScaleSupernet       cfg = {"model": ..., "search": ...}
    nbutils.engine.search.search(cfg, run_dir, supernet)   the shared bi-level loop (α, β by Adam)
    search_or_load(cfg, run_dir) -> dict            search once per run folder (reused on rerun)
    supernet.derive() -> arch dict (JSON)           per node the `transition` best incoming connections
    save_arch(arch, path) / load_arch(dict | path)  JSON round trip (path may be search_arch.json)
    build_multiscale(model_cfg) -> MultiScaleNet    registered as model name "multiscale" (model.arch)
    hrnet_like_arch(...)                            the HRNetV2-like point of the space
    plotting.draw_architecture(arch)                the kept "red lines" over the stage x resolution grid

The space (space.py has the details): stages 1-4 with 1, 2, 3, 4 resolutions (1/4 ... 1/32) and
HRNet widths [W, 2W, 4W, 8W] x channel_expansion. Every node of stage s may feed every node of
stage s+1 through HRNet's fuse operations (identity, 1x1 conv + BN + upsampling, strided 3x3
conv chains); a node sums its incoming connections weighted by softmax(β) over its candidates
(the path weights), then runs `stack_num` layers, each a softmax(α)-weighted mix of
{basic_block, mbconv_k3_e3, mbconv_k5_e3, skip} (so depth 0..stack_num is searched too). The
head concatenates every last-stage node, upsampled to 1/4, as HRNetV2's.

Derivation ("transition"): each node keeps its `transition` incoming connections with the
largest path weights (1 = a single input per node, 2 = two, as the seed's transition 1/2; "all"
keeps every candidate) and the largest-α op per layer; nodes that no longer reach the head are
pruned, so the surviving parallel branches all end in the head. With every connection kept and
basic blocks everywhere the derived network has HRNetV2's fuse connectivity.

Compared with HRNetV2-W18: one fuse per stage boundary (HRNet has 1/4/3 modules in stages 2/3/4,
each ending in a fuse), no final fuse before the head, the new low-resolution branch of a stage
fed from every node of the previous stage (HRNet: from the fused lowest one), and a stage-1 node
of `stack_num` layers at W channels (HRNet: 4 Bottlenecks at 256 channels).

Model knobs (`model:` section, MODEL_KNOBS holds the defaults):
    width              HRNet width W (channels at 1/4), 18 for W18
    channel_expansion  "channel expansion" x1 / x2: every resolution's width multiplied
    stack_num          "Stack Num": searchable layers per node (4, 7)
    transition         "Transition": incoming connections kept per node (1, 2)
    ops                candidate layer ops (space.OPS)
    stem_channels      HRNet stem width (64)
    stage_branches     resolutions per stage ([1, 2, 3, 4])
    arch               retrain: the derived architecture, a dict or a path to its JSON (or to
                       search_arch.json), or "hrnet" for hrnet_like_arch of the knobs above
    max_stack          profile knob (not a seed column): caps stack_num so CPU runs stay small
"""
from __future__ import annotations

import os
from pathlib import Path

from ...config import read_json, write_json_atomic
from .. import register_model
from .network import MixedLayer, MultiScaleNet, MultiScaleSupernet
from .space import (OPS, STAGE_BRANCHES, Connection, branch_channels, check_arch, derive_arch, hrnet_like_arch,
                    node_name)

MODEL_KNOBS = {
    "width": 18,
    "channel_expansion": 1,
    "stack_num": 4,
    "transition": 1,
    "ops": list(OPS),
    "stem_channels": 64,
    "stage_branches": list(STAGE_BRANCHES),
    "arch": None,
    "max_stack": None,
}
ARCH_FILE = "architecture.json"


def model_knobs(model_cfg: dict | None) -> dict:
    """MODEL_KNOBS overlaid with the multiscale keys of a model config, with max_stack applied to stack_num."""
    model_cfg = model_cfg or {}
    knobs = {key: model_cfg.get(key, default) for key, default in MODEL_KNOBS.items()}
    for key in ("width", "stack_num", "stem_channels"):
        value = knobs[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"model.{key}: expected an integer >= 1, got {value!r}")
    expansion = knobs["channel_expansion"]
    if isinstance(expansion, bool) or not isinstance(expansion, (int, float)) or expansion <= 0:
        raise ValueError(f"model.channel_expansion: expected a positive number, got {expansion!r}")
    cap = knobs["max_stack"]
    if cap is not None:
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ValueError(f"model.max_stack: expected null or an integer >= 1, got {cap!r}")
        knobs["stack_num"] = min(knobs["stack_num"], cap)
    return knobs


def _check_unsupported(model_cfg: dict, search_cfg: dict | None) -> None:
    attention = (model_cfg.get("attention") or {}).get("type", "none")
    if attention != "none":
        raise ValueError(f"model.attention.type {attention!r}: the multiscale family has no attention modules")
    search_cfg = search_cfg or {}
    if search_cfg.get("noise", "none") != "none" or search_cfg.get("darts_minus", False):
        raise ValueError("search.noise / search.darts_minus are not implemented by the multiscale supernet")


def build_supernet(cfg: dict) -> MultiScaleSupernet:
    """The initialised supernet of cfg["model"] (knobs above; init scheme model.init, default normal)."""
    from ..init import init_weights
    model_cfg = cfg.get("model") or {}
    _check_unsupported(model_cfg, cfg.get("search"))
    knobs = model_knobs(model_cfg)
    branches = list(knobs["stage_branches"])
    supernet = MultiScaleSupernet(
        branches, branch_channels(knobs["width"], knobs["channel_expansion"], branches[-1]), knobs["stack_num"],
        ops=knobs["ops"], transition=knobs["transition"], stem_channels=knobs["stem_channels"],
        num_landmarks=int(model_cfg.get("num_landmarks", 68)), bn_momentum=float(model_cfg.get("bn_momentum", 0.01)),
        final_conv_kernel=int(model_cfg.get("final_conv_kernel", 1)))
    supernet.init_report = init_weights(supernet, model_cfg.get("init", "normal"))
    return supernet


def save_arch(arch: dict, path) -> Path:
    """Write a derived architecture as JSON (atomically); returns the path."""
    check_arch(arch, str(path))
    return write_json_atomic(path, arch)


def load_arch(arch_or_path) -> dict:
    """A checked architecture dict from a dict, an architecture JSON file, or a search_arch.json
    (whose "arch" entry is the architecture). Errors name the file."""
    if isinstance(arch_or_path, dict):
        return check_arch(arch_or_path.get("arch", arch_or_path) if "nodes" not in arch_or_path else arch_or_path)
    path = Path(os.fspath(arch_or_path)).expanduser()
    content = read_json(path, f"model.arch: architecture file not found: {path}")
    if isinstance(content, dict) and "nodes" not in content and isinstance(content.get("arch"), dict):
        content = content["arch"]
    return check_arch(content, str(path))


@register_model("multiscale")
def build_multiscale(model_cfg: dict) -> MultiScaleNet:
    """The derived network of model_cfg["arch"] (dict, JSON path or "hrnet"); weights untouched
    (nbutils.models.build_model applies model.init)."""
    _check_unsupported(model_cfg, None)
    arch = model_cfg.get("arch")
    if arch is None:
        raise ValueError("model.arch: the multiscale network needs a derived architecture (a dict or the path of "
                         "the JSON the search wrote, e.g. <run_dir>/architecture.json), or 'hrnet'")
    if arch == "hrnet":
        knobs = model_knobs(model_cfg)
        arch = hrnet_like_arch(knobs["width"], knobs["channel_expansion"], knobs["stack_num"], knobs["stem_channels"],
                               knobs["stage_branches"], knobs["ops"])
    return MultiScaleNet(load_arch(arch), num_landmarks=int(model_cfg.get("num_landmarks", 68)),
                         bn_momentum=float(model_cfg.get("bn_momentum", 0.01)),
                         final_conv_kernel=int(model_cfg.get("final_conv_kernel", 1)))


def search_or_load(cfg: dict, run_dir, progress: bool = True) -> dict:
    """`nbutils.engine.nas.search_or_load` with this family's supernet (the search runs once per run
    folder), plus the derived architecture saved alone as run_dir/architecture.json.

    Returns nas.search_or_load's dict with `arch` checked by load_arch and `arch_path` added.
    """
    from ...engine.nas import search_or_load as search_once
    outcome = search_once(cfg, run_dir, build_supernet, progress=progress)
    arch_path = save_arch(outcome["arch"], Path(run_dir) / ARCH_FILE)
    return {**outcome, "arch": load_arch(outcome["arch"]), "arch_path": str(arch_path)}


def describe_arch(arch: dict) -> list[dict]:
    """One row per kept node: node, stage, resolution, layers (non-skip ops), inputs (source:weight)."""
    rows = []
    for name, node in arch["nodes"].items():
        rows.append({"node": name, "stage": node["stage"], "resolution": f"1/{2 ** (node['resolution'] + 2)}",
                     "layers": ", ".join(op for op in node["layers"] if op != "skip") or "-",
                     "inputs": ", ".join(f"{e['from']}:{e['weight']:.2f}" for e in node["inputs"]) or "stem"})
    return rows


__all__ = ["MODEL_KNOBS", "OPS", "STAGE_BRANCHES", "ARCH_FILE", "Connection", "MixedLayer", "MultiScaleNet",
           "MultiScaleSupernet", "branch_channels", "build_multiscale", "build_supernet", "check_arch",
           "derive_arch", "describe_arch", "hrnet_like_arch", "load_arch", "model_knobs", "node_name", "save_arch",
           "search_or_load"]
