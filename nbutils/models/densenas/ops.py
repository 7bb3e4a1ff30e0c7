"""Candidate operations of the DenseNAS search space, the two stems, and per-op cost measurement.

Op names (all map C_in channels at stride s to C_out channels):
    mbconv_k{3,5,7}_e{3,6}   MobileNetV2 inverted residual: 1x1 expand (xe) -> kxk depthwise (stride) ->
                             1x1 project, BN after each conv, ReLU6 after the first two; identity
                             shortcut when stride 1 and C_in == C_out (DenseNAS' MBConv)
    skip                     identity (stacked layers only: C_in == C_out, stride 1); deriving a
                             skip drops the layer
    basic_block              ResNet basic block: 3x3 (stride) -> BN -> ReLU -> 3x3 -> BN, plus the
                             shortcut (identity, or 1x1 conv + BN when shape changes), then ReLU
    sep_conv_3x3/5x5,        the DARTS primitives (nbutils.models.darts.ops.SepConv / DilConv)
    dil_conv_3x3/5x5

Candidate sets (`op_candidates`):
    DenseNAS stacked layers: the six MBConvs + skip; head layers: the six MBConvs.
    ops="darts" adds the four DARTS convolutions to both; head_layer="basic_block" makes the
    head layer a fixed basic block (no α for it).
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn

from ..cost import count_macs
from ..darts.ops import DilConv, SepConv

MBCONV_OPS = ("mbconv_k3_e3", "mbconv_k3_e6", "mbconv_k5_e3", "mbconv_k5_e6", "mbconv_k7_e3", "mbconv_k7_e6")
DARTS_CONV_OPS = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
ALL_OPS = MBCONV_OPS + ("skip", "basic_block") + DARTS_CONV_OPS
OP_SETS = ("densenas", "darts")
HEAD_LAYERS = ("mbconv", "basic_block")
STEMS = ("densenas", "hrnet")
HRNET_STEM_CHANNELS = 64
DENSENAS_STEM_CHANNELS = 32


def _bn(channels: int, momentum: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=momentum)


class MBConv(nn.Module):
    """Inverted residual block (MobileNetV2 / DenseNAS `mbconv_k*_t*`); expansion 1 omits the expand conv."""

    def __init__(self, c_in: int, c_out: int, kernel: int, expansion: int, stride: int, bn_momentum: float = 0.1):
        super().__init__()
        hidden = c_in * expansion
        layers = []
        if expansion != 1:
            layers += [nn.Conv2d(c_in, hidden, 1, bias=False), _bn(hidden, bn_momentum), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, kernel, stride=stride, padding=kernel // 2, groups=hidden, bias=False),
                   _bn(hidden, bn_momentum), nn.ReLU6(inplace=True),
                   nn.Conv2d(hidden, c_out, 1, bias=False), _bn(c_out, bn_momentum)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        out = self.body(x)
        return out + x if self.residual else out


class BasicBlock(nn.Module):
    """ResNet basic block with a projection shortcut when the stride or width changes."""

    def __init__(self, c_in: int, c_out: int, stride: int, bn_momentum: float = 0.1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _bn(c_out, bn_momentum)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = _bn(c_out, bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), _bn(c_out, bn_momentum))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class Skip(nn.Module):
    """Identity; a stacked layer that picks it is dropped from the derived network."""

    def forward(self, x):
        return x


def make_op(name: str, c_in: int, c_out: int, stride: int, bn_momentum: float = 0.1) -> nn.Module:
    """Instantiate candidate op `name`; raises ValueError naming the op for unknown names or bad shapes."""
    match = re.fullmatch(r"mbconv_k([357])_e([36])", name)
    if match:
        return MBConv(c_in, c_out, int(match.group(1)), int(match.group(2)), stride, bn_momentum)
    if name == "skip":
        if stride != 1 or c_in != c_out:
            raise ValueError(f"op 'skip' needs stride 1 and equal widths, got {c_in}->{c_out} stride {stride}")
        return Skip()
    if name == "basic_block":
        return BasicBlock(c_in, c_out, stride, bn_momentum)
    match = re.fullmatch(r"(sep|dil)_conv_([35])x\2", name)
    if match:
        kernel = int(match.group(2))
        if match.group(1) == "sep":
            return SepConv(c_in, c_out, kernel, stride, kernel // 2, affine=True)
        return DilConv(c_in, c_out, kernel, stride, 2 * (kernel // 2), 2, affine=True)
    raise ValueError(f"unknown DenseNAS op {name!r}; known: {', '.join(ALL_OPS)}")


def op_candidates(ops: str = "densenas", head_layer: str = "mbconv", extra_ops=(), stack_ops=None,
                  head_ops=None) -> tuple[list, list]:
    """(stacked-layer candidates, head-layer candidates) for the option names of the model config.

    stack_ops / head_ops, when given, are explicit candidate lists that replace the named sets.
    """
    if ops not in OP_SETS:
        raise ValueError(f"model.ops: {ops!r} is not one of {OP_SETS}")
    if head_layer not in HEAD_LAYERS:
        raise ValueError(f"model.head_layer: {head_layer!r} is not one of {HEAD_LAYERS}")
    stack = list(MBCONV_OPS) + ["skip"]
    head = list(MBCONV_OPS)
    if ops == "darts":
        stack += list(DARTS_CONV_OPS)
        head += list(DARTS_CONV_OPS)
    for name in extra_ops or ():
        if name not in ALL_OPS or name in ("skip", "basic_block"):
            raise ValueError(f"model.extra_ops: {name!r} is not a convolution op ({', '.join(DARTS_CONV_OPS)}, ...)")
        if name not in stack:
            stack.append(name)
    if head_layer == "basic_block":
        head = ["basic_block"]
    for key, given in (("stack_ops", stack_ops), ("head_ops", head_ops)):
        if given is None:
            continue
        if not isinstance(given, (list, tuple)) or not given or len(set(given)) != len(given):
            raise ValueError(f"model.{key}: expected a non-empty list of distinct op names, got {given!r}")
        for name in given:
            if name not in ALL_OPS or (key == "head_ops" and name == "skip"):
                raise ValueError(f"model.{key}: {name!r} is not a usable op (known: {', '.join(ALL_OPS)}; "
                                 "skip only in stacked layers)")
    return list(stack_ops or stack), list(head_ops or head)


class DenseNASStem(nn.Module):
    """DenseNAS' input block: 3x3 conv stride 2 (3 -> 32) -> BN -> ReLU6, then MBConv k3 e1 (32 -> C).
    Output at input/2."""
    stride = 2

    def __init__(self, out_channels: int, bn_momentum: float = 0.1):
        super().__init__()
        self.conv = nn.Conv2d(3, DENSENAS_STEM_CHANNELS, 3, stride=2, padding=1, bias=False)
        self.bn = _bn(DENSENAS_STEM_CHANNELS, bn_momentum)
        self.relu = nn.ReLU6(inplace=True)
        self.head = MBConv(DENSENAS_STEM_CHANNELS, out_channels, 3, 1, 1, bn_momentum)

    def forward(self, x):
        return self.head(self.relu(self.bn(self.conv(x))))


class HRNetStem(nn.Module):
    """HRNet's stem: two 3x3 stride-2 convs with 64 channels (names conv1/bn1/conv2/bn2 as in HRNet, so an
    HRNet ImageNet checkpoint loads into it), then a 1x1 conv + BN + ReLU to C when C != 64. Output at input/4."""
    stride = 4

    def __init__(self, out_channels: int, bn_momentum: float = 0.1):
        super().__init__()
        c = HRNET_STEM_CHANNELS
        self.conv1 = nn.Conv2d(3, c, 3, stride=2, padding=1, bias=False)
        self.bn1 = _bn(c, bn_momentum)
        self.conv2 = nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False)
        self.bn2 = _bn(c, bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.proj = None
        if out_channels != c:
            self.proj = nn.Sequential(nn.Conv2d(c, out_channels, 1, bias=False), _bn(out_channels, bn_momentum),
                                      nn.ReLU(inplace=True))

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return x if self.proj is None else self.proj(x)


def make_stem(name: str, out_channels: int, bn_momentum: float = 0.1) -> nn.Module:
    if name == "densenas":
        return DenseNASStem(out_channels, bn_momentum)
    if name == "hrnet":
        return HRNetStem(out_channels, bn_momentum)
    raise ValueError(f"model.stem: {name!r} is not one of {STEMS}")


def measure(module: nn.Module, in_channels: int, size: int, probe: int = 2) -> tuple[int, int]:
    """(parameters, conv/linear MACs) of `module` applied to one [in_channels, size, size] map.

    Every conv's MACs are (output pixels) x (per-pixel work), and every output is the input side
    divided by a stride that divides `probe`, so the MACs at `size` are those at probe x probe scaled
    by (size / probe)^2 (exact for sizes that are multiples of the strides). Measuring on a 2 x 2 map
    keeps building a large supernet's lookup table fast.
    """
    params = sum(p.numel() for p in module.parameters())
    if params == 0:
        return 0, 0
    first = next(module.parameters())
    example = torch.zeros(1, in_channels, probe, probe, device=first.device, dtype=first.dtype)
    macs = sum(count_macs(module, example).values())
    return params, int(round(macs * (size / probe) ** 2))


class CostTable:
    """Lookup table of candidate-op costs, measured once per (op, C_in, C_out, stride, input size)."""

    def __init__(self, bn_momentum: float = 0.1):
        self.bn_momentum = bn_momentum
        self._table: dict[tuple, tuple[int, int]] = {}

    def op_cost(self, name: str, c_in: int, c_out: int, stride: int, size: int) -> tuple[int, int]:
        """(params, MACs) of op `name` on a size x size map (size = input side in pixels of that map)."""
        key = (name, c_in, c_out, stride, size)
        if key not in self._table:
            self._table[key] = measure(make_op(name, c_in, c_out, stride, self.bn_momentum), c_in, size)
        return self._table[key]

    def __len__(self):
        return len(self._table)
