"""Turn parameter tables into papermill runs, one folder per run.

A run is (family, row, seed, profile). Its folder `<outputs>/<family>/<row>-s<seed>-<profile>/` holds

    params.yaml      {run: who/when, parameters: exactly what papermill injected}
    notebook.ipynb   the rendered family notebook: the run's report (partial when the run failed)
    metrics.json     written by the notebook through `write_metrics`; its presence (valid) = finished
    error.json       the failure record (cell index, exception name and message) when it did not finish

Runs whose metrics.json is valid are skipped unless forced; a failing run leaves its partial notebook
and error.json, and the batch goes on. Executors: in-process (jobs=1), a process pool (jobs>1) or Ray
(one task per run, one GPU each on CUDA machines).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
import time
import traceback as traceback_module
from pathlib import Path

import yaml

from nbutils import config
from nbutils.config import write_json_atomic  # noqa: F401  (part of the runner's API: metrics/error records)

PARAMS_FILE = "params.yaml"
NOTEBOOK_FILE = "notebook.ipynb"
METRICS_FILE = "metrics.json"
ERROR_FILE = "error.json"
SUBSETS = ("common", "challenge", "full", "test")
KERNEL_NAME = "python3"
NEEDS_INPUT = "needs input"   # status of a run stopped by config.NeedsInput (a missing user-supplied file)
_NUMBER_FIELDS = ("params_m", "gflops", "wall_seconds", "search_nme")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class RunnerError(RuntimeError):
    """The batch cannot start (e.g. Ray missing); per-run failures are recorded, not raised."""


# ----------------------------------------------------------------------------- files and metrics

def _jsonable(value):
    """Plain JSON types: numpy/torch scalars and arrays via item()/tolist(), non-finite floats -> None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None   # JSON has no NaN; a diverged metric is "absent"
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):                          # numpy arrays/scalars, torch tensors
        return _jsonable(value.tolist())
    if hasattr(value, "item"):
        return _jsonable(value.item())
    raise TypeError(f"cannot store {type(value).__name__} in JSON: {value!r}")


def _write_yaml_atomic(path: Path, record: dict) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(yaml.safe_dump(record, sort_keys=False))
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def read_run_info(run_dir) -> dict:
    """The `run` block of run_dir/params.yaml (family, row, seed, profile, ...), {} when absent."""
    path = Path(run_dir) / PARAMS_FILE
    if not path.is_file():
        return {}
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return {}
    return content.get("run", {}) if isinstance(content, dict) else {}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_metrics(record: dict) -> list:
    """Problems with a metrics record (empty list = valid). See write_metrics for the schema."""
    problems = []
    for key in ("family", "row", "profile", "status"):
        if not isinstance(record.get(key), str) or not record.get(key):
            problems.append(f"'{key}' must be a non-empty string")
    if record.get("seed") is not None and (isinstance(record["seed"], bool) or not isinstance(record["seed"], int)):
        problems.append("'seed' must be an int")
    subsets = record.get("subsets")
    if not isinstance(subsets, dict) or not subsets:
        problems.append("'subsets' must map at least one subset (common, challenge, full, test) to its summary")
    else:
        for name, summary in subsets.items():
            if not isinstance(summary, dict) or "nme" not in summary:
                problems.append(f"subset '{name}' needs an 'nme' entry (% of inter-ocular distance)")
            elif summary["nme"] is not None and not _is_number(summary["nme"]):
                problems.append(f"subsets.{name}.nme must be a number or null")
    for key in _NUMBER_FIELDS:
        if record.get(key) is not None and not _is_number(record[key]):
            problems.append(f"'{key}' must be a number or null")
    ced = record.get("ced")
    if ced is not None:
        thresholds = ced.get("thresholds") if isinstance(ced, dict) else None
        values = ced.get("values") if isinstance(ced, dict) else None
        if not isinstance(thresholds, list) or not isinstance(values, dict):
            problems.append("'ced' must be {thresholds: [...], values: {subset: [...]}}")
        else:
            for name, curve in values.items():
                if not isinstance(curve, list) or len(curve) != len(thresholds):
                    problems.append(f"ced.values.{name} must be a list as long as ced.thresholds")
    return problems


