"""DenseNAS on the landmark task: search-space specs, supernet, Viterbi derivation, derived network.

    build_supernet(cfg) -> DenseNASSupernet      cfg = {"model": ..., "search": ..., "train": ...}
    nbutils.engine.search.search(cfg, run_dir, supernet)   the shared bi-level loop
    supernet.derive() -> arch dict (JSON)        Viterbi over β, `model.transition` paths, argmax α
    build_derived(arch) -> DerivedNetwork        also registered as model name "densenas" (model.arch)
    apply_pretrained(network, model_cfg)         model.pretrained / model.pretrained_stem, after init
    plotting.draw_architecture(arch)             routing over the stage x resolution grid

Model knobs (the `model:` section; MODEL_KNOBS holds the defaults, spaces.py explains each):
    space               preset name (spaces.PRESETS) or a NET_SCALE dict
    stem                densenas | hrnet | None (the preset's own stem)
    stack_num           None | k | "+k"        block_num       None | "-k"
    channel_reduction   1 | 2 | 4 | 8          channel_expansion 1 | 2 | 4
    stages              None | [1, 2] | [1, 2, 3] | [1, 2, 3, 4]
    output_stride       None | 8 | 16 (relative to block 0)
    ops                 densenas | darts (adds sep/dil conv 3x3, 5x5)   extra_ops: list of single DARTS ops
    stack_ops, head_ops None | explicit candidate lists (replace the named sets)
    head_layer          mbconv (searched MBConv head layers) | basic_block (fixed ResNet basic block)
    aggregation         sum | concat (how a block combines several inputs)
    heatmap_head        searched (β chooses which last-stage blocks feed the head) | fixed (last block only)
    head_channels       None (widest block feeding the head) | int
    cost_metric         params | flops;  cost_factor 0.15 | 0 (loss + factor·log E[cost])
    transition          1 | 2 (best paths kept by the derivation)
    sample_ops          0 = every candidate in every forward | k >= 2 = k candidates drawn from α per
                        mixed op in training (DenseNAS-style sampling; memory/time / (ops / k))
    init                normal | kaiming | kaiming_fan_out (nbutils.models.init_weights)
    pretrained_stem     None | path to an HRNet checkpoint (conv1/bn1/conv2/bn2 into the hrnet stem)
    pretrained          None | "supernet" (search_supernet.pt next to model.arch) | path to a supernet
                        state_dict: the derived network inherits the searched weights of its ops
    arch                the derived architecture to retrain (dict, arch JSON or search_arch.json path)
    channel_scale       profile knob: multiplies every CHS entry after the table knobs (min 4 channels)
    max_stack           profile knob: caps every block's stacked layers (None = no cap)
    max_stage           profile knob: after the table knobs, drop the blocks of later stages (the head
                        follows this stage; None = keep all). The cpu profile uses 3: the full specs end
                        at 1/32 of the crop, 2x2 features at 64 px
"""
from __future__ import annotations

from pathlib import Path

from . import spaces
from .derive import (DerivedNetwork, build_derived, derive_architecture, derived_cost, inherit_supernet_weights,
                     k_best_paths, load_arch, one_hot_weights, save_arch)
from .ops import op_candidates
from .supernet import DenseNASSupernet, supernet_summary

MODEL_KNOBS = {
    "space": "densenas",
    "stem": None,
    "stack_num": None,
    "block_num": None,
    "channel_reduction": 1,
    "channel_expansion": 1,
    "stages": None,
    "output_stride": None,
    "ops": "densenas",
    "extra_ops": [],
    "stack_ops": None,
    "head_ops": None,
    "head_layer": "mbconv",
    "aggregation": "sum",
    "heatmap_head": "searched",
    "head_channels": None,
    "cost_metric": "params",
    "cost_factor": 0.15,
    "transition": 1,
    "sample_ops": 0,
    "pretrained_stem": None,
    "pretrained": None,
    "arch": None,
    # profile knobs (not seed columns): shrink every row alike so a CPU run stays small
    "channel_scale": 1.0,
    "max_stack": None,
    "max_stage": None,
}


def model_knobs(model_cfg: dict | None) -> dict:
    """MODEL_KNOBS overlaid with the DenseNAS keys of a model config (other keys are ignored)."""
    model_cfg = model_cfg or {}
    return {key: model_cfg.get(key, default) for key, default in MODEL_KNOBS.items()}


