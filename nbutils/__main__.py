"""Command line: `python -m nbutils COMMAND [options]`.

    data     generate / inspect data sets (nbutils.data.cli)
    run      execute a family's table rows with papermill:  run attention --profile cpu
    list     rows of a family and the state of their runs:  list attention --profile cpu
    report   collect metrics into results.csv and render report.ipynb / report.html
    bench    timing benchmarks:                              bench data model

Each command is one function registered with @command; it receives its own argument list and
returns the exit status (0 ok, 1 some runs failed, 2 bad parameters, 130 interrupted).
"""
from __future__ import annotations

import argparse
import sys

COMMANDS = {}


def command(name: str, summary: str):
    """Register `function(argv: list[str]) -> int` as the subcommand `name`."""
    def register(function):
        COMMANDS[name] = (function, summary)
        return function
    return register


def _parser(name: str, summary: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"python -m nbutils {name}", description=summary)


def _add_locations(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--outputs", help="outputs root (default $NBUTILS_OUTPUTS or ./outputs)")
    parser.add_argument("--params-dir", help="folder of <family>.yaml and profiles/ (default params/)")
    parser.add_argument("--notebooks-dir", help="folder of the family notebooks (default notebooks/)")


@command("data", "generate and inspect 300W / synth300w data (see `data --help`)")
def data_command(argv: list) -> int:
    from nbutils.data import cli
    return cli.main(argv) or 0


@command("run", "execute the rows of a family's tables as papermill runs")
def run_command(argv: list) -> int:
    from nbutils import runner
    parser = _parser("run", "Execute the rows of params/<FAMILY>.yaml with papermill, one folder per "
                            "row x seed under <outputs>/<FAMILY>/<row>-s<seed>-<profile>/. Finished runs "
                            "(valid metrics.json) are skipped unless --force.")
    parser.add_argument("family")
    parser.add_argument("--profile", default="cpu", help="params/profiles/<P>.yaml (default cpu)")
    parser.add_argument("--rows", help="glob(s) over row ids, comma-separated, e.g. 'se-r*,baseline' "
                                       "(default: the profile's selection)")
    parser.add_argument("--seeds", help="comma-separated seeds run for every row (default: each row's own seed)")
    parser.add_argument("--data", help="'synth' or the root of a real 300W copy (sets data.root)")
    parser.add_argument("--executor", choices=("local", "ray"), default="local")
    parser.add_argument("--jobs", type=int, default=1, help="local runs in parallel (processes)")
    parser.add_argument("--cpus-per-run", type=float, default=1.0, help="Ray: CPUs reserved per run")
    parser.add_argument("--force", action="store_true", help="rerun finished runs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter for every run, e.g. --set train.epochs=3 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_locations(parser)
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()] if args.seeds else None
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: expected comma-separated integers")
    results = runner.run_family(args.family, args.profile, rows=args.rows, seeds=seeds, data=args.data,
                                overrides=args.overrides, executor=args.executor, jobs=args.jobs,
                                force=args.force, cpus_per_run=args.cpus_per_run, params_dir=args.params_dir,
                                notebooks_dir=args.notebooks_dir, outputs=args.outputs,
                                progress=not args.no_progress)
    print(f"{args.family} [{args.profile}]: {runner.summarize(results)}")
    return 1 if any(r["status"] == "failed" for r in results) else 0


@command("list", "show a family's rows and the state of their runs")
def list_command(argv: list) -> int:
    from nbutils import runner
    parser = _parser("list", "Rows of params/<FAMILY>.yaml with their run status under one profile "
                             "(done / failed / interrupted / missing) and our NME (%) next to the published full NME. "
                             "'*' marks the rows the profile runs by default.")
    parser.add_argument("family")
    parser.add_argument("--profile", default="cpu")
    _add_locations(parser)
    args = parser.parse_args(argv)
    lines = runner.list_runs(args.family, args.profile, args.params_dir, args.notebooks_dir, args.outputs)

    def number(value):
        return "—" if value is None else f"{value:.2f}"

    header = f"{'':1} {'row':26} {'seed':>5} {'status':11} " + " ".join(f"{s:>9}" for s in runner.SUBSETS) \
        + f" {'ref full':>8}  table"
    print(header)
    for line in lines:
        print(f"{'*' if line['selected'] else ' ':1} {line['row']:26} {line['seed']:>5} {line['status']:11} "
              + " ".join(f"{number(line[s]):>9}" for s in runner.SUBSETS)
              + f" {number(line['ref_full']):>8}  {line['table']}")
    done = sum(line["status"] == "done" for line in lines)
    print(f"{done}/{len(lines)} done")
    return 0


@command("report", "collect metrics into results.csv and render the report notebook + HTML")
def report_command(argv: list) -> int:
    from nbutils import report
    parser = _parser("report", "Collect every metrics.json under the outputs root into results.csv and "
                               "render notebooks/report.ipynb to <outputs>/report.ipynb and report.html.")
    parser.add_argument("--families", help="comma-separated families (default: every params/*.yaml)")
    parser.add_argument("--profiles", help="comma-separated profiles (default: every profile with results)")
    _add_locations(parser)
    args = parser.parse_args(argv)
    paths = report.render_report(args.outputs, args.params_dir, args.families, args.profiles)
    for kind, path in paths.items():
        print(f"{kind:9} {path}")
    return 0


@command("bench", "timing benchmarks (names: data, model, ...; none = all)")
def bench_command(argv: list) -> int:
    from nbutils import bench
    parser = _parser("bench", "Run timing benchmarks and print their tables.")
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all: {', '.join(bench.BENCHMARKS)})")
    args = parser.parse_args(argv)
    try:
        bench.run(args.names or None)
    except ValueError as error:
        parser.error(str(error))
    return 0


@command("predict", "68 landmarks with a trained run on your images / videos / folders (see `predict --help`)")
def predict_command(argv: list) -> int:
    from nbutils import predict
    return predict.predict_command(argv)


@command("export", "export a run's network to ONNX, checked against PyTorch with ONNX Runtime")
def export_command(argv: list) -> int:
    from nbutils import predict
    return predict.export_command(argv)


def main(argv=None) -> int:
    from nbutils.config import ParamsError
    from nbutils.runner import RunnerError
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        print("usage: python -m nbutils COMMAND [options]   (COMMAND --help for its options)\n")
        for name, (_, summary) in COMMANDS.items():
            print(f"  {name:{width}}  {summary}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    function, _ = COMMANDS[argv[0]]
    try:
        return function(argv[1:])
    except (ParamsError, RunnerError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs are kept; the running one is marked interrupted (error.json)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
