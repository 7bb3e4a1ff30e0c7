"""The DARTS notebook's steps: which cells to train, where their CIFAR-10 weights come from, the transfer.

    landmark_model_cfg(model_cfg, found=None) -> dict    the model section to train (the searched genotype
                                                         replaces model.genotype after a search)
    build_landmark_net(model_cfg, cifar=..., ...) -> (net, source)
                                                         build_model + CIFAR-10 cell transfer, or an explicit
                                                         from-scratch / HRNet start; `source` says which
    transfer_rows(report) -> list[dict]                  one row per landmark cell for the notebook

"Pretrained on CIFAR-10" weights are looked up in this order (nothing is ever substituted silently):
  1. `cifar_checkpoint`, else $NBUTILS_DARTS_CIFAR10, else checkpoints/cifar10_model.pt (relative to the
     working directory; the runner's is the repository root): the released DARTS cifar10_model.pt or one
     written by train_cifar;
  2. a network trained here before, <outputs>/darts/cifar10/<genotype>-L20-C<init_channels>-e<epochs>.pt;
  3. `cifar_root`, else $NBUTILS_CIFAR10_ROOT: a local CIFAR-10 copy (python-pickle layout) on which the
     20-cell DARTS CIFAR-10 network of the same genotype and width is trained (train_cifar) into 2.
When none exists the run stops with nbutils.config.NeedsInput naming every path it looked at.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ...config import NeedsInput, outputs_root
from .genotypes import GENOTYPES, genotype_to_dict, parse_genotype
from .landmark import apply_cifar_pretrained, resolve_pretrained

CIFAR_CHECKPOINT_ENV = "NBUTILS_DARTS_CIFAR10"
DEFAULT_CIFAR_CHECKPOINT = "checkpoints/cifar10_model.pt"
CIFAR_ROOT_ENV = "NBUTILS_CIFAR10_ROOT"
CIFAR_LAYERS = 20        # the DARTS CIFAR-10 evaluation network (20 cells), like the released checkpoint
MODES = ("retrain", "search")
CIFAR_CHOICES = ("pretrained", "scratch")


def check_choices(mode: str, cifar: str) -> None:
    """ValueError naming the notebook parameter when `mode` or `cifar` is not a known choice."""
    if mode not in MODES:
        raise ValueError(f"parameter 'mode': {mode!r} is not one of {MODES}")
    if cifar not in CIFAR_CHOICES:
        raise ValueError(f"parameter 'cifar': {cifar!r} is not one of {CIFAR_CHOICES}")


def landmark_model_cfg(model_cfg: dict, found: dict | None = None) -> dict:
    """The model section to train: model_cfg, with the searched genotype when `found` (search_or_load's
    result) is given."""
    cfg = dict(model_cfg)
    if found is not None:
        cfg["genotype"] = found["arch"]["genotype"]
    return cfg


def genotype_tag(genotype) -> str:
    """A file-name-safe tag: the published name (DARTS_V2, ...) or g<first 10 hex digits of its hash>."""
    parsed = parse_genotype(genotype)
    for name, known in GENOTYPES.items():
        if genotype_to_dict(known) == genotype_to_dict(parsed):
            return name
    return "g" + hashlib.sha1(repr(genotype_to_dict(parsed)).encode()).hexdigest()[:10]


def cifar_store_path(model_cfg: dict, epochs: int, outputs=None) -> Path:
    """Where a CIFAR-10 network trained here for `model_cfg`'s genotype and width is kept (shared by runs)."""
    root = Path(outputs) if outputs is not None else outputs_root()
    tag = genotype_tag(model_cfg["genotype"])
    return root / "darts" / "cifar10" / f"{tag}-L{CIFAR_LAYERS}-C{int(model_cfg['init_channels'])}-e{int(epochs)}.pt"


def find_cifar_weights(model_cfg: dict, cifar_checkpoint=None, cifar_root=None, cifar_epochs: int = 600,
                       outputs=None, progress: bool = True) -> dict:
    """Resolve the CIFAR-10 weights of the module docstring (training them when only CIFAR-10 is there).

    Returns nbutils.models.darts.resolve_pretrained's dict (status "checkpoint" | "trained", path,
    message); raises NeedsInput ("needs CIFAR-10: looked for ...") when there is nothing to use.
    """
    checkpoint = cifar_checkpoint or os.environ.get(CIFAR_CHECKPOINT_ENV) or DEFAULT_CIFAR_CHECKPOINT
    checkpoint = Path(str(checkpoint)).expanduser().absolute()
    root = cifar_root or os.environ.get(CIFAR_ROOT_ENV) or None
    store = cifar_store_path(model_cfg, cifar_epochs, outputs)
    train_kwargs = {"epochs": int(cifar_epochs), "genotype": model_cfg["genotype"], "layers": CIFAR_LAYERS,
                    "init_channels": int(model_cfg["init_channels"]), "progress": progress}
    found = resolve_pretrained(checkpoint, root, store, train_kwargs=train_kwargs)
    if found["status"] == "missing":
        where_root = (f"CIFAR-10 copy {Path(str(root)).expanduser()} has no cifar-10-batches-py" if root
                      else f"no CIFAR-10 copy (${CIFAR_ROOT_ENV} is not set)")
        raise NeedsInput(f"{found['message']}; {where_root}. Give the released DARTS cifar10_model.pt with "
                         f"${CIFAR_CHECKPOINT_ENV} (or the parameter cifar_checkpoint), a CIFAR-10 copy with "
                         f"${CIFAR_ROOT_ENV} (or cifar_root), or run the row with cifar 'scratch'.")
    return found


