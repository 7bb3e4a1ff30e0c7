"""File formats and the dataset's view of them: .pts, HRNet CSV, raw iBUG tree, bad input."""
from __future__ import annotations

import logging
import shutil

import cv2
import numpy as np
import pytest

from nbutils.data import FLIP_PERMUTATION, SUBSETS, DataFormatError, Face300W, flip_points, read_pts, write_pts
from nbutils.data.formats import (CSV_FILES, RAW_SPLIT_FOLDERS, detect_layout, face_box, raw_to_csvs, read_csv,
                                  scan_raw, write_csv)


def random_points(seed=0, width=300.0):
    return np.random.default_rng(seed).uniform(0, width, size=(68, 2))


def test_pts_round_trip_is_exact(tmp_path):
    points = random_points()
    write_pts(tmp_path / "a.pts", points)
    np.testing.assert_array_equal(read_pts(tmp_path / "a.pts"), points)


def test_pts_reads_ibug_release_format(tmp_path):
    lines = "\n".join(f"{i + 0.5} {2 * i}" for i in range(68))
    (tmp_path / "b.pts").write_text(f"version: 1\nn_points:  68\n{{\n{lines}\n}}\n")
    points = read_pts(tmp_path / "b.pts")
    assert points.shape == (68, 2)
    assert points[10].tolist() == [10.5, 20.0]


@pytest.mark.parametrize("body, message", [
    ("\n".join(["1 2"] * 67), "expected 68 points"),
    ("\n".join(["1 2"] * 67 + ["1 oops"]), "non-numeric"),
    ("\n".join(["1 2"] * 67 + ["1 2 3"]), "two finite numbers"),
])
def test_bad_pts_names_the_file(tmp_path, body, message):
    path = tmp_path / "bad.pts"
    path.write_text(f"version: 1\nn_points: 68\n{{\n{body}\n}}\n")
    with pytest.raises(DataFormatError, match=message) as info:
        read_pts(path)
    assert str(path) in str(info.value)


def test_csv_round_trip_applies_the_1_25_crop_factor(tmp_path):
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(3):
        cv2.imwrite(str(tmp_path / "images" / f"f{i}.png"), np.zeros((8, 8), np.uint8))
        points = random_points(i)
        center, scale = face_box(points)
        rows.append((f"f{i}.png", scale, center, points))
    write_csv(tmp_path / "x.csv", rows)
    records = read_csv(tmp_path / "x.csv", tmp_path / "images")
    assert len(records) == 3
    for (name, scale, center, points), record in zip(rows, records):
        assert record.image_path == tmp_path / "images" / name
        np.testing.assert_array_equal(record.points, points)
        np.testing.assert_array_equal(record.center, center)
        assert record.scale == pytest.approx(scale * 1.25, rel=1e-12)


def test_face_box_is_the_landmark_bounding_box():
    points = np.zeros((68, 2))
    points[0] = (10, 20)
    points[1] = (50, 100)
    points[2:] = (30, 40)
    center, scale = face_box(points)
    assert center.tolist() == [30.0, 60.0]
    assert scale == pytest.approx(80 / 200)


def _csv_with_bad_row(tmp_path):
    (tmp_path / "images").mkdir(exist_ok=True)
    cv2.imwrite(str(tmp_path / "images" / "ok.png"), np.zeros((8, 8), np.uint8))
    good = ["ok.png", "0.5", "4", "4"] + ["1.0"] * 136
    bad = ["ok.png", "0.5", "4", "4"] + ["1.0"] * 135
    path = tmp_path / "t.csv"
    path.write_text("image_name,scale,center_w,center_h\n" + "\n".join(",".join(r) for r in (good, bad, good)) + "\n")
    return path


def test_csv_wrong_column_count_names_file_and_row(tmp_path):
    path = _csv_with_bad_row(tmp_path)
    with pytest.raises(DataFormatError, match=r"t\.csv:row 3: expected 140 columns, found 139"):
        read_csv(path, tmp_path / "images")


