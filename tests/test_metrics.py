"""Metrics against hand-computed values and invariants (decode rule, inverse affine, NME/FR/AUC)."""
import math

import numpy as np
import pytest
import torch

from nbutils import metrics

# iBUG-68 mirror pairs, 1-indexed, as written in the design document.
MIRROR_PAIRS_1_INDEXED = [
    (1, 17), (2, 16), (3, 15), (4, 14), (5, 13), (6, 12), (7, 11), (8, 10), (18, 27), (19, 26), (20, 25),
    (21, 24), (22, 23), (32, 36), (33, 35), (37, 46), (38, 45), (39, 44), (40, 43), (41, 48), (42, 47),
    (49, 55), (50, 54), (51, 53), (62, 64), (61, 65), (68, 66), (59, 57), (60, 56),
]


def mirror_permutation() -> np.ndarray:
    permutation = np.arange(68)
    for a, b in MIRROR_PAIRS_1_INDEXED:
        permutation[a - 1], permutation[b - 1] = b - 1, a - 1
    return permutation


def render_gaussians(points: np.ndarray, size: int, sigma: float = 1.0) -> torch.Tensor:
    """(N, K, 2) heatmap coords -> (N, K, size, size) maps; pixel (j, i) sampled at its centre (i + .5, j + .5)."""
    centres = np.arange(size) + 0.5
    dx2 = (centres[None, None, None, :] - points[..., 0, None, None]) ** 2
    dy2 = (centres[None, None, :, None] - points[..., 1, None, None]) ** 2
    return torch.from_numpy(np.exp(-(dx2 + dy2) / (2 * sigma ** 2))).float()


# ----------------------------------------------------------------------------- decode

def test_decode_hand_case_shifts_toward_larger_neighbour():
    heatmaps = torch.zeros(1, 2, 8, 8)
    # Landmark 0: peak at column 3, row 2; right neighbour larger, up/down equal -> x shifts +.25, y stays.
    heatmaps[0, 0, 2, 3] = 1.0
    heatmaps[0, 0, 2, 4] = 0.5
    heatmaps[0, 0, 2, 2] = 0.2
    # Landmark 1: peak at column 5, row 6; up neighbour (row 5) larger -> y shifts -.25; left larger -> x -.25.
    heatmaps[0, 1, 6, 5] = 1.0
    heatmaps[0, 1, 5, 5] = 0.7
    heatmaps[0, 1, 6, 4] = 0.1
    coords = metrics.decode_heatmaps(heatmaps)
    assert coords.shape == (1, 2, 2)
    assert coords[0, 0].tolist() == [3.75, 2.5]
    assert coords[0, 1].tolist() == [5.25, 6.25]


def test_decode_gaussian_peak_follows_quarter_pixel_rule():
    rng = np.random.default_rng(0)
    # Sub-pixel centres well inside a 16x16 map, avoiding exact pixel-centre ties.
    points = rng.uniform(2.0, 14.0, size=(5, 68, 2))
    fractional = points - np.floor(points)
    points[np.abs(fractional - 0.5) < 1e-3] += 0.01
    coords = metrics.decode_heatmaps(render_gaussians(points, 16)).double().numpy()
    # q in [i, i+1): argmax pixel is i, the nearer neighbour is on q's side of the centre i + .5.
    expected = np.floor(points) + 0.5 + 0.25 * np.sign(points - np.floor(points) - 0.5)
    np.testing.assert_allclose(coords, expected, atol=1e-6)
    assert np.abs(coords - points).max() <= 0.25 + 1e-6


def test_decode_exact_pixel_centre_is_unshifted():
    points = np.array([[[4.5, 7.5]]])
    coords = metrics.decode_heatmaps(render_gaussians(points, 12))
    assert coords[0, 0].tolist() == [4.5, 7.5]


