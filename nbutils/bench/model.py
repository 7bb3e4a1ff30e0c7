"""Benchmark: HRNetV2-W18 training and inference throughput on this machine, fp32 vs `fast`.

`fast` = channels_last memory format + torch.autocast(device, dtype=bfloat16) (on CPU; the
engine's `train.fast` switch). Both settings run side by side in one process, their steps
interleaved so that load from other processes hits both alike: a few warm-up steps (oneDNN
creates and caches its kernels there), then a few timed steps whose median is reported.
A training step is forward + MSE loss + backward + Adam step on batch 16 with random
images/targets (the numbers are throughput only, never asserted in tests).

    python -m nbutils.bench.model          # prints the table
    run() -> list[dict]                    # one row per (task, input size, precision)
"""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

BATCH = 16
SIZES = ((128, 32), (256, 64))  # (input pixels, heatmap pixels)


def cpu_report() -> dict:
    """What decides whether bf16 can be fast here: ISA level PyTorch dispatches to, oneDNN, CPU flags."""
    flags = set()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "threads": torch.get_num_threads(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "machine": platform.processor() or platform.machine(),
        "load_average_1min": os.getloadavg()[0],
    }


def _setup(model_cfg: dict, size: int, heatmap: int, fast: bool):
    """(train_step, infer_step) closures for one precision setting."""
    from nbutils.models import build_model

    torch.manual_seed(0)
    memory_format = torch.channels_last if fast else torch.contiguous_format
    model = build_model(model_cfg).to(memory_format=memory_format)
    images = torch.randn(BATCH, 3, size, size).contiguous(memory_format=memory_format)
    targets = torch.rand(BATCH, model.num_landmarks, heatmap, heatmap)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def precision():
        return torch.autocast("cpu", dtype=torch.bfloat16) if fast else contextlib.nullcontext()

    def train_step():
        model.train()
        with precision():
            out = model(images)
        loss = F.mse_loss(out.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer_step():
        model.eval()
        with torch.inference_mode(), precision():
            model(images)

    return train_step, infer_step


def _seconds(step) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one call of step()."""
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - wall, time.process_time() - cpu


def _measure(model_cfg: dict, size: int, heatmap: int, warmup: int, steps: int) -> list[dict]:
    """fp32 and fast steps interleaved (so load from other processes hits both alike);
    the median wall and CPU seconds per step of the timed steps are reported."""
    settings = {"fp32": _setup(model_cfg, size, heatmap, False), "fast": _setup(model_cfg, size, heatmap, True)}
    rows = []
    for task, index in (("train", 0), ("infer", 1)):
        times = {name: [] for name in settings}
        for i in range(warmup + steps):
            for name, steps_of in settings.items():
                seconds = _seconds(steps_of[index])
                if i >= warmup:
                    times[name].append(seconds)
        for name, values in times.items():
            wall = statistics.median(v[0] for v in values)
            cpu = statistics.median(v[1] for v in values)
            rows.append({"task": task, "input": size, "heatmap": heatmap, "precision": name, "batch": BATCH,
                         "s_per_step": wall, "images_per_s": BATCH / wall,
                         "cpu_s_per_step": cpu, "images_per_cpu_s": BATCH / cpu})
    return rows


def run(sizes=SIZES, warmup: int = 1, steps: int = 3, model_cfg: dict | None = None,
        threads: int | None = None) -> list[dict]:
    """Measure fp32 and fast for each (input, heatmap) size.

    Fast rows carry `ratio_fast` (fast over fp32 images per wall second) and `ratio_fast_cpu`
    (per CPU second). threads: torch intra-op threads for the run (None = torch's default).
    Every row carries the cpu report, with the load average before the run: when other
    processes keep the cores busy, multi-threaded wall times are dominated by waiting for
    descheduled threads, and the CPU-time ratio with threads=1 is the robust comparison.
    """
    model_cfg = model_cfg or {"name": "hrnet", "width": 18, "num_landmarks": 68, "init": "normal"}
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        info = cpu_report()
        rows = []
        for size, heatmap in sizes:
            # fewer steps at the large size: a W18 training step at 256/64, batch 16, takes seconds
            w, s = (warmup, steps) if size <= 128 else (warmup, max(2, steps - 1))
            measured = _measure(model_cfg, size, heatmap, w, s)
            for row in measured:
                if row["precision"] == "fast":
                    fp32 = next(r for r in measured if r["precision"] == "fp32" and r["task"] == row["task"])
                    row["ratio_fast"] = row["images_per_s"] / fp32["images_per_s"]
                    row["ratio_fast_cpu"] = row["images_per_cpu_s"] / fp32["images_per_cpu_s"]
            rows += measured
    finally:
        torch.set_num_threads(previous_threads)
    for row in rows:
        row.update(bench="model", model=f"hrnet_w{model_cfg.get('width', 18)}", **info)
    return rows


def format_table(rows: list[dict]) -> str:
    """Side-by-side table: images per wall second (and per CPU second) fp32 vs fast."""
    lines = [f"{'task':6} {'in/out':>8} {'fp32 img/s':>11} {'fast img/s':>11} {'fast/fp32':>10}"
             f" {'fp32 img/cpu-s':>15} {'fast img/cpu-s':>15} {'fast/fp32':>10}"]
    for fast in (r for r in rows if r["precision"] == "fast"):
        fp32 = next(r for r in rows if r["precision"] == "fp32" and r["task"] == fast["task"]
                    and r["input"] == fast["input"])
        lines.append(f"{fast['task']:6} {str(fast['input']) + '/' + str(fast['heatmap']):>8} "
                     f"{fp32['images_per_s']:11.2f} {fast['images_per_s']:11.2f} {fast['ratio_fast']:10.2f} "
                     f"{fp32['images_per_cpu_s']:15.2f} {fast['images_per_cpu_s']:15.2f} {fast['ratio_fast_cpu']:10.2f}")
    info = rows[0]
    lines.append(f"batch {BATCH}; torch {info['torch']}, cpu capability {info['cpu_capability']}, "
                 f"threads {info['threads']}, mkldnn {info['mkldnn']} (bf16 {info['mkldnn_bf16']}), "
                 f"avx512_bf16 {info['avx512_bf16']}, amx_bf16 {info['amx_bf16']}, "
                 f"load average {info['load_average_1min']:.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting at 128/32")
    args = parser.parse_args()
    print(format_table(run(steps=args.steps, threads=args.threads)))
