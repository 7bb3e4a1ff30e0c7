"""Weight initialisation by name, and ImageNet checkpoint import.

    init_weights(model, scheme) -> report dict
    load_pretrained(model, path_or_state_dict) -> dict(loaded=[...], skipped={key: reason}, missing=[...])

Schemes (the seed's "train from scratch" table):
    normal            conv/linear weight ~ N(0, 0.001^2)            (the reference's init_weights)
    xavier            nn.init.xavier_normal_ (gain 1): std = sqrt(2 / (fan_in + fan_out))
    kaiming           nn.init.kaiming_normal_, fan_in, ReLU gain:  std = sqrt(2 / fan_in)
    kaiming_fan_out   as kaiming with fan_out:                     std = sqrt(2 / fan_out)
    pretrained:<path> `normal` everywhere, then the backbone from an ImageNet checkpoint
(fan_in = C_in / groups * k_h * k_w, fan_out = C_out / groups * k_h * k_w for a conv.)
For every scheme conv/linear biases are set to 0 (the reference leaves PyTorch's default
uniform bias of the head convs; zero is deterministic and the difference is negligible), and
BatchNorm/GroupNorm weight = 1, bias = 0 — except norms marked `zero_init_gamma = True`
(the non-local W-BN), whose weight is 0 so the block starts as the identity.

Checkpoints: the official `hrnetv2_w18_imagenet_pretrained.pth` / `..._w32_...` (a plain
state_dict of the classification net) and timm `hrnet_w18`/`hrnet_w32` state_dicts use the
same backbone key names as `hrnet.HighResolutionNet` (timm's module names match the official
ones; its nn.Identity/nn.Upsample entries have no parameters), so no renaming is needed.
Wrappers are unwrapped: a dict holding `state_dict` or `model`, and key prefixes `module.`
(DataParallel/DDP), `model.` and `backbone.`. The classification-only layers (incre_modules,
downsamp_modules, final_layer, classifier) are reported as skipped.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from ..config import NeedsInput

INIT_SCHEMES = ("normal", "xavier", "kaiming", "kaiming_fan_out", "pretrained:<path>")
NORMAL_STD = 0.001
_WRAPPER_PREFIXES = ("module.", "model.", "backbone.")
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _init_weight(weight: torch.Tensor, scheme: str) -> None:
    if scheme == "normal":
        nn.init.normal_(weight, mean=0.0, std=NORMAL_STD)
    elif scheme == "xavier":
        nn.init.xavier_normal_(weight)
    elif scheme == "kaiming":
        nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu")
    elif scheme == "kaiming_fan_out":
        nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")
    else:
        raise ValueError(f"unknown init scheme {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}")


def check_init_source(scheme: str) -> str | None:
    """The checkpoint path of a `pretrained:<path>` scheme (None for the other schemes).

    Raises config.NeedsInput (a FileNotFoundError) naming the path when the file is not there, so a
    run that asks for pretrained weights stops as "needs input" instead of training from scratch.
    """
    if not isinstance(scheme, str):
        raise ValueError(f"model.init must be a string, got {scheme!r}")
    if not scheme.startswith("pretrained"):
        return None
    prefix, sep, path = scheme.partition(":")
    if prefix != "pretrained" or not sep or not path.strip():
        raise ValueError(f"model.init {scheme!r}: write pretrained:<path to checkpoint>")
    path = path.strip()
    if not Path(path).expanduser().is_file():
        raise NeedsInput(f"needs checkpoint: pretrained weights not found at {Path(path).expanduser().resolve()} "
                         f"(model.init {scheme!r}; set NBUTILS_PRETRAINED_W18 or --set model.init=pretrained:PATH)")
    return path


def init_weights(model: nn.Module, scheme: str = "normal") -> dict:
    """Initialise every conv/linear/norm layer of `model` in place by scheme name (see module doc).

    Returns {"scheme", "conv_layers", "linear_layers", "norm_layers", "zero_init_norms",
    "pretrained": load_pretrained report or None}. A missing pretrained file raises
    FileNotFoundError naming the path.
    """
    if not isinstance(scheme, str):
        raise ValueError(f"model.init must be a string, got {scheme!r}")
    pretrained_path = check_init_source(scheme)
    weight_scheme = "normal" if pretrained_path is not None else scheme
    _init_weight(torch.empty(1, 1), weight_scheme)  # validates the name before touching the model

    report = {"scheme": scheme, "conv_layers": 0, "linear_layers": 0, "norm_layers": 0,
              "zero_init_norms": 0, "pretrained": None}
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
                _init_weight(module.weight, weight_scheme)
                if module.bias is not None:
                    module.bias.zero_()
                report["linear_layers" if isinstance(module, nn.Linear) else "conv_layers"] += 1
            elif isinstance(module, _NORM_TYPES) and getattr(module, "weight", None) is not None:
                zero = getattr(module, "zero_init_gamma", False)
                module.weight.fill_(0.0 if zero else 1.0)
                module.bias.zero_()
                report["norm_layers"] += 1
                report["zero_init_norms"] += int(zero)
    if pretrained_path is not None:
        report["pretrained"] = load_pretrained(model, pretrained_path)
    return report


def _read_checkpoint(path_or_state_dict) -> Mapping[str, torch.Tensor]:
    if isinstance(path_or_state_dict, Mapping):
        state = path_or_state_dict
    else:
        path = Path(os.fspath(path_or_state_dict)).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained checkpoint not found: {path}")
        if path.suffix == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError as err:
                raise ImportError(f"{path}: reading .safetensors needs `pip install safetensors`") from err
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    if not all(isinstance(k, str) for k in state):
        raise ValueError("checkpoint is not a state_dict (keys must be parameter names)")
    return state


def _strip_wrapper_prefix(key: str, model_keys) -> str:
    for prefix in _WRAPPER_PREFIXES:
        if key not in model_keys and key.startswith(prefix):
            key = key[len(prefix):]
    return key


def load_pretrained(model: nn.Module, path_or_state_dict) -> dict:
    """Copy every checkpoint tensor whose name and shape match into `model` (in place).

    path_or_state_dict: a .pth/.pt file (official HRNet ImageNet or timm layout, optionally
    wrapped) or an in-memory state_dict.
    Returns dict(loaded=[model keys copied], skipped={checkpoint key: reason}, missing=[model
    keys the checkpoint did not provide]). Reasons: "not in landmark model", or
    "shape mismatch: checkpoint (a, b) vs model (c, d)", or "not a tensor".
    """
    state = _read_checkpoint(path_or_state_dict)
    model_state = model.state_dict()
    loaded, skipped, updates = [], {}, {}
    for raw_key, value in state.items():
        key = _strip_wrapper_prefix(raw_key, model_state)
        if not isinstance(value, torch.Tensor):
            skipped[raw_key] = "not a tensor"
        elif key not in model_state:
            skipped[raw_key] = "not in landmark model"
        elif tuple(value.shape) != tuple(model_state[key].shape):
            skipped[raw_key] = (f"shape mismatch: checkpoint {tuple(value.shape)} "
                                f"vs model {tuple(model_state[key].shape)}")
        else:
            updates[key] = value
            loaded.append(key)
    with torch.no_grad():
        for key, value in updates.items():
            model_state[key].copy_(value.to(model_state[key].dtype))
    missing = [k for k in model_state if k not in updates]
    return {"loaded": loaded, "skipped": skipped, "missing": missing}
