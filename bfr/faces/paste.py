"""Paste restored face crops back into the (optionally upscaled) whole image.

Each crop goes back through the inverse of its alignment affine, weighted by a soft mask:
a square the size of the crop, pulled in from its edges and feathered with a Gaussian blur
whose width is a fixed fraction of the crop (so, in the output, proportional to the face
size, as in facexlib's helper), intersected with a blurred face-parsing mask (ParseNet
through facexlib, where its weights are on this machine or can be fetched) or, without one,
with a soft ellipse over the face.
Pixels that no mask reaches are left exactly as they were.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from bfr.errors import InputError
from bfr.faces.align import affine_scale, compose, inverse_affine, transform_points
from bfr.faces.detect import facexlib_unavailable, facexlib_weights
from bfr.weights import load_fetched

PARSENET_FILE = "parsing_parsenet.pth"
# ParseNet's 19 classes; the ones kept as "face" for the mask. Background (0), neck (14),
# cloth (16), hair (17) and hat (18) are left to the original image, like facexlib does.
_PARSE_FACE_CLASSES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15)


def square_soft_mask(size: int, feather: float = 1 / 20) -> np.ndarray:
    """A size×size float32 mask: 1 in the middle, falling smoothly to ~0 at the edges.

    The square is pulled in by `feather`·size on every side and blurred with a Gaussian of
    a third of that width, so it reaches 0 at the crop border and 1 at twice the inset.
    """
    edge = max(1, int(round(size * feather)))
    mask = np.zeros((size, size), dtype=np.float32)
    if size > 2 * edge:
        mask[edge:-edge, edge:-edge] = 1.0
    k = 2 * edge + 1
    return cv2.GaussianBlur(mask, (k, k), edge / 3.0)


def face_ellipse_mask(points: np.ndarray, size: int) -> np.ndarray:
    """A size×size float32 mask: a soft ellipse over the face whose 5 landmarks in the crop are ``points``,
    2.8 eye distances wide and 3.4 tall, centred between the eyes and the mouth: full weight over the
    face from jaw to jaw and chin to hairline, fading out beyond it over a fifth of the eye distance.

    [choice] The paste mask where no face parsing is at hand. facexlib then pastes the whole
    square crop, and a restoration that shifts the crop's colours or softens its hair shows as
    a square patch in the photo; the ellipse leaves the hair and background above and beside the
    face to the photo, much as the parsing mask does (its lower edge reaches below the chin).
    """
    pts = np.asarray(points, np.float64)
    d = float(np.linalg.norm(pts[1] - pts[0]))
    cx, cy = (pts[:2].mean(0) + pts[3:].mean(0)) / 2  # between the eyes and the mouth
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    mask = ((((xx - cx) / (1.4 * d)) ** 2 + ((yy - cy) / (1.7 * d)) ** 2) <= 1).astype(np.float32)
    sigma = max(0.1 * d, 0.5)
    k = 2 * int(np.ceil(3 * sigma)) + 1
    return cv2.GaussianBlur(mask, (k, k), sigma)


def upscale_image(img: np.ndarray, upscale: float) -> np.ndarray:
    """Resize the whole image by `upscale` (Lanczos), clipped back to [0, 1].

    [choice] The authors' pipelines upscale the background with Real-ESRGAN ×2; bfr ships no
    background model (its weights would be another download), so only the faces are restored.
    """
    if upscale == 1:
        return img.copy()
    h, w = img.shape[:2]
    out = cv2.resize(img, (round(w * upscale), round(h * upscale)), interpolation=cv2.INTER_LANCZOS4)
    if out.ndim == 2 and img.ndim == 3:
        out = out[..., None]
    return np.clip(out, 0.0, 1.0)


def blend_crop(
    background: np.ndarray,
    crop: np.ndarray,
    affine: np.ndarray,
    mask: np.ndarray | None = None,
    feather: float = 1 / 20,
) -> np.ndarray:
    """Blend `crop` into a copy of `background`; `affine` maps background pixels to crop pixels.

    `mask` (crop-sized, [0, 1]) weights the crop; by default the feathered square. Only the
    region that the crop covers is touched.
    """
    if mask is None:
        mask = square_soft_mask(crop.shape[0], feather)
    out = background.copy()
    h, w = out.shape[:2]
    ch, cw = crop.shape[:2]
    corners = transform_points(np.array([[0, 0], [cw - 1, 0], [0, ch - 1], [cw - 1, ch - 1]]), inverse_affine(affine))
    x0, y0 = (int(max(0, np.floor(v - 1))) for v in corners.min(0))
    x1 = int(min(w, np.ceil(corners[:, 0].max() + 2)))
    y1 = int(min(h, np.ceil(corners[:, 1].max() + 2)))
    if x1 <= x0 or y1 <= y0:
        return out  # the crop lies wholly outside the image
    # Sample the crop at every pixel of the region: region pixel -> background -> crop.
    to_crop = compose(affine, np.array([[1.0, 0, x0], [0, 1.0, y0]]))
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    size = (x1 - x0, y1 - y0)
    face = cv2.warpAffine(
        np.ascontiguousarray(crop, dtype=np.float32), to_crop, size, flags=flags, borderMode=cv2.BORDER_REPLICATE
    )
    alpha = cv2.warpAffine(
        np.ascontiguousarray(mask, dtype=np.float32),
        to_crop,
        size,
        flags=flags,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )
    if face.ndim == 2:
        face = face[..., None]
    # Interpolation leaves ~1e-8 of mask where it should be zero: snap it, so untouched pixels stay exact.
    alpha = np.where(alpha < 1e-4, 0.0, np.clip(alpha, 0.0, 1.0)).astype(np.float32)[..., None]
    region = out[y0:y1, x0:x1]
    out[y0:y1, x0:x1] = alpha * face + (1.0 - alpha) * region
    return out


def output_to_crop_affine(affine: np.ndarray, upscale: float, crop_size: int, restored_size: int) -> np.ndarray:
    """Map pixels of the ×upscale output to pixels of a restored crop.

    `affine` maps input pixels to the crop_size crop; the restored crop may be larger or
    smaller (e.g. a ×2 restorer). Pixel centres are kept exact in both rescalings.
    """
    u = 1.0 / upscale
    out_to_in = np.array([[u, 0, 0.5 * u - 0.5], [0, u, 0.5 * u - 0.5]])
    r = restored_size / crop_size
    crop_to_restored = np.array([[r, 0, 0.5 * r - 0.5], [0, r, 0.5 * r - 0.5]])
    return compose(crop_to_restored, compose(np.asarray(affine, dtype=np.float64), out_to_in))


def paste_faces(
    image: np.ndarray,
    restored_crops: list[np.ndarray],
    affines: list[np.ndarray],
    upscale: float = 1.0,
    crop_size: int | None = None,
    background: np.ndarray | None = None,
    parser: FaceParser | None = None,
    feather: float = 1 / 20,
    face_points: np.ndarray | None = None,
) -> np.ndarray:
    """Paste restored crops into `image` (HWC float32 RGB in [0, 1]) and return the result.

    The mask is the feathered square, intersected with the face-parsing mask when `parser` is
    given, else with `face_ellipse_mask` when `face_points` (the crops' 5 template landmarks at
    `crop_size`) are.

    `affines` are the image→crop affines from alignment at `crop_size` (default: each
    restored crop's own size). With `upscale` s the output is s× the input: `background`
    (e.g. from a super-resolution model, already s× the input) or, by default, the input
    resized with Lanczos. Faces that appear smaller in the image are pasted first, so where
    faces overlap the larger (usually nearer) one ends up on top.
    """
    if len(restored_crops) != len(affines):
        raise InputError(f"got {len(restored_crops)} restored crops but {len(affines)} affines")
    if not (np.isfinite(upscale) and upscale > 0):
        raise InputError(f"upscale must be a positive number, got {upscale}")
    h, w = image.shape[:2]
    out_h, out_w = round(h * upscale), round(w * upscale)
    if background is None:
        out = upscale_image(image, upscale)
    else:
        if background.shape[:2] != (out_h, out_w):
            raise InputError(f"background is {background.shape[1]}×{background.shape[0]}, expected {out_w}×{out_h}")
        out = np.array(background, dtype=np.float32, copy=True)
    shape_masks: dict[tuple[int, int], np.ndarray] = {}  # (restored size, crop size) → mask: the same for every face
    order = sorted(range(len(affines)), key=lambda i: -affine_scale(affines[i]))
    for i in order:
        crop = np.asarray(restored_crops[i], dtype=np.float32)
        if crop.ndim != 3 or crop.shape[0] != crop.shape[1]:
            raise InputError(f"restored crop {i} must be a square HWC image, got shape {crop.shape}")
        n, size = crop.shape[0], crop_size or crop.shape[0]
        to_crop = output_to_crop_affine(affines[i], upscale, size, n)
        if (n, size) not in shape_masks:
            mask = square_soft_mask(n, feather)
            if parser is None and face_points is not None:
                mask = np.minimum(mask, face_ellipse_mask(np.asarray(face_points) * n / size, n))
            shape_masks[n, size] = mask
        mask = shape_masks[n, size]
        if parser is not None:
            mask = np.minimum(mask, parser(crop))  # the intersection, as facexlib's paste
        out = blend_crop(out, crop, to_crop, mask=mask)
    return np.clip(out, 0.0, 1.0)


class FaceParser:
    """ParseNet face parsing (facexlib), turned into a soft "face, not hair/neck/background" mask."""

    def __init__(self, weights: str | Path | None = None, device: str = "cpu"):
        path, why = (Path(weights), "") if weights else facexlib_weights(PARSENET_FILE)
        if path is None or not path.is_file():
            raise facexlib_unavailable("ParseNet", why or f"{path} does not exist", PARSENET_FILE,
                                       "Or paste without parsing (use_parse=False).")
        from facexlib.parsing.parsenet import ParseNet

        state = load_fetched(path, "ParseNet")  # released under "params"
        net = ParseNet(in_size=512, out_size=512, parsing_ch=19)
        net.load_state_dict(state, strict=True)
        self.net = net.eval().to(device)
        self.device = device
        self.path = path

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        """Soft face mask (crop-sized, float32 in [0, 1]) for an RGB [0, 1] aligned crop."""
        import torch

        size = crop.shape[0]
        x = cv2.resize(crop, (512, 512), interpolation=cv2.INTER_LINEAR)
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].float() * 2 - 1
        with torch.no_grad():
            labels = self.net(x.to(self.device))[0].argmax(1)[0].cpu().numpy()
        mask = np.isin(labels, _PARSE_FACE_CLASSES).astype(np.float32)
        # Two wide blurs soften the parsing edges; the crop border is forced to 0 so the
        # square mask's feathering is never undone.
        mask = cv2.GaussianBlur(mask, (101, 101), 11)
        mask = cv2.GaussianBlur(mask, (101, 101), 11)
        mask[:10], mask[-10:], mask[:, :10], mask[:, -10:] = 0, 0, 0, 0
        return cv2.resize(mask, (size, size), interpolation=cv2.INTER_LINEAR)
