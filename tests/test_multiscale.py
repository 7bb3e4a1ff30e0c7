"""Multi-scale family: supernet, HRNet connectivity, derivation with transition 1/2, JSON round trip, notebook smoke."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nbutils import runner
from nbutils.models import build_model
from nbutils.models import multiscale as ms
from nbutils.models.hrnet import BasicBlock, HighResolutionModule
from nbutils.models.multiscale.space import candidate_sources

OPS = ["basic_block", "mbconv_k3_e3", "mbconv_k5_e3", "skip"]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_supernet(transition=1, stack=1, width=2):
    torch.manual_seed(0)
    return ms.build_supernet({"model": {"width": width, "stack_num": stack, "transition": transition,
                                        "stem_channels": 8}})


def hrnet_fuse_pattern(num_stages=4):
    """HRNetV2's fuse pattern written out by hand: node i of stage s reads every branch j of stage s-1;
    same resolution -> identity, lower resolution (j > i) -> 1x1 conv + upsample,
    higher resolution (j < i) -> i-j strided convs."""
    pattern = {"s1r0": {}}
    for stage in range(2, num_stages + 1):
        for i in range(stage):
            pattern[f"s{stage}r{i}"] = {f"s{stage - 1}r{j}": "identity" if i == j else ("up" if j > i else "down")
                                        for j in range(stage - 1)}
    return pattern


def test_supernet_forward_backward_tiny():
    supernet = tiny_supernet(stack=2)
    images = torch.randn(2, 3, 32, 32)
    heatmaps = supernet(images)
    assert heatmaps.shape == (2, 68, 8, 8)
    heatmaps.pow(2).mean().backward()
    arch = supernet.arch_parameters()
    # 9 nodes of stages 2-4 have path weights, all 10 nodes have op weights
    assert len(arch) == 9 + 10
    assert [tuple(b.shape) for b in supernet.betas.values()] == [(1,), (1,), (2,), (2,), (2,), (3,), (3,), (3,), (3,)]
    assert all(p.grad is not None for p in arch if p.numel() > 1)   # a one-candidate softmax has zero gradient
    assert all(float(a.grad.abs().sum()) > 0 for a in supernet.alphas.values())
    arch_ids = {id(p) for p in arch}
    weights = supernet.weight_parameters()
    assert not any(id(p) in arch_ids for p in weights)
    assert len(weights) + len(arch) == len(list(supernet.parameters()))
    snapshot = supernet.arch_snapshot()
    assert np.allclose(snapshot["beta/s4r2"].sum(), 1.0) and snapshot["alpha/s1r0"].shape == (2, 4)


def test_arch_perturbation_adds_to_softmaxed_weights():
    supernet = tiny_supernet()
    supernet.eval()
    images = torch.randn(1, 3, 32, 32)
    zeros = [torch.zeros_like(p) for p in supernet.arch_parameters()]
    with torch.no_grad():
        plain = supernet(images)
        supernet.arch_perturbation = zeros
        same = supernet(images)
        supernet.arch_perturbation = [z + 0.3 for z in zeros]
        moved = supernet(images)
    assert torch.equal(plain, same) and not torch.allclose(plain, moved, rtol=1e-2, atol=0.0)


def test_hrnet_point_has_hrnet_fuse_connectivity():
    expected = hrnet_fuse_pattern()
    net = build_model({"name": "multiscale", "arch": "hrnet", "width": 4, "stack_num": 2, "init": "normal"})
    assert net.connectivity() == expected
    assert net.arch["pruned"] == [] and net.arch["head"] == ["s4r0", "s4r1", "s4r2", "s4r3"]
    assert all(node["layers"] == ["basic_block", "basic_block"] for node in net.arch["nodes"].values())
    # The same point reached from the supernet: equal path weights, every connection kept.
    supernet = tiny_supernet(transition="all", stack=2, width=4)
    supernet.set_arch_weights({n: np.zeros(len(b)) for n, b in supernet.betas.items()},
                              {n: np.tile([1.0, 0, 0, 0], (2, 1)) for n in supernet.alphas})
    derived = supernet.derive()
    assert ms.MultiScaleNet(derived).connectivity() == expected
    assert supernet.derive(transition=3)["nodes"] == derived["nodes"]   # 3 >= every node's candidate count


def test_connections_match_hrnet_fuse_layers():
    """Every kept connection between existing branches has the shapes, strides and layer order of
    HighResolutionModule's fuse layer for the same widths; the new branch gets the same kind of chain."""
    width = 4
    channels = [width * 2 ** r for r in range(4)]
    net = build_model({"name": "multiscale", "arch": "hrnet", "width": width, "stack_num": 1})
    for stage in (2, 3):
        module = HighResolutionModule(BasicBlock, [1] * stage, channels[:stage], channels[:stage], 0.01,
                                      lambda c: None)
        for i in range(stage):
            for j in range(stage):
                ours = net.nodes[f"s{stage + 1}r{i}"].inputs[f"s{stage}r{j}"].body
                theirs = module.fuse_layers[i][j]
                describe = lambda m: [(type(x).__name__, tuple(getattr(x, "weight", torch.empty(0)).shape),
                                       getattr(x, "stride", None)) for x in m.modules() if not list(x.children())]
                assert describe(ours) == describe(theirs), (stage, i, j)
    chain = net.nodes["s4r3"].inputs["s3r0"].body   # new 1/32 branch from the 1/4 node: three stride-2 convs
    convs = [m for m in chain.modules() if isinstance(m, torch.nn.Conv2d)]
    relus = [m for m in chain.modules() if isinstance(m, torch.nn.ReLU)]
    assert [c.stride for c in convs] == [(2, 2)] * 3 and len(relus) == 2
    assert [c.out_channels for c in convs] == [channels[0], channels[0], channels[3]]


