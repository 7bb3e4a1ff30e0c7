"""Models: HRNetV2 topology/names, attention by name, initialisation, checkpoint import, cost."""
import math
import re

import pytest
import torch
import torch.nn as nn

from nbutils.models import build_model, init_weights, load_pretrained, model_cost, register_model
from nbutils.models.attention import ATTENTION_NAMES, BAM, CBAM, NonLocal2d, SqueezeExcite, create_attention
from nbutils.models.cost import count_macs
from nbutils.models.heads import concat_upsampled

# 4 Bottlenecks in layer1 + (modules x branches x 4 BasicBlocks) in stages 2-4 = 4 + 8 + 48 + 48
RESIDUAL_UNITS_HRNET = 4 + 1 * 2 * 4 + 4 * 3 * 4 + 3 * 4 * 4
UNIT_PREFIX = re.compile(r"^(layer1\.\d+|stage[234]\.\d+\.branches\.\d+\.\d+)\.attn\.")


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def baseline():
    return build_model({"name": "hrnet", "width": 18})


# ---------------------------------------------------------------- HRNetV2 topology


@pytest.mark.parametrize("width, expected", [(18, 9_654_398), (32, 29_570_084)])
def test_parameter_count_matches_official(width, expected):
    model = build_model({"width": width})
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("size", [256, 128, 64])
def test_heatmaps_are_a_quarter_of_the_input(baseline, size):
    baseline.eval()
    with torch.no_grad():
        out = baseline(torch.randn(1, 3, size, size))
    assert out.shape == (1, 68, size // 4, size // 4)


def test_official_key_names_and_shapes(baseline):
    # names/shapes read off the official lib/models/hrnet.py for W18 (timm's hrnet_w18 uses the same)
    expected = {
        "conv1.weight": (64, 3, 3, 3), "bn2.running_var": (64,),
        "layer1.0.conv1.weight": (64, 64, 1, 1), "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.3.bn3.weight": (256,),
        "transition1.0.0.weight": (18, 256, 3, 3), "transition1.1.0.0.weight": (36, 256, 3, 3),
        "transition2.2.0.0.weight": (72, 36, 3, 3), "transition3.3.0.0.weight": (144, 72, 3, 3),
        "stage2.0.branches.1.3.conv2.weight": (36, 36, 3, 3),
        "stage2.0.fuse_layers.0.1.0.weight": (18, 36, 1, 1),
        "stage2.0.fuse_layers.1.0.0.0.weight": (36, 18, 3, 3),
        "stage3.3.branches.2.3.bn2.running_var": (72,),
        "stage4.2.fuse_layers.3.0.0.0.weight": (18, 18, 3, 3),
        "stage4.2.fuse_layers.3.0.2.0.weight": (144, 18, 3, 3),
        "stage4.2.fuse_layers.0.3.1.weight": (18,),
        "head.0.weight": (270, 270, 1, 1), "head.0.bias": (270,), "head.1.weight": (270,),
        "head.3.weight": (68, 270, 1, 1), "head.3.bias": (68,),
    }
    got = shapes(baseline)
    for key, shape in expected.items():
        assert got.get(key) == shape, key
    assert "stage4.3.fuse_layers.0.0.weight" not in got   # 3 modules in stage 4
    assert not any(k.startswith("head.2") for k in got)   # ReLU holds nothing
    assert all(m.momentum == 0.01 for m in baseline.modules() if isinstance(m, nn.BatchNorm2d))


# ---------------------------------------------------------------- attention


@pytest.mark.parametrize("position", ["prehead", "block"])
@pytest.mark.parametrize("kind", ATTENTION_NAMES)
def test_every_attention_builds_and_trains(kind, position):
    model = build_model({"attention": {"type": kind, "position": position, "reduction": 4}})
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 68, 16, 16)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.head.parameters())
    assert model.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("position", ["prehead", "block"])
def test_none_is_exactly_the_baseline(baseline, position):
    model = build_model({"attention": {"type": "none", "position": position, "fusion_stages": [4]}})
    assert shapes(model) == shapes(baseline)
    model.load_state_dict(baseline.state_dict())
    model.eval(), baseline.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), baseline(x))


