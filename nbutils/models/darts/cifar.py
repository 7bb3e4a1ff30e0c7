"""The DARTS CIFAR-10 evaluation network, its training recipe, and reading released checkpoints.

`NetworkCIFAR(C=36, num_classes=10, layers=20, auxiliary=True, genotype=DARTS_V2)` reproduces the
reference `model.NetworkCIFAR` module for module (names: stem.0/stem.1, cells.N.preprocess{0,1},
cells.N._ops.K.op.*, auxiliary_head.features.*, auxiliary_head.classifier, classifier), so a
released `cifar10_model.pt` state_dict loads with `load_state_dict(strict=True)`.
Parameter count for DARTS_V2, C=36, 20 cells: 3,349,342 without the auxiliary head (what the
reference's `utils.count_parameters_in_MB` prints, the paper's "3.3M"), 3,825,768 with it (DARTS_V1: 3,169,414 / 3,645,840).

CIFAR-10 is read from its standard python-pickle layout: <root>/cifar-10-batches-py/
data_batch_1..5 and test_batch (or <root> itself being that folder), each a pickled dict
with b"data" (uint8, N x 3072, channel-major 32x32 planes) and b"labels".
"""
from __future__ import annotations

import math
import os
import pickle
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .genotypes import genotype_to_dict, parse_genotype
from .ops import Cell

CIFAR_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR_STD = (0.24703233, 0.24348505, 0.26158768)


class AuxiliaryHeadCIFAR(nn.Module):
    """Auxiliary classifier on the 8x8 features after the second reduction (reference layout)."""

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),  # 8x8 -> 2x2
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.flatten(1))


def cell_plan(layers: int, C: int, stem_channels: int, multipliers: tuple[int, int]):
    """Channel plan of a DARTS stack: one (C_prev_prev, C_prev, C, reduction, reduction_prev) per cell.

    Reductions (channels x2, resolution /2) at cells layers//3 and 2*layers//3, as the reference.
    multipliers = (normal cell output multiplier, reduction cell output multiplier).
    """
    plan = []
    C_prev_prev, C_prev, C_curr = stem_channels, stem_channels, C
    reduction_prev = False
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            C_curr *= 2
        plan.append((C_prev_prev, C_prev, C_curr, reduction, reduction_prev))
        reduction_prev = reduction
        C_prev_prev, C_prev = C_prev, multipliers[1 if reduction else 0] * C_curr
    return plan


class NetworkCIFAR(nn.Module):
    """DARTS CIFAR-10 network: 3x3 stem to 3C channels, `layers` cells, global pool, linear classifier.

    forward(x [N,3,32,32]) -> (logits [N,classes], aux_logits or None); aux logits only in training.
    Set `drop_path_prob` (fraction) before training; the reference ramps it linearly over epochs.
    """

    def __init__(self, C: int = 36, num_classes: int = 10, layers: int = 20, auxiliary: bool = True,
                 genotype="DARTS_V2"):
        super().__init__()
        genotype = parse_genotype(genotype)
        self.genotype = genotype
        self._layers = layers
        self._auxiliary = auxiliary
        self.drop_path_prob = 0.0
        stem_channels = 3 * C
        self.stem = nn.Sequential(nn.Conv2d(3, stem_channels, 3, padding=1, bias=False), nn.BatchNorm2d(stem_channels))
        multipliers = (len(genotype.normal_concat), len(genotype.reduce_concat))
        self.cells = nn.ModuleList()
        C_to_auxiliary = None
        for i, (cpp, cp, c, red, red_prev) in enumerate(cell_plan(layers, C, stem_channels, multipliers)):
            cell = Cell(genotype, cpp, cp, c, red, red_prev)
            self.cells.append(cell)
            if i == 2 * layers // 3:
                C_to_auxiliary = cell.multiplier * c
        C_last = self.cells[-1].multiplier * cell_plan(layers, C, stem_channels, multipliers)[-1][2]
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadCIFAR(C_to_auxiliary, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_last, num_classes)

    def forward(self, x):
        logits_aux = None
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == 2 * self._layers // 3 and self._auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return logits, logits_aux


