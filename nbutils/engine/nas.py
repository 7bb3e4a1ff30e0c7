"""Search once per run folder, then retrain: the steps the NAS family notebooks (darts, densenas) share.

    search_or_load(cfg, run_dir, build_supernet) -> dict   the bi-level search of nbutils.engine.search,
                                                           or its stored result when the folder has one
    plot_search_history(history) -> Figure                 search losses (+ expected cost) per epoch
    score_best(net, cfg, run_dir) -> (evaluation, table)   best.pt evaluated, beside the mean-shape baseline

A run folder that already holds search_arch.json (an earlier, possibly interrupted, run of the same
row) reuses it: the retrain that resumes from last.pt must get the network its weights belong to.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from .search import load_search_result, search


def search_or_load(cfg: dict, run_dir, build_supernet: Callable[[dict], object], progress: bool = True) -> dict:
    """Run the search of `cfg` with the supernet `build_supernet(cfg)` unless run_dir holds its result.

    Returns {"arch": the derived architecture (JSON-able), "search_nme": supernet full-set NME in %
    (None when not evaluated), "search_metrics": per-subset summaries of the supernet, "history":
    one dict per search epoch (w_loss, arch_loss, ...), "arch_history": softmax-ed architecture
    weights after each epoch, "searched": False when the stored result was reused}.
    """
    run_dir = Path(run_dir)
    if (run_dir / "search_arch.json").exists():
        stored = load_search_result(run_dir)
        if progress:
            print(f"[search] reusing {run_dir / 'search_arch.json'}", flush=True)
        history_path = run_dir / "search_history.json"
        history = json.loads(history_path.read_text()) if history_path.exists() else {}
        return {"arch": stored["arch"], "search_nme": stored.get("search_nme"),
                "search_metrics": stored.get("metrics") or {}, "history": history.get("history", []),
                "arch_history": history.get("arch_history", []), "searched": False}
    result = search(cfg, run_dir, build_supernet(cfg), progress=progress)
    return {"arch": result.arch, "search_nme": result.search_nme, "search_metrics": result.metrics,
            "history": result.history, "arch_history": result.arch_history, "searched": True}


def plot_search_history(history: list):
    """Weight-step and arch-step losses (heatmap MSE, log scale) per search epoch; a second panel with
    the supernet's expected Params (M) when the supernet logs it (DenseNAS' cost term)."""
    import matplotlib.pyplot as plt

    if not history:
        raise ValueError("plot_search_history: empty search history (did the search run any epoch?)")
    epochs = [int(h["epoch"]) + 1 for h in history]
    with_cost = any(h.get("expected_params_m") is not None for h in history)
    fig, axes = plt.subplots(1, 2 if with_cost else 1, figsize=(9 if with_cost else 5, 3.2), squeeze=False)
    ax = axes[0][0]
    ax.plot(epochs, [h["w_loss"] for h in history], "o-", ms=3, color="black", label="weights (train half)")
    arch = [(e, h["arch_loss"]) for e, h in zip(epochs, history) if h.get("arch_loss") is not None]
    if arch:
        ax.plot(*zip(*arch), "s-", ms=3, color="tab:red", label="architecture (arch half)")
    ax.set(xlabel="search epoch", ylabel="heatmap MSE", yscale="log", title="search losses")
    ax.legend(fontsize=8)
    if with_cost:
        cost_ax = axes[0][1]
        cost_ax.plot(epochs, [h.get("expected_params_m") for h in history], "o-", ms=3, color="tab:blue")
        cost_ax.set(xlabel="search epoch", ylabel="E[Params] (M)", title="expected cost of the sampled net")
    fig.tight_layout()
    return fig


def score_best(net, cfg: dict, run_dir):
    """Load run_dir/best.pt into `net`, evaluate it on common/challenge/test and set it beside the
    mean-shape baseline. Returns (engine.evaluate's dict, pandas DataFrame: one row per subset with the
    summary columns in % and "mean shape NME")."""
    import pandas as pd

    from .checkpoint import load_checkpoint
    from .evaluate import evaluate, mean_shape_baseline

    net.load_state_dict(load_checkpoint(Path(run_dir) / "best.pt")["model"])
    evaluation = evaluate(net, cfg)
    mean_shape = mean_shape_baseline(cfg)
    table = pd.DataFrame(evaluation["summary"]).T
    table["mean shape NME"] = pd.Series({subset: summary["nme"] for subset, summary in mean_shape.items()})
    evaluation["mean_shape"] = mean_shape
    return evaluation, table
