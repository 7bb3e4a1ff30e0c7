"""Landmarks on your own images and videos with any trained run, and ONNX export.

    predictor = Predictor.from_run("outputs/attention/se-r16-s111-cpu")   # best.pt, else last.pt
    faces = predictor.predict_image(cv2.imread("me.jpg"))                 # detect + crop + decode
    faces[0].points                                                        # (68, 2) original pixels

The geometry is the training/evaluation geometry, through the same functions: a face is a crop
centre (2,) and crop scale (crop box side = 200 * scale original pixels), the crop is
`transforms.crop_affine` + `transforms.warp_image`, heatmaps are decoded by
`metrics.decode_heatmaps` and mapped back by `metrics.heatmap_to_image`. So `predict_crop(image,
record.center, record.scale)` returns exactly what `engine.evaluate` returns for that record.

Where a face is comes from one of two boxes (x0, y0, x1, y1 in original pixels):

* a *face box* (kind "face", what `--box` takes): the tight box around the face's 68 landmarks,
  as 300W's annotations give it. Crop = the 300W convention: centre = box centre,
  scale = max(w, h) / 200 x 1.25.
* a *detector box* (kind "haar"): OpenCV's frontal-face Haar cascade. Its square box sits higher
  and is a little larger than the landmark box (it spans brows to mouth, ears excluded, while the
  landmark box reaches the chin), so it is first mapped onto a landmark box:
      centre = Haar centre + (HAAR_CENTER_SHIFT[0], HAAR_CENTER_SHIFT[1]) x Haar side,
      landmark box side = HAAR_BOX_RATIO x Haar side,
  and then the 300W convention applies. The constants are medians over 320 synth300w (cpu, seed 0)
  training faces where the detector box contained the landmark-box centre (`calibrate_box_mapping`;
  rerun it on real 300W to recalibrate). On held-out synth300w faces the mapped crop centre is
  off by a median 6-7 % of the box side and the scale by +-10 % (10th-90th percentile), well
  inside the +-25 % scale augmentation the networks are trained with.

Detector: `haarcascade_frontalface_default.xml` from `cv2.data.haarcascades`. OpenCV 5 moved the
Haar cascades (class and XML files) out of `opencv-python-headless` into
`opencv-contrib-python-headless`; without them detection raises DetectorUnavailable with that
advice, and a `--box` still works. Nothing is downloaded at run time.

CLI (`python -m nbutils predict RUN_DIR INPUT [--out DIR] [--box x0,y0,x1,y1] [--flip-test]`):
INPUT is an image, a video (one result per frame) or a folder of both. For each image
`<stem>_landmarks.jpg` (the image with points and box drawn) and `<stem>_face<k>.pts` per face are
written; for a video `<stem>_f<frame:06d>_face<k>.pts` per frame and face and the annotated video
`<stem>_landmarks.avi` (MJPG). An image without a detected face gets a message and no `.pts`.
Exit status: 0 when every input was read (whether or not it had faces), 1 when some input could
not be read (the others are still processed), 2 for bad arguments (run folder, box, missing path).
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from nbutils import metrics
from nbutils.data.formats import CROP_SCALE_FACTOR, IMAGE_EXTENSIONS, write_pts
from nbutils.data.transforms import CROP_BOX_PIXELS, crop_affine, normalize_image, scale_affine, warp_image

log = logging.getLogger(__name__)

CHECKPOINT_NAMES = ("best.pt", "last.pt")   # preference order inside a run folder
PARAMS_FILE = "params.yaml"
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")

DETECTOR_FILE = "haarcascade_frontalface_default.xml"
# Detector box -> landmark box (see the module docstring and calibrate_box_mapping).
HAAR_CENTER_SHIFT = (0.011, 0.169)   # landmark-box centre minus Haar-box centre, in Haar box sides (x, y)
HAAR_BOX_RATIO = 0.915               # landmark-box side / Haar box side
# detectMultiScale settings (image histogram-equalised first, as usual for Haar features).
HAAR_SCALE_FACTOR = 1.1
HAAR_MIN_NEIGHBORS = 3
HAAR_MIN_SIZE_FRACTION = 0.1         # smallest face side as a fraction of the image's shorter side

# Model-config keys that load weights from elsewhere when a model is built: at inference the
# checkpoint provides every weight, so these are switched off (their files need not exist here).
_WEIGHT_SOURCE_KEYS = {"init": "normal", "cifar_checkpoint": None, "pretrained_stem": None, "pretrained": None}


class RunFolderError(FileNotFoundError):
    """A run folder lacks what inference needs (parameters or checkpoint); the message names it."""


class DetectorUnavailable(RuntimeError):
    """The installed OpenCV has no Haar cascade face detector."""


# ----------------------------------------------------------------------------- run folders

def find_checkpoint(run_dir) -> Path:
    """run_dir/best.pt, else run_dir/last.pt; RunFolderError naming the folder when neither exists."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} does not exist")
    for name in CHECKPOINT_NAMES:
        if (run_dir / name).is_file():
            return run_dir / name
    raise RunFolderError(f"run folder {run_dir} has no checkpoint ({' or '.join(CHECKPOINT_NAMES)}): "
                         f"has the run finished at least one epoch?")