def test_block_se_only_adds_modules_inside_residual_units(baseline):
    model = build_model({"attention": {"type": "se", "position": "block", "reduction": 16}})
    base, got = shapes(baseline), shapes(model)
    assert {k: v for k, v in got.items() if k in base} == base
    extra = [k for k in got if k not in base]
    assert all(UNIT_PREFIX.match(k) for k in extra), [k for k in extra if not UNIT_PREFIX.match(k)][:3]
    units = {UNIT_PREFIX.match(k).group(1) for k in extra}
    assert len(units) == RESIDUAL_UNITS_HRNET
    # SE inside a W18 stage-4 lowest branch unit: 144 -> 144 // 16 = 9 -> 144
    assert got["stage4.0.branches.3.0.attn.fc1.weight"] == (9, 144, 1, 1)
    assert got["layer1.0.attn.fc2.weight"] == (256, 16, 1, 1)


def test_prehead_attention_sits_on_the_fused_features(baseline):
    model = build_model({"attention": {"type": "se", "position": "prehead", "reduction": 4}})
    base = shapes(baseline)
    extra = {k: v for k, v in shapes(model).items() if k not in base}
    assert set(extra) == {"prehead_attn.fc1.weight", "prehead_attn.fc1.bias",
                          "prehead_attn.fc2.weight", "prehead_attn.fc2.bias"}
    assert extra["prehead_attn.fc1.weight"] == (270 // 4, 270, 1, 1)


@pytest.mark.parametrize("stages, channels", [([3, 4], 270 + 126), ([2, 3, 4], 270 + 126 + 54),
                                              ([1, 2, 3, 4], 270 + 126 + 54 + 256)])
def test_fusion_stages_change_only_the_head_input(baseline, stages, channels):
    model = build_model({"attention": {"type": "none", "fusion_stages": stages}})
    base, got = shapes(baseline), shapes(model)
    assert set(got) == set(base)
    changed = {k for k in base if got[k] != base[k]}
    assert changed == {"head.0.weight", "head.0.bias", "head.1.weight", "head.1.bias", "head.1.running_mean",
                       "head.1.running_var", "head.3.weight"}
    assert got["head.0.weight"] == (channels, channels, 1, 1) and got["head.3.weight"] == (68, channels, 1, 1)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 68, 16, 16)


def test_bad_attention_config_names_the_key():
    with pytest.raises(ValueError, match="model.attention.type"):
        build_model({"attention": {"type": "squeeze"}})
    with pytest.raises(ValueError, match="colour"):
        build_model({"attention": {"colour": 1}})
    with pytest.raises(ValueError, match="fusion_stages"):
        build_model({"attention": {"fusion_stages": [2, 3]}})
    with pytest.raises(ValueError, match="model.name"):
        build_model({"name": "resnet"})


def _zero_weights(module):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not (isinstance(p, torch.Tensor) and name.endswith("weight") and p.dim() == 1):
                p.zero_()   # conv weights/biases -> 0; BN affine keeps weight 1, bias 0
    return module.eval()


def test_attention_gates_with_zero_weights_follow_their_formulas():
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        # every logit is 0 -> every sigmoid gate is 1/2
        assert torch.allclose(_zero_weights(SqueezeExcite(16, 4))(x), 0.5 * x)
        assert torch.allclose(_zero_weights(SqueezeExcite(16, 4, residual=True))(x), 1.5 * x)   # x + x*w
        assert torch.allclose(_zero_weights(CBAM(16, 4))(x), 0.25 * x)                        # channel, spatial
        assert torch.allclose(_zero_weights(BAM(16, 4))(x), 1.5 * x)                          # x + x*gate


@pytest.mark.parametrize("mode", NonLocal2d.MODES)
def test_nonlocal_starts_as_identity(mode):
    block = NonLocal2d(16, mode=mode, sub_sample=True).eval()
    x = torch.randn(2, 16, 7, 5)
    with torch.no_grad():
        assert torch.equal(block(x), x)