def hand_set_supernet(transition):
    """Path logits chosen so the kept edges can be listed by hand (log weights: softmax is easy to check)."""
    supernet = tiny_supernet(transition=transition)
    logits = {
        "s2r0": [0.0], "s2r1": [0.0],
        "s3r0": [0.0, math.log(3.0)],            # weights 0.25, 0.75
        "s3r1": [math.log(3.0), 0.0],            # 0.75, 0.25
        "s3r2": [0.0, math.log(4.0)],            # 0.2, 0.8
        "s4r0": [0.0, math.log(5.0), math.log(2.0)],  # 0.125, 0.625, 0.25
        "s4r1": [0.0, math.log(6.0), math.log(3.0)],  # 0.1, 0.6, 0.3
        "s4r2": [math.log(2.0), math.log(7.0), 0.0],  # 0.2, 0.7, 0.1
        "s4r3": [0.0, math.log(3.0), math.log(6.0)],  # 0.1, 0.3, 0.6
    }
    layer_logits = {n: np.array([[0.0, 0.0, 0.0, 1.0]]) for n in supernet.alphas}   # skip everywhere ...
    layer_logits["s3r1"] = np.array([[0.0, 0.0, 2.0, 1.0]])                       # ... but MBConv k5 here
    supernet.set_arch_weights(logits, layer_logits)
    return supernet


def kept_edges(arch):
    return {name: [e["from"] for e in node["inputs"]] for name, node in arch["nodes"].items()}


