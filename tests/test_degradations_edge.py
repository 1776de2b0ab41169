"""bfr.degradations, beyond test_degradations.py: graying the training targets, the Bayer
layout of the camera pipeline on flat primaries, kernel symmetries and measured variances,
the scaling clamps, the test grid's layout, and integer inputs.

Images are small synthetic arrays; one test also uses LFW faces (skipped when absent).
"""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

import cv2
import numpy as np
import pytest
import torch

from bfr.degradations import (
    PRESETS,
    CameraParams,
    DegradationConfig,
    DegradationParams,
    apply,
    camera_pipeline,
    degrade,
    degrade_batch,
    gaussian_kernel,
    jpeg,
    preset,
    sample_params,
    scale_params,
    scale_to,
    test_grid,
    to_gray,
)
from bfr.degradations.synth import mosaic_rggb
from bfr.errors import InputError
from bfr.paths import data_dir

NONE = DegradationParams()
LFW = data_dir() / "lfw150"


def checkerboard(h: int = 48, w: int = 48, cell: int = 4) -> np.ndarray:
    board = ((np.indices((h, w)) // cell).sum(0) % 2).astype(np.float32)
    img = np.stack([board, 0.3 + 0.4 * board, 1 - board], axis=-1)
    return img.astype(np.float32)


def lap_var(img: np.ndarray) -> float:
    return float(cv2.Laplacian(to_gray(img)[..., 0], cv2.CV_32F).var())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(float(np.mean((a - b) ** 2)), 1e-12)))


# ---------------------------------------------------------------------------- seeds and identity


def test_seeded_params_and_pixels():
    img = checkerboard(37, 51)
    a, pa = degrade(img, "difface", seed=123)
    b, pb = degrade(img, "difface", seed=123)
    assert pa == pb and np.array_equal(a, b)
    others = [degrade(img, "difface", seed=s)[0] for s in (124, 125)]
    assert all(np.abs(a - o).mean() > 1e-3 for o in others)
    # fixed params: the seed only drives the noise pixels
    fixed = replace(NONE, noise=10.0)
    n1, n2 = degrade(img, fixed, seed=1)[0], degrade(img, fixed, seed=2)[0]
    assert not np.array_equal(n1, n2) and np.array_equal(n1, degrade(img, fixed, seed=1)[0])


def test_identity_params_return_the_input():
    img = np.random.default_rng(0).random((37, 51, 3)).astype(np.float32)
    for params in (NONE, DegradationParams(sigma_x=0, sigma_y=0, scale=1.0, noise=0.0, jpeg_quality=None)):
        out = apply(img, params, np.random.default_rng(0))
        assert out.shape == img.shape and out.dtype == np.float32
        assert np.abs(out - img).max() <= 1e-6
    # q = 100 is not lossless (OpenCV keeps 4:2:0 chroma, like the authors' code) but luma is near-exact
    y, x = np.mgrid[0:37, 0:51] / 51.0
    smooth = np.stack([x, y, 0.5 * (x + y)], axis=-1).astype(np.float32)
    q100 = apply(smooth, replace(NONE, jpeg_quality=100), np.random.default_rng(0))
    assert psnr(to_gray(q100), to_gray(smooth)) > 45


def test_integer_images_are_scaled_not_clipped():
    # fixed bug: uint8 input used to be clipped to [0, 1] as if float, so 128 became white
    u8 = np.full((20, 20, 3), 128, np.uint8)
    out, _ = degrade(u8, NONE)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 128 / 255, atol=1e-6)
    u16 = np.full((20, 20, 3), 16384, np.uint16)
    np.testing.assert_allclose(degrade(u16, NONE)[0], 16384 / 65535, atol=1e-6)


# ---------------------------------------------------------------------------- each step, measured