def test_nonlocal_concatenation_matches_the_pairwise_definition():
    torch.manual_seed(0)
    block = NonLocal2d(6, mode="concatenation", inter_channels=3, sub_sample=False).eval()
    nn.init.normal_(block.W[1].weight)  # leave the identity start so the response is visible
    x = torch.randn(1, 6, 3, 4)
    with torch.no_grad():
        theta = block.theta(x).flatten(2)[0].T            # [12, 3]
        phi = block.phi(x).flatten(2)[0].T
        g = block.g(x).flatten(2)[0].T
        w = block.concat_project.weight.flatten()
        n = theta.shape[0]
        y = torch.zeros(n, 3)
        for i in range(n):
            for j in range(n):
                f = torch.relu(w @ torch.cat([theta[i], phi[j]]))
                y[i] += f * g[j] / n
        expected = x + block.W(y.T.reshape(1, 3, 3, 4))
        assert torch.allclose(block(x), expected, atol=1e-5)


def test_nonlocal_reduction_sets_inter_channels():
    assert create_attention("nonlocal_dot_product", 64).inter_channels == 32          # paper C/2
    assert create_attention("nonlocal_dot_product", 64, reduction=8).inter_channels == 8
    assert create_attention("none", 64) is None


# ---------------------------------------------------------------- initialisation

# transition3.3.0.0 is a 3x3 conv 72 -> 144: fan_in 648, fan_out 1296
PROBE = "transition3.3.0.0.weight"


@pytest.mark.parametrize("scheme, std", [("normal", 0.001), ("xavier", math.sqrt(2 / (648 + 1296))),
                                         ("kaiming", math.sqrt(2 / 648)), ("kaiming_fan_out", math.sqrt(2 / 1296))])
def test_init_scheme_statistics(scheme, std):
    model = build_model({"init": scheme, "attention": {"type": "nonlocal_gaussian", "position": "prehead"}})
    weight = model.state_dict()[PROBE]
    assert abs(weight.mean().item()) < 0.05 * std
    assert weight.std().item() == pytest.approx(std, rel=0.03)
    assert torch.all(model.head[0].bias == 0)
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            expected_weight = 0.0 if name == "prehead_attn.W.1" else 1.0   # non-local starts as identity
            assert torch.all(m.weight == expected_weight) and torch.all(m.bias == 0), name
    assert model.init_report["scheme"] == scheme and model.init_report["zero_init_norms"] == 1


def test_unknown_or_missing_init_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_model({"init": f"pretrained:{missing}"})
    with pytest.raises(ValueError, match="orthogonal"):
        build_model({"init": "orthogonal"})


# ---------------------------------------------------------------- checkpoint import


def _imagenet_like_checkpoint():
    """A few official HRNet-ImageNet keys, written by hand (classification net layout)."""
    g = torch.Generator().manual_seed(1)
    return {
        "conv1.weight": torch.randn(64, 3, 3, 3, generator=g),
        "bn1.running_mean": torch.randn(64, generator=g),
        "layer1.0.downsample.0.weight": torch.randn(256, 64, 1, 1, generator=g),
        "transition1.1.0.0.weight": torch.randn(36, 256, 3, 3, generator=g),
        "stage2.0.fuse_layers.0.1.0.weight": torch.randn(18, 36, 1, 1, generator=g),
        "stage4.2.fuse_layers.3.0.2.0.weight": torch.randn(144, 18, 3, 3, generator=g),
        "stage4.2.branches.3.3.bn2.num_batches_tracked": torch.tensor(7),
        "incre_modules.0.0.conv1.weight": torch.randn(32, 18, 1, 1, generator=g),
        "downsamp_modules.0.0.weight": torch.randn(256, 128, 3, 3, generator=g),
        "final_layer.0.weight": torch.randn(2048, 1024, 1, 1, generator=g),
        "classifier.weight": torch.randn(1000, 2048, generator=g),
        "classifier.bias": torch.randn(1000, generator=g),
        "conv2.weight": torch.randn(64, 64, 5, 5, generator=g),   # deliberately the wrong shape
    }


