"""Atomic checkpoint and JSON writes.

Every write goes to a temporary file in the destination folder, is flushed to disk, then
moved over the destination with os.replace (atomic on POSIX and Windows). A crash or error
half-way through a write leaves the previous file intact and readable.

Checkpoint files written by `fit`:
    last.pt  full training state after the latest completed epoch (resume point):
             epoch (completed epochs), model, optimizer, scheduler, scaler, rng (one per rank),
             history, best, best_epoch, final, wall_seconds, cfg
    best.pt  model weights at the epoch with the lowest full-set NME: epoch, model, summary, cfg
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import torch


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        # mkstemp creates 0600 files; give the result the permissions an ordinary open() would.
        os.chmod(tmp_name, 0o666 & ~_current_umask())
        os.replace(tmp_name, path)
    except BaseException:
        # Includes KeyboardInterrupt: never leave a half-written temporary behind.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write `state` (tensors, numbers, strings, lists, dicts) to `path` atomically with torch.save."""
    _atomic_write(Path(path), lambda file: torch.save(state, file))


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint` (weights-only unpickling: no code runs).

    Raises FileNotFoundError / RuntimeError naming the file when it is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for truncated/corrupt files
        raise RuntimeError(f"cannot read checkpoint {path}: {error}") from error


def write_json(obj, path: str | Path) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    text = json.dumps(obj, indent=2, allow_nan=True) + "\n"
    _atomic_write(Path(path), lambda file: file.write(text.encode("utf-8")))
