"""Results collection and the report: our numbers beside the published ones, missing rows as '—'."""
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from nbutils import config, report, runner

FIXTURES = Path(__file__).parent / "fixtures"
PARAMS = FIXTURES / "params"


def finished_run(outputs, row, seed, profile, nme_common, data="synth", tables=("Toy depth",), ced=True):
    """A run folder as the runner + notebook leave it (params.yaml identity, metrics.json)."""
    run_dir = outputs / "toy" / config.run_id(row, seed, profile)
    run_dir.mkdir(parents=True)
    (run_dir / "params.yaml").write_text(yaml.safe_dump({"run": {
        "family": "toy", "row": row, "seed": seed, "profile": profile, "tables": list(tables), "data": data}}))
    metrics = {"subsets": {name: {"nme": nme_common + offset} for offset, name in enumerate(runner.SUBSETS)},
               "params_m": 1.5, "gflops": 0.25, "wall_seconds": 2.0}
    if ced:
        metrics["ced"] = {"thresholds": [0.0, 0.05, 0.1], "values": {"common": [0.0, 0.4, 0.9]}}
    runner.write_metrics(run_dir, metrics)
    return run_dir


def failed_run(outputs, row, seed, profile):
    run_dir = outputs / "toy" / config.run_id(row, seed, profile)
    run_dir.mkdir(parents=True)
    runner.write_json_atomic(run_dir / "error.json", {"status": "failed", "cell_index": 3, "ename": "ValueError",
                                                      "evalue": "toy failure"})


@pytest.fixture
def partial_outputs(tmp_path):
    """Some rows finished (base with two seeds), one failed, the rest never ran."""
    outputs = tmp_path / "outputs"
    finished_run(outputs, "base", 111, "cpu", 2.0, tables=("Toy depth", "Toy width"))
    finished_run(outputs, "base", 222, "cpu", 4.0, tables=("Toy depth", "Toy width"))
    finished_run(outputs, "wide", 111, "cpu", 6.0, tables=("Toy width",), ced=False)
    finished_run(outputs, "seed-a", 111, "cpu", 1.0, tables=("Toy seeds",))
    finished_run(outputs, "seed-b", 222, "cpu", 2.0, tables=("Toy seeds",))
    failed_run(outputs, "broken", 222, "cpu")
    (outputs / "toy" / "half-s1-cpu").mkdir()
    (outputs / "toy" / "half-s1-cpu" / "metrics.json").write_text('{"family": "toy", "ro')   # not a result
    return outputs


def test_mean_std_by_hand():
    assert report.mean_std([2.0, 4.0]) == "3.00 ± 1.41"          # sample std: sqrt(((-1)^2 + 1^2) / 1)
    assert report.mean_std([1.0, 2.0, 3.0]) == "2.00 ± 1.00"
    assert report.mean_std([2.954]) == "2.95"
    assert report.mean_std([]) == report.mean_std([None, float("nan")]) == "—"


def test_collect_results_and_csv(partial_outputs):
    results = report.collect_results(partial_outputs)
    assert sorted(results["run_id"]) == ["base-s111-cpu", "base-s222-cpu", "seed-a-s111-cpu", "seed-b-s222-cpu",
                                         "wide-s111-cpu"]
    wide = results[results["row"] == "wide"].iloc[0]
    assert (wide["common_nme"], wide["test_nme"], wide["profile"], wide["data"]) == (6.0, 9.0, "cpu", "synth")
    path = report.write_results_csv(partial_outputs)
    assert path == partial_outputs / "results.csv"
    assert len(pd.read_csv(path)) == 5
    failures = report.collect_failures(partial_outputs)
    assert list(failures["run_id"]) == ["broken-s222-cpu"] and failures["cell"].iloc[0] == 3


