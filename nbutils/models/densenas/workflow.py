"""The DenseNAS notebook's steps after the search: the derived network to retrain and its description.

    retrain_net(model_cfg, arch_path) -> (net, retrain_cfg, reports)   build_model of the derived JSON,
                                          then model.pretrained / pretrained_stem on top of the init
    describe_blocks(arch) -> list[dict]   one row per kept routing block, for the notebook's table
"""
from __future__ import annotations

from pathlib import Path

from . import apply_pretrained, load_arch


def retrain_net(model_cfg: dict, arch_path):
    """The derived network of `arch_path`, initialised by model.init and then given the weights that
    model.pretrained ("supernet": the search's search_supernet.pt beside arch_path) and
    model.pretrained_stem name; both are applied after build_model's init scheme, which would
    overwrite them. Returns (net, the model section it was built from, {"stem"|"supernet": report})."""
    from .. import build_model

    retrain_cfg = {**model_cfg, "name": "densenas", "arch": str(Path(arch_path))}
    net = build_model(retrain_cfg)
    reports = apply_pretrained(net, retrain_cfg)
    return net, retrain_cfg, reports


def describe_blocks(arch) -> list[dict]:
    """One row per kept block: block id, stage, channels, feature-map size (input / 4 / downsample of
    the stem's first block ... as 1/k of the input), inputs ("from:op/stride") and its layer ops."""
    arch = load_arch(arch)
    stem_stride = {"densenas": 2, "hrnet": 4}.get(arch["stem"], 4)
    rows = []
    for block in arch["blocks"]:
        inputs = ", ".join(f"{e['from']}:{e['op']}" + ("/2" if e["stride"] == 2 else "") for e in block["inputs"])
        rows.append({"block": block["id"], "stage": block.get("stage"), "channels": block["channels"],
                     "resolution": f"1/{stem_stride * int(block['downsample'])}",
                     "inputs": inputs or "stem",
                     "layers": ", ".join(layer["op"] for layer in block["layers"]) or "-"})
    return rows


def routing_summary(arch) -> str:
    """One line per kept path, e.g. 'path 1: 0 -> 3 -> 6 -> head  (log p = -7.168)' (log-probability under β)."""
    arch = load_arch(arch)
    lines = [f"path {k + 1}: " + " -> ".join("head" if b == arch["tail"]["id"] else str(b) for b in path)
             + f"  (log p = {score:.3f})" for k, (path, score) in
             enumerate(zip(arch.get("paths", []), arch.get("path_log_probs", [])))]
    return "\n".join(lines)
