"""synth300w: a deterministic synthetic stand-in for 300W that writes the real on-disk layout.

Faces come from a hand-built 3-D 68-point template (iBUG-68 order and semantics, units of
inter-ocular distance: outer eye corners at x = -0.5 / +0.5, eye line at y = 0, y down, z toward
the camera). Each face draws an identity (jaw width, face length, eye/nose/mouth size, skin, hair)
and an expression (mouth open, smile, brow raise, eye opening), is rotated by yaw/pitch/roll about
a pivot inside the head and projected with a mild perspective. The image is painted with cv2 at
the projected landmarks, so every visual cue sits on its landmarks: the skin region is bounded by
the jaw points, eyes (sclera, iris, lids) by points 36-47, brows by 17-26, nostrils and nose
shading by 27-35, lips and mouth opening by 48-67; soft shadows (eye sockets, nose side, under the
nose, lip and jaw) and a directional light give the shading.

Difficulty follows 300W: `common` faces are mild (|yaw| <~ 30 deg, small expressions, rare
occlusion); `challenge` faces have at least one of large pose (|yaw| up to 60 deg, roll up to 30),
an occluder (hand, bar, sunglasses) or an exaggerated expression, plus harder imaging (blur, noise,
dim light); `train` and `test` mix the two (30 % / 40 % hard).

Output (root = the returned folder):
    root/images/{afw, helen/trainset, helen/testset, lfpw/trainset, lfpw/testset, ibug, 300W/01_Indoor,
                 300W/02_Outdoor}/<name>.{jpg,png} + <name>.pts
    root/face_landmarks_300w_{train,valid,valid_common,valid_challenge,test}.csv
    root/synth300w.json   (the generation parameters; its presence marks a complete data set)
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from pathlib import Path

import cv2
import numpy as np

from .formats import CSV_FILES, FLIP_PERMUTATION, NUM_LANDMARKS, face_box, write_csv, write_pts

GENERATOR_VERSION = 1
SIZE_ALIASES = {"gpu": "paper"}
SPLIT_SIZES = {  # train, common, challenge, test
    "smoke": {"train": 32, "common": 8, "challenge": 4, "test": 8},
    "cpu": {"train": 800, "common": 150, "challenge": 40, "test": 150},
    "paper": {"train": 3148, "common": 554, "challenge": 135, "test": 600},
}
# Raw folders of each split with their share in the real 300W, and the file type used there.
SPLIT_FOLDERS = {
    "train": (("lfpw/trainset", 811, ".png"), ("helen/trainset", 2000, ".jpg"), ("afw", 337, ".jpg")),
    "common": (("lfpw/testset", 224, ".png"), ("helen/testset", 330, ".jpg")),
    "challenge": (("ibug", 135, ".jpg"),),
    "test": (("300W/01_Indoor", 300, ".png"), ("300W/02_Outdoor", 300, ".png")),
}
HARD_FRACTION = {"train": 0.3, "common": 0.0, "challenge": 1.0, "test": 0.4}
SPLIT_ORDER = ("train", "common", "challenge", "test")
MANIFEST = "synth300w.json"


# ----------------------------------------------------------------------------- the 3-D template

def _half_template() -> dict[int, tuple[float, float, float]]:
    """Points on the subject's right side (image left, x < 0) and on the midline, (x, y, z) in iod units."""
    jaw = [(-0.86, 0.02, -0.78), (-0.845, 0.25, -0.74), (-0.81, 0.48, -0.66), (-0.755, 0.70, -0.55),
           (-0.665, 0.91, -0.42), (-0.54, 1.09, -0.28), (-0.385, 1.23, -0.15), (-0.20, 1.33, -0.05),
           (0.0, 1.37, 0.0)]
    brow = [(-0.70, -0.17, -0.22), (-0.59, -0.265, -0.10), (-0.45, -0.30, -0.02), (-0.30, -0.285, 0.02),
            (-0.15, -0.235, 0.03)]
    nose_ridge = [(0.0, -0.02, 0.02), (0.0, 0.135, 0.13), (0.0, 0.29, 0.25), (0.0, 0.445, 0.38)]
    nose_base = [(-0.165, 0.52, 0.10), (-0.085, 0.55, 0.17), (0.0, 0.575, 0.22)]
    eye = [(-0.50, 0.0, -0.20), (-0.41, -0.055, -0.12), (-0.285, -0.06, -0.09), (-0.185, 0.01, -0.10),
           (-0.285, 0.035, -0.10), (-0.41, 0.03, -0.13)]
    mouth_outer = {48: (-0.33, 0.80, -0.07), 49: (-0.22, 0.745, 0.03), 50: (-0.09, 0.71, 0.10),
                   51: (0.0, 0.725, 0.12), 57: (0.0, 0.935, 0.08), 58: (-0.11, 0.92, 0.06),
                   59: (-0.23, 0.875, 0.01)}
    mouth_inner = {60: (-0.28, 0.80, -0.03), 61: (-0.10, 0.785, 0.08), 62: (0.0, 0.79, 0.09),
                   66: (0.0, 0.80, 0.09), 67: (-0.10, 0.795, 0.08)}
    half = {i: p for i, p in enumerate(jaw)}
    half.update({17 + i: p for i, p in enumerate(brow)})
    half.update({27 + i: p for i, p in enumerate(nose_ridge)})
    half.update({31 + i: p for i, p in enumerate(nose_base)})
    half.update({36 + i: p for i, p in enumerate(eye)})
    half.update(mouth_outer)
    half.update(mouth_inner)
    return half


