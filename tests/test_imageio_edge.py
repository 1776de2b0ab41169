"""bfr.imageio edge cases beyond test_imageio.py: exact 16-bit levels, size-limit boundaries,
partial palette alpha, cheap refusal of huge headers, and saving non-uint8 integer arrays.

Every image is built in memory or in tmp_path; nothing here needs shared data.
"""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from bfr import imageio
from bfr.errors import InputError
from bfr.imageio import from_tensor, load_image, save_image, to_tensor, to_uint8

LEVELS = np.array([0, 1000, 32768, 65535], np.uint16)
EXPECTED = LEVELS / 65535.0  # 32768 → 0.50000763, 65535 → 1.0 exactly


def _png_bytes(pil: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    pil.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = _chunk(b"IDAT", zlib.compress(b"\0" * 8))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + idat + _chunk(b"IEND", b"")


def _columns(levels: np.ndarray, h: int = 16, w_each: int = 5) -> np.ndarray:
    """An (h, len(levels)*w_each) array of vertical bands, one per level."""
    return np.repeat(np.tile(levels, (h, 1)), w_each, axis=1)


# ---------------------------------------------------------------------------- 16-bit levels


@pytest.mark.parametrize("writer", ["pil_I16", "cv2_gray", "cv2_bgr", "pil_object"])
def test_16bit_levels_map_exactly_to_unit_range(writer):
    bands = _columns(LEVELS)
    if writer == "pil_I16":
        src = _png_bytes(Image.fromarray(bands))  # uint16 2-D array → mode "I;16"
        assert Image.open(io.BytesIO(src)).mode == "I;16"
    elif writer == "cv2_gray":
        ok, buf = cv2.imencode(".png", bands)
        assert ok
        src = buf.tobytes()
    elif writer == "cv2_bgr":
        ok, buf = cv2.imencode(".png", np.repeat(bands[..., None], 3, axis=2))
        assert ok
        src = buf.tobytes()
        assert src[24] == 16 and src[25] == 2  # IHDR: 16-bit truecolour, the path PIL would truncate
    else:
        src = Image.fromarray(bands)
    img = load_image(src)
    assert img.dtype == np.float32 and img.shape == (16, 20, 3)
    got = img[0, ::5, 0]
    np.testing.assert_allclose(got, EXPECTED, rtol=0, atol=1e-7)
    assert got[-1] == 1.0 and abs(got[2] - 0.5) < 1e-5 and got[0] == 0.0
    # 1000/65535 ≈ 0.01526 sits between the 8-bit levels 3/255 and 4/255: a truncation to 8 bits shows
    assert abs(got[1] * 255 - round(got[1] * 255)) > 0.1
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])


