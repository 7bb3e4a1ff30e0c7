"""Every notebook: stored clean, parameters cell in step with the library, and a smoke run end to end.

Family notebooks run through the runner with the `smoke` profile (the rows it tags), exactly as
`python -m nbutils run FAMILY --profile smoke` would; data.ipynb and report.ipynb run directly.
"""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import papermill
import pytest

from nbutils import config, runner

NOTEBOOKS = sorted((config.REPO_ROOT / "notebooks").glob("*.ipynb"))
FAMILY_NOTEBOOKS = [p for p in NOTEBOOKS if (config.REPO_ROOT / "params" / f"{p.stem}.yaml").is_file()]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_clean(path):
    notebook = nbformat.read(str(path), as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "a notebook without code"
    assert "parameters" in code[0].metadata.get("tags", []), "first code cell must be tagged `parameters`"
    assert all(not cell.get("outputs") and cell.get("execution_count") is None for cell in code), "stored with outputs"
    assert any(cell.cell_type == "markdown" for cell in notebook.cells), "no narrative"


@pytest.mark.parametrize("path", FAMILY_NOTEBOOKS, ids=lambda p: p.name)
def test_family_parameters_mirror_the_shared_defaults(path):
    """data/train sections of every family notebook have exactly the keys of config.DEFAULTS, and the
    model section at least those the family's builder reads from it."""
    parameters = config.notebook_parameters(path)
    assert {"run_dir", "data", "train", "model"} <= set(parameters)
    for section in ("data", "train"):
        assert _keys(parameters[section]) == _keys(config.DEFAULTS[section]), section
    assert {"name", "init", "num_landmarks", "bn_momentum"} <= set(parameters["model"])


def _keys(tree: dict, prefix: str = "") -> set:
    keys = set()
    for key, value in tree.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= _keys(value, f"{prefix}{key}.")
    return keys


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return tmp_path_factory.mktemp("outputs")


@pytest.mark.parametrize("family", ["attention", "init"])
def test_family_notebook_smoke_run(family, outputs, monkeypatch):
    monkeypatch.setenv("NBUTILS_OUTPUTS", str(outputs))
    results = runner.run_family(family, "smoke", outputs=outputs, progress=False)
    assert results, f"the smoke profile selects no row of {family}"
    failed = [r for r in results if r["status"] != "done"]
    assert not failed, failed
    for result in results:
        record = runner.read_metrics(result["run_dir"])
        assert record["family"] == family and record["profile"] == "smoke"
        for subset in ("common", "challenge", "full", "test"):
            assert record["subsets"][subset]["nme"] > 0
        assert record["params_m"] > 1 and record["gflops"] > 0
        assert len(record["ced"]["thresholds"]) == len(record["ced"]["values"]["full"])
        rendered = nbformat.read(str(Path(result["run_dir"]) / runner.NOTEBOOK_FILE), as_version=4)
        images = [o for c in rendered.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if "image/png" in o.get("data", {})]
        assert len(images) >= 4, "the rendered run should keep its figures inline"


def test_pretrained_row_without_checkpoint_needs_input(outputs, monkeypatch, tmp_path):
    missing = tmp_path / "absent_w18.pth"
    monkeypatch.setenv("NBUTILS_PRETRAINED_W18", str(missing))
    results = runner.run_family("init", "smoke", rows="pretrained", outputs=outputs, progress=False)
    assert [r["status"] for r in results] == [runner.NEEDS_INPUT]
    error = runner.read_error(results[0]["run_dir"])
    assert str(missing) in error["evalue"]
    assert runner.read_metrics(results[0]["run_dir"]) is None, "a blocked run must not look finished"


def test_data_notebook_smoke_run(tmp_path, monkeypatch):
    monkeypatch.setenv("NBUTILS_OUTPUTS", str(tmp_path))
    out = tmp_path / "data.ipynb"
    papermill.execute_notebook(str(config.REPO_ROOT / "notebooks" / "data.ipynb"), str(out),
                               parameters={"synth_size": "smoke", "n_samples": 4}, kernel_name=runner.KERNEL_NAME,
                               cwd=str(config.REPO_ROOT), progress_bar=False)
    rendered = nbformat.read(str(out), as_version=4)
    images = [o for c in rendered.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 5, "samples, augmentation, heatmaps, statistics and the slider's static figure"


def test_report_renders_the_smoke_runs(outputs, monkeypatch):
    """Runs the report over what the family smoke tests above left (and renders fine with partial results)."""
    from nbutils import report

    monkeypatch.setenv("NBUTILS_OUTPUTS", str(outputs))
    report.render_report(outputs=outputs, families="attention,init")
    table = (outputs / "results.csv").read_text()
    assert "attention" in table
    html = (outputs / "report.html").read_text()
    assert "HRNet-SE" in html and "Train from scratch" in html
    notebook = json.loads((outputs / "report.ipynb").read_text())
    errors = [o for c in notebook["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