def test_kernel_normalized_symmetric_and_rotation():
    for size, sx, sy, angle in [(21, 3.0, 1.0, 0.0), (41, 6.0, 2.0, 30.0), (7, 0.5, 1.5, 120.0), (3, 0.1, 0.1, 0.0)]:
        k = gaussian_kernel(size, sx, sy, angle)
        assert k.shape == (size, size) and k.dtype == np.float32
        assert abs(float(k.sum()) - 1.0) < 1e-5 and k.min() >= 0
        np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-7)  # point-symmetric: no shift of the image
        assert np.unravel_index(k.argmax(), k.shape) == (size // 2, size // 2)
    k0 = gaussian_kernel(31, 4.0, 1.5, 0.0)
    np.testing.assert_allclose(gaussian_kernel(31, 4.0, 1.5, 90.0), k0.T, atol=1e-6)
    np.testing.assert_allclose(gaussian_kernel(31, 4.0, 1.5, 180.0), k0, atol=1e-6)
    np.testing.assert_allclose(gaussian_kernel(31, 1.5, 4.0, 0.0), k0.T, atol=1e-6)  # swapping σs = 90°
    # measured second moments equal σx² along columns (x) and σy² along rows (y) at angle 0
    r = np.arange(-15, 16)
    assert (k0.sum(0) * r * r).sum() == pytest.approx(16.0, rel=2e-3)
    assert (k0.sum(1) * r * r).sum() == pytest.approx(2.25, rel=2e-3)
    # isotropic: the angle does not matter and the kernel is mirror-symmetric too
    iso = gaussian_kernel(15, 2.0, 2.0, 0.0)
    np.testing.assert_allclose(gaussian_kernel(15, 2.0, 2.0, 63.0), iso, atol=1e-6)
    np.testing.assert_allclose(iso, iso.T, atol=1e-7)
    np.testing.assert_allclose(iso, iso[::-1], atol=1e-7)
    for bad in (0, 4, -3):
        with pytest.raises(InputError, match="odd"):
            gaussian_kernel(bad, 1.0, 1.0)


def test_stronger_blur_lowers_laplacian_variance_on_checkerboard():
    img = checkerboard(64, 64)
    rng = np.random.default_rng(0)
    energies = [lap_var(apply(img, replace(NONE, sigma_x=s, sigma_y=s, kernel_size=21), rng))
                for s in (0, 0.5, 1, 2, 3)]
    assert all(a > 1.2 * b for a, b in pairwise(energies)), energies


def test_stronger_blur_lowers_laplacian_variance_on_a_face():
    if not LFW.exists():
        pytest.skip(f"LFW faces not found at {LFW} (needs ../shared/data beside the repo, or BFR_DATA)")
    path = sorted(LFW.glob("*.jpg"))[0]
    face = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    energies = [lap_var(degrade(face, replace(NONE, sigma_x=s, sigma_y=s))[0]) for s in (0.0, 1.0, 2.0, 4.0, 8.0)]
    assert all(a > b for a, b in pairwise(energies)), energies
    assert energies[-1] < 0.05 * energies[0]


@pytest.mark.parametrize("delta", [1.0, 5.0, 15.0])
def test_noise_std_per_channel(delta):
    flat = np.full((96, 96, 3), 0.5, np.float32)
    lq, _ = degrade(flat, replace(NONE, noise=delta), seed=0)
    stds = lq.reshape(-1, 3).std(0) * 255
    np.testing.assert_allclose(stds, delta, rtol=0.1)
    # channels get independent noise
    c = np.corrcoef(lq.reshape(-1, 3).T)
    assert np.abs(c[np.triu_indices(3, 1)]).max() < 0.05


def test_lower_jpeg_quality_lowers_psnr_on_checkerboard():
    # gray board: a saturated colour one is dominated by 4:2:0 chroma loss at every quality
    img = to_gray(checkerboard(48, 48, cell=3)) * 0.8 + 0.1
    scores = [psnr(jpeg(img, q), img) for q in (100, 90, 70, 50, 30, 10)]
    assert all(a > b for a, b in pairwise(scores)), scores
    assert scores[0] > 40 and scores[-1] < 30, scores
    assert apply(img, replace(NONE, jpeg_quality=30), np.random.default_rng(0)).dtype == np.float32
    for bad in (0, 101):
        with pytest.raises(InputError, match="1…100"):
            jpeg(img, bad)


def test_downsampling_is_bilinear_without_antialiasing():
    # every 4th column lit: shrinking 4× with unaliased bilinear samples between columns 1 and 2
    # of each period (both dark), so the lit columns vanish; area averaging would give 0.25
    lines = np.zeros((32, 32, 3), np.float32)
    lines[:, ::4] = 1.0
    out = apply(lines, replace(NONE, scale=4.0), np.random.default_rng(0))
    assert out.shape == lines.shape
    np.testing.assert_allclose(out, 0.0, atol=1e-6)
    # 2× on a 1-px checkerboard lands halfway between pixels: flat mid-gray
    board = np.repeat(((np.indices((32, 32)).sum(0) % 2).astype(np.float32))[..., None], 3, -1)
    np.testing.assert_allclose(apply(board, replace(NONE, scale=2.0), np.random.default_rng(0)), 0.5, atol=1e-6)
    assert apply(board, replace(NONE, scale=0.8), np.random.default_rng(0)).shape == board.shape  # enlargement


def test_gray_output_and_bt601_luma():
    red = np.zeros((16, 16, 3), np.float32)
    red[..., 0] = 1.0
    np.testing.assert_allclose(to_gray(red)[0, 0], [0.299] * 3, atol=1e-6)
    out = apply(checkerboard(), replace(NONE, gray=True, noise=8.0, jpeg_quality=60), np.random.default_rng(0))
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])


