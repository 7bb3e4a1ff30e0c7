"""Train one run's parameters outside the notebook, e.g. on several GPUs with torchrun:

    torchrun --nproc_per_node 4 -m nbutils.engine.launch outputs/attention/se-r16-s111-gpu/params.yaml

PARAMS is a run's `params.yaml` (written by `python -m nbutils run`, whose `parameters` block holds
data/model/train/run_dir) or a plain YAML with those sections. Training writes history.json, last.pt
and best.pt into run_dir (rank 0 only under DDP); running the family notebook afterwards with the same
run_dir resumes from last.pt, finds training finished and goes straight to evaluation and figures.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from .train import fit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nbutils.engine.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("params", help="a run's params.yaml (or a YAML with data/model/train sections)")
    parser.add_argument("--run-dir", help="override run_dir (default: the one in the file)")
    args = parser.parse_args(argv)
    path = Path(args.params)
    if not path.is_file():
        parser.error(f"{path}: no such file")
    content = yaml.safe_load(path.read_text()) or {}
    parameters = content.get("parameters", content)
    run_dir = args.run_dir or parameters.get("run_dir")
    if not run_dir:
        parser.error(f"{path}: no run_dir in the file; pass --run-dir")
    cfg = {section: parameters[section] for section in ("data", "model", "train") if section in parameters}
    result = fit(cfg, run_dir, progress=True)
    if os.environ.get("RANK", "0") != "0":
        return 0   # under torchrun only rank 0 reports, as it is the only one that writes
    best = result.metrics.get("nme_full")
    print(f"{run_dir}: best full NME {best:.2f}%" if best is not None else f"{run_dir}: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
