"""Face detectors that return boxes and the 5 landmarks the alignment needs.

Two detectors, one interface (`detect(img) -> list[Face]`):

- `RetinaFaceDetector`: facexlib's RetinaFace-ResNet50, what DifFace, GFPGAN and CodeFormer
  use. Accurate landmarks. Its weights come from facexlib's release: found on this machine,
  or fetched into bfr's cache where downloads are on and the release answers (never offline).
- `HaarDetector`: OpenCV's Viola–Jones frontal-face and eye cascades (no neural weights;
  the XML files ship with opencv-python 4 in cv2.data.haarcascades). The eye centres give
  the in-plane roll and scale; nose and mouth are placed from the mean face shape.
  Coarser (see `HaarDetector` for measured errors), but always there.

`get_detector("auto")` picks RetinaFace when it can and says why not otherwise.
`facexlib_weights` is how every facexlib network (RetinaFace, ParseNet, ArcFace) is found.

Faces come back sorted largest first (by eye distance); pass order="left_to_right" to sort
by the x of the box centre instead.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from bfr.errors import InputError, WeightsUnavailableError
from bfr.faces.align import inverse_affine, transform_points, umeyama, warp_image
from bfr.weights import CATALOG, FACEXLIB_NETWORKS, WeightSpec, load_fetched
from bfr.weights.hub import fetch_optional, find_in, optional_status, unavailable_error

RETINAFACE_FILE = "detection_Resnet50_Final.pth"
FACE_CASCADE = "haarcascade_frontalface_default.xml"
EYE_CASCADE = "haarcascade_eye.xml"
HOW_TO_GET_CASCADES = (
    "OpenCV's Haar cascades ship with opencv-python<5 (in cv2.data.haarcascades; OpenCV 5 "
    "dropped them): install it with `pip install \"opencv-python>=4.8,<5\"`."
)


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face in image pixel coordinates.

    box: (x0, y0, x1, y1). landmarks: (5, 2) float, order left eye, right eye, nose,
    left mouth corner, right mouth corner (image left/right). score: the detector's
    confidence — a probability for RetinaFace, the number of merged cascade hits for Haar.
    """

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def eye_distance(self) -> float:
        """Distance between the eye centres, in pixels: the face-size measure used for filtering."""
        return float(np.linalg.norm(self.landmarks[1] - self.landmarks[0]))

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (0.5 * (x0 + x1), 0.5 * (y0 + y1))


class FaceDetector(Protocol):
    """What the pipeline needs from a detector."""

    name: str
    reason: str  # why this detector was chosen over RetinaFace ("" for RetinaFace itself)

    def detect(
        self, img: np.ndarray, *, only_center_face: bool = False, max_faces: int | None = None, order: str = "size"
    ) -> list[Face]: ...


def check_image(img: np.ndarray) -> np.ndarray:
    """Return `img` as float32 HWC RGB in [0, 1], or raise InputError saying what is wrong."""
    if not isinstance(img, np.ndarray):
        raise InputError(f"expected a numpy image, got {type(img).__name__}")
    if img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"expected an H×W×3 RGB image, got shape {img.shape}")
    if not np.issubdtype(img.dtype, np.floating):
        raise InputError(f"expected a float image in [0, 1], got dtype {img.dtype}; divide uint8 images by 255")
    if img.shape[0] < 8 or img.shape[1] < 8:
        raise InputError(f"image is too small ({img.shape[1]}×{img.shape[0]}) to hold a face")
    return np.asarray(img, dtype=np.float32)


def select_faces(
    faces: list[Face],
    image_size: tuple[int, int],
    min_eye_distance: float = 0.0,
    only_center_face: bool = False,
    max_faces: int | None = None,
    order: str = "size",
) -> list[Face]:
    """Filter and sort detections.

    Drops faces whose eye distance is below `min_eye_distance` pixels; sorts largest
    first ("size") or by box centre x ("left_to_right"); `only_center_face` keeps the
    one face whose box centre is nearest the image centre; `max_faces` keeps the first n.
    """
    if order not in ("size", "left_to_right"):
        raise InputError(f"order must be 'size' or 'left_to_right', got {order!r}")
    kept = [f for f in faces if f.eye_distance >= min_eye_distance]
    if order == "size":
        kept.sort(key=lambda f: -f.eye_distance)
    else:
        kept.sort(key=lambda f: f.center[0])
    if only_center_face and kept:
        h, w = image_size
        kept = [min(kept, key=lambda f: (f.center[0] - w / 2) ** 2 + (f.center[1] - h / 2) ** 2)]
    if max_faces is not None:
        kept = kept[: max(0, int(max_faces))]
    return kept


