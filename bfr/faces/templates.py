"""The two 5-point face framings bfr uses, and conversion between them.

Point order everywhere: eye on the image's left, eye on the image's right, nose tip,
mouth corner on the image's left, mouth corner on the image's right (pixel coordinates).

- "ffhq": the template of facexlib / GFPGAN / CodeFormer / DifFace at 512×512. "Aligned
  input" in BFR means a crop framed like this.
- "lfw": the mean landmarks of the deep-funneled LFW crops at 150×150 that the compact
  models train on. The face is about 11 % larger and 5 % higher than in FFHQ framing, and
  the LFW crop lies wholly inside the FFHQ one.
"""

from __future__ import annotations

import numpy as np

from bfr.errors import InputError
from bfr.faces.align import compose, inverse_affine, umeyama, warp_image
from bfr.faces.paste import blend_crop

FFHQ_512 = np.array(
    [[192.98, 239.95], [318.90, 240.19], [256.63, 314.02], [201.26, 371.41], [313.09, 371.15]], dtype=np.float64
)
LFW_150 = np.array([[54.52, 62.72], [95.87, 61.63], [75.37, 87.43], [58.24, 106.68], [93.76, 105.95]], dtype=np.float64)
_TEMPLATES = {"ffhq": (FFHQ_512, 512), "lfw": (LFW_150, 150)}
FRAMING_NAMES = tuple(_TEMPLATES)


def template(name: str, size: int) -> np.ndarray:
    """The (5, 2) landmarks of framing `name` ("ffhq" or "lfw") for a size×size crop."""
    if name not in _TEMPLATES:
        raise InputError(f"template must be 'ffhq' or 'lfw', got {name!r}")
    if int(size) < 1:
        raise InputError(f"template size must be a positive number of pixels, got {size}")
    pts, base = _TEMPLATES[name]
    return pts * (float(size) / base)


def framing_affine(src: str, src_size: int, dst: str, dst_size: int) -> np.ndarray:
    """The similarity (2, 3) mapping a src-framed crop's pixels to a dst-framed crop's pixels.

    Least-squares fit between the two templates, so that (src→dst) and (dst→src) are exact
    inverses of each other.
    """
    if (src, dst) == ("lfw", "ffhq"):
        return inverse_affine(framing_affine(dst, dst_size, src, src_size))
    return umeyama(template(src, src_size), template(dst, dst_size))


def resize_affine(height: int, width: int, out_height: int, out_width: int) -> np.ndarray:
    """The affine of resizing an h×w image to out_h×out_w (pixel centres kept exact, as cv2.resize)."""
    fx, fy = out_width / width, out_height / height
    return np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5]])


def reframe_affine(height: int, width: int, src: str, dst: str, size: int) -> np.ndarray:
    """Affine from an h×w image aligned in framing `src` to the size×size crop in framing `dst`
    (a plain resize when the two framings are the same)."""
    if src == dst and src in _TEMPLATES:
        return resize_affine(height, width, size, size)
    return compose(framing_affine(src, 512, dst, size), resize_affine(height, width, 512, 512))


def frame_inside(outer: str, inner: str) -> bool:
    """Whether an `inner`-framed crop lies wholly inside an `outer`-framed one (same face)."""
    return outer == inner or (outer, inner) == ("ffhq", "lfw")


def ffhq_to_lfw(img: np.ndarray, size: int = 64) -> np.ndarray:
    """Re-frame an FFHQ-aligned face crop (any size) as an LFW-framed size×size crop.

    A crop and resize: the LFW frame lies inside the FFHQ one, so no padding is invented.
    """
    h, w = img.shape[:2]
    return warp_image(img, reframe_affine(h, w, "ffhq", "lfw", size), (size, size), border="replicate")


def lfw_to_ffhq(
    crop: np.ndarray,
    size: int = 512,
    background: np.ndarray | None = None,
    feather: float = 1 / 16,
) -> np.ndarray:
    """Put an LFW-framed crop back into FFHQ framing.

    The FFHQ frame is larger than the LFW one, so the border must come from somewhere:
    from `background` (the original FFHQ-aligned input, any size; the output then has its
    size) through a soft mask whose feathering is `feather` of the crop size, so the
    restored face blends into the original; or, without a background, by repeating the
    crop's edge pixels (output size×size).
    """
    if background is None:
        affine = reframe_affine(size, size, "ffhq", "lfw", crop.shape[0])
        return warp_image(crop, inverse_affine(affine), (size, size), border="replicate")
    h, w = background.shape[:2]
    affine = reframe_affine(h, w, "ffhq", "lfw", crop.shape[0])
    return blend_crop(background, crop, affine, feather=feather)
