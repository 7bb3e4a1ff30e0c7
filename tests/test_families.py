"""Every row of the attention and init families: resolves under every profile, builds its model, and
differs from the baseline HRNetV2-W18 exactly where the row says."""
from __future__ import annotations

import pytest
import torch

from nbutils import config
from nbutils.models import build_model

FAMILIES = {name: config.load_family(name) for name in ("attention", "init")}
ROWS = [(family, row_id) for family, spec in FAMILIES.items() for row_id in spec.rows]
PROFILES = ("smoke", "cpu", "gpu")


def _model_cfg(family: str, row_id: str, profile: str = "gpu") -> dict:
    resolved = config.resolve(FAMILIES[family], row_id, config.load_profile(profile))
    model = dict(resolved["model"])
    if model["init"].startswith("pretrained:"):
        model["init"] = "normal"   # the checkpoint is user-supplied; its loading is tested in test_models
    return model


@pytest.fixture(scope="module")
def baseline_shapes():
    torch.manual_seed(0)
    return {key: tuple(value.shape) for key, value in build_model({"name": "hrnet", "width": 18}).state_dict().items()}


@pytest.mark.parametrize("family,row_id", ROWS, ids=[f"{f}/{r}" for f, r in ROWS])
def test_row_resolves_builds_and_runs(family, row_id, baseline_shapes, monkeypatch):
    monkeypatch.setenv("NBUTILS_PRETRAINED_W18", "/nonexistent/w18.pth")
    for profile in PROFILES:
        resolved = config.resolve(FAMILIES[family], row_id, config.load_profile(profile))
        assert resolved["run_dir"].endswith(config.run_id(row_id, resolved["train"]["seed"], profile))
    cfg = _model_cfg(family, row_id)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        heatmaps = model(torch.randn(1, 3, 64, 64))
    assert heatmaps.shape == (1, 68, 16, 16) and torch.isfinite(heatmaps).all()

    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    attention = cfg["attention"]
    added = set(shapes) - set(baseline_shapes)
    assert not set(baseline_shapes) - set(shapes) or cfg["width"] != 18, "a row may only add modules"
    if cfg["width"] != 18:
        assert shapes["head.3.weight"][1] == 15 * cfg["width"] or attention["fusion_stages"] != [4]
        return
    if attention["type"] == "none":
        assert not added
    elif attention["position"] == "prehead":
        assert added and all(key.startswith("prehead_attn.") for key in added)
    else:
        units = {key.split(".attn.")[0] for key in added}
        assert all(".attn." in key for key in added)
        assert len(units) == 4 + 4 * (1 * 2 + 4 * 3 + 3 * 4), "one attention per residual unit (layer1 + stages)"
    changed = {key for key in set(shapes) & set(baseline_shapes) if shapes[key] != baseline_shapes[key]}
    fused = {4: 270, 3: 126, 2: 54, 1: 256}
    head_in = sum(fused[s] for s in attention["fusion_stages"])
    if attention["fusion_stages"] == [4]:
        assert not changed
    else:
        assert changed and all(key.startswith("head.") for key in changed), "fusion only widens the head"
        assert shapes["head.0.weight"][1] == head_in


def test_init_rows_use_their_scheme():
    """The init rows differ from each other only in model.init, and the scheme reaches the weights."""
    stds = {}
    for row_id in ("normal", "xavier", "kaiming"):
        cfg = _model_cfg("init", row_id)
        assert cfg["init"] == row_id
        torch.manual_seed(0)
        stds[row_id] = build_model(cfg).conv2.weight.std().item()
    assert abs(stds["normal"] - 0.001) < 1e-4
    fan_in, fan_out = 64 * 9, 64 * 9
    assert abs(stds["xavier"] - (2 / (fan_in + fan_out)) ** 0.5) < 0.005
    assert abs(stds["kaiming"] - (2 / fan_in) ** 0.5) < 0.005
