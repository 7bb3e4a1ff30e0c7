"""DenseNAS search spaces as data: `NET_SCALE` specs, presets, knob transforms and the block graph.

A spec is a dict with five lists, the fields of the DenseNAS / HRNet-Facial-Landmark-Detection
config (`experiments/300w/config_search_space.txt`):

    CHS                  channels of each routing block; block 0 is the stem's output
    FM_SIZES             feature-map side of each block, for the reference 256-pixel input. Only
                         ratios matter here: block i runs at stem_resolution * FM_SIZES[i] / FM_SIZES[0],
                         so the same spec works with either stem and any input size.
    STAGE                stage index of each block (0 = the stem block); one optional extra entry
                         is the stage of the tail (the heatmap head), as in the reference where
                         STAGE has one entry more than CHS. Without it the tail is at max(STAGE) + 1.
    NUM_LAYERS           stacked (searched) layers of each block, after its head layer
    ADJOIN_CONNECT_NUMS  indexed by the *stage* of a source block: how many following blocks it may
                         route to

Connection rule (DenseNAS `_create_output_list`, with the fork's reading that lets the HRNet and
flipped specs connect): block i may route to each of the next ADJOIN_CONNECT_NUMS[STAGE[i]]
blocks j whose stage is at most one more than i's and whose feature map is the same size
(stride 1) or half the size (stride 2); other sizes inside the window are skipped, a stage jump
of 2 or more ends the window. The tail (heatmap head) upsamples, so any block of the last stage
(or of the tail's stage - 1) inside the window may route to it.

Knobs from the seed tables (see `apply_knobs`):
    stack_num          int k: every block that has stacked layers gets k; "+k": k more each;
                       None / "original": the spec's NUM_LAYERS.
    block_num          "-k" / -k: drop k blocks, one at a time the last block of the stage with
                       most blocks (ties: the deeper stage); a stage always keeps one block.
    channel_reduction  1 | 2 | 4 | 8: every CHS entry divided (rounded, at least 4)
    channel_expansion  1 | 2 | 4: every CHS entry multiplied
    stages             [1, 2] | [1, 2, 3] | [1, 2, 3, 4] | None: keep the stem block and the blocks of
                       these stages only (the "Stage 1+2" columns); None keeps all
    output_stride      None | 8 | 16: FM_SIZES[0] / FM_SIZES[last block]; a different value rescales
                       the feature maps of every block after the stem block by a power of 2
"""
from __future__ import annotations

import copy
import math

FIELDS = ("CHS", "FM_SIZES", "STAGE", "NUM_LAYERS", "ADJOIN_CONNECT_NUMS")

# Facts from MUST-AI-Lab/HRNet-Facial-Landmark-Detection experiments/300w/config_search_space.txt.
PRESETS = {
    # Original DenseNAS space, feature maps 128 -> 8 (16x down from block 0).
    "densenas": {
        "CHS": [32, 48, 56, 64, 72, 96, 112, 128, 144, 160, 176, 192, 208, 224,
                240, 256, 272, 288, 480, 496, 512],
        "FM_SIZES": [128, 64, 64, 64, 32, 32, 32, 16, 16, 16, 16, 16, 16, 16,
                     8, 8, 8, 8, 8, 8, 8],
        "STAGE": [0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 7],
        "NUM_LAYERS": [0, 0, 0, 0, 5, 5, 5, 15, 15, 15, 15, 5, 5, 5, 5, 5, 5, 5, 1, 1, 1],
        "ADJOIN_CONNECT_NUMS": [10, 10, 10, 10, 10, 10, 10],
    },
    # Modified DenseNAS: starts at 64x64 with 256 channels (the HRNet stem + layer1 shape), 8x down.
    "modified_densenas": {
        "CHS": [256, 12, 18, 24, 30, 36, 42, 64, 72, 80, 128, 144, 160],
        "FM_SIZES": [64, 64, 64, 64, 32, 32, 32, 16, 16, 16, 8, 8, 8],
        "STAGE": [0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5],
        "NUM_LAYERS": [0, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4],
        "ADJOIN_CONNECT_NUMS": [7, 7, 7, 7, 7, 7],
    },
    # HRNet grid: stage s holds s + 1 resolutions (widths 18/36/72/144); stage 4 blocks have no layers.
    "hrnet": {
        "CHS": [256, 18, 36, 18, 36, 72, 18, 36, 72, 144, 18, 36, 72, 144],
        "FM_SIZES": [64, 64, 32, 64, 32, 16, 64, 32, 16, 8, 64, 32, 16, 8],
        "STAGE": [0, 1, 1, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4],
        "NUM_LAYERS": [4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 0, 0, 0, 0],
        "ADJOIN_CONNECT_NUMS": [7, 7, 7, 7, 7],
    },
    # Modified DenseNAS at the densenas stem's resolution (block 0 at 128 for a 256 input).
    "modified_densenas_densenas_stem": {
        "CHS": [256, 12, 18, 24, 30, 36, 42, 64, 72, 80, 128, 144, 160],
        "FM_SIZES": [128, 128, 128, 128, 64, 64, 64, 32, 32, 32, 16, 16, 16],
        "STAGE": [0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5],
        "NUM_LAYERS": [0, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4],
        "ADJOIN_CONNECT_NUMS": [7, 7, 7, 7, 7, 7],
    },
    # Flipped modified DenseNAS: every stage spans all four resolutions (like HRNet's columns).
    "flipped_modified_densenas": {
        "CHS": [256, 12, 36, 64, 128, 18, 42, 72, 144, 24, 48, 80, 160, 30, 54, 88, 176],
        "FM_SIZES": [128, 128, 64, 32, 16, 128, 64, 32, 16, 128, 64, 32, 16, 128, 64, 32, 16],
        "STAGE": [0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5],
        "NUM_LAYERS": [0, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4],
        "ADJOIN_CONNECT_NUMS": [7, 7, 7, 7, 7],
    },
}

