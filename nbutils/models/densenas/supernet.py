"""The DenseNAS supernet for heatmap regression: routing blocks, path weights β, op weights α, cost model.

Structure (for a spec with blocks 0..n-1 and the tail n = the heatmap head):

    stem (densenas: input/2, hrnet: input/4) -> block 0 (CHS[0] channels, NUM_LAYERS[0] stacked layers)
    block j >= 1:  for every candidate input i (spaces.block_graph) a *head layer* (a mixed op over the
                   head candidates, stride 1 or 2, CHS[i] -> CHS[j]); the head outputs are weighted by
                   the path probability p(i -> j) and aggregated (sum, or concat + 1x1 conv + BN when the
                   block has several inputs); then NUM_LAYERS[j] stacked mixed layers (CHS[j] -> CHS[j])
    tail:          every candidate input i is projected by a 1x1 conv (CHS[i] -> head_channels) at its
                   own resolution, upsampled bilinearly to the heatmap size (input/4) and weighted by
                   p(i -> tail); the weighted sum goes through BN -> ReLU -> 1x1 conv -> K heatmaps.

The tail is HRNetV2's head written per branch: HRNetV2 upsamples its branches, concatenates them and
applies a 1x1 conv; a 1x1 conv of a concatenation is the sum of per-branch 1x1 convs, and bilinear
upsampling commutes with a 1x1 conv, so "project each branch, upsample, sum" is the same function at a
fraction of the cost, and lets β weight each branch. A derived network with one path has one branch,
with two paths (transition 2) it fuses both, exactly as HRNetV2 fuses its resolutions.

Path weights β (DenseNAS): one vector per block over its *outgoing* edges, p(i -> j) = softmax(β_i)[j].
Op weights α: one row per head branch and per stacked layer, softmax over the candidates. A mixed op
computes the α-weighted sum of all its candidates (DARTS-style); with sample_ops = k >= 2 it runs, in
training, only k candidates drawn from softmax(α) (weights renormalised over the drawn ones, as DenseNAS
and ProxylessNAS do to save memory and time); evaluation always uses all candidates.

Expected cost (DenseNAS' chained cost, computed back to front):
    E[tail] = 0
    E[i]    = Σ_layers Σ_ops α·cost(op) + Σ_{j ∈ out(i)} p(i -> j) · (cost of the edge i -> j + E[j])
    cost    = cost(stem) + E[0] + cost(tail BN + final conv)
where the edge cost is the α-weighted cost of block j's head branch from i (the tail's 1x1 projection
for j = tail). Each candidate's cost (parameters or conv MACs) is measured once, at the feature size it
runs at, into a lookup table. With one-hot α and β this is exactly the derived single-path network's
cost. (Concat aggregation's 1x1 fuse convs exist only where paths merge, so they are left out.)
The search loss adds cost_factor · log(E[cost]) (in M parameters or GMACs), via arch_loss_extra().
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import spaces
from .ops import CostTable, make_op, make_stem, measure, op_candidates

AGGREGATIONS = ("sum", "concat")
COST_METRICS = ("params", "flops")
HEATMAP_HEADS = ("searched", "fixed")
NOISE_MODES = ("none", "step", "epoch")
COST_UNITS = {"params": 1e6, "flops": 1e9}   # reported as M parameters / GMACs


class MixedOp(nn.Module):
    """Weighted sum of candidate ops; with one candidate it is that op. NoisyDARTS noise goes on `skip`."""

    def __init__(self, names, c_in: int, c_out: int, stride: int, bn_momentum: float):
        super().__init__()
        self.names = list(names)
        self.ops = nn.ModuleList(make_op(name, c_in, c_out, stride, bn_momentum) for name in self.names)
        self.skip_index = self.names.index("skip") if "skip" in self.names else None
        self.noise = "none"
        self.noise_scale = 0.0
        self.noise_seed = 0
        self.sample_ops = 0

    def _skip_noise(self, y: torch.Tensor) -> torch.Tensor:
        std = self.noise_scale * y.detach().std()
        if self.noise == "step":
            return torch.randn_like(y) * std
        generator = torch.Generator().manual_seed(self.noise_seed)   # same noise all epoch
        return torch.randn(y.shape[1:], generator=generator).to(y.device, y.dtype) * std

    def forward(self, x, weights=None):
        if len(self.ops) == 1:
            return self.ops[0](x)
        chosen = range(len(self.ops))
        if self.training and 0 < self.sample_ops < len(self.ops):
            # DenseNAS/ProxylessNAS-style: run only a few ops drawn from the α distribution and
            # renormalise their weights, so α still gets a gradient through the drawn ones
            probs = weights.detach().float().clamp_min(1e-12)
            chosen = torch.multinomial(probs, self.sample_ops).tolist()
            weights = weights / weights[chosen].sum()
        out = 0
        for k in chosen:
            y = self.ops[k](x)
            if k == self.skip_index and self.training and self.noise != "none":
                y = y + self._skip_noise(y)
            out = out + weights[k] * y
        return out


class RoutingBlock(nn.Module):
    """Head branches (one mixed op per candidate input), optional concat fuse, stacked mixed layers."""

    def __init__(self, inputs, in_channels, strides, channels, num_layers, head_ops, stack_ops, aggregation,
                 bn_momentum):
        super().__init__()
        self.inputs = list(inputs)
        self.heads = nn.ModuleDict({str(i): MixedOp(head_ops, c, channels, s, bn_momentum)
                                    for i, c, s in zip(inputs, in_channels, strides)})
        self.fuse = None
        if aggregation == "concat" and len(self.inputs) > 1:
            self.fuse = nn.Sequential(nn.Conv2d(channels * len(self.inputs), channels, 1, bias=False),
                                      nn.BatchNorm2d(channels, momentum=bn_momentum))
        self.layers = nn.ModuleList(MixedOp(stack_ops, channels, channels, 1, bn_momentum)
                                    for _ in range(num_layers))


class DenseNASSupernet(nn.Module):
    """DenseNAS supernet over a `spaces` spec; implements the nbutils.engine.search protocol.

    forward(images [N, 3, S, S]) -> heatmaps [N, K, S/4, S/4].
    input_size (pixels) fixes the feature sizes at which op costs are measured; S must be divisible by
    the stem stride times the spec's output stride.
    """

    def __init__(self, spec: dict, *, input_size: int = 256, stem: str = "densenas", stack_ops=None,
                 head_ops=None, aggregation: str = "sum", heatmap_head: str = "searched", head_channels=None,
                 num_landmarks: int = 68, bn_momentum: float = 0.1, cost_metric: str = "params",
                 cost_factor: float = 0.15, transition: int = 1, noise: str = "none", noise_scale: float = 0.1,
                 darts_minus: bool = False, sample_ops: int = 0, knobs: dict | None = None):
        super().__init__()
        spaces.validate_spec(spec)
        default_stack, default_head = op_candidates()
        self.spec = spec
        self.stack_ops = list(stack_ops or default_stack)
        self.head_ops = list(head_ops or default_head)
        for field, value, allowed in (("aggregation", aggregation, AGGREGATIONS),
                                      ("cost_metric", cost_metric, COST_METRICS),
                                      ("heatmap_head", heatmap_head, HEATMAP_HEADS),
                                      ("noise", noise, NOISE_MODES)):
            if value not in allowed:
                section = "search" if field == "noise" else "model"
                raise ValueError(f"{section}.{field}: {value!r} is not one of {allowed}")
        if transition not in (1, 2):
            raise ValueError(f"model.transition: expected 1 or 2 paths, got {transition!r}")
        self.stem_name = stem
        self.aggregation = aggregation
        self.heatmap_head = heatmap_head
        self.num_landmarks = int(num_landmarks)
        self.bn_momentum = float(bn_momentum)
        self.cost_metric = cost_metric
        self.cost_factor = float(cost_factor)
        self.transition = int(transition)
        self.darts_minus = bool(darts_minus)
        self.aux_skip_weight = 1.0 if darts_minus else 0.0
        self.knobs = dict(knobs or {})
        self.arch_perturbation = None    # SmoothDARTS deltas on the softmax-ed weights (set by the search loop)

        chs, n = spec["CHS"], len(spec["CHS"])
        self.num_blocks = n
        self.graph = spaces.block_graph(spec, searched_head=heatmap_head == "searched")
        self.stem = make_stem(stem, chs[0], bn_momentum)
        self.input_size = int(input_size)
        stride_total = self.stem.stride * spaces.output_stride_of(spec)
        if self.input_size % stride_total or self.input_size % 4:
            raise ValueError(f"train.input_size: {input_size} must be divisible by {max(stride_total, 4)} "
                             f"(stem stride {self.stem.stride} x output stride {spaces.output_stride_of(spec)})")
        stem_size = self.input_size // self.stem.stride
        self.block_sizes = [stem_size // d for d in spaces.block_downsample(spec)]
        self.heatmap_size = self.input_size // 4
        tail_inputs = self.graph["inputs"][n]
        self.head_channels = int(head_channels or max(chs[i] for i in tail_inputs))

        self.blocks = nn.ModuleDict()
        for j in range(n):
            inputs = self.graph["inputs"][j] if j > 0 else []
            self.blocks[str(j)] = RoutingBlock(
                inputs, [chs[i] for i in inputs], [self.graph["strides"][(i, j)] for i in inputs], chs[j],
                spec["NUM_LAYERS"][j], self.head_ops, self.stack_ops, aggregation, bn_momentum)
        self.tail_proj = nn.ModuleDict({str(i): nn.Conv2d(chs[i], self.head_channels, 1, bias=False)
                                        for i in tail_inputs})
        self.tail_bn = nn.BatchNorm2d(self.head_channels, momentum=bn_momentum)
        self.final = nn.Conv2d(self.head_channels, self.num_landmarks, 1)
        self.set_noise(noise, noise_scale)
        if isinstance(sample_ops, bool) or not isinstance(sample_ops, int) or sample_ops < 0 or sample_ops == 1:
            raise ValueError(f"model.sample_ops: expected 0 (all ops) or a number >= 2, got {sample_ops!r}")
        for module in self.modules():
            if isinstance(module, MixedOp):
                module.sample_ops = sample_ops

        # architecture parameters: β per block with >1 outgoing edge, α per mixed op with >1 candidate
        self.arch = nn.ParameterDict()
        for i in range(n):
            if len(self.graph["outputs"][i]) > 1:
                self.arch[f"beta_{i}"] = nn.Parameter(1e-3 * torch.randn(len(self.graph["outputs"][i])))
        for j in range(n):
            if j > 0 and len(self.head_ops) > 1:
                self.arch[f"alpha_head_{j}"] = nn.Parameter(
                    1e-3 * torch.randn(len(self.graph["inputs"][j]), len(self.head_ops)))
            if spec["NUM_LAYERS"][j] > 0 and len(self.stack_ops) > 1:
                self.arch[f"alpha_stack_{j}"] = nn.Parameter(
                    1e-3 * torch.randn(spec["NUM_LAYERS"][j], len(self.stack_ops)))
        self._build_cost_tables()

    # ------------------------------------------------------------------ search protocol
    def arch_parameters(self) -> list:
        return list(self.arch.values())

    def arch_names(self) -> list:
        return list(self.arch.keys())

    def weight_parameters(self):
        arch_ids = {id(p) for p in self.arch.values()}
        return [p for p in self.parameters() if id(p) not in arch_ids]

    def arch_weights(self) -> dict:
        """{name: softmax over the last axis} (+ the SmoothDARTS perturbation when one is set)."""
        weights = {name: F.softmax(param, dim=-1) for name, param in self.arch.items()}
        if self.arch_perturbation is not None:
            for name, delta in zip(self.arch.keys(), self.arch_perturbation):
                weights[name] = weights[name] + delta
        return weights

    def arch_snapshot(self) -> dict:
        return {name: F.softmax(p.detach(), dim=-1).cpu().numpy() for name, p in self.arch.items()}

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        """NoisyDARTS 'epoch' noise is redrawn; the DARTS- auxiliary skip decays linearly 1 -> 0."""
        mixed = [m for m in self.modules() if isinstance(m, MixedOp)]
        for index, module in enumerate(mixed):
            module.noise_seed = epoch * len(mixed) + index
        if self.darts_minus:
            self.aux_skip_weight = 1.0 - epoch / max(total_epochs, 1)

    def epoch_info(self) -> dict:
        with torch.no_grad():
            return {"expected_params_m": float(self.expected_cost("params")) / 1e6,
                    "expected_gflops": float(self.expected_cost("flops")) / 1e9}

    def arch_loss_extra(self) -> torch.Tensor:
        """cost_factor · log(E[cost]) with the cost in M parameters or GMACs (0 when the factor is 0)."""
        device = next(iter(self.arch.values())).device if len(self.arch) else self.final.weight.device
        if self.cost_factor == 0:
            return torch.zeros((), device=device)
        cost = self.expected_cost(self.cost_metric) / COST_UNITS[self.cost_metric]
        return self.cost_factor * torch.log(cost)

    def derive(self) -> dict:
        """The derived architecture (Viterbi over β, `transition` best paths, argmax α) as a JSON dict."""
        from .derive import derive_architecture
        return derive_architecture(self, self.transition)

    def set_noise(self, noise: str, noise_scale: float) -> None:
        for module in self.modules():
            if isinstance(module, MixedOp):
                module.noise = noise
                module.noise_scale = float(noise_scale)

    # ------------------------------------------------------------------ routing probabilities
    def path_prob(self, i: int, j: int, weights: dict):
        """p(i -> j): softmax(β_i) at j's position (1 when i has a single outgoing edge)."""
        name = f"beta_{i}"
        return weights[name][self.graph["outputs"][i].index(j)] if name in weights else 1.0

    def path_log_probs(self) -> dict:
        """{(i, j): log p(i -> j)} over every edge of the block graph (plain floats, for the derivation)."""
        out = {}
        with torch.no_grad():
            for i, targets in enumerate(self.graph["outputs"]):
                name = f"beta_{i}"
                logp = F.log_softmax(self.arch[name].detach().float(), -1).cpu().tolist() if name in self.arch \
                    else [0.0] * len(targets)
                for j, lp in zip(targets, logp):
                    out[(i, j)] = lp
        return out

    # ------------------------------------------------------------------ forward
    def _run_layers(self, block: RoutingBlock, x, alphas):
        for l, layer in enumerate(block.layers):
            y = layer(x, None if alphas is None else alphas[l])
            x = y + self.aux_skip_weight * x if self.darts_minus else y
        return x

    def forward(self, images):
        weights = self.arch_weights()
        n = self.num_blocks
        feats = [None] * n
        feats[0] = self._run_layers(self.blocks["0"], self.stem(images), weights.get("alpha_stack_0"))
        for j in range(1, n):
            block = self.blocks[str(j)]
            alphas = weights.get(f"alpha_head_{j}")
            parts = []
            for k, i in enumerate(block.inputs):
                branch = block.heads[str(i)](feats[i], None if alphas is None else alphas[k])
                parts.append(self.path_prob(i, j, weights) * branch)
            x = block.fuse(torch.cat(parts, 1)) if block.fuse is not None else sum(parts)
            feats[j] = self._run_layers(block, x, weights.get(f"alpha_stack_{j}"))
        size = (images.shape[-2] // 4, images.shape[-1] // 4)
        fused = 0
        for i in self.graph["inputs"][n]:
            branch = self.tail_proj[str(i)](feats[i])
            if branch.shape[-2:] != size:
                branch = F.interpolate(branch, size=size, mode="bilinear", align_corners=False)
            fused = fused + self.path_prob(i, n, weights) * branch
        return self.final(F.relu(self.tail_bn(fused)))

    # ------------------------------------------------------------------ cost model
    def _build_cost_tables(self) -> None:
        """Measure every candidate's (params, MACs) once at its feature size; store as [2, ...] buffers."""
        table = CostTable(self.bn_momentum)
        spec, n, sizes = self.spec, self.num_blocks, self.block_sizes
        chs = spec["CHS"]

        def register(name, values):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float64).movedim(-1, 0), persistent=False)

        for j in range(n):
            if spec["NUM_LAYERS"][j] > 0:
                row = [table.op_cost(op, chs[j], chs[j], 1, sizes[j]) for op in self.stack_ops]
                register(f"cost_stack_{j}", [row] * spec["NUM_LAYERS"][j])
            if j > 0:
                register(f"cost_head_{j}", [[table.op_cost(op, chs[i], chs[j], self.graph["strides"][(i, j)], sizes[i])
                                             for op in self.head_ops] for i in self.graph["inputs"][j]])
        register("cost_tail", [measure(self.tail_proj[str(i)], chs[i], sizes[i]) for i in self.graph["inputs"][n]])
        stem_cost = measure(self.stem, 3, self.input_size, probe=self.stem.stride)
        final_cost = measure(self.final, self.head_channels, self.heatmap_size)
        bn_params = sum(p.numel() for p in self.tail_bn.parameters())
        register("cost_fixed", [stem_cost[0] + final_cost[0] + bn_params, stem_cost[1] + final_cost[1]])
        self.cost_table_size = len(table)

    def expected_cost(self, metric: str | None = None, weights: dict | None = None) -> torch.Tensor:
        """E[cost] of the architecture distribution (parameters or conv MACs, raw counts, float64 tensor).

        weights: {arch name: probabilities} to evaluate instead of the current softmax(α/β), e.g. one-hot
        weights of a derived architecture (see derive.one_hot_weights).
        """
        metric = metric or self.cost_metric
        if metric not in COST_METRICS:
            raise ValueError(f"cost metric {metric!r} is not one of {COST_METRICS}")
        m = COST_METRICS.index(metric)
        weights = self.arch_weights() if weights is None else weights
        weights = {k: v.to(torch.float64) if torch.is_tensor(v) else torch.as_tensor(v, dtype=torch.float64)
                   for k, v in weights.items()}
        n = self.num_blocks
        expected = [None] * (n + 1)
        expected[n] = torch.zeros((), dtype=torch.float64, device=self.cost_fixed.device)
        tail_inputs = self.graph["inputs"][n]
        for i in range(n - 1, -1, -1):
            total = torch.zeros((), dtype=torch.float64, device=self.cost_fixed.device)
            if self.spec["NUM_LAYERS"][i] > 0:
                costs = getattr(self, f"cost_stack_{i}")[m]
                alpha = weights.get(f"alpha_stack_{i}")
                total = total + (costs[:, 0].sum() if alpha is None else (alpha.to(costs.device) * costs).sum())
            for j in self.graph["outputs"][i]:
                if j == n:
                    edge = self.cost_tail[m][tail_inputs.index(i)]
                else:
                    costs = getattr(self, f"cost_head_{j}")[m][self.graph["inputs"][j].index(i)]
                    alpha = weights.get(f"alpha_head_{j}")
                    edge = costs[0] if alpha is None else \
                        (alpha[self.graph["inputs"][j].index(i)].to(costs.device) * costs).sum()
                total = total + self.path_prob(i, j, weights) * (edge + expected[j])
            expected[i] = total
        return self.cost_fixed[m] + expected[0]


