"""Training and evaluation engine.

    fit(cfg, run_dir, model=None, progress=True) -> FitResult(model, history, best, metrics)
    evaluate(model, cfg_or_loaders, subsets=EVAL_SUBSETS, flip_test=None) -> dict(nmes, summary, predictions, ...)
    mean_shape_baseline(cfg) -> per-subset summary of predicting the mean training shape
    load_checkpoint(path) -> dict (last.pt / best.pt written by fit)
"""
from .checkpoint import load_checkpoint, save_checkpoint, write_json
from .evaluate import evaluate, make_dataset, make_eval_loaders, mean_shape, mean_shape_baseline, predict
from .runtime import precision_policy, select_device, with_defaults
from .train import FitResult, fit

__all__ = ["FitResult", "fit", "evaluate", "predict", "mean_shape", "mean_shape_baseline", "load_checkpoint",
           "save_checkpoint", "write_json", "make_dataset", "make_eval_loaders", "precision_policy",
           "select_device", "with_defaults"]