def test_load_pretrained_reports_loaded_skipped_missing(baseline):
    ckpt = _imagenet_like_checkpoint()
    model = build_model({"init": "normal"})
    report = load_pretrained(model, ckpt)
    backbone = ["conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "transition1.1.0.0.weight",
                "stage2.0.fuse_layers.0.1.0.weight", "stage4.2.fuse_layers.3.0.2.0.weight",
                "stage4.2.branches.3.3.bn2.num_batches_tracked"]
    assert sorted(report["loaded"]) == sorted(backbone)
    for key in backbone:
        assert torch.equal(model.state_dict()[key], ckpt[key].to(model.state_dict()[key].dtype)), key
    for key in ("incre_modules.0.0.conv1.weight", "downsamp_modules.0.0.weight", "final_layer.0.weight",
                "classifier.weight", "classifier.bias"):
        assert report["skipped"][key] == "not in landmark model"
    assert report["skipped"]["conv2.weight"] == "shape mismatch: checkpoint (64, 64, 5, 5) vs model (64, 64, 3, 3)"
    assert set(report["missing"]) == set(baseline.state_dict()) - set(backbone)
    assert "head.3.weight" in report["missing"]


def test_pretrained_scheme_loads_a_wrapped_file(tmp_path):
    ckpt = {"state_dict": {"module." + k: v for k, v in _imagenet_like_checkpoint().items()}}
    path = tmp_path / "hrnetv2_w18_imagenet_pretrained.pth"
    torch.save(ckpt, path)
    model = build_model({"init": f"pretrained:{path}"})
    report = model.init_report["pretrained"]
    assert "conv1.weight" in report["loaded"] and "module.classifier.weight" in report["skipped"]
    assert torch.equal(model.conv1.weight, ckpt["state_dict"]["module.conv1.weight"])
    assert model.head[3].weight.std().item() == pytest.approx(0.001, rel=0.1)   # the rest: normal


# ---------------------------------------------------------------- cost


def test_mac_counter_on_a_hand_computed_net():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),                     # 16x16 -> 8x8: 8*64 * 3*9   = 13824
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8),         # depthwise:    8*64 * 1*9   = 4608
        nn.Conv2d(8, 4, 1, groups=2),                                # grouped:      4*64 * 4     = 1024
        nn.ConvTranspose2d(4, 2, 2, stride=2),                       # 4*64 inputs * 2*4          = 2048
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 10),     #               10*2         = 20
    )
    macs = count_macs(net, torch.zeros(1, 3, 16, 16))
    assert macs == {"0": 13824, "1": 4608, "2": 1024, "3": 2048, "6": 20}
    params = sum(p.numel() for p in net.parameters())
    assert model_cost(net, 16) == {"params_m": params / 1e6, "gflops": 21524 / 1e9}


def test_hrnet_w18_costs_the_published_macs(baseline):
    cost = model_cost(baseline, 256)
    assert cost["gflops"] == pytest.approx(4.66, rel=0.01)
    assert cost["params_m"] == pytest.approx(9.654398)
    assert model_cost(baseline, 128)["gflops"] == pytest.approx(cost["gflops"] / 4, rel=1e-6)


def test_concat_upsampled_and_registry():
    a, b = torch.randn(1, 2, 8, 8), torch.ones(1, 3, 4, 4)
    out = concat_upsampled([a, b])
    assert out.shape == (1, 5, 8, 8) and torch.equal(out[:, :2], a) and torch.all(out[:, 2:] == 1)

    @register_model("tiny_test_net")
    def tiny(cfg):
        return nn.Sequential(nn.Conv2d(3, cfg["num_landmarks"], 4, stride=4))
    model = build_model({"name": "tiny_test_net", "num_landmarks": 5, "init": "kaiming"})
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 5, 8, 8)
    assert model.init_report["conv_layers"] == 1


def test_init_weights_covers_conv_linear_and_norm_layers():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4, 2))
    nn.init.constant_(net[1].weight, 3.0)
    report = init_weights(net, "xavier")
    assert (report["conv_layers"], report["linear_layers"], report["norm_layers"]) == (1, 1, 2)
    assert torch.all(net[1].weight == 1) and torch.all(net[2].bias == 0) and torch.all(net[4].bias == 0)
