"""Evaluation of a landmark model on the 300W subsets, and the mean-shape baseline.

Predictions are decoded from heatmaps by `metrics.decode_heatmaps` (the reference rule) and
mapped back to original-image pixels with each sample's inverse affine; errors are NMEs as
fractions of the inter-ocular distance, summarised in % by `metrics.evaluate_subsets`
(columns common, challenge, full = union of common and challenge, test).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader

from nbutils import metrics
from nbutils.data import EVAL_SUBSETS, Face300W, resolve_data_root

from .runtime import Precision, precision_policy, seed_data_worker, with_defaults


def make_dataset(cfg: dict, subset: str, train: bool) -> Face300W:
    """The Face300W of `subset` as `cfg` (complete, see runtime.with_defaults) describes it.

    train=True: augmented with cfg.train.augment and capped at data.max_train;
    train=False: un-augmented (evaluation crops) and capped at data.max_eval.
    """
    data, schedule = cfg["data"], cfg["train"]
    return Face300W(
        resolve_data_root(data), subset,
        input_size=schedule["input_size"], heatmap_size=schedule["heatmap_size"], sigma=schedule["sigma"],
        augment=schedule["augment"] if train else None, skip_bad=data["skip_bad"],
        max_items=data["max_train"] if train else data["max_eval"], seed=schedule["seed"])


def make_eval_loader(dataset, batch_size: int, workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """In-order loader; its own generator keeps evaluation from touching the global torch RNG."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=pin_memory, worker_init_fn=seed_data_worker,
                      generator=torch.Generator().manual_seed(0))


def make_eval_loaders(cfg: dict, subsets=EVAL_SUBSETS, pin_memory: bool = False) -> dict[str, DataLoader]:
    """{subset: DataLoader} of un-augmented evaluation samples, batch size train.batch_size."""
    return {subset: make_eval_loader(make_dataset(cfg, subset, train=False), cfg["train"]["batch_size"],
                                     cfg["data"]["workers"], pin_memory)
            for subset in subsets}


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


@torch.inference_mode()
def predict(model: torch.nn.Module, loader: DataLoader, precision: Precision | None = None,
            flip_test: bool = False) -> dict:
    """Run `model` over `loader` and decode its heatmaps.

    flip_test: average the heatmaps with those of the mirrored crop (mirrored back with
    metrics.flip_heatmaps) before decoding.
    Returns dict(predictions=(N, K, 2) float64 original-image pixels, ground_truth=(N, K, 2)
    float64 original-image pixels, indices=(N,) dataset indices). The model's train/eval mode
    is restored afterwards.
    """
    device = _model_device(model)
    precision = precision or precision_policy(device)
    was_training = model.training
    model.eval()
    predictions, ground_truth, indices = [], [], []
    try:
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True).contiguous(memory_format=precision.memory_format)
            with precision.autocast(device):
                heatmaps = model(images).float()
                if flip_test:
                    mirrored = model(torch.flip(images, dims=(-1,))).float()
                    heatmaps = 0.5 * (heatmaps + metrics.flip_heatmaps(mirrored))
            coords = metrics.decode_heatmaps(heatmaps).cpu()
            predictions.append(metrics.heatmap_to_image(coords, batch["affine"]).numpy())
            ground_truth.append(batch["points"].double().numpy())
            indices.append(np.asarray(batch["index"]))
    finally:
        model.train(was_training)
    return {"predictions": np.concatenate(predictions), "ground_truth": np.concatenate(ground_truth),
            "indices": np.concatenate(indices)}


def evaluate(model: torch.nn.Module, cfg_or_loaders, subsets=EVAL_SUBSETS, flip_test: bool | None = None,
             precision: Precision | None = None) -> dict:
    """Per-subset errors of `model`.

    cfg_or_loaders: run parameters (dict with data/train sections; missing keys from the defaults)
        or a ready {subset: DataLoader} of evaluation samples (then `subsets` is ignored).
    flip_test: None = cfg.train.flip_test when a cfg is given, else False.
    precision: autocast/memory format; default: the policy of the model's device (with cfg.train.fast).
    Returns dict(
        nmes={subset: (N,) NME as fractions of inter-ocular distance},
        summary=metrics.evaluate_subsets(nmes)  (common, challenge, full, test: nme/fr/auc in %),
        predictions={subset: (N, 68, 2) original-image pixels}, ground_truth={subset: same},
        indices={subset: (N,) dataset indices into that subset's records})
    """
    if isinstance(cfg_or_loaders, Mapping) and not any(isinstance(v, DataLoader) for v in cfg_or_loaders.values()):
        cfg = with_defaults(dict(cfg_or_loaders))
        device = _model_device(model)
        loaders = make_eval_loaders(cfg, subsets, pin_memory=device.type == "cuda")
        if flip_test is None:
            flip_test = bool(cfg["train"]["flip_test"])
        precision = precision or precision_policy(device, fast=bool(cfg["train"]["fast"]))
    else:
        loaders = dict(cfg_or_loaders)
    outputs = {name: predict(model, loader, precision, bool(flip_test)) for name, loader in loaders.items()}
    nmes = {name: metrics.nme_per_image(out["predictions"], out["ground_truth"]) for name, out in outputs.items()}
    return {
        "nmes": nmes,
        "summary": metrics.evaluate_subsets(nmes),
        "predictions": {name: out["predictions"] for name, out in outputs.items()},
        "ground_truth": {name: out["ground_truth"] for name, out in outputs.items()},
        "indices": {name: out["indices"] for name, out in outputs.items()},
    }


def mean_shape(cfg: dict) -> np.ndarray:
    """(68, 2) mean of the un-augmented training targets, in heatmap pixels (the crop frame)."""
    cfg = with_defaults(cfg)
    loader = make_eval_loader(make_dataset(cfg, "train", train=False), cfg["train"]["batch_size"],
                              cfg["data"]["workers"])
    total, count = 0.0, 0
    for batch in loader:
        total = total + metrics.apply_affine(batch["points"], batch["affine"]).sum(dim=0)
        count += batch["points"].shape[0]
    return (total / count).numpy()


def mean_shape_baseline(cfg: dict, subsets=EVAL_SUBSETS) -> dict:
    """Summary (as `evaluate`'s) of always predicting the mean training shape.

    The mean shape (`mean_shape`, heatmap pixels) is placed in every evaluation crop and mapped
    back through that sample's inverse affine: the error of a model that ignores the image
    and only knows where the face box is. The learning check compares NMEs to this.
    """
    cfg = with_defaults(cfg)
    shape = torch.from_numpy(mean_shape(cfg))
    nmes = {}
    for subset, loader in make_eval_loaders(cfg, subsets).items():
        predictions, ground_truth = [], []
        for batch in loader:
            count = batch["points"].shape[0]
            predictions.append(metrics.heatmap_to_image(shape.expand(count, -1, -1), batch["affine"]).numpy())
            ground_truth.append(batch["points"].double().numpy())
        nmes[subset] = metrics.nme_per_image(np.concatenate(predictions), np.concatenate(ground_truth))
    return metrics.evaluate_subsets(nmes)
