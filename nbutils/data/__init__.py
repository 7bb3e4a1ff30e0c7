"""300W data: file formats, the Face300W dataset, the synth300w generator, sample transforms.

Contract names (see /work/shared/DESIGN.md §3): SUBSETS, EVAL_SUBSETS, FLIP_PERMUTATION,
ensure_synth300w, resolve_data_root, Face300W.
"""
from __future__ import annotations

from pathlib import Path

from .face300w import Face300W, face_statistics, load_records, read_image
from .formats import (EVAL_SUBSETS, FLIP_PERMUTATION, SUBSETS, DataFormatError, FaceRecord, face_box,
                      flip_points, read_csv, read_pts, write_csv, write_pts)
from .synth import default_synth_dir, ensure_synth300w


def resolve_data_root(data_cfg: dict) -> Path:
    """The data folder of a `data` config section.

    root "synth" -> the cached synth300w of (synth_size, synth_seed) under cache_dir (default
    <outputs>/data), generated on first use; any other root must be an existing 300W folder
    (CSV layout or raw iBUG tree).
    """
    root = data_cfg.get("root", "synth")
    if str(root) == "synth":
        size, seed = data_cfg.get("synth_size", "cpu"), int(data_cfg.get("synth_seed", 0))
        return ensure_synth300w(default_synth_dir(size, seed, data_cfg.get("cache_dir")), size, seed)
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"data.root {root!r}: not a directory (use 'synth' for the embedded synth300w)")
    return path.resolve()


__all__ = ["SUBSETS", "EVAL_SUBSETS", "FLIP_PERMUTATION", "Face300W", "DataFormatError", "FaceRecord",
           "ensure_synth300w", "resolve_data_root", "default_synth_dir", "load_records", "read_image", "face_statistics",
           "read_pts", "write_pts", "read_csv", "write_csv", "face_box", "flip_points"]
