"""DARTS search supernet for landmarks (implements the protocol of nbutils.engine.search).

Every edge of a search cell is a MixedOp: the softmax(α)-weighted sum of all primitives
(BN without affine inside ops; pooling ops followed by an affine-free BN, as the reference
model_search.py). α_normal and α_reduce have one row per edge (14 for 4 steps) and one column
per primitive. The stem, the three-stage fusion and the heatmap head are the landmark network's.

Switches (read from the `search` section by `build_supernet`):
* noise: "step" | "epoch" (NoisyDARTS). Gaussian noise is added to the output of every
  skip_connect op, std = noise_scale x the std of that output (detached), in training only.
  Our reading of the seed's two rows: "step" draws fresh noise at every forward pass (every
  training step); "epoch" draws one noise pattern per edge at the start of each epoch (shape
  C x H x W, shared by all samples and steps of the epoch) and rescales it to each output's std.
* darts_minus (DARTS-): every edge also adds β · skip(x) (identity, or an affine-free
  FactorizedReduce on reduction edges) outside the softmax; β decays linearly from
  darts_minus_beta at epoch 0 to 0 at the last epoch (β = β0 · (1 - epoch / (epochs - 1))).
* SmoothDARTS perturbations arrive through `arch_perturbation` (added to softmax(α)).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..heads import HeatmapHead, concat_upsampled
from .cifar import cell_plan
from .genotypes import PRIMITIVES, Genotype, genotype_to_dict
from .landmark import landmark_stem, stage_ends
from .ops import FactorizedReduce, Identity, ReLUConvBN, make_op


class SearchControls:
    """State shared by all MixedOps of one supernet (set by the supernet, read in forward)."""

    def __init__(self, noise: str = "none", noise_scale: float = 0.1, darts_minus: bool = False):
        if noise not in ("none", "step", "epoch"):
            raise ValueError(f"search.noise: {noise!r} is not one of ('none', 'step', 'epoch')")
        self.noise = noise
        self.noise_scale = float(noise_scale)
        self.darts_minus = bool(darts_minus)
        self.beta = 1.0 if darts_minus else 0.0


class MixedOp(nn.Module):
    """Σ_k w_k op_k(x) over the primitives (+ β·skip(x) for DARTS-); noise on the skip op when training."""

    def __init__(self, C: int, stride: int, primitives, controls: SearchControls):
        super().__init__()
        self.primitives = list(primitives)
        self.controls = controls
        self._ops = nn.ModuleList()
        for name in self.primitives:
            op = make_op(name, C, stride, affine=False)
            if "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            self._ops.append(op)
        self.skip_index = self.primitives.index("skip_connect") if "skip_connect" in self.primitives else None
        if controls.darts_minus:
            self.auxiliary_skip = Identity() if stride == 1 else FactorizedReduce(C, C, affine=False)
        self._epoch_noise = None

    def reset_epoch_noise(self):
        self._epoch_noise = None

    def _noisy(self, out: torch.Tensor) -> torch.Tensor:
        mode = self.controls.noise
        if mode == "none" or not self.training or self.controls.noise_scale == 0:
            return out
        if mode == "step":
            noise = torch.randn_like(out)
        else:
            if self._epoch_noise is None or self._epoch_noise.shape != out.shape[1:]:
                self._epoch_noise = torch.randn(out.shape[1:], device=out.device, dtype=out.dtype)
            noise = self._epoch_noise.to(out.device).expand_as(out)
        return out + noise * (self.controls.noise_scale * out.detach().std())

    def forward(self, x, weights):
        total = 0
        for k, op in enumerate(self._ops):
            out = op(x)
            if k == self.skip_index:
                out = self._noisy(out)
            total = total + weights[k] * out
        if self.controls.darts_minus and self.controls.beta > 0:
            total = total + self.controls.beta * self.auxiliary_skip(x)
        return total


class SearchCell(nn.Module):
    """A DARTS search cell: `steps` nodes, each the sum of MixedOps over all earlier nodes."""

    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev, primitives, controls):
        super().__init__()
        self.reduction = reduction
        self.multiplier = multiplier
        self._steps = steps
        self.preprocess0 = (FactorizedReduce(C_prev_prev, C, affine=False) if reduction_prev
                            else ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False))
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self._ops = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self._ops.append(MixedOp(C, stride, primitives, controls))

    def forward(self, s0, s1, weights):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self._steps):
            s = sum(self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self.multiplier:], dim=1)


def num_edges(steps: int) -> int:
    """Edges of a cell with `steps` intermediate nodes: 2 + 3 + ... + (steps + 1)."""
    return sum(2 + i for i in range(steps))


def derive_genotype(alpha_normal, alpha_reduce, primitives=PRIMITIVES, steps: int = 4, multiplier: int = 4) -> Genotype:
    """Discrete cell from architecture logits, as the DARTS reference parser: softmax each edge row,
    keep for every node the 2 incoming edges with the largest non-'none' weight, and on each the
    strongest non-'none' op; the last `multiplier` nodes are concatenated."""
    primitives = list(primitives)
    none = primitives.index("none") if "none" in primitives else None

    def parse(alpha):
        weights = F.softmax(torch.as_tensor(np.asarray(alpha, dtype=np.float64)), dim=-1).numpy()
        if weights.shape != (num_edges(steps), len(primitives)):
            raise ValueError(f"alpha shape {weights.shape} != ({num_edges(steps)}, {len(primitives)})")
        gene, start = [], 0
        for i in range(steps):
            rows = weights[start:start + i + 2]
            scores = [max(w for k, w in enumerate(row) if k != none) for row in rows]
            # stable order: ties keep the lower input index first, like Python's sorted in the reference
            chosen = sorted(range(i + 2), key=lambda j: -scores[j])[:2]
            for j in chosen:
                best = max((k for k in range(len(primitives)) if k != none), key=lambda k: rows[j][k])
                gene.append((primitives[best], j))
            start += i + 2
        return gene

    concat = list(range(2 + steps - multiplier, steps + 2))
    return Genotype(normal=parse(alpha_normal), normal_concat=concat, reduce=parse(alpha_reduce), reduce_concat=concat)


class DartsSupernet(nn.Module):
    """Landmark supernet: stem -> search cells (reductions at 1/3, 2/3) -> fused stages -> heatmaps."""

    def __init__(self, layers: int = 8, init_channels: int = 16, num_landmarks: int = 68, steps: int = 4,
                 multiplier: int = 4, head_channels: int = 128, primitives=PRIMITIVES, noise: str = "none",
                 noise_scale: float = 0.1, darts_minus: bool = False, darts_minus_beta: float = 1.0):
        super().__init__()
        self.primitives = list(primitives)
        self.steps = steps
        self.multiplier = multiplier
        self.layers = layers
        self.controls = SearchControls(noise, noise_scale, darts_minus)
        self.darts_minus_beta = float(darts_minus_beta)
        self.controls.beta = self.darts_minus_beta if darts_minus else 0.0
        self.arch_perturbation = None
        self._stage_ends = stage_ends(layers)
        stem_channels = 3 * init_channels
        self.stem = landmark_stem(stem_channels)
        plan = cell_plan(layers, init_channels, stem_channels, (multiplier, multiplier))
        self.cells = nn.ModuleList(SearchCell(steps, multiplier, *spec, self.primitives, self.controls) for spec in plan)
        fused = sum(multiplier * plan[i][2] for i in self._stage_ends)
        self.fuse = ReLUConvBN(fused, head_channels, 1, 1, 0)
        self.head = HeatmapHead(head_channels, num_landmarks)
        edges = num_edges(steps)
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(edges, len(self.primitives)))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(edges, len(self.primitives)))

    # ---- protocol of nbutils.engine.search -------------------------------------------
    def arch_parameters(self):
        return [self.alpha_normal, self.alpha_reduce]

    def weight_parameters(self):
        return [p for name, p in self.named_parameters() if not name.startswith("alpha_")]

    def arch_weights(self):
        """softmax(α) per edge (+ the SmoothDARTS perturbation when one is set)."""
        weights = [F.softmax(self.alpha_normal, dim=-1), F.softmax(self.alpha_reduce, dim=-1)]
        if self.arch_perturbation is not None:
            weights = [w + d for w, d in zip(weights, self.arch_perturbation)]
        return weights

    def forward(self, x):
        w_normal, w_reduce = self.arch_weights()
        s0 = s1 = self.stem(x)
        stage_features = []
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal)
            if i in self._stage_ends:
                stage_features.append(s1)
        return self.head(self.fuse(concat_upsampled(stage_features)))

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        if self.controls.darts_minus:
            self.controls.beta = self.darts_minus_beta * darts_minus_decay(epoch, total_epochs)
        if self.controls.noise == "epoch":
            for module in self.modules():
                if isinstance(module, MixedOp):
                    module.reset_epoch_noise()

    def epoch_info(self) -> dict:
        return {"darts_minus_beta": self.controls.beta} if self.controls.darts_minus else {}

    def genotype(self) -> Genotype:
        return derive_genotype(self.alpha_normal.detach().cpu(), self.alpha_reduce.detach().cpu(), self.primitives,
                               self.steps, self.multiplier)

    def derive(self) -> dict:
        genotype = self.genotype()
        return {"family": "darts", "genotype": genotype_to_dict(genotype), "text": repr(genotype)}

    def arch_snapshot(self) -> dict:
        with torch.no_grad():
            return {"alpha_normal": F.softmax(self.alpha_normal, -1).cpu().numpy(),
                    "alpha_reduce": F.softmax(self.alpha_reduce, -1).cpu().numpy(),
                    "primitives": np.array(self.primitives)}


def darts_minus_decay(epoch: int, total_epochs: int) -> float:
    """DARTS- β factor: 1 at epoch 0, linearly down to 0 at the last epoch (1 throughout a 1-epoch search)."""
    if total_epochs <= 1:
        return 1.0
    return max(0.0, 1.0 - epoch / (total_epochs - 1))


SUPERNET_DEFAULTS = {"layers": 8, "init_channels": 16, "head_channels": 128, "steps": 4, "multiplier": 4}


def build_supernet(cfg: dict) -> DartsSupernet:
    """Supernet from a run config: size from cfg["search"]["supernet"] (SUPERNET_DEFAULTS), switches
    noise / noise_scale / darts_minus / darts_minus_beta / seed from cfg["search"]
    (nbutils.engine.search.SEARCH_DEFAULTS), num_landmarks from cfg["model"] (68)."""
    from nbutils.engine.search import search_config

    scfg = search_config(cfg.get("search"))
    size = dict(SUPERNET_DEFAULTS)
    for key, value in (scfg["supernet"] or {}).items():
        if key not in SUPERNET_DEFAULTS:
            raise ValueError(f"search.supernet.{key}: unknown key (known: {', '.join(SUPERNET_DEFAULTS)})")
        size[key] = int(value)
    torch.manual_seed(int(scfg["seed"]))
    return DartsSupernet(
        layers=size["layers"], init_channels=size["init_channels"], head_channels=size["head_channels"],
        steps=size["steps"], multiplier=size["multiplier"],
        num_landmarks=int((cfg.get("model") or {}).get("num_landmarks", 68)),
        noise=scfg["noise"], noise_scale=scfg["noise_scale"], darts_minus=scfg["darts_minus"],
        darts_minus_beta=float(scfg["darts_minus_beta"]))
