"""Derivation (Viterbi over β, argmax over α) and the derived, retrainable network.

Routing. A path is block 0 -> ... -> tail through the block graph; its score is the sum of
log p(i -> j) = log softmax(β_i)[j] along its edges, i.e. the log-probability of the path under
DenseNAS' Markov routing. `k_best_paths` is Viterbi on the DAG keeping the k best partial paths per
node (k = 1: the Viterbi path; k = 2: the two most probable paths, ties broken by the smaller
block sequence).

"transition" (the seed tables' column), as read here: the number of best routing paths kept.
transition 1 is DenseNAS' single-path network. transition 2 keeps the two most probable paths and
merges them: blocks on both paths are shared, a block reached by both paths from different
predecessors aggregates its two head branches (sum, or concat + 1x1 conv), and when the paths end in
different blocks the heatmap head fuses both, HRNetV2-style (project, upsample, sum), giving a
multi-branch network.

Ops. Every kept head branch takes the argmax of its α row; every stacked layer of a kept block takes
the argmax of its α row, and a layer whose argmax is `skip` is dropped (DenseNAS' derivation), so a
block may end up with fewer layers than NUM_LAYERS.

Architecture JSON (`FORMAT`): {"format", "stem", "num_landmarks", "head_channels", "aggregation",
"bn_momentum", "stack_ops", "head_ops", "transition", "spec" (the searched NET_SCALE, for drawing),
"paths": [[0, ..., tail], ...], "path_log_probs", "blocks": [{"id", "channels", "downsample" (vs block 0),
"stage", "inputs": [{"from", "stride", "op"}], "layers": [{"slot", "op"}]}], "tail": {"id", "inputs"}}.
`slot` is the stacked layer's index in the supernet, so the supernet's weights can be inherited.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...config import read_json, write_json_atomic
from . import spaces
from .ops import ALL_OPS, STEMS, make_op, make_stem
from .supernet import AGGREGATIONS

FORMAT = "nbutils.densenas.derived/1"


# ------------------------------------------------------------------------------- routing
def k_best_paths(outputs, log_probs: dict, k: int = 1) -> list:
    """The k highest-scoring paths from node 0 to the last node of a DAG whose edges go forward.

    outputs: per node (0 .. n-1) the list of successor nodes (node n = the sink, e.g. the tail).
    log_probs: {(i, j): edge score}. Returns [(score, [0, ..., n]), ...], best first (fewer than k
    when the DAG has fewer paths). Scores are sums of edge scores.
    """
    n = len(outputs)
    incoming = [[] for _ in range(n + 1)]
    for i, targets in enumerate(outputs):
        for j in targets:
            incoming[j].append(i)
    best = [[] for _ in range(n + 1)]
    best[0] = [(0.0, (0,))]
    for j in range(1, n + 1):
        candidates = [(score + log_probs[(i, j)], path + (j,)) for i in incoming[j] for score, path in best[i]]
        candidates.sort(key=lambda item: (-item[0], item[1]))
        best[j] = candidates[:k]
    return [(score, list(path)) for score, path in best[n]]


def derive_architecture(supernet, transition: int = 1) -> dict:
    """Architecture JSON of `supernet` (see module doc) keeping `transition` best paths."""
    n = supernet.num_blocks
    spec = supernet.spec
    found = k_best_paths(supernet.graph["outputs"], supernet.path_log_probs(), transition)
    predecessors = {}
    for _, path in found:
        for a, b in zip(path[:-1], path[1:]):
            predecessors.setdefault(b, [])
            if a not in predecessors[b]:
                predecessors[b].append(a)
    kept = sorted({b for _, path in found for b in path if b < n})
    alphas = {name: p.detach().cpu() for name, p in supernet.arch.items()}

    def argmax_op(name, row, candidates):
        return candidates[0] if name not in alphas else candidates[int(alphas[name][row].argmax())]

    blocks = []
    for b in kept:
        inputs = []
        for i in sorted(predecessors.get(b, [])):
            row = supernet.graph["inputs"][b].index(i)
            inputs.append({"from": i, "stride": supernet.graph["strides"][(i, b)],
                           "op": argmax_op(f"alpha_head_{b}", row, supernet.head_ops)})
        layers = []
        for slot in range(spec["NUM_LAYERS"][b]):
            op = argmax_op(f"alpha_stack_{b}", slot, supernet.stack_ops)
            if op != "skip":
                layers.append({"slot": slot, "op": op})
        blocks.append({"id": b, "channels": spec["CHS"][b], "downsample": spaces.block_downsample(spec)[b],
                       "stage": spec["STAGE"][b], "inputs": inputs, "layers": layers})
    return {"format": FORMAT, "stem": supernet.stem_name, "num_landmarks": supernet.num_landmarks,
            "head_channels": supernet.head_channels, "aggregation": supernet.aggregation,
            "bn_momentum": supernet.bn_momentum, "stack_ops": list(supernet.stack_ops),
            "head_ops": list(supernet.head_ops), "transition": int(transition), "spec": copy.deepcopy(spec),
            "knobs": copy.deepcopy(supernet.knobs),
            "paths": [path for _, path in found], "path_log_probs": [float(score) for score, _ in found],
            "blocks": blocks, "tail": {"id": n, "inputs": sorted(predecessors.get(n, []))}}


def one_hot_weights(supernet, arch: dict) -> dict:
    """Arch weights that put probability 1 on `arch`'s single path and ops (for supernet.expected_cost).

    Only for transition-1 architectures; blocks off the path keep their current softmax (never reached).
    """
    if len(arch["paths"]) != 1:
        raise ValueError("one_hot_weights: the architecture keeps several paths; expected cost is per single path")
    weights = {name: w.detach().clone() for name, w in supernet.arch_weights().items()}
    path = arch["paths"][0]
    for a, b in zip(path[:-1], path[1:]):
        name = f"beta_{a}"
        if name in weights:
            weights[name] = F.one_hot(torch.tensor(supernet.graph["outputs"][a].index(b)),
                                      len(supernet.graph["outputs"][a])).to(weights[name])
    for block in arch["blocks"]:
        b = block["id"]
        if f"alpha_head_{b}" in weights:
            for entry in block["inputs"]:
                row = supernet.graph["inputs"][b].index(entry["from"])
                weights[f"alpha_head_{b}"][row] = F.one_hot(torch.tensor(supernet.head_ops.index(entry["op"])),
                                                            len(supernet.head_ops)).to(weights[f"alpha_head_{b}"])
        if f"alpha_stack_{b}" in weights:
            chosen = {layer["slot"]: layer["op"] for layer in block["layers"]}
            for slot in range(supernet.spec["NUM_LAYERS"][b]):
                op = chosen.get(slot, "skip")
                weights[f"alpha_stack_{b}"][slot] = F.one_hot(torch.tensor(supernet.stack_ops.index(op)),
                                                              len(supernet.stack_ops)).to(weights[f"alpha_stack_{b}"])
    return weights


# ------------------------------------------------------------------------------- validation / IO
def load_arch(arch) -> dict:
    """An architecture dict from a dict, a JSON file, or a search result file ({"arch": {...}, ...}).

    Validates it (ValueError naming the key); returns a deep copy normalised through JSON.
    """
    where = "model.arch"
    if isinstance(arch, (str, Path)):
        path = Path(arch)
        where = str(path)
        arch = read_json(path, f"model.arch: no architecture file at {path}")
    if not isinstance(arch, dict):
        raise ValueError(f"{where}: expected an architecture dict or a path to one, got {type(arch).__name__}")
    if "format" not in arch and isinstance(arch.get("arch"), dict):
        arch = arch["arch"]
    arch = json.loads(json.dumps(arch))
    validate_arch(arch, where)
    return arch


def validate_arch(arch: dict, where: str = "arch") -> None:
    required = ("format", "stem", "num_landmarks", "head_channels", "aggregation", "stack_ops", "head_ops",
                "blocks", "tail")
    for key in required:
        if key not in arch:
            raise ValueError(f"{where}: missing key '{key}'")
    if arch["format"] != FORMAT:
        raise ValueError(f"{where}: key 'format' is {arch['format']!r}, expected {FORMAT!r}")
    if arch["stem"] not in STEMS:
        raise ValueError(f"{where}: key 'stem' must be one of {STEMS}, got {arch['stem']!r}")
    if arch["aggregation"] not in AGGREGATIONS:
        raise ValueError(f"{where}: key 'aggregation' must be one of {AGGREGATIONS}, got {arch['aggregation']!r}")
    blocks = arch["blocks"]
    if not blocks or blocks[0].get("id") != 0 or blocks[0].get("inputs"):
        raise ValueError(f"{where}: key 'blocks' must start with block 0 (the stem block, no inputs)")
    seen = set()
    for k, block in enumerate(blocks):
        for key in ("id", "channels", "downsample", "inputs", "layers"):
            if key not in block:
                raise ValueError(f"{where}: blocks[{k}] misses key '{key}'")
        if seen and block["id"] <= max(seen):
            raise ValueError(f"{where}: blocks[{k}].id {block['id']} is not increasing")
        if k > 0 and not block["inputs"]:
            raise ValueError(f"{where}: blocks[{k}] (id {block['id']}) has no inputs")
        for entry in block["inputs"]:
            if entry.get("from") not in seen:
                raise ValueError(f"{where}: blocks[{k}].inputs 'from' {entry.get('from')!r} is not an earlier block")
            if entry.get("stride") not in (1, 2):
                raise ValueError(f"{where}: blocks[{k}].inputs 'stride' must be 1 or 2, got {entry.get('stride')!r}")
            if entry.get("op") not in ALL_OPS:
                raise ValueError(f"{where}: blocks[{k}].inputs 'op' {entry.get('op')!r} is not a known op")
        for layer in block["layers"]:
            if layer.get("op") not in ALL_OPS or layer.get("op") == "skip":
                raise ValueError(f"{where}: blocks[{k}].layers 'op' {layer.get('op')!r} is not a layer op")
        seen.add(block["id"])
    tail_inputs = arch["tail"].get("inputs") if isinstance(arch["tail"], dict) else None
    if not tail_inputs or any(i not in seen for i in tail_inputs):
        raise ValueError(f"{where}: key 'tail.inputs' must list kept blocks, got {tail_inputs!r}")


def save_arch(arch: dict, path) -> Path:
    """Write the architecture JSON atomically; returns the path."""
    return write_json_atomic(path, arch, indent=1)


# ------------------------------------------------------------------------------- derived network
class DerivedBlock(nn.Module):
    def __init__(self, block: dict, channels_of: dict, bn_momentum: float, aggregation: str):
        super().__init__()
        c = block["channels"]
        self.inputs = [entry["from"] for entry in block["inputs"]]
        self.heads = nn.ModuleDict({
            str(e["from"]): make_op(e["op"], channels_of[e["from"]], c, e["stride"], bn_momentum)
            for e in block["inputs"]})
        self.fuse = None
        if aggregation == "concat" and len(self.inputs) > 1:
            self.fuse = nn.Sequential(nn.Conv2d(c * len(self.inputs), c, 1, bias=False),
                                      nn.BatchNorm2d(c, momentum=bn_momentum))
        self.layers = nn.Sequential(*[make_op(l["op"], c, c, 1, bn_momentum) for l in block["layers"]])


class DerivedNetwork(nn.Module):
    """The network an architecture JSON describes: images [N, 3, S, S] -> heatmaps [N, K, S/4, S/4].

    Module names mirror the supernet's (stem, blocks.<id>.heads.<from>, blocks.<id>.layers, tail_proj.<id>,
    tail_bn, final), so `inherit_supernet_weights` can copy the kept ops' weights.
    """

    def __init__(self, arch: dict):
        super().__init__()
        arch = load_arch(arch)
        self._arch = arch
        momentum = float(arch.get("bn_momentum", 0.1))
        channels_of = {b["id"]: b["channels"] for b in arch["blocks"]}
        self.stem = make_stem(arch["stem"], arch["blocks"][0]["channels"], momentum)
        self.order = [b["id"] for b in arch["blocks"]]
        self.blocks = nn.ModuleDict({str(b["id"]): DerivedBlock(b, channels_of, momentum, arch["aggregation"])
                                     for b in arch["blocks"]})
        self.tail_inputs = list(arch["tail"]["inputs"])
        head_c = int(arch["head_channels"])
        self.tail_proj = nn.ModuleDict({str(i): nn.Conv2d(channels_of[i], head_c, 1, bias=False)
                                        for i in self.tail_inputs})
        self.tail_bn = nn.BatchNorm2d(head_c, momentum=momentum)
        self.final = nn.Conv2d(head_c, int(arch["num_landmarks"]), 1)

    @property
    def arch(self) -> dict:
        """A copy of the architecture JSON this network was built from."""
        return copy.deepcopy(self._arch)

    def forward(self, images):
        feats = {}
        for b in self.order:
            block = self.blocks[str(b)]
            if b == 0:
                x = self.stem(images)
            else:
                parts = [block.heads[str(i)](feats[i]) for i in block.inputs]
                x = block.fuse(torch.cat(parts, 1)) if block.fuse is not None else sum(parts)
            feats[b] = block.layers(x)
        size = (images.shape[-2] // 4, images.shape[-1] // 4)
        fused = 0
        for i in self.tail_inputs:
            branch = self.tail_proj[str(i)](feats[i])
            if branch.shape[-2:] != size:
                branch = F.interpolate(branch, size=size, mode="bilinear", align_corners=False)
            fused = fused + branch
        return self.final(F.relu(self.tail_bn(fused)))


def build_derived(arch) -> DerivedNetwork:
    """Build the retrainable network from an architecture JSON (dict, arch file, or search_arch.json)."""
    return DerivedNetwork(arch)


def inherit_supernet_weights(network: DerivedNetwork, supernet_state) -> dict:
    """Copy the supernet's weights of every kept op into `network` (the "pretrained" retrain option).

    supernet_state: a DenseNASSupernet, its state_dict, or a path to search_supernet.pt.
    Returns nbutils.models.load_pretrained's report (loaded / skipped / missing keys of `network`).
    Concat fuse convs have other shapes in the supernet and are reported as skipped.
    """
    from ..init import load_pretrained

    if isinstance(supernet_state, nn.Module):
        supernet_state = supernet_state.state_dict()
    elif isinstance(supernet_state, (str, Path)):
        path = Path(supernet_state)
        if not path.is_file():
            raise FileNotFoundError(f"model.pretrained: no supernet checkpoint at {path}")
        supernet_state = torch.load(path, map_location="cpu", weights_only=True)
    arch = network.arch
    head_index = {op: k for k, op in enumerate(arch["head_ops"])}
    stack_index = {op: k for k, op in enumerate(arch["stack_ops"])}
    renames = {}
    for block in arch["blocks"]:
        b = block["id"]
        for entry in block["inputs"]:
            renames[f"blocks.{b}.heads.{entry['from']}."] = \
                f"blocks.{b}.heads.{entry['from']}.ops.{head_index[entry['op']]}."
        for m, layer in enumerate(block["layers"]):
            renames[f"blocks.{b}.layers.{m}."] = f"blocks.{b}.layers.{layer['slot']}.ops.{stack_index[layer['op']]}."
        renames[f"blocks.{b}.fuse."] = f"blocks.{b}.fuse."
    mapped = {}
    for key in network.state_dict():
        source = key
        for prefix, replacement in renames.items():
            if key.startswith(prefix):
                source = replacement + key[len(prefix):]
                break
        if source in supernet_state:
            mapped[key] = supernet_state[source]
    return load_pretrained(network, mapped)


def derived_cost(network: nn.Module, input_size: int) -> dict:
    """{"params_m", "gflops"} of a derived network via nbutils.models.model_cost (conv MACs / 1e9)."""
    from ..cost import model_cost
    return model_cost(network, input_size)
