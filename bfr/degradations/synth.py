"""The synthetic degradation pipeline: LQ = JPEG_q(downsample_r(HQ ⊛ k_σ) + n_δ), resized back.

This is the GFPGAN / DifFace family's recipe (see METHODS.md, "Synthetic degradation"):

1. blur with a Gaussian kernel (isotropic, or anisotropic with a rotation angle);
2. downsample by ``scale`` with bilinear interpolation (no antialiasing, as in the
   authors' code; ``scale`` < 1 enlarges slightly); each side keeps at least 1 pixel;
3. add colour Gaussian noise of std ``noise`` on the 0–255 scale, clip to [0, 1];
4. JPEG-compress at ``jpeg_quality`` with OpenCV (skipped when None);
5. resize back to the input size with bilinear interpolation (as the family's code does);
6. optionally convert to grayscale (BT.601 luma, copied to 3 channels). Training code
   should gray the target too when ``params.gray`` is set (use ``to_gray``).

A second, "camera" pipeline (``CameraConfig`` / ``camera_pipeline``) imitates a small
sensor instead: a degradation the models never see in training, for demos of robustness.

Randomness comes only from a ``numpy.random.Generator``: ``sample_params`` draws the
concrete values, ``apply`` uses the generator only for the noise pixels, so the same seed
gives the same image and the returned params say exactly what was done.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch

from bfr.errors import MAX_DERIVED_SEED, InputError, check_seed
from bfr.imageio import resize, to_gray, to_uint8

BASE_RESOLUTION = 512
"""Face size the published ranges are defined for; see ``scale_to`` for other sizes."""


# ---------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class DegradationParams:
    """The concrete values of one degradation; build one by hand for fixed settings (app sliders).

    sigma_x, sigma_y: blur std in pixels along the kernel's axes (0 = no blur);
    angle: rotation of the kernel's x axis in degrees; scale: downsampling factor r
    (1 = none, < 1 enlarges); noise: Gaussian std on the 0–255 scale; jpeg_quality: 1–100,
    or None for no compression; gray: convert the result to grayscale; kernel_size: odd.
    """

    sigma_x: float = 0.0
    sigma_y: float = 0.0
    angle: float = 0.0
    scale: float = 1.0
    noise: float = 0.0
    jpeg_quality: int | None = None
    gray: bool = False
    kernel_size: int = 41


@dataclass(frozen=True)
class DegradationConfig:
    """Ranges (lo, hi), sampled uniformly, and probabilities, for the faces of ``resolution`` px.

    ``iso_prob`` is the chance of an isotropic kernel (σx = σy, angle 0); an anisotropic
    one draws σx and σy independently from ``sigma`` and the angle from ``angle``.
    """

    sigma: tuple[float, float] = (0.1, 15.0)
    iso_prob: float = 0.5
    angle: tuple[float, float] = (0.0, 180.0)
    scale: tuple[float, float] = (0.8, 32.0)
    noise: tuple[float, float] = (0.0, 20.0)
    jpeg: tuple[int, int] = (30, 100)
    gray_prob: float = 0.01
    kernel_size: int = 41
    resolution: int = BASE_RESOLUTION


@dataclass(frozen=True)
class CameraParams:
    """Concrete values of one camera-pipeline degradation.

    scale: downsampling factor before the sensor; shot_noise: signal-dependent noise
    variance per unit of linear signal; read_noise: signal-independent noise std (linear
    units, 0–1); demosaic: "bilinear" or "ea" (OpenCV's edge-aware); jpeg_quality: 1–100 or None.
    """

    scale: float = 1.0
    shot_noise: float = 1e-3
    read_noise: float = 5e-3
    demosaic: str = "bilinear"
    jpeg_quality: int | None = 85


@dataclass(frozen=True)
class CameraConfig:
    """Ranges for the camera pipeline; noise levels are drawn log-uniformly (they span decades)."""

    scale: tuple[float, float] = (1.0, 4.0)
    shot_noise: tuple[float, float] = (1e-4, 1e-2)
    read_noise: tuple[float, float] = (1e-3, 2e-2)
    ea_prob: float = 0.5
    jpeg: tuple[int, int] = (70, 95)
    resolution: int = BASE_RESOLUTION


Config = DegradationConfig | CameraConfig
Params = DegradationParams | CameraParams


# ---------------------------------------------------------------------------- scaling to a face size


def _scale_sigma(bound: float, factor: float) -> float:
    """σ scales with the face; it never drops below 0.1 px unless it was smaller (0 = no blur)."""
    return max(bound * factor, min(bound, 0.1))


def _scale_factor(bound: float, factor: float) -> float:
    """r ≥ 1 scales with the face (the smallest LQ face keeps its pixel count) but not below 1;
    r < 1 (slight enlargement) is kept as is: the mildest case stays mild on any grid."""
    return bound if bound < 1 else max(bound * factor, 1.0)


def _scale_kernel(size: int, factor: float) -> int:
    """Keep the kernel's radius relative to the face (same truncation of wide blurs), odd, ≥ 3."""
    return 2 * max(1, math.ceil((size // 2) * factor)) + 1


def scale_to(config: Config, resolution: int) -> Config:
    """Rescale a config's ranges from ``config.resolution`` to faces of ``resolution`` px.

    What stays the same is the degradation *relative to the face*: with f = resolution /
    config.resolution, blur σ and the kernel radius scale by f, and the downsampling factor
    r scales by f so that the smallest LQ face has the same number of pixels (r = 32 at
    512 px and r = 4 at 64 px both leave a 16-px face: the 64-px HQ is the 512-px face seen
    8× smaller). r is not pushed below 1 (no pretend-downsampling that is really
    upsampling); values already below 1 (0.8) are kept. Noise std and JPEG quality act on
    the LQ pixel grid, whose size is unchanged, so they stay as they are.
    Example: "difface" at 64 px → σ ∈ [0.1, 1.875], r ∈ [0.8, 4], kernel 7×7.
    """
    if resolution < 1:
        raise InputError(f"resolution must be a positive number of pixels, got {resolution}")
    f = resolution / config.resolution
    if isinstance(config, CameraConfig):
        return replace(
            config, scale=(_scale_factor(config.scale[0], f), _scale_factor(config.scale[1], f)), resolution=resolution
        )
    return replace(
        config,
        sigma=(_scale_sigma(config.sigma[0], f), _scale_sigma(config.sigma[1], f)),
        scale=(_scale_factor(config.scale[0], f), _scale_factor(config.scale[1], f)),
        kernel_size=_scale_kernel(config.kernel_size, f),
        resolution=resolution,
    )


def scale_params(params: DegradationParams, factor: float) -> DegradationParams:
    """Rescale fixed params (e.g. a test-grid entry defined at 512 px) by ``factor`` = new/old size."""
    return replace(
        params,
        sigma_x=_scale_sigma(params.sigma_x, factor),
        sigma_y=_scale_sigma(params.sigma_y, factor),
        scale=_scale_factor(params.scale, factor),
        kernel_size=_scale_kernel(params.kernel_size, factor),
    )


# ---------------------------------------------------------------------------- sampling


def sample_params(config: Config, rng: np.random.Generator) -> Params:
    """Draw one concrete degradation from a config's ranges."""
    if isinstance(config, CameraConfig):
        return CameraParams(
            scale=float(rng.uniform(*config.scale)),
            shot_noise=_log_uniform(rng, config.shot_noise),
            read_noise=_log_uniform(rng, config.read_noise),
            demosaic="ea" if rng.random() < config.ea_prob else "bilinear",
            jpeg_quality=int(rng.integers(config.jpeg[0], config.jpeg[1] + 1)),
        )
    if rng.random() < config.iso_prob:
        sigma_x = sigma_y = float(rng.uniform(*config.sigma))
        angle = 0.0
    else:
        sigma_x, sigma_y = (float(s) for s in rng.uniform(*config.sigma, size=2))
        angle = float(rng.uniform(*config.angle))
    return DegradationParams(
        sigma_x=sigma_x,
        sigma_y=sigma_y,
        angle=angle,
        scale=float(rng.uniform(*config.scale)),
        noise=float(rng.uniform(*config.noise)),
        jpeg_quality=int(rng.integers(config.jpeg[0], config.jpeg[1] + 1)),
        gray=bool(rng.random() < config.gray_prob),
        kernel_size=config.kernel_size,
    )


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]))))