def test_seed_table_puts_ours_beside_published_and_keeps_missing_rows(partial_outputs):
    family = config.load_family("toy", PARAMS, validate=False)
    results = report.collect_results(partial_outputs)
    table = report.seed_table(family, "Toy depth", results, "cpu", partial_outputs)
    rows = {line[("row", "")]: line for _, line in table.iterrows()}
    assert list(rows) == ["base", "deep", "broken"]
    assert rows["base"][("full", "ours")] == "5.00 ± 1.41"      # full = common + 2 for seeds at 2.0 and 4.0
    assert rows["base"][("full", "published")] == "1.20"
    assert rows["base"][("seeds", "")] == "111,222"
    assert rows["base"][("depth", "")] == "-"                   # the baseline has no depth knob
    assert rows["deep"][("common", "ours")] == "—" and rows["deep"][("status", "")] == "not run"
    assert rows["broken"][("common", "ours")] == "—" and rows["broken"][("status", "")] == "failed"
    width = report.seed_table(family, "Toy width", results, "cpu", partial_outputs)
    unpublished = width[width[("row", "")] == "unpublished"].iloc[0]
    assert unpublished[("test", "published")] == "—" and unpublished[("test", "ours")] == "—"
    nothing = report.seed_table(family, "Toy width", results.iloc[0:0], None)
    assert set(nothing[("common", "ours")]) == {"—"}


def test_group_table_summarises_seed_repeats(partial_outputs):
    family = config.load_family("toy", PARAMS, validate=False)
    groups = report.group_table(family, "Toy seeds", report.collect_results(partial_outputs), "cpu")
    line = groups.iloc[0]
    assert line[("group", "")] == "w2" and line[("runs", "")] == 2
    assert line[("common", "ours")] == "1.50 ± 0.71"
    assert line[("common", "published")] == "1.10 ± 0.14"       # 1.0 and 1.2
    assert report.group_table(family, "Toy depth", pd.DataFrame(), "cpu") is None


def test_comparability_note_flags_synthetic_and_short_profiles(partial_outputs, tmp_path):
    note = report.comparability_note(report.collect_results(partial_outputs))
    assert "profile **cpu**" in note and "synth300w" in note and "NOT comparable" in note
    real = tmp_path / "real"
    finished_run(real, "base", 111, "gpu", 3.0, data="/data/300W")
    note = report.comparability_note(report.collect_results(real))
    assert "profile **gpu**" in note and "NOT comparable" not in note


def test_plots_draw_ours_and_published(partial_outputs):
    import matplotlib
    matplotlib.use("Agg")
    family = config.load_family("toy", PARAMS, validate=False)
    results = report.collect_results(partial_outputs)
    figure = report.plot_table(family, "Toy depth", results, "cpu")
    published, ours = figure.axes
    # pointplot draws the dots as one marker-only line (x = NME, y = row position) and one line per error bar
    dots = lambda axis: [(x, y) for line in axis.lines if line.get_marker() == "o"
                         for x, y in zip(line.get_xdata(), line.get_ydata())]
    assert dots(published) == [(1.2, 0), (1.3, 1), (1.6, 2)]
    assert dots(ours) == [(5.0, 0)]                                       # mean over two seeds, first row
    bars = [line.get_xdata() for line in ours.lines if line.get_marker() != "o"]
    assert [[round(x, 2) for x in bar] for bar in bars] == [[3.59, 6.41]]    # ± sample sd 1.41
    assert sum("not run" in t.get_text() for t in ours.texts) == 2                          # deep, broken
    ced = report.ced_frame(results, "toy", "cpu")
    assert set(ced["row"]) == {"base", "seed-a", "seed-b"} and len(ced) == 4 * 3   # runs x thresholds
    assert report.plot_ced(results, "toy", "cpu") is not None
    assert report.plot_cost(results, "toy", "cpu") is not None


def test_render_report_with_partial_results(partial_outputs):
    paths = report.render_report(partial_outputs, PARAMS)
    assert paths["csv"].exists() and paths["notebook"].exists()
    html = paths["html"].read_text()
    for expected in ("Toy depth", "Toy width", "Toy seeds", "NOT comparable", "5.00 ± 1.41", "—", "broken-s222-cpu"):
        assert expected in html, expected
    executed = json.loads(paths["notebook"].read_text())
    assert not [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]


def test_report_notebook_is_stored_clean():
    notebook = json.loads((Path(config.NOTEBOOKS_DIR) / "report.ipynb").read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", [])
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    parameters = config.notebook_parameters(Path(config.NOTEBOOKS_DIR) / "report.ipynb")
    assert set(parameters) == {"outputs_dir", "params_dir", "families", "profiles"}
