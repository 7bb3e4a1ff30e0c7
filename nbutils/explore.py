"""Explore a trained run's errors face by face (the logic behind notebooks/explore.ipynb).

    exploration = explore("outputs/attention/se-r16-s111-cpu", "challenge")
    exploration.nmes            # (N,) NME per face, fraction of inter-ocular distance
    exploration.point_errors    # (N, 68) error per landmark, fraction of inter-ocular distance
    exploration.pose            # (N,) pose bucket per face: frontal / turned / profile
    worst_gallery(exploration)  # figures: see the functions below

Predictions come from `engine.predict` on the run's evaluation crops (the run's data section and
geometry), so the NMEs are those of the run's own evaluation; heatmaps of a single face come from
`predict.Predictor.predict_crop` on the same crop (identical points).

Pose buckets use the annotation's yaw proxy (`data.face_statistics`: nose-tip offset from the
jaw-end midpoint as a fraction of the jaw span): |yaw| < 0.1 frontal, < 0.3 turned, else profile.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import yaml

from nbutils import config, metrics, plots
from nbutils.data.transforms import transform_points

POSE_BUCKETS = (("frontal", 0.0, 0.1), ("turned", 0.1, 0.3), ("profile", 0.3, np.inf))  # |yaw proxy| ranges
MAX_ERROR = 0.15   # colour-scale top for per-point errors (fraction of inter-ocular distance)


@dataclass
class Exploration:
    """One run's predictions on one subset, with per-face and per-point errors.

    label: short name for figures. predictions, ground_truth: (N, 68, 2) original-image pixels.
    nmes: (N,) and point_errors: (N, 68), fractions of the inter-ocular distance.
    yaw: (N,) yaw proxy of the annotation; pose: (N,) bucket names (POSE_BUCKETS).
    dataset: the Face300W of the evaluation crops; predictor: the run's predict.Predictor.
    """
    run_dir: Path
    label: str
    subset: str
    dataset: object
    predictor: object
    flip_test: bool
    predictions: np.ndarray
    ground_truth: np.ndarray
    nmes: np.ndarray
    point_errors: np.ndarray
    yaw: np.ndarray
    pose: np.ndarray
    data_cfg: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.nmes)

    def order(self, pose: str = "all") -> np.ndarray:
        """Face indices of a pose bucket ("all" = every face), largest NME first."""
        if pose != "all" and pose not in [name for name, _, _ in POSE_BUCKETS]:
            raise ValueError(f"pose bucket {pose!r}: expected 'all' or one of {[n for n, _, _ in POSE_BUCKETS]}")
        chosen = np.arange(len(self)) if pose == "all" else np.flatnonzero(self.pose == pose)
        return chosen[np.argsort(-self.nmes[chosen], kind="stable")]

    def view(self, index: int) -> dict:
        """Face `index` as the network saw it: crop (S, S, 3) RGB, ground truth / prediction in crop pixels."""
        sample = self.dataset[int(index)]
        crop, truth = plots.sample_view(sample)
        to_crop = np.asarray(sample["affine"], dtype=np.float64) * (crop.shape[0] / sample["heatmaps"].shape[-1])
        return {"crop": crop, "truth": truth, "predicted": transform_points(self.predictions[index], to_crop),
                "errors": self.point_errors[index], "nme": float(self.nmes[index])}

    def heatmaps(self, index: int) -> np.ndarray:
        """(68, H, H) network heatmaps of face `index` (after flip averaging when flip_test)."""
        record = self.dataset.records[int(index)]
        face = self.predictor.predict_crop(self.dataset.load(int(index)), record.center, record.scale, self.flip_test)
        return face.heatmaps

    def pose_table(self):
        """pandas DataFrame: faces, mean NME (%) and failure rate at 0.08 (%) per pose bucket and overall."""
        import pandas as pd

        rows = {}
        for name in [n for n, _, _ in POSE_BUCKETS] + ["all"]:
            chosen = self.order(name)
            if len(chosen):
                rows[name] = {"faces": len(chosen), "NME %": self.nmes[chosen].mean() * 100,
                              "FR@0.08 %": metrics.failure_rate(self.nmes[chosen], 0.08) * 100}
        return pd.DataFrame.from_dict(rows, orient="index").astype({"faces": int})


def pose_bucket(yaw_proxy) -> np.ndarray:
    """Bucket names (POSE_BUCKETS) of yaw proxies (see data.face_statistics)."""
    magnitude = np.abs(np.asarray(yaw_proxy, dtype=np.float64))
    names = np.empty(magnitude.shape, dtype=object)
    for name, low, high in POSE_BUCKETS:
        names[(magnitude >= low) & (magnitude < high)] = name
    return names


def explore(run_dir, subset: str = "challenge", max_faces: int | None = None, flip_test: bool | None = None,
            data: dict | None = None, label: str | None = None) -> Exploration:
    """Evaluate a run folder on `subset` and keep everything the explorer figures need.

    max_faces: the first max_faces faces of the subset (None = all). flip_test: None = the run's
    setting. data: a data section replacing the run's (to show two runs on the same faces).
    """
    from torch.utils.data import DataLoader

    from nbutils import engine
    from nbutils.data import face_statistics
    from nbutils.predict import Predictor

    predictor = Predictor.from_run(run_dir, flip_test=flip_test)
    cfg = copy.deepcopy(predictor.parameters)
    if data is not None:
        cfg["data"] = copy.deepcopy(data)
    cfg["data"]["max_eval"] = max_faces
    dataset = engine.make_dataset(cfg, subset, train=False)
    loader = DataLoader(dataset, batch_size=int(cfg["train"]["batch_size"]), shuffle=False)
    result = engine.predict(predictor.model, loader, predictor.precision, predictor.flip_test)
    order = np.argsort(result["indices"])
    predictions, truth = result["predictions"][order], result["ground_truth"][order]
    interocular = np.linalg.norm(truth[:, 36] - truth[:, 45], axis=-1)
    yaw = face_statistics(dataset.root, [subset])["yaw_proxy"].to_numpy()[: len(dataset)]
    return Exploration(
        run_dir=Path(run_dir), label=label or _run_label(run_dir) + (" +flip" if predictor.flip_test else ""),
        subset=subset, dataset=dataset, predictor=predictor, flip_test=predictor.flip_test,
        predictions=predictions, ground_truth=truth, nmes=metrics.nme_per_image(predictions, truth),
        point_errors=np.linalg.norm(predictions - truth, axis=-1) / interocular[:, None],
        yaw=yaw, pose=pose_bucket(yaw), data_cfg=cfg["data"])


def _run_label(run_dir) -> str:
    return Path(run_dir).resolve().name


# ----------------------------------------------------------------------------- choosing a run

def finished_runs(outputs=None) -> list[Path]:
    """Run folders under the outputs root with a valid metrics.json and a checkpoint, newest first."""
    from nbutils import runner
    from nbutils.predict import CHECKPOINT_NAMES

    root = Path(outputs) if outputs is not None else config.outputs_root()
    found = []
    for metrics_file in root.glob("*/*/metrics.json"):
        run_dir = metrics_file.parent
        if any((run_dir / name).is_file() for name in CHECKPOINT_NAMES) and runner.read_metrics(run_dir):
            found.append((metrics_file.stat().st_mtime, run_dir))
    return [run_dir for _, run_dir in sorted(found, key=lambda item: -item[0])]


def train_smoke_run(run_dir) -> Path:
    """Train the smoke-profile baseline (params/profiles/smoke.yaml, seconds to minutes on a CPU) into
    `run_dir`, with a runner-style params.yaml; reused when its best.pt is already there."""
    from nbutils import engine

    run_dir = Path(run_dir)
    if not (run_dir / "best.pt").is_file():
        profile = yaml.safe_load((config.PARAMS_DIR / "profiles" / "smoke.yaml").read_text())
        cfg = engine.with_defaults({"run_dir": str(run_dir), "data": profile.get("data", {}),
                                    "train": profile.get("train", {})})
        run_dir.mkdir(parents=True, exist_ok=True)
        engine.fit(cfg, run_dir, progress=False)
        (run_dir / "params.yaml").write_text(yaml.safe_dump(
            {"run": {"family": "explore", "row": "smoke-baseline", "profile": "smoke"}, "parameters": cfg},
            sort_keys=False))
    return run_dir


def choose_run(run_dir=None, outputs=None) -> Path:
    """`run_dir` when given; else the newest finished run under the outputs root; else a smoke baseline
    trained into <outputs>/explore/smoke-baseline (so the explorer always has something to show)."""
    if run_dir is not None:
        return Path(run_dir)
    runs = finished_runs(outputs)
    if runs:
        return runs[0]
    root = Path(outputs) if outputs is not None else config.outputs_root()
    return train_smoke_run(root / "explore" / "smoke-baseline")


# ----------------------------------------------------------------------------- figures

def face_figure(exploration: Exploration, index: int, landmark: int = 36, max_error: float = MAX_ERROR):
    """One face: prediction vs ground truth coloured by per-point error, and landmark `landmark`'s heatmap."""
    view = exploration.view(index)
    heatmap = exploration.heatmaps(index)[landmark]
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.6), gridspec_kw={"width_ratios": [1.1, 1, 1]})
    record = exploration.dataset.records[int(index)]
    plots.draw_point_errors(axes[0], view["crop"], view["truth"], view["predicted"], view["errors"], max_error,
                            title=f"#{index} {record.image_path.name}: NME {view['nme'] * 100:.1f}% "
                                  f"({exploration.pose[index]}, yaw {exploration.yaw[index]:+.2f})", colorbar=True)
    plots.draw_landmark_heatmap(axes[1], axes[2], view["crop"], heatmap, view["truth"][landmark],
                                view["predicted"][landmark], landmark, view["errors"][landmark])
    fig.tight_layout()
    return fig


