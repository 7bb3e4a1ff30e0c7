"""DARTS cells as a facial-landmark network, and transferring CIFAR-10 cell weights into it.

Topology (input S x S, heatmaps S/4 x S/4, S divisible by 16):

    stem   conv3x3/2 (3 -> 3C) BN ReLU, conv3x3/2 (3C -> 3C) BN        -> S/4, 3C channels
    cells  `layers` DARTS cells, reductions at layers//3 and 2*layers//3  -> S/4, S/8, S/16
           (channel plan identical to the CIFAR-10 network: cells.N has the same shapes as
           NetworkCIFAR's cell in the same stage and position, which is what makes transfer work)
    fuse   the last feature map of each of the three stages, bilinearly upsampled to S/4 and
           concatenated (like HRNetV2's head), ReLU-1x1conv-BN to `head_channels`
    head   nbutils.models.heads.HeatmapHead -> K heatmaps at S/4

Model config keys (section `model`, read with these defaults by `build_darts`):
    name: darts
    genotype: "DARTS_V2"        name (DARTS_V1 | DARTS_V2 | DARTS), a Genotype(...) string, a dict/JSON,
                                or a path to a search_arch.json / genotype file
    layers: 8                   number of cells (8 or 20 in the seed table)
    init_channels: 36           C of the first stage (the CIFAR-10 network's 36)
    head_channels: 256          channels after fusing the three stages
    drop_path_prob: 0.0         drop-path probability during training (fraction)
    final_kernel: 1             kernel of the last head conv (1 or 3)
    cifar_checkpoint: null      CIFAR-10 checkpoint whose cells initialise this network
                                (applied by `after_init`, i.e. after build_model's init scheme)
    num_landmarks (68), bn_momentum (head only) come from the shared MODEL_DEFAULTS.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..heads import HeatmapHead, concat_upsampled
from .cifar import cell_plan, find_cifar10, load_cifar_state_dict, train_cifar
from .genotypes import genotype_from_dict, parse_genotype
from .ops import Cell, ReLUConvBN

DARTS_MODEL_DEFAULTS = {
    "genotype": "DARTS_V2",
    "layers": 8,
    "init_channels": 36,
    "head_channels": 256,
    "drop_path_prob": 0.0,
    "final_kernel": 1,
    "cifar_checkpoint": None,
}


def stage_ends(layers: int) -> list[int]:
    """Index of the last cell of each of the three resolution stages (S/4, S/8, S/16)."""
    if layers < 3:
        raise ValueError(f"model.layers must be >= 3 (three resolution stages), got {layers}")
    return [layers // 3 - 1, 2 * layers // 3 - 1, layers - 1]


def stage_of(cell_index: int, layers: int) -> tuple[int, int]:
    """(stage, position within the stage) of a cell; stages start at the reduction cells."""
    r1, r2 = layers // 3, 2 * layers // 3
    if cell_index < r1:
        return 0, cell_index
    if cell_index < r2:
        return 1, cell_index - r1
    return 2, cell_index - r2


def landmark_stem(C_stem: int) -> nn.Sequential:
    """Two stride-2 3x3 convs: S -> S/4 with C_stem channels (no final ReLU: cells start with one)."""
    return nn.Sequential(
        nn.Conv2d(3, C_stem, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(C_stem),
        nn.ReLU(inplace=True),
        nn.Conv2d(C_stem, C_stem, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(C_stem),
    )


class DartsLandmarkNet(nn.Module):
    """Fixed-genotype DARTS cells -> heatmaps. forward(x [N,3,S,S]) -> [N, K, S/4, S/4]."""

    def __init__(self, genotype="DARTS_V2", layers: int = 8, init_channels: int = 36, num_landmarks: int = 68,
                 head_channels: int = 256, drop_path_prob: float = 0.0, final_kernel: int = 1,
                 bn_momentum: float = 0.01):
        super().__init__()
        self.genotype = parse_genotype(genotype)
        self.layers = layers
        self.init_channels = init_channels
        self.drop_path_prob = drop_path_prob
        self.cifar_checkpoint = None
        self._stage_ends = stage_ends(layers)
        stem_channels = 3 * init_channels
        self.stem = landmark_stem(stem_channels)
        multipliers = (len(self.genotype.normal_concat), len(self.genotype.reduce_concat))
        plan = cell_plan(layers, init_channels, stem_channels, multipliers)
        self.cells = nn.ModuleList(Cell(self.genotype, *spec) for spec in plan)
        fused = sum(self.cells[i].multiplier * plan[i][2] for i in self._stage_ends)
        self.fuse = ReLUConvBN(fused, head_channels, 1, 1, 0)
        self.head = HeatmapHead(head_channels, num_landmarks, final_kernel=final_kernel, bn_momentum=bn_momentum)

    def forward(self, x):
        size = x.shape[-1]
        if x.shape[-2] % 16 or size % 16:
            raise ValueError(f"DARTS landmark net needs input sides divisible by 16, got {tuple(x.shape[-2:])}")
        s0 = s1 = self.stem(x)
        stage_features = []
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i in self._stage_ends:
                stage_features.append(s1)
        return self.head(self.fuse(concat_upsampled(stage_features)))

    def after_init(self) -> dict | None:
        """Hook for build_model, run after the init scheme: load the CIFAR-10 cells if configured."""
        if not self.cifar_checkpoint:
            return None
        return apply_cifar_pretrained(self, self.cifar_checkpoint)


def build_darts(model_cfg: dict) -> DartsLandmarkNet:
    """Builder registered as model name "darts" (keys and defaults: DARTS_MODEL_DEFAULTS, module doc)."""
    cfg = {key: model_cfg.get(key, default) for key, default in DARTS_MODEL_DEFAULTS.items()}
    for key in ("layers", "init_channels", "head_channels", "final_kernel"):
        if not isinstance(cfg[key], int) or cfg[key] <= 0:
            raise ValueError(f"model.{key} must be a positive integer, got {cfg[key]!r}")
    if cfg["init_channels"] % 2:
        raise ValueError(f"model.init_channels must be even (FactorizedReduce halves it), got {cfg['init_channels']}")
    if not 0.0 <= float(cfg["drop_path_prob"]) < 1.0:
        raise ValueError(f"model.drop_path_prob must be in [0, 1), got {cfg['drop_path_prob']!r}")
    checkpoint = cfg["cifar_checkpoint"]
    if checkpoint and not Path(str(checkpoint)).expanduser().is_file():
        raise FileNotFoundError(f"model.cifar_checkpoint: needs CIFAR-10 weights: looked for {checkpoint}")
    model = DartsLandmarkNet(
        genotype=cfg["genotype"], layers=cfg["layers"], init_channels=cfg["init_channels"],
        num_landmarks=int(model_cfg.get("num_landmarks", 68)), head_channels=cfg["head_channels"],
        drop_path_prob=float(cfg["drop_path_prob"]), final_kernel=cfg["final_kernel"],
        bn_momentum=float(model_cfg.get("bn_momentum", 0.01)))
    model.cifar_checkpoint = str(Path(str(checkpoint)).expanduser()) if checkpoint else None
    return model


# ---------------------------------------------------------------------------------------------
# CIFAR-10 -> landmark cell transfer
# ---------------------------------------------------------------------------------------------
def _cifar_layout(state: dict) -> tuple[int, int]:
    """(layers, init_channels) of a NetworkCIFAR state_dict, read from its key names and stem shape."""
    cell_ids = {int(k.split(".")[1]) for k in state if k.startswith("cells.") and k.split(".")[1].isdigit()}
    if not cell_ids:
        raise ValueError("checkpoint has no 'cells.N.*' keys: not a DARTS network state_dict")
    stem = state.get("stem.0.weight")
    if stem is None:
        raise ValueError("checkpoint has no 'stem.0.weight': not a DARTS NetworkCIFAR state_dict")
    return max(cell_ids) + 1, int(stem.shape[0]) // 3


def transfer_cifar_cells(landmark_net: DartsLandmarkNet, cifar_state_dict: dict, cifar_genotype=None) -> dict:
    """Copy the cell weights of a CIFAR-10 DARTS network into `landmark_net` (in place).

    Each landmark cell takes the CIFAR cell in the same resolution stage and the same position
    within it (the last one of that stage when the landmark stage is deeper), so an 8-cell
    landmark net can start from the released 20-cell network. A cell is copied only when the
    genotype matches (`cifar_genotype`, e.g. from train_cifar's checkpoint; when None the landmark
    genotype is assumed and shapes are the check), the reduction flags agree, and each tensor's
    shape agrees; stem, classifier and auxiliary head are never copied (different tasks/shapes).

    Returns {"transferred": [landmark keys copied], "skipped": {landmark cell key left as initialised: reason},
    "unused": {checkpoint key not copied anywhere: reason}, "mapping": {landmark cell: cifar cell},
    "cifar_layers": int, "cifar_init_channels": int}.
    """
    layers_c, channels_c = _cifar_layout(cifar_state_dict)
    report = {"transferred": [], "skipped": {}, "unused": {}, "mapping": {}, "cifar_layers": layers_c,
              "cifar_init_channels": channels_c}
    genotype_ok = True
    if cifar_genotype is not None:
        other = parse_genotype(cifar_genotype) if not isinstance(cifar_genotype, dict) \
            else genotype_from_dict(cifar_genotype, "checkpoint genotype")
        genotype_ok = (list(map(tuple, other.normal)) == list(map(tuple, landmark_net.genotype.normal))
                       and list(map(tuple, other.reduce)) == list(map(tuple, landmark_net.genotype.reduce))
                       and list(other.normal_concat) == list(landmark_net.genotype.normal_concat)
                       and list(other.reduce_concat) == list(landmark_net.genotype.reduce_concat))
    stages_c = {}
    for j in range(layers_c):
        stage, _ = stage_of(j, layers_c)
        stages_c.setdefault(stage, []).append(j)
    target = landmark_net.state_dict()
    used_prefixes = set()
    updates = {}
    for i, cell in enumerate(landmark_net.cells):
        stage, pos = stage_of(i, landmark_net.layers)
        candidates = stages_c.get(stage, [])
        prefix_l = f"cells.{i}."
        keys_l = [k for k in target if k.startswith(prefix_l)]
        if not genotype_ok:
            for k in keys_l:
                report["skipped"][k] = "genotype of the CIFAR-10 checkpoint differs from the landmark genotype"
            continue
        if not candidates:
            for k in keys_l:
                report["skipped"][k] = f"CIFAR-10 network has no cell in stage {stage}"
            continue
        j = candidates[min(pos, len(candidates) - 1)]
        reduction_c = j in (layers_c // 3, 2 * layers_c // 3)
        if reduction_c != cell.reduction:
            for k in keys_l:
                report["skipped"][k] = f"reduction flag differs from CIFAR-10 cell {j}"
            continue
        report["mapping"][i] = j
        prefix_c = f"cells.{j}."
        used_prefixes.add(prefix_c)
        for k in keys_l:
            source = prefix_c + k[len(prefix_l):]
            if source not in cifar_state_dict:
                report["skipped"][k] = f"{source} not in CIFAR-10 checkpoint (different genotype?)"
            elif tuple(cifar_state_dict[source].shape) != tuple(target[k].shape):
                report["skipped"][k] = (f"shape mismatch: CIFAR-10 {source} {tuple(cifar_state_dict[source].shape)}"
                                        f" vs landmark {tuple(target[k].shape)}")
            else:
                updates[k] = cifar_state_dict[source]
                report["transferred"].append(k)
    for key in cifar_state_dict:
        if not key.startswith("cells."):
            report["unused"][key] = "classification stem/head/auxiliary: not part of the landmark cells"
        elif not any(key.startswith(p) for p in used_prefixes):
            report["unused"][key] = "CIFAR-10 cell not mapped to any landmark cell"
    with torch.no_grad():
        for key, value in updates.items():
            target[key].copy_(value.to(target[key].dtype))
    return report


def apply_cifar_pretrained(landmark_net: DartsLandmarkNet, checkpoint) -> dict:
    """Load a CIFAR-10 checkpoint file (see load_cifar_state_dict) and transfer its cells; returns the report
    with "path" added."""
    state, meta = load_cifar_state_dict(checkpoint)
    report = transfer_cifar_cells(landmark_net, state, meta.get("genotype"))
    report["path"] = str(checkpoint)
    return report


def resolve_pretrained(checkpoint=None, cifar_root=None, out_path=None, required: bool = False,
                       train_kwargs: dict | None = None) -> dict:
    """Find CIFAR-10 weights for the "pretrained on CIFAR-10" rows, training them if needed.

    Order: an existing `checkpoint` (released cifar10_model.pt or ours) -> an existing `out_path`
    (trained before) -> train on the CIFAR-10 copy at `cifar_root` into `out_path` with
    train_cifar(**train_kwargs) -> nothing. Returns {"status": "checkpoint" | "trained" | "missing",
    "path": str | None, "message": str, ("training": train_cifar result)}; with required=True a
    missing result raises FileNotFoundError with the same message.
    """
    looked = []
    for candidate in (checkpoint, out_path):
        if candidate:
            path = Path(str(candidate)).expanduser()
            looked.append(str(path))
            if path.is_file():
                return {"status": "checkpoint", "path": str(path), "message": f"using CIFAR-10 weights {path}"}
    if cifar_root is not None:
        folder = find_cifar10(cifar_root)
        looked.append(str(Path(cifar_root) / "cifar-10-batches-py"))
        if folder is not None:
            if not out_path:
                raise ValueError("resolve_pretrained: out_path is needed to train on CIFAR-10")
            result = train_cifar(folder, out_path, **(train_kwargs or {}))
            return {"status": "trained", "path": result["path"], "training": result,
                    "message": f"trained on CIFAR-10 at {folder} -> {result['path']} "
                               f"(test accuracy {result['test_accuracy']})"}
    message = "needs CIFAR-10: looked for " + (", ".join(looked) if looked else "nothing (no checkpoint or root given)")
    if required:
        raise FileNotFoundError(message)
    return {"status": "missing", "path": None, "message": message}
