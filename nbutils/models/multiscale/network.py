"""The supernet over the multi-scale grid and the derived (retrainable) network.

    MultiScaleSupernet(stage_branches, channels, stack_num, ops, ...)   search: every connection,
        every op, path weights β (one vector per node of stage >= 2, softmax over its candidate
        sources) and op weights α (one [stack_num, len(ops)] matrix per node, softmax per layer)
    MultiScaleNet(arch, num_landmarks, ...)                               the derived architecture

Both map images [N, 3, S, S] to heatmaps [N, K, S/4, S/4]. Module names: `stem`, `nodes.<node>.inputs.<source>`
(Connection), `nodes.<node>.layers.<i>`, `head` (HeatmapHead).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..heads import HeatmapHead, concat_upsampled
from .space import (OPS, Connection, _check_transition, candidate_sources, check_arch, check_stage_branches,
                    derive_arch, grid_nodes, make_layer, make_stem, node_name, parse_node, resolution_sizes)


class MixedLayer(nn.Module):
    """Softmax(α)-weighted sum of every candidate op (DARTS' mixed op) at one resolution."""

    def __init__(self, ops: Sequence[str], channels: int, bn_momentum: float):
        super().__init__()
        self.candidates = nn.ModuleList(make_layer(op, channels, bn_momentum) for op in ops)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return sum(w * op(x) for w, op in zip(weights, self.candidates))


class SearchNode(nn.Module):
    """A supernet node: Connections from every candidate source, then `stack_num` mixed layers."""

    def __init__(self, sources: Sequence[str], resolution: int, channels: Sequence[int], stack_num: int,
                 ops: Sequence[str], bn_momentum: float):
        super().__init__()
        self.inputs = nn.ModuleDict({src: Connection(parse_node(src)[1], resolution, channels, bn_momentum)
                                     for src in sources})
        self.layers = nn.ModuleList(MixedLayer(ops, channels[resolution], bn_momentum) for _ in range(stack_num))


class MultiScaleSupernet(nn.Module):
    """Search supernet over the HRNet grid (protocol of nbutils.engine.search).

    stage_branches: resolutions per stage ([1, 2, 3, 4] = HRNetV2); channels: per resolution;
    stack_num: layers per node; ops: candidate layer ops; transition: connections kept per node by
    derive(); stem_channels: HRNet stem width (64). β and α start at 1e-3 * N(0, 1) (DARTS).
    `arch_perturbation` (SmoothDARTS): None or a list shaped like arch_parameters(), added to the
    softmax-ed weights.
    """

    def __init__(self, stage_branches: Sequence[int], channels: Sequence[int], stack_num: int,
                 ops: Sequence[str] = OPS, transition=1, stem_channels: int = 64, num_landmarks: int = 68,
                 bn_momentum: float = 0.01, final_conv_kernel: int = 1):
        super().__init__()
        self.stage_branches = check_stage_branches(stage_branches)
        self.channels = [int(c) for c in channels]
        self.ops = list(ops)
        for op in self.ops:
            if op not in OPS:
                raise ValueError(f"model.ops: unknown op {op!r} (known: {', '.join(OPS)})")
        if isinstance(stack_num, bool) or not isinstance(stack_num, int) or stack_num < 1:
            raise ValueError(f"model.stack_num: expected an integer >= 1, got {stack_num!r}")
        self.stack_num = stack_num
        self.transition = _check_transition(transition)
        self.stem_channels = int(stem_channels)
        self.stem = make_stem(stem_channels, self.channels[0], bn_momentum)
        self.node_names = [node_name(s, r) for s, r in grid_nodes(self.stage_branches)]
        self.nodes = nn.ModuleDict()
        for stage, r in grid_nodes(self.stage_branches):
            sources = candidate_sources(stage, self.stage_branches) if stage >= 2 else []
            self.nodes[node_name(stage, r)] = SearchNode(sources, r, self.channels, stack_num, self.ops, bn_momentum)
        self.head_names = [node_name(len(self.stage_branches), r) for r in range(self.stage_branches[-1])]
        self.head = HeatmapHead(sum(self.channels[r] for r in range(self.stage_branches[-1])), num_landmarks,
                                final_conv_kernel, bn_momentum)
        self.betas = nn.ParameterDict({name: nn.Parameter(1e-3 * torch.randn(len(self.nodes[name].inputs)))
                                       for name in self.node_names if len(self.nodes[name].inputs) > 0})
        self.alphas = nn.ParameterDict({name: nn.Parameter(1e-3 * torch.randn(stack_num, len(self.ops)))
                                        for name in self.node_names})
        self.arch_perturbation = None

    # ---- search protocol ----------------------------------------------------------------
    def arch_names(self) -> list[str]:
        """Names matching arch_parameters(): 'beta/<node>' then 'alpha/<node>'."""
        return [f"beta/{n}" for n in self.betas] + [f"alpha/{n}" for n in self.alphas]

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.betas.values()) + list(self.alphas.values())

    def weight_parameters(self):
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def _weights(self) -> tuple[dict, dict]:
        """Softmax-ed path weights {node: [sources]} and op weights {node: [layers, ops]}, perturbed if set."""
        delta = dict(zip(self.arch_names(), self.arch_perturbation)) if self.arch_perturbation is not None else {}
        paths = {n: F.softmax(b, dim=-1) + delta.get(f"beta/{n}", 0) for n, b in self.betas.items()}
        layers = {n: F.softmax(a, dim=-1) + delta.get(f"alpha/{n}", 0) for n, a in self.alphas.items()}
        return paths, layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        paths, layers = self._weights()
        outputs = {}
        sizes = None
        for name in self.node_names:
            node = self.nodes[name]
            if len(node.inputs) == 0:
                h = self.stem(x)
                sizes = resolution_sizes(h.shape[-2:], self.stage_branches[-1])
            else:
                resolution = parse_node(name)[1]
                h = sum(w * conn(outputs[src], sizes[resolution])
                        for w, (src, conn) in zip(paths[name], node.inputs.items()))
                h = F.relu(h)
            for layer, weights in zip(node.layers, layers[name]):
                h = layer(h, weights)
            outputs[name] = h
        return self.head(concat_upsampled([outputs[n] for n in self.head_names]))

    @torch.no_grad()
    def path_weights(self) -> dict:
        """{node: softmax(β) as np.ndarray over candidate_sources}."""
        return {n: F.softmax(b, dim=-1).cpu().numpy() for n, b in self.betas.items()}

    @torch.no_grad()
    def layer_weights(self) -> dict:
        """{node: softmax(α) per layer as np.ndarray [stack_num, len(ops)]}."""
        return {n: F.softmax(a, dim=-1).cpu().numpy() for n, a in self.alphas.items()}

    def derive(self, transition=None) -> dict:
        """The derived architecture (space.derive_arch) with `transition` (default: the supernet's)."""
        return derive_arch(self.path_weights(), self.layer_weights(), stage_branches=self.stage_branches,
                           channels=self.channels, stem_channels=self.stem_channels, ops=self.ops,
                           transition=self.transition if transition is None else transition)

    def arch_snapshot(self) -> dict:
        snapshot = {f"beta/{n}": w for n, w in self.path_weights().items()}
        snapshot.update({f"alpha/{n}": w for n, w in self.layer_weights().items()})
        return snapshot

    def set_arch_weights(self, path_logits: dict | None = None, layer_logits: dict | None = None) -> None:
        """Hand-set β / α logits ({node: array}); used to place the supernet at a chosen point."""
        with torch.no_grad():
            for name, value in (path_logits or {}).items():
                self.betas[name].copy_(torch.as_tensor(np.asarray(value), dtype=self.betas[name].dtype))
            for name, value in (layer_logits or {}).items():
                self.alphas[name].copy_(torch.as_tensor(np.asarray(value), dtype=self.alphas[name].dtype))


