"""The one bi-level architecture-search loop, shared by DARTS, DenseNAS and multi-scale.

DARTS (Liu et al., ICLR 2019) alternates two steps on two disjoint halves of the
training set:

* **arch step** (on the "arch" half): update the architecture parameters α (and β,
  whatever the supernet exposes) with Adam on the validation loss. First order uses
  the current weights w; second order uses the one-step unrolled weights
  w' = w - ξ·(momentum + ∇w L_train + wd·w) and subtracts ξ·∇²_{α,w} L_train · ∇w' L_val,
  the Hessian-vector product taken by central finite differences with
  r = 0.01 / ||∇w' L_val|| (as in the DARTS reference `architect.py`).
* **weight step** (on the "weights" half): SGD on the training loss, optionally with
  the architecture perturbed (SmoothDARTS): `random` adds U(-ε, ε), `adversarial`
  uses a PGD perturbation in the L∞ ball of radius ε that maximises the training loss.
  ε ramps linearly over the search (see `smooth_epsilon_at`).

Supernet protocol (duck-typed; DARTS and DenseNAS supernets implement it):

    weight_parameters() -> iterable of nn.Parameter       the ordinary weights w
    arch_parameters()   -> list of nn.Parameter           α (and β); updated by Adam
    forward(x)          -> heatmaps [N, K, S/4, S/4]
    derive()            -> JSON-serialisable architecture (e.g. a genotype dict)
    arch_snapshot()     -> {name: np.ndarray}             for plotting α over epochs
  optional:
    arch_loss_extra()   -> scalar tensor added to the arch-step loss
                           (e.g. DenseNAS cost term factor·log(E[cost]))
    on_epoch_start(epoch, total_epochs)                    noise resampling, β decays
    epoch_info()        -> {name: float}                   logged into the history
    arch_perturbation   attribute (list of tensors shaped like arch_parameters(), or None):
                           when present, SmoothDARTS perturbations are handed to the
                           supernet through it and it adds them to the *softmax-ed*
                           architecture weights (SDARTS' space, where ε = 0.03 means
                           3 percentage points); when absent the loop perturbs the raw
                           arch parameters in place and restores them afterwards.

Noise (NoisyDARTS) and DARTS- live inside the supernet (they change its forward), so the
supernet builder reads `search.noise`, `search.noise_scale`, `search.darts_minus(_beta)` and
`search.supernet` (its size) from the same section; the loop only calls `on_epoch_start` for
their schedules.

`search(cfg, run_dir, supernet)` reads `cfg["search"]` (defaults in SEARCH_DEFAULTS),
`cfg["data"]` and `cfg["train"]` (input/heatmap size, sigma, augmentation), runs the loop
on the landmark data with the MSE heatmap loss, evaluates the supernet on common + challenge
after re-estimating its BN statistics (`recalibrate_batchnorm`; "search NME" = full-set NME in %),
and writes into run_dir atomically:
`search_arch.json` (derived architecture + search NME), `search_history.json`
(per-epoch losses and α snapshots) and `search_supernet.pt` (supernet state_dict).
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import read_json, write_json_atomic

SEARCH_DEFAULTS = {
    "epochs": 50,               # search epochs
    "batch_size": 16,           # images per step, for both halves
    "w_lr": 0.025,              # SGD learning rate of the weights (cosine-annealed to w_lr_min)
    "w_lr_min": 0.001,
    "w_momentum": 0.9,
    "w_weight_decay": 3.0e-4,
    "w_grad_clip": 5.0,         # max global grad norm of the weights (0 = off)
    "arch_lr": 3.0e-4,          # Adam on the architecture parameters
    "arch_betas": [0.5, 0.999],
    "arch_weight_decay": 1.0e-3,
    "order": "first",           # first | second (unrolled, finite-difference Hessian-vector product)
    "update_window": [0, None], # [start, end) epochs in which α/β are updated; None = until the end
    "train_portion": 0.5,       # fraction of the train subset used for weights; the rest drives α
    "smooth": "none",           # none | random | adversarial   (SmoothDARTS on the weight step)
    "smooth_epsilon": 0.03,     # final ε of the perturbation (0.03 = SDARTS-RS; SDARTS-ADV used 0.3)
    "smooth_epsilon_start": 0.0,# ε at epoch 0; ramps linearly to smooth_epsilon at the last epoch
    "adversarial_steps": 7,     # PGD steps for smooth = adversarial
    "noise": "none",            # none | step | epoch  (NoisyDARTS, read by the supernet builder)
    "noise_scale": 0.1,         # noise std = noise_scale x std of the skip output
    "darts_minus": False,       # DARTS-: auxiliary skip with weight β decaying to 0 (supernet builder)
    "darts_minus_beta": 1.0,    # DARTS- β at epoch 0
    "supernet": {},             # family-specific supernet size, read by the family's build_supernet
                                # (darts: layers 8, init_channels 16, head_channels 128, steps 4, multiplier 4)
    "seed": 111,
    "max_steps_per_epoch": None,# cap on steps per epoch (smoke runs)
    "eval": True,               # evaluate the supernet on common + challenge at the end (search NME)
    "save_supernet": True,      # write search_supernet.pt into run_dir
}

SMOOTH_MODES = ("none", "random", "adversarial")
NOISE_MODES = ("none", "step", "epoch")
ORDERS = ("first", "second")


def search_config(search_cfg: dict | None) -> dict:
    """SEARCH_DEFAULTS overlaid with `search_cfg`; unknown keys and bad values raise ValueError naming the key."""
    merged = copy.deepcopy(SEARCH_DEFAULTS)
    for key, value in (search_cfg or {}).items():
        if key not in SEARCH_DEFAULTS:
            raise ValueError(f"search.{key}: unknown key (known: {', '.join(sorted(SEARCH_DEFAULTS))})")
        merged[key] = value
    if merged["order"] not in ORDERS:
        raise ValueError(f"search.order: {merged['order']!r} is not one of {ORDERS}")
    if merged["smooth"] not in SMOOTH_MODES:
        raise ValueError(f"search.smooth: {merged['smooth']!r} is not one of {SMOOTH_MODES}")
    if merged["noise"] not in NOISE_MODES:
        raise ValueError(f"search.noise: {merged['noise']!r} is not one of {NOISE_MODES}")
    window = merged["update_window"]
    if isinstance(window, str):  # "10-30" as written in the seed tables
        try:
            start, end = (int(part) for part in window.split("-"))
        except ValueError as err:
            raise ValueError(f"search.update_window: {window!r} is not 'start-end'") from err
        window = [start, end]
    if not (isinstance(window, (list, tuple)) and len(window) == 2):
        raise ValueError(f"search.update_window: expected [start, end), got {window!r}")
    merged["update_window"] = [int(window[0]), None if window[1] is None else int(window[1])]
    if not 0.0 < float(merged["train_portion"]) < 1.0:
        raise ValueError(f"search.train_portion: must be in (0, 1), got {merged['train_portion']!r}")
    return merged


def arch_update_active(epoch: int, window: list, total_epochs: int) -> bool:
    """True when α/β are updated in `epoch` (0-based): start <= epoch < end (end None = total_epochs)."""
    start, end = window
    end = total_epochs if end is None else end
    return start <= epoch < end


def smooth_epsilon_at(epoch: int, total_epochs: int, epsilon: float, epsilon_start: float = 0.0) -> float:
    """Linear ramp of the SmoothDARTS radius: epsilon_start at epoch 0, epsilon at the last epoch."""
    if total_epochs <= 1:
        return float(epsilon)
    return float(epsilon_start + (epsilon - epsilon_start) * epoch / (total_epochs - 1))


def heatmap_mse_loss(supernet: nn.Module, batch: dict) -> torch.Tensor:
    """Mean squared error between predicted and target heatmaps (the reference's loss)."""
    return F.mse_loss(supernet(batch["image"]), batch["heatmaps"])


def _flat_norm(tensors: Iterable[torch.Tensor | None]) -> torch.Tensor:
    return torch.sqrt(sum((t.detach() ** 2).sum() for t in tensors if t is not None))


class BilevelOptimizer:
    """One weight step and one arch step of DARTS on a supernet (the core of `search`).

    loss_fn(supernet, batch) -> scalar training/validation loss; for the landmark task it is
    `heatmap_mse_loss`. Tests drive this class directly on toy problems.
    """

    def __init__(self, supernet: nn.Module, loss_fn: Callable, *, w_lr: float = 0.025, w_momentum: float = 0.9,
                 w_weight_decay: float = 3e-4, w_grad_clip: float = 5.0, arch_lr: float = 3e-4,
                 arch_betas=(0.5, 0.999), arch_weight_decay: float = 1e-3, order: str = "first",
                 adversarial_steps: int = 7):
        if order not in ORDERS:
            raise ValueError(f"order: {order!r} is not one of {ORDERS}")
        self.supernet = supernet
        self.loss_fn = loss_fn
        self.order = order
        self.w_params = [p for p in supernet.weight_parameters() if p.requires_grad]
        self.arch_params = list(supernet.arch_parameters())
        if not self.arch_params:
            raise ValueError("supernet.arch_parameters() returned nothing: nothing to search")
        arch_ids = {id(p) for p in self.arch_params}
        if any(id(p) in arch_ids for p in self.w_params):
            raise ValueError("supernet.weight_parameters() must not include arch parameters")
        self.w_momentum = w_momentum
        self.w_weight_decay = w_weight_decay
        self.w_grad_clip = w_grad_clip
        self.adversarial_steps = adversarial_steps
        self.w_optimizer = torch.optim.SGD(self.w_params, lr=w_lr, momentum=w_momentum, weight_decay=w_weight_decay)
        self.arch_optimizer = torch.optim.Adam(self.arch_params, lr=arch_lr, betas=tuple(arch_betas),
                                               weight_decay=arch_weight_decay)

    @property
    def w_lr(self) -> float:
        return self.w_optimizer.param_groups[0]["lr"]

    def set_w_lr(self, lr: float) -> None:
        for group in self.w_optimizer.param_groups:
            group["lr"] = lr

    # ---- arch step -----------------------------------------------------------------
    def _arch_loss(self, batch) -> torch.Tensor:
        loss = self.loss_fn(self.supernet, batch)
        extra = getattr(self.supernet, "arch_loss_extra", None)
        if extra is not None:
            loss = loss + extra()
        return loss

    def arch_gradients(self, train_batch, val_batch):
        """(validation loss, [d loss / d arch param]) for the configured order; nothing is updated."""
        if self.order == "first":
            loss = self._arch_loss(val_batch)
            return loss, list(torch.autograd.grad(loss, self.arch_params, allow_unused=True))
        return self._unrolled_arch_grads(train_batch, val_batch)

    def arch_step(self, train_batch, val_batch) -> float:
        """Update α on `val_batch` (first or second order); returns the validation loss before the update."""
        self.arch_optimizer.zero_grad(set_to_none=True)
        loss, grads = self.arch_gradients(train_batch, val_batch)
        for param, grad in zip(self.arch_params, grads):
            param.grad = torch.zeros_like(param) if grad is None else grad.detach()
        self.arch_optimizer.step()
        return float(loss.detach())

    def _unrolled_arch_grads(self, train_batch, val_batch):
        """DARTS second-order gradient: ∇α L_val(w', α) - ξ ∇²_{α,w} L_train(w, α) ∇w' L_val(w', α)."""
        xi = self.w_lr
        originals = [p.detach().clone() for p in self.w_params]
        train_loss = self.loss_fn(self.supernet, train_batch)
        w_grads = torch.autograd.grad(train_loss, self.w_params, allow_unused=True)
        with torch.no_grad():  # one virtual SGD step, including momentum and weight decay like the real step
            for p, g in zip(self.w_params, w_grads):
                buf = self.w_optimizer.state.get(p, {}).get("momentum_buffer")
                step = self.w_weight_decay * p
                if g is not None:
                    step = step + g
                if buf is not None:
                    step = step + self.w_momentum * buf
                p.sub_(xi * step)
        val_loss = self._arch_loss(val_batch)
        grads = torch.autograd.grad(val_loss, self.arch_params + self.w_params, allow_unused=True)
        d_alpha = list(grads[:len(self.arch_params)])
        d_w_unrolled = list(grads[len(self.arch_params):])
        with torch.no_grad():
            for p, orig in zip(self.w_params, originals):
                p.copy_(orig)
        hessian = self._hessian_vector_product(d_w_unrolled, train_batch)
        result = []
        for da, h in zip(d_alpha, hessian):
            if da is None and h is None:
                result.append(None)
            else:
                da = torch.zeros_like(h) if da is None else da
                result.append(da - xi * h if h is not None else da)
        return val_loss, result

    def _hessian_vector_product(self, vector, train_batch):
        """(∇α L_train(w + r v) - ∇α L_train(w - r v)) / 2r with r = 0.01 / ||v|| (central differences)."""
        norm = float(_flat_norm(vector))
        if norm == 0.0:
            return [torch.zeros_like(a) for a in self.arch_params]
        r = 0.01 / norm
        with torch.no_grad():
            for p, v in zip(self.w_params, vector):
                if v is not None:
                    p.add_(r * v)
        grads_pos = torch.autograd.grad(self.loss_fn(self.supernet, train_batch), self.arch_params, allow_unused=True)
        with torch.no_grad():
            for p, v in zip(self.w_params, vector):
                if v is not None:
                    p.sub_(2 * r * v)
        grads_neg = torch.autograd.grad(self.loss_fn(self.supernet, train_batch), self.arch_params, allow_unused=True)
        with torch.no_grad():
            for p, v in zip(self.w_params, vector):
                if v is not None:
                    p.add_(r * v)
        out = []
        for a, gp, gn in zip(self.arch_params, grads_pos, grads_neg):
            gp = torch.zeros_like(a) if gp is None else gp
            gn = torch.zeros_like(a) if gn is None else gn
            out.append((gp - gn) / (2 * r))
        return out

    # ---- weight step (optionally SmoothDARTS) ----------------------------------------
    def _set_perturbation(self, deltas):
        """Apply deltas (or remove them with None); returns an undo callable."""
        if hasattr(self.supernet, "arch_perturbation"):
            self.supernet.arch_perturbation = deltas
            return lambda: setattr(self.supernet, "arch_perturbation", None)
        if deltas is None:
            return lambda: None
        with torch.no_grad():
            for a, d in zip(self.arch_params, deltas):
                a.add_(d.detach())

        def undo():
            with torch.no_grad():
                for a, d in zip(self.arch_params, deltas):
                    a.sub_(d.detach())
        return undo

    def _adversarial_perturbation(self, batch, epsilon: float):
        """PGD in the L∞ ball: random start, `adversarial_steps` signed-gradient ascent steps on the train loss."""
        deltas = [(torch.rand_like(a) * 2 - 1) * epsilon for a in self.arch_params]
        step_size = 2.0 * epsilon / max(self.adversarial_steps, 1)
        for _ in range(self.adversarial_steps):
            deltas = [d.detach().requires_grad_(True) for d in deltas]
            if hasattr(self.supernet, "arch_perturbation"):
                self.supernet.arch_perturbation = deltas
                loss = self.loss_fn(self.supernet, batch)
                grads = torch.autograd.grad(loss, deltas, allow_unused=True)
                self.supernet.arch_perturbation = None
            else:  # raw-parameter space: d loss / d delta = d loss / d alpha at alpha + delta
                undo = self._set_perturbation(deltas)
                loss = self.loss_fn(self.supernet, batch)
                grads = torch.autograd.grad(loss, self.arch_params, allow_unused=True)
                undo()
            deltas = [(d + step_size * g.sign()).clamp(-epsilon, epsilon) if g is not None else d
                      for d, g in zip(deltas, grads)]
        return [d.detach() for d in deltas]

    def weight_step(self, batch, smooth: str = "none", epsilon: float = 0.0) -> float:
        """One SGD step of the weights on `batch`; α is perturbed during the step when smooth != none."""
        undo = lambda: None  # noqa: E731
        if smooth == "random" and epsilon > 0:
            undo = self._set_perturbation([(torch.rand_like(a) * 2 - 1) * epsilon for a in self.arch_params])
        elif smooth == "adversarial" and epsilon > 0:
            undo = self._set_perturbation(self._adversarial_perturbation(batch, epsilon))
        elif smooth not in SMOOTH_MODES:
            raise ValueError(f"smooth: {smooth!r} is not one of {SMOOTH_MODES}")
        try:
            self.w_optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.supernet, batch)
            w_grads = torch.autograd.grad(loss, self.w_params, allow_unused=True)
            for p, g in zip(self.w_params, w_grads):
                p.grad = None if g is None else g
            if self.w_grad_clip and self.w_grad_clip > 0:
                nn.utils.clip_grad_norm_(self.w_params, self.w_grad_clip)
            self.w_optimizer.step()
        finally:
            undo()
        return float(loss.detach())