def supernet_summary(supernet: DenseNASSupernet) -> dict:
    """Sizes of the search space for notebooks: blocks, edges, paths, arch parameters, expected cost."""
    with torch.no_grad():
        return {"blocks": supernet.num_blocks,
                "edges": sum(len(o) for o in supernet.graph["outputs"]),
                "paths": spaces.num_paths(supernet.spec, supernet.heatmap_head == "searched"),
                "arch_parameters": int(sum(p.numel() for p in supernet.arch_parameters())),
                "weights_m": sum(p.numel() for p in supernet.weight_parameters()) / 1e6,
                "expected_params_m": float(supernet.expected_cost("params")) / 1e6,
                "expected_gflops": float(supernet.expected_cost("flops")) / 1e9,
                "log10_architectures": _log10_architectures(supernet)}


def _log10_architectures(supernet: DenseNASSupernet) -> float:
    """log10 of the number of single-path architectures (paths x op choices along each path, summed)."""
    n = supernet.num_blocks
    spec = supernet.spec
    layer_choices = [math.log(max(len(supernet.stack_ops), 1)) * spec["NUM_LAYERS"][b] for b in range(n)]
    head_choice = math.log(max(len(supernet.head_ops), 1))
    # log-sum-exp over paths of Σ log(choices), by dynamic programming from the tail
    log_count = [None] * (n + 1)
    log_count[n] = 0.0
    for i in range(n - 1, -1, -1):
        terms = [log_count[j] + (head_choice if j < n else 0.0) for j in supernet.graph["outputs"][i]]
        top = max(terms)
        log_count[i] = layer_choices[i] + top + math.log(sum(math.exp(t - top) for t in terms))
    return float(log_count[0] / math.log(10))