# ---------------------------------------------------------------------------- sizes and presets


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_odd_sizes_keep_their_size(name):
    img = checkerboard(37, 51)
    for seed in range(4):
        out, params = degrade(img, name, seed=seed)
        assert out.shape == (37, 51, 3) and out.dtype == np.float32
        assert 0.0 <= out.min() and out.max() <= 1.0
    assert degrade(checkerboard(51, 37), name, seed=0)[0].shape == (51, 37, 3)


def test_unknown_preset_is_an_input_error():
    for call in (lambda: preset("nope"), lambda: degrade(checkerboard(), "nope"),
                 lambda: degrade_batch(torch.rand(1, 3, 16, 16), "nope")):
        with pytest.raises(InputError, match="unknown degradation preset 'nope'") as e:
            call()
        assert all(name in str(e.value) for name in PRESETS)  # the message lists the choices


def test_scale_to_64_divides_by_8_with_clamps():
    base = PRESETS["difface"]
    c = scale_to(base, 64)
    assert c.sigma == (max(0.1 / 8, 0.1), 15.0 / 8)  # σ floor 0.1 px (it was not smaller to begin with)
    assert c.scale == (0.8, 32.0 / 8)  # r < 1 kept; r ≥ 1 divided by 8
    assert c.kernel_size == 7 and c.resolution == 64  # radius 20 → ceil(2.5) = 3 → 7×7
    assert (c.noise, c.jpeg, c.iso_prob, c.gray_prob) == (base.noise, base.jpeg, base.iso_prob, base.gray_prob)
    assert preset("difface", 64) == c
    g = preset("gfpgan", 64)
    assert g.sigma == (0.1, 10 / 8) and g.scale == (0.8, 1.0)  # 8 / 8 = 1: no pretend downsampling below 1
    # clamps of fixed params: r never below 1 unless it was, σ = 0 stays 0, kernel odd and ≥ 3
    p = scale_params(DegradationParams(sigma_x=0.0, sigma_y=0.4, scale=2.0, kernel_size=41), 1 / 8)
    assert p.sigma_x == 0.0 and p.sigma_y == 0.1 and p.scale == 1.0 and p.kernel_size == 7
    tiny = scale_params(DegradationParams(sigma_x=0.05, sigma_y=0.05, scale=0.9, kernel_size=41), 1 / 64)
    assert tiny.sigma_x == 0.05 and tiny.scale == 0.9 and tiny.kernel_size == 3
    assert scale_params(DegradationParams(kernel_size=41), 1.0).kernel_size == 41
    assert scale_to(base, 1024).sigma == (0.2, 30.0) and scale_to(base, 1024).kernel_size == 81
    cam = preset("camera", 256)
    assert cam.scale == (1.0, 2.0) and cam.jpeg == PRESETS["camera"].jpeg


def test_sampled_params_respect_scaled_ranges():
    c = preset("difface", 64)
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = sample_params(c, rng)
        assert 0.1 <= p.sigma_x <= 1.875 and 0.1 <= p.sigma_y <= 1.875 and 0.8 <= p.scale <= 4.0
        assert p.kernel_size == 7 and 0 <= p.angle < 180
        assert p.angle == 0.0 or p.sigma_x != p.sigma_y  # isotropic draws have no angle


