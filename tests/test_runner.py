"""The runner on the toy fixture family: expansion, papermill runs, skipping, failures, Ctrl-C, executors."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nbutils import runner
from nbutils.__main__ import main

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
LOCATIONS = {"params_dir": FIXTURES / "params", "notebooks_dir": FIXTURES / "notebooks"}


def cli(*args, outputs) -> int:
    return main([*args, "--params-dir", str(LOCATIONS["params_dir"]), "--notebooks-dir",
                 str(LOCATIONS["notebooks_dir"]), "--outputs", str(outputs)])


def toy_score(depth=2, width=1.5, ratio=4, seed=111, epochs=1) -> float:
    """The toy notebook's closed form for the 'common' NME (challenge/full/test add 1/2/3)."""
    return depth * width + ratio / 100 + seed / 1000 + epochs


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """One batch over three rows, one of which raises in its notebook; returns (exit code, outputs)."""
    outputs = tmp_path_factory.mktemp("outputs")
    code = cli("run", "toy", "--profile", "all", "--rows", "base,deep,broken", "--no-progress", outputs=outputs)
    return code, outputs


def test_plan_expands_rows_times_seeds(tmp_path):
    specs = runner.plan_runs("toy", "all", rows="b*", seeds=[1, 2], outputs=tmp_path, **LOCATIONS)
    assert [s.run_id for s in specs] == ["base-s1-all", "base-s2-all", "broken-s1-all", "broken-s2-all"]
    assert all(s.run_dir == tmp_path.resolve() / "toy" / s.run_id for s in specs)
    assert [s.parameters["train"]["seed"] for s in specs] == [1, 2, 1, 2]
    own_seeds = runner.plan_runs("toy", "tiny", outputs=tmp_path, **LOCATIONS)
    assert [s.run_id for s in own_seeds] == ["base-s111-tiny", "deep-s111-tiny"]
    assert own_seeds[1].parameters["model"]["depth"] == 3 and own_seeds[1].parameters["train"]["epochs"] == 2
    broken = runner.plan_runs("toy", "all", rows="broken", outputs=tmp_path, **LOCATIONS)
    assert [s.run_id for s in broken] == ["broken-s222-all"]
    assert broken[0].tables == ["Toy depth"]


def test_finished_runs_carry_the_injected_parameters(batch):
    code, outputs = batch
    deep = json.loads((outputs / "toy" / "deep-s111-all" / "metrics.json").read_text())
    assert deep["subsets"]["common"]["nme"] == pytest.approx(toy_score(depth=3))
    assert deep["subsets"]["test"]["nme"] == pytest.approx(toy_score(depth=3) + 3)
    assert (deep["family"], deep["row"], deep["seed"], deep["profile"], deep["table"]) == \
        ("toy", "deep", 111, "all", "Toy depth")
    assert deep["status"] == "ok" and deep["params_m"] == 3.0 and deep["wall_seconds"] > 0
    assert deep["outputs_root"] == str(outputs)          # the kernel caches data under the same root ...
    assert os.environ.get("NBUTILS_OUTPUTS") != str(outputs)   # ... without changing this process's environment
    base = json.loads((outputs / "toy" / "base-s111-all" / "metrics.json").read_text())
    assert base["tables"] == ["Toy depth", "Toy width"]
    params = yaml.safe_load((outputs / "toy" / "deep-s111-all" / "params.yaml").read_text())
    assert params["run"]["row"] == "deep" and params["parameters"]["model"]["depth"] == 3
    assert params["parameters"]["run_dir"] == str(outputs / "toy" / "deep-s111-all")
    rendered = json.loads((outputs / "toy" / "deep-s111-all" / "notebook.ipynb").read_text())
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in rendered["cells"])


