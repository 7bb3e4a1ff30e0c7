"""synth300w: iBUG-68 semantics of the template, difficulty strata, determinism, caching, the CLI."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from nbutils.data import FLIP_PERMUTATION, Face300W, ensure_synth300w, flip_points, resolve_data_root
from nbutils.data.cli import main as data_cli
from nbutils.data.formats import CSV_FILES, read_csv
from nbutils.data.synth import (SPLIT_SIZES, folder_counts, frontal_neutral_points, neutral_params, normalize_size,
                                render_face, sample_params)


@pytest.fixture(scope="module")
def frontal():
    return frontal_neutral_points(iod_pixels=100.0, center=(150.0, 150.0))


def test_flip_maps_frontal_neutral_face_onto_itself(frontal):
    iod = np.linalg.norm(frontal[36] - frontal[45])
    mirrored = flip_points(frontal, width=2 * 150.0)  # mirror about the face's vertical midline x = 150
    assert np.linalg.norm(mirrored - frontal, axis=1).max() < 0.02 * iod


def test_outer_eye_corners_are_36_and_45(frontal):
    assert np.linalg.norm(frontal[36] - frontal[45]) == pytest.approx(100.0, rel=0.05)
    right_eye, left_eye = frontal[36:42], frontal[42:48]
    assert frontal[36, 0] == right_eye[:, 0].min() and frontal[39, 0] == right_eye[:, 0].max()
    assert frontal[45, 0] == left_eye[:, 0].max() and frontal[42, 0] == left_eye[:, 0].min()
    assert frontal[36, 0] < frontal[39, 0] < frontal[42, 0] < frontal[45, 0]


def test_jaw_runs_image_left_to_right_and_parts_are_stacked(frontal):
    jaw = frontal[0:17]
    assert (np.diff(jaw[:, 0]) > 0).all()
    assert jaw[:, 1].argmax() == 8  # chin lowest
    brows, eyes, nose_tip, mouth = frontal[17:27], frontal[36:48], frontal[30], frontal[48:68]
    assert brows[:, 1].max() < eyes[:, 1].min()
    assert eyes[:, 1].max() < nose_tip[1] < mouth[:, 1].min() < mouth[:, 1].max() < frontal[8, 1]
    assert (np.diff(frontal[17:22, 0]) > 0).all() and (np.diff(frontal[22:27, 0]) > 0).all()
    assert frontal[48, 0] < frontal[51, 0] < frontal[54, 0] and frontal[51, 1] < frontal[57, 1]


def test_yaw_turns_the_nose_toward_the_turned_side(frontal):
    clean = {**neutral_params(), "occluder": None, "blur": 0.3, "noise": 0.0, "light": 1.0}
    _, left, _ = render_face(np.random.default_rng(0), params={**clean, "yaw": -40.0}, image_size=(256, 256))
    _, right, _ = render_face(np.random.default_rng(0), params={**clean, "yaw": 40.0}, image_size=(256, 256))
    def nose_offset(points):  # nose tip relative to the eye-corner midpoint, in iod
        return (points[30, 0] - (points[36, 0] + points[45, 0]) / 2) / np.linalg.norm(points[36] - points[45])
    assert nose_offset(right) > 0.15 and nose_offset(left) < -0.15


def test_features_are_painted_at_their_landmarks():
    clean = {**neutral_params(), "occluder": None, "blur": 0.3, "noise": 0.0, "light": 1.0}
    image, points, _ = render_face(np.random.default_rng(4), params=clean, image_size=(256, 256))
    gray = image.astype(float).mean(axis=2)
    def at(xy):
        x, y = np.floor(xy).astype(int)
        return gray[y, x]
    cheek = at((points[2] + points[31]) / 2)
    brow = at((points[19] + (points[19] - points[37]) * -0.15))  # just below the brow's top edge
    nostril = at(0.55 * points[31] + 0.45 * points[32] - [0, 0.01 * np.linalg.norm(points[36] - points[45])])
    assert brow < cheek and nostril < cheek
    lip = image[int(points[57, 1] - 0.03 * 100), int(points[57, 0])].astype(float)
    assert lip[2] > lip[0]  # lips are reddish (BGR)


def test_render_is_deterministic_per_seed():
    a_image, a_points, _ = render_face(np.random.default_rng([0, 1, 2]), hard=True)
    b_image, b_points, _ = render_face(np.random.default_rng([0, 1, 2]), hard=True)
    c_image, c_points, _ = render_face(np.random.default_rng([0, 1, 3]), hard=True)
    np.testing.assert_array_equal(a_image, b_image)
    np.testing.assert_array_equal(a_points, b_points)
    assert not np.array_equal(a_points, c_points)


def test_difficulty_strata():
    rng = np.random.default_rng(0)
    mild = [sample_params(rng, hard=False) for _ in range(400)]
    hard = [sample_params(rng, hard=True) for _ in range(400)]
    assert max(abs(p["yaw"]) for p in mild) <= 30 and max(p["mouth_open"] for p in mild) <= 0.12
    assert sum(p["occluder"] in ("hand", "bar", "sunglasses") for p in mild) == 0
    assert 55 < max(abs(p["yaw"]) for p in hard) <= 60
    for p in hard:  # every hard face has large pose, an occluder or an exaggerated expression
        assert abs(p["yaw"]) >= 20 or p["occluder"] in ("hand", "bar", "sunglasses") or p["mouth_open"] >= 0.12
    assert sum(p["occluder"] is not None for p in hard) > 100


def test_split_sizes_follow_300w_folders():
    assert folder_counts("train", 3148) == [("lfpw/trainset", 811, ".png"), ("helen/trainset", 2000, ".jpg"),
                                           ("afw", 337, ".jpg")]
    assert [n for _, n, _ in folder_counts("common", 554)] == [224, 330]
    assert [n for _, n, _ in folder_counts("test", 600)] == [300, 300]
    for size, splits in SPLIT_SIZES.items():
        for split, total in splits.items():
            assert sum(n for _, n, _ in folder_counts(split, total)) == total
    assert SPLIT_SIZES["paper"] == {"train": 3148, "common": 554, "challenge": 135, "test": 600}
    assert normalize_size("gpu") == "paper"
    with pytest.raises(ValueError, match="unknown synth300w size"):
        normalize_size("huge")


def test_smoke_dataset_layout_and_counts(smoke_root):
    manifest = json.loads((smoke_root / "synth300w.json").read_text())
    assert manifest["counts"] == {"train": 32, "common": 8, "challenge": 4, "full": 12, "test": 8}
    for subset, expected in manifest["counts"].items():
        records = Face300W(smoke_root, subset).records
        assert len(records) == expected
    for record in Face300W(smoke_root, "train").records[:8]:
        assert record.image_path.with_suffix(".pts").is_file()
    sample = Face300W(smoke_root, "challenge", input_size=64, heatmap_size=16)[0]
    assert tuple(sample["image"].shape) == (3, 64, 64)


def test_generation_is_deterministic_and_cached(smoke_root, tmp_path):
    again = ensure_synth300w(tmp_path / "copy", size="smoke", seed=0)
    for name in CSV_FILES.values():
        assert (again / name).read_text() == (smoke_root / name).read_text()
    first_image = read_csv(smoke_root / CSV_FILES["challenge"], smoke_root / "images")[0].image_path
    relative = first_image.relative_to(smoke_root)
    assert (again / relative).read_bytes() == first_image.read_bytes()
    stamp = (again / "synth300w.json").stat().st_mtime_ns
    assert ensure_synth300w(tmp_path / "copy", size="smoke", seed=0) == again
    assert (again / "synth300w.json").stat().st_mtime_ns == stamp  # cached: nothing rewritten
    with pytest.raises(FileExistsError, match="size=cpu"):
        ensure_synth300w(tmp_path / "copy", size="cpu", seed=0)


def _generate(target):
    return str(ensure_synth300w(target, size="smoke", seed=3))


def test_racing_generators_end_with_one_complete_dataset(tmp_path):
    target = tmp_path / "race"
    # Threads race exactly like processes here: each writes its own temporary folder, then renames.
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(_generate, [target, target]))
    assert results == [str(target.resolve())] * 2
    assert json.loads((target / "synth300w.json").read_text())["counts"]["train"] == 32
    assert [p.name for p in tmp_path.iterdir()] == ["race"]  # no temporary folders left behind


def test_cli_synth_default_folder_and_csv(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NBUTILS_OUTPUTS", str(tmp_path / "outputs"))
    assert data_cli(["synth", "--size", "smoke", "--seed", "2"]) == 0
    root = tmp_path / "outputs" / "data" / "synth300w-smoke-s2"
    assert (root / "synth300w.json").is_file()
    assert resolve_data_root({"root": "synth", "synth_size": "smoke", "synth_seed": 2}) == root
    assert data_cli(["csv", str(root / "images"), "--out", str(tmp_path / "csvs")]) == 0
    printed = capsys.readouterr().out
    assert "challenge      4 faces" in printed
    converted = Face300W(tmp_path / "csvs", "full")  # <out>/images links to the raw tree
    assert len(converted) == 12
    assert data_cli(["csv", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "error:" in capsys.readouterr().out


def test_flip_permutation_is_consistent_with_the_generator(frontal):
    # A mirrored frontal face keeps every part on the same image side as its index says.
    mirrored = flip_points(frontal, width=400.0)
    assert mirrored[36, 0] < mirrored[45, 0] and mirrored[0, 0] < mirrored[16, 0]
    assert (FLIP_PERMUTATION[[36, 45, 0, 16]] == [45, 36, 16, 0]).all()
