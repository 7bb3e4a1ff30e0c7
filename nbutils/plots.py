"""Shared matplotlib figures: faces with landmarks, augmentation, heatmaps, data-set statistics.

Every function returns the matplotlib Figure (the notebook displays it; callers may save it).
Points are (68, 2) in the pixel coordinates of the image shown (continuous: pixel i covers
[i, i+1), so a point is drawn at x - 0.5 in matplotlib's pixel-centre convention).
Other modules append their plotting functions at the END of this file.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

# iBUG-68 parts: (name, indices, closed outline?)
FACE_PARTS = (
    ("jaw", range(0, 17), False), ("right brow", range(17, 22), False), ("left brow", range(22, 27), False),
    ("nose ridge", range(27, 31), False), ("nose base", range(31, 36), False),
    ("right eye", range(36, 42), True), ("left eye", range(42, 48), True),
    ("outer lips", range(48, 60), True), ("inner lips", range(60, 68), True),
)
PART_COLOURS = ("#e6550d", "#31a354", "#31a354", "#3182bd", "#3182bd", "#756bb1", "#756bb1", "#de2d26", "#de2d26")


def draw_landmarks(ax, points, lines: bool = True, size: float = 8.0, numbers: bool = False, alpha: float = 1.0):
    """Draw 68 points (image pixel coords) on `ax`, coloured by face part; 36 and 45 ringed (the NME normaliser)."""
    points = np.asarray(points, dtype=np.float64) - 0.5
    for (name, indices, closed), colour in zip(FACE_PARTS, PART_COLOURS):
        part = points[list(indices)]
        if lines:
            outline = np.vstack([part, part[:1]]) if closed else part
            ax.plot(outline[:, 0], outline[:, 1], "-", color=colour, lw=0.8, alpha=0.7 * alpha)
        ax.scatter(part[:, 0], part[:, 1], s=size, color=colour, alpha=alpha, linewidths=0)
    ax.scatter(points[[36, 45], 0], points[[36, 45], 1], s=size * 5, facecolors="none", edgecolors="yellow", lw=1)
    if numbers:
        for k, (x, y) in enumerate(points):
            ax.annotate(str(k), (x, y), fontsize=5, color="white")


def show_image(ax, image_rgb, points=None, title: str | None = None, **landmark_kw):
    ax.imshow(image_rgb)
    if points is not None:
        draw_landmarks(ax, points, **landmark_kw)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)


def _rgb(image_bgr):
    return image_bgr[:, :, ::-1]


def plot_faces(dataset, n_samples: int = 8, columns: int = 4, title: str | None = None):
    """The first `n_samples` original images of a Face300W with their annotated landmarks."""
    from nbutils.data import read_image

    n = min(n_samples, len(dataset))
    rows = max(1, int(np.ceil(n / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.6 * rows), squeeze=False)
    for ax, index in zip(axes.flat, range(n)):
        record = dataset.records[index]
        show_image(ax, _rgb(read_image(record.image_path)), record.points,
                   title=record.image_path.parent.name + "/" + record.image_path.name)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    fig.suptitle(title or f"{dataset.subset}: {len(dataset)} faces", fontsize=10)
    fig.tight_layout()
    return fig


def sample_view(sample: dict):
    """(crop RGB uint8, landmarks in crop pixels) of a dataset sample (tensor or numpy dict)."""
    from nbutils.data.transforms import denormalize_image, transform_points

    image = np.asarray(sample["image"])
    crop = denormalize_image(image)
    to_crop = np.asarray(sample["affine"], dtype=np.float64) * (image.shape[-1] / np.asarray(sample["heatmaps"]).shape[-1])
    return crop, transform_points(np.asarray(sample["points"], dtype=np.float64), to_crop)


def plot_augmentations(dataset, index: int = 0, n_views: int = 8, columns: int = 4):
    """One face through the augmentation pipeline `n_views` times (epochs 0..n-1): crop + landmarks."""
    rows = max(1, int(np.ceil((n_views + 1) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.6 * rows), squeeze=False)
    epoch = dataset.epoch
    augment = dataset.augment
    try:
        dataset.augment = None
        crop, points = sample_view(dataset.sample_numpy(index))
        show_image(axes.flat[0], crop, points, title="no augmentation")
        dataset.augment = augment if augment is not None else {}
        for view, ax in zip(range(n_views), axes.flat[1:]):
            dataset.set_epoch(view)
            sample = dataset.sample_numpy(index)
            crop, points = sample_view(sample)
            show_image(ax, crop, points, title=f"x{sample['scale_factor']:.2f} {sample['rotation']:+.0f}deg"
                       + (" flip" if sample["flip"] else ""))
    finally:
        dataset.augment, dataset.epoch = augment, epoch
    for ax in axes.flat[n_views + 1:]:
        ax.set_axis_off()
    fig.suptitle("augmentation: scale x U(0.75,1.25), rotation U(+-30) p=0.6, flip p=0.5", fontsize=10)
    fig.tight_layout()
    return fig


def plot_heatmaps(sample: dict, channels=(8, 30, 36, 45, 48, 54)):
    """The crop, the sum of all 68 target heatmaps over it, and a few single-landmark heatmaps."""
    crop, points = sample_view(sample)
    heatmaps = np.asarray(sample["heatmaps"])
    size = crop.shape[0]
    fig, axes = plt.subplots(1, 2 + len(channels), figsize=(2.3 * (2 + len(channels)), 2.6))
    show_image(axes[0], crop, points, title="crop + landmarks")
    axes[1].imshow(crop)
    axes[1].imshow(heatmaps.max(axis=0), cmap="magma", alpha=0.6, extent=(-0.5, size - 0.5, size - 0.5, -0.5))
    axes[1].set_title(f"max of 68 maps ({heatmaps.shape[-1]}px)", fontsize=8)
    axes[1].set_axis_off()
    for ax, k in zip(axes[2:], channels):
        ax.imshow(heatmaps[k], cmap="magma", vmin=0, vmax=1)
        ax.set_title(f"landmark {k}", fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def plot_statistics(stats, columns=("yaw_proxy", "iod_px", "roll_deg", "mouth_open"), bins: int = 30):
    """Per-subset histograms (density) of face statistics (a DataFrame from nbutils.data.face_statistics)."""
    fig, axes = plt.subplots(1, len(columns), figsize=(3.6 * len(columns), 3.0), squeeze=False)
    subsets = [s for s in ("train", "common", "challenge", "test") if s in set(stats["subset"])]
    for ax, column in zip(axes.flat, columns):
        values = stats[column].to_numpy()
        edges = np.linspace(np.nanmin(values), np.nanmax(values) + 1e-9, bins + 1)
        for subset in subsets:
            ax.hist(stats.loc[stats["subset"] == subset, column], bins=edges, density=True, histtype="step",
                    lw=1.5, label=f"{subset} ({(stats['subset'] == subset).sum()})")
        ax.set_title(column, fontsize=9)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_mean_shapes(stats_root, subsets=("common", "challenge")):
    """Landmarks of every face of each subset, normalised (eye corners to fixed spots): shape spread."""
    from nbutils.data import load_records

    fig, axes = plt.subplots(1, len(subsets), figsize=(3.2 * len(subsets), 3.2), squeeze=False)
    for ax, subset in zip(axes.flat, subsets):
        for record in load_records(stats_root, subset):
            p = record.points
            centre, iod = (p[36] + p[45]) / 2, np.linalg.norm(p[45] - p[36])
            ax.scatter(*((p - centre) / iod).T, s=0.5, alpha=0.3, color="tab:blue")
        ax.invert_yaxis()
        ax.set_aspect("equal")
        ax.set_title(f"{subset}: shapes / iod", fontsize=9)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- training runs

SUBSET_COLOURS = {"common": "#3182bd", "challenge": "#de2d26", "full": "#636363", "test": "#31a354"}


def plot_history(history: list):
    """Training loss and per-subset NME (%) against epoch, from `fit`'s history entries."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_nme) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", ms=3, color="black")
    ax_loss.set(xlabel="epoch", ylabel="train MSE (heatmap)", yscale="log", title="loss")
    for subset, colour in SUBSET_COLOURS.items():
        points = [(h["epoch"], h[f"nme_{subset}"]) for h in history if h.get(f"nme_{subset}") is not None]
        if points:
            ax_nme.plot(*zip(*points), "o-", ms=3, color=colour, label=subset)
    ax_nme.set(xlabel="epoch", ylabel="NME (% inter-ocular)", title="evaluation")
    ax_nme.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_ced(nmes_by_subset: dict, threshold: float = 0.10, title: str = "cumulative error distribution"):
    """CED curves: fraction of faces with NME <= x, for x up to `threshold` (fraction of inter-ocular);
    `full` (common + challenge images) is added when both are given."""
    from nbutils import metrics

    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for subset, nmes in metrics.with_full_set(nmes_by_subset).items():
        x, y = metrics.ced_curve(nmes, threshold)
        auc = metrics.auc(nmes, threshold) * 100
        ax.plot(np.asarray(x) * 100, np.asarray(y) * 100, color=SUBSET_COLOURS.get(subset),
                label=f"{subset} (AUC@{threshold:.2f} {auc:.1f}%)")
    ax.set(xlabel="NME (% inter-ocular)", ylabel="faces (%)", xlim=(0, threshold * 100), ylim=(0, 100), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_predictions(dataset, evaluation: dict, subset: str, n: int = 6, worst: bool = False, columns: int = 6):
    """Crops of `subset` with ground truth (small dots) and prediction (coloured by face part).

    evaluation: `engine.evaluate`'s dict (predictions/ground_truth/nmes/indices per subset), computed
    on `dataset`. worst=True shows the n largest NMEs, else the first n faces.
    """
    from nbutils.data.transforms import transform_points

    nmes = np.asarray(evaluation["nmes"][subset])
    order = np.argsort(-nmes)[:n] if worst else np.arange(min(n, len(nmes)))
    rows = max(1, int(np.ceil(len(order) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.3 * rows), squeeze=False)
    for ax, k in zip(axes.flat, order):
        sample = dataset[int(evaluation["indices"][subset][k])]
        crop, truth = sample_view(sample)
        to_crop = np.asarray(sample["affine"], dtype=np.float64) * (crop.shape[0] / sample["heatmaps"].shape[-1])
        predicted = transform_points(np.asarray(evaluation["predictions"][subset][k]), to_crop)
        ax.imshow(crop)
        ax.scatter(truth[:, 0] - 0.5, truth[:, 1] - 0.5, s=4, color="white", linewidths=0)
        draw_landmarks(ax, predicted, size=5)
        ax.set_title(f"NME {nmes[k] * 100:.1f}%", fontsize=8)
        ax.set_axis_off()
    for ax in axes.flat[len(order):]:
        ax.set_axis_off()
    fig.suptitle(f"{subset}: {'worst' if worst else 'first'} {len(order)} (white = ground truth)", fontsize=9)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- looking inside

def plot_channel_weights(records: list, sample: int = 0, max_modules: int = 12):
    """Channel gates (SE/CBAM/BAM) of each attention module for one face: one strip per module."""
    gated = [r for r in records if "channel_weights" in r][:max_modules]
    if not gated:
        return None
    fig, axes = plt.subplots(len(gated), 1, figsize=(8, 0.45 * len(gated) + 0.8), squeeze=False)
    for ax, record in zip(axes[:, 0], gated):
        weights = record["channel_weights"][sample]
        # Per-strip colour range: early in training the gates sit near 0.5 and differ in the 2nd decimal.
        ax.imshow(weights[None, :], aspect="auto", cmap="viridis", vmin=weights.min(), vmax=weights.max())
        ax.set_yticks([])
        ax.set_xticks([])
        ax.set_ylabel(f"{record['name']}\n{weights.size} ch, {weights.min():.2f}-{weights.max():.2f}",
                      rotation=0, ha="right", va="center", fontsize=6)
    axes[-1, 0].set_xlabel("channel (colour = gate, scaled to each strip's range printed at its left)", fontsize=8)
    fig.suptitle("channel attention per module (branch order: high to low resolution)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_spatial_maps(records: list, images, max_modules: int = 6, n_faces: int = 3):
    """Spatial attention (CBAM/BAM gates, non-local responses) over the input crops."""
    from nbutils.data.transforms import denormalize_image

    spatial = [r for r in records if "spatial_map" in r][:max_modules]
    if not spatial:
        return None
    n_faces = min(n_faces, len(images))
    fig, axes = plt.subplots(n_faces, len(spatial) + 1, figsize=(2.0 * (len(spatial) + 1), 2.0 * n_faces),
                             squeeze=False)
    for i in range(n_faces):
        crop = denormalize_image(np.asarray(images[i]))
        axes[i, 0].imshow(crop)
        for ax, record in zip(axes[i, 1:], spatial):
            ax.imshow(crop)
            ax.imshow(record["spatial_map"][i], cmap="magma", alpha=0.6, extent=(0, crop.shape[1], crop.shape[0], 0))
            if i == 0:
                ax.set_title(f"{record['kind']}\n{record['name']}", fontsize=6)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def plot_grad_cam(cams, images, landmarks: list):
    """Grad-CAM maps ([N, L, H, W], from explain.grad_cam) over the crops, one column per landmark."""
    from nbutils.data.transforms import denormalize_image

    n_faces = len(cams)
    fig, axes = plt.subplots(n_faces, len(landmarks) + 1, figsize=(2.0 * (len(landmarks) + 1), 2.0 * n_faces),
                             squeeze=False)
    for i in range(n_faces):
        crop = denormalize_image(np.asarray(images[i]))
        axes[i, 0].imshow(crop)
        for j, landmark in enumerate(landmarks):
            axes[i, j + 1].imshow(crop)
            axes[i, j + 1].imshow(cams[i, j], cmap="jet", alpha=0.5, extent=(0, crop.shape[1], crop.shape[0], 0))
            if i == 0:
                axes[i, j + 1].set_title(f"landmark {landmark}", fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle("Grad-CAM of the head input", fontsize=9)
    fig.tight_layout()
    return fig


def plot_init_statistics(frames: dict):
    """Per-layer statistics at initialisation ({scheme: explain.init_statistics frame}) side by side."""
    columns = (("weight_rms", "conv weight RMS"), ("activation_std", "conv output std"),
               ("grad_rms", "RMS of dL/dW"), ("adam_relative_step", "Adam step / weight RMS"))
    fig, axes = plt.subplots(1, len(columns), figsize=(3.4 * len(columns), 3.2))
    for ax, (column, title) in zip(axes, columns):
        for scheme, frame in frames.items():
            ax.plot(frame["depth"], frame[column], ".-", ms=2, lw=0.8, label=scheme)
        ax.set(yscale="log", xlabel="conv layer (forward order)", title=title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- error exploration (nbutils.explore)

ERROR_CMAP = "RdYlGn_r"   # green = small error, red = large


def draw_point_errors(ax, image_rgb, truth, predicted, errors, max_error: float = 0.15, title: str | None = None,
                      colorbar: bool = False):
    """Prediction vs ground truth on one image: white dots = ground truth, a line from each to its
    prediction, predicted points coloured by their error (fraction of inter-ocular distance, clipped
    at max_error). Points are (68, 2) continuous pixel coords of `image_rgb`. Returns the scatter."""
    truth = np.asarray(truth, dtype=np.float64) - 0.5
    predicted = np.asarray(predicted, dtype=np.float64) - 0.5
    ax.imshow(image_rgb)
    for (tx, ty), (px, py) in zip(truth, predicted):
        ax.plot((tx, px), (ty, py), "-", color="white", lw=0.5, alpha=0.6)
    ax.scatter(truth[:, 0], truth[:, 1], s=5, color="white", linewidths=0)
    dots = ax.scatter(predicted[:, 0], predicted[:, 1], s=9, c=np.asarray(errors), cmap=ERROR_CMAP, vmin=0,
                      vmax=max_error, linewidths=0.3, edgecolors="black")
    ax.set_xlim(-0.5, image_rgb.shape[1] - 0.5)
    ax.set_ylim(image_rgb.shape[0] - 0.5, -0.5)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=7)
    if colorbar:
        ax.figure.colorbar(dots, ax=ax, fraction=0.046, pad=0.02, label="point error / iod")
    return dots


def draw_landmark_heatmap(ax_overlay, ax_map, crop_rgb, heatmap, truth_point, predicted_point, landmark: int,
                          error: float | None = None):
    """One landmark's heatmap: over the crop (left axis) and alone in heatmap pixels (right axis).

    truth_point / predicted_point: (2,) crop continuous pixels; white = ground truth, cyan = prediction.
    """
    size, cells = crop_rgb.shape[0], heatmap.shape[-1]
    ax_overlay.imshow(crop_rgb)
    ax_overlay.imshow(heatmap, cmap="magma", alpha=0.55, extent=(-0.5, size - 0.5, size - 0.5, -0.5))
    for ax, factor in ((ax_overlay, 1.0), (ax_map, cells / size)):
        if ax is ax_map:
            ax.imshow(heatmap, cmap="magma", extent=(0, cells, cells, 0))
            offset = 0.0                      # heatmap axes are in continuous heatmap coords
        else:
            offset = 0.5
        ax.scatter(truth_point[0] * factor - offset, truth_point[1] * factor - offset, s=30, marker="+",
                   color="white", label="ground truth")
        ax.scatter(predicted_point[0] * factor - offset, predicted_point[1] * factor - offset, s=30, marker="x",
                   color="cyan", label="prediction")
        ax.set_axis_off()
    ax_overlay.set_title(f"landmark {landmark}" + ("" if error is None else f": error {error * 100:.1f}% iod"),
                         fontsize=8)
    ax_map.set_title(f"heatmap {cells}x{cells}, peak {float(np.max(heatmap)):.2f}", fontsize=8)
    ax_map.legend(fontsize=6, loc="lower right", framealpha=0.5)


def plot_error_template(template, mean_errors, annotate: int = 6, title: str = "mean error per landmark"):
    """A face template ((68, 2) mean shape, y down) with each landmark coloured and sized by its mean
    error (fraction of inter-ocular distance); the `annotate` worst landmarks are labelled."""
    template, mean_errors = np.asarray(template, dtype=np.float64), np.asarray(mean_errors, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    for _, indices, closed in FACE_PARTS:
        part = template[list(indices)]
        outline = np.vstack([part, part[:1]]) if closed else part
        ax.plot(outline[:, 0], outline[:, 1], "-", color="0.75", lw=0.8, zorder=1)
    sizes = 20 + 400 * mean_errors / max(float(mean_errors.max()), 1e-12)
    dots = ax.scatter(template[:, 0], template[:, 1], s=sizes, c=mean_errors * 100, cmap=ERROR_CMAP,
                      edgecolors="black", linewidths=0.3, zorder=2)
    for k in np.argsort(-mean_errors)[:annotate]:
        ax.annotate(f"{k}", template[k], xytext=(4, 4), textcoords="offset points", fontsize=7)
    fig.colorbar(dots, ax=ax, label="mean error (% iod)")
    ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def draw_paired_nmes(ax, nmes_a, nmes_b, label_a: str, label_b: str):
    """Per-face NME (%) of run A against run B on the same faces; below the diagonal = B better."""
    a, b = np.asarray(nmes_a) * 100, np.asarray(nmes_b) * 100
    top = max(float(a.max()), float(b.max())) * 1.05
    ax.plot((0, top), (0, top), "--", color="0.6", lw=0.8)
    ax.scatter(a, b, s=10, alpha=0.7)
    better = int((b < a).sum())
    ax.set(xlim=(0, top), ylim=(0, top), xlabel=f"{label_a} NME (%)", ylabel=f"{label_b} NME (%)",
           title=f"mean {a.mean():.2f}% vs {b.mean():.2f}%; second better on {better}/{a.size} faces")
    ax.title.set_fontsize(8)
    ax.set_aspect("equal")
