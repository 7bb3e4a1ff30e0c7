"""DARTS family: genotypes, CIFAR-10 network compatibility, landmark net, transfer, supernet switches."""
import pickle

import numpy as np
import pytest
import torch

from nbutils.models import build_model
from nbutils.models.darts import (DARTS_V1, DARTS_V2, Genotype, NetworkCIFAR, build_supernet, count_parameters,
                                  derive_genotype, load_cifar_state_dict, parse_genotype, plot_alpha_history,
                                  plot_genotype, resolve_pretrained, transfer_cifar_cells)
from nbutils.models.darts.landmark import DartsLandmarkNet, apply_cifar_pretrained
from nbutils.models.darts.ops import Cell
from nbutils.models.darts.search import darts_minus_decay


pytestmark = pytest.mark.usefixtures("one_thread")


TINY_SUPERNET = {"layers": 3, "init_channels": 4, "head_channels": 8, "steps": 2, "multiplier": 2}


# ---- genotypes -----------------------------------------------------------------------------
def test_published_genotypes_and_safe_parsing(tmp_path):
    assert DARTS_V2.normal[-1] == ("dil_conv_3x3", 2) and DARTS_V2.reduce[3] == ("max_pool_3x3", 1)
    assert DARTS_V1.reduce[-1] == ("avg_pool_3x3", 0)
    text = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
            "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
            "normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
            "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
            "('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")
    assert parse_genotype(text) == DARTS_V2
    as_dict = {"normal": [list(e) for e in DARTS_V1.normal], "normal_concat": [2, 3, 4, 5],
               "reduce": [list(e) for e in DARTS_V1.reduce], "reduce_concat": [2, 3, 4, 5]}
    assert parse_genotype(as_dict) == DARTS_V1
    (tmp_path / "g.json").write_text(__import__("json").dumps({"arch": {"genotype": as_dict}}))
    assert parse_genotype(str(tmp_path / "g.json")) == DARTS_V1
    with pytest.raises(ValueError, match="only literals"):
        parse_genotype("Genotype(normal=__import__('os').system('true'), normal_concat=[2], reduce=[], "
                       "reduce_concat=[2])")
    with pytest.raises(ValueError, match="not a DARTS primitive"):
        parse_genotype(text.replace("dil_conv_3x3", "conv_9x9"))
    with pytest.raises(ValueError, match=r"input 5 must be in \[0, 2\)"):
        parse_genotype(text.replace("('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0)",
                                    "('sep_conv_3x3', 5), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0)", 1))


# ---- CIFAR-10 network ------------------------------------------------------------------------
def test_cifar_network_parameter_count_matches_published_darts_v2():
    # DARTS' utils.count_parameters_in_MB (auxiliary head excluded) prints 3.349342 for DARTS_V2, C=36, 20 cells
    net = NetworkCIFAR(36, 10, 20, True, DARTS_V2)
    assert count_parameters(net) == 3_349_342
    aux = sum(p.numel() for n, p in net.named_parameters() if n.startswith("auxiliary_head."))
    assert count_parameters(net, exclude_auxiliary=False) == 3_349_342 + aux


def test_cell_parameter_count_by_hand():
    # DARTS_V2 normal cell, inputs 12 channels, C = 4:
    # preprocess: 2 x (1x1 conv 12*4 + BN 2*4) = 112; 5 sep_conv_3x3: 2*(9*4 + 4*4 + 2*4) = 120 each = 600;
    # dil_conv_3x3: 9*4 + 4*4 + 2*4 = 60; 2 skip_connect: 0  -> 772
    assert sum(p.numel() for p in Cell(DARTS_V2, 12, 12, 4, False, False).parameters()) == 772
    # DARTS_V2 reduction cell after a reduction (FactorizedReduce preprocess0 12->4: 2*(12*2) + 8 = 56;
    # preprocess1 12->4: 56; max pools: 0; skip_connect from node 2 is stride 1: 0) -> 112
    assert sum(p.numel() for p in Cell(DARTS_V2, 12, 12, 4, True, True).parameters()) == 112


