"""The multi-scale search space ("HRNet with red lines"): grid geometry, operations, derivation.

The grid has one column per stage and one row per resolution; stage s (1-based) holds the
first `stage_branches[s-1]` resolutions (HRNetV2: 1, 2, 3, 4 branches). Resolution r is
input / 2^(r+2) pixels per side (r = 0: 1/4, the heatmap resolution, ... r = 3: 1/32) with
`channels[r]` = round(width * 2^r * channel_expansion) channels (HRNetV2-W18: 18, 36, 72, 144).

A node (stage s, resolution r), named "s{s}r{r}", is

    input   stage 1: the stem (HRNet's two stride-2 3x3 convs, then a 3x3 conv to channels[0]);
            stage s >= 2: sum over its kept incoming connections from the nodes of stage s-1, then ReLU
    layers  `stack_num` layers at (r, channels[r]), each one op of `ops`

Every node of stage s-1 may feed every node of stage s (the "red lines"). A connection from
resolution j to resolution i is the HRNetV2 fuse-layer operation between those branches:
    j == i  identity (both sides have channels[i])
    j >  i  1x1 conv (channels[j] -> channels[i]) + BN, then bilinear upsampling to resolution i
    j <  i  i - j stride-2 3x3 convs, each + BN; ReLU after every one but the last;
            channels[j] until the last conv, which maps to channels[i]
The new lowest resolution of a stage is fed the same way (a fuse-style chain from every node of
the previous stage). HRNetV2 instead makes its new branch from the already-fused lowest branch;
with all connections kept the two differ only by where that one extra stride-2 conv sits.

Layer ops (names shared with the DenseNAS family):
    basic_block    HRNet's BasicBlock: 3x3-BN-ReLU-3x3-BN + identity, ReLU
    mbconv_k3_e3   inverted residual: 1x1 expand x3, 3x3 depthwise, 1x1 project (+ identity)
    mbconv_k5_e3   the same with a 5x5 depthwise conv
    skip           identity (a node whose layers are all skip is a pure fuse node)
Searching one op per layer with `skip` among the candidates also searches each node's depth
(0 ... stack_num layers).

The head fuses every last-stage node as HRNetV2 does: bilinear upsampling to resolution 0,
concatenation, then `heads.HeatmapHead` (1x1 conv-BN-ReLU-1x1 conv to K heatmaps). HRNetV2 runs
one more fuse layer before the head and several modules (fuse layers) per stage; this grid has
one fuse per stage boundary (see the package docstring).

Architecture dictionary (JSON) written by `derive_arch` / read by `network.MultiScaleNet`:
    {"family": "multiscale", "stage_branches": [1, 2, 3, 4], "channels": [C0, ...], "stem_channels": 64,
     "ops": [candidate op names], "transition": 1 | 2 | ... | "all",
     "nodes": {"s1r0": {"stage": 1, "resolution": 0, "layers": [op, ...], "inputs": []},
               "s2r1": {"stage": 2, "resolution": 1, "layers": [...],
                        "inputs": [{"from": "s1r0", "weight": 1.0}]}, ...},   # only nodes that reach the head
     "pruned": [names of nodes that reach no head input],
     "head": [last-stage node names, highest resolution first],
     "path_weights": {node: {source node: softmax weight}}}      # every candidate, for drawings
"""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..densenas.ops import MBConv
from ..hrnet import BasicBlock

OPS = ("basic_block", "mbconv_k3_e3", "mbconv_k5_e3", "skip")
STAGE_BRANCHES = (1, 2, 3, 4)
ARCH_FAMILY = "multiscale"


def node_name(stage: int, resolution: int) -> str:
    return f"s{stage}r{resolution}"


def branch_channels(width: int, channel_expansion: float, num_resolutions: int) -> list[int]:
    """Channels per resolution: round(width * 2^r * channel_expansion), at least 1."""
    return [max(1, int(round(width * 2 ** r * channel_expansion))) for r in range(num_resolutions)]


def check_stage_branches(stage_branches: Sequence[int]) -> list[int]:
    """A valid stage spec: >= 2 stages, the first with one branch, each next with as many or one more."""
    branches = [int(b) for b in stage_branches]
    if len(branches) < 2 or branches[0] != 1:
        raise ValueError(f"stage_branches must list >= 2 stages starting with 1 branch, got {list(stage_branches)}")
    for previous, current in zip(branches, branches[1:]):
        if current not in (previous, previous + 1):
            raise ValueError(f"stage_branches: a stage keeps or adds one resolution, got {list(stage_branches)}")
    return branches


def grid_nodes(stage_branches: Sequence[int]) -> list[tuple[int, int]]:
    """Every (stage, resolution) of the grid, stage by stage, highest resolution first."""
    return [(stage, r) for stage, n in enumerate(stage_branches, start=1) for r in range(n)]


def candidate_sources(stage: int, stage_branches: Sequence[int]) -> list[str]:
    """Names of the nodes that may feed a node of `stage` (>= 2): all nodes of stage - 1."""
    return [node_name(stage - 1, j) for j in range(stage_branches[stage - 2])]