def test_test_grid_layout():
    grid = test_grid()
    assert len(grid) == 20 and grid == test_grid()
    assert {p.sigma_x for p in grid} == {4.0, 8.0, 12.0, 16.0}
    assert {p.noise for p in grid} == {1.0, 5.0, 10.0, 15.0, 20.0}
    assert all(30 <= p.jpeg_quality <= 70 and 4 <= p.scale <= 40 for p in grid)
    assert all(p.sigma_y < p.sigma_x and p.kernel_size == 41 and not p.gray for p in grid)  # anisotropic
    qualities = [p.jpeg_quality for p in grid]
    assert all(qualities.count(q) == 4 for q in (30, 40, 50, 60, 70))  # balanced
    for a, b in pairwise(grid):  # neighbours never share angle, scale or quality
        assert a.angle != b.angle and a.scale != b.scale and a.jpeg_quality != b.jpeg_quality
    g64 = test_grid(64)
    assert [p.noise for p in g64] == [p.noise for p in grid]
    assert [p.jpeg_quality for p in g64] == qualities
    assert all(p.kernel_size == 7 for p in g64)


# ---------------------------------------------------------------------------- camera pipeline


def test_mosaic_places_colours_in_rggb_order():
    img = np.zeros((4, 4, 3), np.float32)
    img[..., 0], img[..., 1], img[..., 2] = 0.9, 0.5, 0.1
    raw = mosaic_rggb(img)
    np.testing.assert_allclose(raw[:2, :2], [[0.9, 0.5], [0.5, 0.1]])


@pytest.mark.parametrize("demosaic", ["bilinear", "ea"])
@pytest.mark.parametrize("channel", [0, 1, 2])
def test_camera_keeps_flat_primaries(demosaic, channel):
    # a swapped Bayer name (BGGR vs RGGB) would turn red into blue here
    img = np.zeros((37, 51, 3), np.float32)
    img[..., channel] = 1.0
    params = CameraParams(scale=1.0, shot_noise=1e-3, read_noise=5e-3, demosaic=demosaic, jpeg_quality=90)
    out = camera_pipeline(img, params, np.random.default_rng(0))
    assert out.shape == img.shape
    means = out[4:-4, 4:-4].reshape(-1, 3).mean(0)
    others = [c for c in range(3) if c != channel]
    assert means[channel] > 0.8 and means[others].max() < 0.2, means


def test_camera_reproducible_and_noisier_than_clean():
    img = checkerboard(40, 40, cell=5)
    cfg = preset("camera", 40)
    a, pa = degrade(img, cfg, seed=9)
    b, pb = degrade(img, cfg, seed=9)
    c, pc = degrade(img, cfg, seed=10)
    assert isinstance(pa, CameraParams) and pa == pb and np.array_equal(a, b)
    assert pa != pc and not np.array_equal(a, c)
    clean = CameraParams(scale=1.0, shot_noise=0.0, read_noise=0.0, jpeg_quality=None)
    loud = replace(clean, shot_noise=1e-2, read_noise=2e-2)
    gray = np.full((32, 32, 3), 0.4, np.float32)
    assert camera_pipeline(gray, clean, np.random.default_rng(0))[4:-4, 4:-4].std() < 1e-3
    assert camera_pipeline(gray, loud, np.random.default_rng(0))[4:-4, 4:-4].std() > 0.02
    with pytest.raises(InputError, match="demosaic"):
        camera_pipeline(gray, replace(clean, demosaic="magic"), np.random.default_rng(0))


# ---------------------------------------------------------------------------- batches and gray targets


