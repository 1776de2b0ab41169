"""The weights-gated metrics (LPIPS, FID, landmark distance) wired end to end with stand-in weights.

Their real weights cannot be fetched here, so the tests put *random* weights of the real
architectures where bfr looks for them (torch's hub cache) or hand the metric a detector that
needs no download (the Haar cascades), and check the numbers against hand computations.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bfr import metrics as M
from bfr.paths import COMPACT_WEIGHTS_DIR, data_dir

HAVE_DATA = (data_dir() / "lfw150").is_dir() and (data_dir() / "lfw150-splits" / "test.txt").is_file()
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="../shared/data (LFW and its splits) is not here")
HAVE_WEIGHTS = all((COMPACT_WEIGHTS_DIR / f).is_file() for f in ("prior64.safetensors", "swinir64.safetensors"))


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
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        yield ckpt


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


def test_lpips_matches_the_formula_by_hand(stand_in_hub):
    import lpips

    ok, why = M.metric_status("lpips")
    assert ok, why
    metric = M.LPIPS()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 64, 64, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    got = metric(x, y)
    alex = torch.load(stand_in_hub / M.ALEXNET_FILE, weights_only=True)
    lin = torch.load(f"{lpips.__path__[0]}/weights/v0.1/alex.pth", map_location="cpu", weights_only=True)
    want = _lpips_by_hand(x, y, {k: v.float() for k, v in alex.items()}, lin)
    assert got.dtype == torch.float64 and got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-7)
    assert metric(x, x).abs().max() == 0
    np.testing.assert_allclose(metric(y, x).numpy(), got.numpy(), rtol=1e-5)  # symmetric
    assert (metric(x, (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1)) > got).all()  # more noise, further


def test_inception_features_and_fid_from_the_hub_cache(stand_in_hub):
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
@pytest.mark.skipif(not HAVE_WEIGHTS, reason="bundled compact weights are missing")
def test_eval_reports_every_optional_metric_when_its_weights_are_there(stand_in_hub, stand_in_facexlib, tmp_path):
    from bfr.evaluation import run_eval

    report = run_eval(tmp_path, n_images=3, steps=10, start_steps=(2,), batch_size=3, device="cpu", progress=False)
    assert not any(d.startswith("unavailable") for d in report["metrics"].values()), report["metrics"]
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
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BFR_FACEXLIB_WEIGHTS", str(folder))
        yield folder


def test_identity_and_landmark_metrics_load_facexlib_files(stand_in_facexlib):
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
