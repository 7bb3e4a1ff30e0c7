"""Benchmark: `nbutils.predict` throughput on whole images, face detector included.

On synth300w common images (smoke size: 8 images of about 250 px, one face each) with HRNetV2-W18
(random weights: speed does not depend on them), one face per image, batch 1 as a user's photo
stream would be. Per setting, one warm-up image, then the median of REPEATS passes over the images; faces_per_s counts
the faces actually found (the detector misses some turned synth faces):

    detector      Haar detection alone (ms per image)
    box           crop + network + decode, the face box given (`--box`)
    detect        detection + crop + network + decode (what `predict IMAGE` does)
    detect+flip   the same with the flip test (two network passes)

    python -m nbutils.bench.predict        # prints the table
    run() -> list[dict]                    # one row per (input size, setting)
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

SIZES = ((64, 16), (256, 64))   # (crop pixels, heatmap pixels): the cpu profile's and the paper's
REPEATS = 2


def _median_seconds(function, images) -> tuple[float, int]:
    """(median seconds per image over REPEATS passes, faces found in one pass)."""
    function(images[0])
    times, faces = [], 0
    for _ in range(REPEATS):
        start = time.perf_counter()
        faces = sum(len(function(image)) for image in images)
        times.append((time.perf_counter() - start) / len(images))
    return statistics.median(times), faces


def run() -> list[dict]:
    """One single-threaded stream (torch threads = 1), as a user's photos arrive: stable under other load."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run()
    finally:
        torch.set_num_threads(previous)


def _run() -> list[dict]:
    import cv2

    from nbutils.data import ensure_synth300w, face_box, load_records
    from nbutils.models import build_model
    from nbutils.predict import FaceDetector, Predictor, detector_available

    with tempfile.TemporaryDirectory() as folder:
        root = ensure_synth300w(Path(folder) / "synth300w-smoke-s0", "smoke", 0)
        records = load_records(root, "common")
        images = [cv2.imread(str(r.image_path)) for r in records]
    boxes = {id(image): face_box(r.points) for image, r in zip(images, records)}
    rows = []
    common = {"threads": torch.get_num_threads(), "images": len(images),
              "load_average_1min": round(os.getloadavg()[0], 2)}
    detector = FaceDetector() if detector_available() else None
    if detector is not None:
        seconds, found = _median_seconds(detector.detect, images)
        rows.append({"input": "-", "setting": "detector", "ms_per_image": seconds * 1e3, "faces": found,
                     "faces_per_s": None, **common})
    for size, heatmap in SIZES:
        torch.manual_seed(0)
        predictor = Predictor(build_model({"name": "hrnet", "width": 18}).eval(), size, heatmap, detector=detector)

        def given_box(image):
            center, file_scale = boxes[id(image)]
            low, high = center - 100 * file_scale, center + 100 * file_scale
            return predictor.predict_image(image, [(*low, *high)])

        settings = {"box": given_box}
        if detector is not None:
            settings["detect"] = lambda image: predictor.predict_image(image)
            settings["detect+flip"] = lambda image: predictor.predict_image(image, flip_test=True)
        for name, function in settings.items():
            seconds, found = _median_seconds(function, images)
            rows.append({"input": f"{size}->{heatmap}", "setting": name, "ms_per_image": seconds * 1e3,
                         "faces": found, "faces_per_s": found / (seconds * len(images)), **common})
    return rows


if __name__ == "__main__":
    import pandas as pd

    print(pd.DataFrame(run()).round(2).to_string(index=False))
