"""Reading and writing images for every entry point (command line, app, library).

Everything inside bfr works on float32 HWC RGB arrays in [0, 1]; this module is the one
place that turns whatever a user hands over (a path, bytes, a PIL image, a numpy array)
into that form, or says in one sentence why it cannot. Choices made here:

- EXIF orientation is applied, so a phone photo comes out the way it is displayed.
- Transparency is composited on **white** (not dropped): dropping alpha exposes whatever
  colour the encoder left under transparent pixels, often black or garbage, which a face
  detector and a restorer would then treat as content.
- 16-bit PNG/TIFF keep their precision (uint16 / 65535); only the first frame of an
  animated or multi-page file is read.
- Numpy arrays are taken as RGB (not OpenCV's BGR): uint8 / 255, uint16 / 65535, other
  integers must hold 0–255, floats must already be in [0, 1].
- Sizes are checked before the pixels are decoded where the format allows (PIL reads the
  header lazily): more than ``MAX_PIXELS`` or a side under ``MIN_SIDE`` is an InputError.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from bfr.errors import InputError

MAX_PIXELS = 4096 * 4096
"""Largest image accepted (width × height, ≈16.8 MP): bigger photos cost gigabytes of float memory."""

MAX_OUTPUT_PIXELS = 4 * MAX_PIXELS
"""Largest restored image (≈67 MP, e.g. a 16.8 MP photo upscaled ×2): each float copy of it takes 0.8 GB."""

MIN_SIDE = 16
"""Smallest side accepted, in pixels: below this there is no face left to restore."""

_EXIF_ORIENTATION = 0x0112
_TIFF_BITS_PER_SAMPLE = 258
_INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}


# ---------------------------------------------------------------------------- reading


def load_image(src: Any, *, max_pixels: int | None = None, min_side: int | None = None) -> np.ndarray:
    """Any image source → float32 HWC RGB in [0, 1]; raises InputError with the reason otherwise.

    ``src`` may be a path (str or Path), bytes, a binary file object, a PIL image or a numpy
    array (HW, HW1, HW2 gray+alpha, HW3 RGB, HW4 RGBA). ``max_pixels`` and ``min_side``
    default to the module's ``MAX_PIXELS`` and ``MIN_SIDE``.
    """
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    min_side = MIN_SIDE if min_side is None else min_side
    if isinstance(src, np.ndarray):
        img = as_float_image(src)
        _check_size(img.shape[1], img.shape[0], max_pixels, min_side, "the array")
        return img
    if isinstance(src, torch.Tensor):
        raise InputError("got a torch tensor; pass a numpy HWC array, or use bfr.imageio.from_tensor first")
    if isinstance(src, Image.Image):
        _check_size(src.width, src.height, max_pixels, min_side, "image")
        try:  # an opened file is decoded only now
            return _from_pil(src)
        except InputError:  # bfr's own refusal (a ValueError too) says what is wrong
            raise
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise InputError(f"the PIL image is truncated or corrupt and cannot be decoded ({e})") from e
    if isinstance(src, (str, Path)):
        data, name = _read_file(Path(src)), str(src)
    elif isinstance(src, (bytes, bytearray, memoryview)):
        data, name = bytes(src), "the image data"
    elif hasattr(src, "read"):
        data, name = src.read(), str(getattr(src, "name", "the file object"))
        if not isinstance(data, bytes):
            raise InputError(f"{name} was opened in text mode; open it with 'rb'")
    else:
        raise InputError(
            f"cannot read an image from a {type(src).__name__}; pass a path, bytes, a PIL image or a numpy array"
        )
    if not data:
        raise InputError(f"{name} is empty (0 bytes)")
    return _decode(data, name, max_pixels, min_side)


def _read_file(path: Path) -> bytes:
    if not path.exists():
        raise InputError(f"no such file: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image")
    try:
        return path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from e


def check_image_file(path: str | Path) -> None:
    """``load_image``'s checks from the file's header alone (readable, within the size limits), without decoding
    the pixels: a quick check when a file arrives. Formats only OpenCV reads are decoded."""
    data, name = _read_file(Path(path)), str(path)
    if not data:
        raise InputError(f"{name} is empty (0 bytes)")
    if _open_header(data, name, MAX_PIXELS, MIN_SIDE) is None:
        _decode_with_opencv(data, name, MAX_PIXELS, MIN_SIDE)


def _open_header(data: bytes, name: str, max_pixels: int, min_side: int) -> Image.Image | None:
    """PIL's lazily opened image, its size checked; None when PIL cannot read the file."""
    with warnings.catch_warnings():
        # Our own cap is tighter than PIL's bomb guard; silence its warning, keep its hard stop.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            pil = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise InputError(f"{name} is far too large to open safely ({e}); downscale it first") from e
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return None
    _check_size(pil.width, pil.height, max_pixels, min_side, name)
    return pil