def test_csv_skip_bad_logs_and_counts(tmp_path, caplog):
    path = _csv_with_bad_row(tmp_path)
    with caplog.at_level(logging.WARNING):
        records = read_csv(path, tmp_path / "images", skip_bad=True)
    assert len(records) == 2
    assert "skipped 1 bad rows" in caplog.text


def test_csv_missing_image_names_row(tmp_path):
    (tmp_path / "images").mkdir()
    path = tmp_path / "m.csv"
    path.write_text(",".join(["ghost.jpg", "0.5", "4", "4"] + ["1"] * 136) + "\n")
    with pytest.raises(DataFormatError, match=r"m\.csv:row 1: image .*ghost\.jpg not found"):
        read_csv(path, tmp_path / "images")


def test_flip_permutation_is_the_ibug_mirror():
    assert sorted(FLIP_PERMUTATION.tolist()) == list(range(68))
    np.testing.assert_array_equal(FLIP_PERMUTATION[FLIP_PERMUTATION], np.arange(68))
    pairs = {0: 16, 7: 9, 17: 26, 21: 22, 31: 35, 36: 45, 39: 42, 40: 47, 48: 54, 60: 64, 61: 63, 65: 67, 56: 58}
    for a, b in pairs.items():
        assert FLIP_PERMUTATION[a] == b and FLIP_PERMUTATION[b] == a
    for fixed in (8, 27, 28, 29, 30, 33, 51, 57, 62, 66):
        assert FLIP_PERMUTATION[fixed] == fixed
    points = random_points()
    np.testing.assert_allclose(flip_points(flip_points(points, 300), 300), points)
    assert flip_points(points, 300)[36, 0] == pytest.approx(300 - points[45, 0])


def test_raw_and_csv_layouts_give_the_same_faces(smoke_root):
    assert detect_layout(smoke_root) == ("csv", smoke_root)
    assert detect_layout(smoke_root / "images") == ("raw", smoke_root / "images")
    for subset in SUBSETS:
        from_csv = Face300W(smoke_root, subset).records
        from_raw = Face300W(smoke_root / "images", subset).records
        assert [r.image_path.resolve() for r in from_csv] == [r.image_path.resolve() for r in from_raw]
        for a, b in zip(from_csv, from_raw):
            np.testing.assert_array_equal(a.points, b.points)
            np.testing.assert_allclose(a.center, b.center, atol=1e-9)
            assert a.scale == pytest.approx(b.scale, rel=1e-12)


def test_subset_membership_follows_300w(smoke_root):
    def folders(subset):
        return {str(r.image_path.relative_to(smoke_root / "images").parent) for r in Face300W(smoke_root, subset).records}
    assert folders("train") == {"lfpw/trainset", "helen/trainset", "afw"}
    assert folders("common") == {"lfpw/testset", "helen/testset"}
    assert folders("challenge") == {"ibug"}
    assert folders("test") == {"300W/01_Indoor", "300W/02_Outdoor"}
    full = [r.image_path for r in Face300W(smoke_root, "full").records]
    common_challenge = [r.image_path for s in ("common", "challenge") for r in Face300W(smoke_root, s).records]
    assert sorted(full) == sorted(common_challenge)
    assert RAW_SPLIT_FOLDERS["full"] == RAW_SPLIT_FOLDERS["common"] + RAW_SPLIT_FOLDERS["challenge"]


def test_raw_to_csvs_reproduces_the_generated_csvs(smoke_root, tmp_path):
    written = raw_to_csvs(smoke_root / "images", tmp_path)
    for subset, path in written.items():
        assert path.name == CSV_FILES[subset]
        ours = read_csv(path, smoke_root / "images")
        theirs = read_csv(smoke_root / CSV_FILES[subset], smoke_root / "images")
        assert len(ours) == len(theirs) > 0
        for a, b in zip(sorted(ours, key=lambda r: r.image_path), sorted(theirs, key=lambda r: r.image_path)):
            np.testing.assert_array_equal(a.points, b.points)
            assert a.scale == pytest.approx(b.scale)


