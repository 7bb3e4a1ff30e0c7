"""On-disk formats of 300W: iBUG `.pts` files, the HRNet annotation CSVs, the raw folder tree.

Coordinates are continuous pixel coordinates of the original image (pixel i covers
[i, i+1)); values are read and written unchanged, so file round trips are exact.

Two layouts of one data set are understood:

* raw iBUG release: images with a `.pts` beside them in
  `afw/ helen/{trainset,testset} lfpw/{trainset,testset} ibug/ 300W/{01_Indoor,02_Outdoor}`;
* HRNet CSVs `face_landmarks_300w_{train,valid,valid_common,valid_challenge,test}.csv`
  with rows `image_name, scale, center_w, center_h, x0, y0, ..., x67, y67`, where
  `scale = max(w, h) / 200` of the face box and `image_name` is relative to `<root>/images`.

A face "record" is what one row / one `.pts` describes; its `scale` is the *crop* scale,
i.e. the file's scale already multiplied by 1.25 (crop box side = 200 * scale pixels).
"""
from __future__ import annotations

import csv
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

NUM_LANDMARKS = 68
SUBSETS = ("train", "common", "challenge", "full", "test")
EVAL_SUBSETS = ("common", "challenge", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp")
CROP_SCALE_FACTOR = 1.25  # the HRNet loader enlarges the stored face box by this much

# iBUG-68 mirror pairs, 1-indexed as usually published (reference MATCHED_PARTS["300W"]).
MIRROR_PAIRS_1_INDEXED = (
    (1, 17), (2, 16), (3, 15), (4, 14), (5, 13), (6, 12), (7, 11), (8, 10), (18, 27), (19, 26),
    (20, 25), (21, 24), (22, 23), (32, 36), (33, 35), (37, 46), (38, 45), (39, 44), (40, 43), (41, 48),
    (42, 47), (49, 55), (50, 54), (51, 53), (62, 64), (61, 65), (68, 66), (59, 57), (60, 56),
)


def _flip_permutation() -> np.ndarray:
    perm = np.arange(NUM_LANDMARKS)
    for a, b in MIRROR_PAIRS_1_INDEXED:
        perm[a - 1], perm[b - 1] = b - 1, a - 1
    return perm


# flipped_points = points[FLIP_PERMUTATION] with x -> W - x (an involution).
FLIP_PERMUTATION = _flip_permutation()

# Raw-release folders of each split (relative to the raw root).
RAW_SPLIT_FOLDERS = {
    "train": ("lfpw/trainset", "helen/trainset", "afw"),
    "common": ("lfpw/testset", "helen/testset"),
    "challenge": ("ibug",),
    "test": ("300W/01_Indoor", "300W/02_Outdoor"),
}
RAW_SPLIT_FOLDERS["full"] = RAW_SPLIT_FOLDERS["common"] + RAW_SPLIT_FOLDERS["challenge"]

CSV_FILES = {
    "train": "face_landmarks_300w_train.csv",
    "common": "face_landmarks_300w_valid_common.csv",
    "challenge": "face_landmarks_300w_valid_challenge.csv",
    "full": "face_landmarks_300w_valid.csv",
    "test": "face_landmarks_300w_test.csv",
}
CSV_HEADER = ["image_name", "scale", "center_w", "center_h"] + [
    f"{axis}{i}" for i in range(NUM_LANDMARKS) for axis in ("x", "y")
]


class DataFormatError(ValueError):
    """A data file (or one row of it) is malformed; the message names the file and row."""


@dataclass
class FaceRecord:
    """One annotated face.

    image_path: absolute path of the image file.
    points: (68, 2) float64, continuous pixel coordinates of the original image.
    center: (2,) float64, crop centre in original pixels.
    scale: crop scale; crop box side = 200 * scale original pixels (file scale x 1.25).
    source: where the annotation came from ("file.csv:row 12" or "face.pts"), for error messages.
    """

    image_path: Path
    points: np.ndarray
    center: np.ndarray
    scale: float
    source: str


def flip_points(points: np.ndarray, width: float) -> np.ndarray:
    """Mirror (68, 2) or (N, 68, 2) points of an image `width` pixels wide: x -> width - x, pairs swapped."""
    flipped = np.array(points, dtype=np.float64)[..., FLIP_PERMUTATION, :]
    flipped[..., 0] = width - flipped[..., 0]
    return flipped


def face_box(points: np.ndarray) -> tuple[np.ndarray, float]:
    """(center (2,), file scale = max(w, h) / 200) of the landmarks' bounding box, in original pixels."""
    low, high = points.min(axis=0), points.max(axis=0)
    size = high - low
    return (low + high) / 2.0, float(max(size[0], size[1]) / 200.0)


# ----------------------------------------------------------------------------- .pts

def read_pts(path: str | Path) -> np.ndarray:
    """Read an iBUG `.pts` file -> (68, 2) float64 points (original pixels, unchanged)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot read .pts file ({exc})") from exc
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    declared = None
    body = lines
    if lines and lines[0].lower().startswith("version"):
        header_end = next((i for i, line in enumerate(lines) if line == "{"), None)
        closing = next((i for i, line in enumerate(lines) if line == "}"), None)
        if header_end is None or closing is None or closing < header_end:
            raise DataFormatError(f"{path}: .pts file without a '{{ ... }}' point block")
        for line in lines[:header_end]:
            if line.lower().startswith("n_points"):
                try:
                    declared = int(line.split(":", 1)[1])
                except (IndexError, ValueError) as exc:
                    raise DataFormatError(f"{path}: bad n_points line {line!r}") from exc
        body = lines[header_end + 1:closing]
    values = []
    for number, line in enumerate(body, start=1):
        fields = line.replace(",", " ").split()
        try:
            xy = [float(f) for f in fields]
        except ValueError as exc:
            raise DataFormatError(f"{path}: non-numeric point line {number}: {line!r}") from exc
        if len(xy) != 2 or not all(math.isfinite(v) for v in xy):
            raise DataFormatError(f"{path}: point line {number} must hold two finite numbers, got {line!r}")
        values.append(xy)
    if len(values) != NUM_LANDMARKS:
        raise DataFormatError(f"{path}: expected {NUM_LANDMARKS} points, found {len(values)}")
    if declared is not None and declared != len(values):
        raise DataFormatError(f"{path}: header says n_points {declared} but {len(values)} points follow")
    return np.asarray(values, dtype=np.float64)


def write_pts(path: str | Path, points: np.ndarray) -> None:
    """Write (68, 2) points as an iBUG `.pts` file (repr-precision floats, exact round trip)."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape != (NUM_LANDMARKS, 2):
        raise ValueError(f"{path}: points must have shape (68, 2), got {points.shape}")
    body = "\n".join(f"{x!r} {y!r}" for x, y in points.tolist())
    Path(path).write_text(f"version: 1\nn_points: {NUM_LANDMARKS}\n{{\n{body}\n}}\n")


# ----------------------------------------------------------------------------- CSV

def read_csv(csv_path: str | Path, image_root: str | Path, skip_bad: bool = False) -> list[FaceRecord]:
    """Read an HRNet annotation CSV -> records (scale x 1.25 applied, paths under `image_root`).

    A malformed row (wrong column count, non-numeric or non-finite value, scale <= 0) raises
    DataFormatError naming the file and row, or with `skip_bad` is logged and skipped.
    Image files are not opened here (that happens at load), only checked to exist.
    """
    csv_path, image_root = Path(csv_path), Path(image_root)
    if not csv_path.is_file():
        raise DataFormatError(f"{csv_path}: annotation CSV not found")
    records, skipped = [], 0
    with open(csv_path, newline="") as handle:
        for row_number, row in enumerate(csv.reader(handle), start=1):
            if not row or (row_number == 1 and row[0].strip().lower() == "image_name"):
                continue
            where = f"{csv_path}:row {row_number}"
            try:
                records.append(_record_from_row(row, image_root, where))
            except DataFormatError:
                if not skip_bad:
                    raise
                skipped += 1
                log.warning("skipping bad annotation %s", where, exc_info=True)
    if skipped:
        log.warning("%s: skipped %d bad rows, kept %d", csv_path, skipped, len(records))
    return records


def _record_from_row(row: list[str], image_root: Path, where: str) -> FaceRecord:
    expected = 4 + 2 * NUM_LANDMARKS
    if len(row) != expected:
        raise DataFormatError(f"{where}: expected {expected} columns, found {len(row)}")
    try:
        numbers = np.array([float(v) for v in row[1:]], dtype=np.float64)
    except ValueError as exc:
        raise DataFormatError(f"{where}: non-numeric value ({exc})") from exc
    if not np.isfinite(numbers).all():
        raise DataFormatError(f"{where}: non-finite value")
    scale = numbers[0]
    if scale <= 0:
        raise DataFormatError(f"{where}: scale must be positive, got {scale}")
    image_path = image_root / row[0].strip()
    if not image_path.is_file():
        raise DataFormatError(f"{where}: image {image_path} not found")
    return FaceRecord(image_path=image_path, points=numbers[3:].reshape(NUM_LANDMARKS, 2),
                      center=numbers[1:3].copy(), scale=float(scale * CROP_SCALE_FACTOR), source=where)


def write_csv(csv_path: str | Path, rows: list[tuple[str, float, np.ndarray, np.ndarray]]) -> None:
    """Atomically write an HRNet CSV from rows (image_name, file scale, center (2,), points (68, 2)).

    `scale` here is the *file* scale (max(w, h) / 200, before the loader's x 1.25).
    """
    csv_path = Path(csv_path)
    tmp = csv_path.with_name(f".{csv_path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_HEADER)
        for image_name, scale, center, points in rows:
            points = np.asarray(points, dtype=np.float64)
            writer.writerow([image_name, repr(float(scale)), repr(float(center[0])), repr(float(center[1]))]
                            + [repr(v) for v in points.reshape(-1).tolist()])
    os.replace(tmp, csv_path)


# ----------------------------------------------------------------------------- raw iBUG tree

def find_image_for(pts_path: Path) -> Path | None:
    """The image beside a `.pts` file (same stem, any known extension), or None."""
    for ext in IMAGE_EXTENSIONS:
        for candidate in (pts_path.with_suffix(ext), pts_path.with_suffix(ext.upper())):
            if candidate.is_file():
                return candidate
    return None


def scan_raw(raw_root: str | Path, subset: str, skip_bad: bool = False) -> list[FaceRecord]:
    """Records of one subset of a raw iBUG tree (face box = landmarks' bounding box, scale x 1.25).

    Every `.pts` in the subset's folders (sorted, recursive) needs an image beside it; a missing
    image or malformed `.pts` raises DataFormatError naming the file (or is skipped with `skip_bad`).
    """
    raw_root = Path(raw_root)
    if subset not in RAW_SPLIT_FOLDERS:
        raise KeyError(f"unknown subset {subset!r}; expected one of {SUBSETS}")
    records, skipped = [], 0
    for folder in RAW_SPLIT_FOLDERS[subset]:
        directory = raw_root / folder
        if not directory.is_dir():
            raise DataFormatError(f"{directory}: folder of subset {subset!r} missing from the raw 300W tree")
        for pts_path in sorted(directory.rglob("*.pts")):
            try:
                points = read_pts(pts_path)
                image_path = find_image_for(pts_path)
                if image_path is None:
                    raise DataFormatError(f"{pts_path}: no image with the same name "
                                          f"({'/'.join(IMAGE_EXTENSIONS)}) beside it")
            except DataFormatError:
                if not skip_bad:
                    raise
                skipped += 1
                log.warning("skipping bad annotation %s", pts_path, exc_info=True)
                continue
            center, scale = face_box(points)
            records.append(FaceRecord(image_path=image_path, points=points, center=center,
                                      scale=scale * CROP_SCALE_FACTOR, source=str(pts_path)))
    if skipped:
        log.warning("%s/%s: skipped %d bad .pts files, kept %d", raw_root, subset, skipped, len(records))
    return records


def raw_to_csvs(raw_root: str | Path, out_dir: str | Path, skip_bad: bool = False) -> dict[str, Path]:
    """Write the five HRNet CSVs for a raw iBUG tree into `out_dir`; image names relative to `raw_root`.

    Face box = landmarks' bounding box; stored scale = max(w, h) / 200 (no 1.25). Returns {subset: csv path}.
    """
    raw_root, out_dir = Path(raw_root).resolve(), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for subset in SUBSETS:
        rows = []
        for record in scan_raw(raw_root, subset, skip_bad=skip_bad):
            center, scale = face_box(record.points)
            rows.append((record.image_path.resolve().relative_to(raw_root).as_posix(), scale, center,
                         record.points))
        written[subset] = out_dir / CSV_FILES[subset]
        write_csv(written[subset], rows)
    return written


def detect_layout(root: str | Path) -> tuple[str, Path]:
    """('csv', root) when `root` holds the HRNet CSVs, ('raw', tree) for a raw iBUG tree at root or root/images."""
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"{root}: data root is not a directory")
    if any((root / name).is_file() for name in CSV_FILES.values()):
        return "csv", root
    for candidate in (root, root / "images"):
        if (candidate / "afw").is_dir() or (candidate / "ibug").is_dir() or (candidate / "helen").is_dir():
            return "raw", candidate
    raise DataFormatError(f"{root}: neither face_landmarks_300w_*.csv files nor a raw iBUG tree "
                          f"(afw/ helen/ lfpw/ ibug/ 300W/) found")
