"""bfr.degradations: seeded, reproducible, and each step measurably does what its parameter says.

Synthetic images keep most tests exact and fast; 2–3 LFW faces from ../shared/data check
the same properties on real photos (skipped with a message when the data is absent).
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from bfr.degradations import (
    PRESETS,
    CameraConfig,
    CameraParams,
    DegradationConfig,
    DegradationParams,
    apply,
    camera_pipeline,
    degrade,
    degrade_batch,
    gaussian_kernel,
    preset,
    sample_params,
    scale_params,
    scale_to,
    test_grid,
    to_gray,
)
from bfr.degradations.synth import demosaic_rggb, mosaic_rggb
from bfr.errors import InputError
from bfr.paths import data_dir

LFW = data_dir() / "lfw150"
NONE = DegradationParams()  # no blur, no resampling, no noise, no JPEG


def faces(n: int = 2) -> list[np.ndarray]:
    if not LFW.exists():
        pytest.skip(f"shared data not found at {LFW} (set BFR_DATA or check out ../shared beside the repo)")
    paths = sorted(LFW.glob("*.jpg"))[:n]
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0 for p in paths]


def card(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus sharp-edged blocks: both low and high frequencies."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([x, y, 0.5 + 0.3 * np.sin(6 * x + 4 * y)], axis=-1)
    rng = np.random.default_rng(seed)
    for _ in range(6):
        y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
        img[y0 : y0 + h // 6, x0 : x0 + w // 6] = rng.random(3)
    return np.clip(img, 0, 1).astype(np.float32)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(np.mean((a - b) ** 2), 1e-12)))


def lap_var(img: np.ndarray) -> float:
    """High-frequency energy: variance of the Laplacian of the luma."""
    return float(cv2.Laplacian(to_gray(img)[..., 0], cv2.CV_32F).var())


# ---------------------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_same_seed_same_output_different_seed_differs(name):
    img = card(48, 48)
    a, pa = degrade(img, name, seed=3)
    b, pb = degrade(img, name, seed=3)
    c, pc = degrade(img, name, seed=4)
    assert pa == pb and np.array_equal(a, b)
    assert pa != pc and not np.array_equal(a, c)
    assert a.dtype == np.float32 and a.shape == img.shape and 0 <= a.min() and a.max() <= 1


def test_returned_params_are_what_was_applied():
    img = card()
    config = preset("difface", 64)
    lq, params = degrade(img, config, seed=11)
    rng = np.random.default_rng(11)
    assert sample_params(config, rng) == params
    assert np.array_equal(apply(img, params, rng), lq)
    # and fixed params pass through unchanged
    lq2, params2 = degrade(img, params, seed=11)
    assert params2 is params


def test_no_degradation_is_identity_and_q100_is_close():
    img = card(37, 53)
    lq, _ = degrade(img, NONE, seed=0)
    np.testing.assert_allclose(lq, img, atol=1e-6)
    near = DegradationParams(sigma_x=0.1, sigma_y=0.1, scale=1.0, noise=0.0, jpeg_quality=100)
    # OpenCV's JPEG halves the chroma resolution even at q = 100, as in the authors' code:
    # luma survives, the saturated colour edges of the test card lose a little.
    out = degrade(img, near)[0]
    assert psnr(to_gray(out), to_gray(img)) > 45 and psnr(out, img) > 25
    for face in faces(2):
        assert psnr(degrade(face, near)[0], face) > 45


# ---------------------------------------------------------------------------- each step


def test_kernel_is_normalized_and_rotates():
    k = gaussian_kernel(41, 6.0, 2.0, 0.0)
    assert k.shape == (41, 41) and abs(k.sum() - 1) < 1e-5
    assert k[20].sum() > k[:, 20].sum()  # wide along x at angle 0
    np.testing.assert_allclose(gaussian_kernel(41, 6.0, 2.0, 90.0), k.T, atol=1e-6)
    np.testing.assert_allclose(gaussian_kernel(41, 3.0, 3.0, 37.0), gaussian_kernel(41, 3.0, 3.0), atol=1e-6)
    with pytest.raises(InputError, match="odd"):
        gaussian_kernel(40, 1.0, 1.0)


def test_stronger_blur_lowers_high_frequencies():
    for img in [card(96, 96), *faces(2)]:
        energies = [lap_var(degrade(img, replace(NONE, sigma_x=s, sigma_y=s))[0]) for s in (0.0, 1.0, 2.0, 4.0)]
        assert np.all(np.diff(energies) < 0), energies


def test_anisotropic_blur_follows_its_angle():
    stripes_v = np.zeros((64, 64, 3), np.float32)
    stripes_v[:, ::4] = 1.0  # vertical lines: only horizontal blur smears them
    along_x = degrade(stripes_v, replace(NONE, sigma_x=3.0, sigma_y=0.3, angle=0.0))[0]
    along_y = degrade(stripes_v, replace(NONE, sigma_x=3.0, sigma_y=0.3, angle=90.0))[0]
    assert lap_var(along_x) < 0.1 * lap_var(along_y)


def test_noise_std_matches_delta():
    flat = np.full((128, 128, 3), 0.5, np.float32)
    for delta in (5.0, 10.0, 20.0):
        lq, _ = degrade(flat, replace(NONE, noise=delta), seed=1)
        assert abs(lq.std() - delta / 255) < 0.03 * delta / 255
        assert abs(lq.mean() - 0.5) < 1e-3
    channels = degrade(flat, replace(NONE, noise=10.0), seed=1)[0]
    assert not np.array_equal(channels[..., 0], channels[..., 1])  # colour noise, not gray


def test_lower_jpeg_quality_lowers_psnr():
    for img in [card(64, 64), *faces(2)]:
        scores = [psnr(degrade(img, replace(NONE, jpeg_quality=q))[0], img) for q in (95, 70, 40, 10)]
        assert np.all(np.diff(scores) < 0), scores


def test_larger_downsampling_lowers_psnr():
    for img in faces(2):
        scores = [psnr(degrade(img, replace(NONE, scale=r))[0], img) for r in (1.0, 2.0, 4.0, 8.0)]
        assert np.all(np.diff(scores) < 0), scores


def test_gray_flag():
    lq, _ = degrade(card(), replace(NONE, gray=True, noise=5.0, jpeg_quality=80), seed=0)
    assert np.array_equal(lq[..., 0], lq[..., 1]) and np.array_equal(lq[..., 1], lq[..., 2])
    rng = np.random.default_rng(0)
    always = DegradationConfig(gray_prob=1.0)
    assert all(sample_params(always, rng).gray for _ in range(5))


@pytest.mark.parametrize("shape", [(37, 53), (17, 23), (16, 101), (150, 150)])
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_output_size_equals_input_size(shape, name):
    img = card(*shape)
    rng = np.random.default_rng(0)
    config = PRESETS[name]  # 512-px ranges on a small image: the harshest case for sizes
    for _ in range(3):
        lq = apply(img, sample_params(config, rng), rng)
        assert lq.shape == img.shape and lq.dtype == np.float32
    huge_r = replace(NONE, scale=200.0, noise=5.0, jpeg_quality=50)  # LQ side clamps at 1 px
    assert apply(img, huge_r, rng).shape == img.shape


def test_bad_inputs():
    with pytest.raises(InputError, match="HWC RGB"):
        degrade(np.zeros((3, 32, 32), np.float32), NONE)
    with pytest.raises(InputError, match="unknown degradation preset"):
        degrade(card(), "heavy")
    with pytest.raises(InputError, match="positive"):
        degrade(card(), replace(NONE, scale=0.0))
    with pytest.raises(InputError, match="JPEG quality"):
        degrade(card(), replace(NONE, jpeg_quality=0))


# ---------------------------------------------------------------------------- presets and scaling


def test_presets_match_the_published_ranges():
    d = PRESETS["difface"]
    assert (d.sigma, d.scale, d.noise, d.jpeg, d.gray_prob, d.iso_prob, d.kernel_size) == (
        (0.1, 15.0),
        (0.8, 32.0),
        (0.0, 20.0),
        (30, 100),
        0.01,
        0.5,
        41,
    )
    g = PRESETS["gfpgan"]
    assert (g.sigma, g.scale, g.noise, g.jpeg) == ((0.1, 10.0), (0.8, 8.0), (0.0, 20.0), (60, 100))
    assert preset("difface") is d and preset("difface", 512) == d


def test_sampled_values_stay_in_range_and_mix_kernels():
    config = PRESETS["difface"]
    rng = np.random.default_rng(0)
    draws = [sample_params(config, rng) for _ in range(400)]
    for p in draws:
        assert 0.1 <= p.sigma_x <= 15 and 0.1 <= p.sigma_y <= 15 and 0.8 <= p.scale <= 32
        assert 0 <= p.noise <= 20 and 30 <= p.jpeg_quality <= 100
    iso = sum(p.sigma_x == p.sigma_y for p in draws)
    assert 150 < iso < 250  # 50/50
    assert {p.jpeg_quality for p in draws} >= {30, 100}  # both ends reachable


def test_scale_to_keeps_the_degradation_relative_to_the_face():
    c64 = preset("difface", 64)
    assert c64.sigma == (0.1, 15 / 8) and c64.scale == (0.8, 4.0) and c64.kernel_size == 7
    assert (c64.noise, c64.jpeg, c64.resolution) == ((0.0, 20.0), (30, 100), 64)
    # the smallest LQ face has the same pixel count at both sizes: 512/32 = 64/4 = 16 px
    assert 512 / PRESETS["difface"].scale[1] == 64 / c64.scale[1]
    assert preset("mild", 64).scale == (1.0, 1.0)  # never turns downsampling into upsampling
    assert scale_to(scale_to(PRESETS["difface"], 256), 512).scale == PRESETS["difface"].scale
    assert preset("camera", 128).scale == (1.0, 1.0) and isinstance(preset("camera", 128), CameraConfig)
    # a string preset is scaled to the image's larger side
    img = card(64, 48)
    assert degrade(img, "difface", seed=5)[1] == degrade(img, c64, seed=5)[1]
    with pytest.raises(InputError, match="resolution"):
        scale_to(PRESETS["difface"], 0)


def test_blur_at_64px_matches_blur_at_512px_seen_smaller():
    """The point of scaling: blurring at 512 then shrinking ≈ shrinking then the scaled blur."""
    big = cv2.resize(card(64, 64, seed=2), (512, 512), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    small = cv2.resize(big, (64, 64), interpolation=cv2.INTER_AREA)
    p512 = replace(NONE, sigma_x=12.0, sigma_y=6.0, angle=30.0)
    via_big = cv2.resize(degrade(big, p512)[0], (64, 64), interpolation=cv2.INTER_AREA)
    via_small = degrade(small, scale_params(p512, 64 / 512))[0]
    assert psnr(via_big, via_small) > 35


def test_test_grid_is_fixed_and_covers_the_published_values():
    grid = test_grid()
    assert grid == test_grid() and len(grid) == 20
    assert sorted({p.sigma_x for p in grid}) == [4.0, 8.0, 12.0, 16.0]
    assert sorted({p.noise for p in grid}) == [1.0, 5.0, 10.0, 15.0, 20.0]
    assert {p.jpeg_quality for p in grid} == {30, 40, 50, 60, 70}
    assert {p.scale for p in grid} == {4.0, 8.0, 16.0, 24.0, 32.0, 40.0}
    assert all(p.sigma_y == p.sigma_x / 2 and not p.gray for p in grid)
    assert len({p.angle for p in grid}) == 4
    assert len({(p.sigma_x, p.noise) for p in grid}) == 20
    small = test_grid(64)
    assert [p.sigma_x for p in small] == [p.sigma_x / 8 for p in grid]
    assert [p.scale for p in small] == [max(1.0, p.scale / 8) for p in grid]
    img = card(64, 64)
    assert all(np.array_equal(degrade(img, p, seed=0)[0], degrade(img, p, seed=0)[0]) for p in small[:4])


# ---------------------------------------------------------------------------- camera pipeline


def test_mosaic_demosaic_keeps_flat_colours():
    flat = np.empty((32, 32, 3), np.float32)
    flat[:] = (0.8, 0.35, 0.1)
    for method in ("bilinear", "ea"):
        out = demosaic_rggb(mosaic_rggb(flat), method)
        np.testing.assert_allclose(out[4:-4, 4:-4], flat[4:-4, 4:-4], atol=1e-3)
    with pytest.raises(InputError, match="demosaic"):
        demosaic_rggb(mosaic_rggb(flat), "magic")


def test_camera_pipeline():
    img = card(64, 64)
    clean = CameraParams(scale=1.0, shot_noise=0.0, read_noise=0.0, jpeg_quality=None)
    out = camera_pipeline(img, clean, np.random.default_rng(0))
    assert out.shape == img.shape and psnr(out, img) > 20  # only demosaicing artefacts at edges
    noisy = replace(clean, shot_noise=1e-2, read_noise=1e-2, jpeg_quality=80)
    a = camera_pipeline(img, noisy, np.random.default_rng(0))
    assert np.array_equal(a, camera_pipeline(img, noisy, np.random.default_rng(0)))
    assert psnr(a, img) < psnr(out, img)
    # signal-dependent noise: in linear light the bright patch is noisier in absolute terms,
    # but after gamma the dark patch shows more noise per level, as on a real sensor
    dark, bright = np.full((64, 64, 3), 0.1, np.float32), np.full((64, 64, 3), 0.9, np.float32)
    nd = camera_pipeline(dark, replace(noisy, jpeg_quality=None), np.random.default_rng(1))[8:-8, 8:-8].std()
    nb = camera_pipeline(bright, replace(noisy, jpeg_quality=None), np.random.default_rng(1))[8:-8, 8:-8].std()
    assert nd > nb > 0
    shrunk = camera_pipeline(card(37, 53), replace(clean, scale=40.0), np.random.default_rng(0))
    assert shrunk.shape == (37, 53, 3)  # the sensor image keeps ≥ 4 px per side
    rng = np.random.default_rng(0)
    params = [sample_params(PRESETS["camera"], rng) for _ in range(50)]
    assert {p.demosaic for p in params} == {"bilinear", "ea"}
    assert all(1e-4 <= p.shot_noise <= 1e-2 and 70 <= p.jpeg_quality <= 95 for p in params)


# ---------------------------------------------------------------------------- batches for training


def test_degrade_batch():
    hq = torch.from_numpy(np.stack([card(32, 32, s) for s in range(4)])).permute(0, 3, 1, 2).contiguous()
    config = preset("difface", 32)
    lq = degrade_batch(hq, config, seed=7)
    assert lq.shape == hq.shape and lq.dtype == torch.float32 and 0 <= lq.min() and lq.max() <= 1
    assert torch.equal(lq, degrade_batch(hq, config, seed=7))
    assert not torch.equal(lq, degrade_batch(hq, config, seed=8))
    assert not torch.equal(lq[0], lq[1])
    lq2, params = degrade_batch(hq, config, seed=7, return_params=True)
    assert torch.equal(lq2, lq) and len(params) == 4
    first = apply(hq[0].permute(1, 2, 0).numpy(), params[0], np.random.default_rng(0))
    assert first.shape == (32, 32, 3)
    signed = degrade_batch(hq * 2 - 1, config, seed=7, value_range=(-1, 1))
    torch.testing.assert_close(signed, lq * 2 - 1, atol=1e-6, rtol=0)
    assert degrade_batch(hq.double(), "mild", seed=0).dtype == torch.float64
    with pytest.raises(InputError, match="B, 3, H, W"):
        degrade_batch(hq[0], config)


def test_training_batch_is_fast():
    import time

    hq = torch.rand(16, 3, 64, 64)
    t0 = time.perf_counter()
    degrade_batch(hq, preset("difface", 64), seed=0)
    assert time.perf_counter() - t0 < 1.0  # ~10 ms expected; generous for a shared CPU


def test_real_faces_grid_degrades_more_than_mild():
    for face in faces(3):
        mild = np.mean([psnr(degrade(face, "mild", seed=s)[0], face) for s in range(3)])
        grid = np.mean([psnr(degrade(face, p, seed=0)[0], face) for p in test_grid(150)[::4]])
        assert mild > grid + 3, (mild, grid)
        assert np.array_equal(degrade(face, "difface", seed=1)[0], degrade(face, "difface", seed=1)[0])


def test_camera_lowres_downsamples_at_every_face_size():
    """The unsupervised demo's preset: "camera" loses its downsampling at 64 px, this one keeps it."""
    assert preset("camera", 64).scale == (1.0, 1.0)
    low = preset("camera-lowres", 64)
    assert isinstance(low, CameraConfig) and low.scale == (1.5, 2.5)
    assert 512 / PRESETS["camera-lowres"].scale[1] == 64 / low.scale[1]  # the same smallest sensor face
    assert low.read_noise[1] == 3 * PRESETS["camera"].read_noise[1]
    img = card(64, 64)
    lq, params = degrade(img, "camera-lowres", seed=3)
    assert 1.5 <= params.scale <= 2.5 and lq.shape == img.shape
    assert np.abs(lq - img).mean() > np.abs(degrade(img, "camera", seed=3)[0] - img).mean()