def test_decode_border_argmax_is_not_shifted():
    heatmaps = torch.zeros(1, 3, 6, 6)
    heatmaps[0, 0, 3, 0] = 1.0          # left border, right neighbour larger: no shift
    heatmaps[0, 0, 3, 1] = 0.9
    heatmaps[0, 1, 0, 2] = 1.0          # top border; x neighbours differ but the rule is joint: no shift
    heatmaps[0, 1, 0, 3] = 0.9
    heatmaps[0, 2, 5, 5] = 1.0          # bottom-right corner
    heatmaps[0, 2, 4, 5] = 0.9
    coords = metrics.decode_heatmaps(heatmaps)
    assert coords[0].tolist() == [[0.5, 3.5], [2.5, 0.5], [5.5, 5.5]]


def test_decode_tie_takes_first_maximum_in_row_major_order():
    heatmaps = torch.zeros(1, 1, 5, 5)
    heatmaps[0, 0, 3, 1] = 1.0
    heatmaps[0, 0, 1, 3] = 1.0          # comes first in row-major order
    assert metrics.decode_heatmaps(heatmaps)[0, 0].tolist() == [3.5, 1.5]


# ----------------------------------------------------------------------------- affine

def test_heatmap_to_image_hand_affine():
    # orig -> heatmap: x_h = 0.5 x - 10, y_h = 0.25 y + 4
    affine = torch.tensor([[[0.5, 0.0, -10.0], [0.0, 0.25, 4.0]]], dtype=torch.float64)
    coords = torch.tensor([[[5.0, 6.0], [0.0, 0.0]]])
    image = metrics.heatmap_to_image(coords, affine)
    assert image.dtype == torch.float64
    assert image[0].tolist() == [[30.0, 8.0], [20.0, -16.0]]


def test_heatmap_to_image_inverts_rotation_affine():
    rng = np.random.default_rng(1)
    angles = rng.uniform(-np.pi, np.pi, size=4)
    scales = rng.uniform(0.1, 0.5, size=4)
    linear = scales[:, None, None] * np.stack(
        [np.stack([np.cos(angles), -np.sin(angles)], -1), np.stack([np.sin(angles), np.cos(angles)], -1)], 1)
    affine = np.concatenate([linear, rng.uniform(-20, 20, size=(4, 2, 1))], axis=2)
    points = rng.uniform(0, 500, size=(4, 68, 2))
    heatmap_points = metrics.apply_affine(points, affine)
    np.testing.assert_allclose(metrics.heatmap_to_image(heatmap_points, affine).numpy(), points, atol=1e-9)


# ----------------------------------------------------------------------------- NME / FR / AUC / CED

def three_images_with_known_errors():
    """gt with inter-ocular distance 100 px; predictions offset by 2, 5 and 9 px on every point."""
    rng = np.random.default_rng(2)
    gt = rng.uniform(0, 300, size=(3, 68, 2))
    gt[:, 36] = [100.0, 150.0]
    gt[:, 45] = [200.0, 150.0]
    offsets = np.array([[0.0, 2.0], [3.0, 4.0], [-9.0, 0.0]])
    return gt + offsets[:, None, :], gt


def test_nme_per_image_hand_values():
    pred, gt = three_images_with_known_errors()
    np.testing.assert_allclose(metrics.nme_per_image(pred, gt), [0.02, 0.05, 0.09], atol=1e-12)
    # Torch inputs give the same; one point wrong by 68 px -> mean error 1 px -> NME 0.01.
    single = gt[:1].copy()
    single[0, 10, 0] += 68.0
    assert metrics.nme_per_image(torch.from_numpy(single), torch.from_numpy(gt[:1]))[0] == pytest.approx(0.01)


def test_nme_rejects_zero_interocular_distance_naming_the_image():
    _, gt = three_images_with_known_errors()
    gt[2, 45] = gt[2, 36]
    with pytest.raises(ValueError, match=r"\[2\]"):
        metrics.nme_per_image(gt, gt)