@dataclass
class SearchResult:
    """What `search` returns. search_nme is the full-set (common + challenge) NME in % (None if not evaluated)."""
    supernet: nn.Module
    history: list = field(default_factory=list)       # one dict per epoch
    arch_history: list = field(default_factory=list)  # one {"epoch": e, name: np.ndarray} per epoch (after it)
    search_nme: float | None = None
    arch: object = None                               # supernet.derive() at the end
    metrics: dict = field(default_factory=dict)       # evaluate_subsets output of the supernet


def _to_device(batch, device):
    if isinstance(batch, dict):
        return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(v.to(device) if torch.is_tensor(v) else v for v in batch)
    return batch.to(device)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if torch.is_tensor(obj):
        return obj.detach().cpu().tolist()
    return obj


def build_search_loaders(cfg: dict, batch_size: int, train_portion: float, seed: int) -> dict:
    """Landmark loaders: {"weights": DataLoader, "arch": DataLoader, "eval": {"common": ..., "challenge": ...}}.

    The train subset is split once (shuffled with `seed`) into a weights part (train_portion)
    and an arch part (the rest); both use the training augmentation of cfg["train"]["augment"].
    """
    from torch.utils.data import DataLoader, Subset

    from nbutils.config import DEFAULTS
    from nbutils.data import Face300W, resolve_data_root

    data_cfg = {**DEFAULTS["data"], **(cfg.get("data") or {})}
    train_cfg = {**DEFAULTS["train"], **(cfg.get("train") or {})}
    root = resolve_data_root(data_cfg)
    geometry = dict(input_size=train_cfg["input_size"], heatmap_size=train_cfg["heatmap_size"],
                    sigma=train_cfg["sigma"], skip_bad=data_cfg["skip_bad"])
    train_set = Face300W(root, "train", augment=train_cfg.get("augment"), max_items=data_cfg["max_train"],
                         seed=seed, **geometry)
    n = len(train_set)
    if n < 2:
        raise ValueError(f"search needs at least 2 training images, {root} has {n}")
    order = np.random.default_rng(seed).permutation(n)
    split = min(max(int(round(n * train_portion)), 1), n - 1)
    workers = int(data_cfg["workers"])
    generator = torch.Generator().manual_seed(seed)

    def loader(dataset, shuffle):
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                          drop_last=shuffle and len(dataset) > batch_size, generator=generator if shuffle else None)

    eval_loaders = {}
    for subset in ("common", "challenge"):
        ds = Face300W(root, subset, augment=None, max_items=data_cfg["max_eval"], seed=seed, **geometry)
        eval_loaders[subset] = loader(ds, False)
    return {"weights": loader(Subset(train_set, order[:split].tolist()), True),
            "arch": loader(Subset(train_set, order[split:].tolist()), True),
            "eval": eval_loaders}


