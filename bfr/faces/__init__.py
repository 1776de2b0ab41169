"""Faces in whole images: detection, 5-point alignment, paste-back, and the pipeline gluing them.

Images at this API are numpy float32 H×W×3 RGB in [0, 1].
"""

from bfr.faces.align import estimate_similarity, inverse_affine, transform_points, warp_face
from bfr.faces.detect import Face, FaceDetector, HaarDetector, RetinaFaceDetector, get_detector
from bfr.faces.paste import FaceParser, paste_faces
from bfr.faces.pipeline import FRAMING, AlignedFace, FacePipeline, FaceRestoreResult, RestoredFace, restore_faces
from bfr.faces.templates import FRAMING_NAMES, ffhq_to_lfw, framing_affine, lfw_to_ffhq, reframe_affine, template

__all__ = [
    "FRAMING",
    "FRAMING_NAMES",
    "AlignedFace",
    "Face",
    "FaceDetector",
    "FaceParser",
    "FacePipeline",
    "FaceRestoreResult",
    "HaarDetector",
    "RestoredFace",
    "RetinaFaceDetector",
    "estimate_similarity",
    "ffhq_to_lfw",
    "framing_affine",
    "get_detector",
    "inverse_affine",
    "lfw_to_ffhq",
    "paste_faces",
    "reframe_affine",
    "restore_faces",
    "template",
    "transform_points",
    "warp_face",
]