class DerivedNode(nn.Module):
    def __init__(self, node: dict, channels: Sequence[int], bn_momentum: float):
        super().__init__()
        resolution = node["resolution"]
        self.resolution = resolution
        self.inputs = nn.ModuleDict({
            edge["from"]: Connection(parse_node(edge["from"])[1], resolution, channels, bn_momentum)
            for edge in node["inputs"]})
        self.layers = nn.Sequential(*(make_layer(op, channels[resolution], bn_momentum) for op in node["layers"]))


class MultiScaleNet(nn.Module):
    """The network of a derived architecture (space.check_arch format): images [N, 3, S, S] ->
    heatmaps [N, K, S/4, S/4]. Kept connections are summed (as HRNet's fuse), then ReLU."""

    def __init__(self, arch: dict, num_landmarks: int = 68, bn_momentum: float = 0.01, final_conv_kernel: int = 1):
        super().__init__()
        self.arch = arch = check_arch(arch)
        channels = arch["channels"]
        self.num_resolutions = arch["stage_branches"][-1]
        self.stem = make_stem(arch["stem_channels"], channels[0], bn_momentum)
        order = sorted(arch["nodes"], key=parse_node)
        self.nodes = nn.ModuleDict({name: DerivedNode(arch["nodes"][name], channels, bn_momentum) for name in order})
        self.head_names = list(arch["head"])
        self.head = HeatmapHead(sum(channels[parse_node(n)[1]] for n in self.head_names), num_landmarks,
                                final_conv_kernel, bn_momentum)
        self.num_landmarks = num_landmarks

    def connectivity(self) -> dict:
        """{node: {source: connection kind}} of the built modules (identity | up | down)."""
        return {name: {src: conn.kind for src, conn in node.inputs.items()} for name, node in self.nodes.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs, sizes = {}, None
        for name, node in self.nodes.items():
            if len(node.inputs) == 0:
                h = self.stem(x)
                sizes = resolution_sizes(h.shape[-2:], self.num_resolutions)
            else:
                h = F.relu(sum(conn(outputs[src], sizes[node.resolution]) for src, conn in node.inputs.items()))
            outputs[name] = node.layers(h)
        return self.head(concat_upsampled([outputs[n] for n in self.head_names]))