def make_raw_tree(tmp_path, smoke_root):
    """A copy of the smoke raw tree to damage."""
    raw = tmp_path / "raw"
    shutil.copytree(smoke_root / "images", raw)
    return raw


def test_pts_without_image_names_the_pts(tmp_path, smoke_root):
    raw = make_raw_tree(tmp_path, smoke_root)
    victim = sorted((raw / "ibug").glob("*.jpg"))[0]
    victim.unlink()
    with pytest.raises(DataFormatError, match="no image") as info:
        Face300W(raw, "challenge")
    assert victim.with_suffix(".pts").name in str(info.value)
    assert len(Face300W(raw, "challenge", skip_bad=True)) == len(Face300W(smoke_root, "challenge")) - 1


def test_bad_pts_in_tree_fails_at_construction(tmp_path, smoke_root):
    raw = make_raw_tree(tmp_path, smoke_root)
    victim = sorted((raw / "ibug").glob("*.pts"))[0]
    victim.write_text("\n".join(victim.read_text().splitlines()[:-3]) + "\n}\n")  # drop two points
    with pytest.raises(DataFormatError, match=victim.name):
        Face300W(raw, "challenge")


def test_unreadable_image_fails_at_load_or_is_skipped(tmp_path, smoke_root, caplog):
    raw = make_raw_tree(tmp_path, smoke_root)
    victim = sorted((raw / "ibug").glob("*.jpg"))[0]
    victim.write_bytes(b"this is not a jpeg")
    dataset = Face300W(raw, "challenge", input_size=32, heatmap_size=8)  # construction is cheap: no image reads
    bad_index = [r.image_path for r in dataset.records].index(victim)
    with pytest.raises(DataFormatError, match="unreadable image") as info:
        dataset[bad_index]
    assert victim.name in str(info.value)
    tolerant = Face300W(raw, "challenge", input_size=32, heatmap_size=8, skip_bad=True)
    with caplog.at_level(logging.WARNING):
        sample = tolerant[bad_index]
    assert sample["index"] != bad_index and tolerant.skipped_images == 1
    assert "skipping unreadable sample" in caplog.text


def test_face_box_outside_image_names_the_row(tmp_path):
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "small.png"), np.zeros((50, 40, 3), np.uint8))
    points = random_points(width=30)
    for subset in ("common", "challenge"):
        write_csv(tmp_path / CSV_FILES[subset], [("small.png", 0.2, np.array([500.0, 20.0]), points)])
    dataset = Face300W(tmp_path, "common", input_size=32, heatmap_size=8)
    with pytest.raises(DataFormatError, match=r"valid_common\.csv:row 2: face box centre .* outside the 40x50 image"):
        dataset[0]


def test_grayscale_ppm_png_and_odd_sizes_load_as_colour(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for name, shape in (("gray.png", (37, 61)), ("colour.ppm", (80, 45, 3)), ("big.jpg", (120, 90, 3))):
        cv2.imwrite(str(images / name), rng.integers(0, 255, size=shape, dtype=np.uint8))
        points = random_points(width=30) + 5
        center, scale = face_box(points)
        rows.append((name, scale, center, points))
    write_csv(tmp_path / CSV_FILES["test"], rows)
    dataset = Face300W(tmp_path, "test", input_size=32, heatmap_size=8)
    for i in range(3):
        sample = dataset[i]
        assert tuple(sample["image"].shape) == (3, 32, 32) and tuple(sample["heatmaps"].shape) == (68, 8, 8)


def test_layout_errors_are_clear(tmp_path):
    with pytest.raises(DataFormatError, match="neither face_landmarks_300w"):
        detect_layout(tmp_path)
    with pytest.raises(DataFormatError, match="not a directory"):
        detect_layout(tmp_path / "nowhere")
    (tmp_path / "ibug").mkdir()
    with pytest.raises(DataFormatError, match="lfpw/trainset"):
        scan_raw(tmp_path, "train")