def parse_node(name: str) -> tuple[int, int]:
    stage, resolution = name[1:].split("r")
    return int(stage), int(resolution)


# ---------------------------------------------------------------------------- operations

def make_layer(op: str, channels: int, bn_momentum: float) -> nn.Module:
    """One layer of a node: `op` at `channels` channels, stride 1 (shape preserved)."""
    if op == "basic_block":
        return BasicBlock(channels, channels, bn_momentum=bn_momentum)
    if op == "mbconv_k3_e3":
        return MBConv(channels, channels, kernel=3, expansion=3, stride=1, bn_momentum=bn_momentum)
    if op == "mbconv_k5_e3":
        return MBConv(channels, channels, kernel=5, expansion=3, stride=1, bn_momentum=bn_momentum)
    if op == "skip":
        return nn.Identity()
    raise ValueError(f"unknown multiscale layer op {op!r}; choose from {', '.join(OPS)}")


class Connection(nn.Module):
    """The HRNetV2 fuse operation from resolution `source` to resolution `target` (see module doc).

    forward(x [N, channels[source], H_s, W_s], size (H_t, W_t)) -> [N, channels[target], H_t, W_t].
    `kind` is "identity", "up" or "down"; `body` holds the convs (state_dict keys `body.*`).
    """

    def __init__(self, source: int, target: int, channels: Sequence[int], bn_momentum: float):
        super().__init__()
        self.source, self.target = source, target
        c_src, c_dst = channels[source], channels[target]
        if source == target:
            self.kind, self.body = "identity", nn.Identity()
        elif source > target:
            self.kind = "up"
            self.body = nn.Sequential(nn.Conv2d(c_src, c_dst, 1, bias=False),
                                      nn.BatchNorm2d(c_dst, momentum=bn_momentum))
        else:
            self.kind = "down"
            steps = []
            for k in range(target - source):
                last = k == target - source - 1
                c_out = c_dst if last else c_src
                step = [nn.Conv2d(c_src, c_out, 3, stride=2, padding=1, bias=False),
                        nn.BatchNorm2d(c_out, momentum=bn_momentum)]
                if not last:
                    step.append(nn.ReLU(inplace=True))
                steps.append(nn.Sequential(*step))
            self.body = nn.Sequential(*steps)

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        y = self.body(x)
        if self.kind == "up":
            y = F.interpolate(y, size=tuple(size), mode="bilinear", align_corners=False)
        return y