def test_16bit_colour_channels_are_not_swapped():
    rgb = np.zeros((16, 16, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 65535, 32768, 1000
    ok, buf = cv2.imencode(".png", rgb[..., ::-1].copy())  # OpenCV writes BGR
    assert ok
    np.testing.assert_allclose(load_image(buf.tobytes())[3, 3], [1.0, 32768 / 65535, 1000 / 65535], atol=1e-7)


def test_uint16_and_other_arrays():
    np.testing.assert_allclose(load_image(_columns(LEVELS))[0, ::5, 0], EXPECTED, atol=1e-7)
    rgb8 = np.zeros((16, 16, 3), np.uint8)
    rgb8[..., 0] = 51
    np.testing.assert_allclose(load_image(rgb8)[0, 0], [0.2, 0, 0], atol=1e-7)
    # floats a hair outside [0, 1] (resampling overshoot) are clipped, not refused
    f = np.full((16, 16, 3), 1.005, np.float64)
    f[:, :8] = -0.005
    out = load_image(f)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    with pytest.raises(InputError, match="NaN"):
        load_image(np.where(np.eye(16, dtype=bool)[..., None], np.inf, 0.5).astype(np.float32))


# ---------------------------------------------------------------------------- alpha and palettes


def test_palette_with_partial_alpha_per_entry():
    index = np.zeros((16, 20), np.uint8)
    index[:, 10:] = 1
    pal = Image.fromarray(index, "P")
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    data = _png_bytes(pal, transparency=bytes([255, 128]))  # entry 0 opaque red, entry 1 half-transparent blue
    img = load_image(data)
    np.testing.assert_allclose(img[5, 2], [1, 0, 0], atol=1e-6)
    a = 128 / 255
    np.testing.assert_allclose(img[5, 15], [1 - a, 1 - a, 1], atol=1e-6)  # blue·a + white·(1 − a)


def test_colour_key_transparency_is_composited_on_white():
    """PNG tRNS in RGB and grayscale images: the key colour is transparent, so it becomes white."""
    rgb = np.zeros((16, 20, 3), np.uint8)
    rgb[:, 10:] = (200, 10, 10)
    img = load_image(_png_bytes(Image.fromarray(rgb), transparency=(0, 0, 0)))
    np.testing.assert_allclose(img[2, 1], [1, 1, 1], atol=1e-6)  # the key colour (black)
    np.testing.assert_allclose(img[2, 15], np.array([200, 10, 10]) / 255, atol=1e-6)  # other colours kept
    gray = np.zeros((16, 20), np.uint8)
    gray[:, 10:] = 90
    img = load_image(_png_bytes(Image.fromarray(gray), transparency=0))
    np.testing.assert_allclose(img[2, 1], [1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(img[2, 15], [90 / 255] * 3, atol=1e-6)


def test_rgba_array_and_save_to_jpeg_composite_on_white(tmp_path):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 1] = 255  # green
    rgba[:, 8:, 3] = 255
    img = load_image(rgba)
    np.testing.assert_allclose(img[0, 0], [1, 1, 1])
    np.testing.assert_allclose(img[0, 15], [0, 1, 0])
    path = save_image(rgba, tmp_path / "g.jpg", quality=100)
    back = np.asarray(Image.open(path))
    assert Image.open(path).mode == "RGB"
    assert back[8, 2].min() >= 250  # transparent half became white, not black
    assert back[8, 13, 1] >= 250 and back[8, 13, [0, 2]].max() <= 5


# ---------------------------------------------------------------------------- size limits


def test_size_limits_are_checked_at_the_boundary():
    ok = load_image(np.zeros((16, 16, 3), np.uint8))
    assert ok.shape == (16, 16, 3)
    for shape in [(8, 8, 3), (15, 64, 3), (64, 15)]:
        with pytest.raises(InputError, match="at least 16 pixels"):
            load_image(np.zeros(shape, np.uint8))
    with pytest.raises(InputError, match="8×8"):
        load_image(_png_bytes(Image.new("RGB", (8, 8), (10, 20, 30))))
    assert load_image(_png_bytes(Image.new("RGB", (8, 8))), min_side=8).shape == (8, 8, 3)


def test_max_pixels_monkeypatched_applies_to_every_source(tmp_path, monkeypatch):
    monkeypatch.setattr(imageio, "MAX_PIXELS", 40 * 40)
    big, small = np.zeros((41, 40, 3), np.uint8), np.zeros((40, 40, 3), np.uint8)
    Image.fromarray(big).save(tmp_path / "big.png")
    for src in (big, Image.fromarray(big), tmp_path / "big.png", (tmp_path / "big.png").read_bytes()):
        with pytest.raises(InputError, match="40×41"):
            load_image(src)
    assert load_image(small).shape == (40, 40, 3)


@pytest.mark.parametrize("side", [6000, 20000])
def test_huge_header_refused_quickly_without_allocating(side):
    data = _png_header_only(side, side)  # 36 MP (our cap) and 400 MP (PIL's bomb guard); body is ~50 bytes
    assert len(data) < 200
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(InputError) as e:
            load_image(data)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 0.5
    assert peak < 5 * 2**20  # decoding even one channel would need ≥ 36 MB
    msg = str(e.value)
    assert "downscale" in msg and "truncated" not in msg  # refused on the header, never decoded


# ---------------------------------------------------------------------------- unreadable sources


def test_unreadable_sources(tmp_path):
    text = tmp_path / "face.png"
    text.write_text("definitely not a PNG\n")
    with pytest.raises(InputError, match="not an image"):
        load_image(text)
    with pytest.raises(InputError, match="not an image"):
        load_image(text.read_bytes())
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty \(0 bytes\)"):
        load_image(str(empty))
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "nope" / "missing.jpg")
    with open(text) as f:  # text mode
        with pytest.raises(InputError, match="text mode"):
            load_image(f)
    with pytest.raises(InputError):
        load_image(b"\x89PNG\r\n\x1a\n")  # a signature and nothing else
    # an InputError is also a ValueError, so generic callers can catch it
    assert issubclass(InputError, ValueError)


def test_memoryview_and_bytearray_inputs():
    arr = np.arange(16 * 20 * 3, dtype=np.uint8).reshape(16, 20, 3)
    data = _png_bytes(Image.fromarray(arr))
    for src in (memoryview(data), bytearray(data), io.BytesIO(data)):
        np.testing.assert_array_equal(to_uint8(load_image(src)), arr)


# ---------------------------------------------------------------------------- saving and tensors


def test_save_load_roundtrip_uint8_exact_in_odd_sizes(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    for name in ("a.png", "a.bmp", "a.tif", "sub/dir/a.webp"):
        if name.endswith(".webp"):  # lossy (and 4:2:0 chroma): close on a smooth image, not exact
            y, x = np.mgrid[0:17, 0:23]
            smooth = np.stack([x * 11, y * 15, (x + y) * 6], axis=-1).astype(np.uint8)
            path = save_image(smooth, tmp_path / name, quality=100)
            assert np.abs(to_uint8(load_image(path)).astype(int) - smooth).mean() < 3
            continue
        path = save_image(arr, tmp_path / name)
        np.testing.assert_array_equal(to_uint8(load_image(path)), arr)
    f = arr.astype(np.float32) / 255.0
    np.testing.assert_array_equal(to_uint8(load_image(save_image(f, tmp_path / "f.png"))), arr)


def test_saving_uint16_and_int_arrays_scales_them(tmp_path):
    # fixed bug: these used to be clipped to [0, 1] as if float, so every nonzero pixel saved as 255
    u16 = np.full((16, 16, 3), 32768, np.uint16)
    assert np.asarray(Image.open(save_image(u16, tmp_path / "u16.png")))[0, 0].tolist() == [128, 128, 128]
    i64 = np.full((16, 16, 3), 100, np.int64)
    assert np.asarray(Image.open(save_image(i64, tmp_path / "i64.png")))[0, 0].tolist() == [100, 100, 100]
    assert to_uint8(np.array([0, 65535], np.uint16)).tolist() == [0, 255]
    assert to_uint8(np.array([False, True])).tolist() == [0, 255]
    with pytest.raises(InputError, match="0–255"):
        to_uint8(np.array([300], np.int32))


def test_to_tensor_from_tensor_shapes_and_values():
    arr = np.random.default_rng(1).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    t = to_tensor(arr)
    assert t.shape == (1, 3, 17, 23) and t.dtype == torch.float32
    assert t[0, 0, 3, 4].item() == pytest.approx(arr[3, 4, 0] / 255.0)  # channel 0 is red, not blue
    assert t[0, 2, 3, 4].item() == pytest.approx(arr[3, 4, 2] / 255.0)
    np.testing.assert_array_equal(to_uint8(from_tensor(t)), arr)
    gray = from_tensor(torch.full((1, 1, 5, 7), 0.25))
    assert gray.shape == (5, 7, 3) and np.all(gray == 0.25)
    assert to_tensor(np.full((5, 7), 0.5, np.float32)).shape == (1, 3, 5, 7)
    with pytest.raises(InputError, match="tensor"):
        from_tensor(torch.zeros(1, 4, 5, 5))
