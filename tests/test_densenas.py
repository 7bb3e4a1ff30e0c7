"""DenseNAS: search-space specs, supernet, cost model, Viterbi derivation, derived network, search window.

Everything runs at toy size (64-pixel inputs, channels scaled down, one stacked layer per block)
with one torch thread, so the module stays well under a minute on two loaded cores.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from nbutils.engine.search import search
from nbutils.models import build_model
from nbutils.models.cost import count_macs
from nbutils.models.densenas import (build_derived, build_supernet, derive_architecture, inherit_supernet_weights,
                                     k_best_paths, load_arch, one_hot_weights, save_arch, searched_spec, spaces)
from nbutils.models.densenas.plotting import save_architecture_figure, short_op

SMALL_OPS = {"stack_ops": ["mbconv_k3_e3", "mbconv_k5_e6", "skip"], "head_ops": ["mbconv_k3_e3", "mbconv_k5_e3"]}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(**model) -> dict:
    base = {"space": "hrnet", "channel_scale": 0.125, "max_stack": 1, **SMALL_OPS}
    return {"model": {**base, **model}, "train": {"input_size": 64}}


def randomise_arch(supernet, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in supernet.arch_parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 2)


# ----------------------------------------------------------------------------- specs
def test_presets_are_valid_and_have_reference_shapes():
    assert set(spaces.PRESETS) == {"densenas", "modified_densenas", "hrnet", "modified_densenas_densenas_stem",
                                   "flipped_modified_densenas"}
    original = spaces.get_spec("densenas")
    assert len(original["CHS"]) == 21 and len(original["STAGE"]) == 22
    assert spaces.output_stride_of(original) == 16
    assert spaces.output_stride_of(spaces.get_spec("modified_densenas")) == 8


def test_connection_rule_on_hrnet_and_flipped_specs():
    # hand-derived from the rule: block 2 (32px, stage 1) skips block 3 (64px: upsampling), takes 4 (32, s1)
    # and 5 (16, s2), and stops at block 6 (stage 3 is two stages on)
    hrnet = spaces.block_graph(spaces.get_spec("hrnet"))
    assert hrnet["outputs"][2] == [4, 5]
    assert hrnet["strides"][(2, 4)] == 1 and hrnet["strides"][(2, 5)] == 2
    assert hrnet["inputs"][14] == [10, 11, 12, 13]        # every stage-4 block may feed the head
    flipped = spaces.block_graph(spaces.get_spec("flipped_modified_densenas"))
    assert flipped["outputs"][4] == [8]                    # the 16px block of stage 1 only reaches stage 2's 16px
    fixed = spaces.block_graph(spaces.get_spec("hrnet"), searched_head=False)
    assert fixed["inputs"][14] == [13]


@pytest.mark.parametrize("mutate, field", [
    (lambda s: s["FM_SIZES"].pop(), "FM_SIZES"),
    (lambda s: s["NUM_LAYERS"].append(4), "NUM_LAYERS"),
    (lambda s: s["STAGE"].extend([5, 5]), "STAGE"),
    (lambda s: s.__setitem__("ADJOIN_CONNECT_NUMS", [7, 7]), "ADJOIN_CONNECT_NUMS"),
    (lambda s: s["FM_SIZES"].__setitem__(1, 16), "FM_SIZES"),     # 64 -> 16: stride 4 between blocks
    (lambda s: s["FM_SIZES"].__setitem__(2, 24), "FM_SIZES"),     # not a power-of-two ratio
    (lambda s: s["CHS"].__setitem__(3, 0), "CHS"),
    (lambda s: s.pop("STAGE"), "STAGE"),
])
def test_invalid_specs_name_the_field(mutate, field):
    spec = copy.deepcopy(spaces.PRESETS["modified_densenas"])
    mutate(spec)
    with pytest.raises(ValueError, match=field):
        spaces.validate_spec(spec)


@pytest.mark.parametrize("knobs, key", [
    ({"channel_reduction": 3.5}, "channel_reduction"),
    ({"block_num": "-40"}, "block_num"),
    ({"stages": [2, 3]}, "stages"),
    ({"stack_num": "many"}, "stack_num"),
    ({"output_stride": 12}, "output_stride"),
])
def test_invalid_knobs_name_the_key(knobs, key):
    with pytest.raises(ValueError, match=key):
        spaces.apply_knobs(spaces.get_spec("densenas"), **knobs)


def test_table_knobs_transform_the_spec():
    spec = spaces.get_spec("densenas")
    plus = spaces.apply_knobs(spec, stack_num="+2")
    assert plus["NUM_LAYERS"] == [0, 0, 0, 0, 7, 7, 7, 17, 17, 17, 17, 7, 7, 7, 7, 7, 7, 7, 3, 3, 3]
    assert spaces.apply_knobs(spec, stack_num=4)["NUM_LAYERS"][3:5] == [0, 4]
    # -2: stage 5 (4 blocks, deeper than stage 3's 4) loses 288, then stage 3 loses 176
    fewer = spaces.apply_knobs(spec, block_num="-2")
    assert len(fewer["CHS"]) == 19 and 176 not in fewer["CHS"] and 288 not in fewer["CHS"]
    assert len(fewer["STAGE"]) == 20
    assert spaces.apply_knobs(spec, channel_reduction=8)["CHS"][:3] == [4, 6, 7]
    assert spaces.apply_knobs(spec, channel_expansion=2)["CHS"][-1] == 1024
    cut = spaces.apply_knobs(spaces.get_spec("modified_densenas"), stages=[1, 2])
    assert cut["FM_SIZES"] == [64, 64, 64, 64, 32, 32, 32] and cut["STAGE"][-1] == 3
    down16 = spaces.apply_knobs(spaces.get_spec("modified_densenas"), output_stride=16)
    assert spaces.output_stride_of(down16) == 16 and down16["FM_SIZES"][:2] == [64, 32]



def test_profile_knobs_apply_after_the_table_knobs():
    # max_stage cuts after the row's knobs: the "down16" row keeps its 16x stride up to stage 3 ...
    cut = searched_spec({"space": "modified_densenas", "output_stride": 16, "max_stage": 3})
    assert cut["FM_SIZES"] == [64, 32, 32, 32, 16, 16, 16, 8, 8, 8] and cut["STAGE"][-1] == 4
    # ... where cutting first (the table's own stages knob) leaves block 1 with no stride-1/2 input
    with pytest.raises(ValueError, match="FM_SIZES"):
        searched_spec({"space": "modified_densenas", "output_stride": 16, "stages": [1, 2, 3]})
    scaled = searched_spec({"space": "densenas", "block_num": "-8", "channel_scale": 0.5, "max_stage": 3,
                                     "max_stack": 1})
    assert max(scaled["STAGE"][:-1]) == 3 and scaled["CHS"][0] == 16 and max(scaled["NUM_LAYERS"]) == 1
    # a space already shallower than max_stage is left alone
    shallow = searched_spec({"space": "modified_densenas", "stages": [1, 2], "max_stage": 3})
    assert shallow == spaces.apply_knobs(spaces.get_spec("modified_densenas"), stages=[1, 2])
    with pytest.raises(ValueError, match="model.max_stage"):
        searched_spec({"max_stage": 0})


# ----------------------------------------------------------------------------- supernet
@pytest.mark.parametrize("space", sorted(spaces.PRESETS))
def test_supernet_forward_backward_every_preset(space):
    supernet = build_supernet(tiny_cfg(space=space))
    images = torch.randn(2, 3, 64, 64)
    heatmaps = supernet(images)
    assert heatmaps.shape == (2, 68, 16, 16) and torch.isfinite(heatmaps).all()
    (heatmaps.pow(2).mean() + supernet.arch_loss_extra()).backward()
    for name, param in supernet.arch.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(p.grad is not None for p in supernet.stem.parameters())


def test_supernet_options_darts_ops_concat_fixed_head_noise():
    cfg = tiny_cfg(space="modified_densenas", stem="densenas", ops="darts", stack_ops=None, head_ops=None,
                   aggregation="concat", heatmap_head="fixed", init="kaiming_fan_out")
    cfg["search"] = {"noise": "step", "darts_minus": True}
    supernet = build_supernet(cfg)
    assert "sep_conv_5x5" in supernet.stack_ops and "dil_conv_3x3" in supernet.head_ops
    assert list(supernet.tail_proj) == [str(supernet.num_blocks - 1)]
    supernet.on_epoch_start(1, 4)
    assert supernet.aux_skip_weight == 0.75                     # DARTS-: 1 -> 0 over the search
    images = torch.randn(2, 3, 64, 64)
    heatmaps = supernet(images)
    assert heatmaps.shape == (2, 68, 16, 16)
    assert not torch.equal(heatmaps, supernet(images))          # NoisyDARTS: fresh noise on skip each step
    supernet.eval()
    assert torch.equal(supernet(images), supernet(images))      # no noise at evaluation
    basic = build_supernet(tiny_cfg(head_layer="basic_block", head_ops=None))
    assert basic.head_ops == ["basic_block"] and not any(k.startswith("alpha_head") for k in basic.arch)


def test_op_sampling_runs_only_the_drawn_candidates():
    supernet = build_supernet(tiny_cfg(sample_ops=2, stack_ops=["mbconv_k3_e3", "mbconv_k5_e3", "mbconv_k7_e3",
                                                                  "skip"]))
    supernet(torch.randn(2, 3, 64, 64)).mean().backward()
    layer = supernet.blocks["1"].layers[0]
    with_grad = [any(p.grad is not None for p in op.parameters()) for op in layer.ops[:3]]
    assert sum(with_grad) <= 2                                  # skip has no weights; at most 2 of 4 ran
    assert supernet.arch["alpha_stack_1"].grad[0].abs().sum() > 0
    with pytest.raises(ValueError, match="sample_ops"):
        build_supernet(tiny_cfg(sample_ops=1))


# ----------------------------------------------------------------------------- Viterbi
def all_paths(outputs, node=0):
    sink = len(outputs)
    if node == sink:
        return [[sink]]
    return [[node] + rest for j in outputs[node] for rest in all_paths(outputs, j)]


@pytest.mark.parametrize("space", ["hrnet", "flipped_modified_densenas"])
def test_k_best_paths_match_brute_force(space):
    outputs = spaces.block_graph(spaces.get_spec(space))["outputs"]
    rng = np.random.default_rng(3)
    log_probs = {(i, j): float(rng.normal()) for i, targets in enumerate(outputs) for j in targets}
    paths = all_paths(outputs)
    assert len(paths) == spaces.num_paths(spaces.get_spec(space))
    ranked = sorted(paths, key=lambda p: -sum(log_probs[(a, b)] for a, b in zip(p[:-1], p[1:])))
    best = k_best_paths(outputs, log_probs, k=2)
    assert [p for _, p in best] == ranked[:2]
    assert best[0][0] == pytest.approx(sum(log_probs[(a, b)] for a, b in zip(ranked[0][:-1], ranked[0][1:])))


def test_derive_follows_hand_set_beta():
    supernet = build_supernet(tiny_cfg())
    wanted = [0, 2, 5, 9, 13, 14]            # 64 -> 32 -> 16 -> 8 px, head from the 8px block
    second = [0, 2, 5, 8, 13, 14]            # differs in one block: next most probable
    with torch.no_grad():
        for name, param in supernet.arch.items():
            param.zero_()
        for a, b in zip(wanted[:-1], wanted[1:]):
            if f"beta_{a}" in supernet.arch:
                supernet.arch[f"beta_{a}"][supernet.graph["outputs"][a].index(b)] = 5.0
        supernet.arch["beta_5"][supernet.graph["outputs"][5].index(8)] = 4.0
        supernet.arch["beta_8"][supernet.graph["outputs"][8].index(13)] = 5.0
    arch = supernet.derive()
    assert arch["paths"] == [wanted]
    two = derive_architecture(supernet, transition=2)
    assert two["paths"] == [wanted, second]
    merged = {b["id"]: b for b in two["blocks"]}
    assert sorted(merged) == sorted(set(wanted + second) - {14})
    assert sorted(e["from"] for e in merged[13]["inputs"]) == [8, 9]   # the paths merge in block 13
    assert build_derived(two)(torch.randn(1, 3, 64, 64)).shape == (1, 68, 16, 16)


# ----------------------------------------------------------------------------- cost model
@pytest.mark.parametrize("model", [
    {"space": "hrnet"},
    {"space": "densenas", "stem": "densenas", "aggregation": "concat", "max_stack": 2},
])
def test_expected_cost_of_one_hot_arch_equals_derived_network(model):
    supernet = build_supernet(tiny_cfg(**model))
    randomise_arch(supernet, seed=1)
    arch = supernet.derive()
    network = build_derived(arch)
    weights = one_hot_weights(supernet, arch)
    counted_params = sum(p.numel() for p in network.parameters())
    counted_macs = sum(count_macs(network, torch.zeros(1, 3, 64, 64)).values())
    assert float(supernet.expected_cost("params", weights)) == pytest.approx(counted_params, rel=1e-9)
    assert float(supernet.expected_cost("flops", weights)) == pytest.approx(counted_macs, rel=1e-9)
    # the soft expectation lies between the cheapest and the dearest single path
    assert 0 < float(supernet.expected_cost("params").detach()) < sum(p.numel() for p in supernet.weight_parameters())


def test_cost_term_is_factor_log_cost():
    supernet = build_supernet(tiny_cfg(cost_factor=0.15, cost_metric="flops"))
    expected = 0.15 * np.log(float(supernet.expected_cost("flops").detach()) / 1e9)
    assert float(supernet.arch_loss_extra().detach()) == pytest.approx(expected, rel=1e-6)
    assert float(build_supernet(tiny_cfg(cost_factor=0)).arch_loss_extra()) == 0.0


# ----------------------------------------------------------------------------- derived network
def test_derived_json_round_trip_and_registry(tmp_path):
    supernet = build_supernet(tiny_cfg(space="modified_densenas", transition=2))
    randomise_arch(supernet, seed=2)
    arch = supernet.derive()
    path = save_arch(arch, tmp_path / "arch.json")
    network = build_derived(path)
    assert json.dumps(network.arch, sort_keys=True) == json.dumps(json.loads(json.dumps(arch)), sort_keys=True)
    again = build_derived(network.arch)
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in network.parameters())
    wrapped = tmp_path / "search_arch.json"
    wrapped.write_text(json.dumps({"arch": arch, "search_nme": 50.0}))
    registered = build_model({"name": "densenas", "arch": str(wrapped), "init": "normal"})
    assert registered.arch == network.arch
    assert registered(torch.randn(1, 3, 64, 64)).shape == (1, 68, 16, 16)
    with pytest.raises(ValueError, match="arch"):
        build_model({"name": "densenas", "init": "normal"})
    broken = copy.deepcopy(arch)
    broken["blocks"][1]["inputs"][0]["op"] = "conv_9x9"
    with pytest.raises(ValueError, match="op"):
        load_arch(broken)


def test_inherit_supernet_weights_copies_the_kept_ops():
    supernet = build_supernet(tiny_cfg())
    randomise_arch(supernet, seed=4)
    arch = supernet.derive()
    network = build_derived(arch)
    report = inherit_supernet_weights(network, supernet.state_dict())
    assert report["missing"] == []
    block = next(b for b in arch["blocks"] if b["layers"])
    layer = block["layers"][0]
    source = supernet.blocks[str(block["id"])].layers[layer["slot"]].ops[supernet.stack_ops.index(layer["op"])]
    target = network.blocks[str(block["id"])].layers[0]
    for (_, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        assert torch.equal(a, b)


def test_architecture_drawing(tmp_path):
    assert [short_op(o) for o in ("mbconv_k5_e6", "sep_conv_3x3", "dil_conv_5x5", "basic_block")] == \
        ["k5e6", "sep3", "dil5", "basic"]
    supernet = build_supernet(tiny_cfg(space="densenas", transition=2))
    randomise_arch(supernet, seed=5)
    out = save_architecture_figure(supernet.derive(), tmp_path / "arch.png")
    assert out.stat().st_size > 5000 and out.read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- search window
def fake_loaders(n_batches=2, batch=2, size=64):
    generator = torch.Generator().manual_seed(0)

    def batch_dict():
        affine = torch.tensor([[0.25, 0.0, 0.0], [0.0, 0.25, 0.0]], dtype=torch.float64).expand(batch, 2, 3)
        return {"image": torch.randn(batch, 3, size, size, generator=generator),
                "heatmaps": torch.rand(batch, 68, size // 4, size // 4, generator=generator),
                "points": torch.rand(batch, 68, 2, generator=generator) * size, "affine": affine.clone()}
    return {"weights": [batch_dict() for _ in range(n_batches)], "arch": [batch_dict() for _ in range(n_batches)],
            "eval": {"common": [batch_dict()], "challenge": [batch_dict()]}}


def test_arch_updates_only_inside_the_window(tmp_path):
    cfg = tiny_cfg()
    cfg["search"] = {"epochs": 2, "update_window": [1, 2], "arch_lr": 0.05, "seed": 0}
    supernet = build_supernet(cfg)
    initial = {k: v.copy() for k, v in supernet.arch_snapshot().items()}
    result = search(cfg, tmp_path, supernet, progress=False, loaders=fake_loaders())
    after_epoch0, after_epoch1 = result.arch_history
    assert [r["arch_updated"] for r in result.history] == [False, True]
    for name, value in initial.items():
        np.testing.assert_array_equal(after_epoch0[name], value)
    assert any(not np.allclose(after_epoch1[name], value) for name, value in initial.items())
    assert result.search_nme is not None and np.isfinite(result.search_nme)
    saved = json.loads((tmp_path / "search_arch.json").read_text())
    assert build_derived(tmp_path / "search_arch.json").arch == load_arch(saved["arch"])
    assert "expected_params_m" in result.history[0]