def test_derivation_transition_1_and_2():
    one = hand_set_supernet(1).derive()
    # transition 1: stage 4 reads s3r1 (three nodes) and s3r2 (s4r3); s3r0 feeds nobody -> pruned
    assert kept_edges(one) == {"s1r0": [], "s2r0": ["s1r0"], "s2r1": ["s1r0"], "s3r1": ["s2r0"], "s3r2": ["s2r1"],
                               "s4r0": ["s3r1"], "s4r1": ["s3r1"], "s4r2": ["s3r1"], "s4r3": ["s3r2"]}
    assert one["pruned"] == ["s3r0"]
    assert one["nodes"]["s4r0"]["inputs"][0]["weight"] == pytest.approx(0.625)
    assert one["path_weights"]["s3r2"] == pytest.approx({"s2r0": 0.2, "s2r1": 0.8})
    assert one["nodes"]["s3r1"]["layers"] == ["mbconv_k5_e3"] and one["nodes"]["s4r0"]["layers"] == ["skip"]

    two = hand_set_supernet(2).derive()
    assert kept_edges(two) == {"s1r0": [], "s2r0": ["s1r0"], "s2r1": ["s1r0"], "s3r0": ["s2r0", "s2r1"],
                               "s3r1": ["s2r0", "s2r1"], "s3r2": ["s2r0", "s2r1"], "s4r0": ["s3r1", "s3r2"],
                               "s4r1": ["s3r1", "s3r2"], "s4r2": ["s3r0", "s3r1"], "s4r3": ["s3r1", "s3r2"]}
    assert two["pruned"] == []
    # every derived network runs and keeps the four parallel branches up to the head
    for arch in (one, two):
        net = ms.MultiScaleNet(arch)
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 68, 8, 8)
        assert net.head_names == ["s4r0", "s4r1", "s4r2", "s4r3"]


def test_ties_keep_the_higher_resolution_source():
    supernet = tiny_supernet(transition=1)
    supernet.set_arch_weights({n: np.zeros(len(b)) for n, b in supernet.betas.items()})
    arch = supernet.derive()
    for name, node in arch["nodes"].items():
        if node["stage"] >= 2:
            assert [e["from"] for e in node["inputs"]] == [candidate_sources(node["stage"], [1, 2, 3, 4])[0]]


def test_json_round_trip_builds_the_same_network(tmp_path):
    arch = hand_set_supernet(2).derive()
    path = ms.save_arch(arch, tmp_path / "architecture.json")
    assert ms.load_arch(path) == json.loads(json.dumps(arch))
    torch.manual_seed(1)
    from_dict = build_model({"name": "multiscale", "arch": arch})
    from_file = build_model({"name": "multiscale", "arch": str(path)})
    wrapped = tmp_path / "search_arch.json"
    wrapped.write_text(json.dumps({"arch": arch, "search_nme": 20.0}))
    from_search = build_model({"name": "multiscale", "arch": str(wrapped)})
    shapes = {k: tuple(v.shape) for k, v in from_dict.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in from_file.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in from_search.state_dict().items()}
    from_file.load_state_dict(from_dict.state_dict())
    from_dict.eval(), from_file.eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(from_dict(images), from_file(images))


def test_bad_architectures_are_named(tmp_path):
    with pytest.raises(ValueError, match="model.arch"):
        build_model({"name": "multiscale"})
    with pytest.raises(FileNotFoundError, match="missing.json"):
        build_model({"name": "multiscale", "arch": str(tmp_path / "missing.json")})
    arch = hand_set_supernet(1).derive()
    arch["nodes"]["s4r1"]["inputs"] = [{"from": "s3r0", "weight": 1.0}]   # s3r0 was pruned
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(arch))
    with pytest.raises(ValueError, match=r"broken.json.*s4r1.*s3r0"):
        ms.load_arch(broken)
    with pytest.raises(ValueError, match="transition"):
        tiny_supernet(transition=0)


def test_notebook_smoke_run(tmp_path, smoke_root, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")   # the kernel inherits it: one torch thread, as the tests above
    results = runner.run_family("multiscale", "smoke", outputs=tmp_path, progress=False,
                                overrides=[f"data.cache_dir={smoke_root.parent}"])
    assert [r["status"] for r in results] == ["done"], results
    run_dir = tmp_path / "multiscale" / "ms-stack4-t2-x1-s111-smoke"
    metrics = runner.read_metrics(run_dir)
    assert metrics is not None and metrics["family"] == "multiscale"
    assert set(metrics["subsets"]) == {"common", "challenge", "full", "test"}
    assert metrics["params_m"] > 0 and metrics["gflops"] > 0
    assert metrics["search_nme"] is None or metrics["search_nme"] > 0
    assert metrics["architecture"] == json.loads((run_dir / "architecture.json").read_text())
    assert metrics["architecture"]["transition"] == 2
    assert (run_dir / "architecture.png").stat().st_size > 0
