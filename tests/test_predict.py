"""Inference on images and videos (nbutils.predict), ONNX export, and the explorer (nbutils.explore).

One small HRNet run folder is trained once for the module (engine.fit: 320 steps of 8 faces on the
smoke synth300w, about 15 s on one core; a real run folder: params.yaml in the runner's format +
best.pt/last.pt). It is a landmark detector, if a weak one: the tests check that `predict` puts the
points near the annotation of faces it never trained on (given box and Haar detector), that for
the same face crop it returns exactly what `engine.evaluate` returns (same crop, network, decode),
and that the files it writes read back to the same numbers.
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from nbutils import engine, explore, predict
from nbutils.__main__ import main as cli
from nbutils.data import load_records, read_pts
from nbutils.models import hrnet_spec

REPO_ROOT = Path(__file__).resolve().parents[1]
needs_detector = pytest.mark.skipif(not predict.detector_available(),
                                    reason="this OpenCV has no Haar cascades (opencv-contrib-python-headless)")


def tiny_spec() -> dict:
    spec = hrnet_spec(8, num_modules=(1, 1, 1), num_blocks=1)
    spec["stem_channels"] = 16
    spec["stage1"] = {"block": "bottleneck", "num_blocks": 1, "planes": 16}
    return spec


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, smoke_root, one_thread):
    folder = tmp_path_factory.mktemp("runs") / "tiny-s111-smoke"
    cfg = engine.with_defaults({
        "run_dir": str(folder),
        "data": {"root": str(smoke_root), "max_eval": 4},
        # BN momentum 0.1 instead of HRNet's 0.01: running statistics that follow 320 steps
        "model": {"spec": tiny_spec(), "bn_momentum": 0.1},
        "train": {"input_size": 64, "heatmap_size": 16, "epochs": 80, "batch_size": 8, "max_steps_per_epoch": 4,
                  "lr": 2e-3, "lr_steps": [], "eval_every": 80}})
    engine.fit(cfg, folder, progress=False)
    (folder / "params.yaml").write_text(yaml.safe_dump(
        {"run": {"family": "tests", "row": "tiny", "seed": 111, "profile": "smoke"}, "parameters": cfg},
        sort_keys=False))
    return folder


@pytest.fixture(scope="module")
def predictor(run_dir):
    return predict.Predictor.from_run(run_dir)


@pytest.fixture(scope="module")
def evaluation(predictor):
    return engine.evaluate(predictor.model, predictor.parameters, subsets=("common",))


def landmark_box(points) -> tuple:
    low, high = points.min(axis=0), points.max(axis=0)
    return float(low[0]), float(low[1]), float(high[0]), float(high[1])


# ----------------------------------------------------------------------------- geometry


def test_box_to_crop_hand_computed():
    center, scale = predict.box_to_crop((10, 20, 110, 170), "face")
    assert center.tolist() == [60.0, 95.0] and scale == pytest.approx(150 / 200 * 1.25)
    center, scale = predict.box_to_crop((0, 0, 100, 100), "haar")
    assert center == pytest.approx([50 + 100 * predict.HAAR_CENTER_SHIFT[0], 50 + 100 * predict.HAAR_CENTER_SHIFT[1]])
    assert scale == pytest.approx(predict.HAAR_BOX_RATIO * 100 / 200 * 1.25)
    with pytest.raises(ValueError, match="x1 > x0"):
        predict.box_to_crop((10, 10, 5, 20))
    with pytest.raises(ValueError, match="--box '1,2,3'"):
        predict.parse_box("1,2,3")
    assert predict.parse_box("1.5,2,30,40.25") == (1.5, 2.0, 30.0, 40.25)


def test_landmark_box_maps_to_the_dataset_crop_exactly(smoke_root):
    for record in load_records(smoke_root, "common"):
        center, scale = predict.box_to_crop(landmark_box(record.points), "face")
        assert np.array_equal(center, record.center) and scale == record.scale


# ----------------------------------------------------------------------------- predictions


def _held_out_faces(smoke_root):
    """(record, image) of every smoke face the fixture did not train on (common, challenge, test)."""
    return [(r, cv2.imread(str(r.image_path))) for subset in ("common", "challenge", "test")
            for r in load_records(smoke_root, subset)]


def test_trained_model_puts_points_near_the_annotation(predictor, smoke_root):
    from nbutils.metrics import nme_per_image

    faces = _held_out_faces(smoke_root)
    predicted = np.stack([predictor.predict_image(image, [landmark_box(r.points)])[0].points for r, image in faces])
    truth = np.stack([r.points for r, _ in faces])
    nme = nme_per_image(predicted, truth)
    # the same faces placed at the mean training shape (in crop coordinates), the baseline that cannot learn
    shape = engine.mean_shape(predictor.parameters)
    mean_shape = nme_per_image(np.stack([_place(shape, predictor, r) for r, _ in faces]), truth)
    assert np.median(nme) < 0.10                      # the usual failure threshold: most faces succeed
    assert nme.mean() < 0.6 * mean_shape.mean()
    # a typical face: every point within half an inter-ocular distance of its annotation
    typical = int(np.argsort(nme)[len(nme) // 2])
    interocular = np.linalg.norm(truth[typical, 36] - truth[typical, 45])
    assert np.linalg.norm(predicted[typical] - truth[typical], axis=1).max() < 0.5 * interocular


@needs_detector
def test_trained_model_finds_and_places_faces_without_a_box(predictor, smoke_root):
    from nbutils.metrics import nme_per_image

    errors = []
    for record, image in _held_out_faces(smoke_root):
        found = predictor.predict_image(image)
        if found:
            errors.append(float(nme_per_image(found[0].points[None], record.points[None])[0]))
    assert len(errors) >= 6 and np.median(errors) < 0.15


def _place(shape_in_crop, predictor, record):
    """Mean shape (heatmap pixels of the crop) mapped into the record's image, through the same crop."""
    from nbutils.data.transforms import crop_affine, invert_affine, transform_points

    affine = crop_affine(record.center, record.scale, predictor.heatmap_size)
    return transform_points(shape_in_crop, invert_affine(affine))