def test_degrade_batch_shapes_ranges_and_gray_lq():
    hq = torch.rand(3, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    always_gray = replace(preset("difface", 40), gray_prob=1.0)
    lq, params = degrade_batch(hq, always_gray, seed=5, return_params=True)
    assert lq.shape == hq.shape and lq.dtype == torch.float32
    assert float(lq.min()) >= 0.0 and float(lq.max()) <= 1.0
    assert len(params) == 3 and all(p.gray for p in params)
    assert torch.equal(lq[:, 0], lq[:, 1]) and torch.equal(lq[:, 1], lq[:, 2])
    # the same batch, same seed, without gray: colour differs, gray never forced
    never = replace(always_gray, gray_prob=0.0)
    lq_col, p_col = degrade_batch(hq, never, seed=5, return_params=True)
    assert not any(p.gray for p in p_col) and not torch.equal(lq_col[:, 0], lq_col[:, 2])
    # (-1, 1) tensors: same result, mapped
    lq_pm = degrade_batch(hq * 2 - 1, always_gray, seed=5, value_range=(-1.0, 1.0))
    torch.testing.assert_close(lq_pm, lq * 2 - 1, atol=1e-6, rtol=0)
    assert float(lq_pm.min()) >= -1.0 and float(lq_pm.max()) <= 1.0


def test_gray_lq_gets_a_gray_target():
    from bfr.training.backbone import gray_where

    hq = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    cfg = replace(preset("difface", 16), gray_prob=0.5)
    lq, params = degrade_batch(hq, cfg, seed=3, return_params=True)
    flags = [p.gray for p in params]
    assert any(flags) and not all(flags), flags  # seed 3 gives a mix
    target = gray_where(hq, params)
    assert target.shape == hq.shape
    for i, gray in enumerate(flags):
        if gray:
            expected = torch.from_numpy(to_gray(hq[i].permute(1, 2, 0).numpy())).permute(2, 0, 1)
            torch.testing.assert_close(target[i], expected, atol=1e-6, rtol=0)
            assert torch.equal(lq[i, 0], lq[i, 2])
        else:
            assert torch.equal(target[i], hq[i])
            assert not torch.equal(lq[i, 0], lq[i, 2])


def test_degrade_batch_rejects_bad_shapes():
    for bad in (torch.rand(3, 16, 16), torch.rand(1, 1, 16, 16), torch.rand(1, 4, 16, 16)):
        with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
            degrade_batch(bad, DegradationConfig())


def test_describe_says_what_was_applied():
    from bfr.degradations import describe

    text = describe(DegradationParams(sigma_x=2.0, sigma_y=1.0, scale=4.0, noise=10.0, jpeg_quality=60, gray=True))
    assert text == "blur σ 2.0×1.0, ↓4.0, noise 10.0, JPEG 60, gray"
    assert "no JPEG" in describe(DegradationParams())
    assert describe(CameraParams(scale=2.0)).startswith("camera, ↓2.0")


def test_every_seeded_entry_point_takes_one_seed_range():
    """numpy refuses negative seeds and torch takes them: bfr takes 0 … 2**63 − 1 everywhere, so a seed that
    works in one command works in all, and any other is an InputError (a one-line error), not a ValueError."""
    from bfr.api import Restorer
    from bfr.errors import MAX_DERIVED_SEED, MAX_SEED
    from bfr.methods.base import generator
    from bfr.methods.unsupervised import Unsupervised

    img = np.full((32, 32, 3), 0.5, np.float32)
    restorer = Restorer(Unsupervised(torch.nn.Identity(), resolution=16, framing="lfw", tier="compact",
                                     device=torch.device("cpu")))
    for seed in (0, MAX_SEED, np.int64(7), 3.0):  # what a user may give
        degrade(img, "mild", seed=seed)
        restorer.restore(img, aligned=True, framing="lfw", seed=seed)
    for seed in (-1, MAX_SEED + 1, 1.5, float("nan"), "1"):
        with pytest.raises(InputError, match=f"a seed is a whole number from 0 to {MAX_SEED}, got"):
            degrade(img, "mild", seed=seed)
        with pytest.raises(InputError, match=f"a seed is a whole number from 0 to {MAX_SEED}, got"):
            restorer.restore(img, aligned=True, framing="lfw", seed=seed)
    for seed in (MAX_SEED + 1000, MAX_DERIVED_SEED):  # what bfr derives from one (seed + batch index)
        degrade_batch(torch.rand(1, 3, 32, 32), "mild", seed=seed)
        generator(seed)
        restorer.model.restore(torch.rand(1, 3, 32, 32), seed=seed)
    for seed in (-1, MAX_DERIVED_SEED + 1):
        with pytest.raises(InputError, match="a seed is a whole number from 0"):
            degrade_batch(torch.rand(1, 3, 32, 32), "mild", seed=seed)
        with pytest.raises(InputError, match="a seed is a whole number from 0"):
            generator(seed)
        with pytest.raises(InputError, match="a seed is a whole number from 0"):
            restorer.model.restore(torch.rand(1, 3, 32, 32), seed=seed)
