"""bfr.imageio: every kind of input becomes float32 HWC RGB in [0, 1], or an InputError that says why.

Files are written into tmp_path with PIL/OpenCV; real faces come from ../shared/data
(skipped with a message when it is absent). Everything here is small and fast.
"""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from bfr import imageio
from bfr.errors import InputError
from bfr.imageio import as_float_image, from_tensor, load_image, resize, save_image, to_tensor, to_uint8
from bfr.paths import data_dir

LFW = data_dir() / "lfw150"


def lfw_faces(n: int = 2):
    if not LFW.exists():
        pytest.skip(f"shared data not found at {LFW} (set BFR_DATA or check out ../shared beside the repo)")
    return sorted(LFW.glob("*.jpg"))[:n]


def pattern(h: int = 24, w: int = 40) -> np.ndarray:
    """An asymmetric uint8 RGB test card: gradients plus a red block in the top-left corner."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (w + h - 2)], axis=-1).astype(np.uint8)
    img[:6, :8] = (255, 0, 0)
    return img


def check(img: np.ndarray, shape: tuple[int, int]) -> None:
    assert img.dtype == np.float32 and img.shape == (*shape, 3)
    assert img.min() >= 0.0 and img.max() <= 1.0 and img.flags.c_contiguous


# ---------------------------------------------------------------------------- modes and depths


def test_rgb_png_roundtrip_is_exact(tmp_path):
    arr = pattern()
    Image.fromarray(arr).save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    check(img, arr.shape[:2])
    np.testing.assert_array_equal(to_uint8(img), arr)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0] = 200  # red everywhere, under varying alpha
    rgba[:, :10, 3] = 0  # fully transparent: pure white
    rgba[:, 10:, 3] = 255  # opaque: the colour itself
    rgba[:5, 10:, 3] = 128  # half: halfway to white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = load_image(str(tmp_path / "a.png"))
    check(img, (20, 20))
    np.testing.assert_allclose(img[10, 0], [1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(img[10, 15], [200 / 255, 0, 0], atol=1e-6)
    a = 128 / 255
    np.testing.assert_allclose(img[0, 15], [200 / 255 * a + 1 - a, 1 - a, 1 - a], atol=1e-6)


def test_gray_and_gray_alpha(tmp_path):
    gray = pattern()[..., 1]
    Image.fromarray(gray, "L").save(tmp_path / "l.png")
    img = load_image(tmp_path / "l.png")
    check(img, gray.shape)
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
    np.testing.assert_allclose(img[..., 0], gray / 255.0, atol=1e-6)

    la = np.stack([gray, np.full_like(gray, 255)], axis=-1)
    la[:, :5, 1] = 0
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    img = load_image(tmp_path / "la.png")
    check(img, gray.shape)
    np.testing.assert_allclose(img[:, :5], 1.0, atol=1e-6)
    np.testing.assert_allclose(img[:, 5:, 0], gray[:, 5:] / 255.0, atol=1e-6)


def test_palette_with_transparency(tmp_path):
    pal = Image.fromarray(pattern()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    img = load_image(tmp_path / "p.png")
    check(img, (24, 40))
    index = np.asarray(Image.open(tmp_path / "p.png"))
    assert (index == 0).any()
    np.testing.assert_allclose(img[index == 0], 1.0)  # transparent entries turn white


def test_cmyk_jpeg(tmp_path):
    rgb = Image.fromarray(pattern())
    rgb.convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    img = load_image(tmp_path / "c.jpg")
    check(img, (24, 40))
    assert np.abs(img - np.asarray(rgb) / 255.0).mean() < 0.05


def test_16bit_gray_and_color_keep_precision(tmp_path):
    ramp = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)  # 0 … 64491
    cv2.imwrite(str(tmp_path / "g16.png"), ramp)
    img = load_image(tmp_path / "g16.png")
    check(img, ramp.shape)
    np.testing.assert_allclose(img[..., 0], ramp / 65535.0, atol=1e-6)  # 8 bits would be off by up to 1/510

    rgb16 = np.stack([ramp, 65535 - ramp, ramp // 2], axis=-1)
    for name in ("c16.png", "c16.tif"):
        cv2.imwrite(str(tmp_path / name), rgb16[..., ::-1].copy())  # OpenCV writes BGR
        img = load_image(tmp_path / name)
        check(img, ramp.shape)
        np.testing.assert_allclose(img, rgb16 / 65535.0, atol=1e-6)

    rgba16 = np.concatenate([rgb16, np.full_like(ramp, 65535)[..., None]], axis=-1)
    cv2.imwrite(str(tmp_path / "c16a.png"), rgba16[..., [2, 1, 0, 3]].copy())
    np.testing.assert_allclose(load_image(tmp_path / "c16a.png"), rgb16 / 65535.0, atol=1e-6)


def test_16bit_gray_alpha_png():
    h, w = 20, 30
    gray = (np.arange(h * w).reshape(h, w) * 100).astype(np.uint16)
    alpha = np.full((h, w), 65535, np.uint16)
    alpha[:, :5] = 0
    rows = np.stack([gray, alpha], axis=-1).astype(">u2")  # PNG stores 16-bit samples big-endian
    raw = b"".join(b"\0" + rows[i].tobytes() for i in range(h))  # filter type 0 per row
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw))
    img = load_image(data + _png_chunk(b"IEND", b""))
    check(img, (h, w))
    np.testing.assert_allclose(img[:, :5], 1.0)  # transparent: white
    np.testing.assert_allclose(img[:, 5:, 1], gray[:, 5:] / 65535.0, atol=1e-6)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pattern()).save(tmp_path / "o.png", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")).convert("RGB"))
    img = load_image(tmp_path / "o.png")
    np.testing.assert_array_equal(to_uint8(img), expected)


def test_exif_rotated_jpeg_comes_out_upright(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90° clockwise
    Image.fromarray(pattern(24, 40)).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    img = load_image(tmp_path / "r.jpg")
    check(img, (40, 24))  # height and width swapped
    # the red block was top-left in the stored pixels; rotated clockwise it is top-right
    assert img[:4, -4:, 0].mean() > 0.9 and img[:4, -4:, 1:].mean() < 0.1


def test_16bit_png_with_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8
    ramp = (np.arange(20 * 30, dtype=np.uint32).reshape(20, 30) * 100).astype(np.uint16)
    rgb16 = np.stack([ramp, ramp, ramp], axis=-1)
    ok, buf = cv2.imencode(".png", rgb16)
    assert ok
    # rebuild the same image with PIL carrying EXIF is not possible at 16 bits, so insert an eXIf chunk
    data = buf.tobytes()
    chunk = _png_chunk(b"eXIf", exif.tobytes()[6:] if exif.tobytes().startswith(b"Exif") else exif.tobytes())
    data = data[:33] + chunk + data[33:]
    img = load_image(data)
    check(img, (30, 20))
    np.testing.assert_allclose(img[..., 0], np.rot90(ramp / 65535.0, k=1), atol=1e-6)


# ---------------------------------------------------------------------------- sources


def test_bytes_file_object_pil_and_arrays_agree(tmp_path):
    arr = pattern()
    Image.fromarray(arr).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    ref = load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(data), ref)
    np.testing.assert_array_equal(load_image(bytearray(data)), ref)
    with open(tmp_path / "a.png", "rb") as f:
        np.testing.assert_array_equal(load_image(f), ref)
    np.testing.assert_array_equal(load_image(io.BytesIO(data)), ref)
    np.testing.assert_array_equal(load_image(Image.open(tmp_path / "a.png")), ref)
    np.testing.assert_array_equal(load_image(arr), ref)
    np.testing.assert_array_equal(load_image(arr.astype(np.int64)), ref)
    np.testing.assert_allclose(load_image(arr.astype(np.uint16) * 257), ref, atol=1e-6)
    np.testing.assert_allclose(load_image(arr / 255.0), ref, atol=1e-6)


def test_array_layouts():
    gray = np.linspace(0, 1, 20 * 30, dtype=np.float32).reshape(20, 30)
    check(load_image(gray), (20, 30))
    check(load_image(gray[..., None]), (20, 30))
    ga = np.stack([gray, np.ones_like(gray)], axis=-1)
    np.testing.assert_allclose(load_image(ga)[..., 2], gray)
    check(load_image(np.ones((20, 30), bool)), (20, 30))


@pytest.mark.parametrize(
    "arr, words",
    [
        (np.zeros((3, 32, 32), np.float32), "channel-first"),
        (np.zeros((1, 32, 32, 3), np.float32), "batch of one"),
        (np.zeros((32, 32, 5), np.float32), "shape"),
        (np.zeros((32,), np.float32), "shape"),
        (np.full((32, 32, 3), 255.0, np.float32), "divide by 255"),
        (np.full((32, 32, 3), -3.0, np.float32), "[0, 1]"),
        (np.full((32, 32, 3), np.nan, np.float32), "NaN"),
        (np.full((32, 32, 3), 300, np.int32), "0–255"),
        (np.zeros((32, 32, 3), np.complex64), "dtype"),
    ],
)
def test_bad_arrays(arr, words):
    with pytest.raises(InputError) as e:
        load_image(arr)
    assert words in str(e.value)


def test_unreadable_inputs(tmp_path):
    (tmp_path / "notes.png").write_text("this is not an image, just text renamed to .png\n" * 5)
    (tmp_path / "empty.jpg").write_bytes(b"")
    cases = {
        tmp_path / "notes.png": "not an image",
        tmp_path / "empty.jpg": "empty",
        tmp_path / "missing.png": "no such file",
        tmp_path: "folder",
    }
    for src, words in cases.items():
        with pytest.raises(InputError) as e:
            load_image(src)
        assert words in str(e.value), str(e.value)
    with pytest.raises(InputError, match="empty"):
        load_image(b"")
    with pytest.raises(InputError, match="cannot read an image from a int"):
        load_image(42)
    with pytest.raises(InputError, match="torch tensor"):
        load_image(torch.zeros(1, 3, 32, 32))


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_image(buf.getvalue()[: len(buf.getvalue()) // 2])
    opened = Image.open(io.BytesIO(buf.getvalue()[: len(buf.getvalue()) // 2]))  # PIL decodes only when asked
    with pytest.raises(InputError, match="PIL image is truncated or corrupt"):
        load_image(opened)
    with pytest.raises(InputError) as refused:  # bfr's own refusal of a PIL image keeps its own message
        load_image(Image.fromarray(np.full((16, 16), 300.0, np.float32), mode="F"))
    assert "truncated" not in str(refused.value)


def test_a_path_that_cannot_be_written_is_an_input_error(tmp_path):
    img = np.zeros((16, 16, 3), np.float32)
    (tmp_path / "taken.png").mkdir()  # a folder where the file goes
    (tmp_path / "file").write_text("x")  # a file where a folder goes
    for target, why in ((tmp_path / "taken.png", "Is a directory"), (tmp_path / "file" / "a.png", "")):
        with pytest.raises(InputError, match=f"cannot write {target}: {why}"):
            save_image(img, target)


# ---------------------------------------------------------------------------- size limits


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width×height: only a lazy reader can reject it cheaply."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def test_huge_header_is_rejected_before_decoding(tmp_path):
    (tmp_path / "big.png").write_bytes(_png_claiming(6000, 5000))  # 30 MP: above our cap, below PIL's guard
    with pytest.raises(InputError) as e:
        load_image(tmp_path / "big.png")
    msg = str(e.value)
    assert "6000×5000" in msg and "16.8 MP" in msg and "downscale" in msg
    with pytest.raises(InputError, match="downscale"):  # 10 GP: PIL's own bomb guard fires first
        load_image(_png_claiming(100_000, 100_000))


def test_lowered_cap_and_tiny_images(tmp_path, monkeypatch):
    Image.fromarray(pattern(64, 64)).save(tmp_path / "a.png")
    monkeypatch.setattr(imageio, "MAX_PIXELS", 64 * 63)
    with pytest.raises(InputError, match="64×64"):
        load_image(tmp_path / "a.png")
    with pytest.raises(InputError, match="64×64"):
        load_image(pattern(64, 64))
    check(load_image(tmp_path / "a.png", max_pixels=64 * 64), (64, 64))
    monkeypatch.undo()
    Image.fromarray(pattern(8, 40)).save(tmp_path / "thin.png")
    with pytest.raises(InputError, match="at least 16 pixels"):
        load_image(tmp_path / "thin.png")
    with pytest.raises(InputError, match="at least 16 pixels"):
        load_image(Image.new("RGB", (10, 10)))
    check(load_image(tmp_path / "thin.png", min_side=1), (8, 40))


# ---------------------------------------------------------------------------- writing, tensors, resizing


def test_save_image(tmp_path):
    img = as_float_image(pattern())
    out = save_image(img, tmp_path / "deep" / "dir" / "x")
    assert out.suffix == ".png" and out.exists()
    np.testing.assert_array_equal(load_image(out), img)
    jpg = save_image(to_uint8(img), tmp_path / "x.jpg", quality=90)
    assert np.abs(load_image(jpg) - img).mean() < 0.03
    np.testing.assert_array_equal(load_image(save_image(to_tensor(img), tmp_path / "t.png")), img)
    gray = save_image(img[..., 0], tmp_path / "g.png")
    assert Image.open(gray).mode == "L"
    with pytest.raises(InputError, match="unknown image format"):
        save_image(img, tmp_path / "x.nope")
    with pytest.raises(InputError, match="shape"):
        save_image(np.zeros((2, 3, 4, 5)), tmp_path / "bad.png")


def test_to_uint8_rounds_and_clips():
    x = np.array([[[-0.5, 0.0, 0.5 / 255], [0.499, 1.0, 7.0]]], np.float32)
    np.testing.assert_array_equal(to_uint8(x), [[[0, 0, 1], [127, 255, 255]]])


def test_tensor_roundtrip():
    img = as_float_image(pattern())
    t = to_tensor(img)
    assert t.shape == (1, 3, 24, 40) and t.dtype == torch.float32
    np.testing.assert_array_equal(from_tensor(t), img)
    np.testing.assert_array_equal(from_tensor(t[0]), img)
    np.testing.assert_array_equal(from_tensor(t * 2 - 0.5), np.clip(img * 2 - 0.5, 0, 1))
    with pytest.raises(InputError, match="batch of 2"):
        from_tensor(torch.cat([t, t]))


def test_resize():
    img = as_float_image(pattern())
    assert resize(img, 12).shape == (12, 12, 3)
    up = resize(img, (48, 80))
    assert up.shape == (48, 80, 3) and up.min() >= 0 and up.max() <= 1
    assert resize(img, (24, 40)) is img
    assert resize(img[..., :1], (12, 20)).shape == (12, 20, 1)
    # area averaging (antialiased) keeps the mean of a fine checkerboard; nearest does not
    checker = np.indices((64, 64)).sum(0) % 2
    checker = np.repeat(checker[..., None], 3, -1).astype(np.float32)
    assert abs(resize(checker, 16).mean() - 0.5) < 1e-6 and np.ptp(resize(checker, 16)) < 1e-6
    with pytest.raises(InputError, match="interpolation"):
        resize(img, 10, "fancy")


def test_real_faces_load():
    for path in lfw_faces(3):
        img = load_image(path)
        check(img, (150, 150))
        ref = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB) / 255.0
        assert np.abs(img - ref).mean() < 2 / 255  # decoders differ only in JPEG rounding


def test_megapixel_counts_differ_in_the_message():
    from bfr.imageio import MAX_PIXELS, megapixels

    assert megapixels(4097 * 4096, MAX_PIXELS) == ("16.781", "16.777")  # not "16.8 … the 16.8 MP limit"
    assert megapixels(20_000_000, MAX_PIXELS) == ("20.0", "16.8")
