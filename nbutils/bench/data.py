"""Benchmark: synth300w generation speed, the training pipeline's samples/s, decode + NME time.

All on ONE core (torch and cv2 limited to one thread): the numbers say what one DataLoader
worker delivers. Rows:
  * synth300w render+write: ms per image and the projected time of the `paper` size (4437 images);
  * pipeline SxS/H: Face300W with the reference augmentation (read image, one warpAffine,
    normalise, 68 Gaussian heatmaps) in an in-process loop, samples/s (targets: >= 150 at 256/64);
  * decode+NME: argmax decode, inverse affine and NME for 689 images (the `full` set) in batches
    of 64, seconds (target < 0.5 s).
Both wall and process CPU seconds are reported (CPU time is robust to a busy machine).

    python -m nbutils.bench.data
"""
from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import torch

from nbutils.data import Face300W, ensure_synth300w
from nbutils.data.synth import SPLIT_SIZES, generate

PAPER_IMAGES = sum(SPLIT_SIZES["paper"].values())


@contextmanager
def one_core():
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)


@contextmanager
def clocks():
    """Yields a dict that receives wall and cpu seconds of the block."""
    times = {}
    wall, cpu = time.perf_counter(), time.process_time()
    yield times
    times["wall_s"], times["cpu_s"] = time.perf_counter() - wall, time.process_time() - cpu


def bench_generation() -> dict:
    with tempfile.TemporaryDirectory() as tmp, clocks() as t:
        generate(Path(tmp) / "smoke", "smoke", seed=0)
    n = sum(SPLIT_SIZES["smoke"].values())
    per_image = t["cpu_s"] / n
    return {"bench": "synth300w render+write", "setting": f"{n} images", "value": round(1000 * per_image, 2),
            "unit": "ms/image (cpu)", "wall_s": round(t["wall_s"], 2), "cpu_s": round(t["cpu_s"], 2),
            "note": f"paper ({PAPER_IMAGES} images) ~ {PAPER_IMAGES * per_image:.0f} s cpu"}


def bench_pipeline(root: Path, input_size: int, heatmap_size: int, samples: int = 300) -> dict:
    dataset = Face300W(root, "train", input_size=input_size, heatmap_size=heatmap_size, sigma=1.0, augment={})
    for i in range(min(len(dataset), 32)):  # warm the file cache: we time decoding, not the disk
        dataset[i]
    with clocks() as t:
        for i in range(samples):
            dataset[i % len(dataset)]
    return {"bench": "pipeline load+augment+heatmaps", "setting": f"{input_size}/{heatmap_size}",
            "value": round(samples / t["cpu_s"], 1), "unit": "samples/s (cpu)",
            "wall_s": round(t["wall_s"], 2), "cpu_s": round(t["cpu_s"], 2),
            "note": f"wall {samples / t['wall_s']:.0f} samples/s; target >= 150 at 256/64"}


def bench_decode_nme(root: Path, images: int = 689, batch: int = 64) -> dict:
    from nbutils.metrics import decode_heatmaps, heatmap_to_image, nme_per_image

    dataset = Face300W(root, "full", input_size=256, heatmap_size=64, sigma=1.0)
    samples = [dataset[i % len(dataset)] for i in range(batch)]
    heatmaps = torch.stack([s["heatmaps"] for s in samples])
    affine = torch.stack([s["affine"] for s in samples])
    truth = torch.stack([s["points"] for s in samples])
    nmes = []
    with clocks() as t:
        for start in range(0, images, batch):
            n = min(batch, images - start)
            coords = decode_heatmaps(heatmaps[:n])
            nmes.append(nme_per_image(heatmap_to_image(coords, affine[:n]), truth[:n]))
    nmes = np.concatenate(nmes)
    return {"bench": "decode+NME", "setting": f"{images} images, 68x64x64", "value": round(t["cpu_s"], 3),
            "unit": "s (cpu)", "wall_s": round(t["wall_s"], 3), "cpu_s": round(t["cpu_s"], 3),
            "note": f"mean NME of targets {100 * nmes.mean():.2f}% (decode error only); target < 0.5 s"}


def run() -> list[dict]:
    """Measure everything above on one core; returns one dict per row (also printed by the bench CLI)."""
    rows = []
    with one_core(), tempfile.TemporaryDirectory() as tmp:
        root = ensure_synth300w(Path(tmp) / "synth300w-smoke-s0", "smoke", 0)
        rows.append(bench_generation())
        rows.append(bench_pipeline(root, 256, 64))
        rows.append(bench_pipeline(root, 128, 32))
        rows.append(bench_decode_nme(root))
    return rows


if __name__ == "__main__":
    import pandas as pd

    print(pd.DataFrame(run()).to_string(index=False))