def write_metrics(run_dir, metrics: dict) -> dict:
    """Store a run's results as run_dir/metrics.json (atomically) and return the stored record.

    Called by the notebook at its end. `metrics` holds the measurements:
      subsets      {subset: {"nme": %, "fr_0.08": %, "fr_0.10": %, "auc_0.08": %, "auc_0.10": %, "n": int}}
                   (subset summaries may also be given at the top level, as evaluate_subsets returns them,
                   or as `best`, as engine.fit's FitResult.metrics holds them: write_metrics(run_dir, result.metrics))
      params_m     parameters in millions;  gflops  multiply-accumulates / 1e9 at the run's input size
      wall_seconds run time (default: seconds since the runner started the run)
      search_nme   % NME of a NAS supernet at the end of search (NAS families)
      ced          {"thresholds": [fraction of inter-ocular distance], "values": {subset: [fraction of images]}}
      status       "ok" unless given; anything else the notebook wants to keep (history, architecture, ...)
    Identity (family, row, seed, profile, table, tables, data) comes from run_dir/params.yaml, written by
    the runner; a notebook run by hand without it is recorded as family/row "scratch", profile "interactive".
    NaN/inf become null. Raises ValueError naming the problems when the record does not fit the schema.
    """
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    record = {
        "family": info.get("family", "scratch"),
        "row": info.get("row", "scratch"),
        "seed": info.get("seed"),
        "profile": info.get("profile", "interactive"),
        "table": (info.get("tables") or [None])[0],
        "tables": info.get("tables", []),
        "data": info.get("data"),
    }
    measured = dict(metrics)
    subsets = dict(measured.pop("subsets", {}) or {})
    for name in SUBSETS:
        if isinstance(measured.get(name), dict):
            subsets[name] = measured.pop(name)
    best = measured.get("best")
    if not subsets and isinstance(best, dict) and all(isinstance(v, dict) and "nme" in v for v in best.values()):
        subsets = dict(best)   # engine.fit's metrics: the best epoch's summaries are the run's result
    record.update(measured)
    record["subsets"] = subsets
    record.setdefault("status", "ok")
    for key in ("params_m", "gflops"):
        record.setdefault(key, None)
    if record.get("wall_seconds") is None and "started_at" in info:
        record["wall_seconds"] = time.time() - float(info["started_at"])
    record.setdefault("wall_seconds", None)
    record["written_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    record = _jsonable(record)
    problems = validate_metrics(record)
    if problems:
        raise ValueError(f"{run_dir / METRICS_FILE}: not written: " + "; ".join(problems))
    write_json_atomic(run_dir / METRICS_FILE, record)
    return record


def ced_record(nmes_by_subset: dict, threshold: float = 0.10, steps: int = 100) -> dict:
    """The `ced` entry of metrics.json from per-image NMEs (fractions of inter-ocular distance) per subset:
    {"thresholds": [0 .. threshold], "values": {subset: fraction of images with NME <= threshold}};
    `full` (the union of common and challenge) is added when both are given."""
    from nbutils.metrics import ced_curve, with_full_set
    values, thresholds = {}, None
    for subset, nmes in with_full_set(nmes_by_subset).items():
        thresholds, fractions = ced_curve(nmes, threshold, steps)
        values[subset] = [float(f) for f in fractions]
    return {"thresholds": [float(t) for t in thresholds] if thresholds is not None else [], "values": values}


def read_metrics(run_dir) -> dict | None:
    """run_dir/metrics.json when it exists and is valid (the run is finished), else None."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError:
        return None
    return record if isinstance(record, dict) and not validate_metrics(record) else None


def read_error(run_dir) -> dict | None:
    path = Path(run_dir) / ERROR_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {"status": "failed", "ename": "unreadable error.json", "evalue": str(path)}


def run_status(run_dir) -> str:
    """'done' (valid metrics.json), 'failed' / 'interrupted' / 'needs input' (error.json), 'invalid' (bad
    metrics.json) or 'missing'."""
    run_dir = Path(run_dir)
    if read_metrics(run_dir) is not None:
        return "done"
    error = read_error(run_dir)
    if error is not None:
        return error.get("status", "failed")
    if (run_dir / METRICS_FILE).exists():
        return "invalid"
    return "missing"


# ----------------------------------------------------------------------------- planning

@dataclasses.dataclass
class RunSpec:
    """Everything a worker needs to execute one run (picklable; paths absolute)."""
    family: str
    row: str
    tables: list
    seed: int
    profile: str
    run_id: str
    run_dir: Path
    notebook: Path
    parameters: dict
    outputs: Path
    data: str
    overrides: list
    cwd: Path = config.REPO_ROOT


def plan_runs(family: str, profile: str = "cpu", rows: str | None = None, seeds=None, data: str | None = None,
              overrides=(), params_dir=None, notebooks_dir=None, outputs=None) -> list:
    """Expand a family's rows into RunSpecs: selected rows (glob `rows`, else the profile's selection)
    x seeds (None = each row's own seed), in table order. Every row of the family file is validated
    first, so a typo anywhere stops the batch before anything runs."""
    family_spec = config.load_family(family, params_dir, notebooks_dir, validate=True)
    profile_spec = config.load_profile(profile, params_dir)
    outputs = Path(outputs).resolve() if outputs is not None else config.outputs_root()
    specs, seen = [], set()
    for row in config.select_rows(family_spec, profile_spec, rows):
        for seed in (seeds or [row.seed]):
            if (row.id, seed) in seen:
                continue
            seen.add((row.id, seed))
            # plain JSON types (tuples -> lists): what papermill injects is exactly what params.yaml records
            parameters = _jsonable(config.resolve(family_spec, row.id, profile_spec, seed=seed, data=data,
                                                  overrides=overrides, outputs=outputs))
            specs.append(RunSpec(family=family, row=row.id, tables=list(row.tables), seed=int(seed),
                                 profile=profile, run_id=config.run_id(row.id, seed, profile),
                                 run_dir=Path(parameters["run_dir"]), notebook=family_spec.notebook.resolve(),
                                 parameters=parameters, outputs=outputs,
                                 data=(parameters.get("data") or {}).get("root", "synth"),
                                 overrides=list(overrides)))
    return specs


# ----------------------------------------------------------------------------- executing one run

def _result(spec: RunSpec, status: str, seconds: float = 0.0, error: str | None = None, note: str | None = None) -> dict:
    return {"run_id": spec.run_id, "family": spec.family, "row": spec.row, "seed": spec.seed,
            "profile": spec.profile, "run_dir": str(spec.run_dir), "status": status,
            "seconds": round(seconds, 2), "error": error, "note": note}


def _record_error(spec: RunSpec, status: str, ename: str, evalue: str, cell_index=None, exec_count=None,
                  trace=None) -> None:
    trace = [_ANSI.sub("", line) for line in (trace or [])]
    write_json_atomic(spec.run_dir / ERROR_FILE, {
        "run_id": spec.run_id, "family": spec.family, "row": spec.row, "seed": spec.seed, "profile": spec.profile,
        "status": status, "cell_index": cell_index, "exec_count": exec_count, "ename": ename, "evalue": evalue,
        "traceback": trace[-30:], "notebook": str(spec.run_dir / NOTEBOOK_FILE),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })


def _mark_notebook_interrupted(path: Path) -> None:
    """Put a banner on top of a partial notebook so a reader sees at once that the run was stopped."""
    if not path.is_file():
        return
    import nbformat
    try:
        notebook = nbformat.read(str(path), as_version=4)
    except Exception:   # a notebook cut mid-write cannot be annotated; error.json still says it all
        return
    banner = nbformat.v4.new_markdown_cell(
        f"**Interrupted** (Ctrl-C) at {time.strftime('%Y-%m-%d %H:%M:%S')}: this notebook is partial "
        f"and the run has no metrics.json.")
    notebook.cells.insert(0, banner)
    notebook.metadata.setdefault("nbutils", {})["status"] = "interrupted"
    temporary = path.with_name(f".{path.name}.tmp")
    nbformat.write(notebook, str(temporary))
    os.replace(temporary, path)


def execute_run(spec: RunSpec, force: bool = False) -> dict:
    """Execute one run with papermill (kernel python3, cwd = repo root) unless it is finished.

    Returns {run_id, status: done|skipped|failed, seconds, error, ...}. Failures are recorded in
    error.json and returned, not raised; KeyboardInterrupt marks the run interrupted and propagates.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    logging.getLogger("papermill").setLevel(logging.WARNING)
    run_dir = Path(spec.run_dir)
    if not force and read_metrics(run_dir) is not None:
        previous = (yaml.safe_load((run_dir / PARAMS_FILE).read_text()) or {}).get("parameters") \
            if (run_dir / PARAMS_FILE).is_file() else None
        note = None if previous in (None, spec.parameters) else "parameters changed since it finished (use --force to rerun)"
        return _result(spec, "skipped", note=note)

    if force and run_dir.exists():
        # A forced run starts over: otherwise fit/search would resume from the old last.pt / search_arch.json.
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (METRICS_FILE, ERROR_FILE):
        (run_dir / stale).unlink(missing_ok=True)
    started = time.time()
    _write_yaml_atomic(run_dir / PARAMS_FILE, {
        "run": {"family": spec.family, "row": spec.row, "tables": spec.tables, "seed": spec.seed,
                "profile": spec.profile, "run_id": spec.run_id, "data": spec.data, "overrides": spec.overrides,
                "notebook": str(spec.notebook), "started_at": started,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started))},
        "parameters": spec.parameters,
    })
    # The kernel inherits this environment: its data caches land under the same outputs root as the runs.
    previous_outputs = os.environ.get("NBUTILS_OUTPUTS")
    os.environ["NBUTILS_OUTPUTS"] = str(spec.outputs)
    output_notebook = run_dir / NOTEBOOK_FILE
    try:
        papermill.execute_notebook(str(spec.notebook), str(output_notebook), parameters=spec.parameters,
                                   kernel_name=KERNEL_NAME, cwd=str(spec.cwd), progress_bar=False,
                                   log_output=False)
    except PapermillExecutionError as error:
        status = NEEDS_INPUT if error.ename == config.NeedsInput.__name__ else "failed"
        _record_error(spec, status, error.ename, error.evalue, cell_index=error.cell_index,
                      exec_count=error.exec_count, trace=error.traceback)
        return _result(spec, status, time.time() - started, f"cell {error.cell_index}: {error.ename}: {error.evalue}")
    except KeyboardInterrupt:
        _record_error(spec, "interrupted", "KeyboardInterrupt", "stopped by the user (Ctrl-C)")
        _mark_notebook_interrupted(output_notebook)
        raise
    except Exception as error:   # kernel died, notebook unreadable, ...: recorded so the batch goes on
        _record_error(spec, "failed", type(error).__name__, str(error),
                      trace=traceback_module.format_exception(error))
        return _result(spec, "failed", time.time() - started, f"{type(error).__name__}: {error}")
    finally:
        if previous_outputs is None:
            os.environ.pop("NBUTILS_OUTPUTS", None)
        else:
            os.environ["NBUTILS_OUTPUTS"] = previous_outputs

    if read_metrics(run_dir) is None:
        problem = "the notebook finished without writing metrics.json (call nbutils.runner.write_metrics)"
        if (run_dir / METRICS_FILE).exists():
            problem = "metrics.json is not valid: " + "; ".join(
                validate_metrics(json.loads((run_dir / METRICS_FILE).read_text())))
        _record_error(spec, "failed", "MissingMetrics", problem)
        return _result(spec, "failed", time.time() - started, problem)
    return _result(spec, "done", time.time() - started)


