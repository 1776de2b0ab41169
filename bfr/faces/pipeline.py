"""Whole-image face restoration: detect, align, restore the crops, paste them back.

This is the glue around a face restorer that only knows aligned crops (METHODS.md §1,
"Unaligned whole images"): detect faces with 5 landmarks, warp each onto the template
with a similarity transform, hand the crops to `restore_fn`, and paste the results back
through the inverse transforms with soft masks over the (optionally upscaled) image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bfr.errors import InputError, WeightsUnavailableError
from bfr.faces.align import inverse_affine, warp_face, warp_image
from bfr.faces.detect import Face, FaceDetector, check_image, facexlib_weights, get_detector, select_faces, stands_in
from bfr.faces.paste import PARSENET_FILE, FaceParser, output_to_crop_affine, paste_faces, upscale_image
from bfr.faces.templates import FRAMING_NAMES, frame_inside, reframe_affine
from bfr.faces.templates import template as template_points
from bfr.imageio import MAX_OUTPUT_PIXELS, MIN_SIDE, megapixels, to_gray

FRAMING = (
    "restore_fn receives a list of aligned face crops, each crop_size×crop_size float32 RGB in [0, 1], "
    "framed by the pipeline's template: 'ffhq' = the FFHQ/facexlib 5-point framing that "
    "DifFace/GFPGAN/CodeFormer expect; 'lfw' = the tighter LFW framing of the compact models. "
    "It returns one restored crop per input, in the same framing (any square size)."
)

RestoreFn = Callable[[list[np.ndarray]], list[np.ndarray]]


class AlignedFace(NamedTuple):
    """One face ready for restoration: the crop, the image→crop affine, and the detection."""

    crop: np.ndarray
    affine: np.ndarray
    face: Face | None


@dataclass
class RestoredFace:
    """A face before and after restoration (both in the pipeline's framing)."""

    input_crop: np.ndarray
    restored_crop: np.ndarray
    face: Face | None


@dataclass
class FaceRestoreResult:
    """What restore_faces did: the output image, each face, and a sentence for the user."""

    output: np.ndarray
    faces: list[RestoredFace]
    detector: str
    n_faces: int
    message: str


class FacePipeline:
    """Detect → align → restore → paste, configured once and reused across images.

    detector: "auto" (RetinaFace when its weights are here or can be fetched, else Haar), "retinaface",
    "haar", or a detector object. template: "ffhq" or "lfw" framing of the crops (see
    FRAMING). upscale: output size relative to the input. min_face_size: smallest eye
    distance in input pixels (default: the detector's own, 5 px RetinaFace / 10 px Haar).
    use_parse: intersect the paste mask with ParseNet's face mask — "auto" does so when
    its weights are here (or can be fetched) and the template is "ffhq" (ParseNet expects that framing); a
    loaded FaceParser is used as it is (pipelines can share one).
    """

    def __init__(
        self,
        detector: str | FaceDetector = "auto",
        template: str = "ffhq",
        crop_size: int = 512,
        upscale: float = 1,
        only_center_face: bool = False,
        min_face_size: float | None = None,
        max_faces: int | None = None,
        order: str = "size",
        use_parse: bool | str | FaceParser = "auto",
        device: str = "cpu",
        weights_dir: str | Path | None = None,
    ):
        if template not in ("ffhq", "lfw"):
            raise InputError(f"template must be 'ffhq' or 'lfw', got {template!r}")
        if int(crop_size) < 16:
            raise InputError(f"crop_size must be at least 16 pixels, got {crop_size}")
        if not (np.isfinite(upscale) and upscale > 0):
            raise InputError(f"upscale must be a positive number, got {upscale}")
        self.template_name = template
        self.crop_size = int(crop_size)
        self.template = template_points(template, self.crop_size)
        self.upscale = float(upscale)
        self.only_center_face = only_center_face
        self.min_face_size = min_face_size
        self.max_faces = max_faces
        self.order = order
        self._detector_spec = detector
        self._device = device
        self._weights_dir = weights_dir
        self._detector: FaceDetector | None = None if isinstance(detector, str) else detector
        if isinstance(detector, str) and detector not in ("auto", "retinaface", "haar"):
            raise InputError(f"detector must be 'auto', 'retinaface', 'haar' or a detector, got {detector!r}")

        self._parser: FaceParser | None = None
        self._parse_note = "no face parsing: faces pasted through a soft ellipse"
        # "auto" looks for ParseNet (and may fetch it) on the first photo pasted back, not here: aligned crops and
        # the compact tier's framing never use it
        self._parse_pending = use_parse == "auto" and template == "ffhq"
        if isinstance(use_parse, FaceParser):
            self._parser, self._parse_note = use_parse, "face parsing on (ParseNet)"
        elif use_parse not in (True, False, "auto"):
            raise InputError(f"use_parse must be True, False, 'auto' or a FaceParser, got {use_parse!r}")
        elif use_parse is True:  # asked for: fail now, saying why
            self._parser = FaceParser(facexlib_weights(PARSENET_FILE, weights_dir)[0], device=device)
            self._parse_note = "face parsing on (ParseNet)"

    @property
    def parser(self) -> FaceParser | None:
        """ParseNet, looked for on first use (found, fetched where downloads are on, or None with a note why)."""
        if self._parse_pending:
            self._parse_pending = False
            path, why = facexlib_weights(PARSENET_FILE, self._weights_dir)
            if path is not None:
                try:
                    self._parser = FaceParser(path, device=self._device)
                    self._parse_note = "face parsing on (ParseNet)"
                except WeightsUnavailableError as e:
                    why = getattr(e, "why", str(e))
            if self._parser is None:
                self._parse_note = f"no face parsing ({why}): faces pasted through a soft ellipse"
        return self._parser

    @property
    def loaded_parser(self) -> FaceParser | None:
        """The parser if one is loaded, without looking for one (for sharing between pipelines)."""
        return self._parser

    @property
    def parse_note(self) -> str:
        """Whether faces are pasted through ParseNet's mask or an ellipse, and why."""
        _ = self.parser
        return self._parse_note

    @property
    def detector(self) -> FaceDetector:
        """The detector, built on first use (aligned-only use never needs one); an "auto" one that fell back to
        Haar is built again once RetinaFace can be had."""
        if self._detector is None or (self._detector_spec == "auto" and stands_in(self._detector, self._weights_dir)):
            self._detector = get_detector(
                self._detector_spec,
                device=self._device,
                min_eye_distance=self.min_face_size,
                weights_dir=self._weights_dir,
            )
        return self._detector

    def detect(self, img: np.ndarray) -> list[Face]:
        """Faces in the image, filtered and sorted by the pipeline's options."""
        img = check_image(img)
        faces = self.detector.detect(img, only_center_face=self.only_center_face, max_faces=None, order=self.order)
        return select_faces(
            faces, img.shape[:2], self.min_face_size or 0.0, self.only_center_face, self.max_faces, self.order
        )

    def crops(self, img: np.ndarray) -> list[AlignedFace]:
        """Aligned crops (crop_size², template framing) of every face found in `img`."""
        img = check_image(img)
        out = []
        for face in self.detect(img):
            crop, affine = warp_face(img, face.landmarks, self.template, self.crop_size)
            out.append(AlignedFace(crop, affine, face))
        return out

    def paste(
        self,
        img: np.ndarray,
        restored_crops: list[np.ndarray],
        affines: list[np.ndarray],
        upscale: float | None = None,
        background: np.ndarray | None = None,
    ) -> np.ndarray:
        """Paste restored crops into `img` (upscaled ×upscale, default the pipeline's)."""
        img = check_image(img)
        return paste_faces(
            img,
            restored_crops,
            affines,
            upscale=self.upscale if upscale is None else upscale,
            crop_size=self.crop_size,
            background=background,
            parser=self.parser,
            face_points=self.template,
        )

    def restore_faces(
        self,
        img: np.ndarray,
        restore_fn: RestoreFn,
        aligned: bool = False,
        batch_size: int | None = None,
        background: np.ndarray | None = None,
        framing: str = "ffhq",
    ) -> FaceRestoreResult:
        """Restore every face of `img` with `restore_fn` (see FRAMING) and paste them back.

        aligned=True treats the whole image as one face aligned in `framing` ("ffhq", the
        usual meaning of an aligned BFR input, or "lfw", the compact models' own crops): no
        detection; it is resized (and re-framed when `framing` is not the template's) to the
        crop, restored, and mapped back to the input size × upscale. No face found is not an
        error: the result holds the input (upscaled if asked), n_faces=0 and a message saying so.
        `background`: an already-upscaled background (e.g. from a super-resolution model);
        unused for aligned input whose frame lies inside the template's (the restored crop
        then covers the whole image).
        """
        img = check_image(img)
        if framing not in FRAMING_NAMES:
            raise InputError(f"framing must be one of {', '.join(FRAMING_NAMES)} (how the aligned input is framed), "
                             f"got {framing!r}")
        h, w = img.shape[:2]
        out_w, out_h = round(w * self.upscale), round(h * self.upscale)
        if out_w * out_h > MAX_OUTPUT_PIXELS:
            size, limit = megapixels(out_w * out_h, MAX_OUTPUT_PIXELS)
            raise InputError(f"upscaling this {w}×{h} image ×{self.upscale:g} would give {out_w}×{out_h} "
                             f"({size} MP), over the {limit} MP limit: use a smaller upscale")
        if min(out_w, out_h) < MIN_SIDE:  # the smallest image bfr reads: no face survives below it
            raise InputError(f"upscaling this {w}×{h} image ×{self.upscale:g} would give {out_w}×{out_h}, under "
                             f"{MIN_SIDE} px a side: use a larger upscale")
        if aligned:
            return self._restore_aligned(img, restore_fn, background, framing)
        faces = self.crops(img)
        name = self.detector.name
        if not faces:
            output = upscale_image(img, self.upscale) if background is None else np.asarray(background, np.float32)
            msg = f"No face found by the {name} detector"
            if self.min_face_size or getattr(self.detector, "min_eye_distance", None):
                msg += f" (faces need eyes at least {self.min_face_size or self.detector.min_eye_distance:g} px apart)"
            msg += "; the image is returned unchanged" + (
                f", upscaled ×{self.upscale:g}." if self.upscale != 1 else "."
            )
            return FaceRestoreResult(output, [], name, 0, self._with_reason(msg))
        restored = keep_gray(img, _run_restore(restore_fn, [f.crop for f in faces], batch_size))
        output = self.paste(img, restored, [f.affine for f in faces], background=background)
        pairs = [RestoredFace(f.crop, r, f.face) for f, r in zip(faces, restored, strict=True)]
        plural = "s" if len(faces) != 1 else ""
        msg = f"Restored {len(faces)} face{plural} found by the {name} detector ({self.parse_note})."
        return FaceRestoreResult(output, pairs, name, len(faces), self._with_reason(msg))

    def _with_reason(self, msg: str) -> str:
        reason = getattr(self.detector, "reason", "")
        return f"{msg} {reason}" if reason else msg

    def _restore_aligned(
        self, img: np.ndarray, restore_fn: RestoreFn, background: np.ndarray | None, framing: str
    ) -> FaceRestoreResult:
        h, w = img.shape[:2]
        check_aligned_shape(h, w)
        cs = self.crop_size
        affine = reframe_affine(h, w, framing, self.template_name, cs)
        crop = warp_image(img, affine, (cs, cs), border="replicate")
        restored = keep_gray(img, _run_restore(restore_fn, [crop], None))[0]
        if frame_inside(self.template_name, framing):
            # The restored crop covers the whole image: map it straight back, no blending.
            to_crop = output_to_crop_affine(affine, self.upscale, cs, restored.shape[0])
            out_size = (round(w * self.upscale), round(h * self.upscale))
            output = np.clip(warp_image(restored, inverse_affine(to_crop), out_size, border="replicate"), 0, 1)
        else:  # the model's frame is the smaller one: blend the face into the rest of the image
            output = paste_faces(img, [restored], [affine], upscale=self.upscale, crop_size=cs, background=background,
                                 face_points=self.template)
        msg = (f"Treated the whole image as one {framing.upper()}-aligned face (restored in "
               f"{self.template_name} framing at {cs} px).")
        return FaceRestoreResult(output, [RestoredFace(crop, restored, None)], "none (aligned input)", 1, msg)


def check_aligned_shape(height: int, width: int, otherwise: str = "restore it as a photo") -> None:
    """An aligned face crop is square (a few pixels off is fine); resizing another shape to the crop would squash
    the face. ``otherwise``: what to do with a photo instead (restore it, or degrade its largest face)."""
    if abs(height - width) > max(2, 0.02 * max(height, width)):
        raise InputError(f"an aligned face crop is square (e.g. 512×512), but this image is {width}×{height}: crop "
                         f"it square around the face, or {otherwise} (faces detected and aligned)")


def keep_gray(img: np.ndarray, restored: list[np.ndarray]) -> list[np.ndarray]:
    """Restored (or degraded) faces of a grayscale photo made gray again (as GFPGAN/CodeFormer do): a model
    may tint them, and colour faces pasted into a black-and-white photo look wrong."""
    if np.abs(img - img[..., :1]).max() > 1.5 / 255:
        return restored
    return [to_gray(r) for r in restored]


def _run_restore(restore_fn: RestoreFn, crops: list[np.ndarray], batch_size: int | None) -> list[np.ndarray]:
    """Call restore_fn in batches and check that it kept its side of the contract."""
    step = batch_size or len(crops)
    out: list[np.ndarray] = []
    for start in range(0, len(crops), step):
        batch = crops[start : start + step]
        got = list(restore_fn(batch))
        if len(got) != len(batch):
            raise InputError(f"restore_fn returned {len(got)} crops for {len(batch)} inputs")
        for r in got:
            r = np.asarray(r)
            if r.ndim != 3 or r.shape[2] != 3 or r.shape[0] != r.shape[1]:
                raise InputError(f"restore_fn must return square H×W×3 crops, got shape {r.shape}")
            out.append(np.asarray(r, dtype=np.float32))
    return out


def restore_faces(
    img: np.ndarray,
    restore_fn: RestoreFn,
    aligned: bool = False,
    batch_size: int | None = None,
    framing: str = "ffhq",
    **options,
) -> FaceRestoreResult:
    """One-call form of FacePipeline(**options).restore_faces(img, restore_fn, aligned, framing=framing)."""
    return FacePipeline(**options).restore_faces(img, restore_fn, aligned=aligned, batch_size=batch_size,
                                                 framing=framing)