def read_run_parameters(run_dir, checkpoint: dict | None = None) -> dict:
    """The run's parameters {run_dir, data, model, train, ...} with defaults filled in.

    From run_dir/params.yaml (`parameters`, written by the runner); a folder trained by hand (a
    notebook opened with its own run_dir) has none, and then the `cfg` that `fit` stores in every
    checkpoint is used. RunFolderError naming the folder when neither is there.
    """
    from nbutils.engine import with_defaults

    run_dir = Path(run_dir)
    path = run_dir / PARAMS_FILE
    if path.is_file():
        try:
            content = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise RunFolderError(f"{path}: not valid YAML ({error})") from error
        parameters = content.get("parameters") if isinstance(content, dict) else None
        if not isinstance(parameters, dict) or not isinstance(parameters.get("model"), dict):
            raise RunFolderError(f"{path}: expected a 'parameters' mapping with a 'model' section")
        return with_defaults(parameters)
    if checkpoint is not None and isinstance(checkpoint.get("cfg"), dict):
        return with_defaults(checkpoint["cfg"])
    raise RunFolderError(f"run folder {run_dir} has neither {PARAMS_FILE} nor a checkpoint that records its "
                         f"parameters: cannot tell which architecture to build")


def _inference_model_cfg(model_cfg: dict, run_dir: Path) -> dict:
    """The model section with weight sources switched off and a relative `arch` file resolved."""
    cfg = dict(model_cfg)
    for key, neutral in _WEIGHT_SOURCE_KEYS.items():
        if key in cfg:
            cfg[key] = neutral
    arch = cfg.get("arch")
    if isinstance(arch, str) and not Path(arch).expanduser().is_absolute() and not Path(arch).exists() \
            and (run_dir / arch).exists():
        cfg["arch"] = str(run_dir / arch)
    return cfg


def load_run(run_dir, checkpoint: str | Path | None = None, device="cpu"):
    """(model in eval mode on `device`, run parameters, checkpoint path) of a run folder.

    The architecture comes from the run's parameters (`model` section, via models.build_model;
    NAS families reference their derived-architecture JSON there), the weights from `checkpoint`
    (default best.pt, else last.pt).
    """
    from nbutils.engine import load_checkpoint
    from nbutils.models import build_model

    run_dir = Path(run_dir)
    checkpoint_path = Path(checkpoint) if checkpoint is not None else find_checkpoint(run_dir)
    state = load_checkpoint(checkpoint_path)
    if "model" not in state:
        raise RunFolderError(f"{checkpoint_path}: checkpoint has no 'model' weights (keys: {sorted(state)})")
    parameters = read_run_parameters(run_dir, state)
    model = build_model(_inference_model_cfg(parameters["model"], run_dir))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise RunFolderError(f"{checkpoint_path}: weights do not fit the architecture of {run_dir / PARAMS_FILE}: "
                             f"{error}") from error
    return model.to(device).eval(), parameters, checkpoint_path