def count_parameters(model: nn.Module, exclude_auxiliary: bool = True) -> int:
    """Number of parameters; like the reference's count_parameters_in_MB, skips names containing 'auxiliary'."""
    return sum(p.numel() for name, p in model.named_parameters() if not (exclude_auxiliary and "auxiliary" in name))


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
class _Unpickled(nn.Module):
    """Stand-in for classes of foreign code (e.g. the reference's `model.NetworkCIFAR`) inside a
    pickled whole model: the nn.Module state (_parameters, _buffers, _modules) is restored into it,
    so state_dict() works without importing that code. Non-module objects of that code (e.g. a
    namedtuple genotype stored as an attribute) are rebuilt as stand-ins holding their arguments."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.pickled_args = (args, kwargs)

    def forward(self, *args):
        raise RuntimeError("a stand-in for an unpickled foreign module cannot run; use its state_dict")


# "__builtin__"/"copy_reg": protocol-2 pickles name builtins the Python 2 way (mapped back by pickle itself)
_SAFE_MODULE_PREFIXES = ("torch", "collections", "numpy", "builtins", "__builtin__", "copyreg", "copy_reg", "_codecs")


_SAFE_BUILTINS = {"set", "frozenset", "dict", "list", "tuple", "int", "float", "complex", "bool", "str", "bytes",
                  "bytearray", "slice", "range", "object", "getattr"}


class _StandInUnpickler(pickle.Unpickler):
    """Unpickler that resolves only torch/numpy/stdlib containers; any other class becomes a stand-in."""

    def find_class(self, module, name):
        if module in ("builtins", "__builtin__") and name not in _SAFE_BUILTINS:
            raise pickle.UnpicklingError(f"checkpoint refers to builtins.{name}, which a model pickle never needs")
        if module.split(".")[0] in _SAFE_MODULE_PREFIXES:
            return super().find_class(module, name)
        return type(name, (_Unpickled,), {"__module__": "nbutils.models.darts.cifar._foreign"})


class _StandInPickleModule:
    Unpickler = _StandInUnpickler
    __name__ = "nbutils_standin_pickle"

    @staticmethod
    def load(file, **kwargs):
        return _StandInUnpickler(file, **kwargs).load()


def _strip_prefixes(state: dict) -> dict:
    """Remove DataParallel's 'module.' (and torch.compile's '_orig_mod.') prefixes."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_cifar_state_dict(path) -> tuple[dict, dict]:
    """Read a CIFAR-10 DARTS checkpoint: a state_dict, a dict holding one ("state_dict"/"model"/"net"),
    or a pickled whole model (classes from foreign code, e.g. the reference's `model.NetworkCIFAR`, are
    replaced by stand-ins, so that code need not be importable; like any torch.load of a pickle,
    only open files you trust).

    Returns (state_dict with 'module.' prefixes stripped, meta) where meta may carry "genotype",
    "layers", "init_channels" when the file was written by `train_cifar`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a plain tensor dict: try a pickled model with stand-in classes
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_StandInPickleModule)
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"{path}: cannot read as a PyTorch checkpoint ({type(err).__name__}: {err})") from err
    meta = {}
    if isinstance(obj, nn.Module):
        state = obj.state_dict()
    elif isinstance(obj, dict):
        state = obj
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if key in obj and isinstance(obj[key], (dict, nn.Module)):
                inner = obj[key]
                state = inner.state_dict() if isinstance(inner, nn.Module) else inner
                meta = {k: v for k, v in obj.items() if k != key}
                break
    else:
        raise ValueError(f"{path}: expected a state_dict or a model, found {type(obj).__name__}")
    state = {k: v for k, v in state.items() if torch.is_tensor(v)}
    if not state:
        raise ValueError(f"{path}: no tensors found in the checkpoint")
    return _strip_prefixes(state), meta


# ---------------------------------------------------------------------------------------------
# CIFAR-10 data and training
# ---------------------------------------------------------------------------------------------
def find_cifar10(root) -> Path | None:
    """The cifar-10-batches-py folder under/at `root`, or None when it has no data_batch_1 + test_batch."""
    if root is None:
        return None
    root = Path(root)
    for candidate in (root / "cifar-10-batches-py", root):
        if (candidate / "data_batch_1").is_file() and (candidate / "test_batch").is_file():
            return candidate
    return None


def load_cifar10(root) -> dict:
    """{"train": (images uint8 [N,32,32,3], labels int64 [N]), "test": (...)} from the python-pickle layout."""
    folder = find_cifar10(root)
    if folder is None:
        raise FileNotFoundError(f"needs CIFAR-10: looked for {Path(root) / 'cifar-10-batches-py'}/data_batch_1 "
                                "and test_batch (python-pickle layout)")

    def read(name):
        path = folder / name
        with open(path, "rb") as fh:
            try:
                batch = pickle.load(fh, encoding="bytes")
            except Exception as err:  # noqa: BLE001
                raise ValueError(f"{path}: not a CIFAR-10 pickle ({err})") from err
        data = batch.get(b"data", batch.get("data"))
        labels = batch.get(b"labels", batch.get("labels"))
        if data is None or labels is None:
            raise ValueError(f"{path}: missing b'data' or b'labels'")
        data = np.asarray(data, dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != data.shape[0]:
            raise ValueError(f"{path}: b'data' must be N x 3072 with N labels, got {data.shape} / {len(labels)}")
        return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(labels, dtype=np.int64)

    train_names = sorted(p.name for p in folder.glob("data_batch_*"))
    parts = [read(name) for name in train_names]
    return {"train": (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])),
            "test": read("test_batch")}


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def augment_cifar_batch(x: torch.Tensor, generator: torch.Generator, cutout_length: int = 16) -> torch.Tensor:
    """DARTS train transforms on a normalised batch: random crop 32 with 4-pixel zero padding,
    horizontal flip p=0.5, cutout (one square of `cutout_length` pixels zeroed; 0 disables)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=generator)
    dy = torch.randint(0, 9, (n,), generator=generator)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    if cutout_length > 0:
        cy = torch.randint(0, h, (n,), generator=generator)
        cx = torch.randint(0, w, (n,), generator=generator)
        ys = torch.arange(h).view(1, h, 1)
        xs = torch.arange(w).view(1, 1, w)
        half = cutout_length // 2
        inside = ((ys >= (cy - half).view(n, 1, 1)) & (ys < (cy + half).view(n, 1, 1))
                  & (xs >= (cx - half).view(n, 1, 1)) & (xs < (cx + half).view(n, 1, 1)))
        out = out * (~inside).unsqueeze(1).to(out.dtype)
    return out


