"""Typed run parameters: the defaults every family shares, profile/row overlays, validation.

A run's parameters are three sections plus a run folder, mirrored one-to-one by the
`parameters` cell of every family notebook (papermill injects whole sections):

    run_dir : str            where checkpoints, metrics.json and figures of this run go
    data    : dict           which 300W copy and how much of it (see DATA_DEFAULTS)
    model   : dict           architecture, attention and initialisation (see MODEL_DEFAULTS)
    train   : dict           schedule, augmentation, heatmap geometry (see TRAIN_DEFAULTS)

Families add their own sections (e.g. `search` for the NAS families) in their notebook.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

DATA_DEFAULTS = {
    "root": "synth",        # "synth" = the embedded synth300w; otherwise a path to real 300W (CSV or raw iBUG tree)
    "synth_size": "cpu",    # smoke | cpu | paper (split sizes of the generated data)
    "synth_seed": 0,
    "cache_dir": None,      # where synth300w is generated; None = <outputs>/data
    "max_train": None,      # cap on training images (None = all)
    "max_eval": None,       # cap on images per evaluation subset (None = all)
    "workers": 0,           # DataLoader worker processes
    "skip_bad": False,      # skip (and count) unreadable samples instead of failing
}

MODEL_DEFAULTS = {
    "name": "hrnet",        # hrnet | darts | densenas | multiscale
    "width": 18,            # HRNetV2-W18 / W32 / ...
    "num_landmarks": 68,
    "attention": {
        "type": "none",     # none | se | cbam | bam | nonlocal_{embedded_gaussian,gaussian,dot_product,concatenation}
        "position": "prehead",  # prehead | block
        "reduction": 16,
        "residual": False,  # x + attn(x)
        "fusion_stages": [4],   # stages whose upsampled outputs are concatenated before the head
    },
    "init": "normal",       # normal | xavier | kaiming | kaiming_fan_out | pretrained:<path>
    "bn_momentum": 0.01,
}

TRAIN_DEFAULTS = {
    "input_size": 256,      # crop side in pixels
    "heatmap_size": 64,     # heatmap side in pixels
    "sigma": 1.0,           # Gaussian std in heatmap pixels
    "epochs": 60,
    "batch_size": 16,
    "optimizer": "adam",    # adam | sgd
    "lr": 1.0e-4,
    "weight_decay": 0.0,
    "momentum": 0.9,        # sgd only
    "nesterov": False,      # sgd only
    "schedule": "multistep",  # multistep | cosine
    "lr_steps": [30, 50],   # epochs at which a multistep schedule multiplies lr by lr_factor
    "lr_factor": 0.1,
    "eval_every": 1,        # epochs between evaluations (the last epoch is always evaluated)
    "seed": 111,
    "fast": False,          # CPU: channels_last + bf16 autocast where supported (CUDA always uses AMP)
    "flip_test": False,     # average prediction with the mirrored image's at evaluation
    "max_steps_per_epoch": None,
    "augment": {
        "scale": 0.25,      # scale factor ~ U(1 - s, 1 + s)
        "rotation": 30.0,   # degrees, ~ U(-r, r) ...
        "rotation_p": 0.6,  # ... applied with this probability
        "flip_p": 0.5,
    },
}

DEFAULTS = {"run_dir": "outputs/scratch", "data": DATA_DEFAULTS, "model": MODEL_DEFAULTS, "train": TRAIN_DEFAULTS}


def defaults() -> dict:
    """A deep copy of the shared defaults (safe to mutate)."""
    return copy.deepcopy(DEFAULTS)


def outputs_root() -> Path:
    """Root of all outputs: $NBUTILS_OUTPUTS if set, else ./outputs."""
    return Path(os.environ.get("NBUTILS_OUTPUTS", "outputs")).resolve()