def template_3d() -> np.ndarray:
    """(68, 3) mean face, iod units, exactly mirror-symmetric under FLIP_PERMUTATION."""
    points = np.full((NUM_LANDMARKS, 3), np.nan)
    for index, (x, y, z) in _half_template().items():
        points[index] = (x, y, z)
        points[FLIP_PERMUTATION[index]] = (-x, y, z)
    assert not np.isnan(points).any(), "template misses points"
    return points


TEMPLATE = template_3d()
JAW, BROWS, NOSE, EYES, MOUTH = slice(0, 17), slice(17, 27), slice(27, 36), slice(36, 48), slice(48, 68)
RIGHT_EYE, LEFT_EYE = slice(36, 42), slice(42, 48)
LOWER_LIP = [55, 56, 57, 58, 59, 65, 66, 67]
PIVOT = np.array([0.0, 0.35, -0.9])  # rotation centre of the head (roughly the top of the neck)
CAMERA_DISTANCE = 9.0  # iod units; mild perspective


def neutral_params() -> dict:
    """Identity/expression/pose of the frontal mean face (all variation off)."""
    return {"jaw_width": 1.0, "face_length": 1.0, "eye_width": 1.0, "eye_open": 1.0, "nose_length": 1.0,
            "nose_width": 1.0, "mouth_width": 1.0, "mouth_open": 0.0, "smile": 0.0, "brow_raise": 0.0,
            "brow_height": 0.0, "jitter": 0.0, "yaw": 0.0, "pitch": 0.0, "roll": 0.0}


def shape_3d(params: dict, rng: np.random.Generator | None = None) -> np.ndarray:
    """(68, 3) face in iod units after identity and expression changes (before pose)."""
    p = TEMPLATE.copy()
    p[JAW, 0] *= params["jaw_width"]
    below_eyes = p[:, 1] > 0.1
    p[below_eyes, 1] = 0.1 + (p[below_eyes, 1] - 0.1) * params["face_length"]
    for eye in (RIGHT_EYE, LEFT_EYE):
        centre = p[eye].mean(axis=0)
        p[eye, 0] = centre[0] + (p[eye, 0] - centre[0]) * params["eye_width"]
        p[eye, 1] = centre[1] + (p[eye, 1] - centre[1]) * params["eye_open"]
    nose_top = p[27, 1]
    p[28:36, 1] = nose_top + (p[28:36, 1] - nose_top) * params["nose_length"]
    p[31:36, 0] *= params["nose_width"]
    p[MOUTH, 0] *= params["mouth_width"]
    # Expression: the jaw drops with the lower lip (chin most, jaw corners barely).
    opening = params["mouth_open"]
    p[LOWER_LIP, 1] += opening
    jaw_weight = np.clip(1.0 - np.abs(np.arange(17) - 8) / 6.0, 0.0, 1.0) ** 1.5
    p[JAW, 1] += 0.8 * opening * jaw_weight
    for corner, side in ((48, -1), (54, 1), (60, -1), (64, 1)):
        p[corner, 1] += 0.45 * opening - 0.07 * params["smile"]
        p[corner, 0] += side * (0.05 * params["smile"] - 0.04 * opening)
    for lip, side in ((49, -1), (53, 1), (59, -1), (55, 1)):
        p[lip, 1] -= 0.03 * params["smile"]
        p[lip, 0] += side * 0.02 * params["smile"]
    p[BROWS, 1] -= 0.12 * params["brow_raise"] + params["brow_height"]
    p[[19, 20, 23, 24], 1] -= 0.03 * max(params["brow_raise"], 0.0)  # raised brows arch
    if rng is not None and params["jitter"] > 0:
        p[:, :2] += rng.normal(0.0, params["jitter"], size=(NUM_LANDMARKS, 2))
    return p


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """3x3 rotation (degrees). Positive yaw turns the face toward image right, positive pitch looks down,
    positive roll tilts clockwise in the image (y axis points down)."""
    y, x, z = (math.radians(a) for a in (yaw, pitch, roll))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(x), math.sin(x)], [0, -math.sin(x), math.cos(x)]])
    rz = np.array([[math.cos(z), -math.sin(z), 0], [math.sin(z), math.cos(z), 0], [0, 0, 1]])
    return rz @ rx @ ry