def make_stem(stem_channels: int, out_channels: int, bn_momentum: float) -> nn.Sequential:
    """HRNet's stem (two stride-2 3x3 conv-BN-ReLU, input/4) then a 3x3 conv-BN-ReLU to the 1/4 node width."""
    return nn.Sequential(
        nn.Conv2d(3, stem_channels, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(stem_channels, momentum=bn_momentum), nn.ReLU(inplace=True),
        nn.Conv2d(stem_channels, stem_channels, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(stem_channels, momentum=bn_momentum), nn.ReLU(inplace=True),
        nn.Conv2d(stem_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels, momentum=bn_momentum), nn.ReLU(inplace=True))


def resolution_sizes(size0, num_resolutions: int) -> list[tuple[int, int]]:
    """Feature-map sizes (heatmap pixels) of every resolution from that of resolution 0: a stride-2
    3x3 conv with padding 1 maps n pixels to ceil(n / 2)."""
    sizes = [tuple(int(s) for s in size0)]
    for _ in range(1, num_resolutions):
        sizes.append(tuple((s + 1) // 2 for s in sizes[-1]))
    return sizes


# ---------------------------------------------------------------------------- derivation

def _check_transition(transition) -> int | str:
    if transition == "all":
        return "all"
    if isinstance(transition, bool) or not isinstance(transition, int) or transition < 1:
        raise ValueError(f"model.transition: expected an integer >= 1 or 'all', got {transition!r}")
    return transition


def derive_arch(path_weights: dict, layer_weights: dict, *, stage_branches: Sequence[int], channels: Sequence[int],
                stem_channels: int, ops: Sequence[str], transition) -> dict:
    """The derived architecture (dict, see module doc) from architecture weights.

    path_weights:  {node name (stage >= 2): weights over candidate_sources(stage), e.g. softmax(β)}
    layer_weights: {node name: array [layers, len(ops)], e.g. softmax(α) per layer}
    transition:    incoming connections kept per node: the `transition` largest path weights
                   (ties: the higher-resolution source first), all of them for "all" or when a node
                   has fewer candidates. Each layer keeps its largest-weight op (ties: first in `ops`).
    Nodes whose output reaches no last-stage node are pruned (listed under "pruned").
    """
    stage_branches = check_stage_branches(stage_branches)
    transition = _check_transition(transition)
    ops = list(ops)
    nodes, all_paths = {}, {}
    for stage, resolution in grid_nodes(stage_branches):
        name = node_name(stage, resolution)
        alpha = np.asarray(layer_weights[name], dtype=float).reshape(-1, len(ops))
        layers = [ops[int(np.argmax(row))] for row in alpha]   # argmax takes the first of equal maxima
        inputs = []
        if stage >= 2:
            sources = candidate_sources(stage, stage_branches)
            weights = np.asarray(path_weights[name], dtype=float).reshape(-1)
            if weights.shape[0] != len(sources):
                raise ValueError(f"path weights of {name}: expected {len(sources)} (one per node of stage "
                                 f"{stage - 1}), got {weights.shape[0]}")
            keep = len(sources) if transition == "all" else min(transition, len(sources))
            order = sorted(range(len(sources)), key=lambda j: (-weights[j], j))[:keep]
            inputs = [{"from": sources[j], "weight": float(weights[j])} for j in sorted(order)]
            all_paths[name] = {src: float(w) for src, w in zip(sources, weights)}
        nodes[name] = {"stage": stage, "resolution": resolution, "layers": layers, "inputs": inputs}

    last = len(stage_branches)
    alive = {node_name(last, r) for r in range(stage_branches[-1])}
    for stage in range(last, 1, -1):   # walk back from the head: a node lives if a living node reads it
        for r in range(stage_branches[stage - 1]):
            name = node_name(stage, r)
            if name in alive:
                alive.update(edge["from"] for edge in nodes[name]["inputs"])
    pruned = [name for name in nodes if name not in alive]
    return {
        "family": ARCH_FAMILY, "stage_branches": list(stage_branches), "channels": [int(c) for c in channels],
        "stem_channels": int(stem_channels), "ops": ops, "transition": transition,
        "nodes": {name: node for name, node in nodes.items() if name in alive},
        "pruned": pruned,
        "head": [node_name(last, r) for r in range(stage_branches[-1])],
        "path_weights": all_paths,
    }


def hrnet_like_arch(width: int = 18, channel_expansion: float = 1, stack_num: int = 4, stem_channels: int = 64,
                    stage_branches: Sequence[int] = STAGE_BRANCHES, ops: Sequence[str] = OPS) -> dict:
    """The HRNetV2-like point of the space: every connection kept (equal path weights), every layer a
    basic block: stage s+1 reads every branch of stage s through HRNet's fuse operations."""
    stage_branches = check_stage_branches(stage_branches)
    ops = list(ops)
    if "basic_block" not in ops:
        raise ValueError("hrnet_like_arch needs 'basic_block' among the ops")
    one_hot = np.zeros((stack_num, len(ops)))
    one_hot[:, ops.index("basic_block")] = 1.0
    paths = {node_name(s, r): np.full(stage_branches[s - 2], 1.0 / stage_branches[s - 2])
             for s, r in grid_nodes(stage_branches) if s >= 2}
    layers = {node_name(s, r): one_hot for s, r in grid_nodes(stage_branches)}
    return derive_arch(paths, layers, stage_branches=stage_branches,
                       channels=branch_channels(width, channel_expansion, stage_branches[-1]),
                       stem_channels=stem_channels, ops=ops, transition="all")


def check_arch(arch: dict, where: str = "architecture") -> dict:
    """A deep copy of `arch` after checking the fields the network builder needs; errors name `where`."""
    if not isinstance(arch, dict):
        raise ValueError(f"{where}: expected a multiscale architecture mapping, got {type(arch).__name__}")
    if arch.get("family") != ARCH_FAMILY:
        raise ValueError(f"{where}: not a multiscale architecture (family {arch.get('family')!r})")
    for key in ("stage_branches", "channels", "stem_channels", "nodes", "head"):
        if key not in arch:
            raise ValueError(f"{where}: missing key {key!r}")
    arch = copy.deepcopy(arch)
    branches = check_stage_branches(arch["stage_branches"])
    if len(arch["channels"]) < branches[-1]:
        raise ValueError(f"{where}: {len(arch['channels'])} channel entries for {branches[-1]} resolutions")
    nodes = arch["nodes"]
    for name, node in nodes.items():
        stage, resolution = parse_node(name)
        if (node.get("stage"), node.get("resolution")) != (stage, resolution) or resolution >= branches[stage - 1]:
            raise ValueError(f"{where}: node {name!r} does not match its stage/resolution or lies outside the grid")
        for op in node.get("layers", []):
            if op not in OPS:
                raise ValueError(f"{where}: node {name!r} has unknown layer op {op!r} (known: {', '.join(OPS)})")
        if stage >= 2 and not node.get("inputs"):
            raise ValueError(f"{where}: node {name!r} has no incoming connection")
        for edge in node.get("inputs", []):
            source = edge.get("from")
            if source not in nodes or parse_node(source)[0] != stage - 1:
                raise ValueError(f"{where}: node {name!r} reads {source!r}, "
                                 f"which is not a kept node of stage {stage - 1}")
    if node_name(1, 0) not in nodes:
        raise ValueError(f"{where}: the stage-1 node 's1r0' is missing")
    if not arch["head"] or arch["head"][0] != node_name(len(branches), 0) or any(h not in nodes for h in arch["head"]):
        raise ValueError(f"{where}: head must list kept last-stage nodes starting with the 1/4 one, got {arch['head']}")
    return arch
