"""Affine crop, heatmaps, augmentation and the dataset samples built from them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nbutils.data import FLIP_PERMUTATION, Face300W
from nbutils.data.transforms import (crop_affine, denormalize_image, gaussian_heatmaps, invert_affine,
                                     make_sample, normalize_image, sample_augmentation, scale_affine,
                                     transform_points, warp_image)


def argmax_points(heatmaps: np.ndarray) -> np.ndarray:
    """(K, 2) centre of each heatmap's argmax pixel, in heatmap continuous coords."""
    k, h, w = heatmaps.shape
    flat = heatmaps.reshape(k, -1).argmax(axis=1)
    return np.stack([flat % w + 0.5, flat // w + 0.5], axis=1)


def test_crop_affine_maps_the_box_onto_the_crop():
    # Box of side 200 * 0.5 = 100 px centred at (150, 80) onto a 64 px crop: zoom 0.64.
    m = crop_affine((150.0, 80.0), 0.5, 64)
    corners = np.array([[150, 80], [100, 30], [200, 130], [200, 80]], dtype=float)
    np.testing.assert_allclose(transform_points(corners, m), [[32, 32], [0, 0], [64, 64], [64, 32]], atol=1e-12)
    rotated = crop_affine((150.0, 80.0), 0.5, 64, rotation_deg=90)
    np.testing.assert_allclose(transform_points(np.array([[200.0, 80.0]]), rotated), [[32, 64]], atol=1e-9)
    flipped = crop_affine((150.0, 80.0), 0.5, 64, flip=True)
    np.testing.assert_allclose(transform_points(np.array([[200.0, 80.0]]), flipped), [[0, 32]], atol=1e-12)


@pytest.mark.parametrize("rotation, flip", [(0.0, False), (23.0, False), (-30.0, True)])
def test_transform_then_inverse_returns_the_points(rotation, flip):
    points = np.random.default_rng(1).uniform(0, 400, size=(68, 2))
    m = scale_affine(crop_affine((210.0, 190.0), 1.3, 256, rotation, flip), 64 / 256)
    back = transform_points(transform_points(points, m), invert_affine(m))
    assert np.abs(back - points).max() < 0.5
    np.testing.assert_allclose(back, points, atol=1e-9)


@pytest.mark.parametrize("rotation, flip", [(0.0, False), (17.0, False), (-25.0, True)])
def test_warp_moves_a_pixel_where_the_matrix_sends_its_centre(rotation, flip):
    image = np.zeros((120, 160), np.float32)
    image[40, 100] = 1.0  # pixel centre (100.5, 40.5) in continuous coords
    m = crop_affine((80.0, 60.0), 0.6, 128, rotation, flip)  # zoom > 1: the dot spreads, its peak stays put
    warped = warp_image(image, m, 128)
    expected = transform_points(np.array([[100.5, 40.5]]), m)[0]
    ys, xs = np.nonzero(warped > 0)
    weights = warped[ys, xs]
    centroid = np.array([(xs + 0.5) @ weights, (ys + 0.5) @ weights]) / weights.sum()
    assert np.abs(centroid - expected).max() < 0.5


def test_gaussian_heatmaps_hand_values():
    maps = gaussian_heatmaps(np.array([[10.5, 20.5], [3.0, 4.0], [-1.0, 5.0], [5.0, 16.0]]), 16, sigma=1.0)
    assert maps.shape == (4, 16, 16) and maps.dtype == np.float32
    assert maps[0].sum() == 0.0  # (10.5, 20.5) is below the 16-px map
    assert maps[1][3, 2] == pytest.approx(np.exp(-(0.25 + 0.25) / 2))  # pixel centre (2.5, 3.5)
    assert maps[1][3, 3] == pytest.approx(np.exp(-(0.25 + 0.25) / 2))
    assert maps[1][4, 3] == pytest.approx(np.exp(-(0.25 + 0.25) / 2))
    assert maps[1].max() == maps[1][3:5, 2:4].max()
    assert maps[2].sum() == 0.0 and maps[3].sum() == 0.0
    wide = gaussian_heatmaps(np.array([[8.5, 8.5]]), 16, sigma=2.0)[0]
    assert wide[8, 8] == pytest.approx(1.0) and wide[8, 10] == pytest.approx(np.exp(-4 / 8))


def test_normalisation_round_trip():
    rgb = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    chw = normalize_image(rgb)
    assert chw.shape == (3, 5, 7)
    assert chw[0, 0, 0] == pytest.approx((rgb[0, 0, 0] / 255 - 0.485) / 0.229, rel=1e-5)
    np.testing.assert_array_equal(denormalize_image(chw), rgb)


def test_augmentation_draws_match_the_reference_ranges():
    assert sample_augmentation(np.random.default_rng(0), None) == (1.0, 0.0, False)
    rng = np.random.default_rng(0)
    draws = np.array([sample_augmentation(rng, {}) for _ in range(3000)])
    scales, rotations, flips = draws.T
    assert 0.75 <= scales.min() and scales.max() <= 1.25
    assert np.abs(rotations).max() <= 30.0
    assert 0.35 < np.mean(rotations == 0.0) < 0.45  # rotation with probability 0.6
    assert 0.45 < flips.mean() < 0.55


def test_flip_is_a_mirror_of_the_unflipped_sample():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(90, 110, 3), dtype=np.uint8)
    points = rng.uniform(20, 70, size=(68, 2))
    no_aug = dict(scale=0.0, rotation=0.0, rotation_p=0.0)
    plain = make_sample(image, points, (55.0, 45.0), 0.4, 64, 16, 1.0, {**no_aug, "flip_p": 0.0}, rng)
    mirrored = make_sample(image, points, (55.0, 45.0), 0.4, 64, 16, 1.0, {**no_aug, "flip_p": 1.0}, rng)
    assert mirrored["flip"] and not plain["flip"]
    np.testing.assert_allclose(mirrored["image"], plain["image"][:, :, ::-1], atol=1e-5)
    np.testing.assert_allclose(mirrored["heatmaps"], plain["heatmaps"][FLIP_PERMUTATION][:, :, ::-1], atol=1e-6)
    np.testing.assert_array_equal(mirrored["points"], points[FLIP_PERMUTATION])


def test_dataset_samples_are_consistent(smoke_root):
    dataset = Face300W(smoke_root, "common", input_size=64, heatmap_size=16, sigma=1.0)
    sample = dataset[2]
    assert sample["image"].dtype == torch.float32 and tuple(sample["image"].shape) == (3, 64, 64)
    assert sample["heatmaps"].dtype == torch.float32 and tuple(sample["heatmaps"].shape) == (68, 16, 16)
    assert sample["points"].dtype == torch.float32 and tuple(sample["points"].shape) == (68, 2)
    assert sample["affine"].dtype == torch.float64 and tuple(sample["affine"].shape) == (2, 3)
    assert sample["index"] == 2
    np.testing.assert_array_equal(sample["points"].numpy(), dataset.records[2].points.astype(np.float32))
    expected = transform_points(sample["points"].numpy(), sample["affine"].numpy())
    assert np.abs(argmax_points(sample["heatmaps"].numpy()) - expected).max() <= 0.5 + 1e-6
    again = dataset[2]  # evaluation has no randomness
    assert torch.equal(again["image"], sample["image"]) and torch.equal(again["heatmaps"], sample["heatmaps"])


def test_augmented_samples_stay_consistent_and_deterministic(smoke_root):
    dataset = Face300W(smoke_root, "train", input_size=64, heatmap_size=16, augment={}, seed=5)
    torch.manual_seed(0)
    assert not torch.equal(dataset[4]["affine"], dataset[4]["affine"])  # no set_epoch yet: fresh draws
    dataset.set_epoch(0)
    flips = 0
    for i in range(12):
        sample = dataset[i]
        hm_points = transform_points(sample["points"].numpy(), sample["affine"].numpy())
        inside = ((hm_points >= 1) & (hm_points < 15)).all(axis=1)
        found = argmax_points(sample["heatmaps"].numpy())
        assert np.abs(found[inside] - hm_points[inside]).max() <= 0.5 + 1e-6
        flips += int(np.linalg.det(sample["affine"].numpy()[:, :2]) < 0)
    assert 0 < flips < 12
    assert torch.equal(dataset[4]["image"], dataset[4]["image"])
    before = dataset[4]["affine"]
    dataset.set_epoch(1)
    assert not torch.equal(dataset[4]["affine"], before)


def test_eyes_land_where_the_points_say(smoke_root):
    """The painted pupils (dark) sit between the eye landmarks of the crop: image and points agree."""
    dataset = Face300W(smoke_root, "common", input_size=128, heatmap_size=32)
    sample = dataset.sample_numpy(0)
    crop = denormalize_image(sample["image"]).astype(float).mean(axis=2)
    to_input = sample["affine"] * (128 / 32)
    for eye in (slice(36, 42), slice(42, 48)):
        centre = transform_points(sample["points"][eye], to_input).mean(axis=0)
        x, y = np.floor(centre).astype(int)
        eye_patch = crop[y - 1:y + 2, x - 1:x + 2].mean()
        cheek = transform_points(sample["points"][[3, 31]], to_input).mean(axis=0).astype(int)
        assert eye_patch < crop[cheek[1] - 1:cheek[1] + 2, cheek[0] - 1:cheek[0] + 2].mean()