def _decode(data: bytes, name: str, max_pixels: int, min_side: int) -> np.ndarray:
    """Header first (size check), then pixels: PIL for most files, OpenCV for 16-bit colour."""
    pil = _open_header(data, name, max_pixels, min_side)
    if pil is None:
        return _decode_with_opencv(data, name, max_pixels, min_side)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        orientation = _orientation(pil)
        try:
            if _is_16bit_color(pil, data):
                img = _decode_16bit(data, name)
            else:
                pil.seek(0)
                pil.load()
                img = _from_pil(pil, orientation=1)
        except InputError:
            raise
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise InputError(f"{name} is truncated or corrupt and cannot be decoded ({e})") from e
    return _apply_orientation(img, orientation)


def _decode_with_opencv(data: bytes, name: str, max_pixels: int, min_side: int) -> np.ndarray:
    """Fallback for the few formats OpenCV reads and PIL does not; size is checked after decoding."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if arr is None:
        raise InputError(f"{name} is not an image this library can read (PNG, JPEG, WebP, TIFF, BMP, GIF …)")
    _check_size(arr.shape[1], arr.shape[0], max_pixels, min_side, name)
    return as_float_image(_bgr_to_rgb(arr))


def _is_16bit_color(pil: Image.Image, data: bytes) -> bool:
    """PIL silently truncates 16-bit RGB(A) and gray+alpha PNG/TIFF to 8 bits; OpenCV decodes those."""
    if pil.format == "PNG" and len(data) > 25:
        bit_depth, color_type = data[24], data[25]  # IHDR fields
        return bit_depth == 16 and color_type in (2, 4, 6)  # truecolour, gray + alpha, truecolour + alpha
    if pil.format == "TIFF":
        bits = pil.tag_v2.get(_TIFF_BITS_PER_SAMPLE)
        bits = bits if isinstance(bits, tuple) else (bits,)
        return len(bits) >= 3 and bits[0] == 16
    return False


def _decode_16bit(data: bytes, name: str) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if arr is None:
        raise InputError(f"{name} is a 16-bit image that cannot be decoded (truncated or corrupt?)")
    return as_float_image(_bgr_to_rgb(arr))


def _bgr_to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 3:
        return arr[:, :, ::-1]
    if arr.ndim == 3 and arr.shape[2] == 4:
        return arr[:, :, [2, 1, 0, 3]]
    return arr


def _from_pil(pil: Image.Image, orientation: int | None = None) -> np.ndarray:
    """A PIL image in any mode → float32 RGB [0, 1], EXIF orientation applied unless given."""
    if orientation is None:
        orientation = _orientation(pil)
    mode = pil.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        arr = np.asarray(pil).astype(np.float32) / 65535.0
    elif mode == "I":  # 32-bit integer: how PIL stores 16-bit grayscale PNG/TIFF
        arr = np.clip(np.asarray(pil, dtype=np.float64), 0, 65535).astype(np.float32) / 65535.0
    elif mode == "F":
        arr = np.asarray(pil, dtype=np.float32)
    elif mode in ("L", "RGB") and "transparency" in pil.info:  # a colour key (PNG tRNS): made an alpha
        arr = np.asarray(pil.convert("LA" if mode == "L" else "RGBA"))
    elif mode in ("L", "LA", "RGB", "RGBA"):
        arr = np.asarray(pil)
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in pil.info
        arr = np.asarray(pil.convert("RGBA" if has_alpha else "RGB"))
    elif mode in ("La", "RGBa"):  # premultiplied alpha
        arr = np.asarray(pil.convert("LA" if mode == "La" else "RGBA"))
    elif mode == "1":
        arr = np.asarray(pil.convert("L"))
    else:  # CMYK, YCbCr, LAB, HSV: PIL knows the conversion
        arr = np.asarray(pil.convert("RGB"))
    return _apply_orientation(as_float_image(arr), orientation)


def _orientation(pil: Image.Image) -> int:
    try:
        value = pil.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block must not make the image unreadable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels into displayed pixels, as ImageOps.exif_transpose does (tags 1–8)."""
    if orientation == 2:
        img = img[:, ::-1]
    elif orientation == 3:
        img = img[::-1, ::-1]
    elif orientation == 4:
        img = img[::-1]
    elif orientation == 5:
        img = img.transpose(1, 0, 2)
    elif orientation == 6:
        img = np.rot90(img, k=-1)
    elif orientation == 7:
        img = img[::-1, ::-1].transpose(1, 0, 2)
    elif orientation == 8:
        img = np.rot90(img, k=1)
    return np.ascontiguousarray(img)


