"""`python -m nbutils data ...`: generate synth300w, or write the HRNet CSVs of a raw iBUG 300W tree."""
from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from .formats import DataFormatError, raw_to_csvs
from .synth import SPLIT_SIZES, SIZE_ALIASES, default_synth_dir, ensure_synth300w, normalize_size


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nbutils data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    synth = commands.add_parser("synth", help="generate (or find cached) synth300w in the raw iBUG layout + CSVs")
    synth.add_argument("--out", type=Path, default=None,
                       help="target folder (default: <outputs>/data/synth300w-{size}-s{seed})")
    synth.add_argument("--size", default="cpu", choices=sorted(SPLIT_SIZES) + sorted(SIZE_ALIASES),
                       help="split sizes: smoke 32/8/4/8, cpu 800/150/40/150, paper (= gpu) 3148/554/135/600")
    synth.add_argument("--seed", type=int, default=0)
    csv = commands.add_parser("csv", help="write face_landmarks_300w_*.csv for a raw iBUG 300W tree")
    csv.add_argument("raw_root", type=Path, help="folder with afw/ helen/ lfpw/ ibug/ 300W/")
    csv.add_argument("--out", type=Path, required=True, help="folder for the five CSVs")
    csv.add_argument("--skip-bad", action="store_true", help="skip malformed .pts files (logged) instead of failing")
    csv.add_argument("--no-link", action="store_true",
                     help="do not create <out>/images -> raw_root (the link makes <out> a loadable CSV root)")
    return parser


def main(argv: list[str]) -> int:
    """Run the `data` subcommand; returns a process exit status (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.command == "synth":
            size = normalize_size(args.size)
            out = args.out if args.out is not None else default_synth_dir(size, args.seed)
            started = time.perf_counter()
            root = ensure_synth300w(out, size, args.seed, progress=True)
            print(f"synth300w {size} seed {args.seed}: {root} ({time.perf_counter() - started:.1f} s)")
            return 0
        written = raw_to_csvs(args.raw_root, args.out, skip_bad=args.skip_bad)
        for subset, path in written.items():
            rows = sum(1 for _ in open(path)) - 1
            print(f"{subset:10s} {rows:5d} faces -> {path}")
        link = args.out / "images"
        if not args.no_link and not link.exists() and args.out.resolve() != args.raw_root.resolve():
            os.symlink(args.raw_root.resolve(), link, target_is_directory=True)
            print(f"linked {link} -> {args.raw_root.resolve()}")
        return 0
    except (DataFormatError, FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}")
        return 2