def worst_gallery(exploration: Exploration, n: int = 8, pose: str = "all", columns: int = 4,
                  max_error: float = MAX_ERROR):
    """The `n` faces with the largest NME (optionally of one pose bucket), points coloured by error."""
    chosen = exploration.order(pose)[:n]
    rows = max(1, int(np.ceil(len(chosen) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(2.7 * columns, 2.8 * rows), squeeze=False)
    for ax, index in zip(axes.flat, chosen):
        view = exploration.view(index)
        plots.draw_point_errors(ax, view["crop"], view["truth"], view["predicted"], view["errors"], max_error,
                                title=f"#{index} NME {view['nme'] * 100:.1f}% {exploration.pose[index]}")
    for ax in axes.flat[len(chosen):]:
        ax.set_axis_off()
    fig.suptitle(f"{exploration.label}: worst {len(chosen)} of {exploration.subset}"
                 + ("" if pose == "all" else f" ({pose})") + f"; colour = point error / iod (0..{max_error})",
                 fontsize=9)
    fig.tight_layout()
    return fig


def mean_template(points: np.ndarray) -> np.ndarray:
    """(68, 2) mean shape after putting every face's outer eye corners' midpoint at 0 and their distance at 1."""
    points = np.asarray(points, dtype=np.float64)
    middle = (points[:, 36] + points[:, 45]) / 2
    scale = np.linalg.norm(points[:, 45] - points[:, 36], axis=-1)
    return ((points - middle[:, None]) / scale[:, None, None]).mean(axis=0)


def error_template(exploration: Exploration, annotate: int = 6):
    """Per-landmark mean error (fraction of iod) on the subset's mean face shape (colour and size)."""
    mean_errors = exploration.point_errors.mean(axis=0)
    return plots.plot_error_template(mean_template(exploration.ground_truth), mean_errors, annotate=annotate,
                                     title=f"{exploration.label}: mean error per landmark on {exploration.subset} "
                                           f"({len(exploration)} faces)")


def compare_runs(first: Exploration, second: Exploration, n: int = 4, max_error: float = MAX_ERROR):
    """Two runs on the same faces: per-face NME scatter, then the `n` faces where they differ most,
    side by side (rows: faces; columns: first run, second run)."""
    if [r.image_path for r in first.dataset.records] != [r.image_path for r in second.dataset.records]:
        raise ValueError(f"compare_runs: {first.label} and {second.label} were evaluated on different faces; "
                         f"build the second with explore(..., data=first.data_cfg)")
    difference = second.nmes - first.nmes
    chosen = np.argsort(-np.abs(difference), kind="stable")[:n]
    fig = plt.figure(figsize=(8.4, 2.9 * (len(chosen) + 1)))
    grid = fig.add_gridspec(len(chosen) + 1, 2)
    plots.draw_paired_nmes(fig.add_subplot(grid[0, :]), first.nmes, second.nmes, first.label, second.label)
    for row, index in enumerate(chosen, start=1):
        for column, exploration in enumerate((first, second)):
            view = exploration.view(index)
            plots.draw_point_errors(fig.add_subplot(grid[row, column]), view["crop"], view["truth"],
                                    view["predicted"], view["errors"], max_error,
                                    title=f"{exploration.label}: #{index} NME {view['nme'] * 100:.1f}%")
    fig.tight_layout()
    return fig