def test_failure_rate_auc_and_ced_hand_values():
    nmes = np.array([0.02, 0.05, 0.09])
    assert metrics.failure_rate(nmes, 0.08) == pytest.approx(1 / 3)
    assert metrics.failure_rate(nmes, 0.10) == 0.0
    assert metrics.failure_rate(np.array([0.08]), 0.08) == 0.0      # strictly greater fails
    # Exact area of the CED step function on [0, t] is mean(max(0, t - nme)) / t.
    assert metrics.auc(nmes, 0.08) == pytest.approx((0.06 + 0.03 + 0.0) / 3 / 0.08, abs=1e-4)
    assert metrics.auc(nmes, 0.10) == pytest.approx((0.08 + 0.05 + 0.01) / 3 / 0.10, abs=1e-4)
    assert metrics.auc(np.zeros(4), 0.08) == pytest.approx(1.0)
    assert metrics.auc(np.full(4, 0.5), 0.08) == 0.0
    errors, fractions = metrics.ced_curve(nmes, threshold=0.10, steps=10)
    np.testing.assert_allclose(errors, np.linspace(0, 0.1, 11))
    np.testing.assert_allclose(fractions, [0, 0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 1, 1])


def test_summarize_reports_percent():
    summary = metrics.summarize([0.02, 0.05, 0.09])
    assert summary["n"] == 3
    assert summary["nme"] == pytest.approx(16 / 3)
    assert summary["fr_0.08"] == pytest.approx(100 / 3)
    assert summary["fr_0.10"] == 0.0
    assert summary["auc_0.08"] == pytest.approx(37.5, abs=0.01)
    assert summary["auc_0.10"] == pytest.approx(46.667, abs=0.01)
    with pytest.raises(ValueError, match="empty"):
        metrics.summarize([])


def test_evaluate_subsets_full_is_union_not_mean_of_means():
    result = metrics.evaluate_subsets({
        "test": np.array([0.03, 0.05]),
        "common": np.array([0.01, 0.02, 0.03]),
        "challenge": np.array([0.10]),
        "full": np.array([0.5]),                              # replaced by the union
    })
    assert list(result) == ["common", "challenge", "full", "test"]
    assert result["common"]["nme"] == pytest.approx(2.0)
    assert result["challenge"]["nme"] == pytest.approx(10.0)
    assert result["full"]["nme"] == pytest.approx(4.0)       # (0.01+0.02+0.03+0.10)/4, not (2+10)/2
    assert result["full"]["n"] == 4
    assert result["full"]["fr_0.08"] == pytest.approx(25.0)
    assert result["test"]["nme"] == pytest.approx(4.0)
    # Without both halves, a given full subset is summarised as is.
    assert metrics.evaluate_subsets({"full": [0.05]})["full"]["nme"] == pytest.approx(5.0)


# ----------------------------------------------------------------------------- flip

def test_flip_heatmaps_matches_rendering_the_mirrored_points():
    rng = np.random.default_rng(3)
    size = 16
    points = rng.uniform(1.0, size - 1.0, size=(2, 68, 2))
    permutation = mirror_permutation()
    mirrored = points[:, permutation].copy()
    mirrored[..., 0] = size - mirrored[..., 0]
    flipped = metrics.flip_heatmaps(render_gaussians(points, size), permutation)
    torch.testing.assert_close(flipped, render_gaussians(mirrored, size), atol=1e-6, rtol=0)
    # A flip is its own inverse.
    torch.testing.assert_close(metrics.flip_heatmaps(flipped, permutation), render_gaussians(points, size))


def test_flip_heatmaps_default_permutation_is_the_ibug_mirror():
    from nbutils import data
    np.testing.assert_array_equal(np.asarray(data.FLIP_PERMUTATION), mirror_permutation())
    heatmaps = torch.rand(1, 68, 4, 4)
    torch.testing.assert_close(metrics.flip_heatmaps(heatmaps), metrics.flip_heatmaps(heatmaps, mirror_permutation()))


def test_auc_integration_grid_error_is_small():
    nmes = np.random.default_rng(4).uniform(0, 0.12, size=1000)
    exact = np.clip(0.08 - nmes, 0, None).mean() / 0.08
    assert math.isclose(metrics.auc(nmes, 0.08), exact, abs_tol=1.0 / metrics.AUC_STEPS)
