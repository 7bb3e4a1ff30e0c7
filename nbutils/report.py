"""Collect every run's metrics.json and show the seed tables with our numbers beside the published ones.

All NME values are in % of the inter-ocular distance (as in the seed tables). Our number for a row
is the mean over its finished runs under one profile (± the sample std when there are several
seeds); a row without a finished run shows "—", never 0. `render_report` executes
notebooks/report.ipynb (which calls the functions below) into <outputs>/report.ipynb and .html.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from nbutils import config, runner

SUBSETS = runner.SUBSETS
MISSING = "—"
PROFILE_ORDER = ("gpu", "cpu", "smoke")     # the most faithful profile first
RESULTS_FILE = "results.csv"


# ----------------------------------------------------------------------------- collecting

def collect_results(outputs=None) -> pd.DataFrame:
    """One row per finished run (valid <outputs>/<family>/<run>/metrics.json).

    Columns: family, row, seed, profile, run_id, status, data, table, <subset>_<metric> for every
    subset summary entry (e.g. full_nme, common_fr_0.10), params_m, gflops, wall_seconds,
    search_nme, run_dir. Metric values in %, params in millions, GFLOPs per image.
    """
    root = Path(outputs) if outputs is not None else config.outputs_root()
    records = []
    for path in sorted(root.glob(f"*/*/{runner.METRICS_FILE}")):
        metrics = runner.read_metrics(path.parent)
        if metrics is None:
            continue
        record = {"family": metrics["family"], "row": metrics["row"], "seed": metrics.get("seed"),
                  "profile": metrics["profile"], "run_id": path.parent.name, "status": metrics["status"],
                  "data": metrics.get("data"), "table": metrics.get("table")}
        for subset, summary in metrics["subsets"].items():
            for key, value in summary.items():
                record[f"{subset}_{key}"] = value
        for key in ("params_m", "gflops", "wall_seconds", "search_nme"):
            record[key] = metrics.get(key)
        record["run_dir"] = str(path.parent)
        records.append(record)
    columns = ["family", "row", "seed", "profile", "run_id", "status", "data", "table"]
    columns += [f"{subset}_nme" for subset in SUBSETS]
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return pd.DataFrame(columns=columns + ["params_m", "gflops", "wall_seconds", "search_nme", "run_dir"])
    ordered = [c for c in columns if c in frame] + [c for c in frame if c not in columns]
    return frame[ordered]


def write_results_csv(outputs=None) -> Path:
    """Write collect_results() to <outputs>/results.csv (atomically); returns its path."""
    root = Path(outputs) if outputs is not None else config.outputs_root()
    root.mkdir(parents=True, exist_ok=True)
    path = root / RESULTS_FILE
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    collect_results(root).to_csv(temporary, index=False)
    os.replace(temporary, path)
    return path


def collect_failures(outputs=None) -> pd.DataFrame:
    """Runs with an error.json and no valid metrics.json: family, run_id, status, cell, error."""
    root = Path(outputs) if outputs is not None else config.outputs_root()
    records = []
    for path in sorted(root.glob(f"*/*/{runner.ERROR_FILE}")):
        if runner.read_metrics(path.parent) is not None:
            continue
        error = runner.read_error(path.parent) or {}
        records.append({"family": path.parent.parent.name, "run_id": path.parent.name,
                        "status": error.get("status", "failed"), "cell": error.get("cell_index"),
                        "error": f"{error.get('ename', '')}: {error.get('evalue', '')}",
                        "notebook": str(path.parent / runner.NOTEBOOK_FILE)})
    return pd.DataFrame.from_records(records, columns=["family", "run_id", "status", "cell", "error", "notebook"])


def family_names(params_dir=None, families=None) -> list:
    """The families to report: `families` (names or a comma-separated string) or every params/*.yaml."""
    if families:
        return [f.strip() for f in families.split(",")] if isinstance(families, str) else list(families)
    params_dir = Path(params_dir or config.PARAMS_DIR)
    return sorted(path.stem for path in params_dir.glob("*.yaml"))


def profiles_of(results: pd.DataFrame, family: str | None = None, profiles=None) -> list:
    """Profiles to show for a family: `profiles` if given, else those with results (gpu, cpu, smoke first)."""
    if profiles:
        return [p.strip() for p in profiles.split(",")] if isinstance(profiles, str) else list(profiles)
    present = results if family is None else results[results["family"] == family]
    found = set(present["profile"].dropna())
    return [p for p in PROFILE_ORDER if p in found] + sorted(found - set(PROFILE_ORDER))


# ----------------------------------------------------------------------------- tables

def _runs_of(results: pd.DataFrame, family: str, row_ids, profile) -> pd.DataFrame:
    if results.empty or profile is None:
        return results.iloc[0:0]
    mask = (results["family"] == family) & (results["profile"] == profile) & results["row"].isin(list(row_ids))
    return results[mask]


def mean_std(values) -> str:
    """'2.95 ± 0.02' over several values (sample std), '2.95' for one, '—' for none (NaN/None dropped)."""
    numbers = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not numbers:
        return MISSING
    mean = sum(numbers) / len(numbers)
    if len(numbers) == 1:
        return f"{mean:.2f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in numbers) / (len(numbers) - 1))
    return f"{mean:.2f} ± {std:.2f}"


def _published(value) -> str:
    return MISSING if value is None else f"{value:.2f}"


def _label_columns(family_spec: config.Family, table: str) -> list:
    columns = []
    for row_id in family_spec.tables[table]:
        for column in family_spec.rows[row_id].label:
            if column not in columns:
                columns.append(column)
    return columns


def _run_status(family: str, row_id: str, profile, runs: pd.DataFrame, outputs) -> str:
    if not runs.empty:
        return "done"
    if profile is None:
        return "not run"
    states = [runner.run_status(path) for path in runner.find_runs(family, row_id, profile, outputs).values()]
    for state in ("interrupted", "failed", runner.NEEDS_INPUT, "invalid"):
        if state in states:
            return state
    return "not run"


def seed_table(family_spec: config.Family, table: str, results: pd.DataFrame, profile, outputs=None) -> pd.DataFrame:
    """A seed table as displayed strings: the row's label columns, then per subset our NME (mean ± std
    over seeds) beside the published one, the seeds run and the run status. Missing numbers are '—'."""
    label_columns = _label_columns(family_spec, table)
    table_runs = _runs_of(results, family_spec.name, family_spec.tables[table], profile)
    with_search = any(family_spec.rows[r].reference.get("search_nme") is not None for r in family_spec.tables[table]) \
        or ("search_nme" in table_runs and table_runs["search_nme"].notna().any())
    metrics = (["search_nme"] if with_search else []) + list(SUBSETS)
    lines = []
    for row_id in family_spec.tables[table]:
        row = family_spec.rows[row_id]
        runs = _runs_of(results, family_spec.name, [row_id], profile)
        line = {(column, ""): str(row.label.get(column, "-")) for column in label_columns}
        for metric in metrics:
            column = metric if metric == "search_nme" else f"{metric}_nme"
            ours = runs[column].tolist() if column in runs else []
            line[(metric.replace("_nme", " NME"), "ours")] = mean_std(ours)
            line[(metric.replace("_nme", " NME"), "published")] = _published(row.reference.get(metric))
        seeds = sorted(int(s) for s in runs["seed"].dropna()) if not runs.empty else []
        line[("seeds", "")] = ",".join(map(str, seeds)) if seeds else MISSING
        line[("status", "")] = _run_status(family_spec.name, row_id, profile, runs, outputs)
        line[("row", "")] = row_id
        lines.append(line)
    frame = pd.DataFrame(lines)
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return frame


def group_table(family_spec: config.Family, table: str, results: pd.DataFrame, profile) -> pd.DataFrame | None:
    """For tables whose rows carry a `group` (e.g. one reduction run with several seeds): per group,
    the published and our NME as mean ± std over the group's rows/runs. None when the table has no groups."""
    groups = {}
    for row_id in family_spec.tables[table]:
        group = family_spec.rows[row_id].group
        if group is not None:
            groups.setdefault(group, []).append(row_id)
    if not groups:
        return None
    lines = []
    for group, row_ids in groups.items():
        runs = _runs_of(results, family_spec.name, row_ids, profile)
        line = {("group", ""): group, ("rows", ""): len(row_ids)}
        for subset in SUBSETS:
            column = f"{subset}_nme"
            line[(subset, "ours")] = mean_std(runs[column].tolist() if column in runs else [])
            line[(subset, "published")] = mean_std([family_spec.rows[r].reference.get(subset) for r in row_ids])
        line[("runs", "")] = len(runs)
        lines.append(line)
    frame = pd.DataFrame(lines)
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return frame


def comparability_note(results: pd.DataFrame) -> str:
    """Markdown saying which profile/data the numbers come from and whether they compare with the paper.
    Only gpu-profile runs on a real 300W copy are comparable; synth300w or cpu/smoke runs are not."""
    if results.empty:
        return "**No finished runs yet**: every *ours* column shows “—”. Run e.g. `python -m nbutils run attention --profile cpu`."
    lines = []
    for (profile, data), runs in results.groupby(["profile", results["data"].fillna("synth")], sort=False):
        where = "synth300w (the embedded synthetic data)" if data == "synth" else f"300W at `{data}`"
        comparable = profile == "gpu" and data != "synth"
        verdict = ("comparable with the published numbers (reference schedule on real 300W)" if comparable else
                   "**NOT comparable with the published numbers**: different data and/or a reduced input size "
                   "and schedule. Read them for the ranking of rows within a table, not against the paper")
        lines.append(f"* profile **{profile}**, data {where}: {len(runs)} finished run(s); {verdict}.")
    return "Numbers in this report come from:\n\n" + "\n".join(lines)


# ----------------------------------------------------------------------------- plots

def _row_names(family_spec: config.Family, table: str) -> dict:
    names = {}
    for row_id in family_spec.tables[table]:
        label = family_spec.rows[row_id].label
        names[row_id] = " · ".join(str(v) for v in label.values())
        if list(names.values()).count(names[row_id]) > 1:
            names[row_id] += f" ({row_id})"
    return names


def plot_table(family_spec: config.Family, table: str, results: pd.DataFrame, profile, subset: str = "full"):
    """Two dot plots sharing the row axis: published NME (left) and ours (right, mean ± sd over seeds)
    for one subset. Each x axis is zoomed on its own values (rows differ by tenths of a percent, and
    synthetic-data numbers live on another scale). Rows without a number are marked '— not run' /
    '— not published' instead of a dot."""
    import matplotlib.pyplot as plt
    import matplotlib.transforms as transforms
    import seaborn as sns

    names = _row_names(family_spec, table)
    order = list(names.values())
    published = pd.DataFrame({"row": order, "nme": [family_spec.rows[r].reference.get(subset) for r in names]})
    runs = _runs_of(results, family_spec.name, names, profile)
    column = f"{subset}_nme"
    ours = pd.DataFrame({"row": [names[r] for r in runs["row"]],
                         "nme": runs[column].astype(float) if column in runs else []})
    figure, axes = plt.subplots(1, 2, figsize=(11, 0.9 + 0.3 * len(order)), sharey=True)
    panels = ((axes[0], published, "published (300W)", "#6f6f6f", "not published"),
              (axes[1], ours, f"ours ({profile})" if profile else "ours (no runs yet)", "#3b75af", "not run"))
    for axis, frame, title, colour, absent in panels:
        frame = frame.dropna(subset=["nme"])
        if not frame.empty:
            sns.pointplot(data=frame, y="row", x="nme", order=order, color=colour, errorbar="sd",
                          linestyle="none", markersize=5, ax=axis)
        axis.set_yticks(range(len(order)), order)
        axis.set_ylim(len(order) - 0.5, -0.5)
        at_left = transforms.blended_transform_factory(axis.transAxes, axis.transData)
        for name in order:
            if name not in set(frame["row"]):
                axis.text(0.01, order.index(name), f"{MISSING} {absent}", transform=at_left, va="center",
                          color="#b03030", fontsize=8)
        axis.grid(axis="x", alpha=0.3)
        axis.set_title(title)
        axis.set_xlabel(f"{subset} NME (%)")
        axis.set_ylabel("")
    figure.suptitle(table, x=0.01, ha="left")
    figure.tight_layout()
    return figure


def ced_frame(results: pd.DataFrame, family: str, profile) -> pd.DataFrame:
    """Long frame of the CED curves stored in metrics.json: row, seed, subset, threshold, fraction."""
    records = []
    runs = results[(results["family"] == family) & (results["profile"] == profile)] if not results.empty else results
    for _, run in runs.iterrows():
        path = Path(run["run_dir"]) / runner.METRICS_FILE
        ced = json.loads(path.read_text()).get("ced")
        if not ced:
            continue
        for subset, values in ced["values"].items():
            for threshold, fraction in zip(ced["thresholds"], values):
                records.append({"row": run["row"], "seed": run["seed"], "subset": subset,
                                "threshold": threshold, "fraction": fraction})
    return pd.DataFrame.from_records(records, columns=["row", "seed", "subset", "threshold", "fraction"])


def plot_ced(results: pd.DataFrame, family: str, profile, subsets=("common", "challenge", "test")):
    """Cumulative error distribution per subset (fraction of images with NME below a threshold, the
    threshold as a fraction of inter-ocular distance), one line per row (mean over seeds). None if no
    run stored a `ced` entry."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    frame = ced_frame(results, family, profile)
    subsets = [s for s in subsets if s in set(frame["subset"])]
    if frame.empty or not subsets:
        return None
    figure, axes = plt.subplots(1, len(subsets), figsize=(4.2 * len(subsets), 3.6), sharey=True, squeeze=False)
    for axis, subset in zip(axes[0], subsets):
        sns.lineplot(data=frame[frame["subset"] == subset], x="threshold", y="fraction", hue="row",
                     errorbar=None, ax=axis, legend=axis is axes[0][-1])
        axis.set_title(f"{family} [{profile}]: {subset}")
        axis.set_xlabel("NME threshold (fraction of inter-ocular distance)")
        axis.set_ylabel("fraction of images")
    legend = axes[0][-1].get_legend()
    if legend is not None:
        legend.set_bbox_to_anchor((1.02, 1))
        legend.set_loc("upper left")
    figure.tight_layout()
    return figure


def plot_cost(results: pd.DataFrame, family: str, profile, subset: str = "full"):
    """NME (%) against parameters (M) and GFLOPs, one point per row (mean over seeds). None when no
    run of the family reported its cost."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    runs = results[(results["family"] == family) & (results["profile"] == profile)] if not results.empty else results
    column = f"{subset}_nme"
    costs = [c for c in ("params_m", "gflops") if c in runs and runs[c].notna().any()]
    if runs.empty or column not in runs or not costs:
        return None
    means = runs.groupby("row")[[column] + costs].mean(numeric_only=True).reset_index()
    figure, axes = plt.subplots(1, len(costs), figsize=(5.5 * len(costs), 4), squeeze=False)
    for axis, cost in zip(axes[0], costs):
        points = means.dropna(subset=[cost, column])
        sns.scatterplot(data=points, x=cost, y=column, ax=axis, s=50, color="#3b75af")
        for _, point in points.iterrows():
            axis.annotate(point["row"], (point[cost], point[column]), fontsize=7, xytext=(3, 3),
                          textcoords="offset points")
        axis.set_xlabel({"params_m": "parameters (M)", "gflops": "GFLOPs (multiply-adds / 1e9)"}[cost])
        axis.set_ylabel(f"{subset} NME (%)")
        axis.set_title(f"{family} [{profile}]")
    figure.tight_layout()
    return figure


# ----------------------------------------------------------------------------- notebook helpers

def _show_frame(frame: pd.DataFrame) -> None:
    from IPython.display import display
    display(frame.style.hide(axis="index"))


def show_family(family: str, results: pd.DataFrame, params_dir=None, profiles=None, outputs=None,
                subset: str = "full") -> None:
    """Display every seed table of a family for each profile with results (or with none yet): the
    table, its per-group summary and the NME bar plot."""
    import matplotlib.pyplot as plt
    from IPython.display import Markdown, display

    family_spec = config.load_family(family, params_dir, validate=False)
    display(Markdown(f"## {family}\n\n{family_spec.description or ''}"))
    for profile in profiles_of(results, family, profiles) or [None]:
        for table in family_spec.tables:
            heading = f"### {table}" + (f" — profile `{profile}`" if profile else " — no runs yet")
            display(Markdown(heading))
            _show_frame(seed_table(family_spec, table, results, profile, outputs))
            groups = group_table(family_spec, table, results, profile)
            if groups is not None:
                display(Markdown("Per group (mean ± std over the group's rows and seeds):"))
                _show_frame(groups)
            figure = plot_table(family_spec, table, results, profile, subset)
            display(figure)
            plt.close(figure)


def show_curves(results: pd.DataFrame, families, profiles=None) -> None:
    """Display the CED curves and the accuracy-vs-cost plots of every family/profile that has them."""
    import matplotlib.pyplot as plt
    from IPython.display import Markdown, display

    shown = False
    for family in families:
        for profile in profiles_of(results, family, profiles):
            for plot in (plot_ced, plot_cost):
                figure = plot(results, family, profile)
                if figure is not None:
                    display(figure)
                    plt.close(figure)
                    shown = True
    if not shown:
        display(Markdown(f"{MISSING} no finished run has stored CED curves or its cost yet."))


def render_report(outputs=None, params_dir=None, families=None, profiles=None, notebook=None) -> dict:
    """Write <outputs>/results.csv, execute notebooks/report.ipynb into <outputs>/report.ipynb and
    export it to <outputs>/report.html. Returns {"csv", "notebook", "html"} paths."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    root = Path(outputs).resolve() if outputs is not None else config.outputs_root()
    csv_path = write_results_csv(root)
    source = Path(notebook) if notebook is not None else config.NOTEBOOKS_DIR / "report.ipynb"
    notebook_path = root / "report.ipynb"
    temporary = root / ".report.tmp.ipynb"
    parameters = {"outputs_dir": str(root),
                  "params_dir": str(Path(params_dir).resolve()) if params_dir else None,
                  "families": families if families is None or isinstance(families, str) else ",".join(families),
                  "profiles": profiles if profiles is None or isinstance(profiles, str) else ",".join(profiles)}
    papermill.execute_notebook(str(source), str(temporary), parameters=parameters, kernel_name=runner.KERNEL_NAME,
                               cwd=str(config.REPO_ROOT), progress_bar=False, log_output=False)
    os.replace(temporary, notebook_path)
    body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(notebook_path), as_version=4))
    html_path = root / "report.html"
    temporary = root / ".report.html.tmp"
    temporary.write_text(body)
    os.replace(temporary, html_path)
    return {"csv": csv_path, "notebook": notebook_path, "html": html_path}