# ----------------------------------------------------------------------------- boxes and detection

def box_to_crop(box, kind: str = "face") -> tuple[np.ndarray, float]:
    """(crop centre (2,) original pixels, crop scale) of a face box (x0, y0, x1, y1 original pixels).

    kind "face": a landmark-style face box (300W convention: centre, max(w, h) / 200 x 1.25);
    kind "haar": a Haar detector box, first mapped onto a landmark box with the calibrated
    HAAR_CENTER_SHIFT / HAAR_BOX_RATIO (see the module docstring).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    width, height = x1 - x0, y1 - y0
    if not (width > 0 and height > 0):
        raise ValueError(f"face box {tuple(box)}: need x1 > x0 and y1 > y0")
    if kind == "face":
        center = np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])
        return center, max(width, height) / CROP_BOX_PIXELS * CROP_SCALE_FACTOR
    if kind == "haar":
        side = max(width, height)
        center = np.array([(x0 + x1) / 2.0 + HAAR_CENTER_SHIFT[0] * side,
                           (y0 + y1) / 2.0 + HAAR_CENTER_SHIFT[1] * side])
        return center, HAAR_BOX_RATIO * side / CROP_BOX_PIXELS * CROP_SCALE_FACTOR
    raise ValueError(f"box kind {kind!r}: expected 'face' or 'haar'")


def parse_box(text: str) -> tuple[float, float, float, float]:
    """'x0,y0,x1,y1' (original pixels) -> 4 floats; ValueError naming the text when malformed."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or not all(np.isfinite(values)) or values[2] <= values[0] or values[3] <= values[1]:
        raise ValueError(f"--box {text!r}: expected x0,y0,x1,y1 in pixels with x1 > x0 and y1 > y0")
    return values


class FaceDetector:
    """OpenCV's frontal-face Haar cascade. `detect(image_bgr)` -> (M, 4) float boxes x0, y0, x1, y1.

    Boxes come largest first. Raises DetectorUnavailable when the installed OpenCV has no cascades.
    """

    def __init__(self, min_size_fraction: float = HAAR_MIN_SIZE_FRACTION, min_neighbors: int = HAAR_MIN_NEIGHBORS,
                 scale_factor: float = HAAR_SCALE_FACTOR):
        folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
        path = Path(folder) / DETECTOR_FILE if folder else None
        if not hasattr(cv2, "CascadeClassifier") or path is None or not path.is_file():
            raise DetectorUnavailable(
                f"OpenCV {cv2.__version__} here has no Haar cascade face detector ({DETECTOR_FILE}); OpenCV 5 ships "
                f"it in opencv-contrib-python-headless (pip install opencv-contrib-python-headless in place of "
                f"opencv-python-headless), or give the face box with --box x0,y0,x1,y1")
        self.path = path
        self.classifier = cv2.CascadeClassifier(str(path))
        if self.classifier.empty():
            raise DetectorUnavailable(f"{path}: OpenCV could not load the cascade")
        self.min_size_fraction, self.min_neighbors, self.scale_factor = min_size_fraction, min_neighbors, scale_factor

    def detect(self, image_bgr: np.ndarray) -> np.ndarray:
        gray = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY) if image_bgr.ndim == 3 else image_bgr
        gray = cv2.equalizeHist(gray)
        side = max(8, int(self.min_size_fraction * min(gray.shape[:2])))
        found = self.classifier.detectMultiScale(gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                                 minSize=(side, side))
        boxes = np.asarray(found, dtype=np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]                     # (x, y, w, h) -> (x0, y0, x1, y1)
        return boxes[np.argsort(-(boxes[:, 2] - boxes[:, 0]), kind="stable")]


def detector_available() -> bool:
    """Whether the installed OpenCV ships the Haar cascade face detector."""
    try:
        FaceDetector()
    except DetectorUnavailable:
        return False
    return True


