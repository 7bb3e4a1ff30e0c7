"""Attention modules selected by name (like timm's `create_attn`).

    create_attention(name, channels, reduction=None, residual=False, sub_sample=True) -> nn.Module | None

Names (ATTENTION_NAMES): `none` (returns None), `se`, `cbam`, `bam`,
`nonlocal_embedded_gaussian`, `nonlocal_gaussian`, `nonlocal_dot_product`, `nonlocal_concatenation`.

Every module maps [N, C, H, W] -> [N, C, H, W] and implements its paper's form:
* `se`   (Hu et al. 2018):   x * sigmoid(MLP(avgpool(x)))
* `cbam` (Woo et al. 2018):  channel gate (shared MLP on avg- and max-pool) then spatial gate
                             (7x7 conv + BN on [mean_c, max_c]), applied one after the other
* `bam`  (Park et al. 2018): x + x * sigmoid(M_c(x) + M_s(x)), M_c a pooled MLP with BN,
                             M_s a 1x1-reduce, two 3x3 dilation-4 convs, 1x1 -> 1 map
* `nonlocal_*` (Wang et al. 2018): z = x + BN(W(y)), y_i = sum_j f(x_i, x_j) g(x_j) / C(x), with
  the BN's weight initialised to zero so the block starts as the identity. f is
  embedded_gaussian: softmax_j(theta_i . phi_j); gaussian: softmax_j(x_i . x_j);
  dot_product: theta_i . phi_j / N_j; concatenation: ReLU(w . [theta_i, phi_j]) / N_j.
  `sub_sample` max-pools phi and g by 2 (the paper's trick; 4x fewer key positions).
  The affinity matrix is [HW, HW/4] per image: at 64x64 features that is 4096 x 1024, so
  non-local in `block` position (every residual unit) is memory-hungry at 256/64.

`residual=True` wraps any of them as x + attention(x) (for SE: x + x * w, the seed's
"SE + residual" tables). BAM and non-local already contain an identity path in their paper
form, so for them residual=True gives 2x + ...; the seed tables use it with SE only.

`reduction` is the channel reduction ratio r of the hidden layer (hidden = max(1, C // r));
for non-local it sets the inter channels C' = max(1, C // r). `reduction=None` picks each
paper's default: 16 for SE/CBAM/BAM and 2 for non-local (C' = C/2). Note the shared
model default is 16, so a non-local row that wants the paper's C/2 must say `reduction: 2`.

The non-local W-BN is marked with `zero_init_gamma = True`; `init_weights` honours the mark.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

ATTENTION_NAMES = ("none", "se", "cbam", "bam", "nonlocal_embedded_gaussian", "nonlocal_gaussian",
                   "nonlocal_dot_product", "nonlocal_concatenation")


def _hidden_channels(channels: int, reduction: float) -> int:
    if reduction is None or reduction <= 0:
        raise ValueError(f"attention reduction must be a positive number, got {reduction!r}")
    return max(1, int(channels // reduction))


class Attention(nn.Module):
    """Base: subclasses define `attend(x)` and `gates(x)`; `residual` adds the identity around it.

    gates(x) -> dict of what the module computes from x, for display (nbutils.explain):
    `channel_weights` [N, C] in (0, 1) and/or `spatial_map` [N, H, W].
    """

    def __init__(self, residual: bool = False):
        super().__init__()
        self.residual = bool(residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.attend(x)
        return x + out if self.residual else out

    def extra_repr(self) -> str:
        return f"residual={self.residual}"


class SqueezeExcite(Attention):
    """SE: channel gate from globally average-pooled features through a 2-layer bottleneck MLP."""

    def __init__(self, channels: int, reduction: float = 16, residual: bool = False):
        super().__init__(residual)
        hidden = _hidden_channels(channels, reduction)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)

    def gates(self, x) -> dict:
        w = self.fc2(self.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return {"channel_weights": torch.sigmoid(w).flatten(1)}

    def attend(self, x):
        return x * self.gates(x)["channel_weights"][:, :, None, None]


class CBAM(Attention):
    """CBAM: channel gate (avg- and max-pool through one shared MLP, summed), then spatial gate."""

    def __init__(self, channels: int, reduction: float = 16, residual: bool = False, kernel_size: int = 7):
        super().__init__(residual)
        hidden = _hidden_channels(channels, reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )
        self.spatial = nn.Sequential(
            nn.Conv2d(2, 1, kernel_size=kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(1),
        )

    def gates(self, x) -> dict:
        channel_logits = self.mlp(x.mean(dim=(2, 3), keepdim=True)) + self.mlp(x.amax(dim=(2, 3), keepdim=True))
        channel = torch.sigmoid(channel_logits)
        x = x * channel
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return {"channel_weights": channel.flatten(1), "spatial_map": torch.sigmoid(self.spatial(pooled))[:, 0]}

    def attend(self, x):
        gates = self.gates(x)
        return x * gates["channel_weights"][:, :, None, None] * gates["spatial_map"][:, None]


class BAM(Attention):
    """BAM: F + F * sigmoid(M_c(F) + M_s(F)), channel and spatial branches in parallel."""

    def __init__(self, channels: int, reduction: float = 16, residual: bool = False, dilation: int = 4):
        super().__init__(residual)
        hidden = _hidden_channels(channels, reduction)
        self.channel_gate = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )
        self.spatial_gate = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, kernel_size=3, padding=dilation, dilation=dilation),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, kernel_size=3, padding=dilation, dilation=dilation),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, kernel_size=1),
        )

    def gates(self, x) -> dict:
        """The two branches' sigmoids (for display); the module itself gates with sigmoid(M_c + M_s)."""
        channel_logits = self.channel_gate(x.mean(dim=(2, 3), keepdim=True))
        spatial_logits = self.spatial_gate(x)
        return {"channel_weights": torch.sigmoid(channel_logits).flatten(1),
                "spatial_map": torch.sigmoid(spatial_logits)[:, 0],
                "gate": torch.sigmoid(channel_logits + spatial_logits)}

    def attend(self, x):
        return x + x * self.gates(x)["gate"]