# Batches of the weights half whose statistics replace the supernet's BN running statistics before the
# search-NME evaluation (see recalibrate_batchnorm): 320 faces at the default batch of 16.
BN_RECALIBRATION_BATCHES = 20


@torch.no_grad()
def recalibrate_batchnorm(supernet: nn.Module, loader, device, batches: int = BN_RECALIBRATION_BATCHES) -> int:
    """Re-estimate every BatchNorm's running mean/variance of `supernet` as it is evaluated.

    During the search a supernet that samples candidates (DenseNAS `sample_ops`) updates an op's BN
    statistics only in the steps that drew it, and the weighted sum of all candidates that evaluation
    computes has other statistics than any one of them; a short search therefore leaves running
    statistics far from the evaluated network's (with the std-0.001 `normal` init the eval-mode output
    shrinks ~1000x per layer, to ~1e-13, and every face decodes to the same point). As single-path
    NAS evaluations do (SPOS, OFA), the statistics are reset and recomputed as cumulative averages over
    `batches` training batches, with the network in eval mode (every candidate, no sampling, no noise)
    and only the BN layers collecting batch statistics. Returns the number of batches used.
    """
    norms = [m for m in supernet.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or batches <= 0:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None   # cumulative moving average over the recalibration batches
    supernet.eval()
    for m in norms:
        m.train()
    used = 0
    try:
        for batch in loader:
            if used >= batches:
                break
            supernet(batch["image"].to(device))
            used += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        supernet.eval()
    return used


@torch.no_grad()
def evaluate_supernet(supernet: nn.Module, eval_loaders: dict, device, calibration_loader=None) -> tuple[dict, dict]:
    """Per-subset NME arrays (fraction of inter-ocular distance) and nbutils.metrics.evaluate_subsets summaries.

    calibration_loader: training batches for recalibrate_batchnorm first (None: the running statistics
    of the search are used as they are)."""
    from nbutils.metrics import decode_heatmaps, evaluate_subsets, heatmap_to_image, nme_per_image

    if calibration_loader is not None:
        recalibrate_batchnorm(supernet, calibration_loader, device)
    supernet.eval()
    nmes = {}
    for subset, loader in eval_loaders.items():
        per_image = []
        for batch in loader:
            heatmaps = supernet(batch["image"].to(device)).float().cpu()
            coords = heatmap_to_image(decode_heatmaps(heatmaps), batch["affine"])
            per_image.append(np.asarray(nme_per_image(coords, batch["points"])))
        nmes[subset] = np.concatenate(per_image) if per_image else np.zeros(0)
    return nmes, evaluate_subsets(nmes)


def search(cfg: dict, run_dir, supernet: nn.Module, progress: bool = True, loaders: dict | None = None,
           loss_fn: Callable = heatmap_mse_loss) -> SearchResult:
    """Run the bi-level search of `supernet` on the landmark data and save the result into run_dir.

    cfg: {"search": {...} (SEARCH_DEFAULTS), "data": {...}, "train": {...}}; the supernet must
    already be built (its builder reads the noise / darts_minus keys of the same search section).
    loaders: optional {"weights", "arch", "eval": {subset: loader}} to bypass the 300W loaders.
    Returns a SearchResult; writes search_arch.json, search_history.json (and search_supernet.pt).
    """
    if supernet is None:
        raise ValueError("search() needs a supernet (e.g. nbutils.models.darts.build_supernet(cfg))")
    scfg = search_config(cfg.get("search"))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(scfg["seed"]))
    np.random.seed(int(scfg["seed"]) % (2 ** 32))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    supernet.to(device)
    if loaders is None:
        loaders = build_search_loaders(cfg, int(scfg["batch_size"]), float(scfg["train_portion"]), int(scfg["seed"]))

    epochs = int(scfg["epochs"])
    optimizer = BilevelOptimizer(
        supernet, loss_fn, w_lr=scfg["w_lr"], w_momentum=scfg["w_momentum"], w_weight_decay=scfg["w_weight_decay"],
        w_grad_clip=scfg["w_grad_clip"], arch_lr=scfg["arch_lr"], arch_betas=scfg["arch_betas"],
        arch_weight_decay=scfg["arch_weight_decay"], order=scfg["order"],
        adversarial_steps=int(scfg["adversarial_steps"]))
    max_steps = scfg["max_steps_per_epoch"]
    history, arch_history = [], []
    on_epoch_start = getattr(supernet, "on_epoch_start", None)
    epoch_info = getattr(supernet, "epoch_info", None)

    for epoch in range(epochs):
        started = time.time()
        # cosine annealing of the weight lr, as DARTS' CosineAnnealingLR(epochs, eta_min)
        lr = scfg["w_lr_min"] + 0.5 * (scfg["w_lr"] - scfg["w_lr_min"]) * (1 + math.cos(math.pi * epoch / epochs))
        optimizer.set_w_lr(lr)
        if on_epoch_start is not None:
            on_epoch_start(epoch, epochs)
        update_arch = arch_update_active(epoch, scfg["update_window"], epochs)
        epsilon = smooth_epsilon_at(epoch, epochs, scfg["smooth_epsilon"], scfg["smooth_epsilon_start"])
        supernet.train()
        w_losses, arch_losses = [], []
        arch_iter = iter(loaders["arch"])
        for step, train_batch in enumerate(loaders["weights"]):
            if max_steps is not None and step >= int(max_steps):
                break
            train_batch = _to_device(train_batch, device)
            if update_arch:
                try:
                    val_batch = next(arch_iter)
                except StopIteration:
                    arch_iter = iter(loaders["arch"])
                    val_batch = next(arch_iter)
                arch_losses.append(optimizer.arch_step(train_batch, _to_device(val_batch, device)))
            w_losses.append(optimizer.weight_step(train_batch, scfg["smooth"], epsilon))
        record = {"epoch": epoch, "w_lr": lr, "w_loss": float(np.mean(w_losses)) if w_losses else float("nan"),
                  "arch_loss": float(np.mean(arch_losses)) if arch_losses else None,
                  "arch_updated": update_arch, "smooth_epsilon": epsilon if scfg["smooth"] != "none" else 0.0,
                  "seconds": time.time() - started}
        if epoch_info is not None:
            record.update(epoch_info())
        history.append(record)
        arch_history.append({"epoch": epoch, **supernet.arch_snapshot()})
        if progress:
            arch_txt = f" arch_loss {record['arch_loss']:.6f}" if record["arch_loss"] is not None else ""
            print(f"[search] epoch {epoch + 1}/{epochs} w_loss {record['w_loss']:.6f}{arch_txt} "
                  f"lr {lr:.4g} ({record['seconds']:.1f}s)", flush=True)

    result = SearchResult(supernet=supernet, history=history, arch_history=arch_history, arch=supernet.derive())
    if scfg["eval"] and loaders.get("eval"):
        nmes, summaries = evaluate_supernet(supernet, loaders["eval"], device, calibration_loader=loaders["weights"])
        result.metrics = summaries
        full = summaries.get("full") if isinstance(summaries, dict) else None
        result.search_nme = float(full["nme"]) if full else None
        if progress:
            print(f"[search] supernet NME (full): {result.search_nme}", flush=True)

    # allow_nan: an epoch without weight steps logs w_loss NaN, which is the truth of that epoch
    write_json_atomic(run_dir / "search_arch.json", _jsonable(
        {"arch": result.arch, "search_nme": result.search_nme, "search": scfg, "metrics": result.metrics}), allow_nan=True)
    write_json_atomic(run_dir / "search_history.json", _jsonable(
        {"history": history, "arch_history": arch_history}), indent=1, allow_nan=True)
    if scfg["save_supernet"]:
        tmp = run_dir / "search_supernet.pt.tmp"
        torch.save(supernet.state_dict(), tmp)
        os.replace(tmp, run_dir / "search_supernet.pt")
    return result


def load_search_result(run_dir) -> dict:
    """Read search_arch.json from run_dir (what the retrain step consumes); clear error if missing/corrupt."""
    path = Path(run_dir) / "search_arch.json"
    return read_json(path, f"no search result at {path}: run the search step first")