def calibrate_box_mapping(root, subsets=("train",), limit: int | None = 400,
                          detector: FaceDetector | None = None) -> dict:
    """Measure the Haar box -> landmark box mapping on annotated faces (synth300w or real 300W).

    For each face whose detector box contains the centre of its landmark box (the nearest such
    box when several do), records (landmark centre - Haar centre) / Haar side and landmark side /
    Haar side. Returns {"center_shift": (x, y) medians, "box_ratio": median, "matched": n,
    "faces": n looked at, "center_shift_p10_p90", "box_ratio_p10_p90"}: the first two are the
    values of HAAR_CENTER_SHIFT / HAAR_BOX_RATIO.
    """
    from nbutils.data import face_box, load_records, read_image

    detector = detector or FaceDetector()
    shifts, ratios, faces = [], [], 0
    for subset in subsets:
        for record in load_records(root, subset)[:limit]:
            faces += 1
            center, file_scale = face_box(record.points)
            boxes = detector.detect(read_image(record.image_path))
            inside = [b for b in boxes if b[0] <= center[0] <= b[2] and b[1] <= center[1] <= b[3]]
            if not inside:
                continue
            box = min(inside, key=lambda b: np.hypot((b[0] + b[2]) / 2 - center[0], (b[1] + b[3]) / 2 - center[1]))
            side = box[2] - box[0]
            shifts.append((center - (box[:2] + box[2:]) / 2) / side)
            ratios.append(file_scale * CROP_BOX_PIXELS / side)
    if not ratios:
        raise ValueError(f"{root}: the detector found none of the {faces} faces of {subsets}: nothing to calibrate")
    shifts, ratios = np.asarray(shifts), np.asarray(ratios)
    return {"center_shift": tuple(float(v) for v in np.median(shifts, axis=0)), "box_ratio": float(np.median(ratios)),
            "matched": int(len(ratios)), "faces": faces,
            "center_shift_p10_p90": np.percentile(shifts, [10, 90], axis=0).T.round(4).tolist(),
            "box_ratio_p10_p90": np.percentile(ratios, [10, 90]).round(4).tolist()}


# ----------------------------------------------------------------------------- prediction

@dataclass
class FacePrediction:
    """One face found in one image.

    points: (68, 2) float64 landmarks in original-image continuous pixels.
    center, scale: the crop (centre in original pixels; crop box side = 200 * scale pixels).
    box: (4,) x0, y0, x1, y1 original pixels of the face/detector box it came from (None: given as a crop).
    box_kind: "face", "haar" or "crop".
    heatmaps: (68, H, H) float32 network output (after flip averaging), heatmap pixels.
    peak: (68,) float32 maximum of each heatmap: a rough per-point confidence (targets peak at 1).
    affine: (2, 3) float64 original -> heatmap continuous pixels.
    """
    points: np.ndarray
    center: np.ndarray
    scale: float
    box: np.ndarray | None = None
    box_kind: str = "crop"
    heatmaps: np.ndarray | None = field(default=None, repr=False)
    peak: np.ndarray | None = field(default=None, repr=False)
    affine: np.ndarray | None = field(default=None, repr=False)


