"""Synthetic degradations for training data, test sets and the app's previews.

>>> from bfr.degradations import degrade, preset
>>> lq, params = degrade(hq, preset("difface", 64), seed=0)   # hq: HWC float32 in [0, 1]
"""

from bfr.degradations.presets import PRESETS, preset, test_grid
from bfr.degradations.synth import (
    BASE_RESOLUTION,
    CameraConfig,
    CameraParams,
    DegradationConfig,
    DegradationParams,
    apply,
    blur,
    camera_pipeline,
    degrade,
    degrade_batch,
    describe,
    gaussian_kernel,
    jpeg,
    sample_params,
    scale_params,
    scale_to,
    to_gray,
)

__all__ = [
    "BASE_RESOLUTION",
    "PRESETS",
    "CameraConfig",
    "CameraParams",
    "DegradationConfig",
    "DegradationParams",
    "apply",
    "blur",
    "camera_pipeline",
    "degrade",
    "degrade_batch",
    "describe",
    "gaussian_kernel",
    "jpeg",
    "preset",
    "sample_params",
    "scale_params",
    "scale_to",
    "test_grid",
    "to_gray",
]
