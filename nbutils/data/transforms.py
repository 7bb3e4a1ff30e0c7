"""Geometry and targets of one training/evaluation sample: affine crop, augmentation, heatmaps.

Every sample gets ONE 2x3 affine matrix in continuous pixel coordinates (pixel i covers
[i, i+1)) that maps original-image points into the input crop; it composes
    centre the face box -> (mirror) -> rotate -> scale box side 200*scale onto input_size -> shift to the crop centre,
and is applied once to the image (cv2.warpAffine) and to the points. The matrix handed back
to callers maps original pixels to *heatmap* pixels (crop matrix x heatmap_size / input_size).

Augmentation as the HRNet reference: scale x U(1 - s, 1 + s) with s = 0.25, rotation
U(-30, 30) degrees with probability 0.6, horizontal flip with probability 0.5 (points
re-ordered with the iBUG-68 mirror pairs).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from .formats import FLIP_PERMUTATION

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
DEFAULT_AUGMENT = {"scale": 0.25, "rotation": 30.0, "rotation_p": 0.6, "flip_p": 0.5}
CROP_BOX_PIXELS = 200.0  # crop box side in original pixels per unit of scale (HRNet convention)


def crop_affine(center, scale: float, output_size: int, rotation_deg: float = 0.0, flip: bool = False) -> np.ndarray:
    """2x3 float64 matrix: original continuous pixels -> continuous pixels of an output_size square crop.

    The box of side 200*scale original pixels centred on `center` fills the crop; `rotation_deg`
    turns the content about the centre; `flip` mirrors it horizontally (the caller reorders points
    with FLIP_PERMUTATION so that index k stays "the same" landmark after the mirror).
    """
    zoom = output_size / (CROP_BOX_PIXELS * scale)
    angle = math.radians(rotation_deg)
    cos, sin = math.cos(angle), math.sin(angle)
    linear = zoom * np.array([[cos, -sin], [sin, cos]], dtype=np.float64)
    if flip:
        linear = linear @ np.diag([-1.0, 1.0])
    center = np.asarray(center, dtype=np.float64)
    shift = output_size / 2.0 - linear @ center
    return np.hstack([linear, shift[:, None]])


def scale_affine(matrix: np.ndarray, factor: float) -> np.ndarray:
    """Compose a 2x3 continuous-coords matrix with a uniform zoom of the output (e.g. input -> heatmap)."""
    return np.asarray(matrix, dtype=np.float64) * factor


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix (as 2x3)."""
    linear_inv = np.linalg.inv(matrix[:, :2])
    return np.hstack([linear_inv, (-linear_inv @ matrix[:, 2])[:, None]])


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 matrix to (..., 2) points (same coordinate convention on both sides)."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp_image(image: np.ndarray, matrix: np.ndarray, output_size: int) -> np.ndarray:
    """Warp an HxW(xC) image with a continuous-coords matrix into an output_size square (zeros outside).

    cv2 puts pixel centres at integer coordinates, hence the half-pixel shift of the translation.
    """
    linear = matrix[:, :2]
    cv_matrix = np.hstack([linear, (matrix[:, 2] + linear @ np.array([0.5, 0.5]) - 0.5)[:, None]])
    return cv2.warpAffine(image, cv_matrix, (output_size, output_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def gaussian_heatmaps(points: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """(K, size, size) float32 Gaussian targets for (K, 2) points in heatmap continuous pixels.

    Value at pixel (row j, column i) = exp(-((i + .5 - x)^2 + (j + .5 - y)^2) / (2 sigma^2)), built as a
    separable outer product; a point outside [0, size) x [0, size) gets an all-zero map.
    """
    points = np.asarray(points, dtype=np.float64)
    centres = np.arange(size, dtype=np.float64) + 0.5
    along_x = np.exp(-((centres[None, :] - points[:, 0:1]) ** 2) / (2.0 * sigma ** 2))
    along_y = np.exp(-((centres[None, :] - points[:, 1:2]) ** 2) / (2.0 * sigma ** 2))
    inside = (points >= 0).all(axis=1) & (points < size).all(axis=1)
    along_x *= inside[:, None]
    return (along_y[:, :, None] * along_x[:, None, :]).astype(np.float32)


def normalize_image(image_rgb: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 RGB -> float32 3xHxW, ImageNet mean/std normalised."""
    gain = 1.0 / (255.0 * IMAGENET_STD)
    offset = IMAGENET_MEAN / IMAGENET_STD
    return (image_rgb.astype(np.float32) * gain - offset).transpose(2, 0, 1).copy()


def denormalize_image(tensor_chw) -> np.ndarray:
    """Inverse of normalize_image for display: 3xHxW (array or tensor) -> uint8 HxWx3 RGB."""
    chw = np.asarray(tensor_chw, dtype=np.float32)
    rgb = chw.transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def sample_augmentation(rng: np.random.Generator, augment: dict | None) -> tuple[float, float, bool]:
    """(scale multiplier, rotation in degrees, flip) drawn as the reference; identity when augment is None."""
    if augment is None:
        return 1.0, 0.0, False
    settings = {**DEFAULT_AUGMENT, **augment}
    scale = 1.0 + rng.uniform(-settings["scale"], settings["scale"])
    rotation = rng.uniform(-settings["rotation"], settings["rotation"]) if rng.random() < settings["rotation_p"] else 0.0
    flip = bool(rng.random() < settings["flip_p"])
    return float(scale), float(rotation), flip


def make_sample(image_bgr: np.ndarray, points: np.ndarray, center, scale: float, input_size: int,
                heatmap_size: int, sigma: float, augment: dict | None = None,
                rng: np.random.Generator | None = None) -> dict:
    """Crop + augment + targets for one face.

    image_bgr: HxWx3 uint8 as read by cv2; points: (68, 2) original pixels; center, scale: the
    record's crop box (side 200*scale pixels). Returns numpy arrays:
      image (3, S, S) float32 normalised RGB; heatmaps (68, H, H) float32;
      points (68, 2) original pixels in heatmap-channel order (mirror-permuted when flipped);
      affine (2, 3) float64 original -> heatmap continuous pixels; flip, rotation, scale_factor.
    """
    if augment is not None and rng is None:
        raise ValueError("make_sample: augmentation needs a random generator")
    scale_factor, rotation, flip = sample_augmentation(rng, augment)
    to_input = crop_affine(center, scale * scale_factor, input_size, rotation, flip)
    crop = warp_image(image_bgr, to_input, input_size)
    to_heatmap = scale_affine(to_input, heatmap_size / input_size)
    ordered_points = np.asarray(points, dtype=np.float64)
    if flip:
        ordered_points = ordered_points[FLIP_PERMUTATION]
    heatmaps = gaussian_heatmaps(transform_points(ordered_points, to_heatmap), heatmap_size, sigma)
    return {
        "image": normalize_image(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)),
        "heatmaps": heatmaps,
        "points": ordered_points,
        "affine": to_heatmap,
        "flip": flip,
        "rotation": rotation,
        "scale_factor": scale_factor,
    }
