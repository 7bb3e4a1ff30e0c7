"""The 8 DARTS primitives and the fixed (evaluation) cell, with the DARTS reference semantics.

Module layout and attribute names follow the reference code (quark0/darts, cnn/operations.py
and cnn/model.py) so that released state_dicts load without renaming:

* ReLUConvBN:  op = [ReLU, Conv(k, stride), BN]                   -> "op.1.weight", "op.2.*"
* SepConv:     op = [ReLU, dw-Conv(k, stride), 1x1, BN, ReLU, dw-Conv(k), 1x1, BN]
                                                                  -> "op.1", "op.2", "op.3", "op.5", "op.6", "op.7"
* DilConv:     op = [ReLU, dw-Conv(k, stride, dilation 2), 1x1, BN]
* FactorizedReduce: relu, conv_1, conv_2 (1x1 stride 2, the second shifted by one pixel), bn
* pools: 3x3, padding 1 (avg excludes the padding); `none` outputs zeros (subsampled when stride 2).

`affine` is the BN affine flag: True in evaluation networks, False inside the search supernet
(where the reference also appends an affine-free BN after each pooling op; see search.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn


class ReLUConvBN(nn.Module):
    """ReLU -> Conv(kernel, stride, padding, no bias) -> BN; used to preprocess cell inputs."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    """ReLU -> depthwise dilated Conv(kernel, stride) -> pointwise 1x1 -> BN."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, dilation: int,
                 affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, dilation=dilation, groups=C_in,
                      bias=False),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    """Two stacked (ReLU -> depthwise Conv -> pointwise 1x1 -> BN); only the first one strides."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=1, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class Identity(nn.Module):
    """skip_connect at stride 1 (kept as its own class: drop path skips it, as in the reference)."""

    def forward(self, x):
        return x


class Zero(nn.Module):
    """The `none` op: zeros shaped like the op's output (spatially subsampled when stride > 1)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halve the resolution without losing pixels: ReLU, two 1x1 stride-2 convs (second offset by one), concat, BN."""

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        # odd input sizes: the shifted branch is one pixel smaller, pad it back (the reference assumes even sizes)
        a = self.conv_1(x)
        b = self.conv_2(x[:, :, 1:, 1:])
        if b.shape[-2:] != a.shape[-2:]:
            b = nn.functional.pad(b, (0, a.shape[-1] - b.shape[-1], 0, a.shape[-2] - b.shape[-2]))
        return self.bn(torch.cat([a, b], dim=1))


OPS = {
    "none": lambda C, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine=affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine=affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine=affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine=affine),
}


def make_op(name: str, C: int, stride: int, affine: bool = True) -> nn.Module:
    """Instantiate primitive `name` on C channels; unknown names raise ValueError listing the primitives."""
    if name not in OPS:
        raise ValueError(f"unknown DARTS op {name!r}; known: {', '.join(OPS)}")
    return OPS[name](C, stride, affine)


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples with probability drop_prob and rescale the rest by 1/keep (DARTS' drop path)."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


class Cell(nn.Module):
    """A fixed DARTS cell built from a genotype (reference `model.Cell`).

    Inputs s0 (two cells back, C_prev_prev channels) and s1 (previous cell, C_prev channels)
    are preprocessed to C channels (FactorizedReduce for s0 when the previous cell reduced);
    each of the `len(ops)//2` intermediate nodes sums two ops; the output concatenates the
    `concat` nodes, so it has len(concat)*C channels. A reduction cell halves the resolution
    (stride 2 on the edges leaving the two inputs).
    """

    def __init__(self, genotype, C_prev_prev: int, C_prev: int, C: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.reduction_prev = reduction_prev
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        edges = genotype.reduce if reduction else genotype.normal
        concat = genotype.reduce_concat if reduction else genotype.normal_concat
        op_names, indices = zip(*edges)
        self._steps = len(op_names) // 2
        self._concat = list(concat)
        self.multiplier = len(self._concat)
        self._indices = list(indices)
        self._ops = nn.ModuleList(
            make_op(name, C, 2 if reduction and index < 2 else 1, True) for name, index in zip(op_names, indices))

    def forward(self, s0, s1, drop_prob: float = 0.0):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self._steps):
            op_a, op_b = self._ops[2 * i], self._ops[2 * i + 1]
            h_a = op_a(states[self._indices[2 * i]])
            h_b = op_b(states[self._indices[2 * i + 1]])
            if self.training and drop_prob > 0.0:
                if not isinstance(op_a, Identity):
                    h_a = drop_path(h_a, drop_prob)
                if not isinstance(op_b, Identity):
                    h_b = drop_path(h_b, drop_prob)
            states.append(h_a + h_b)
        return torch.cat([states[i] for i in self._concat], dim=1)