def _facexlib_dirs(weights_dir: str | Path | None) -> list[Path]:
    """`weights_dir`, $BFR_FACEXLIB_WEIGHTS, then facexlib's own weights folder (where facexlib saves its downloads)."""
    dirs = [Path(weights_dir)] if weights_dir else []
    if os.environ.get("BFR_FACEXLIB_WEIGHTS"):
        dirs.append(Path(os.environ["BFR_FACEXLIB_WEIGHTS"]))
    spec = importlib.util.find_spec("facexlib")
    if spec is not None and spec.submodule_search_locations:
        dirs.extend(Path(p) / "weights" for p in spec.submodule_search_locations)
    return dirs


def facexlib_entry(filename: str) -> WeightSpec:
    """The catalog entry (source, license) of one of facexlib's networks, by its file name."""
    for name in FACEXLIB_NETWORKS:
        if CATALOG[name].filename == filename:
            return CATALOG[name]
    raise InputError(f"{filename} is not one of facexlib's networks bfr uses ({', '.join(FACEXLIB_NETWORKS)})")


def find_facexlib_weights(filename: str, weights_dir: str | Path | None = None) -> Path | None:
    """Where a facexlib weights file already is on this machine, or None. Never downloads.

    Looks in `weights_dir`, in $BFR_FACEXLIB_WEIGHTS, in facexlib's own weights folder, then where
    bfr keeps weights ($BFR_WEIGHTS_DIR, its cache).
    """
    return find_in(facexlib_entry(filename), _facexlib_dirs(weights_dir))


def facexlib_status(filename: str, weights_dir: str | Path | None = None) -> tuple[bool, str]:
    """Whether facexlib's file can be used now, and how: (True, "found at …" or "downloads from … on first use")
    or (False, why not). Never downloads."""
    return optional_status(facexlib_entry(filename), _facexlib_dirs(weights_dir))


def facexlib_weights(filename: str, weights_dir: str | Path | None = None) -> tuple[Path | None, str]:
    """facexlib's weights file: (path, "") when it is on this machine or was just fetched from facexlib's
    release into bfr's cache (downloads on and the release reachable), else (None, a short why not)."""
    return fetch_optional(facexlib_entry(filename), _facexlib_dirs(weights_dir))


def facexlib_unavailable(what: str, why: str, filename: str, advice: str = "") -> WeightsUnavailableError:
    """The error for a facexlib network that cannot be had (see ``bfr.weights.hub.unavailable_error``)."""
    own = [str(d) for d in _facexlib_dirs(None)[1 if os.environ.get("BFR_FACEXLIB_WEIGHTS") else 0:]]
    places = ["$BFR_FACEXLIB_WEIGHTS", *(own or ["facexlib's weights folder"])]  # the folder, where facexlib is
    return unavailable_error(what, why, facexlib_entry(filename), places, advice)


USE_HAAR = "Or use the Haar detector (`--detector haar`; detector='haar' in Python)."


class RetinaFaceDetector:
    """facexlib's RetinaFace-ResNet50 (the reference pipelines' detector); needs its weights file."""

    name = "retinaface"
    reason = ""

    def __init__(
        self,
        weights: str | Path | None = None,
        device: str = "cpu",
        score_threshold: float = 0.8,
        min_eye_distance: float = 5.0,
    ):
        path, why = (Path(weights), "") if weights else facexlib_weights(RETINAFACE_FILE)
        if path is None or not path.is_file():
            raise facexlib_unavailable("RetinaFace", why or f"{path} does not exist", RETINAFACE_FILE, USE_HAAR)
        import torch
        from facexlib.detection.retinaface import RetinaFace

        state = load_fetched(path, "RetinaFace")  # DataParallel's "module." prefix dropped
        net = RetinaFace(network_name="resnet50", half=False, device=torch.device(device))
        net.load_state_dict(state, strict=True)
        self.net = net.eval().to(device)
        self.path = path
        self.score_threshold = score_threshold
        self.min_eye_distance = min_eye_distance

    def detect(
        self, img: np.ndarray, *, only_center_face: bool = False, max_faces: int | None = None, order: str = "size"
    ) -> list[Face]:
        """Faces in an RGB [0, 1] image."""
        import torch

        img = check_image(img)
        bgr = np.ascontiguousarray(img[..., ::-1] * 255.0)
        with torch.no_grad():
            dets = self.net.detect_faces(bgr, conf_threshold=self.score_threshold)
        faces = [
            Face(
                box=tuple(float(v) for v in d[:4]),
                landmarks=np.asarray(d[5:15], np.float64).reshape(5, 2),
                score=float(d[4]),
            )
            for d in np.asarray(dets).reshape(-1, 15)
        ]
        return select_faces(faces, img.shape[:2], self.min_eye_distance, only_center_face, max_faces, order)


