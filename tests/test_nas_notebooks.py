"""The darts and densenas notebooks end to end through the runner (smoke profile), the "needs input" stop of a
pretrained DARTS row, the CIFAR-10 cell transfer surviving build_model's init, and every row of both parameter
files resolving against its notebook."""
from __future__ import annotations

import json

import pytest
import torch

from nbutils import config, runner
from nbutils.config import NeedsInput
from nbutils.engine import nas
from nbutils.engine.search import arch_update_active, search_config
from nbutils.models import densenas, model_cost
from nbutils.models.darts import DARTS_V1, DARTS_V2, NetworkCIFAR, genotype_to_dict, parse_genotype, workflow

PROFILES = ("smoke", "cpu", "gpu")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    # the notebooks' kernels inherit this: tiny convolutions run faster on one thread of a shared machine
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return tmp_path_factory.mktemp("nas-outputs")


# ------------------------------------------------------------------------------------------ parameters
@pytest.mark.parametrize("family", ["darts", "densenas"])
def test_every_row_resolves_against_its_notebook(family, tmp_path):
    spec = config.load_family(family, validate=True)
    for profile in PROFILES:
        for row_id in spec.rows:
            params = config.resolve(spec, row_id, profile, outputs=tmp_path)
            assert params["run_dir"].endswith(f"{family}/{row_id}-s{spec.rows[row_id].seed}-{profile}")
            search_config(params["search"])   # the shared loop accepts every row's search section
            if family == "densenas":
                densenas.searched_spec(params["model"])   # every row's knobs give a valid NET_SCALE spec
    # the cpu profile (make report) runs a few rows; whatever it selects must update α/β at least once
    cpu = config.load_profile("cpu")
    selected = config.select_rows(spec, cpu)
    assert 1 <= len(selected) <= 3
    for row in selected:
        params = config.resolve(spec, row.id, cpu, outputs=tmp_path)
        scfg = search_config(params["search"])
        assert any(arch_update_active(e, scfg["update_window"], scfg["epochs"]) for e in range(scfg["epochs"]))


def test_darts_rows_say_where_their_cells_come_from(tmp_path):
    spec = config.load_family("darts", validate=True)
    for profile in PROFILES:
        for row_id, row in spec.rows.items():
            params = config.resolve(spec, row_id, profile, outputs=tmp_path)
            workflow.check_choices(params["mode"], params["cifar"])
            if params["model"]["name"] == "hrnet":
                assert row.reference["full"] is not None and params["mode"] == "retrain"
            elif params["mode"] == "search":
                assert params["cifar"] == "scratch" and row.reference.get("full") is None
            elif params["cifar"] == "pretrained":
                # the released CIFAR-10 network's width, whatever the profile
                assert params["model"]["init_channels"] == 36 and params["model"]["genotype"] == "DARTS_V2"
                assert row.reference["full"] is not None
            else:
                assert "scratch" in row.label["Model"] and row.reference.get("full") is None
    published = {row_id: row.reference["full"] for row_id, row in spec.rows.items()
                 if "Darts pretrained on CIFAR-10" in row.tables and row.reference.get("full") is not None}
    assert published == {"hrnet-w18-256": 3.34, "darts-layer8-256": 6.37, "darts-layer8-128": 4.11,
                         "darts-layer20-128": 3.92, "hrnet-w18-128": 3.78}


# ------------------------------------------------------------------------------------------ CIFAR-10 weights
def _write_cifar_checkpoint(path, init_channels: int, layers: int = 5):
    torch.manual_seed(0)
    net = NetworkCIFAR(init_channels, 10, layers, False, DARTS_V2)
    torch.save({"state_dict": net.state_dict(), "genotype": genotype_to_dict(DARTS_V2)}, path)
    return net.state_dict()


def test_transferred_cells_survive_the_init_scheme(tmp_path):
    state = _write_cifar_checkpoint(tmp_path / "c.pt", init_channels=8)
    model_cfg = {"name": "darts", "genotype": "DARTS_V2", "layers": 4, "init_channels": 8, "head_channels": 16}
    net, source = workflow.build_landmark_net(model_cfg, "pretrained", cifar_checkpoint=tmp_path / "c.pt",
                                              outputs=tmp_path)
    assert source["weights"] == "cifar10" and source["path"] == str((tmp_path / "c.pt").absolute())
    mine = net.state_dict()
    # 4 landmark cells (reductions at 1, 2) <- 5 CIFAR cells (reductions at 1, 3); init "normal" (std 0.001)
    # ran before the transfer, so the copied tensors are the checkpoint's exactly
    assert source["transfer"]["mapping"] == {0: 0, 1: 1, 2: 3, 3: 4}
    assert torch.equal(mine["cells.3._ops.0.op.1.weight"], state["cells.4._ops.0.op.1.weight"])
    assert torch.equal(mine["cells.0._ops.0.op.1.weight"], state["cells.0._ops.0.op.1.weight"])
    rows = workflow.transfer_rows(source["transfer"])
    assert [r["cell"] for r in rows] == [0, 1, 2, 3] and [r["cifar_cell"] for r in rows] == [0, 1, 3, 4]
    assert sum(r["tensors_copied"] for r in rows) == len(source["transfer"]["transferred"])
    record = workflow.run_record("retrain", model_cfg, source)
    assert record["genotype"] == genotype_to_dict(DARTS_V2) and record["cifar"]["tensors_transferred"] > 0

    scratch, scratch_source = workflow.build_landmark_net(model_cfg, "scratch")
    assert scratch_source["message"].startswith("FROM SCRATCH")
    assert not torch.equal(scratch.state_dict()["cells.3._ops.0.op.1.weight"], state["cells.4._ops.0.op.1.weight"])

    with pytest.raises(ValueError, match="no cell weights transfer.*init_channels 16.*checkpoint init_channels 8"):
        workflow.build_landmark_net({**model_cfg, "init_channels": 16}, "pretrained",
                                    cifar_checkpoint=tmp_path / "c.pt", outputs=tmp_path)
    with pytest.raises(ValueError, match="no cell weights transfer"):
        workflow.build_landmark_net({**model_cfg, "genotype": "DARTS_V1"}, "pretrained",
                                    cifar_checkpoint=tmp_path / "c.pt", outputs=tmp_path)


