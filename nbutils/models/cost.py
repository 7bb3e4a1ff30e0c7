"""Model cost: parameter count and multiply-accumulates of conv and linear layers.

GFLOPs here follow the convention of the HRNet papers (and of most NAS tables): the number of
multiply-accumulates (MACs) of convolutions and fully connected layers, divided by 1e9, for one
image. Bias additions, BatchNorm, activations, pooling, resizing and the matrix products inside
attention modules (e.g. non-local affinities) are not counted. HRNetV2-W18 with 68 heatmaps at
256x256 input counts 4.66 G.

MACs of one layer for one image:
    Conv (any groups, dilation, stride):  C_out * H_out * W_out * (C_in / groups) * k_h * k_w
    Transposed conv:                      C_in * H_in * W_in * (C_out / groups) * k_h * k_w
    Linear:                               (output elements) * in_features
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def _conv_macs(module: nn.modules.conv._ConvNd, inputs, output: torch.Tensor) -> int:
    kernel = math.prod(module.kernel_size)
    if module.transposed:
        x = inputs[0]
        return x[0].numel() * (module.out_channels // module.groups) * kernel
    return output[0].numel() * (module.in_channels // module.groups) * kernel


def _linear_macs(module: nn.Linear, inputs, output: torch.Tensor) -> int:
    per_image = output.numel() // output.shape[0] if output.dim() > 1 else output.numel()
    return per_image * module.in_features


def count_macs(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Run `example` (batch of one) through `model` and return {layer name: MACs} for every
    conv/linear layer call (a layer called twice appears once with its summed MACs)."""
    macs: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            count = _conv_macs
        elif isinstance(module, nn.Linear):
            count = _linear_macs
        else:
            continue

        def hook(mod, inputs, output, name=name, count=count):
            macs[name] = macs.get(name, 0) + count(mod, inputs, output)
        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return macs


def model_cost(model: nn.Module, input_size: int | tuple[int, int]) -> dict[str, float]:
    """{"params_m": parameters / 1e6, "gflops": conv+linear MACs / 1e9} for one 3-channel
    image of input_size x input_size pixels (or (height, width))."""
    height, width = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    example = torch.zeros(1, 3, height, width, device=device, dtype=dtype)
    macs = count_macs(model, example)
    params = sum(p.numel() for p in model.parameters())
    return {"params_m": params / 1e6, "gflops": sum(macs.values()) / 1e9}
