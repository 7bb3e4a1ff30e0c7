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