def test_missing_cifar_weights_need_input(tmp_path, monkeypatch):
    monkeypatch.delenv(workflow.CIFAR_ROOT_ENV, raising=False)
    monkeypatch.setenv(workflow.CIFAR_CHECKPOINT_ENV, str(tmp_path / "released.pt"))
    model_cfg = {"genotype": "DARTS_V1", "init_channels": 36}
    store = workflow.cifar_store_path(model_cfg, 600, tmp_path)
    assert store == tmp_path / "darts" / "cifar10" / "DARTS_V1-L20-C36-e600.pt"
    searched = {**DARTS_V2._asdict(), "normal": [("skip_connect", 0)] * 8}
    assert workflow.genotype_tag(searched).startswith("g") and workflow.genotype_tag(DARTS_V1) == "DARTS_V1"
    with pytest.raises(NeedsInput) as stopped:
        workflow.find_cifar_weights(model_cfg, outputs=tmp_path)
    message = str(stopped.value)
    assert message.startswith("needs CIFAR-10: looked for") and str(tmp_path / "released.pt") in message
    assert str(store) in message and workflow.CIFAR_ROOT_ENV in message
    with pytest.raises(ValueError, match="parameter 'cifar'"):
        workflow.build_landmark_net({"name": "darts"}, "imagenet")


# ------------------------------------------------------------------------------------------ notebooks
def test_darts_search_notebook_smoke(outputs):
    results = runner.run_family("darts", "smoke", rows="search-first-order", outputs=outputs, progress=False)
    assert [r["status"] for r in results] == ["done"], results
    run_dir = outputs / "darts" / "search-first-order-s111-smoke"
    metrics = runner.read_metrics(run_dir)
    assert metrics["mode"] == "search" and isinstance(metrics["search_nme"], float)
    found = parse_genotype(metrics["architecture"])
    assert parse_genotype(metrics["genotype"]) == found          # the retrained cells are the searched ones
    assert len(found.normal) == len(found.reduce) == 8             # 4 nodes x 2 edges
    stored = json.loads((run_dir / "search_arch.json").read_text())
    assert stored["arch"] == metrics["architecture"] and stored["search_nme"] == metrics["search_nme"]
    assert metrics["note"].startswith("FROM SCRATCH") and metrics["cifar"]["weights"] == "scratch"
    subsets = metrics["subsets"]
    assert subsets["full"]["n"] == subsets["common"]["n"] + subsets["challenge"]["n"]
    assert metrics["params_m"] > 0 and metrics["gflops"] > 0
    for figure in ("alpha_history.png", "genotype.png"):
        assert (run_dir / figure).stat().st_size > 0

    # a rerun of the same folder reuses the stored search instead of building a supernet
    def no_supernet(_cfg):
        raise AssertionError("the stored search should have been reused")
    again = nas.search_or_load({}, run_dir, no_supernet, progress=False)
    assert not again["searched"] and again["arch"] == metrics["architecture"]
    assert len(again["history"]) == len(again["arch_history"]) == 1


def test_densenas_notebook_smoke(outputs):
    results = runner.run_family("densenas", "smoke", outputs=outputs, progress=False)
    assert [r["status"] for r in results] == ["done"], results
    run_dir = outputs / "densenas" / "densenas-original-s111-smoke"
    metrics = runner.read_metrics(run_dir)
    assert isinstance(metrics["search_nme"], float)
    arch = densenas.load_arch(metrics["architecture"])
    assert arch["paths"][0][0] == 0 and arch["paths"][0][-1] == arch["tail"]["id"]
    assert densenas.load_arch(run_dir / "architecture.json") == arch
    # the recorded cost is the cost of the network the stored JSON builds
    rebuilt = model_cost(densenas.build_derived(arch), 64)
    assert metrics["params_m"] == pytest.approx(rebuilt["params_m"]) and metrics["gflops"] == pytest.approx(rebuilt["gflops"])
    assert (run_dir / "architecture.png").stat().st_size > 0 and (run_dir / "search_supernet.pt").is_file()
    assert len(metrics["search_history"]) == 1 and "expected_params_m" in metrics["search_history"][0]


def test_pretrained_row_without_cifar_weights_needs_input(outputs, monkeypatch):
    monkeypatch.delenv(workflow.CIFAR_ROOT_ENV, raising=False)
    missing = outputs / "no-such-cifar10_model.pt"
    monkeypatch.setenv(workflow.CIFAR_CHECKPOINT_ENV, str(missing))
    results = runner.run_family("darts", "smoke", rows="darts-layer8-128", outputs=outputs, progress=False)
    assert [r["status"] for r in results] == [runner.NEEDS_INPUT]
    run_dir = outputs / "darts" / "darts-layer8-128-s111-smoke"
    assert runner.run_status(run_dir) == runner.NEEDS_INPUT and not (run_dir / "metrics.json").exists()
    error = runner.read_error(run_dir)
    assert error["ename"] == "NeedsInput" and str(missing) in error["evalue"]
    assert "needs CIFAR-10" in results[0]["error"]