def train_cifar(root, out_path, epochs: int = 600, batch_size: int = 96, lr: float = 0.025, lr_min: float = 0.0,
                momentum: float = 0.9, weight_decay: float = 3e-4, grad_clip: float = 5.0, cutout_length: int = 16,
                auxiliary_weight: float = 0.4, drop_path_prob: float = 0.2, genotype="DARTS_V2", layers: int = 20,
                init_channels: int = 36, max_steps_per_epoch: int | None = None, max_train: int | None = None,
                seed: int = 0, device=None, progress: bool = True) -> dict:
    """Train the DARTS CIFAR-10 network with the DARTS recipe and save it atomically to out_path.

    Recipe (reference train.py): SGD(lr 0.025, momentum 0.9, wd 3e-4) with cosine annealing to
    lr_min over `epochs`, grad-norm clip 5, cutout 16, auxiliary loss weight 0.4 (0 disables
    the auxiliary head), drop-path probability ramped linearly from 0 to drop_path_prob.
    The checkpoint is {"state_dict", "genotype" (dict), "layers", "init_channels", "auxiliary",
    "test_accuracy", "epochs"}; returns that metadata plus "path" and "history" (per epoch
    train loss, train/test accuracy as fractions).
    """
    data = load_cifar10(root)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    genotype = parse_genotype(genotype)
    model = NetworkCIFAR(init_channels, 10, layers, auxiliary_weight > 0, genotype).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    x_train, y_train = data["train"]
    if max_train is not None:
        x_train, y_train = x_train[:max_train], y_train[:max_train]
    x_train, y_train = _to_tensor(x_train), torch.from_numpy(y_train)
    x_test, y_test = _to_tensor(data["test"][0]), torch.from_numpy(data["test"][1])
    history = []
    for epoch in range(epochs):
        started = time.time()
        for group in optimizer.param_groups:
            group["lr"] = lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * epoch / epochs))
        model.drop_path_prob = drop_path_prob * epoch / epochs
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        losses, correct, seen = [], 0, 0
        for step, start in enumerate(range(0, len(order), batch_size)):
            if max_steps_per_epoch is not None and step >= max_steps_per_epoch:
                break
            idx = order[start:start + batch_size]
            x = augment_cifar_batch(x_train[idx], generator, cutout_length).to(device)
            y = y_train[idx].to(device)
            logits, logits_aux = model(x)
            loss = F.cross_entropy(logits, y)
            if logits_aux is not None:
                loss = loss + auxiliary_weight * F.cross_entropy(logits_aux, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        test_acc = cifar_accuracy(model, x_test, y_test, batch_size=256, device=device)
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                        "train_accuracy": correct / max(seen, 1), "test_accuracy": test_acc,
                        "seconds": time.time() - started})
        if progress:
            print(f"[cifar] epoch {epoch + 1}/{epochs} loss {history[-1]['train_loss']:.4f} "
                  f"test acc {test_acc:.4f} ({history[-1]['seconds']:.1f}s)", flush=True)
    meta = {"genotype": genotype_to_dict(genotype), "layers": layers, "init_channels": init_channels,
            "auxiliary": auxiliary_weight > 0, "test_accuracy": history[-1]["test_accuracy"] if history else None,
            "epochs": epochs}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, **meta}, tmp)
    os.replace(tmp, out_path)
    return {**meta, "path": str(out_path), "history": history}


@torch.no_grad()
def cifar_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256, device="cpu") -> float:
    """Top-1 accuracy (fraction) of `model` on normalised images x with labels y."""
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits, _ = model(x[start:start + batch_size].to(device))
        correct += int((logits.argmax(1).cpu() == y[start:start + batch_size]).sum())
    return correct / max(len(x), 1)
