"""Named degradation settings: the published training ranges, a demo setting, and the test grid.

All ranges are written for 512-px faces, as published; ``preset(name, resolution)`` scales
them to the face size in use (see ``synth.scale_to`` for what is kept the same).

- "difface": DifFace's training ranges (METHODS.md): σ ∈ [0.1, 15], isotropic or
  anisotropic 50/50; r ∈ [0.8, 32]; δ ∈ [0, 20]; q ∈ [30, 100]; 1% grayscale.
- "gfpgan": GFPGAN / CodeFormer training ranges, also IDM's by our choice: σ ∈ [0.1, 10],
  r ∈ [0.8, 8], δ ∈ [0, 20], q ∈ [60, 100], no grayscale (our choice: gray is a separate
  augmentation in those recipes, with varying odds).
- "mild": for demos and examples: σ ∈ [1, 3], r ∈ [2, 4], δ ∈ [0, 5], q ∈ [60, 90].
  Being relative to the face, at 64 px its downsampling vanishes (a 64-px face is already
  smaller than a 512-px face shrunk 4×) and mostly noise and JPEG remain.
- "camera": small-sensor pipeline (downsample, RGGB mosaic, shot + read noise in linear
  light, OpenCV demosaic, gamma, JPEG 70–95), r ∈ [1, 4]: a degradation no bfr model is
  trained on. At 64 px its downsampling vanishes like "mild"'s (r ∈ [1, 4] at 512 px is 1 at 64).
- "camera-lowres": the same pipeline for a face the sensor saw 26–43 px wide: r ∈ [12, 20]
  at 512 px (1.5–2.5 at 64 px), with three times the sensor noise
  (shot 3e-4–3e-2, read 3e-3–6e-2): the degradation of the compact unsupervised demonstration
  (`bfr demo-set`), downsampling included at every face size.
"""

from __future__ import annotations

from bfr.degradations.synth import (
    BASE_RESOLUTION,
    CameraConfig,
    DegradationConfig,
    DegradationParams,
    scale_params,
    scale_to,
)
from bfr.errors import InputError

PRESETS: dict[str, DegradationConfig | CameraConfig] = {
    "difface": DegradationConfig(),
    "gfpgan": DegradationConfig(sigma=(0.1, 10.0), scale=(0.8, 8.0), noise=(0.0, 20.0), jpeg=(60, 100), gray_prob=0.0),
    "mild": DegradationConfig(sigma=(1.0, 3.0), scale=(2.0, 4.0), noise=(0.0, 5.0), jpeg=(60, 90), gray_prob=0.0),
    "camera": CameraConfig(),
    "camera-lowres": CameraConfig(scale=(12.0, 20.0), shot_noise=(3e-4, 3e-2), read_noise=(3e-3, 6e-2)),
}


def preset(name: str, resolution: int | None = None) -> DegradationConfig | CameraConfig:
    """The preset ``name`` with its ranges scaled to faces of ``resolution`` px (default 512)."""
    if name not in PRESETS:
        raise InputError(f"unknown degradation preset {name!r}; choose one of: {', '.join(PRESETS)}")
    config = PRESETS[name]
    return config if resolution is None else scale_to(config, resolution)


# The test grid, at 512 px. Papers quote "JPEG 30–70, noise {1,5,10,15,20}, σ {4,8,12,16}
# anisotropic with an angle, scale 4–40" without one canonical list, so ours is: every
# (σ, δ) pair once (20 entries); σ is the major axis and σ/2 the minor one; the angle, scale
# and quality cycle through their lists so that each value appears about equally often and
# no two neighbours share a setting.
GRID_SIGMAS = (4.0, 8.0, 12.0, 16.0)
GRID_NOISES = (1.0, 5.0, 10.0, 15.0, 20.0)
GRID_SCALES = (4.0, 8.0, 16.0, 24.0, 32.0, 40.0)
GRID_QUALITIES = (30, 40, 50, 60, 70)
GRID_ANGLES = (0.0, 45.0, 90.0, 135.0)


def test_grid(resolution: int = BASE_RESOLUTION) -> list[DegradationParams]:
    """The fixed list of 20 test degradations, scaled to faces of ``resolution`` px."""
    grid = []
    for i, sigma in enumerate(GRID_SIGMAS):
        for j, noise in enumerate(GRID_NOISES):
            k = i * len(GRID_NOISES) + j
            params = DegradationParams(
                sigma_x=sigma,
                sigma_y=sigma / 2,
                angle=GRID_ANGLES[k % len(GRID_ANGLES)],
                scale=GRID_SCALES[k % len(GRID_SCALES)],
                noise=noise,
                jpeg_quality=GRID_QUALITIES[(i + j) % len(GRID_QUALITIES)],
            )
            grid.append(scale_params(params, resolution / BASE_RESOLUTION))
    return grid


test_grid.__test__ = False  # not a pytest test, despite the name