def find_cascade(name: str) -> Path | None:
    """OpenCV's cascade file `name` in $BFR_HAAR_DIR if set, else in cv2.data.haarcascades; None if absent."""
    folder = os.environ.get("BFR_HAAR_DIR") or getattr(getattr(cv2, "data", None), "haarcascades", None)
    path = Path(folder) / name if folder else None
    return path if path is not None and path.is_file() else None


def load_cascade(name: str) -> cv2.CascadeClassifier:
    """OpenCV's CascadeClassifier for cascade file `name`, or WeightsUnavailableError."""
    path = find_cascade(name)
    if path is None or not hasattr(cv2, "CascadeClassifier"):
        raise WeightsUnavailableError(f"the Haar cascade {name} is not available. {HOW_TO_GET_CASCADES}")
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise WeightsUnavailableError(f"OpenCV could not read the Haar cascade {path}. {HOW_TO_GET_CASCADES}")
    return cascade


def run_cascade(
    cascade: cv2.CascadeClassifier,
    gray: np.ndarray,
    scale_factor: float,
    min_neighbors: int,
    min_size: int,
    max_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (n, 4) as x, y, w, h in a uint8 image, and the number of hits merged into each."""
    boxes, counts = cascade.detectMultiScale2(
        gray,
        scaleFactor=scale_factor,
        minNeighbors=min_neighbors,
        minSize=(min_size, min_size),
        maxSize=(max_size, max_size) if max_size else (0, 0),
    )
    return np.asarray(boxes, dtype=np.int64).reshape(-1, 4), np.asarray(counts, dtype=np.int64).ravel()


# Mean positions of the 5 landmarks inside the frontal-face cascade's box, in units of the
# box side from its top-left corner, made left-right symmetric. Measured on 394 LFW train
# crops (box from this detector, landmarks = the LFW mean landmarks, which are within
# 3–5 px per crop); the per-crop spread is about 0.02 box sides.
BOX_LANDMARKS = np.array([[0.3144, 0.3818], [0.6856, 0.3818], [0.5, 0.6086], [0.3405, 0.7781], [0.6595, 0.7781]])
# The eye centre sits this far (in eye-box sides) from the eye cascade's box centre
# (279 eyes in 150 LFW train crops, both eyes alike; spread about 0.14 in x, 0.08 in y).
EYE_BOX_OFFSET = np.array([0.054, 0.0])


# How much the eye pair (vs the face box) sets scale and position. Chosen on the 4
# FFHQ-aligned GFPGAN crops that the tests also use (mean error per crop: eyes alone
# 5.5–10 px, box alone 3–11 px, 0.5 gives 5–10 px with the lowest average), so the
# tests' tolerances keep a factor-2 margin.
EYE_WEIGHT = 0.5


def _eyes_and_box(box_pts: np.ndarray, eyes: np.ndarray, weight: float) -> np.ndarray:
    """Mean face shape placed by both cues: roll from the eye line; scale and position a
    weighted mean of the eye pair's and the face box's (their errors are independent)."""
    fit = umeyama(box_pts[:2], eyes)
    scale_e = float(np.sqrt(abs(np.linalg.det(fit[:, :2]))))
    rot = fit[:, :2] / scale_e
    centre_e = transform_points(box_pts, fit).mean(0)
    scale = scale_e**weight
    centre = weight * centre_e + (1 - weight) * box_pts.mean(0)
    return (box_pts - box_pts.mean(0)) @ (scale * rot).T + centre


class HaarDetector:
    """Viola–Jones face + eye cascades; landmarks from the eye line and the mean face shape.

    Works everywhere (no network weights); the cascade XML files are OpenCV's own, from
    cv2.data.haarcascades (or $BFR_HAAR_DIR). The image is searched upright at most
    `max_side` pixels on its long side, then rolled by each of `roll_angles` degrees at
    most `roll_max_side` pixels (the frontal cascade alone tolerates about ±15° of roll;
    the rolled passes are coarser to keep the cost down). For each face the eye cascade
    runs on an upright, resampled patch; with a plausible pair of eyes the landmarks take
    their roll from the eye line and their scale and position from both the eyes and the
    face box, otherwise from the box alone.

    False positives: a face without an eye pair is kept only when at least
    `min_score_without_eyes` cascade hits support it (real but blurry faces often lack
    findable eyes; background patterns rarely gather that many hits).

    Measured on GFPGAN's 4 FFHQ-aligned 512 test crops: mean landmark error 6–9 px
    (worst point 16 px), against the FFHQ template; RetinaFace is about 2–3 px.
    """

    name = "haar"

    def __init__(
        self,
        min_eye_distance: float = 10.0,
        max_side: int = 640,
        scale_factor: float = 1.1,
        min_neighbors: int = 4,
        roll_angles: tuple[float, ...] = (-25.0, 25.0),
        roll_max_side: int = 400,
        min_score_without_eyes: float = 15,
        reason: str = "",
    ):
        self.faces = load_cascade(FACE_CASCADE)
        self.eyes = load_cascade(EYE_CASCADE)
        self.min_eye_distance = min_eye_distance
        self.max_side = max_side
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.roll_angles = tuple(roll_angles)
        self.roll_max_side = roll_max_side
        self.min_score_without_eyes = min_score_without_eyes
        self.reason = reason

    def detect(
        self, img: np.ndarray, *, only_center_face: bool = False, max_faces: int | None = None, order: str = "size"
    ) -> list[Face]:
        """Faces in an RGB [0, 1] image."""
        img = check_image(img)
        gray = cv2.cvtColor((np.clip(img, 0, 1) * 255).round().astype(np.uint8), cv2.COLOR_RGB2GRAY)
        faces = [self._face(gray, *h) for h in self._hypotheses(gray)]
        faces = [f for f in faces if f is not None]
        return select_faces(faces, img.shape[:2], self.min_eye_distance, only_center_face, max_faces, order)

    def _hypotheses(self, gray: np.ndarray) -> list[tuple[np.ndarray, float, float, float]]:
        """Face candidates as (centre xy, box side, roll in degrees, neighbour count), de-duplicated."""
        found = self._search(gray, 0.0, self.max_side, self.scale_factor)
        for angle in self.roll_angles:
            if angle != 0:
                found += self._search(gray, angle, self.roll_max_side, max(self.scale_factor, 1.2))
        # One face may be found upright and rolled: keep its best-supported candidate.
        found.sort(key=lambda c: (-c[3], abs(c[2])))
        kept: list[tuple[np.ndarray, float, float, float]] = []
        for c in found:
            if all(np.linalg.norm(c[0] - o[0]) > 0.7 * max(c[1], o[1]) for o in kept):
                kept.append(c)
        return kept

    def _search(self, gray: np.ndarray, angle: float, max_side: int, scale_factor: float) -> list:
        """Run the face cascade on the image rolled by `angle` degrees, shrunk to `max_side`."""
        h, w = gray.shape
        k = min(1.0, max_side / max(h, w))
        small = (cv2.resize(gray, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)
                 if k < 1 else gray)  # a sliver (e.g. 16×20000) keeps ≥ 1 px
        sh, sw = small.shape
        eye_ratio = BOX_LANDMARKS[1, 0] - BOX_LANDMARKS[0, 0]
        min_side = int(max(20, self.min_eye_distance * k / eye_ratio))
        # Rotate about the centre onto a canvas big enough to keep every corner.
        rot = cv2.getRotationMatrix2D((sw / 2, sh / 2), angle, 1.0)
        cw = int(np.ceil(abs(rot[0, 0]) * sw + abs(rot[0, 1]) * sh))
        ch = int(np.ceil(abs(rot[1, 0]) * sw + abs(rot[1, 1]) * sh))
        rot[:, 2] += (cw / 2 - sw / 2, ch / 2 - sh / 2)
        if angle != 0:
            small = cv2.warpAffine(small, rot, (cw, ch), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        boxes, counts = run_cascade(self.faces, small, scale_factor, self.min_neighbors, min_side)
        back = inverse_affine(rot)
        out = []
        for (x, y, bw, bh), n in zip(boxes, counts, strict=True):
            centre = transform_points(np.array([[x + bw / 2, y + bh / 2]]), back)[0] / k
            out.append((centre, bw / k, float(angle), float(n)))
        return out

    # The face box maps to [PATCH_MARGIN, PATCH_MARGIN + PATCH_FACE] of an upright patch.
    PATCH_FACE = 160
    PATCH_MARGIN = 16

    def _face(self, gray: np.ndarray, centre: np.ndarray, side: float, angle: float, count: float) -> Face | None:
        """Landmarks for one candidate, from an upright patch of the full-resolution image."""
        s = self.PATCH_FACE / side
        size = self.PATCH_FACE + 2 * self.PATCH_MARGIN
        to_patch = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, s)
        to_patch[:, 2] += (size / 2 - centre[0], size / 2 - centre[1])
        patch = warp_image(gray, to_patch, (size, size), border="replicate")
        box_pts = BOX_LANDMARKS * self.PATCH_FACE + self.PATCH_MARGIN
        eyes = self._eye_pair(patch)
        if eyes is None:
            if count < self.min_score_without_eyes:
                return None
            pts = box_pts
        else:
            pts = _eyes_and_box(box_pts, eyes, EYE_WEIGHT)
        from_patch = inverse_affine(to_patch)
        landmarks = transform_points(pts, from_patch)
        corners = transform_points(
            np.array([[0, 0], [1, 0], [0, 1], [1, 1]]) * self.PATCH_FACE + self.PATCH_MARGIN, from_patch
        )
        box = (*corners.min(0), *corners.max(0))
        return Face(
            box=tuple(float(v) for v in box),
            landmarks=landmarks,
            score=count,
            extra={"roll": angle, "eyes_found": eyes is not None},
        )

    def _eye_pair(self, patch: np.ndarray) -> np.ndarray | None:
        """The two eye centres (patch pixels, image-left first), or None if no plausible pair."""
        f, m = self.PATCH_FACE, self.PATCH_MARGIN
        y0, y1 = m + int(0.15 * f), m + int(0.65 * f)
        region = patch[y0:y1, m : m + f]
        boxes, counts = run_cascade(self.eyes, region, 1.1, 2, int(0.12 * f), int(0.45 * f))
        if len(boxes) < 2:
            return None
        centres = boxes[:, :2] + boxes[:, 2:] * (0.5 + EYE_BOX_OFFSET) + (m, y0)
        best, best_score = None, -np.inf
        expected = (BOX_LANDMARKS[1, 0] - BOX_LANDMARKS[0, 0]) * f
        for i in range(len(centres)):
            for j in range(len(centres)):
                a, b = centres[i], centres[j]
                if a[0] >= b[0]:
                    continue
                d = b - a
                dist = float(np.hypot(*d))
                if not (0.6 * expected <= dist <= 1.5 * expected) or abs(d[1]) > 0.35 * dist:
                    continue
                if a[0] > m + 0.55 * f or b[0] < m + 0.45 * f:
                    continue
                size_ratio = boxes[i, 2] / boxes[j, 2]
                score = counts[i] + counts[j] - 4 * abs(np.log(size_ratio)) - 4 * abs(np.log(dist / expected))
                if score > best_score:
                    best, best_score = np.array([a, b]), score
        return best


def stands_in(detector: FaceDetector, weights_dir: str | Path | None = None) -> bool:
    """Whether ``detector`` is the Haar fallback of an "auto" choice and RetinaFace can now be had (a fetch that
    failed for a while, or a file put in place since): long-lived pipelines then build their detector again."""
    return detector.name == "haar" and bool(getattr(detector, "reason", "")) and \
        facexlib_status(RETINAFACE_FILE, weights_dir)[0]


def get_detector(
    prefer: str = "auto",
    device: str = "cpu",
    min_eye_distance: float | None = None,
    weights_dir: str | Path | None = None,
) -> FaceDetector:
    """A face detector; `.name` says which, `.reason` why RetinaFace was not used.

    prefer="auto": RetinaFace if its weights file is here or can be fetched now (see `facexlib_weights`),
    else Haar. "retinaface" or "haar": that one, or WeightsUnavailableError saying what is missing.
    `min_eye_distance` defaults to 5 px for RetinaFace (as DifFace) and 10 px for Haar.
    """
    if prefer not in ("auto", "retinaface", "haar"):
        raise InputError(f"detector must be 'auto', 'retinaface' or 'haar', got {prefer!r}")
    reason = ""
    if prefer in ("auto", "retinaface"):
        weights, why = facexlib_weights(RETINAFACE_FILE, weights_dir)
        if weights is None and prefer == "retinaface":
            raise facexlib_unavailable("RetinaFace", why, RETINAFACE_FILE, USE_HAAR)
        if weights is not None:
            kwargs = {} if min_eye_distance is None else {"min_eye_distance": min_eye_distance}
            try:
                return RetinaFaceDetector(weights, device=device, **kwargs)
            except WeightsUnavailableError as e:
                if prefer == "retinaface":
                    raise
                why = getattr(e, "why", str(e))
        reason = f"RetinaFace is unavailable: {why}; using OpenCV's Haar cascades (coarser landmarks)."
    kwargs = {} if min_eye_distance is None else {"min_eye_distance": min_eye_distance}
    return HaarDetector(reason=reason, **kwargs)
