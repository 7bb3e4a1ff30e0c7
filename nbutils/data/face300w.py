"""The one 300W dataset class: real 300W (HRNet CSVs or raw iBUG tree) and synth300w alike.

Annotations are validated when the dataset is built (cheap: numbers only); images are read,
and their face box checked against the image, when a sample is loaded.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .formats import CSV_FILES, SUBSETS, DataFormatError, FaceRecord, detect_layout, read_csv, scan_raw
from .transforms import make_sample

if TYPE_CHECKING:
    import pandas

log = logging.getLogger(__name__)


def read_image(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 BGR image (grayscale files are expanded to 3 channels); DataFormatError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: image file not found")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise DataFormatError(f"{path}: unreadable image (not a valid jpg/png/ppm/bmp file)")
    return image


def load_records(root: str | Path, subset: str, skip_bad: bool = False) -> list[FaceRecord]:
    """Records of `subset` under `root`, whichever layout `root` has (see formats.detect_layout)."""
    if subset not in SUBSETS:
        raise KeyError(f"unknown 300W subset {subset!r}; expected one of {SUBSETS}")
    layout, base = detect_layout(root)
    if layout == "csv":
        return read_csv(base / CSV_FILES[subset], base / "images", skip_bad=skip_bad)
    return scan_raw(base, subset, skip_bad=skip_bad)


class Face300W(Dataset):
    """300W faces of one subset as training/evaluation samples.

    root: a CSV layout (face_landmarks_300w_*.csv + images/) or a raw iBUG tree (auto-detected).
    subset: train | common | challenge | full | test.
    input_size, heatmap_size: crop and heatmap side in pixels; sigma: Gaussian std in heatmap pixels.
    augment: None (evaluation, deterministic) or dict(scale, rotation, rotation_p, flip_p).
    skip_bad: skip malformed annotations (at construction) and unreadable images (at load, replaced by
        the next good sample) with a logged count, instead of raising.
    max_items: keep only the first max_items records. seed: base of the per-sample augmentation
        randomness: after set_epoch(e), sample i is augmented by a generator seeded with (seed, e, i),
        reproducible whatever the number of loader workers; before any set_epoch call the generator
        is seeded from torch's RNG (so a loop that never calls set_epoch still sees fresh draws).

    Each item: dict(image float32 3xSxS, heatmaps float32 68xHxH, points float32 68x2 original pixels
    in heatmap-channel order, affine float64 2x3 original -> heatmap pixels, index int).
    """

    def __init__(self, root, subset: str, input_size: int = 256, heatmap_size: int = 64, sigma: float = 1.0,
                 augment: dict | None = None, skip_bad: bool = False, max_items: int | None = None, seed: int = 0):
        self.root = Path(root)
        self.subset = subset
        self.input_size, self.heatmap_size, self.sigma = int(input_size), int(heatmap_size), float(sigma)
        self.augment, self.skip_bad, self.seed = augment, skip_bad, int(seed)
        self.records = load_records(self.root, subset, skip_bad=skip_bad)
        if max_items is not None:
            self.records = self.records[: int(max_items)]
        if not self.records:
            raise DataFormatError(f"{self.root}: subset {subset!r} has no usable faces")
        self.epoch: int | None = None
        self.skipped_images = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw (deterministic per (seed, epoch, index))."""
        self.epoch = int(epoch)

    def load(self, index: int) -> np.ndarray:
        """The original BGR image of record `index`, checked to contain its face box centre."""
        record = self.records[index]
        image = read_image(record.image_path)
        height, width = image.shape[:2]
        cx, cy = record.center
        if not (0 <= cx <= width and 0 <= cy <= height):
            raise DataFormatError(f"{record.source}: face box centre ({cx:.1f}, {cy:.1f}) lies outside the "
                                  f"{width}x{height} image {record.image_path}")
        return image

    def sample_numpy(self, index: int) -> dict:
        """The sample of record `index` as numpy arrays (see transforms.make_sample)."""
        record = self.records[index]
        rng = None
        if self.augment is not None:
            if self.epoch is None:
                rng = np.random.default_rng([self.seed, int(torch.randint(0, 2**62, ()).item()), index])
            else:
                rng = np.random.default_rng([self.seed, self.epoch, index])
        return make_sample(self.load(index), record.points, record.center, record.scale, self.input_size,
                           self.heatmap_size, self.sigma, self.augment, rng)

    def __getitem__(self, index: int) -> dict:
        for offset in range(len(self.records)):
            current = (index + offset) % len(self.records)
            try:
                sample = self.sample_numpy(current)
                break
            except DataFormatError:
                if not self.skip_bad:
                    raise
                self.skipped_images += 1
                log.warning("skipping unreadable sample %s (%d skipped so far)",
                            self.records[current].image_path, self.skipped_images, exc_info=True)
        else:
            raise DataFormatError(f"{self.root}: no readable image in subset {self.subset!r}")
        return {
            "image": torch.from_numpy(sample["image"]),
            "heatmaps": torch.from_numpy(sample["heatmaps"]),
            "points": torch.from_numpy(sample["points"].astype(np.float32)),
            "affine": torch.from_numpy(sample["affine"]),
            "index": current,
        }

    def __repr__(self) -> str:
        aug = "augment" if self.augment is not None else "eval"
        return (f"Face300W({self.root}, {self.subset!r}, n={len(self)}, {self.input_size}->{self.heatmap_size}, "
                f"sigma={self.sigma}, {aug})")


def face_statistics(root: str | Path, subsets=SUBSETS) -> "pandas.DataFrame":
    """One row per annotated face of each subset (annotations only, no image reads).

    Columns: subset, image, iod_px (outer-eye-corner distance, original pixels), box_px (face box
    side = 200 * file scale), yaw_proxy (nose tip offset from the jaw-end midpoint as a fraction of
    the jaw-end distance: ~0 frontal, +-0.3 and beyond for strongly turned faces), roll_deg (angle
    of the outer-eye-corner line), mouth_open (inner-lip gap / iod).
    """
    import pandas as pd

    rows = []
    for subset in subsets:
        for record in load_records(root, subset):
            p = record.points
            iod = float(np.linalg.norm(p[36] - p[45]))
            jaw_span = float(np.linalg.norm(p[16] - p[0])) + 1e-9
            eye_line = p[45] - p[36]
            rows.append({
                "subset": subset, "image": str(record.image_path),
                "iod_px": iod, "box_px": 200.0 * record.scale / 1.25,
                "yaw_proxy": float((p[30, 0] - (p[0, 0] + p[16, 0]) / 2) / jaw_span),
                "roll_deg": float(np.degrees(np.arctan2(eye_line[1], eye_line[0]))),
                "mouth_open": float(np.linalg.norm(p[[61, 62, 63]] - p[[67, 66, 65]], axis=1).mean() / iod),
            })
    return pd.DataFrame(rows)