def test_predict_crop_equals_evaluate(predictor, evaluation, smoke_root):
    dataset = engine.make_dataset(predictor.parameters, "common", train=False)
    for k, index in enumerate(evaluation["indices"]["common"]):
        record = dataset.records[index]
        face = predictor.predict_crop(dataset.load(index), record.center, record.scale)
        np.testing.assert_allclose(face.points, evaluation["predictions"]["common"][k], rtol=0, atol=1e-5)
        assert face.heatmaps.shape == (68, 16, 16) and face.peak.shape == (68,)
    # not a degenerate agreement: the predictions differ between landmarks and faces
    assert len(np.unique(evaluation["predictions"]["common"].reshape(-1, 2), axis=0)) > 20


def test_flip_test_equals_evaluate_with_flip(predictor):
    flipped = engine.evaluate(predictor.model, predictor.parameters, subsets=("common",), flip_test=True)
    dataset = engine.make_dataset(predictor.parameters, "common", train=False)
    index = int(flipped["indices"]["common"][0])
    record = dataset.records[index]
    face = predictor.predict_crop(dataset.load(index), record.center, record.scale, flip_test=True)
    np.testing.assert_allclose(face.points, flipped["predictions"]["common"][0], rtol=0, atol=1e-5)


def test_cli_box_writes_pts_and_image(run_dir, predictor, evaluation, smoke_root, tmp_path, capsys):
    record = load_records(smoke_root, "common")[int(evaluation["indices"]["common"][0])]
    box = ",".join(repr(v) for v in landmark_box(record.points))
    assert cli(["predict", str(run_dir), str(record.image_path), "--box", box, "--out", str(tmp_path)]) == 0
    stem = record.image_path.stem
    written = read_pts(tmp_path / f"{stem}_face0.pts")
    np.testing.assert_allclose(written, evaluation["predictions"]["common"][0], rtol=0, atol=1e-5)
    in_memory = predictor.predict_image(cv2.imread(str(record.image_path)), [landmark_box(record.points)])
    assert np.array_equal(written, in_memory[0].points)    # .pts keeps every digit
    annotated = cv2.imread(str(tmp_path / f"{stem}_landmarks.jpg"))
    assert annotated.shape == cv2.imread(str(record.image_path)).shape
    assert "1 face(s)" in capsys.readouterr().out