def project(points_3d: np.ndarray, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """Pose and project (K, 3) iod-unit points -> ((K, 2) image-plane points in iod units, (K,) depth)."""
    rotated = (points_3d - PIVOT) @ rotation_matrix(params["yaw"], params["pitch"], params["roll"]).T + PIVOT
    perspective = CAMERA_DISTANCE / (CAMERA_DISTANCE - rotated[:, 2])
    return rotated[:, :2] * perspective[:, None], rotated[:, 2]


def silhouette(points_3d: np.ndarray, centre_z: np.ndarray, depth: np.ndarray, yaw: float) -> np.ndarray:
    """Move contour points (jaw, forehead, skull) to where their horizontal cross-section is outermost
    when seen at `yaw` degrees: the visible outline, as 300W annotators draw it on turned faces.

    Each point (x, y, z) stands for an ellipse at its height with half-width |x| and half-depth `depth`
    centred at z = `centre_z`; the point on that ellipse with extreme projected x (on the point's own
    side) is returned. At yaw 0 every point maps onto itself.
    """
    angle = math.radians(yaw)
    cos, sin = math.cos(angle), math.sin(angle)
    half_width = np.abs(points_3d[:, 0])
    side = np.sign(points_3d[:, 0])
    norm = np.sqrt((half_width * cos) ** 2 + (depth * sin) ** 2) + 1e-12
    out = points_3d.copy()
    moves = half_width > 1e-9
    out[moves, 0] = side[moves] * half_width[moves] ** 2 * cos / norm[moves]
    out[moves, 2] = centre_z[moves] + side[moves] * depth[moves] ** 2 * sin / norm[moves]
    return out


def jaw_silhouette(shape: np.ndarray, yaw: float) -> np.ndarray:
    """The face with its jaw points (0-16) moved onto the visible outline for this yaw (see silhouette)."""
    out = shape.copy()
    jaw = shape[JAW]
    out[JAW] = silhouette(jaw, jaw[:, 2], np.maximum(0.1 - jaw[:, 2], 0.05), yaw)
    return out


def frontal_neutral_points(iod_pixels: float = 100.0, center=(150.0, 150.0)) -> np.ndarray:
    """(68, 2) landmarks of the neutral frontal mean face in pixels (outer eye corners iod_pixels apart)."""
    plane, _ = project(jaw_silhouette(shape_3d(neutral_params()), 0.0), neutral_params())
    return plane * iod_pixels + np.asarray(center, dtype=np.float64)


# ----------------------------------------------------------------------------- sampling

def sample_params(rng: np.random.Generator, hard: bool) -> dict:
    """Identity, expression, pose and imaging parameters of one face (hard = challenge-like)."""
    p = neutral_params()
    p.update(jaw_width=rng.uniform(0.9, 1.1), face_length=rng.uniform(0.92, 1.1), eye_width=rng.uniform(0.9, 1.1),
             eye_open=rng.uniform(0.75, 1.25), nose_length=rng.uniform(0.9, 1.12), nose_width=rng.uniform(0.85, 1.2),
             mouth_width=rng.uniform(0.88, 1.15), smile=rng.uniform(-0.2, 0.6), brow_raise=rng.uniform(-0.3, 0.4),
             brow_height=rng.uniform(-0.03, 0.04), jitter=0.01,
             mouth_open=0.0 if rng.random() < 0.6 else rng.uniform(0.0, 0.12),
             yaw=float(np.clip(rng.normal(0, 12), -30, 30)), pitch=float(np.clip(rng.normal(0, 6), -15, 15)),
             roll=float(np.clip(rng.normal(0, 6), -15, 15)), occluder="glasses" if rng.random() < 0.08 else None,
             blur=rng.uniform(0.2, 0.8), noise=rng.uniform(0.0, 4.0), light=rng.uniform(0.8, 1.1))
    if hard:
        factors = rng.random(3) < 0.5
        if not factors.any():
            factors[rng.integers(3)] = True
        pose, occlusion, expression = factors
        if pose:
            p.update(yaw=float(rng.choice([-1, 1]) * rng.uniform(20, 60)), pitch=rng.uniform(-25, 25),
                     roll=rng.uniform(-30, 30))
        if occlusion:
            p["occluder"] = str(rng.choice(["hand", "bar", "sunglasses"]))
        if expression:
            p.update(mouth_open=rng.uniform(0.12, 0.45), smile=rng.uniform(-0.6, 1.2),
                     brow_raise=rng.uniform(-0.6, 1.0), eye_open=rng.uniform(0.25, 1.6))
        p.update(blur=rng.uniform(0.3, 2.0), noise=rng.uniform(2.0, 10.0), light=rng.uniform(0.5, 1.15))
    return p


SKIN_RGB = np.array([(250, 222, 196), (232, 190, 150), (200, 150, 110), (160, 110, 75), (105, 70, 50)], float)
HAIR_RGB = np.array([(20, 16, 14), (55, 38, 28), (95, 65, 40), (170, 135, 85), (120, 55, 30), (150, 150, 150)], float)
IRIS_RGB = np.array([(70, 45, 25), (110, 75, 40), (70, 110, 150), (80, 110, 70), (40, 30, 25)], float)


def _palette(rng: np.random.Generator, table: np.ndarray, jitter: float) -> np.ndarray:
    """A colour (BGR float) interpolated between two neighbouring palette entries, with jitter."""
    t = rng.uniform(0, len(table) - 1)
    low = int(t)
    high = min(low + 1, len(table) - 1)
    rgb = table[low] + (t - low) * (table[high] - table[low])
    rgb = rgb * rng.uniform(1 - jitter, 1 + jitter, size=3)
    return np.clip(rgb[::-1], 0, 255)


# ----------------------------------------------------------------------------- drawing helpers

SHIFT = 4  # cv2 sub-pixel bits
ONE = 1 << SHIFT


def _fixed(points: np.ndarray) -> np.ndarray:
    """Continuous pixel coords -> cv2 fixed-point int32 (cv2 puts pixel centres at integers)."""
    return np.round((np.asarray(points, dtype=np.float64) - 0.5) * ONE).astype(np.int32).reshape(-1, 1, 2)


def _colour(bgr) -> tuple:
    return tuple(float(c) for c in np.clip(np.atleast_1d(bgr), 0, 255))


def _fill(image, points, bgr):
    cv2.fillPoly(image, [_fixed(points)], _colour(bgr), cv2.LINE_AA, SHIFT)


def _line(image, points, bgr, thickness, closed=False):
    cv2.polylines(image, [_fixed(points)], closed, _colour(bgr), max(1, int(round(thickness))), cv2.LINE_AA, SHIFT)


def _ellipse(image, centre, axes, angle, bgr, thickness=-1, arc=(0, 360)):
    c = _fixed(centre).reshape(2)
    a = (max(1, int(round(axes[0] * ONE))), max(1, int(round(axes[1] * ONE))))
    cv2.ellipse(image, (int(c[0]), int(c[1])), a, float(angle), arc[0], arc[1], _colour(bgr),
                thickness if thickness < 0 else max(1, int(round(thickness))), cv2.LINE_AA, SHIFT)


def _smooth_curve(points: np.ndarray, samples: int = 4) -> np.ndarray:
    """Catmull-Rom through the points (open curve), `samples` segments between neighbours."""
    points = np.asarray(points, dtype=np.float64)
    padded = np.vstack([2 * points[0] - points[1], points, 2 * points[-1] - points[-2]])
    t = np.linspace(0, 1, samples, endpoint=False)[:, None]
    out = []
    for i in range(1, len(padded) - 2):
        p0, p1, p2, p3 = padded[i - 1], padded[i], padded[i + 1], padded[i + 2]
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3))
    out.append(points[-1:])
    return np.vstack(out)