def test_a_failing_row_is_isolated(batch):
    code, outputs = batch
    assert code == 1
    broken = outputs / "toy" / "broken-s222-all"
    assert not (broken / "metrics.json").exists()
    error = json.loads((broken / "error.json").read_text())
    assert (error["status"], error["ename"]) == ("failed", "ValueError")
    assert "toy failure (depth 4)" in error["evalue"]
    # index of the failing cell among markdown, parameters, injected parameters, code (papermill's count)
    assert (error["cell_index"], error["exec_count"]) == (3, 3)
    notebook = json.loads((broken / "notebook.ipynb").read_text())
    failing = [c for c in notebook["cells"] if any(o.get("ename") == "ValueError" for o in c.get("outputs", []))]
    assert len(failing) == 1 and "raise ValueError" in "".join(failing[0]["source"])
    assert runner.run_status(broken) == "failed"
    assert runner.run_status(outputs / "toy" / "base-s111-all") == "done"


def test_finished_runs_are_skipped_unless_forced(batch, capsys):
    _, outputs = batch
    metrics = outputs / "toy" / "base-s111-all" / "metrics.json"
    before = metrics.read_text()
    results = runner.run_family("toy", "all", rows="base", outputs=outputs, progress=False, **LOCATIONS)
    assert [r["status"] for r in results] == ["skipped"]
    assert metrics.read_text() == before
    changed = runner.run_family("toy", "all", rows="base", overrides=["train.epochs=3"], outputs=outputs,
                                progress=False, **LOCATIONS)
    assert changed[0]["status"] == "skipped" and "parameters changed" in changed[0]["note"]
    forced = runner.run_family("toy", "all", rows="base", overrides=["train.epochs=3"], force=True,
                               outputs=outputs, progress=False, **LOCATIONS)
    assert forced[0]["status"] == "done"
    assert json.loads(metrics.read_text())["subsets"]["common"]["nme"] == pytest.approx(toy_score(epochs=3))


def test_list_shows_status_and_nme(batch, capsys):
    _, outputs = batch
    assert cli("list", "toy", "--profile", "all", outputs=outputs) == 0
    lines = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()[1:-1]}
    assert "done" in lines["deep"] and f"{toy_score(depth=3):.2f}" in lines["deep"]
    assert "failed" in lines["broken"] and "—" in lines["broken"]
    assert "missing" in lines["wide"]


def test_notebook_without_metrics_counts_as_failed(tmp_path):
    results = runner.run_family("toy", "all", rows="wide", overrides=["train.write=false"], outputs=tmp_path,
                                progress=False, **LOCATIONS)
    assert results[0]["status"] == "failed" and "without writing metrics.json" in results[0]["error"]
    assert json.loads((tmp_path / "toy" / "wide-s111-all" / "error.json").read_text())["ename"] == "MissingMetrics"


def test_write_metrics_schema_and_identity(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "params.yaml").write_text(yaml.safe_dump({"run": {
        "family": "toy", "row": "deep", "seed": 5, "profile": "tiny", "tables": ["A", "B"], "data": "synth",
        "started_at": time.time() - 10}}))
    import numpy as np
    record = runner.write_metrics(run_dir, {"common": {"nme": np.float32(3.5), "n": np.int64(4)},
                                            "full": {"nme": float("nan")}, "gflops": np.float64(1.25)})
    assert record["subsets"] == {"common": {"nme": 3.5, "n": 4}, "full": {"nme": None}}
    assert (record["family"], record["row"], record["seed"], record["table"]) == ("toy", "deep", 5, "A")
    assert 10 <= record["wall_seconds"] < 60
    assert json.loads((run_dir / "metrics.json").read_text()) == record
    fitted = runner.write_metrics(tmp_path / "fitted", {"best": {"full": {"nme": 4.0, "n": 3}}, "nme_full": 4.0,
                                                         "params_m": 9.6})
    assert fitted["subsets"] == {"full": {"nme": 4.0, "n": 3}} and fitted["family"] == "scratch"
    with pytest.raises(ValueError, match="'subsets' must map at least one subset"):
        runner.write_metrics(tmp_path / "other", {"params_m": 1.0})
    with pytest.raises(ValueError, match="ced.values.common must be a list as long as ced.thresholds"):
        runner.write_metrics(run_dir, {"common": {"nme": 1.0}, "ced": {"thresholds": [0, 1], "values": {"common": [0]}}})
    assert runner.read_metrics(run_dir) == record      # a refused write leaves the previous file alone