def _reference_keys(genotype, C, layers, num_classes=10):
    """Key -> shape of the reference NetworkCIFAR, written from its published description (not our modules)."""
    keys = {"stem.0.weight": (3 * C, 3, 3, 3)}

    def bn(prefix, ch):
        keys.update({f"{prefix}.weight": (ch,), f"{prefix}.bias": (ch,), f"{prefix}.running_mean": (ch,),
                     f"{prefix}.running_var": (ch,), f"{prefix}.num_batches_tracked": ()})

    bn("stem.1", 3 * C)
    c_pp, c_p, c = 3 * C, 3 * C, C
    red_prev = False
    for i in range(layers):
        red = i in (layers // 3, 2 * layers // 3)
        c = c * 2 if red else c
        p = f"cells.{i}"
        if red_prev:
            keys[f"{p}.preprocess0.conv_1.weight"] = (c // 2, c_pp, 1, 1)
            keys[f"{p}.preprocess0.conv_2.weight"] = (c // 2, c_pp, 1, 1)
            bn(f"{p}.preprocess0.bn", c)
        else:
            keys[f"{p}.preprocess0.op.1.weight"] = (c, c_pp, 1, 1)
            bn(f"{p}.preprocess0.op.2", c)
        keys[f"{p}.preprocess1.op.1.weight"] = (c, c_p, 1, 1)
        bn(f"{p}.preprocess1.op.2", c)
        for k, (op, idx) in enumerate(genotype.reduce if red else genotype.normal):
            q = f"{p}._ops.{k}"
            if op.startswith("sep_conv"):
                ks = int(op[-1])
                keys.update({f"{q}.op.1.weight": (c, 1, ks, ks), f"{q}.op.2.weight": (c, c, 1, 1),
                             f"{q}.op.5.weight": (c, 1, ks, ks), f"{q}.op.6.weight": (c, c, 1, 1)})
                bn(f"{q}.op.3", c)
                bn(f"{q}.op.7", c)
            elif op.startswith("dil_conv"):
                ks = int(op[-1])
                keys.update({f"{q}.op.1.weight": (c, 1, ks, ks), f"{q}.op.2.weight": (c, c, 1, 1)})
                bn(f"{q}.op.3", c)
            elif op == "skip_connect" and red and idx < 2:
                keys[f"{q}.conv_1.weight"] = (c // 2, c, 1, 1)
                keys[f"{q}.conv_2.weight"] = (c // 2, c, 1, 1)
                bn(f"{q}.bn", c)
        c_pp, c_p = c_p, 4 * c
        red_prev = red
        if i == 2 * layers // 3:
            c_aux = c_p
    keys["auxiliary_head.features.2.weight"] = (128, c_aux, 1, 1)
    bn("auxiliary_head.features.3", 128)
    keys["auxiliary_head.features.5.weight"] = (768, 128, 2, 2)
    bn("auxiliary_head.features.6", 768)
    keys.update({"auxiliary_head.classifier.weight": (num_classes, 768), "auxiliary_head.classifier.bias": (num_classes,),
                 "classifier.weight": (num_classes, c_p), "classifier.bias": (num_classes,)})
    return keys


def test_released_checkpoint_names_and_shapes_load(tmp_path):
    # a few names written out by hand from the reference layout (C=36, 20 cells: reductions at 6, 13)
    full = NetworkCIFAR(36, 10, 20, True, DARTS_V2).state_dict()
    by_hand = {"stem.0.weight": (108, 3, 3, 3), "cells.0.preprocess0.op.1.weight": (36, 108, 1, 1),
               "cells.0._ops.0.op.1.weight": (36, 1, 3, 3), "cells.0._ops.0.op.7.running_var": (36,),
               "cells.0._ops.7.op.2.weight": (36, 36, 1, 1), "cells.6._ops.2.op.1.weight": None,
               "cells.7.preprocess0.conv_1.weight": (36, 144, 1, 1), "cells.7.preprocess1.op.1.weight": (72, 288, 1, 1),
               "auxiliary_head.features.2.weight": (128, 576, 1, 1), "classifier.weight": (10, 576)}
    for key, shape in by_hand.items():
        if shape is None:
            assert key not in full  # reduction cell: edge 2 is skip_connect from node 2 (stride 1, no weights)
        else:
            assert tuple(full[key].shape) == shape, key

    # the complete key set of a small network, generated from the published description, loads strictly
    net = NetworkCIFAR(8, 10, 5, True, DARTS_V2)
    reference = _reference_keys(DARTS_V2, 8, 5)
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == reference
    released = {"module." + k: (torch.randn(s) if s else torch.tensor(3)) for k, s in reference.items()}
    torch.save(released, tmp_path / "cifar10_model.pt")
    state, meta = load_cifar_state_dict(tmp_path / "cifar10_model.pt")
    NetworkCIFAR(8, 10, 5, True, DARTS_V2).load_state_dict(state, strict=True)
    assert meta == {}

    # a pickled whole model: classes become stand-ins, only the tensors are read
    torch.save(net, tmp_path / "whole.pt")
    state, _ = load_cifar_state_dict(tmp_path / "whole.pt")
    assert set(state) == set(reference) and torch.equal(state["classifier.weight"], net.classifier.weight)


# ---- landmark network ------------------------------------------------------------------------
@pytest.mark.parametrize("size", [128, 64, 32])
def test_landmark_net_heatmaps_are_a_quarter_of_the_input(size):
    model = build_model({"name": "darts", "genotype": "DARTS_V1", "layers": 4, "init_channels": 8,
                         "head_channels": 16}).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert out.shape == (1, 68, size // 4, size // 4)


def test_landmark_builder_rejects_bad_keys():
    with pytest.raises(ValueError, match="model.layers"):
        build_model({"name": "darts", "layers": 0})
    with pytest.raises(FileNotFoundError, match="needs CIFAR-10 weights: looked for"):
        build_model({"name": "darts", "cifar_checkpoint": "/nonexistent/cifar10_model.pt"})


# ---- CIFAR-10 training + transfer ------------------------------------------------------------
def _write_tiny_cifar(root, n_per_batch=8):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ["data_batch_1", "data_batch_2", "test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n_per_batch).tolist()}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)
    return folder


def test_train_tiny_cifar_then_transfer_cells(tmp_path):
    root = tmp_path / "cifar"
    missing = resolve_pretrained(checkpoint=tmp_path / "none.pt", cifar_root=root, out_path=tmp_path / "c.pt")
    assert missing["status"] == "missing" and missing["message"].startswith("needs CIFAR-10: looked for")
    assert str(tmp_path / "none.pt") in missing["message"]
    with pytest.raises(FileNotFoundError, match="needs CIFAR-10"):
        resolve_pretrained(cifar_root=root, out_path=tmp_path / "c.pt", required=True)

    _write_tiny_cifar(root)
    status = resolve_pretrained(cifar_root=root, out_path=tmp_path / "c.pt",
                                train_kwargs=dict(epochs=1, batch_size=4, max_steps_per_epoch=1, layers=5,
                                                  init_channels=8, progress=False))
    assert status["status"] == "trained" and (tmp_path / "c.pt").is_file()
    assert len(status["training"]["history"]) == 1 and 0.0 <= status["training"]["test_accuracy"] <= 1.0
    assert resolve_pretrained(cifar_root=root, out_path=tmp_path / "c.pt")["status"] == "checkpoint"

    state, meta = load_cifar_state_dict(tmp_path / "c.pt")
    assert parse_genotype(meta["genotype"]) == DARTS_V2 and meta["layers"] == 5

    # landmark net: 4 cells (reductions at 1, 2) <- CIFAR net: 5 cells (reductions at 1, 3)
    landmark = DartsLandmarkNet(DARTS_V2, layers=4, init_channels=8, head_channels=16)
    report = apply_cifar_pretrained(landmark, tmp_path / "c.pt")
    assert report["mapping"] == {0: 0, 1: 1, 2: 3, 3: 4}
    mine = landmark.state_dict()
    assert torch.equal(mine["cells.3._ops.0.op.1.weight"], state["cells.4._ops.0.op.1.weight"])
    assert torch.equal(mine["cells.0.preprocess1.op.2.running_mean"], state["cells.0.preprocess1.op.2.running_mean"])
    assert "cells.3._ops.0.op.1.weight" in report["transferred"]
    # landmark cell 2 follows a reduction (FactorizedReduce preprocess), CIFAR cell 3 does not
    assert report["skipped"]["cells.2.preprocess0.conv_1.weight"].startswith("cells.3.preprocess0.conv_1.weight "
                                                                             "not in CIFAR-10 checkpoint")
    assert torch.equal(mine["cells.2.preprocess1.op.1.weight"], state["cells.3.preprocess1.op.1.weight"])
    assert report["unused"]["stem.0.weight"].startswith("classification stem")
    assert report["unused"]["cells.2._ops.0.op.1.weight"] == "CIFAR-10 cell not mapped to any landmark cell"
    n_cell_keys = sum(k.startswith("cells.") for k in mine)
    assert len(report["transferred"]) + len(report["skipped"]) == n_cell_keys

    other = DartsLandmarkNet(DARTS_V1, layers=4, init_channels=8, head_channels=16)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    report = transfer_cifar_cells(other, state, meta["genotype"])
    assert report["transferred"] == []
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    assert "genotype" in report["skipped"]["cells.0.preprocess1.op.1.weight"]


# ---- search supernet ---------------------------------------------------------------------------
def test_derivation_from_hand_set_alpha():
    prims = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
             "dil_conv_3x3", "dil_conv_5x5"]
    k = {p: i for i, p in enumerate(prims)}
    normal = np.zeros((5, 8))      # 2 steps: node 0 edges (from inputs 0, 1), node 1 edges (0, 1, node 0)
    normal[0, k["sep_conv_3x3"]] = 3.0
    normal[1, k["none"]] = 9.0       # 'none' is ignored: input 1's best real op is weak ...
    normal[1, k["skip_connect"]] = 1.0
    normal[2, k["dil_conv_5x5"]] = 2.0
    normal[3, k["max_pool_3x3"]] = 0.5
    normal[4, k["sep_conv_5x5"]] = 4.0
    reduce = np.zeros((5, 8))
    reduce[1, k["avg_pool_3x3"]] = 2.0
    reduce[0, k["skip_connect"]] = 1.0
    reduce[3, k["dil_conv_3x3"]] = 5.0
    reduce[4, k["sep_conv_3x3"]] = 1.0
    genotype = derive_genotype(normal, reduce, prims, steps=2, multiplier=2)
    assert genotype == Genotype(
        normal=[("sep_conv_3x3", 0), ("skip_connect", 1), ("sep_conv_5x5", 2), ("dil_conv_5x5", 0)],
        normal_concat=[2, 3],
        reduce=[("avg_pool_3x3", 1), ("skip_connect", 0), ("dil_conv_3x3", 1), ("sep_conv_3x3", 2)],
        reduce_concat=[2, 3])


def _tiny_supernet(**search):
    return build_supernet({"search": {"supernet": TINY_SUPERNET, **search}, "model": {"num_landmarks": 3}})


def test_noise_only_in_training():
    x = torch.randn(2, 3, 16, 16)
    for mode in ("step", "epoch"):
        net = _tiny_supernet(noise=mode, noise_scale=0.5)
        net.on_epoch_start(0, 2)
        net.train()
        a, b = net(x), net(x)
        if mode == "step":
            assert not torch.allclose(a, b)
        else:  # one pattern per epoch: same within the epoch, new after the next epoch starts
            assert torch.allclose(a, b)
            net.on_epoch_start(1, 2)
            assert not torch.allclose(a, net(x))
        net.eval()
        with torch.no_grad():
            assert torch.equal(net(x), net(x))
    quiet = _tiny_supernet()
    quiet.train()
    assert torch.allclose(quiet(x), quiet(x))


def test_darts_minus_beta_decays_to_zero_and_shapes_the_output():
    assert [darts_minus_decay(e, 5) for e in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    net = _tiny_supernet(darts_minus=True, darts_minus_beta=2.0).eval()
    x = torch.randn(1, 3, 32, 32)
    seen = []
    with torch.no_grad():
        for epoch in range(3):
            net.on_epoch_start(epoch, 3)
            seen.append((net.epoch_info()["darts_minus_beta"], net(x)))
    assert [b for b, _ in seen] == [2.0, 1.0, 0.0]
    assert not torch.allclose(seen[0][1], seen[2][1])
    plain = _tiny_supernet().eval()
    plain.load_state_dict(net.state_dict(), strict=False)
    with torch.no_grad():
        assert torch.allclose(plain(x), seen[2][1], atol=1e-6)  # β = 0: exactly the plain supernet


def test_supernet_protocol_and_drawings(tmp_path):
    net = _tiny_supernet()
    arch_ids = {id(p) for p in net.arch_parameters()}
    assert len(arch_ids) == 2 and not any(id(p) in arch_ids for p in net.weight_parameters())
    assert len(list(net.parameters())) == len(list(net.weight_parameters())) + 2
    arch = net.derive()
    genotype = parse_genotype(arch)
    assert len(genotype.normal) == 4 and genotype.normal_concat == [2, 3]
    snap = net.arch_snapshot()
    assert snap["alpha_normal"].shape == (5, 8) and np.allclose(snap["alpha_normal"].sum(1), 1.0)
    fig = plot_genotype(DARTS_V2, tmp_path / "cells.png")
    assert (tmp_path / "cells.png").stat().st_size > 1000 and len(fig.axes) == 2
    fig = plot_alpha_history([{"epoch": 0, **snap}, {"epoch": 1, **snap}], tmp_path / "alpha.png")
    assert (tmp_path / "alpha.png").is_file() and len(fig.axes) >= 10
    import matplotlib.pyplot as plt
    plt.close("all")


def test_tiny_search_end_to_end_with_every_switch(tmp_path):
    from nbutils.engine.search import search

    cfg = {"search": {"epochs": 2, "order": "second", "smooth": "adversarial", "adversarial_steps": 1,
                      "smooth_epsilon": 0.3, "noise": "step", "darts_minus": True, "arch_lr": 0.01,
                      "supernet": TINY_SUPERNET, "eval": False}, "model": {"num_landmarks": 3}}
    # 16x16 images -> 4x4 heatmaps, one batch per half: every code path once per epoch, in a few seconds
    net = build_supernet(cfg)
    g = torch.Generator().manual_seed(0)
    batches = [{"image": torch.randn(2, 3, 16, 16, generator=g), "heatmaps": torch.rand(2, 3, 4, 4, generator=g)}]
    alpha_before = net.alpha_normal.detach().clone()
    result = search(cfg, tmp_path, net, progress=False, loaders={"weights": batches, "arch": batches})
    assert not torch.allclose(net.alpha_normal.detach(), alpha_before)
    assert [h["darts_minus_beta"] for h in result.history] == [1.0, 0.0]
    assert [h["smooth_epsilon"] for h in result.history] == [0.0, pytest.approx(0.3)]
    assert parse_genotype(str(tmp_path / "search_arch.json")) == net.genotype()
    assert net.arch_perturbation is None
