"""Timing benchmarks, run by `python -m nbutils bench [NAME ...]`.

Each benchmark is a module nbutils.bench.<name> with `run() -> list[dict]` (one dict per measured
setting); it is imported only when asked for, so a benchmark's heavy imports cost nothing to the
others. Adding one = adding its module and a line to BENCHMARKS.
"""
from __future__ import annotations

import importlib

BENCHMARKS = {
    "data": "nbutils.bench.data",     # synth300w generation and the loader's samples per second
    "model": "nbutils.bench.model",   # HRNet training / inference throughput, fp32 vs fast
    "predict": "nbutils.bench.predict",  # faces per second of `nbutils predict`, detector included
}


def run(names=None, show: bool = True) -> dict:
    """Run the named benchmarks (None = all) and print each result table; returns {name: rows}."""
    names = list(names or BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(BENCHMARKS)}")
    results = {}
    for name in names:
        rows = importlib.import_module(BENCHMARKS[name]).run()
        results[name] = rows
        if show:
            import pandas as pd
            print(f"== bench {name}")
            print(pd.DataFrame(rows).to_string(index=False) if rows else "(no rows)")
    return results
