"""Looking inside a landmark network: attention gates, Grad-CAM, statistics at initialisation.

Everything here works on any landmark model whose heatmap head is `model.head` (every family
in this workbook) and on any attention module from `nbutils.models.attention`.

    attention_maps(model, images)           -> list of per-module channel weights / spatial maps
    grad_cam(model, images, landmarks)       -> [N, L, H, W] Grad-CAM of the head input
    init_statistics(model, images, targets)  -> per-conv-layer table: weight RMS, activation and
                                               gradient scale, Adam's relative step at a given lr
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from .models.attention import Attention


@contextmanager
def _hooks(handles: list):
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def attention_maps(model: nn.Module, images: torch.Tensor) -> list[dict]:
    """Channel weights and spatial maps of every attention module, in forward order.

    images: [N, 3, S, S] normalised crops. Returns one dict per module call with keys
    `name` (module path), `kind` (class name), `shape` (C, H, W of its input) and, where the
    module has them, `channel_weights` ([N, C] numpy, in (0, 1)) and `spatial_map`
    ([N, H, W] numpy: a gate in (0, 1) for CBAM/BAM, the per-position norm of the block's
    added response for non-local, in feature units).
    """
    records: list[dict] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, Attention):
            handles.append(module.register_forward_hook(
                lambda m, args, out, name=name: records.append(_describe(name, m, args[0]))))
    was_training = model.training
    model.eval()
    with _hooks(handles):
        model(images)
    model.train(was_training)
    return records


def _describe(name: str, module: Attention, x: torch.Tensor) -> dict:
    record = {"name": name, "kind": type(module).__name__, "shape": tuple(x.shape[1:])}
    gates = module.gates(x)
    for key in ("channel_weights", "spatial_map"):
        if key in gates:
            record[key] = gates[key].float().cpu().numpy()
    return record


def grad_cam(model: nn.Module, images: torch.Tensor, landmarks: list[int]) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) of the head's input features for chosen landmarks.

    The score of landmark k is its heatmap's peak value; the CAM is ReLU(sum_c w_c A_c) with
    w_c the spatially averaged gradient of the score w.r.t. channel c of the head input A.
    Returns [N, len(landmarks), H, W] numpy at the head input's resolution (heatmap pixels),
    each map scaled to [0, 1].
    """
    captured = {}

    def keep_input(module, args):
        features = args[0]
        features.retain_grad()
        captured["features"] = features

    was_training = model.training
    model.eval()
    cams = []
    with _hooks([model.head.register_forward_pre_hook(keep_input)]):
        for k in landmarks:
            model.zero_grad(set_to_none=True)
            heatmaps = model(images)
            score = heatmaps[:, k].flatten(1).amax(dim=1).sum()
            score.backward()
            features, grads = captured["features"], captured["features"].grad
            weights = grads.mean(dim=(2, 3), keepdim=True)
            cam = F.relu((weights * features).sum(dim=1)).detach()
            peak = cam.flatten(1).amax(dim=1)
            cams.append((cam / torch.where(peak > 0, peak, torch.ones_like(peak))[:, None, None]).cpu().numpy())
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return np.stack(cams, axis=1)


def init_statistics(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, lr: float = 1e-4) -> pd.DataFrame:
    """Per-conv-layer statistics of a freshly initialised model on one training batch.

    images: [N, 3, S, S]; targets: [N, K, H, W] heatmaps; lr: the learning rate Adam will use.
    Returns one row per Conv2d in forward order with columns `depth`, `layer`, `weight_rms`,
    `activation_std` (std of the conv's output), `grad_rms` (RMS of dL/dW for the MSE heatmap
    loss) and `adam_relative_step` = lr / weight_rms: Adam moves every weight by about lr
    per step whatever its gradient scale, so this is the fraction by which a layer changes in one
    step. Behind a BatchNorm a conv's output scale does not matter, its relative step does.
    The model is left in train mode and its gradients are cleared.
    """
    order: list[tuple[str, nn.Conv2d]] = []
    activation_std: dict[str, float] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            def record(m, args, out, name=name):
                if name not in activation_std:
                    order.append((name, m))
                    activation_std[name] = out.detach().float().std().item()
            handles.append(module.register_forward_hook(record))
    model.train()
    model.zero_grad(set_to_none=True)
    with _hooks(handles):
        loss = F.mse_loss(model(images), targets)
        loss.backward()
    rows = []
    for depth, (name, conv) in enumerate(order):
        weight_rms = conv.weight.detach().pow(2).mean().sqrt().item()
        grad = conv.weight.grad
        rows.append({
            "depth": depth, "layer": name, "weight_rms": weight_rms,
            "activation_std": activation_std[name],
            "grad_rms": grad.pow(2).mean().sqrt().item() if grad is not None else float("nan"),
            "adam_relative_step": lr / max(weight_rms, 1e-30),
        })
    model.zero_grad(set_to_none=True)
    return pd.DataFrame(rows)
