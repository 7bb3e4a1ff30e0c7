"""fit(): train a heatmap landmark model on 300W, evaluate it, checkpoint it, resume it.

One call trains one run (one table row) and leaves in `run_dir`:
    history.json   one entry per completed epoch: epoch (1-based), lr (used in that epoch),
                   train_loss (mean per-pixel MSE), steps, seconds, and nme_<subset> (%) on
                   evaluated epochs; rewritten atomically after every epoch
    last.pt        the complete training state after the latest epoch (see checkpoint.py)
    best.pt        the weights at the evaluated epoch with the lowest full-set NME

Resuming: when `run_dir/last.pt` exists, fit continues from it: same weights, optimiser and
scheduler state, epoch, RNG states (python, numpy, torch, per rank) and data order, so an
interrupted run ends bit-identical to an uninterrupted one on CPU. Use a fresh run_dir to
start over (or to change the schedule of a run).

Reproducibility: the data order of epoch e is drawn from a generator seeded by (seed, e, rank),
the augmentations of sample i by (seed, e, i) inside Face300W, and model initialisation by the
global torch seed (train.seed + rank), so two CPU runs with the same seed give the same NME.

Loss: mean squared error over every heatmap pixel (the reference's MSELoss(size_average=True)).
Schedule: the LR scheduler steps once per epoch (multistep: x lr_factor at each epoch of
lr_steps; cosine: from lr to 0 over `epochs`).

Distributed (torchrun): see runtime.py. train.batch_size is per process (as the reference's
BATCH_SIZE_PER_GPU); rank 0 evaluates on the whole evaluation sets while the others wait.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from nbutils.data import resolve_data_root
from nbutils.models import build_model, model_cost

from .checkpoint import load_checkpoint, save_checkpoint, write_json
from .evaluate import evaluate, make_dataset, make_eval_loaders
from .runtime import (Distributed, capture_rng_state, derived_seed, describe_device, init_distributed,
                      precision_policy, restore_rng_state, seed_data_worker, seed_everything, select_device,
                      with_defaults)

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("multistep", "cosine")
CHECKPOINT_FORMAT = 1


@dataclass
class FitResult:
    """What `fit` returns.

    model:   the trained network after the LAST epoch (best weights are in run_dir/best.pt)
    history: the history.json entries
    best:    per-subset summaries (metrics.summarize: nme/fr/auc in %, n) at the best epoch
    metrics: flat dict for metrics.json (see `fit`)
    """
    model: nn.Module
    history: list = field(default_factory=list)
    best: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


def _check_train_settings(schedule: dict) -> None:
    def require(condition: bool, key: str, expected: str) -> None:
        if not condition:
            raise ValueError(f"train.{key} = {schedule.get(key)!r}: expected {expected}")

    require(isinstance(schedule["epochs"], int) and schedule["epochs"] >= 1, "epochs", "an integer >= 1")
    require(isinstance(schedule["batch_size"], int) and schedule["batch_size"] >= 1, "batch_size", "an integer >= 1")
    require(isinstance(schedule["eval_every"], int) and schedule["eval_every"] >= 1, "eval_every", "an integer >= 1")
    require(schedule["optimizer"] in OPTIMIZERS, "optimizer", f"one of {OPTIMIZERS}")
    require(schedule["schedule"] in SCHEDULES, "schedule", f"one of {SCHEDULES}")
    require(float(schedule["lr"]) > 0, "lr", "a positive number")
    steps = schedule["max_steps_per_epoch"]
    require(steps is None or (isinstance(steps, int) and steps >= 1), "max_steps_per_epoch", "null or an integer >= 1")


def make_optimizer(model: nn.Module, schedule: dict) -> torch.optim.Optimizer:
    """Adam or SGD over all parameters, from the train section."""
    lr, weight_decay = float(schedule["lr"]), float(schedule["weight_decay"])
    if schedule["optimizer"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=float(schedule["momentum"]),
                           weight_decay=weight_decay, nesterov=bool(schedule["nesterov"]))


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: dict):
    """Per-epoch LR schedule: MultiStepLR(lr_steps, lr_factor) or CosineAnnealingLR(epochs)."""
    if schedule["schedule"] == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(schedule["lr_steps"]),
                                                    gamma=float(schedule["lr_factor"]))
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=schedule["epochs"])


def _selection_subset(summary: dict) -> str:
    """The subset whose NME picks the best epoch: full (the reference's validation set) when present."""
    return "full" if "full" in summary else next(iter(summary))


def _json_safe(obj):
    return json.loads(json.dumps(obj, default=str))


def _raise_if_not_finite(loss: torch.Tensor, group: Distributed, where: str) -> None:
    not_finite = (~torch.isfinite(loss.detach())).to(torch.float32)
    if group.enabled:
        # Every rank must stop at the same step, or the others would hang in the next all-reduce.
        dist.all_reduce(not_finite)
    if not_finite.item() > 0:
        raise FloatingPointError(
            f"training loss is not finite ({loss.item()}) at {where}; lower train.lr or check the data and model")


def _train_one_epoch(net: nn.Module, loader: DataLoader, optimizer, scaler, precision, device: torch.device,
                     epoch: int, epochs: int, steps: int, group: Distributed, bar) -> float:
    """One pass over `loader` (at most `steps` batches); returns the mean loss over all ranks' samples."""
    net.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    samples = torch.zeros((), dtype=torch.float64, device=device)
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        images = batch["image"].to(device, non_blocking=True).contiguous(memory_format=precision.memory_format)
        targets = batch["heatmaps"].to(device, non_blocking=True)
        with precision.autocast(device):
            outputs = net(images)
        if outputs.shape != targets.shape:
            raise ValueError(f"model output {tuple(outputs.shape)} does not match the heatmap targets "
                             f"{tuple(targets.shape)}: check train.input_size / train.heatmap_size and the model")
        loss = F.mse_loss(outputs.float(), targets)
        lr = optimizer.param_groups[0]["lr"]
        _raise_if_not_finite(loss, group, f"epoch {epoch + 1}/{epochs}, step {step + 1}/{steps} (lr {lr:g})")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach().double() * images.shape[0]
        samples += images.shape[0]
        bar.update(1)
        bar.set_postfix_str(f"epoch {epoch + 1}/{epochs} loss {loss.item():.3e} lr {lr:.1e}", refresh=False)
    if group.enabled:
        dist.all_reduce(loss_sum)
        dist.all_reduce(samples)
    return float(loss_sum / samples)


def _gather_rng_states(group: Distributed) -> list:
    """RNG states of every rank, in rank order (identical on all ranks)."""
    state = capture_rng_state()
    if not group.enabled:
        return [state]
    states = [None] * group.world_size
    dist.all_gather_object(states, state)
    return states


def _flat_metrics(summary: dict) -> dict:
    """{"nme_full": .., "fr_0.08_full": .., ...} from per-subset summaries."""
    return {f"{key}_{subset}": value for subset, columns in summary.items()
            for key, value in columns.items() if key != "n"}


def fit(cfg: dict, run_dir, model: nn.Module | None = None, progress: bool = True) -> FitResult:
    """Train, evaluate and checkpoint one run (see the module docstring).

    cfg: run parameters with sections data / model / train (missing keys from nbutils.config.DEFAULTS).
    run_dir: folder for history.json, last.pt and best.pt (created; resumed from if last.pt exists).
    model: a ready network (NAS families); default nbutils.models.build_model(cfg["model"]).
    progress: show a tqdm bar (loss, lr, NME) and one line per evaluation (rank 0 only).

    Returns FitResult; its `metrics` (ready for metrics.json) holds, at the best epoch (lowest
    full-set NME, the reference's model_best): nme_<subset>, fr_0.08_<subset>, fr_0.10_<subset>,
    auc_0.08_<subset>, auc_0.10_<subset> (all %), best (per-subset summaries), and final (the
    same at the last epoch), best_epoch, epochs, params_m, gflops (at train.input_size),
    wall_seconds (training + evaluation, summed over resumed sessions), device, world_size.
    """
    cfg = with_defaults(cfg)
    _check_train_settings(cfg["train"])
    group = init_distributed()
    try:
        return _fit(cfg, Path(run_dir), model, progress, group)
    finally:
        group.close()


def _fit(cfg: dict, run_dir: Path, model: nn.Module | None, progress: bool, group: Distributed) -> FitResult:
    schedule = cfg["train"]
    epochs, seed = schedule["epochs"], int(schedule["seed"])
    device = select_device(group.local_rank)
    precision = precision_policy(device, fast=bool(schedule["fast"]))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seed_everything(seed + group.rank)
    if group.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)

    # Data: rank 0 generates synth300w on first use while the others wait for it.
    if group.is_main:
        resolve_data_root(cfg["data"])
    group.barrier()
    # The training order comes from `order_generator`, reseeded every epoch.
    train_set = make_dataset(cfg, "train", train=True)
    sampler = (DistributedSampler(train_set, num_replicas=group.world_size, rank=group.rank, shuffle=True, seed=seed)
               if group.enabled else None)
    order_generator = torch.Generator()
    train_loader = DataLoader(train_set, batch_size=schedule["batch_size"], shuffle=sampler is None, sampler=sampler,
                              num_workers=cfg["data"]["workers"], pin_memory=device.type == "cuda",
                              worker_init_fn=seed_data_worker, generator=order_generator)
    steps = len(train_loader) if schedule["max_steps_per_epoch"] is None else min(len(train_loader),
                                                                                  schedule["max_steps_per_epoch"])
    eval_loaders = make_eval_loaders(cfg, pin_memory=device.type == "cuda") if group.is_main else {}

    if model is None:
        model = build_model(cfg["model"])
    model = model.to(device, memory_format=precision.memory_format)
    optimizer = make_optimizer(model, schedule)
    scheduler = make_scheduler(optimizer, schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_grad_scaler)

    start_epoch, history, best, best_epoch, final, wall_seconds = 0, [], None, None, None, 0.0
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if last_path.exists():
        state = load_checkpoint(last_path)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as error:
            raise RuntimeError(f"{last_path} holds weights of a different model; use a new run_dir to start "
                               f"over ({error})") from error
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if group.rank < len(state["rng"]):
            restore_rng_state(state["rng"][group.rank])
        else:
            seed_everything(derived_seed(seed, group.rank, state["epoch"]))
        start_epoch, history, wall_seconds = state["epoch"], list(state["history"]), state["wall_seconds"]
        best, best_epoch, final = state["best"], state["best_epoch"], state["final"]

    net = model
    if group.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    show = progress and group.is_main
    bar = tqdm(total=epochs * steps, initial=start_epoch * steps, disable=not show, unit="step",
               desc=f"train {run_dir.name}", dynamic_ncols=True)
    try:
        for epoch in range(start_epoch, epochs):
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            train_set.set_epoch(epoch)
            if sampler is not None:
                sampler.set_epoch(epoch)
            order_generator.manual_seed(derived_seed(seed, epoch, group.rank))
            train_loss = _train_one_epoch(net, train_loader, optimizer, scaler, precision, device,
                                          epoch, epochs, steps, group, bar)
            entry = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "steps": steps}
            if group.enabled:
                # BatchNorm running statistics drift apart on each rank's own batches; give every rank
                # rank 0's (the ones evaluated and checkpointed).
                for buffer in model.buffers():
                    dist.broadcast(buffer, src=0)

            summary = None
            if group.is_main and ((epoch + 1) % schedule["eval_every"] == 0 or epoch + 1 == epochs):
                summary = evaluate(model, eval_loaders, flip_test=bool(schedule["flip_test"]),
                                   precision=precision)["summary"]
                entry.update({f"nme_{subset}": columns["nme"] for subset, columns in summary.items()})
            group.barrier()
            scheduler.step()
            seconds = time.perf_counter() - started
            entry["seconds"] = seconds
            wall_seconds += seconds
            history.append(entry)
            rng_states = _gather_rng_states(group)

            if group.is_main:
                if summary is not None:
                    final = summary
                    key = _selection_subset(summary)
                    if best is None or summary[key]["nme"] < best[key]["nme"]:
                        best, best_epoch = summary, epoch + 1
                        # best.pt before last.pt: a crash in between never leaves last.pt pointing
                        # at a best epoch whose weights were not written.
                        save_checkpoint({"format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "model": model.state_dict(),
                                         "summary": best, "cfg": _json_safe(cfg)}, best_path)
                    if show:
                        columns = "  ".join(f"{subset} {value['nme']:.2f}" for subset, value in summary.items())
                        bar.write(f"epoch {epoch + 1}/{epochs}  loss {train_loss:.3e}  NME % {columns}")
                    bar.set_postfix_str(f"epoch {epoch + 1}/{epochs} loss {train_loss:.3e} "
                                        f"NME {summary[_selection_subset(summary)]['nme']:.2f}%")
                save_checkpoint({
                    "format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "rng": rng_states, "history": history, "best": best,
                    "best_epoch": best_epoch, "final": final, "wall_seconds": wall_seconds, "cfg": _json_safe(cfg),
                }, last_path)
                write_json(history, run_dir / "history.json")
            group.barrier()
    finally:
        bar.close()

    if group.enabled:
        shared = [history, best, best_epoch, final]
        dist.broadcast_object_list(shared, src=0)
        history, best, best_epoch, final = shared

    cost = model_cost(model, schedule["input_size"])
    metrics = {
        **_flat_metrics(best),
        "best": best, "final": final, "best_epoch": best_epoch, "epochs": epochs,
        "params_m": float(cost["params_m"]), "gflops": float(cost["gflops"]),
        "wall_seconds": wall_seconds, "device": describe_device(device), "world_size": group.world_size,
    }
    return FitResult(model=model, history=history, best=best, metrics=metrics)