def build_landmark_net(model_cfg: dict, cifar: str = "pretrained", cifar_checkpoint=None, cifar_root=None,
                       cifar_epochs: int = 600, outputs=None, progress: bool = True):
    """Build the network of `model_cfg` (nbutils.models.build_model, then the CIFAR-10 cells on top).

    cifar "pretrained": the DARTS cells come from CIFAR-10 (find_cifar_weights); "scratch": they keep
    model.init. HRNet models (the table's reference rows) ignore `cifar`.
    Returns (net, source) with source = {"weights": "cifar10" | "scratch" | "hrnet", "message": str,
    "path": checkpoint or None, "transfer": transfer_cifar_cells' report or None}. Raises ValueError when
    the checkpoint's width differs from model.init_channels or none of its cell weights fit (other
    genotype), naming the checkpoint and the reasons.
    """
    from .. import build_model

    if cifar not in CIFAR_CHOICES:
        raise ValueError(f"parameter 'cifar': {cifar!r} is not one of {CIFAR_CHOICES}")
    name = model_cfg.get("name", "darts")
    if name != "darts":
        net = build_model(model_cfg)
        return net, {"weights": name, "path": None, "transfer": None,
                     "message": f"{name} reference row: initialised by model.init={model_cfg.get('init')} "
                                f"(no CIFAR-10 cells)"}
    if cifar == "scratch":
        net = build_model({**model_cfg, "cifar_checkpoint": None})
        return net, {"weights": "scratch", "path": None, "transfer": None,
                     "message": f"FROM SCRATCH: no CIFAR-10 pretraining (cifar 'scratch'); every cell "
                                f"initialised by model.init={model_cfg.get('init')}"}
    found = find_cifar_weights(model_cfg, cifar_checkpoint, cifar_root, cifar_epochs, outputs, progress)
    # Built without model.cifar_checkpoint and transferred here, after build_model's init scheme,
    # so the report is ours whether or not build_model runs the model's after_init hook.
    net = build_model({**model_cfg, "cifar_checkpoint": None})
    report = apply_cifar_pretrained(net, found["path"])
    # BatchNorm's scalar num_batches_tracked fits any width: only real weights count as a transfer
    weights = [key for key in report["transferred"] if not key.endswith("num_batches_tracked")]
    if not weights or report["cifar_init_channels"] != int(model_cfg["init_channels"]):
        reasons = sorted(set(report["skipped"].values()))
        raise ValueError(f"{found['path']}: no cell weights transfer into the landmark network "
                         f"(genotype {genotype_tag(model_cfg['genotype'])}, init_channels "
                         f"{model_cfg['init_channels']}; checkpoint init_channels {report['cifar_init_channels']}): "
                         f"{'; '.join(reasons[:3])}")
    cells = len(report["mapping"])
    message = (f"{found['message']}: {len(weights)} tensors of {cells}/{len(net.cells)} cells "
               f"transferred from the {report['cifar_layers']}-cell CIFAR-10 network")
    return net, {"weights": "cifar10", "path": found["path"], "transfer": report, "message": message}


def transfer_rows(report: dict | None) -> list[dict]:
    """One row per landmark cell: cell, CIFAR-10 cell it was copied from, tensors copied, tensors left
    as initialised and why (empty list when nothing was transferred)."""
    if not report:
        return []
    copied, skipped = {}, {}
    for key in report["transferred"]:
        cell = int(key.split(".")[1])
        copied[cell] = copied.get(cell, 0) + 1
    for key, reason in report["skipped"].items():
        cell = int(key.split(".")[1])
        skipped.setdefault(cell, set()).add(reason)
    cells = sorted(set(copied) | set(skipped) | set(report["mapping"]))
    return [{"cell": cell, "cifar_cell": report["mapping"].get(cell), "tensors_copied": copied.get(cell, 0),
             "left_initialised": "; ".join(sorted(skipped.get(cell, ()))) or "-"} for cell in cells]


def source_record(source: dict) -> dict:
    """What metrics.json keeps of `source`: weights, path, message and transfer counts (not every key)."""
    report = source.get("transfer") or {}
    return {"weights": source["weights"], "path": source["path"], "message": source["message"],
            "tensors_transferred": len(report.get("transferred", [])),
            "tensors_skipped": len(report.get("skipped", {})),
            "cell_mapping": {str(k): v for k, v in report.get("mapping", {}).items()}}


def run_record(mode: str, model_cfg: dict, source: dict, found: dict | None = None) -> dict:
    """The DARTS-specific entries of metrics.json: mode, genotype (dict, None for HRNet rows), where the
    cell weights came from (`cifar`, and `note`, which says "FROM SCRATCH" when they did not come from
    CIFAR-10) and, after a search, search_nme (%), architecture and the search history."""
    record = {"mode": mode, "cifar": source_record(source), "note": source["message"],
              "genotype": (genotype_to_dict(parse_genotype(model_cfg["genotype"]))
                           if model_cfg.get("name", "darts") == "darts" else None)}
    if found is not None:
        record.update({"search_nme": found["search_nme"], "architecture": found["arch"],
                       "search_history": found["history"]})
    return record