# The stem each preset was written for (used when model.stem is not given).
PRESET_STEMS = {
    "densenas": "densenas",
    "modified_densenas": "hrnet",
    "hrnet": "hrnet",
    "modified_densenas_densenas_stem": "densenas",
    "flipped_modified_densenas": "densenas",
}

MIN_CHANNELS = 4


def get_spec(space) -> dict:
    """A validated deep copy of a preset (by name) or of a user spec (dict with the five FIELDS)."""
    if isinstance(space, str):
        if space not in PRESETS:
            raise ValueError(f"model.space: unknown preset {space!r} (known: {', '.join(PRESETS)})")
        spec = copy.deepcopy(PRESETS[space])
    elif isinstance(space, dict):
        spec = {key.upper(): copy.deepcopy(value) for key, value in space.items()}
        spec = {key: spec[key] for key in spec if key in FIELDS} | {
            key: spec[key] for key in spec if key not in FIELDS}
    else:
        raise ValueError(f"model.space: expected a preset name or a NET_SCALE dict, got {type(space).__name__}")
    validate_spec(spec)
    return spec


def _int_list(spec: dict, field: str, minimum: int) -> list:
    values = spec[field]
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{field}: expected a non-empty list, got {values!r}")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"{field}[{i}]: expected an integer >= {minimum}, got {v!r}")
    return list(values)


def validate_spec(spec: dict) -> None:
    """Raise ValueError naming the offending field when `spec` is not a usable search space.

    Checks: all five fields present (no unknown ones), list lengths agree (STAGE may have one
    extra entry for the tail), stages non-decreasing with only block 0 at stage 0,
    ADJOIN_CONNECT_NUMS long enough for every stage, feature-map ratios powers of two, and a
    graph in which every block has an input with stride 1 or 2 and can reach the tail.
    """
    missing = [f for f in FIELDS if f not in spec]
    if missing:
        raise ValueError(f"search-space spec: missing field(s) {', '.join(missing)} (need {', '.join(FIELDS)})")
    unknown = [f for f in spec if f not in FIELDS]
    if unknown:
        raise ValueError(f"search-space spec: unknown field(s) {', '.join(unknown)} (known: {', '.join(FIELDS)})")
    chs = _int_list(spec, "CHS", 1)
    fms = _int_list(spec, "FM_SIZES", 1)
    stages = _int_list(spec, "STAGE", 0)
    layers = _int_list(spec, "NUM_LAYERS", 0)
    adjoin = _int_list(spec, "ADJOIN_CONNECT_NUMS", 1)
    n = len(chs)
    if n < 2:
        raise ValueError(f"CHS: need the stem block and at least one routing block, got {n} entries")
    if len(fms) != n:
        raise ValueError(f"FM_SIZES: has {len(fms)} entries but CHS has {n}")
    if len(layers) != n:
        raise ValueError(f"NUM_LAYERS: has {len(layers)} entries but CHS has {n}")
    if len(stages) not in (n, n + 1):
        raise ValueError(f"STAGE: has {len(stages)} entries, expected {n} (one per block) or {n + 1} (plus the tail)")
    if stages[0] != 0 or any(s == 0 for s in stages[1:]):
        raise ValueError("STAGE: block 0 (the stem block) must be the only block at stage 0")
    for i in range(1, len(stages)):
        if stages[i] < stages[i - 1]:
            raise ValueError(f"STAGE: must be non-decreasing, STAGE[{i}]={stages[i]} < STAGE[{i - 1}]={stages[i - 1]}")
    if len(stages) == n + 1 and stages[n] <= stages[n - 1] - 1:
        raise ValueError(f"STAGE: the tail stage {stages[n]} is before the last block's stage {stages[n - 1]}")
    if len(adjoin) < stages[n - 1] + 1:
        raise ValueError(f"ADJOIN_CONNECT_NUMS: has {len(adjoin)} entries but blocks use stages 0..{stages[n - 1]} "
                         "(one entry per stage)")
    for i, fm in enumerate(fms):
        ratio = fms[0] / fm
        if ratio < 1 or not float(ratio).is_integer() or int(ratio) & (int(ratio) - 1):
            raise ValueError(f"FM_SIZES[{i}]={fm}: FM_SIZES[0]/FM_SIZES[i] must be a power of two >= 1 "
                             f"(block 0 is {fms[0]})")
    graph = block_graph(spec)
    for j in range(1, n):
        if not graph["inputs"][j]:
            raise ValueError(f"FM_SIZES: block {j} ({fms[j]}x{fms[j]}, stage {stages[j]}) has no input: no block "
                             f"within ADJOIN_CONNECT_NUMS of it is in the same or previous stage at stride 1 or 2")
    reaches_tail = [False] * (n + 1)
    reaches_tail[n] = True
    for i in range(n - 1, -1, -1):
        reaches_tail[i] = any(reaches_tail[j] for j in graph["outputs"][i])
    dead = [i for i in range(n) if not reaches_tail[i]]
    if dead:
        raise ValueError(f"FM_SIZES: block(s) {dead} cannot reach the heatmap head (no onward connection at "
                         "stride 1 or 2 within ADJOIN_CONNECT_NUMS)")