# ----------------------------------------------------------------------------- executors

def _progress(total: int, description: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=description, unit="run", disable=not enabled, dynamic_ncols=True)


def _report_result(bar, result: dict) -> None:
    bar.update(1)
    bar.set_postfix_str(f"{result['run_id']}: {result['status']}")
    if result["status"] in ("failed", NEEDS_INPUT):
        bar.write(f"{result['status'].upper()} {result['run_id']}: {result['error']}")
    elif result.get("note"):
        bar.write(f"skipped {result['run_id']}: {result['note']}")


def _run_local(specs: list, force: bool, jobs: int, bar) -> list:
    if jobs <= 1:
        results = []
        for spec in specs:
            results.append(execute_run(spec, force))
            _report_result(bar, results[-1])
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    results = []
    # spawn: a fresh interpreter per worker, no inherited zmq/asyncio state from the parent.
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(execute_run, spec, force): spec for spec in specs}
        try:
            for future in as_completed(futures):
                spec = futures[future]
                try:
                    result = future.result()
                except Exception as error:   # the worker process itself died
                    _record_error(spec, "failed", type(error).__name__, str(error))
                    result = _result(spec, "failed", error=f"{type(error).__name__}: {error}")
                results.append(result)
                _report_result(bar, result)
        except KeyboardInterrupt:
            for future in futures:
                future.cancel()
            raise
    return results


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _run_ray(specs: list, force: bool, cpus_per_run: float, bar) -> list:
    try:
        import ray
    except ImportError:
        raise RunnerError("--executor ray needs Ray: pip install 'ray[default]' (or the 'cluster' extra)") from None
    started_here = False
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            # Cluster workers must import nbutils and see the outputs folder (shared filesystem).
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(cpus_per_run)), include_dashboard=False,
                     log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                         filter(None, [str(config.REPO_ROOT), os.environ.get("PYTHONPATH")]))}})
            started_here = True
    task = ray.remote(num_cpus=cpus_per_run, num_gpus=1 if _cuda_available() else 0, max_retries=0)(execute_run)
    pending = {task.remote(spec, force): spec for spec in specs}
    results = []
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            spec = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except Exception as error:   # worker crashed or task could not run: record and go on
                _record_error(spec, "failed", type(error).__name__, str(error).splitlines()[0] if str(error) else "")
                result = _result(spec, "failed", error=f"{type(error).__name__}: {error}")
            results.append(result)
            _report_result(bar, result)
    except KeyboardInterrupt:
        for reference in pending:
            ray.cancel(reference, force=True)
        raise
    finally:
        if started_here:
            ray.shutdown()
    return results