class NonLocal2d(Attention):
    """Non-local block (Wang et al. 2018): z = x + BN(W(y)), BN weight zero-initialised.

    mode: embedded_gaussian | gaussian | dot_product | concatenation (the pairwise function f).
    inter_channels: C' of theta/phi/g (the paper uses C/2).
    sub_sample: max-pool phi and g by 2 in both directions.
    """

    MODES = ("embedded_gaussian", "gaussian", "dot_product", "concatenation")

    def __init__(self, channels: int, mode: str = "embedded_gaussian", inter_channels: int | None = None,
                 sub_sample: bool = True, residual: bool = False, bn_momentum: float = 0.1):
        super().__init__(residual)
        if mode not in self.MODES:
            raise ValueError(f"non-local mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        self.inter_channels = inter_channels or max(1, channels // 2)
        c_inter = self.inter_channels
        self.g = nn.Conv2d(channels, c_inter, kernel_size=1)
        if mode != "gaussian":  # plain Gaussian compares raw features, no embedding
            self.theta = nn.Conv2d(channels, c_inter, kernel_size=1)
            self.phi = nn.Conv2d(channels, c_inter, kernel_size=1)
        if mode == "concatenation":
            self.concat_project = nn.Conv2d(2 * c_inter, 1, kernel_size=1, bias=False)
        self.pool = nn.MaxPool2d(2, ceil_mode=True) if sub_sample else nn.Identity()  # ceil: 1x1 maps stay 1x1
        self.W = nn.Sequential(nn.Conv2d(c_inter, channels, kernel_size=1),
                               nn.BatchNorm2d(channels, momentum=bn_momentum))
        self.W[1].zero_init_gamma = True  # the block starts as the identity
        nn.init.zeros_(self.W[1].weight)

    def gates(self, x) -> dict:
        """spatial_map: the norm over channels of the response BN(W(y)) the block adds at each position."""
        return {"spatial_map": (self.attend(x) - x).norm(dim=1)}

    def attend(self, x):
        n, _, h, w = x.shape
        value = self.pool(self.g(x)).flatten(2).transpose(1, 2)              # [N, M, C']
        if self.mode == "gaussian":
            query = x.flatten(2).transpose(1, 2)                             # [N, HW, C]
            key = self.pool(x).flatten(2)                                    # [N, C, M]
        else:
            query = self.theta(x).flatten(2).transpose(1, 2)                 # [N, HW, C']
            key = self.pool(self.phi(x)).flatten(2)                          # [N, C', M]
        if self.mode in ("embedded_gaussian", "gaussian"):
            affinity = torch.softmax(query @ key, dim=-1)                    # [N, HW, M]
        elif self.mode == "dot_product":
            affinity = (query @ key) / key.shape[-1]
        else:
            # ReLU(w . [theta_i; phi_j]) = ReLU(w_theta . theta_i + w_phi . phi_j): no [HW, M, 2C'] tensor needed
            w_theta, w_phi = self.concat_project.weight.flatten().split(self.inter_channels)
            affinity = F.relu((query @ w_theta).unsqueeze(2) + (w_phi @ key).unsqueeze(1)) / key.shape[-1]
        y = (affinity @ value).transpose(1, 2).reshape(n, self.inter_channels, h, w)
        return x + self.W(y)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, inter_channels={self.inter_channels}, residual={self.residual}"


_PAPER_REDUCTION = {"se": 16, "cbam": 16, "bam": 16, "nonlocal": 2}


def create_attention(name: str, channels: int, reduction: float | None = None, residual: bool = False,
                     sub_sample: bool = True, bn_momentum: float = 0.1) -> nn.Module | None:
    """Build the attention module called `name` for `channels` input channels; None for `none`.

    reduction: channel reduction ratio (None = the paper default, see the module docstring).
    residual: wrap as x + attention(x).  sub_sample: non-local only (max-pool phi and g by 2).
    bn_momentum: non-local's W-BN momentum (HRNet passes its 0.01).
    """
    if name is None or name == "none":
        return None
    if name not in ATTENTION_NAMES:
        raise ValueError(f"unknown attention type {name!r}; choose one of {', '.join(ATTENTION_NAMES)}")
    family = "nonlocal" if name.startswith("nonlocal_") else name
    if reduction is None:
        reduction = _PAPER_REDUCTION[family]
    if family == "se":
        return SqueezeExcite(channels, reduction, residual)
    if family == "cbam":
        return CBAM(channels, reduction, residual)
    if family == "bam":
        return BAM(channels, reduction, residual)
    return NonLocal2d(channels, mode=name[len("nonlocal_"):], inter_channels=_hidden_channels(channels, reduction),
                      sub_sample=sub_sample, residual=residual, bn_momentum=bn_momentum)