def tail_stage(spec: dict) -> int:
    """Stage of the tail (the heatmap head): STAGE's extra entry, else the last block's stage + 1."""
    n = len(spec["CHS"])
    return spec["STAGE"][n] if len(spec["STAGE"]) > n else spec["STAGE"][n - 1] + 1


def block_graph(spec: dict, searched_head: bool = True) -> dict:
    """The routing DAG of a spec. Node n (= len(CHS)) is the tail (heatmap head).

    Returns {"outputs": [[j, ...] per block], "inputs": [[i, ...] per node incl. the tail],
             "strides": {(i, j): 1 | 2} for block-to-block edges (tail edges are absent: the head upsamples)}.
    With searched_head=False only the last block routes to the tail.
    """
    chs, fms, stages = spec["CHS"], spec["FM_SIZES"], spec["STAGE"]
    n = len(chs)
    stage_of = list(stages[:n]) + [tail_stage(spec)]
    outputs = [[] for _ in range(n)]
    inputs = [[] for _ in range(n + 1)]
    strides = {}
    for i in range(n):
        window = spec["ADJOIN_CONNECT_NUMS"][stages[i]]
        for j in range(i + 1, min(i + window, n) + 1):
            if stage_of[j] - stage_of[i] > 1:
                break
            if j == n:
                if searched_head or i == n - 1:
                    outputs[i].append(j)
                    inputs[j].append(i)
                continue
            ratio = fms[i] / fms[j]
            if ratio not in (1.0, 2.0):
                continue
            outputs[i].append(j)
            inputs[j].append(i)
            strides[(i, j)] = int(ratio)
    if not searched_head and n - 1 not in inputs[n]:
        outputs[n - 1].append(n)
        inputs[n].append(n - 1)
    return {"outputs": outputs, "inputs": inputs, "strides": strides}