class Predictor:
    """A trained landmark network with its crop geometry; see the module docstring.

    model: any landmark model (images [N, 3, S, S] -> heatmaps [N, K, H, H]), put in eval mode.
    input_size, heatmap_size: S and H of the run (train.input_size / train.heatmap_size).
    flip_test: default for every call: average with the mirrored crop's heatmaps (as engine.predict).
    fast: CPU bfloat16 autocast (train.fast), through the engine's precision policy.
    """

    def __init__(self, model: torch.nn.Module, input_size: int, heatmap_size: int, flip_test: bool = False,
                 fast: bool = False, detector: FaceDetector | None = None):
        from nbutils.engine import precision_policy

        self.model = model.eval()
        self.input_size, self.heatmap_size = int(input_size), int(heatmap_size)
        self.flip_test = bool(flip_test)
        self.device = next(model.parameters()).device
        self.precision = precision_policy(self.device, fast=fast)
        self._detector = detector
        self.parameters: dict = {}
        self.checkpoint: Path | None = None

    @classmethod
    def from_run(cls, run_dir, checkpoint=None, device="cpu", flip_test: bool | None = None) -> "Predictor":
        """Load a run folder (see load_run); flip_test None = the run's train.flip_test."""
        model, parameters, checkpoint_path = load_run(run_dir, checkpoint, device)
        train = parameters["train"]
        predictor = cls(model, train["input_size"], train["heatmap_size"],
                        flip_test=bool(train["flip_test"]) if flip_test is None else flip_test,
                        fast=bool(train.get("fast", False)))
        predictor.parameters, predictor.checkpoint = parameters, checkpoint_path
        return predictor

    @property
    def detector(self) -> FaceDetector:
        """The Haar face detector, created on first use (DetectorUnavailable when OpenCV has none)."""
        if self._detector is None:
            self._detector = FaceDetector()
        return self._detector

    @torch.inference_mode()
    def predict_crops(self, image_bgr: np.ndarray, centers, scales,
                      flip_test: bool | None = None) -> list[FacePrediction]:
        """Landmarks of the faces at crops (centers (M, 2) original pixels, scales (M,)) of one BGR image.

        The crop and decode are those of training/evaluation (module docstring), batched over faces.
        """
        flip_test = self.flip_test if flip_test is None else bool(flip_test)
        image_bgr = _as_bgr(image_bgr)
        centers = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
        scales = np.asarray(scales, dtype=np.float64).reshape(-1)
        if len(centers) != len(scales):
            raise ValueError(f"predict_crops: {len(centers)} centres but {len(scales)} scales")
        if len(centers) == 0:
            return []
        crops, affines = [], []
        for center, scale in zip(centers, scales):
            to_input = crop_affine(center, float(scale), self.input_size)
            crop = warp_image(image_bgr, to_input, self.input_size)
            crops.append(normalize_image(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)))
            affines.append(scale_affine(to_input, self.heatmap_size / self.input_size))
        images = torch.from_numpy(np.stack(crops)).to(self.device)
        images = images.contiguous(memory_format=self.precision.memory_format)
        with self.precision.autocast(self.device):
            heatmaps = self.model(images).float()
            if flip_test:
                mirrored = self.model(torch.flip(images, dims=(-1,))).float()
                heatmaps = 0.5 * (heatmaps + metrics.flip_heatmaps(mirrored))
        affine = torch.from_numpy(np.stack(affines))
        points = metrics.heatmap_to_image(metrics.decode_heatmaps(heatmaps).cpu(), affine).numpy()
        heatmaps = heatmaps.cpu().numpy()
        peaks = heatmaps.reshape(*heatmaps.shape[:2], -1).max(axis=-1)
        return [FacePrediction(points=points[i], center=centers[i].copy(), scale=float(scales[i]),
                               heatmaps=heatmaps[i], peak=peaks[i], affine=affines[i]) for i in range(len(centers))]

    def predict_crop(self, image_bgr: np.ndarray, center, scale: float,
                     flip_test: bool | None = None) -> FacePrediction:
        """Landmarks of one face given its crop (centre (2,) original pixels, scale): a dataset record's geometry."""
        return self.predict_crops(image_bgr, [center], [scale], flip_test)[0]

    def predict_boxes(self, image_bgr: np.ndarray, boxes, kind: str = "face",
                      flip_test: bool | None = None) -> list[FacePrediction]:
        """Landmarks of the faces in `boxes` ((M, 4) x0, y0, x1, y1 original pixels) of `kind` (see box_to_crop)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        crops = [box_to_crop(box, kind) for box in boxes]
        faces = self.predict_crops(image_bgr, [c for c, _ in crops], [s for _, s in crops], flip_test)
        for face, box in zip(faces, boxes):
            face.box, face.box_kind = box.copy(), kind
        return faces

    def predict_image(self, image_bgr: np.ndarray, boxes=None, flip_test: bool | None = None) -> list[FacePrediction]:
        """Every face of an image: `boxes` (face boxes, kind "face") or, when None, the Haar detector's boxes.

        Returns [] when the detector finds no face.
        """
        if boxes is not None:
            return self.predict_boxes(image_bgr, boxes, "face", flip_test)
        image_bgr = _as_bgr(image_bgr)
        return self.predict_boxes(image_bgr, self.detector.detect(image_bgr), "haar", flip_test)


def _as_bgr(image: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 BGR from a BGR/BGRA/grayscale array (as cv2 reads them)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image, got shape {image.shape}")


# ----------------------------------------------------------------------------- drawing and files

# BGR colours per iBUG-68 part (jaw, brows, nose, eyes, mouth).
_PART_SLICES = ((0, 17), (17, 27), (27, 36), (36, 48), (48, 68))
_PART_BGR = ((13, 85, 230), (84, 163, 49), (189, 130, 49), (177, 107, 117), (38, 45, 222))


def draw_faces(image_bgr: np.ndarray, faces: list[FacePrediction]) -> np.ndarray:
    """A copy of the image with each face's box and 68 points drawn (points at their sub-pixel spots)."""
    canvas = _as_bgr(image_bgr).copy()
    radius = max(1, round(min(canvas.shape[:2]) / 200))
    subpixel = 16  # cv2 drawing with shift=4 takes coordinates in 1/16 pixel
    for number, face in enumerate(faces):
        if face.box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in face.box)
            cv2.rectangle(canvas, (x0, y0), (x1, y1), (0, 255, 255), max(1, radius // 2))
            cv2.putText(canvas, str(number), (x0, max(10, y0 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 255), 1)
        # continuous coords -> cv2's pixel-centre-at-integer coords
        drawn = np.round((face.points - 0.5) * subpixel).astype(np.int64)
        for (start, stop), colour in zip(_PART_SLICES, _PART_BGR):
            for x, y in drawn[start:stop]:
                cv2.circle(canvas, (int(x), int(y)), radius * subpixel, colour, -1, cv2.LINE_AA, shift=4)
    return canvas


def _atomic_image_write(path: Path, image: np.ndarray) -> None:
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        if not cv2.imwrite(tmp_name, image):
            raise OSError(f"{path}: OpenCV could not write the image")
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def _atomic_pts_write(path: Path, points: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write_pts(tmp, points)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_face_files(out_dir: Path, stem: str, faces: list[FacePrediction]) -> list[Path]:
    """Write `<stem>_face<k>.pts` for each face into out_dir; returns their paths."""
    paths = []
    for k, face in enumerate(faces):
        path = out_dir / f"{stem}_face{k}.pts"
        _atomic_pts_write(path, face.points)
        paths.append(path)
    return paths


def list_inputs(path) -> list[Path]:
    """Images and videos to process: the file itself, or a folder's images and videos (sorted, not recursive)."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS:
            raise ValueError(f"{path}: not an image ({', '.join(IMAGE_EXTENSIONS)}) or video "
                             f"({', '.join(VIDEO_EXTENSIONS)}) file")
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
        if not found:
            raise ValueError(f"{path}: folder holds no image or video files")
        return found
    raise FileNotFoundError(f"{path}: no such image, video or folder")


def _describe(faces: list[FacePrediction], given_box: bool) -> str:
    if faces:
        return f"{len(faces)} face(s)"
    return "no face found" + ("" if given_box else " by the Haar detector; give its box with --box x0,y0,x1,y1")


def process_image(predictor: Predictor, path: Path, out_dir: Path, boxes=None, flip_test=None,
                  echo=print) -> list[FacePrediction]:
    """Predict one image file, write its annotated copy and .pts files, echo one line about it."""
    from nbutils.data import read_image

    image = read_image(path)
    faces = predictor.predict_image(image, boxes, flip_test)
    _atomic_image_write(out_dir / f"{path.stem}_landmarks.jpg", draw_faces(image, faces))
    written = write_face_files(out_dir, path.stem, faces)
    echo(f"{path}: {_describe(faces, boxes is not None)}" + (f" -> {written[0].parent}/{path.stem}_face*.pts"
                                                              if written else ""))
    return faces


def process_video(predictor: Predictor, path: Path, out_dir: Path, boxes=None, flip_test=None, every: int = 1,
                  echo=print) -> dict[int, list[FacePrediction]]:
    """Predict every `every`-th frame of a video: `<stem>_f<frame:06d>_face<k>.pts` and `<stem>_landmarks.avi`.

    Returns {frame index: faces}. Raises ValueError naming the file when it cannot be opened.
    """
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"{path}: OpenCV cannot open this video")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    video_path = out_dir / f"{path.stem}_landmarks.avi"
    tmp_video = out_dir / f".{path.stem}_landmarks.{os.getpid()}.avi"
    writer, results, index, empty = None, {}, 0, 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if index % every == 0:
                faces = predictor.predict_image(frame, boxes, flip_test)
                write_face_files(out_dir, f"{path.stem}_f{index:06d}", faces)
                results[index] = faces
                empty += not faces
                if writer is None:
                    writer = cv2.VideoWriter(str(tmp_video), cv2.VideoWriter_fourcc(*"MJPG"), fps / every,
                                             (frame.shape[1], frame.shape[0]))
                writer.write(draw_faces(frame, faces))
            index += 1
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if writer is not None:
        os.replace(tmp_video, video_path)
    if not results:
        raise ValueError(f"{path}: no frame could be read from this video")
    faces_found = sum(len(f) for f in results.values())
    echo(f"{path}: {len(results)} frame(s), {faces_found} face(s)"
         + (f"; {empty} frame(s) without a face" if empty else "") + f" -> {video_path}")
    return results


def predict_command(argv: list) -> int:
    """`python -m nbutils predict ...` (see the module docstring for files and exit status)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m nbutils predict",
        description="Predict 68 landmarks with a trained run on an image, a video or a folder of them. Writes "
                    "<stem>_landmarks.jpg and <stem>_face<k>.pts per image (videos: <stem>_f<frame>_face<k>.pts "
                    "and <stem>_landmarks.avi). Exit 0 when every input was read, 1 when some could not be.")
    parser.add_argument("run_dir", help="run folder (params.yaml + best.pt or last.pt)")
    parser.add_argument("input", help="image, video or folder")
    parser.add_argument("--out", help="output folder (default <input folder>/landmarks)")
    parser.add_argument("--box", help="face box x0,y0,x1,y1 in pixels (tight around the face, as 300W's "
                                      "boxes); skips detection and applies to every image/frame")
    parser.add_argument("--flip-test", action="store_true", help="average with the mirrored crop's heatmaps")
    parser.add_argument("--checkpoint", help="a checkpoint file to use instead of best.pt / last.pt")
    parser.add_argument("--every", type=int, default=1, help="videos: process every N-th frame (default 1)")
    args = parser.parse_args(argv)
    try:
        boxes = [parse_box(args.box)] if args.box else None
        if args.every < 1:
            raise ValueError(f"--every {args.every}: expected an integer >= 1")
        inputs = list_inputs(args.input)
        predictor = Predictor.from_run(args.run_dir, args.checkpoint, flip_test=args.flip_test or None)
        if boxes is None:
            detector = predictor.detector   # created now, so that a missing detector fails before any work
            log.debug("face detector: %s", detector.path)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    source = Path(args.input)
    out_dir = Path(args.out) if args.out else (source if source.is_dir() else source.parent) / "landmarks"
    out_dir.mkdir(parents=True, exist_ok=True)
    unreadable = 0
    for path in inputs:
        try:
            if path.suffix.lower() in VIDEO_EXTENSIONS:
                process_video(predictor, path, out_dir, boxes, every=args.every)
            else:
                process_image(predictor, path, out_dir, boxes)
        except ValueError as error:   # DataFormatError (unreadable image) is a ValueError too
            unreadable += 1
            print(f"{path}: skipped: {error}", file=sys.stderr)
    print(f"{len(inputs) - unreadable}/{len(inputs)} input(s) processed; results in {out_dir}")
    return 1 if unreadable else 0


# ----------------------------------------------------------------------------- ONNX export

def export_onnx(run_dir, onnx_path, checkpoint=None, verify: bool = True, opset: int = 17) -> dict:
    """Export a run's network to ONNX (input "image" [N, 3, S, S] ImageNet-normalised RGB crops, output
    "heatmaps" [N, 68, H, H]; dynamic batch), written atomically. Crop and decode stay outside the graph:
    use the same crop_affine / decode_heatmaps as here.

    With `verify` and onnxruntime installed, runs a fixed random batch of 2 through both and reports the
    largest absolute heatmap difference. Returns {path, input_size, heatmap_size, opset, max_abs_diff
    (None when not verified), max_abs_output, onnxruntime (version or None)}.
    Raises ImportError with the install command when the optional `onnx` package is missing.
    """
    try:
        import onnx
    except ImportError as error:
        raise ImportError("ONNX export needs the optional dependency onnx: pip install onnx onnxruntime "
                          "(or pip install -e '.[export]')") from error
    predictor = Predictor.from_run(run_dir, checkpoint)
    model, size = predictor.model, predictor.input_size
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32))
    handle, tmp_name = tempfile.mkstemp(prefix=f".{onnx_path.name}.", suffix=".tmp", dir=onnx_path.parent)
    os.close(handle)
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter (no onnxscript needed) warns about its age and about shape checks
            # that it freezes: spatial sizes are fixed by the run, only the batch is dynamic.
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), tmp_name, input_names=["image"], output_names=["heatmaps"],
                              dynamic_axes={"image": {0: "batch"}, "heatmaps": {0: "batch"}}, opset_version=opset,
                              dynamo=False)
        exported = onnx.load(tmp_name)
        onnx.checker.check_model(exported)
        onnx.helper.set_model_props(exported, {
            "input_size": str(size), "heatmap_size": str(predictor.heatmap_size),
            "num_landmarks": str(exported.graph.output[0].type.tensor_type.shape.dim[1].dim_value),
            "normalisation": "RGB, ImageNet mean/std", "source": str(predictor.checkpoint)})
        onnx.save(exported, tmp_name)
        os.replace(tmp_name, onnx_path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    report = {"path": str(onnx_path), "input_size": size, "heatmap_size": predictor.heatmap_size, "opset": opset,
              "max_abs_diff": None, "max_abs_output": None, "onnxruntime": None}
    if verify:
        try:
            import onnxruntime
        except ImportError:
            return report
        session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        with torch.inference_mode():
            expected = model(example).numpy()
        produced = session.run(None, {"image": example.numpy()})[0]
        report.update(max_abs_diff=float(np.abs(produced - expected).max()),
                      max_abs_output=float(np.abs(expected).max()), onnxruntime=onnxruntime.__version__)
    return report


def export_command(argv: list) -> int:
    """`python -m nbutils export RUN_DIR --onnx OUT.onnx`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m nbutils export",
                                     description="Export a run's network (best.pt, else last.pt) to ONNX and "
                                                 "check it against PyTorch with ONNX Runtime when installed.")
    parser.add_argument("run_dir")
    parser.add_argument("--onnx", required=True, help="output .onnx file")
    parser.add_argument("--checkpoint", help="a checkpoint file to use instead of best.pt / last.pt")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args(argv)
    try:
        report = export_onnx(args.run_dir, args.onnx, args.checkpoint, opset=args.opset)
    except (ImportError, FileNotFoundError, RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {report['path']} (input 1x3x{report['input_size']}x{report['input_size']} -> heatmaps "
          f"{report['heatmap_size']}x{report['heatmap_size']}, opset {report['opset']})")
    if report["max_abs_diff"] is None:
        print("not verified: onnxruntime is not installed (pip install onnxruntime)")
    else:
        print(f"onnxruntime {report['onnxruntime']}: max |onnx - torch| = {report['max_abs_diff']:.3g} "
              f"(max |heatmap| {report['max_abs_output']:.3g})")
    return 0