def run_family(family: str, profile: str = "cpu", rows: str | None = None, seeds=None, data: str | None = None,
               overrides=(), executor: str = "local", jobs: int = 1, force: bool = False, cpus_per_run: float = 1,
               params_dir=None, notebooks_dir=None, outputs=None, progress: bool = True) -> list:
    """Plan and execute a family's runs; returns one result dict per run (status done/skipped/failed).

    executor: "local" (jobs processes at a time; 1 = in this process) or "ray" (one task per run,
    num_cpus=cpus_per_run, num_gpus=1 when CUDA is available; RAY_ADDRESS or a local instance).
    """
    specs = plan_runs(family, profile, rows, seeds, data, overrides, params_dir, notebooks_dir, outputs)
    with _progress(len(specs), f"{family} [{profile}]", progress) as bar:
        if executor == "local":
            return _run_local(specs, force, jobs, bar)
        if executor == "ray":
            return _run_ray(specs, force, cpus_per_run, bar)
    raise RunnerError(f"unknown executor {executor!r} (local or ray)")


def summarize(results: list) -> str:
    """One line of counts plus one line per failed run."""
    counts = {}
    for result in results:
        counts[result["status"]] = counts.get(result["status"], 0) + 1
    lines = [", ".join(f"{count} {status}" for status, count in sorted(counts.items())) or "no runs"]
    for result in results:
        if result["status"] in ("failed", NEEDS_INPUT):
            lines.append(f"  {result['status']} {result['run_id']}: {result['error']}  "
                         f"(see {Path(result['run_dir']) / ERROR_FILE})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- status listing

def find_runs(family: str, row_id: str, profile: str, outputs=None) -> dict:
    """{seed: run_dir} of the existing run folders of one row under one profile."""
    root = (Path(outputs) if outputs is not None else config.outputs_root()) / family
    pattern = re.compile(rf"^{re.escape(row_id)}-s(\d+)-{re.escape(profile)}$")
    found = {}
    if root.is_dir():
        for path in root.iterdir():
            match = pattern.match(path.name)
            if match and path.is_dir():
                found[int(match.group(1))] = path
    return found


def list_runs(family: str, profile: str = "cpu", params_dir=None, notebooks_dir=None, outputs=None) -> list:
    """One dict per (row, seed): row, seed, selected (in the profile's default selection), status,
    our NME per subset (%, None when not finished), reference full NME, table."""
    family_spec = config.load_family(family, params_dir, notebooks_dir, validate=False)
    profile_spec = config.load_profile(profile, params_dir)
    selected = {row.id for row in config.select_rows(family_spec, profile_spec)}
    outputs = Path(outputs) if outputs is not None else config.outputs_root()
    lines = []
    for row in family_spec.rows.values():
        runs = find_runs(family, row.id, profile, outputs)
        runs.setdefault(row.seed, outputs / family / config.run_id(row.id, row.seed, profile))
        for seed in sorted(runs):
            metrics = read_metrics(runs[seed]) or {}
            subsets = metrics.get("subsets", {})
            lines.append({"row": row.id, "seed": seed, "selected": row.id in selected,
                          "status": run_status(runs[seed]),
                          **{name: (subsets.get(name) or {}).get("nme") for name in SUBSETS},
                          "ref_full": row.reference.get("full"), "table": row.tables[0]})
    return lines