def _parse_signed(value, field: str, sign: str):
    """'+4' / '-4' / 4 -> int; raises naming the field."""
    if isinstance(value, bool):
        raise ValueError(f"model.{field}: expected a number like {sign}4, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"model.{field}: expected a number like {sign}4, got {value!r}")


def _drop_blocks(spec: dict, count: int) -> dict:
    n = len(spec["CHS"])
    has_tail_stage = len(spec["STAGE"]) > n
    keep = list(range(n))
    for _ in range(count):
        sizes = {}
        for b in keep[1:]:
            sizes.setdefault(spec["STAGE"][b], []).append(b)
        stage, members = max(sizes.items(), key=lambda item: (len(item[1]), item[0]))
        if len(members) < 2:
            raise ValueError(f"model.block_num: cannot drop {count} blocks, every stage is down to one block")
        keep.remove(members[-1])
    out = {f: [spec[f][b] for b in keep] for f in ("CHS", "FM_SIZES", "NUM_LAYERS")}
    out["STAGE"] = [spec["STAGE"][b] for b in keep] + ([spec["STAGE"][n]] if has_tail_stage else [])
    out["ADJOIN_CONNECT_NUMS"] = list(spec["ADJOIN_CONNECT_NUMS"])
    return out


def apply_knobs(spec: dict, stack_num=None, block_num=None, channel_reduction: int = 1,
                channel_expansion: int = 1, stages=None, output_stride=None) -> dict:
    """A new spec with the seed tables' knobs applied (see the module docstring); validated."""
    spec = copy.deepcopy(spec)
    n = len(spec["CHS"])
    if stages is not None:
        if (not isinstance(stages, (list, tuple)) or not stages
                or list(stages) != list(range(1, len(stages) + 1))):
            raise ValueError(f"model.stages: expected consecutive stages starting at 1 like [1, 2, 3], got {stages!r}")
        keep = [b for b in range(n) if spec["STAGE"][b] <= stages[-1]]
        if len(keep) < 2:
            raise ValueError(f"model.stages: {stages!r} keeps no routing block")
        last_stage = max(spec["STAGE"][b] for b in keep)
        spec = {"CHS": [spec["CHS"][b] for b in keep], "FM_SIZES": [spec["FM_SIZES"][b] for b in keep],
                "NUM_LAYERS": [spec["NUM_LAYERS"][b] for b in keep],
                "STAGE": [spec["STAGE"][b] for b in keep] + [last_stage + 1],
                "ADJOIN_CONNECT_NUMS": list(spec["ADJOIN_CONNECT_NUMS"])}
    if block_num not in (None, 0, "-0", "0", "original"):
        drop = -_parse_signed(block_num, "block_num", "-")
        if drop < 0:
            raise ValueError(f"model.block_num: expected a removal like -4, got {block_num!r}")
        spec = _drop_blocks(spec, drop)
    if stack_num not in (None, "original"):
        relative = isinstance(stack_num, str) and stack_num.strip().startswith("+")
        k = _parse_signed(stack_num, "stack_num", "+" if relative else "")
        if k < 0:
            raise ValueError(f"model.stack_num: must be >= 0, got {stack_num!r}")
        spec["NUM_LAYERS"] = [(l + k if relative else k) if l > 0 else 0 for l in spec["NUM_LAYERS"]]
    for name, factor in (("channel_reduction", channel_reduction), ("channel_expansion", channel_expansion)):
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"model.{name}: expected a positive integer (1, 2, 4, 8), got {factor!r}")
    if channel_reduction != 1 or channel_expansion != 1:
        spec["CHS"] = [max(MIN_CHANNELS, int(round(c * channel_expansion / channel_reduction))) for c in spec["CHS"]]
    if output_stride is not None:
        current = spec["FM_SIZES"][0] // spec["FM_SIZES"][-1]
        if isinstance(output_stride, bool) or not isinstance(output_stride, int) or output_stride < 1 \
                or output_stride & (output_stride - 1):
            raise ValueError(f"model.output_stride: expected a power of two like 8 or 16, got {output_stride!r}")
        if output_stride != current:
            fms = spec["FM_SIZES"]
            if output_stride > current:
                shrink = output_stride // current
                if any(fm % shrink for fm in fms[1:]):
                    raise ValueError(f"FM_SIZES: cannot reach output_stride {output_stride} by dividing {fms[1:]} "
                                     f"by {shrink}")
                spec["FM_SIZES"] = [fms[0]] + [fm // shrink for fm in fms[1:]]
            else:
                spec["FM_SIZES"] = [fms[0]] + [fm * (current // output_stride) for fm in fms[1:]]
    validate_spec(spec)
    return spec


def output_stride_of(spec: dict) -> int:
    """FM_SIZES[0] / FM_SIZES[last block]: how much the routing blocks downsample after the stem block."""
    return spec["FM_SIZES"][0] // spec["FM_SIZES"][-1]


def block_downsample(spec: dict) -> list:
    """Per block, its stride relative to block 0 (1, 2, 4, ...)."""
    return [spec["FM_SIZES"][0] // fm for fm in spec["FM_SIZES"]]


def describe(spec: dict) -> str:
    """One line per stage: blocks, channels, relative resolution and stacked layers (for notebooks)."""
    lines = []
    n = len(spec["CHS"])
    for stage in sorted(set(spec["STAGE"][:n])):
        members = [b for b in range(n) if spec["STAGE"][b] == stage]
        cells = ", ".join(f"#{b}:{spec['CHS'][b]}ch@1/{spec['FM_SIZES'][0] // spec['FM_SIZES'][b]}"
                          f"x{spec['NUM_LAYERS'][b]}" for b in members)
        lines.append(f"stage {stage}: {cells}")
    return "\n".join(lines)


def num_paths(spec: dict, searched_head: bool = True) -> int:
    """Number of distinct routing paths from block 0 to the tail (size of the path space)."""
    graph = block_graph(spec, searched_head)
    n = len(spec["CHS"])
    count = [0] * (n + 1)
    count[n] = 1
    for i in range(n - 1, -1, -1):
        count[i] = sum(count[j] for j in graph["outputs"][i])
    return count[0]


def log2_int(value: int) -> int:
    return int(round(math.log2(value)))
