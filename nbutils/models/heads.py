"""Heatmap head shared by every landmark backbone (HRNet, DARTS, DenseNAS, multi-scale).

The head of HRNetV2 for facial landmarks: bring every feature map to the resolution of the
first (highest-resolution) one with bilinear upsampling, concatenate along channels, then

    1x1 conv (C -> C, bias) -> BN -> ReLU -> kxk conv (C -> K landmarks, bias)

`HeatmapHead` is an `nn.Sequential` so its parameters are named `head.0.*`, `head.1.*`,
`head.3.*` exactly as in the official HRNet-Facial-Landmark-Detection model when the parent
module calls it `head`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def concat_upsampled(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate feature maps along channels after bilinearly resizing each to features[0]'s size.

    features: tensors [N, C_i, H_i, W_i]; the first one sets the output size (heatmap pixels).
    Returns [N, sum(C_i), H_0, W_0]. Bilinear with align_corners=False, as the official head.
    """
    if len(features) == 0:
        raise ValueError("concat_upsampled needs at least one feature map")
    height, width = features[0].shape[-2:]
    resized = [f if f.shape[-2:] == (height, width)
               else F.interpolate(f, size=(height, width), mode="bilinear", align_corners=False)
               for f in features]
    return torch.cat(resized, dim=1)


class HeatmapHead(nn.Sequential):
    """1x1 conv -> BN -> ReLU -> final conv: fused features [N, C, H, W] -> heatmaps [N, K, H, W].

    in_channels: channels of the fused (concatenated) features, e.g. 270 for HRNetV2-W18.
    num_landmarks: K output heatmaps (68 for 300W).
    final_kernel: 1 (the 300W config's FINAL_CONV_KERNEL) or 3; padding keeps the size.
      (The official code pads the first 1x1 conv by 1 when FINAL_CONV_KERNEL is 3, which grows
      the map by 2 pixels; here only the final conv uses the kernel, padded by k // 2.)
    """

    def __init__(self, in_channels: int, num_landmarks: int, final_kernel: int = 1, bn_momentum: float = 0.01):
        if final_kernel not in (1, 3):
            raise ValueError(f"final_kernel must be 1 or 3, got {final_kernel}")
        super().__init__(
            nn.Conv2d(in_channels, in_channels, kernel_size=1),
            nn.BatchNorm2d(in_channels, momentum=bn_momentum),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, num_landmarks, kernel_size=final_kernel, padding=final_kernel // 2),
        )
        self.in_channels = in_channels
        self.num_landmarks = num_landmarks