def megapixels(pixels: int, limit: int) -> tuple[str, str]:
    """Both counts in MP with as many decimals as it takes to tell them apart ("16.84" vs "16.78", not 16.8 twice)."""
    digits = next((d for d in range(1, 7) if f"{pixels / 1e6:.{d}f}" != f"{limit / 1e6:.{d}f}"), 6)
    return f"{pixels / 1e6:.{digits}f}", f"{limit / 1e6:.{digits}f}"


def _check_size(width: int, height: int, max_pixels: int, min_side: int, name: str) -> None:
    if width * height > max_pixels:
        side = int(max_pixels**0.5)
        size, limit = megapixels(width * height, max_pixels)
        raise InputError(
            f"{name} is {width}×{height} = {size} MP, above the {limit} MP limit (about {side}×{side}); downscale it "
            "first (faces need far fewer pixels)"
        )
    if min(width, height) < min_side:
        raise InputError(f"{name} is {width}×{height} pixels; at least {min_side} pixels per side are needed")


def as_float_image(arr: np.ndarray) -> np.ndarray:
    """A numpy image (any common dtype and channel layout) → float32 HWC RGB in [0, 1], no size checks."""
    if not isinstance(arr, np.ndarray):
        raise InputError(f"expected a numpy array, got {type(arr).__name__}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        hint = ""
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] > 4:
            hint = " (it looks channel-first: use arr.transpose(1, 2, 0))"
        elif arr.ndim == 4 and arr.shape[0] == 1:
            hint = " (it looks like a batch of one: use arr[0])"
        raise InputError(f"expected an image array of shape (H, W), (H, W, 1|2|3|4), got {arr.shape}{hint}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"the image has no pixels (shape {arr.shape})")
    img = _to_unit_range(arr)
    channels = img.shape[2]
    if channels in (2, 4):  # composite on white: 1 - a of white under a of colour
        alpha = img[:, :, -1:]
        img = img[:, :, :-1] * alpha + (1.0 - alpha)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img, dtype=np.float32)


