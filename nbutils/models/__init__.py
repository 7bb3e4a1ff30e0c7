"""Landmark models by name.

    build_model(model_cfg) -> nn.Module     images [N, 3, S, S] -> heatmaps [N, K, S/4, S/4]
    register_model(name)(builder)           builder(model_cfg) -> nn.Module (weights untouched)
    init_weights(model, scheme) -> report   see init.py
    load_pretrained(model, path_or_state_dict) -> dict(loaded, skipped, missing)
    model_cost(model, input_size) -> {"params_m", "gflops"}

`build_model` fills keys missing from `model_cfg` with `nbutils.config.MODEL_DEFAULTS`
(nested dicts merged), builds the family named by model_cfg["name"], applies
`init_weights(model, model_cfg["init"])` and keeps that report as `model.init_report`; a model
with an `after_init()` method (weights transferred from another network) then runs it and keeps
its report as `model.pretrained_report`.
Families register here, one line each, below the registry.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..config import MODEL_DEFAULTS, merge
from .cost import count_macs, model_cost
from .hrnet import HighResolutionNet, build_hrnet, hrnet_spec
from .init import INIT_SCHEMES, check_init_source, init_weights, load_pretrained

MODEL_REGISTRY: dict[str, Callable[[dict], nn.Module]] = {}


def register_model(name: str):
    """Decorator: make `builder(model_cfg) -> nn.Module` available as model_cfg["name"] == name."""
    def add(builder):
        if name in MODEL_REGISTRY and MODEL_REGISTRY[name] is not builder:
            raise ValueError(f"model name {name!r} is already registered")
        MODEL_REGISTRY[name] = builder
        return builder
    return add


def build_model(model_cfg: dict | None = None) -> nn.Module:
    """Build and initialise the landmark model described by a `model` config section."""
    cfg = merge(MODEL_DEFAULTS, model_cfg or {})
    name = cfg["name"]
    if name not in MODEL_REGISTRY:
        raise ValueError(f"model.name {name!r} unknown; registered: {', '.join(sorted(MODEL_REGISTRY))}")
    model = MODEL_REGISTRY[name](cfg)
    model.init_report = init_weights(model, cfg["init"])
    # Families whose weights come from elsewhere (CIFAR-10 cells, a supernet) load them after the init.
    after_init = getattr(model, "after_init", None)
    if callable(after_init):
        model.pretrained_report = after_init()
    return model


register_model("hrnet")(build_hrnet)

__all__ = ["MODEL_REGISTRY", "register_model", "build_model", "init_weights", "load_pretrained", "model_cost",
           "count_macs", "HighResolutionNet", "hrnet_spec", "INIT_SCHEMES", "check_init_source"]

from . import darts  # noqa: E402,F401  (registers model name "darts")
from . import densenas  # noqa: E402,F401  (registers model name "densenas")
from . import multiscale  # noqa: E402,F401  (registers model name "multiscale")