# ---------------------------------------------------------------------------- the steps


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, angle: float = 0.0) -> np.ndarray:
    """A normalized size×size Gaussian with stds σx, σy along axes rotated by ``angle`` degrees."""
    if size < 1 or size % 2 == 0:
        raise InputError(f"the blur kernel size must be odd and positive, got {size}")
    theta = math.radians(angle)
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    cov = rot @ np.diag([max(sigma_x, 1e-6) ** 2, max(sigma_y, 1e-6) ** 2]) @ rot.T
    inv = np.linalg.inv(cov)
    r = size // 2
    y, x = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    k = np.exp(-0.5 * (inv[0, 0] * x * x + 2 * inv[0, 1] * x * y + inv[1, 1] * y * y))
    return (k / k.sum()).astype(np.float32)


def blur(img: np.ndarray, sigma_x: float, sigma_y: float, angle: float = 0.0, kernel_size: int = 41) -> np.ndarray:
    """Convolve with ``gaussian_kernel`` (reflected borders); σ = 0 on both axes is a no-op."""
    if sigma_x <= 0 and sigma_y <= 0:
        return img
    return _keep_channels(cv2.filter2D(img, -1, gaussian_kernel(kernel_size, sigma_x, sigma_y, angle)), img)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip through OpenCV's JPEG encoder at ``quality`` (1–100)."""
    if not 1 <= quality <= 100:
        raise InputError(f"JPEG quality must be within 1…100, got {quality}")
    bgr = cv2.cvtColor(to_uint8(img), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def _keep_channels(out: np.ndarray, like: np.ndarray) -> np.ndarray:
    return out[:, :, None] if out.ndim == 2 and like.ndim == 3 else out


def _check_image(hq: np.ndarray) -> np.ndarray:
    if not isinstance(hq, np.ndarray) or hq.ndim != 3 or hq.shape[2] != 3:
        shape = getattr(hq, "shape", type(hq).__name__)
        raise InputError(f"degradations take an HWC RGB float image, got {shape}")
    if hq.shape[0] < 1 or hq.shape[1] < 1:
        raise InputError(f"the image has no pixels (shape {hq.shape})")
    if not np.issubdtype(hq.dtype, np.floating):
        # uint8 / uint16 / bool: scale to [0, 1] as imageio does (clipping 0–255 to 1 would whiten it)
        from bfr.imageio import as_float_image

        return as_float_image(hq)
    return np.clip(hq.astype(np.float32, copy=False), 0.0, 1.0)


# ---------------------------------------------------------------------------- the pipelines


def apply(hq: np.ndarray, params: Params, rng: np.random.Generator) -> np.ndarray:
    """Degrade ``hq`` (HWC float32 RGB in [0, 1], any size) with fixed params; same size out.

    ``rng`` draws only the noise pixels. CameraParams run ``camera_pipeline`` instead.
    """
    if isinstance(params, CameraParams):
        return camera_pipeline(hq, params, rng)
    img = _check_image(hq)
    h, w = img.shape[:2]
    if params.scale <= 0:
        raise InputError(f"the downsampling factor must be positive, got {params.scale}")
    img = blur(img, params.sigma_x, params.sigma_y, params.angle, params.kernel_size)
    img = resize(img, (max(1, int(h / params.scale)), max(1, int(w / params.scale))), "bilinear")
    if params.noise > 0:
        img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(params.noise / 255.0)
    img = np.clip(img, 0.0, 1.0)
    if params.jpeg_quality is not None:
        img = jpeg(img, params.jpeg_quality)
    img = resize(img, (h, w), "bilinear")
    if params.gray:
        img = to_gray(img)
    return np.clip(img, 0.0, 1.0).astype(np.float32, copy=False)


def _srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(np.float32)


def mosaic_rggb(rgb: np.ndarray) -> np.ndarray:
    """Keep one colour per pixel in the RGGB Bayer layout: R at (0,0), G at (0,1) and (1,0), B at (1,1)."""
    raw = np.empty(rgb.shape[:2], dtype=rgb.dtype)
    raw[0::2, 0::2] = rgb[0::2, 0::2, 0]
    raw[0::2, 1::2] = rgb[0::2, 1::2, 1]
    raw[1::2, 0::2] = rgb[1::2, 0::2, 1]
    raw[1::2, 1::2] = rgb[1::2, 1::2, 2]
    return raw


def demosaic_rggb(raw: np.ndarray, method: str = "bilinear") -> np.ndarray:
    """Interpolate an RGGB mosaic in [0, 1] back to RGB with OpenCV (16-bit internally)."""
    codes = {"bilinear": cv2.COLOR_BayerRGGB2RGB, "ea": cv2.COLOR_BayerRGGB2RGB_EA}
    if method not in codes:
        raise InputError(f"unknown demosaic method {method!r}; use 'bilinear' or 'ea'")
    u16 = (np.clip(raw, 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)
    return cv2.cvtColor(u16, codes[method]).astype(np.float32) / 65535.0


def camera_pipeline(hq: np.ndarray, params: CameraParams, rng: np.random.Generator) -> np.ndarray:
    """A small-sensor photo of the face: downsample → linear light → RGGB mosaic → shot + read
    noise → demosaic → sRGB gamma → JPEG → resize back to the input size (bilinear).

    Noise is heteroscedastic, std = sqrt(shot·x + read²) in linear light, so shadows get
    relatively more noise and the demosaicing spreads it into coloured blotches: a
    degradation unlike the Gaussian-noise training pipeline. Area interpolation downsamples
    (the sensor integrates light); the sensor image keeps at least 4 pixels per side.
    """
    img = _check_image(hq)
    h, w = img.shape[:2]
    if params.scale <= 0:
        raise InputError(f"the downsampling factor must be positive, got {params.scale}")
    sh, sw = max(4, int(h / params.scale)), max(4, int(w / params.scale))
    small = (
        img
        if (sh, sw) == (h, w)
        else cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA if sh <= h else cv2.INTER_LINEAR)
    )
    raw = mosaic_rggb(_srgb_to_linear(np.clip(small, 0.0, 1.0)))
    std = np.sqrt(params.shot_noise * raw + params.read_noise**2).astype(np.float32)
    raw = raw + std * rng.standard_normal(raw.shape, dtype=np.float32)
    out = _linear_to_srgb(demosaic_rggb(raw, params.demosaic))
    if params.jpeg_quality is not None:
        out = jpeg(out, params.jpeg_quality)
    return np.clip(resize(out, (h, w), "bilinear"), 0.0, 1.0).astype(np.float32, copy=False)


def degrade(
    hq: np.ndarray, config: Config | Params | str = "difface", seed: int | None = None, *, resolution: int | None = None
) -> tuple[np.ndarray, Params]:
    """Degrade one image; returns (LQ, the params used). Same seed ⇒ same output.

    ``config`` is a config (ranges are sampled), fixed params (used as given), or a preset
    name, scaled to ``resolution`` (default: the image's larger side, so a preset means the
    same degradation relative to the face whatever its size).
    """
    from bfr.degradations.presets import preset

    img = _check_image(hq)
    rng = np.random.default_rng(None if seed is None else check_seed(seed))
    if isinstance(config, str):
        config = preset(config, resolution or max(img.shape[:2]))
    elif resolution is not None and isinstance(config, (DegradationConfig, CameraConfig)):
        config = scale_to(config, resolution)
    params = config if isinstance(config, (DegradationParams, CameraParams)) else sample_params(config, rng)
    return apply(img, params, rng), params


def degrade_batch(
    hq: torch.Tensor,
    config: Config | Params | str = "difface",
    seed: int | None = None,
    *,
    value_range: tuple[float, float] = (0.0, 1.0),
    return_params: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, list[Params]]:
    """Degrade a (B, 3, H, W) tensor image by image (numpy on the CPU) for on-the-fly training data.

    ``value_range`` is the tensor's range, (0, 1) or (-1, 1); the result has the same range,
    dtype and device. One generator seeded by ``seed`` serves the whole batch, so a batch
    is reproducible. With ``return_params`` the per-image params come back too (to gray
    the targets whose ``params.gray`` is set).
    """
    if hq.dim() != 4 or hq.shape[1] != 3:
        raise InputError(f"degrade_batch takes a (B, 3, H, W) tensor, got shape {tuple(hq.shape)}")
    lo, hi = value_range
    x = ((hq.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    if isinstance(config, str):
        from bfr.degradations.presets import preset

        config = preset(config, max(hq.shape[-2:]))
    rng = np.random.default_rng(None if seed is None else check_seed(seed, MAX_DERIVED_SEED))
    outs, used = [], []
    for img in x:
        params = config if isinstance(config, (DegradationParams, CameraParams)) else sample_params(config, rng)
        outs.append(apply(img, params, rng))
        used.append(params)
    lq = torch.from_numpy(np.stack(outs)).permute(0, 3, 1, 2) * (hi - lo) + lo
    lq = lq.to(device=hq.device, dtype=hq.dtype if hq.is_floating_point() else torch.float32).contiguous()
    return (lq, used) if return_params else lq


def describe(params) -> str:
    """One line saying what a degradation did (captions, CLI output)."""
    if not isinstance(params, DegradationParams):  # the camera pipeline
        return (f"camera, ↓{params.scale:.1f}, shot {params.shot_noise:.1e}, read {params.read_noise:.1e}, "
                f"{params.demosaic} demosaic, JPEG {params.jpeg_quality}")
    sigma = f"{params.sigma_x:.1f}"
    if params.sigma_y != params.sigma_x:
        sigma += f"×{params.sigma_y:.1f}"
    jpeg = f"JPEG {params.jpeg_quality}" if params.jpeg_quality else "no JPEG"
    gray = ", gray" if params.gray else ""
    return f"blur σ {sigma}, ↓{params.scale:.1f}, noise {params.noise:.1f}, {jpeg}{gray}"