def _to_unit_range(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise InputError(
                f"integer image values must be 0–255 (got {lo}…{hi}); use uint16 for 16-bit data or floats in [0, 1]"
            )
        return arr.astype(np.float32) / 255.0
    if np.issubdtype(arr.dtype, np.floating):
        img = arr.astype(np.float32)
        if not np.isfinite(img).all():
            raise InputError("the image contains NaN or infinite values")
        lo, hi = float(img.min()), float(img.max())
        if lo < -0.01 or hi > 1.01:
            hint = "; divide by 255 first" if hi <= 255.5 and lo >= 0 else ""
            raise InputError(f"float images must be in [0, 1], got values {lo:.3g}…{hi:.3g}{hint}")
        return np.clip(img, 0.0, 1.0)
    raise InputError(f"unsupported image dtype {arr.dtype}")


# ---------------------------------------------------------------------------- writing


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float [0, 1] → uint8 with rounding (uint8 passes through; uint16, bool and 0–255 ints are scaled)."""
    if img.dtype == np.uint8:
        return img
    if not np.issubdtype(np.asarray(img).dtype, np.floating):
        img = _to_unit_range(np.asarray(img))  # uint16 / 65535, bool, ints 0–255 (else InputError)
    return (np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_image(img: np.ndarray | torch.Tensor, path: str | Path, *, quality: int = 95) -> Path:
    """Write an HWC RGB image ([0, 1] float or uint8; a (1,3,H,W) tensor also works) as 8 bits.

    The format follows the suffix; a path without one gets ``.png``. ``quality`` applies to
    JPEG and WebP. Parent folders are created. Returns the path written.
    """
    if isinstance(img, torch.Tensor):
        img = from_tensor(img)
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise InputError(f"cannot save an array of shape {arr.shape}; expected (H, W) or (H, W, 3|4)")
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    pil = Image.fromarray(to_uint8(arr))
    if path.suffix.lower() in (".jpg", ".jpeg") and pil.mode == "RGBA":
        pil = Image.fromarray(to_uint8(as_float_image(arr)))  # JPEG has no alpha: composite on white
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        pil.save(path, quality=quality)
    except (KeyError, ValueError) as e:
        raise InputError(f"cannot save {path}: unknown image format '{path.suffix}' (use .png or .jpg)") from e
    except OSError as e:  # a folder in the way, a file where a folder goes, no permission, a full disk
        raise InputError(f"cannot write {path}: {e.strerror or e}") from e
    return path


# ---------------------------------------------------------------------------- tensors and resizing


def to_tensor(img: np.ndarray, device: str | torch.device | None = None) -> torch.Tensor:
    """HWC image → (1, 3, H, W) float32 tensor in [0, 1], the layout every model takes."""
    arr = as_float_image(img)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())[None].to(device or "cpu")


def from_tensor(t: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) or (3, H, W) tensor in [0, 1] → float32 HWC numpy (clamped, on the CPU)."""
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise InputError(f"from_tensor takes one image, got a batch of {t.shape[0]}; index it first")
        t = t[0]
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise InputError(f"expected a (1, 3, H, W) or (3, H, W) tensor, got shape {tuple(t.shape)}")
    arr = t.detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


LUMA = (0.299, 0.587, 0.114)  # BT.601 weights of R, G, B


def to_gray(img: np.ndarray) -> np.ndarray:
    """BT.601 luma of an HWC RGB float image, copied to three channels (the degradations' gray flag, a gray
    photo's restored faces)."""
    y = img[..., 0] * LUMA[0] + img[..., 1] * LUMA[1] + img[..., 2] * LUMA[2]
    return np.repeat(y[..., None], 3, axis=-1).astype(np.float32)


def resize(img: np.ndarray, size: int | tuple[int, int], interpolation: str = "auto") -> np.ndarray:
    """Resize an HWC float image to ``size`` = (height, width), or a square side.

    ``"auto"`` uses area averaging when shrinking (antialiased) and bicubic when enlarging;
    other choices: nearest, bilinear, bicubic, area, lanczos. Results stay in [0, 1].
    """
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise InputError(f"cannot resize to {h}×{w}")
    if (h, w) == img.shape[:2]:
        return img
    if interpolation == "auto":
        shrink = h <= img.shape[0] and w <= img.shape[1]
        flag = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    elif interpolation in _INTERPOLATIONS:
        flag = _INTERPOLATIONS[interpolation]
    else:
        raise InputError(f"unknown interpolation {interpolation!r}; use auto, {', '.join(_INTERPOLATIONS)}")
    out = cv2.resize(img, (w, h), interpolation=flag)
    if out.ndim == 2:  # cv2 drops a single channel axis
        out = out[:, :, None]
    if flag in (cv2.INTER_CUBIC, cv2.INTER_LANCZOS4):
        out = np.clip(out, 0.0, 1.0)
    return out