def searched_spec(model_cfg: dict | None) -> dict:
    """The NET_SCALE spec a model config searches: the preset (or dict) with the table knobs applied."""
    knobs = model_knobs(model_cfg)
    spec = spaces.apply_knobs(spaces.get_spec(knobs["space"]), stack_num=knobs["stack_num"],
                              block_num=knobs["block_num"], channel_reduction=knobs["channel_reduction"],
                              channel_expansion=knobs["channel_expansion"], stages=knobs["stages"],
                              output_stride=knobs["output_stride"])
    scale, cap = knobs["channel_scale"], knobs["max_stack"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
        raise ValueError(f"model.channel_scale: expected a positive number, got {scale!r}")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
        raise ValueError(f"model.max_stack: expected None or an integer >= 0, got {cap!r}")
    if scale != 1:
        spec["CHS"] = [max(spaces.MIN_CHANNELS, int(round(c * scale))) for c in spec["CHS"]]
    if cap is not None:
        spec["NUM_LAYERS"] = [min(layers, cap) for layers in spec["NUM_LAYERS"]]
    last = knobs["max_stage"]
    if last is not None:
        if isinstance(last, bool) or not isinstance(last, int) or last < 1:
            raise ValueError(f"model.max_stage: expected None or an integer >= 1, got {last!r}")
        if max(spec["STAGE"][:len(spec["CHS"])]) > last:
            spec = spaces.apply_knobs(spec, stages=list(range(1, last + 1)))
    spaces.validate_spec(spec)
    return spec


def build_supernet(cfg: dict) -> DenseNASSupernet:
    """The initialised supernet for cfg["model"] (knobs above), cfg["search"] (noise, noise_scale,
    darts_minus) and cfg["train"]["input_size"] (the image side the costs are measured at)."""
    from ..init import init_weights

    from ...config import MODEL_DEFAULTS, TRAIN_DEFAULTS
    model_cfg = {**MODEL_DEFAULTS, **(cfg.get("model") or {})}
    search_cfg = cfg.get("search") or {}
    train_cfg = {**TRAIN_DEFAULTS, **(cfg.get("train") or {})}
    knobs = model_knobs(model_cfg)
    spec = searched_spec(model_cfg)
    stem = knobs["stem"] or (spaces.PRESET_STEMS.get(knobs["space"], "densenas")
                             if isinstance(knobs["space"], str) else "densenas")
    stack_ops, head_ops = op_candidates(knobs["ops"], knobs["head_layer"], knobs["extra_ops"],
                                        knobs["stack_ops"], knobs["head_ops"])
    supernet = DenseNASSupernet(
        spec, input_size=int(train_cfg["input_size"]), stem=stem, stack_ops=stack_ops, head_ops=head_ops,
        aggregation=knobs["aggregation"], heatmap_head=knobs["heatmap_head"], head_channels=knobs["head_channels"],
        num_landmarks=int(model_cfg.get("num_landmarks", 68)), bn_momentum=float(model_cfg.get("bn_momentum", 0.1)),
        cost_metric=knobs["cost_metric"], cost_factor=float(knobs["cost_factor"]), transition=int(knobs["transition"]),
        noise=search_cfg.get("noise", "none"), noise_scale=float(search_cfg.get("noise_scale", 0.1)),
        darts_minus=bool(search_cfg.get("darts_minus", False)), sample_ops=knobs["sample_ops"],
        knobs={k: v for k, v in knobs.items() if k not in ("arch", "pretrained")})
    supernet.init_report = init_weights(supernet, model_cfg.get("init", "normal"))
    if knobs["pretrained_stem"]:
        supernet.pretrained_report = _load_stem(supernet, knobs["pretrained_stem"])
    return supernet


def _load_stem(model, path) -> dict:
    from ..init import load_pretrained
    if model.stem.__class__.__name__ != "HRNetStem":
        raise ValueError("model.pretrained_stem: needs model.stem 'hrnet' (an HRNet checkpoint's conv1/conv2)")
    if not Path(path).is_file():
        raise FileNotFoundError(f"model.pretrained_stem: no checkpoint at {path}")
    return load_pretrained(model.stem, path)


def build_densenas_model(model_cfg: dict) -> DerivedNetwork:
    """Registry builder for model name "densenas": the derived network of model_cfg["arch"]."""
    if model_cfg.get("arch") is None:
        raise ValueError("model.arch: the 'densenas' model needs a derived architecture (dict or path to its JSON, "
                         "e.g. <search run>/search_arch.json)")
    return build_derived(model_cfg["arch"])


def apply_pretrained(network: DerivedNetwork, model_cfg: dict) -> dict:
    """Load model.pretrained_stem and model.pretrained into a built (and initialised) derived network.

    Call after nbutils.models.build_model (which initialises weights and would overwrite them).
    pretrained "supernet" means search_supernet.pt beside the model.arch file. Returns the reports.
    """
    knobs = model_knobs(model_cfg)
    reports = {}
    if knobs["pretrained_stem"]:
        reports["stem"] = _load_stem(network, knobs["pretrained_stem"])
    source = knobs["pretrained"]
    if source:
        if source == "supernet":
            if not isinstance(knobs["arch"], (str, Path)):
                raise ValueError("model.pretrained: 'supernet' needs model.arch to be a path (search_supernet.pt "
                                 "is looked up beside it)")
            source = Path(knobs["arch"]).parent / "search_supernet.pt"
        reports["supernet"] = inherit_supernet_weights(network, source)
    return reports


from .. import register_model  # noqa: E402  (nbutils.models defines the registry before importing this package)

register_model("densenas")(build_densenas_model)

__all__ = ["spaces", "MODEL_KNOBS", "model_knobs", "searched_spec", "build_supernet", "DenseNASSupernet",
           "supernet_summary", "derive_architecture", "k_best_paths", "one_hot_weights", "build_derived",
           "DerivedNetwork", "load_arch", "save_arch", "inherit_supernet_weights", "derived_cost",
           "apply_pretrained", "build_densenas_model", "op_candidates"]