def test_ced_record_by_hand():
    ced = runner.ced_record({"common": [0.01, 0.03]}, threshold=0.04, steps=4)
    assert ced["thresholds"] == pytest.approx([0.0, 0.01, 0.02, 0.03, 0.04])
    assert ced["values"]["common"] == [0.0, 0.5, 0.5, 1.0, 1.0]     # fraction of images with NME <= threshold
    assert not runner.validate_metrics({"family": "f", "row": "r", "profile": "p", "status": "ok",
                                        "subsets": {"common": {"nme": 2.0}}, "ced": ced})


def test_interrupted_metrics_write_leaves_no_file(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"

    def dump_then_interrupt(record, handle, **kwargs):
        handle.write('{"family": "toy", "row"')     # half a record reaches the disk ...
        raise KeyboardInterrupt                     # ... then the user presses Ctrl-C

    monkeypatch.setattr(runner.json, "dump", dump_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        runner.write_metrics(run_dir, {"common": {"nme": 1.0}})
    assert list(run_dir.iterdir()) == []            # neither metrics.json nor its temporary file
    assert runner.run_status(run_dir) == "missing"


def test_ctrl_c_marks_the_run_interrupted(tmp_path):
    command = [sys.executable, "-m", "nbutils", "run", "toy", "--profile", "all", "--rows", "wide",
               "--set", "train.sleep=60", "--params-dir", str(LOCATIONS["params_dir"]),
               "--notebooks-dir", str(LOCATIONS["notebooks_dir"]), "--outputs", str(tmp_path), "--no-progress"]
    # a shell that started pytest in the background may have left SIGINT ignored: restore the default
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run_dir = tmp_path / "toy" / "wide-s111-all"
    deadline = time.time() + 60
    while not (run_dir / "notebook.ipynb").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    time.sleep(1.5)                                  # let the kernel enter the sleeping cell
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert not (run_dir / "metrics.json").exists()
    error = json.loads((run_dir / "error.json").read_text())
    assert (error["status"], error["ename"]) == ("interrupted", "KeyboardInterrupt")
    assert runner.run_status(run_dir) == "interrupted"
    notebook = json.loads((run_dir / "notebook.ipynb").read_text())
    assert notebook["metadata"]["nbutils"]["status"] == "interrupted"


def test_parallel_local_jobs(tmp_path):
    results = runner.run_family("toy", "all", rows="seed-*", jobs=2, outputs=tmp_path, progress=False, **LOCATIONS)
    assert sorted(r["status"] for r in results) == ["done", "done"]
    for row, seed in (("seed-a", 111), ("seed-b", 222)):
        metrics = runner.read_metrics(tmp_path / "toy" / f"{row}-s{seed}-all")
        assert metrics["subsets"]["common"]["nme"] == pytest.approx(toy_score(width=2.0, seed=seed))


def test_ray_executor_runs_two_smoke_runs(tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'ray[default]')")
    os.environ.pop("RAY_ADDRESS", None)              # always a local instance here
    results = runner.run_family("toy", "tiny", executor="ray", cpus_per_run=1, outputs=tmp_path, progress=False,
                                **LOCATIONS)
    assert sorted((r["row"], r["status"]) for r in results) == [("base", "done"), ("deep", "done")]
    deep = runner.read_metrics(tmp_path / "toy" / "deep-s111-tiny")
    assert deep["subsets"]["common"]["nme"] == pytest.approx(toy_score(depth=3, epochs=2))
    assert not math.isnan(deep["wall_seconds"])