def test_video_frames(run_dir, predictor, smoke_root, tmp_path):
    record = load_records(smoke_root, "common")[0]
    image = cv2.imread(str(record.image_path))
    height, width = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (width, height))
    for shift in range(3):   # the face moves right by 4 px per frame
        writer.write(np.roll(image[:height, :width], 4 * shift, axis=1))
    writer.release()
    box = landmark_box(record.points)
    out = tmp_path / "out"
    assert cli(["predict", str(run_dir), str(video), "--box", ",".join(map(repr, box)), "--out", str(out)]) == 0
    capture = cv2.VideoCapture(str(video))
    for frame_index in range(3):
        ok, frame = capture.read()
        assert ok
        expected = predictor.predict_image(frame, [box])[0].points
        assert np.array_equal(read_pts(out / f"clip_f{frame_index:06d}_face0.pts"), expected)
    capture.release()
    assert sorted(p.name for p in out.glob("*.pts")) == [f"clip_f{i:06d}_face0.pts" for i in range(3)]
    annotated = cv2.VideoCapture(str(out / "clip_landmarks.avi"))
    assert int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    annotated.release()


def test_unreadable_input_exit_status(run_dir, smoke_root, tmp_path, capsys):
    record = load_records(smoke_root, "common")[0]
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "a_good.png").write_bytes(record.image_path.read_bytes())
    (folder / "b_broken.jpg").write_bytes(b"not an image")
    box = ",".join(map(repr, landmark_box(record.points)))
    assert cli(["predict", str(run_dir), str(folder), "--box", box, "--out", str(tmp_path / "out")]) == 1
    assert (tmp_path / "out" / "a_good_face0.pts").is_file()
    assert "b_broken.jpg" in capsys.readouterr().err


def test_run_folder_without_checkpoint_is_named(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"parameters": {"model": {"name": "hrnet"}}}))
    with pytest.raises(predict.RunFolderError, match=str(tmp_path)):
        predict.load_run(tmp_path)
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    assert cli(["predict", str(tmp_path), str(image), "--box", "1,1,20,20"]) == 2
    assert str(tmp_path) in capsys.readouterr().err


# ----------------------------------------------------------------------------- detection


@needs_detector
def test_blank_image_reports_no_face(run_dir, predictor, tmp_path, capsys):
    blank = np.full((160, 200, 3), 127, np.uint8)
    assert predictor.predict_image(blank) == []
    cv2.imwrite(str(tmp_path / "blank.png"), blank)
    out = tmp_path / "out"
    assert cli(["predict", str(run_dir), str(tmp_path / "blank.png"), "--out", str(out)]) == 0
    assert "no face found" in capsys.readouterr().out
    assert not list(out.glob("*.pts")) and (out / "blank_landmarks.jpg").is_file()


@needs_detector
def test_detector_crop_lands_on_the_annotated_face(smoke_root):
    detector = predict.FaceDetector()
    records = load_records(smoke_root, "common") + load_records(smoke_root, "test")
    detected = 0
    for record in records:
        boxes = detector.detect(cv2.imread(str(record.image_path)))
        if len(boxes) == 0:
            continue
        detected += 1
        center, scale = predict.box_to_crop(boxes[0], "haar")
        side = 200 * record.scale / 1.25
        assert np.linalg.norm(center - record.center) < 0.25 * side, record.source
        assert 0.7 < scale / record.scale < 1.3, record.source
    assert detected >= len(records) // 2
    # the documented constants are what calibration measures (on other faces than those they came from)
    measured = predict.calibrate_box_mapping(smoke_root, ("train",), limit=32, detector=detector)
    assert measured["matched"] >= 16
    assert measured["center_shift"] == pytest.approx(predict.HAAR_CENTER_SHIFT, abs=0.05)
    assert measured["box_ratio"] == pytest.approx(predict.HAAR_BOX_RATIO, abs=0.1)


# ----------------------------------------------------------------------------- export


