"""HRNetV2 for facial landmarks, with the official topology and state_dict names.

Topology and names follow HRNet-Facial-Landmark-Detection (lib/models/hrnet.py with
experiments/300w/face_alignment_300w_hrnet_w18.yaml):

    conv1/bn1, conv2/bn2       stem: two 3x3 stride-2 convs, 64 channels (input / 4)
    layer1                     stage 1: 4 Bottlenecks (64 -> 256 channels)
    transition1, stage2        2 branches [W, 2W], 1 module of 4 BasicBlocks per branch
    transition2, stage3        3 branches [W, 2W, 4W], 4 modules
    transition3, stage4        4 branches [W, 2W, 4W, 8W], 3 modules; fusion by SUM
    head                       concat of the 4 bilinearly upsampled branches (15W channels)
                               -> 1x1 conv -> BN -> ReLU -> 1x1 conv to K heatmaps (head.0/1/3)

BatchNorm momentum 0.01 everywhere in the backbone and head. Output heatmaps are input/4:
256x256 -> 64x64, 128x128 -> 32x32. HRNetV2-W18 with 68 landmarks has 9,654,398 parameters,
W32 29,570,084.

The backbone keys (conv1 ... stage4.*) are those of the official ImageNet classification
checkpoints (`hrnetv2_w18_imagenet_pretrained.pth`) and of timm's `hrnet_w18`/`hrnet_w32`
(timm keeps the same attribute names; its Identity/Upsample entries hold no parameters), so
both load with `nbutils.models.init.load_pretrained` without renaming. Where the official code
keeps `None` in `transition*`/`fuse_layers` lists, this one keeps a parameter-free nn.Identity
(no state_dict keys either way).

Attention (see attention.py) is optional and adds keys only where it adds modules:
* position `block`:   `<residual unit>.attn.*` in every BasicBlock/Bottleneck (layer1 and
                      every branch of stages 2-4), applied after the unit's last BN, before the add;
* position `prehead`: `prehead_attn.*`, on the concatenated features before `head`.

`fusion_stages` chooses whose outputs are concatenated before the head, in ascending stage
order: stage 1 = the output of `layer1` (256 channels at input/4), stage s >= 2 = all branch
outputs of stage s (sum of its widths; e.g. W18: stage2 54, stage3 126, stage4 270). The last
stage must be included. W18 head input: [4] 270, [3,4] 396, [2,3,4] 450, [1,2,3,4] 706.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import ATTENTION_NAMES, create_attention
from .heads import HeatmapHead, concat_upsampled

AttnFactory = Callable[[int], "nn.Module | None"]


def _no_attention(channels: int) -> None:
    return None


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN pairs with an identity (or 1x1 projection) shortcut."""
    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 bn_momentum: float = 0.01, attn_factory: AttnFactory = _no_attention):
        super().__init__()
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes, momentum=bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes, momentum=bn_momentum)
        self.attn = attn_factory(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.attn is not None:
            out = self.attn(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand (x4), each followed by BN, with a shortcut."""
    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 bn_momentum: float = 0.01, attn_factory: AttnFactory = _no_attention):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=bn_momentum)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes, momentum=bn_momentum)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, momentum=bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.attn = attn_factory(planes * self.expansion)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.attn is not None:
            out = self.attn(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def make_residual_layer(block: type, in_channels: int, planes: int, num_blocks: int, bn_momentum: float,
                        attn_factory: AttnFactory, stride: int = 1) -> nn.Sequential:
    """`num_blocks` residual units; the first projects the shortcut when shape changes."""
    out_channels = planes * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels, momentum=bn_momentum),
        )
    units = [block(in_channels, planes, stride, downsample, bn_momentum, attn_factory)]
    units += [block(out_channels, planes, 1, None, bn_momentum, attn_factory) for _ in range(1, num_blocks)]
    return nn.Sequential(*units)


class HighResolutionModule(nn.Module):
    """Parallel branches of residual units, then every output branch sums all inputs
    (upsampled by 1x1 conv + bilinear resize, or downsampled by stride-2 3x3 convs)."""

    def __init__(self, block: type, num_blocks: Sequence[int], in_channels: Sequence[int],
                 num_channels: Sequence[int], bn_momentum: float, attn_factory: AttnFactory):
        super().__init__()
        if not (len(num_blocks) == len(in_channels) == len(num_channels)):
            raise ValueError(f"branch count mismatch: num_blocks {list(num_blocks)}, in_channels "
                             f"{list(in_channels)}, num_channels {list(num_channels)}")
        self.num_branches = len(num_channels)
        self.branches = nn.ModuleList(
            make_residual_layer(block, c_in, c, n, bn_momentum, attn_factory)
            for c_in, c, n in zip(in_channels, num_channels, num_blocks))
        self.out_channels = [c * block.expansion for c in num_channels]
        self.fuse_layers = self._make_fuse_layers(bn_momentum) if self.num_branches > 1 else None

    def _make_fuse_layers(self, bn_momentum: float) -> nn.ModuleList:
        chans = self.out_channels
        fuse_layers = nn.ModuleList()
        for i in range(self.num_branches):
            row = nn.ModuleList()
            for j in range(self.num_branches):
                if j > i:    # lower resolution: 1x1 conv to branch i's width, resized in forward()
                    row.append(nn.Sequential(nn.Conv2d(chans[j], chans[i], 1, bias=False),
                                             nn.BatchNorm2d(chans[i], momentum=bn_momentum)))
                elif j == i:
                    row.append(nn.Identity())
                else:        # higher resolution: i - j stride-2 3x3 convs, ReLU between them only
                    steps = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        c_out = chans[i] if last else chans[j]
                        step = [nn.Conv2d(chans[j], c_out, 3, stride=2, padding=1, bias=False),
                                nn.BatchNorm2d(c_out, momentum=bn_momentum)]
                        if not last:
                            step.append(nn.ReLU(inplace=True))
                        steps.append(nn.Sequential(*step))
                    row.append(nn.Sequential(*steps))
            fuse_layers.append(row)
        return fuse_layers

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if self.fuse_layers is None:
            return xs
        fused = []
        for i, row in enumerate(self.fuse_layers):
            total = xs[i]
            for j, layer in enumerate(row):
                if j == i:
                    continue
                y = layer(xs[j])
                if j > i:
                    y = F.interpolate(y, size=xs[i].shape[-2:], mode="bilinear", align_corners=False)
                total = total + y  # never in place: xs[i] is also a stage output kept for fusion
            fused.append(F.relu(total, inplace=True))
        return fused


def hrnet_spec(width: int = 18, num_modules: Sequence[int] = (1, 4, 3), num_blocks: int = 4) -> dict:
    """The HRNetV2-W<width> stage spec: stage1 = 4 Bottlenecks of 64 planes; stages 2-4 with
    `num_modules` modules of `num_blocks` BasicBlocks per branch, widths [W, 2W, 4W, 8W]."""
    if not isinstance(width, int) or width <= 0:
        raise ValueError(f"model.width must be a positive integer, got {width!r}")
    spec = {"stem_channels": 64, "stage1": {"block": "bottleneck", "num_blocks": 4, "planes": 64}}
    for stage, modules in zip((2, 3, 4), num_modules):
        spec[f"stage{stage}"] = {"block": "basic", "num_modules": modules, "num_blocks": [num_blocks] * stage,
                                 "num_channels": [width * 2 ** b for b in range(stage)]}
    return spec


def _check_spec(spec: dict) -> dict:
    spec = copy.deepcopy(spec)
    for key in ("stem_channels", "stage1", "stage2", "stage3", "stage4"):
        if key not in spec:
            raise ValueError(f"HRNet spec is missing key {key!r} (see hrnet_spec())")
    for stage in (1, 2, 3, 4):
        cfg = spec[f"stage{stage}"]
        if cfg.get("block") not in BLOCKS:
            raise ValueError(f"HRNet spec stage{stage}.block must be one of {list(BLOCKS)}, got {cfg.get('block')!r}")
    for stage in (2, 3, 4):
        cfg = spec[f"stage{stage}"]
        if len(cfg["num_channels"]) != stage or len(cfg["num_blocks"]) != stage:
            raise ValueError(f"HRNet spec stage{stage} needs {stage} branches in num_channels and num_blocks, "
                             f"got {cfg['num_channels']} and {cfg['num_blocks']}")
    return spec


ATTENTION_KEYS = {"type": "none", "position": "prehead", "reduction": 16, "residual": False,
                  "fusion_stages": [4], "sub_sample": True}


def attention_options(attention: dict | None) -> dict:
    """Validated attention settings: ATTENTION_KEYS filled in, bad keys/values raise ValueError."""
    options = dict(ATTENTION_KEYS)
    for key, value in (attention or {}).items():
        if key not in ATTENTION_KEYS:
            raise ValueError(f"model.attention has unknown key {key!r}; known: {', '.join(ATTENTION_KEYS)}")
        options[key] = value
    if options["type"] not in ATTENTION_NAMES:
        raise ValueError(f"model.attention.type {options['type']!r} unknown; choose one of {', '.join(ATTENTION_NAMES)}")
    if options["position"] not in ("prehead", "block"):
        raise ValueError(f"model.attention.position must be 'prehead' or 'block', got {options['position']!r}")
    stages = options["fusion_stages"]
    if (not isinstance(stages, (list, tuple)) or not stages or len(set(stages)) != len(stages)
            or any(s not in (1, 2, 3, 4) for s in stages) or 4 not in stages):
        raise ValueError(f"model.attention.fusion_stages must be distinct stages from 1-4 including 4, got {stages!r}")
    options["fusion_stages"] = sorted(stages)
    return options


class HighResolutionNet(nn.Module):
    """HRNetV2 landmark network: images [N, 3, S, S] -> heatmaps [N, K, S/4, S/4].

    spec: stage spec (hrnet_spec(width) for HRNetV2-W<width>); num_landmarks: K;
    attention: dict(type, position, reduction, residual, fusion_stages, sub_sample) — see the
    module docstring; bn_momentum: BatchNorm momentum (0.01 as the official model);
    final_conv_kernel: 1 (official 300W setting) or 3.
    Weights are PyTorch defaults here; `nbutils.models.build_model` applies `init_weights`.
    """

    def __init__(self, spec: dict, num_landmarks: int = 68, attention: dict | None = None,
                 bn_momentum: float = 0.01, final_conv_kernel: int = 1):
        super().__init__()
        spec = _check_spec(spec)
        self.spec = spec
        self.attention_options = opts = attention_options(attention)

        def make_attention(channels: int):
            return create_attention(opts["type"], channels, opts["reduction"], opts["residual"],
                                    opts["sub_sample"], bn_momentum)

        block_attn = make_attention if opts["position"] == "block" else _no_attention

        stem = spec["stem_channels"]
        self.conv1 = nn.Conv2d(3, stem, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(stem, stem, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(stem, momentum=bn_momentum)
        self.relu = nn.ReLU(inplace=True)

        s1 = spec["stage1"]
        block1 = BLOCKS[s1["block"]]
        self.layer1 = make_residual_layer(block1, stem, s1["planes"], s1["num_blocks"], bn_momentum, block_attn)
        stage_channels = {1: [s1["planes"] * block1.expansion]}

        previous = stage_channels[1]
        for stage in (2, 3, 4):
            cfg = spec[f"stage{stage}"]
            block = BLOCKS[cfg["block"]]
            wanted = [c * block.expansion for c in cfg["num_channels"]]
            setattr(self, f"transition{stage - 1}", self._make_transition(previous, wanted, bn_momentum))
            modules, in_channels = [], wanted
            for _ in range(cfg["num_modules"]):
                modules.append(HighResolutionModule(block, cfg["num_blocks"], in_channels, cfg["num_channels"],
                                                    bn_momentum, block_attn))
                in_channels = modules[-1].out_channels
            setattr(self, f"stage{stage}", nn.Sequential(*modules))
            previous = stage_channels[stage] = in_channels

        self.stage_channels = stage_channels
        self.fusion_stages = opts["fusion_stages"]
        head_channels = sum(sum(stage_channels[s]) for s in self.fusion_stages)
        self.prehead_attn = make_attention(head_channels) if opts["position"] == "prehead" else None
        self.head = HeatmapHead(head_channels, num_landmarks, final_conv_kernel, bn_momentum)
        self.num_landmarks = num_landmarks

    @staticmethod
    def _make_transition(previous: Sequence[int], wanted: Sequence[int], bn_momentum: float) -> nn.ModuleList:
        """Existing branches: 3x3 conv only if the width changes; each new branch: stride-2
        3x3 convs from the lowest-resolution previous branch."""
        layers = nn.ModuleList()
        for i, c_out in enumerate(wanted):
            if i < len(previous):
                if previous[i] == c_out:
                    layers.append(nn.Identity())
                else:
                    layers.append(nn.Sequential(nn.Conv2d(previous[i], c_out, 3, padding=1, bias=False),
                                                nn.BatchNorm2d(c_out, momentum=bn_momentum),
                                                nn.ReLU(inplace=True)))
            else:
                steps = []
                for k in range(i + 1 - len(previous)):
                    c_in = previous[-1]
                    c_step = c_out if k == i - len(previous) else c_in
                    steps.append(nn.Sequential(nn.Conv2d(c_in, c_step, 3, stride=2, padding=1, bias=False),
                                               nn.BatchNorm2d(c_step, momentum=bn_momentum),
                                               nn.ReLU(inplace=True)))
                layers.append(nn.Sequential(*steps))
        return layers

    @staticmethod
    def _transit(transition: nn.ModuleList, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [layer(xs[i] if i < len(xs) else xs[-1]) for i, layer in enumerate(transition)]

    def forward_stages(self, x: torch.Tensor) -> dict[int, list[torch.Tensor]]:
        """Images -> {stage: list of branch outputs}, stage 1 = [layer1 output]."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        outputs = {1: [self.layer1(x)]}
        for stage in (2, 3, 4):
            xs = self._transit(getattr(self, f"transition{stage - 1}"), outputs[stage - 1])
            outputs[stage] = getattr(self, f"stage{stage}")(xs)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = self.forward_stages(x)
        fused = concat_upsampled([f for s in self.fusion_stages for f in outputs[s]])
        if self.prehead_attn is not None:
            fused = self.prehead_attn(fused)
        return self.head(fused)


def build_hrnet(model_cfg: dict) -> HighResolutionNet:
    """HRNetV2 from a model config section: width, num_landmarks, attention, bn_momentum and
    optionally `spec` (a full stage spec, overrides width) and `final_conv_kernel`."""
    spec = model_cfg.get("spec") or hrnet_spec(model_cfg.get("width", 18))
    return HighResolutionNet(spec, num_landmarks=int(model_cfg.get("num_landmarks", 68)),
                             attention=model_cfg.get("attention"),
                             bn_momentum=float(model_cfg.get("bn_momentum", 0.01)),
                             final_conv_kernel=int(model_cfg.get("final_conv_kernel", 1)))
