"""Similarity transforms between face landmarks and a template, and warping with them.

Conventions: an affine is a (2, 3) float64 matrix that maps *source* pixel coordinates to
*destination* pixel coordinates (x right, y down, pixel centres at integers, as in OpenCV).
`warp_face` returns the image→crop affine; `inverse_affine` turns it around for pasting.
"""

from __future__ import annotations

import cv2
import numpy as np

from bfr.errors import InputError

# facexlib fills the outside of the image with this grey when a face touches the border;
# the restoration networks of the reference pipelines saw it, so we use the same.
BORDER_GREY = (132 / 255, 133 / 255, 135 / 255)


def _as_points(pts: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(pts, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 2:
        raise InputError(f"{name} must be an (n, 2) array of points with n >= 2, got shape {arr.shape}")
    return arr


def umeyama(src_pts: np.ndarray, dst_pts: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection).

    Closed form of Umeyama (1991): deterministic, and exact when the points agree.
    """
    src, dst = _as_points(src_pts, "src_pts"), _as_points(dst_pts, "dst_pts")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    flip = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        flip[1, 1] = -1
    rot = u @ flip @ vt
    var_s = (s**2).sum() / len(src)
    scale = (sig * np.diag(flip)).sum() / var_s if var_s > 0 else 1.0
    out = np.zeros((2, 3))
    out[:, :2] = scale * rot
    out[:, 2] = mu_d - scale * rot @ mu_s
    return out


def estimate_similarity(src_pts: np.ndarray, dst_pts: np.ndarray, method: str = "lmeds") -> np.ndarray:
    """The (2, 3) similarity mapping src_pts onto dst_pts.

    "lmeds" is OpenCV's robust fit (what facexlib/GFPGAN/CodeFormer/DifFace use, so crops
    match theirs); "lstsq" is the plain least-squares fit. LMedS falls back to least
    squares when OpenCV finds no model.
    """
    src, dst = _as_points(src_pts, "src_pts"), _as_points(dst_pts, "dst_pts")
    if src.shape != dst.shape:
        raise InputError(f"src_pts {src.shape} and dst_pts {dst.shape} must have the same shape")
    if method == "lstsq":
        return umeyama(src, dst)
    if method != "lmeds":
        raise InputError(f"method must be 'lmeds' or 'lstsq', got {method!r}")
    affine, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
    return umeyama(src, dst) if affine is None else affine.astype(np.float64)


def inverse_affine(affine: np.ndarray) -> np.ndarray:
    """The (2, 3) affine that undoes `affine`."""
    return cv2.invertAffineTransform(np.asarray(affine, dtype=np.float64))


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The affine x ↦ outer(inner(x))."""
    o = np.vstack([outer, [0, 0, 1]])
    i = np.vstack([inner, [0, 0, 1]])
    return (o @ i)[:2]


def transform_points(pts: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine to (n, 2) points."""
    pts = np.asarray(pts, dtype=np.float64)
    return pts @ np.asarray(affine)[:, :2].T + np.asarray(affine)[:, 2]


def affine_scale(affine: np.ndarray) -> float:
    """The mean linear scale factor of an affine (sqrt of |det|)."""
    return float(np.sqrt(abs(np.linalg.det(np.asarray(affine)[:, :2]))))


def warp_image(
    img: np.ndarray,
    affine: np.ndarray,
    size: tuple[int, int],
    border: str = "constant",
    border_value: tuple[float, float, float] | float = BORDER_GREY,
) -> np.ndarray:
    """Warp `img` by the source→destination `affine` into an image of size (width, height).

    Shrinking by more than 4/3 first reduces the relevant region with area averaging,
    so small crops of large faces do not alias. `border` is "constant" (fill with
    `border_value`), "reflect" or "replicate".
    """
    modes = {"constant": cv2.BORDER_CONSTANT, "reflect": cv2.BORDER_REFLECT_101, "replicate": cv2.BORDER_REPLICATE}
    if border not in modes:
        raise InputError(f"border must be one of {sorted(modes)}, got {border!r}")
    affine = np.asarray(affine, dtype=np.float64)
    w, h = size
    src = img
    scale = affine_scale(affine)
    # Only the part of the image that the destination sees is resampled.
    corners = transform_points(np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]]), inverse_affine(affine))
    pad = 2 + 2 / max(scale, 1e-6)
    x0 = int(max(0, np.floor(corners[:, 0].min() - pad)))
    y0 = int(max(0, np.floor(corners[:, 1].min() - pad)))
    x1 = int(min(img.shape[1], np.ceil(corners[:, 0].max() + pad) + 1))
    y1 = int(min(img.shape[0], np.ceil(corners[:, 1].max() + pad) + 1))
    if x1 <= x0 or y1 <= y0:  # the destination lies wholly outside the image
        x0, y0, x1, y1 = 0, 0, img.shape[1], img.shape[0]
    src = img[y0:y1, x0:x1]
    shift = np.array([[1.0, 0, x0], [0, 1.0, y0]])
    affine = compose(affine, shift)  # region → destination
    if scale < 0.75:
        sw = max(1, round(src.shape[1] * scale))
        sh = max(1, round(src.shape[0] * scale))
        fx, fy = sw / src.shape[1], sh / src.shape[0]
        src = cv2.resize(src, (sw, sh), interpolation=cv2.INTER_AREA)
        # small pixel x' sits at region coordinate (x' + 0.5) / fx - 0.5
        up = np.array([[1 / fx, 0, 0.5 / fx - 0.5], [0, 1 / fy, 0.5 / fy - 0.5]])
        affine = compose(affine, up)
    value = border_value if np.ndim(border_value) else (border_value,) * 3
    out = cv2.warpAffine(
        np.ascontiguousarray(src),
        affine,
        (w, h),
        flags=cv2.INTER_LINEAR,
        borderMode=modes[border],
        borderValue=tuple(float(v) for v in value),
    )
    if img.ndim == 3 and out.ndim == 2:
        out = out[..., None]
    return out


def warp_face(
    img: np.ndarray,
    landmarks: np.ndarray,
    template: np.ndarray,
    size: int,
    method: str = "lmeds",
    border: str = "constant",
) -> tuple[np.ndarray, np.ndarray]:
    """Crop the face whose 5 landmarks are given, aligned to `template` (already scaled to `size`).

    Returns the size×size crop and the image→crop affine (keep it to paste back).
    """
    affine = estimate_similarity(landmarks, template, method=method)
    crop = warp_image(img, affine, (size, size), border=border)
    return crop, affine