def _closed_smooth(points: np.ndarray, samples: int = 4) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    wrapped = np.vstack([points, points[:2]])
    return _smooth_curve(np.vstack([points[-1:], wrapped]), samples)[samples:-samples]


def _clipped(image: np.ndarray, outline: np.ndarray, paint) -> None:
    """Run paint(patch, offset) on a copy of the outline's bounding patch and keep it inside the outline."""
    height, width = image.shape[:2]
    x0, y0 = np.floor(outline.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(outline.max(axis=0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    offset = np.array([x0, y0], dtype=np.float64)
    patch = image[y0:y1, x0:x1].copy()
    paint(patch, offset)
    mask = np.zeros(patch.shape[:2], np.uint8)
    cv2.fillPoly(mask, [_fixed(outline - offset)], 255, cv2.LINE_AA, SHIFT)
    alpha = (mask.astype(np.float32) / 255.0)[:, :, None]
    region = image[y0:y1, x0:x1]
    region[:] = (patch * alpha + region * (1 - alpha)).astype(image.dtype)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A textured background: smooth colour field, a few shapes (a room, a street), fine grain."""
    coarse = rng.uniform(30, 230, size=(rng.integers(2, 5), rng.integers(2, 5), 3)).astype(np.float32)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(rng.integers(2, 9)):
        colour = _colour(rng.uniform(20, 240, size=3))
        kind = rng.integers(3)
        if kind == 0:
            x, y = rng.uniform(-0.2, 1.0, 2) * (width, height)
            w, h = rng.uniform(0.1, 0.6, 2) * (width, height)
            cv2.rectangle(image, (int(x), int(y)), (int(x + w), int(y + h)), colour, -1)
        elif kind == 1:
            a, b = rng.uniform(0, 1, (2, 2)) * (width, height)
            cv2.line(image, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), colour, int(rng.integers(2, 12)),
                     cv2.LINE_AA)
        else:
            c = rng.uniform(0, 1, 2) * (width, height)
            cv2.circle(image, (int(c[0]), int(c[1])), int(rng.uniform(0.05, 0.3) * width), colour, -1, cv2.LINE_AA)
    grain = cv2.resize(rng.normal(0, 1, size=(height // 4 + 1, width // 4 + 1)).astype(np.float32), (width, height))
    image += (grain * rng.uniform(2, 14))[:, :, None]
    return cv2.GaussianBlur(image, (0, 0), rng.uniform(0.8, 3.0))


# ----------------------------------------------------------------------------- the renderer

def render_face(rng: np.random.Generator, hard: bool = False, params: dict | None = None,
                image_size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Paint one synthetic face.

    Returns (image HxWx3 uint8 BGR, points (68, 2) continuous original pixels, params).
    `params` overrides the sampled parameters (e.g. neutral_params() plus imaging keys).
    """
    p = sample_params(rng, hard)
    if params is not None:
        p.update(params)
    width, height = image_size if image_size is not None else (int(rng.integers(200, 301)), int(rng.integers(200, 301)))

    shape = jaw_silhouette(shape_3d(p, rng), p["yaw"])
    # Head parts that are not landmarks, in the same iod units (projected with the landmarks).
    angles = np.linspace(0.0, math.pi, 15)
    hairline = rng.uniform(-0.78, -0.6)
    forehead = np.stack([0.87 * np.cos(angles) * p["jaw_width"] ** 0.5, -0.02 + (hairline - 0.02) * np.sin(angles) * 1.5,
                         -0.1 - 0.68 * np.cos(angles) ** 2], axis=1)
    forehead = silhouette(forehead, forehead[:, 2], np.maximum(-0.05 - forehead[:, 2], 0.05), p["yaw"])
    skull_angles = np.linspace(-0.25, math.pi + 0.25, 21)
    hair_volume = rng.uniform(1.0, 1.15)
    skull = np.stack([hair_volume * 0.98 * np.cos(skull_angles), 0.05 - hair_volume * 1.22 * np.sin(skull_angles),
                      np.full(21, -0.9)], axis=1)
    skull = silhouette(skull, skull[:, 2], 1.1 * np.abs(skull[:, 0]), p["yaw"])
    ears = np.array([[-0.97, 0.2, -0.85], [0.97, 0.2, -0.85]]) * [p["jaw_width"], 1, 1]
    neck = np.array([[-0.42, 0.95, -0.9], [-0.5, 2.6, -0.9], [0.5, 2.6, -0.9], [0.42, 0.95, -0.9]])
    extras = np.vstack([forehead, skull, ears, neck])
    plane, depth = project(np.vstack([shape, extras]), p)

    # Place and size the face: landmark box ~45-70 % of the shorter image side, fully inside.
    box_low, box_high = plane[:NUM_LANDMARKS].min(0), plane[:NUM_LANDMARKS].max(0)
    box_size = float((box_high - box_low).max())
    pixels_per_iod = rng.uniform(0.45, 0.7) * min(width, height) / box_size
    box_pixels = (box_high - box_low) * pixels_per_iod
    margin = 0.04 * min(width, height)
    free = np.maximum(np.array([width, height]) - box_pixels - 2 * margin, 0.0)
    origin = margin + rng.uniform(0, 1, 2) * free - box_low * pixels_per_iod
    pts = plane * pixels_per_iod + origin
    landmarks, extra = pts[:NUM_LANDMARKS], pts[NUM_LANDMARKS:]
    forehead_px, skull_px = extra[:15], extra[15:36]
    ears_px, neck_px = extra[36:38], extra[38:42]
    iod = pixels_per_iod  # size unit for drawing: pixels per template unit (the frontal inter-ocular distance)
    down = landmarks[8] - landmarks[27]
    down /= np.linalg.norm(down) + 1e-9
    side_vec = np.array([-down[1], down[0]])  # toward image right for an upright face

    skin = _palette(rng, SKIN_RGB, 0.06)
    hair = _palette(rng, HAIR_RGB, 0.1)
    image = _background(rng, height, width)

    # Clothes, neck, hair mass behind the head, ears.
    shoulder_y = landmarks[8, 1] + rng.uniform(0.5, 0.9) * iod
    neck_x = neck_px[[0, 3], 0].mean()
    clothes = np.array([[neck_x - 2.6 * iod, height + 5], [neck_x - 0.9 * iod, shoulder_y],
                        [neck_x + 0.9 * iod, shoulder_y], [neck_x + 2.6 * iod, height + 5]])
    _fill(image, clothes, rng.uniform(10, 230, 3))
    long_hair = rng.random() < 0.4
    bald = rng.random() < 0.07
    if long_hair and not bald:
        length = rng.uniform(1.0, 1.8) * iod
        bottom = np.linspace(skull_px[-1], skull_px[0], 7) + length * down
        bottom[1:-1] += (rng.uniform(0.0, 0.25, (5, 1)) * iod) * down
        _fill(image, np.vstack([skull_px, bottom]), hair * 0.8)
    _fill(image, neck_px, skin * 0.78)
    if not bald:
        _fill(image, skull_px, hair * 0.9)
    if not bald:  # layered locks: darker arcs inside the hair mass (the face covers their ends)
        for _ in range(int(rng.integers(3, 7))):
            inset = rng.uniform(0.05, 0.25) * iod
            centre = skull_px.mean(0)
            arc = skull_px[2:-2] + inset * (centre - skull_px[2:-2]) / (np.linalg.norm(centre - skull_px[2:-2], axis=1, keepdims=True) + 1e-9)
            _line(image, arc, hair * rng.uniform(0.5, 0.75), max(1.0, 0.015 * iod))

    # Skin: bounded by the jaw landmarks below and the forehead curve above; the nose may stick out.
    face_outline = np.vstack([_smooth_curve(landmarks[JAW], 3), forehead_px])
    _fill(image, face_outline, skin)
    _fill(image, cv2.convexHull(landmarks[[27, 30, 31, 33, 35]].astype(np.float32)).reshape(-1, 2), skin)
    for side, ear in ((-1, ears_px[0]), (1, ears_px[1])):
        if side * p["yaw"] <= 20:  # the receding ear hides behind the head
            _ellipse(image, ear, (0.09 * iod, 0.22 * iod), p["roll"], skin * 0.88)
            _ellipse(image, ear, (0.05 * iod, 0.15 * iod), p["roll"], skin * 0.7, thickness=max(1, 0.02 * iod))

    # Soft shading: a shadow layer and a highlight layer drawn at the landmarks, blurred once.
    shadow = np.zeros((height, width), np.float32)
    light = np.zeros((height, width), np.float32)
    for eye in (RIGHT_EYE, LEFT_EYE):
        centre = landmarks[eye].mean(0)
        _ellipse(shadow, centre - 0.06 * iod * down, (0.2 * iod, 0.12 * iod), math.degrees(math.atan2(side_vec[1], side_vec[0])), 0.55)
    light_dir = rng.uniform(-1, 1)
    nose_shadow_side = 31 if light_dir > 0 else 35
    _fill(shadow, np.array([landmarks[27], landmarks[30], landmarks[nose_shadow_side],
                            landmarks[39 if light_dir > 0 else 42]]), 0.45)
    _line(shadow, landmarks[31:36], 0.6, 0.05 * iod)
    _line(shadow, landmarks[[55, 56, 57, 58, 59]] + 0.05 * iod * down, 0.45, 0.06 * iod)
    _line(shadow, _smooth_curve(landmarks[3:14], 2) + 0.07 * iod * down, 0.8, 0.14 * iod)
    cheek_side = landmarks[1:5] if light_dir > 0 else landmarks[12:16]
    _line(shadow, cheek_side + (0.1 if light_dir > 0 else -0.1) * iod * side_vec, 0.35, 0.25 * iod)
    _line(light, landmarks[27:31], 0.5, 0.06 * iod)
    _ellipse(light, landmarks[30] - 0.03 * iod * down, (0.05 * iod, 0.04 * iod), 0, 0.7)
    _ellipse(light, forehead_px[7] * 0.5 + landmarks[27] * 0.5, (0.3 * iod, 0.15 * iod), 0, 0.3)
    blur_sigma = max(0.8, 0.05 * iod)
    shadow = cv2.GaussianBlur(shadow, (0, 0), blur_sigma)
    light = cv2.GaussianBlur(light, (0, 0), blur_sigma)
    shade = (1.0 - 0.45 * shadow + 0.25 * light)[:, :, None]
    image = image * shade + (0.25 * light)[:, :, None] * 40.0

    _draw_eyes(image, rng, landmarks, iod, skin, down)
    _draw_brows(image, landmarks, iod, hair, down)
    _draw_nose(image, landmarks, iod, skin, down, side_vec, abs(p["yaw"]))
    _draw_mouth(image, rng, landmarks, iod, skin, down)
    _line(image, _smooth_curve(landmarks[JAW], 3), skin * 0.6, max(1.0, 0.015 * iod))

    if not bald and rng.random() < 0.9:  # a fringe over the upper forehead, well above the brows
        droop = rng.uniform(0.2, 0.45) * np.sin(angles) ** 2
        fringe_bottom = forehead_px + (droop * iod)[:, None] * down
        _fill(image, np.vstack([skull_px, fringe_bottom[::-1]]), hair * 0.85)
    _draw_occluder(image, rng, p.get("occluder"), landmarks, iod, skin, down, side_vec)

    # Imaging: directional light + colour cast, blur, sensor noise.
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (math.cos(angle) * (xs / width - 0.5) + math.sin(angle) * (ys / height - 0.5))
    gain = p["light"] * (1.0 + rng.uniform(0.1, 0.5) * ramp)
    image = image * gain[:, :, None] * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    image = cv2.GaussianBlur(image, (0, 0), p["blur"])
    image += rng.normal(0, p["noise"], size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), landmarks, p


def _draw_eyes(image, rng, landmarks, iod, skin, down):
    iris_colour = _palette(rng, IRIS_RGB, 0.15)
    gaze = rng.normal(0, 0.12, 2)
    sclera = np.array([225, 228, 232]) * rng.uniform(0.85, 1.0)
    for eye in (RIGHT_EYE, LEFT_EYE):
        pts = landmarks[eye]
        outline = _closed_smooth(pts, 3)
        width = np.linalg.norm(pts[3] - pts[0])
        opening = np.linalg.norm(pts[[1, 2]].mean(0) - pts[[5, 4]].mean(0))
        centre = pts.mean(0) + gaze * [width, 0.5 * opening]

        def paint(patch, offset, centre=centre, width=width):
            patch[:] = sclera
            _ellipse(patch, centre - offset, (0.23 * width, 0.23 * width), 0, iris_colour)
            _ellipse(patch, centre - offset, (0.23 * width, 0.23 * width), 0, iris_colour * 0.5, thickness=max(1, 0.03 * width))
            _ellipse(patch, centre - offset, (0.09 * width, 0.09 * width), 0, (15, 15, 15))
            _ellipse(patch, centre - offset - [0.06 * width, 0.06 * width], (0.03 * width, 0.03 * width), 0, (240, 240, 240))

        if opening > 0.02 * iod:
            _clipped(image, outline, paint)
        _line(image, _smooth_curve(pts[[0, 1, 2, 3]], 3), (25, 20, 20), max(1.0, 0.03 * iod))
        _line(image, _smooth_curve(pts[[3, 4, 5, 0]], 3), skin * 0.55, max(1.0, 0.012 * iod))
        _line(image, _smooth_curve(pts[[0, 1, 2, 3]], 3) - 0.07 * iod * down, skin * 0.7, max(1.0, 0.012 * iod))


def _draw_brows(image, landmarks, iod, hair, down):
    thickness = np.array([0.03, 0.05, 0.06, 0.065, 0.06]) * iod
    colour = hair * 0.7 + 15
    for brow in (slice(17, 22), slice(22, 27)):
        top = landmarks[brow]
        profile = thickness if brow.start == 17 else thickness[::-1]
        bottom = top + profile[:, None] * down
        _fill(image, np.vstack([_smooth_curve(top, 3), _smooth_curve(bottom[::-1], 3)]), colour)


def _draw_nose(image, landmarks, iod, skin, down, side_vec, abs_yaw):
    dark = skin * 0.45
    for a, b, side in ((31, 32, -1), (35, 34, 1)):
        centre = 0.55 * landmarks[a] + 0.45 * landmarks[b] - 0.02 * iod * down
        angle = math.degrees(math.atan2(*(landmarks[b] - landmarks[a])[::-1]))
        _ellipse(image, centre, (0.045 * iod, 0.022 * iod), angle, (30, 25, 35))
        wing_centre = landmarks[a] - 0.045 * iod * down + side * 0.01 * iod * side_vec
        _ellipse(image, wing_centre, (0.05 * iod, 0.065 * iod), angle, dark * 1.2, thickness=max(1, 0.012 * iod),
                 arc=(90, 270) if side < 0 else (-90, 90))
    _line(image, _smooth_curve(landmarks[31:36], 2), skin * 0.65, max(1.0, 0.01 * iod))
    if abs_yaw > 12:  # the nose profile becomes an edge against the receding cheek
        profile = landmarks[[27, 28, 29, 30, 33]]
        strength = min(1.0, (abs_yaw - 12) / 30)
        _line(image, _smooth_curve(profile, 3), skin * (1 - 0.45 * strength), max(1.0, 0.015 * iod))


def _draw_mouth(image, rng, landmarks, iod, skin, down):
    lip = skin * np.array([0.7, 0.62, 0.95]) * rng.uniform(0.85, 1.0)
    outer = _closed_smooth(landmarks[48:60], 2)
    _fill(image, outer, lip)
    lower = np.vstack([landmarks[[54, 55, 56, 57, 58, 59, 48]], landmarks[[60, 67, 66, 65, 64]]])
    _fill(image, lower, lip * 1.12)
    inner = landmarks[60:68]
    gap = np.linalg.norm(inner[[1, 2, 3]] - inner[[7, 6, 5]], axis=1).mean()
    if gap > 0.02 * iod:
        def paint(patch, offset):
            patch[:] = (35, 25, 45)
            teeth_top = inner[[0, 1, 2, 3, 4]] - offset
            teeth = np.vstack([teeth_top, teeth_top[::-1] + min(0.07 * iod, 0.45 * gap) * down])
            _fill(patch, teeth, (215, 225, 230))
        _clipped(image, _closed_smooth(inner, 3), paint)
    _line(image, _smooth_curve(landmarks[[48, 60, 61, 62, 63, 64, 54]], 2), lip * 0.45, max(1.0, 0.015 * iod))


def _draw_occluder(image, rng, kind, landmarks, iod, skin, down, side_vec):
    if kind is None:
        return
    if kind in ("sunglasses", "glasses"):
        frame = (15, 15, 15) if kind == "sunglasses" else rng.uniform(0, 120, 3)
        centres = [landmarks[RIGHT_EYE].mean(0), landmarks[LEFT_EYE].mean(0)]
        angle = math.degrees(math.atan2(side_vec[1], side_vec[0]))
        for centre in centres:
            if kind == "sunglasses":
                _ellipse(image, centre, (0.23 * iod, 0.15 * iod), angle, (25, 22, 20))
                _ellipse(image, centre - 0.05 * iod * (down + side_vec), (0.07 * iod, 0.03 * iod), angle, (90, 90, 90))
            _ellipse(image, centre, (0.23 * iod, 0.15 * iod), angle, frame, thickness=max(1, 0.025 * iod))
        _line(image, np.array([centres[0] + 0.2 * iod * side_vec, centres[1] - 0.2 * iod * side_vec]), frame, 0.025 * iod)
        _line(image, np.array([centres[0] - 0.23 * iod * side_vec, landmarks[0] - 0.05 * iod * down]), frame, 0.025 * iod)
        _line(image, np.array([centres[1] + 0.23 * iod * side_vec, landmarks[16] - 0.05 * iod * down]), frame, 0.025 * iod)
    elif kind == "hand":
        target = landmarks[int(rng.choice([4, 6, 8, 10, 12, 48, 54, 30]))]
        hand_skin = skin * rng.uniform(0.85, 1.1)
        wrist = target + rng.normal(0, 0.3, 2) * iod + 1.0 * iod * down
        direction = target - wrist
        direction /= np.linalg.norm(direction) + 1e-9
        normal = np.array([-direction[1], direction[0]])
        palm = target - 0.15 * iod * direction
        _line(image, np.array([wrist + 0.6 * iod * down, palm]), hand_skin * 0.9, 0.4 * iod)
        _ellipse(image, palm, (0.28 * iod, 0.22 * iod), math.degrees(math.atan2(direction[1], direction[0])), hand_skin)
        for k, length in zip(range(4), (0.35, 0.42, 0.4, 0.32)):
            base = palm + (k - 1.5) * 0.12 * iod * normal + 0.15 * iod * direction
            tip = base + length * iod * (direction + 0.1 * (k - 1.5) * normal)
            _line(image, np.array([base, tip]), hand_skin * 0.75, 0.12 * iod)
            _line(image, np.array([base, tip]), hand_skin, 0.09 * iod)
    elif kind == "bar":
        centre = landmarks[int(rng.integers(0, NUM_LANDMARKS))]
        angle = rng.uniform(0, math.pi)
        direction = np.array([math.cos(angle), math.sin(angle)])
        ends = np.array([centre - 3 * iod * direction, centre + 3 * iod * direction])
        colour = rng.uniform(20, 230, 3)
        width = rng.uniform(0.12, 0.3) * iod
        _line(image, ends, colour * 0.7, width)
        _line(image, ends, colour, width * 0.6)


# ----------------------------------------------------------------------------- writing a data set

def normalize_size(size: str) -> str:
    """Canonical size name (gpu -> paper); ValueError for an unknown one."""
    size = SIZE_ALIASES.get(size, size)
    if size not in SPLIT_SIZES:
        raise ValueError(f"unknown synth300w size {size!r}; expected one of {sorted(SPLIT_SIZES) + sorted(SIZE_ALIASES)}")
    return size


def folder_counts(split: str, total: int) -> list[tuple[str, int, str]]:
    """Spread `total` images of a split over its raw folders in the real 300W proportions (largest remainder)."""
    folders = SPLIT_FOLDERS[split]
    shares = np.array([share for _, share, _ in folders], dtype=np.float64)
    exact = total * shares / shares.sum()
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return [(folder, int(n), ext) for (folder, _, ext), n in zip(folders, counts)]


def _file_stem(folder: str, index: int) -> str:
    if folder.startswith("300W/"):
        return f"{'indoor' if 'Indoor' in folder else 'outdoor'}_{index + 1:03d}"
    if folder == "afw":
        return f"{1000000 + 7919 * index}_1"
    if folder.startswith("helen"):
        return f"{2000000 + 104729 * index}_1"
    return f"image_{index + 1:04d}"


def generate(root: str | Path, size: str = "cpu", seed: int = 0, progress: bool = False) -> dict:
    """Write a complete synth300w data set into `root` (not atomic: see ensure_synth300w). Returns the manifest."""
    size = normalize_size(size)
    root = Path(root)
    images = root / "images"
    started, cpu_started = time.perf_counter(), time.process_time()
    rows_by_split = {}
    for split_index, split in enumerate(SPLIT_ORDER):
        rows = []
        sample_index = 0
        for folder, count, ext in folder_counts(split, SPLIT_SIZES[size][split]):
            (images / folder).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rng = np.random.default_rng([seed, split_index, sample_index])
                sample_index += 1
                hard = rng.random() < HARD_FRACTION[split]
                image, points, _ = render_face(rng, hard)
                if rng.random() < 0.05:  # 300W has some grayscale photos
                    image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
                name = f"{folder}/{_file_stem(folder, i)}{ext}"
                quality = [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(75, 96))] if ext == ".jpg" else []
                if not cv2.imwrite(str(images / name), image, quality):
                    raise OSError(f"could not write {images / name}")
                write_pts((images / name).with_suffix(".pts"), points)
                center, scale = face_box(points)
                rows.append((name, scale, center, points))
        rows_by_split[split] = rows
        if progress:
            print(f"synth300w {size} seed {seed}: {split} {len(rows)} images "
                  f"({time.perf_counter() - started:.1f} s)", flush=True)
    rows_by_split["full"] = rows_by_split["common"] + rows_by_split["challenge"]
    for subset, file_name in CSV_FILES.items():
        write_csv(root / file_name, rows_by_split[subset])
    manifest = {"generator": "synth300w", "version": GENERATOR_VERSION, "size": size, "seed": int(seed),
                "counts": {s: len(rows_by_split[s]) for s in CSV_FILES},
                "seconds": round(time.perf_counter() - started, 2),
                "cpu_seconds": round(time.process_time() - cpu_started, 2)}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def _matches(root: Path, size: str, seed: int) -> bool:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return (manifest.get("version") == GENERATOR_VERSION and manifest.get("size") == size
            and manifest.get("seed") == int(seed))


def ensure_synth300w(out_dir: str | Path, size: str = "cpu", seed: int = 0, progress: bool = False) -> Path:
    """Generate synth300w into `out_dir` unless it is already there; returns `out_dir`.

    Generation happens in a temporary sibling folder renamed into place at the end, so a reader
    never sees a half-written data set and two racing processes both end with the same complete one.
    An existing `out_dir` made with other parameters (or not by this generator) is an error.
    """
    size = normalize_size(size)
    out_dir = Path(out_dir).resolve()
    if out_dir.exists():
        if _matches(out_dir, size, seed):
            return out_dir
        raise FileExistsError(f"{out_dir}: exists but is not synth300w size={size} seed={seed} "
                              f"version={GENERATOR_VERSION} (see its {MANIFEST}); remove it or choose another folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        generate(tmp, size, seed, progress=progress)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not _matches(out_dir, size, seed):  # lost a race only if the winner wrote the same thing
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def default_synth_dir(size: str, seed: int, cache_dir: str | Path | None = None) -> Path:
    """<cache_dir or outputs_root()/data>/synth300w-{size}-s{seed} (size canonical: gpu -> paper)."""
    from ..config import outputs_root

    base = Path(cache_dir) if cache_dir is not None else outputs_root() / "data"
    return base / f"synth300w-{normalize_size(size)}-s{int(seed)}"