def test_export_onnx_matches_torch(run_dir, predictor, smoke_root, tmp_path):
    pytest.importorskip("onnx", reason="optional dependency onnx not installed (pip install onnx onnxruntime)")
    report = predict.export_onnx(run_dir, tmp_path / "model.onnx")
    assert Path(report["path"]).is_file() and report["input_size"] == 64
    if report["max_abs_diff"] is None:
        pytest.skip("onnxruntime not installed: export written but not verified")
    assert report["max_abs_diff"] <= 1e-4 * max(1.0, report["max_abs_output"])
    import onnxruntime

    # the exported graph decodes a real crop to the same landmarks as PyTorch
    record = load_records(smoke_root, "common")[0]
    image = cv2.imread(str(record.image_path))
    face = predictor.predict_crop(image, record.center, record.scale)
    from nbutils.data.transforms import crop_affine, normalize_image, warp_image
    crop = warp_image(image, crop_affine(record.center, record.scale, 64), 64)
    batch = normalize_image(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB))[None]
    session = onnxruntime.InferenceSession(report["path"], providers=["CPUExecutionProvider"])
    heatmaps = torch.from_numpy(session.run(None, {"image": batch})[0])
    from nbutils import metrics
    points = metrics.heatmap_to_image(metrics.decode_heatmaps(heatmaps), torch.from_numpy(face.affine[None]))
    np.testing.assert_allclose(points[0].numpy(), face.points, rtol=0, atol=1e-5)


def test_export_without_onnx_says_how_to_install(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)   # makes `import onnx` raise ImportError
    with pytest.raises(ImportError, match="pip install onnx"):
        predict.export_onnx(run_dir, tmp_path / "model.onnx")
    assert cli(["export", str(run_dir), "--onnx", str(tmp_path / "model.onnx")]) == 2
    assert "pip install onnx" in capsys.readouterr().err and not (tmp_path / "model.onnx").exists()


# ----------------------------------------------------------------------------- explorer


def test_pose_buckets_and_template():
    assert explore.pose_bucket([0.0, -0.05, 0.1, -0.29, 0.3, -0.9]).tolist() == \
        ["frontal", "frontal", "turned", "turned", "profile", "profile"]
    shape = np.zeros((68, 2))
    shape[36], shape[45], shape[30] = (10, 10), (30, 10), (20, 20)
    moved = shape * 2 + 5                          # same face, twice as large, shifted
    template = explore.mean_template(np.stack([shape, moved]))
    assert template[36].tolist() == [-0.5, 0.0] and template[45].tolist() == [0.5, 0.0]
    assert template[30].tolist() == [0.0, 0.5]


def test_exploration_matches_evaluate(run_dir, evaluation):
    faces = explore.explore(run_dir, "common", max_faces=4)
    np.testing.assert_allclose(faces.nmes, evaluation["nmes"]["common"], rtol=0, atol=1e-9)
    order = faces.order()
    assert np.all(np.diff(faces.nmes[order]) <= 0)
    np.testing.assert_allclose(faces.point_errors.mean(axis=1), faces.nmes, rtol=1e-12)
    index = int(order[0])
    view = faces.view(index)
    assert view["crop"].shape == (64, 64, 3) and faces.heatmaps(index).shape == (68, 16, 16)


def test_explore_notebook_runs_headless(run_dir, tmp_path):
    papermill = pytest.importorskip("papermill")
    import nbformat

    out = tmp_path / "explore.ipynb"
    papermill.execute_notebook(str(REPO_ROOT / "notebooks" / "explore.ipynb"), str(out), kernel_name="python3",
                               parameters={"run_dir": str(run_dir), "subset": "common", "n_worst": 4},
                               progress_bar=False, cwd=str(tmp_path), execution_timeout=300)
    notebook = nbformat.read(str(out), as_version=4)
    images = sum("image/png" in output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
                 for output in cell.get("outputs", []))
    assert images >= 5    # browser, gallery, template, comparison, own-image detection (or its message)


def test_missing_detector_is_a_clear_error_and_box_still_works(run_dir, smoke_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path))   # an OpenCV without the cascade files
    assert not predict.detector_available()
    record = load_records(smoke_root, "common")[0]
    assert cli(["predict", str(run_dir), str(record.image_path), "--out", str(tmp_path / "a")]) == 2
    error = capsys.readouterr().err
    assert "opencv-contrib-python-headless" in error and "--box" in error
    box = ",".join(map(repr, landmark_box(record.points)))
    assert cli(["predict", str(run_dir), str(record.image_path), "--box", box, "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / f"{record.image_path.stem}_face0.pts").is_file()
