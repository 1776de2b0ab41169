"""bfr.faces: templates, alignment, detection on real photos, paste-back and the pipeline.

Real-image tests read ../shared/data (skipped with a message when it is absent); tests
of the Haar detector need OpenCV's cascade files from opencv-python<5 (skipped, saying so).
Images are kept small so the detector tests stay well under a second each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2")

from bfr.errors import InputError, WeightsUnavailableError  # noqa: E402
from bfr.faces import (  # noqa: E402
    Face,
    FacePipeline,
    estimate_similarity,
    ffhq_to_lfw,
    framing_affine,
    get_detector,
    inverse_affine,
    lfw_to_ffhq,
    paste_faces,
    template,
    transform_points,
    warp_face,
)
from bfr.faces import detect as detect_mod  # noqa: E402
from bfr.faces.align import compose, warp_image  # noqa: E402
from bfr.faces.detect import (  # noqa: E402
    EYE_CASCADE,
    FACE_CASCADE,
    HOW_TO_GET_CASCADES,
    RETINAFACE_FILE,
    find_cascade,
)
from bfr.faces.paste import FaceParser, face_ellipse_mask, output_to_crop_affine, square_soft_mask  # noqa: E402
from bfr.faces.templates import FFHQ_512, LFW_150, frame_inside, reframe_affine  # noqa: E402
from bfr.paths import data_dir  # noqa: E402

REAL = data_dir() / "real-lq"
LFW = data_dir() / "lfw150"
HAVE_CASCADES = find_cascade(FACE_CASCADE) is not None and find_cascade(EYE_CASCADE) is not None
needs_cascades = pytest.mark.skipif(not HAVE_CASCADES, reason=f"no Haar cascade files: {HOW_TO_GET_CASCADES}")


def load_rgb(path, max_side: int | None = None) -> np.ndarray:
    """A test image as float32 RGB in [0, 1] (cv2 directly: bfr.imageio is not needed here)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"cannot read {path}"
    img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    if max_side and max(img.shape[:2]) > max_side:
        k = max_side / max(img.shape[:2])
        img = cv2.resize(img, (round(img.shape[1] * k), round(img.shape[0] * k)), interpolation=cv2.INTER_AREA)
    return img


def need(path):
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (set BFR_DATA or check out ../shared beside the repo)")
    return path


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def synthetic_image(h: int = 160, w: int = 200, seed: int = 0) -> np.ndarray:
    """Smooth random colours: a stand-in photo when only the mechanics are tested."""
    rng = np.random.default_rng(seed)
    small = rng.random((h // 8, w // 8, 3)).astype(np.float32)
    return np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)


class StubDetector:
    """Returns fixed faces, so pipeline tests need neither cascades nor weights."""

    name = "stub"
    reason = ""
    min_eye_distance = 0.0

    def __init__(self, faces):
        self.faces = faces

    def detect(self, img, *, only_center_face=False, max_faces=None, order="size"):
        return detect_mod.select_faces(list(self.faces), img.shape[:2], 0.0, only_center_face, max_faces, order)


def face_at(cx: float, cy: float, eye_distance: float, roll_deg: float = 0.0) -> Face:
    """A Face whose landmarks are the FFHQ template placed at (cx, cy) with this size and roll."""
    pts = FFHQ_512 - FFHQ_512[:2].mean(0)
    k = eye_distance / (FFHQ_512[1, 0] - FFHQ_512[0, 0])
    t = np.deg2rad(roll_deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    lm = pts @ (k * rot).T + (cx, cy)
    half = 1.2 * eye_distance
    return Face(box=(cx - half, cy - half, cx + half, cy + 1.5 * half), landmarks=lm, score=1.0)


# --------------------------------------------------------------------------- templates


def test_templates_scale_with_crop_size():
    np.testing.assert_allclose(template("ffhq", 256), FFHQ_512 / 2)
    np.testing.assert_allclose(template("lfw", 150), LFW_150)
    np.testing.assert_allclose(template("lfw", 64), LFW_150 * 64 / 150)
    with pytest.raises(InputError):
        template("celeba", 512)


def test_framings_are_inverse_and_lfw_fits_inside_ffhq():
    a = framing_affine("ffhq", 512, "lfw", 64)
    b = framing_affine("lfw", 64, "ffhq", 512)
    np.testing.assert_allclose(compose(b, a), [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    # The two templates agree to within a pixel at 150 px once one is mapped onto the other.
    mapped = transform_points(FFHQ_512, framing_affine("ffhq", 512, "lfw", 150))
    assert np.abs(mapped - LFW_150).max() < 1.0
    # Every corner of the LFW crop lands inside the FFHQ crop: ffhq→lfw needs no padding.
    corners = transform_points(np.array([[0, 0], [63, 0], [0, 63], [63, 63]]), b)
    assert corners.min() > 0 and corners.max() < 511
    # The face is larger in LFW framing (the README's "about 11 % smaller" in FFHQ).
    scale = np.sqrt(np.linalg.det(framing_affine("ffhq", 150, "lfw", 150)[:, :2]))
    assert 1.08 < scale < 1.16


def test_estimate_similarity_recovers_a_known_transform():
    t = np.deg2rad(17)
    true = np.array([[0.7 * np.cos(t), -0.7 * np.sin(t), 31.0], [0.7 * np.sin(t), 0.7 * np.cos(t), -12.0]])
    src = FFHQ_512
    dst = transform_points(src, true)
    for method in ("lmeds", "lstsq"):
        np.testing.assert_allclose(estimate_similarity(src, dst, method=method), true, atol=1e-4)
    np.testing.assert_allclose(compose(inverse_affine(true), true), [[1, 0, 0], [0, 1, 0]], atol=1e-12)


def test_lfw_crop_warped_with_its_template_is_identity():
    path = need(LFW / "Aaron_Eckhart_0001.jpg")
    img = load_rgb(path)
    lm = template("lfw", 150)
    crop, affine = warp_face(img, lm, template("lfw", 150), 150)
    np.testing.assert_allclose(affine, [[1, 0, 0], [0, 1, 0]], atol=1e-6)
    assert crop.shape == img.shape
    assert np.abs(crop - img).max() < 1e-3


def test_ffhq_lfw_round_trip():
    path = need(REAL / "cropped_faces" / "Adele_crop.png")
    ffhq = load_rgb(path)
    lfw = ffhq_to_lfw(ffhq, 256)
    assert lfw.shape == (256, 256, 3)
    # The landmarks follow the framing: FFHQ template → LFW template (within the fit residual).
    pts = transform_points(template("ffhq", 512), reframe_affine(512, 512, "ffhq", "lfw", 256))
    assert np.abs(pts - template("lfw", 256)).max() < 2.0
    back = lfw_to_ffhq(lfw, background=ffhq)
    assert back.shape == ffhq.shape
    # Inside the LFW frame the face comes back (softened by two resamplings)...
    a = reframe_affine(512, 512, "ffhq", "lfw", 256)
    inside = (
        warp_image(np.ones((256, 256), np.float32), inverse_affine(a), (512, 512), border="constant", border_value=0.0)
        > 0.999
    )
    assert psnr(back[inside], ffhq[inside]) > 30
    # ...and outside it the original input is untouched.
    outside = (
        warp_image(np.ones((256, 256), np.float32), inverse_affine(a), (512, 512), border="constant", border_value=0.0)
        == 0
    )
    assert outside.sum() > 10_000
    np.testing.assert_array_equal(back[outside], ffhq[outside])
    # Without a background the border is made up from the crop's edge, at the asked size.
    assert lfw_to_ffhq(lfw, size=128).shape == (128, 128, 3)


# --------------------------------------------------------------------------- detection


@pytest.fixture(scope="module")
def haar():
    if not HAVE_CASCADES:
        pytest.skip(f"no Haar cascade files: {HOW_TO_GET_CASCADES}")
    return detect_mod.HaarDetector()


WHOLE = ["00.jpg", "10045.png", "Blake_Lively.jpg"]


@needs_cascades
@pytest.mark.parametrize("name", WHOLE)
def test_haar_finds_faces_in_whole_images(haar, name):
    img = load_rgb(need(REAL / "whole_imgs" / name))
    faces = haar.detect(img)
    # Counts at the time of writing: 00.jpg 2, 10045.png 3, Blake_Lively.jpg 2 (all faces, no false ones).
    print(f"{name}: {len(faces)} faces, eye distances {[round(f.eye_distance) for f in faces]}")
    assert 1 <= len(faces) <= 4
    h, w = img.shape[:2]
    for f in faces:
        assert f.landmarks.shape == (5, 2)
        assert f.eye_distance >= haar.min_eye_distance
        x0, y0, x1, y1 = f.box
        assert -0.5 * (x1 - x0) < x0 < w and -0.5 * (y1 - y0) < y0 < h
        # Eyes above the mouth, left eye on the image's left.
        assert f.landmarks[0, 0] < f.landmarks[1, 0]
        assert f.landmarks[:2, 1].mean() < f.landmarks[3:, 1].mean()
    sizes = [f.eye_distance for f in faces]
    assert sizes == sorted(sizes, reverse=True)


@needs_cascades
@pytest.mark.parametrize(
    "name", ["Adele_crop.png", "Julia_Roberts_crop.png", "Justin_Timberlake_crop.png", "Paris_Hilton_crop.png"]
)
def test_haar_landmarks_on_ffhq_aligned_crops(haar, name):
    # Downscaled to 256 for speed; errors are reported in 512-px units. Measured: mean
    # 4–9 px, worst point 16 px; tolerances leave a factor of 2.
    img = load_rgb(need(REAL / "cropped_faces" / name), max_side=256)
    faces = haar.detect(img)
    assert len(faces) == 1, f"{name}: {len(faces)} faces"
    err = np.linalg.norm(faces[0].landmarks - template("ffhq", 256), axis=1) * 2
    print(f"{name}: landmark error (px at 512) {np.round(err, 1)}")
    assert err.mean() < 20
    assert err.max() < 32


def test_select_faces_orders_filters_and_picks_the_centre():
    faces = [face_at(40, 50, 20), face_at(150, 60, 40), face_at(100, 80, 8)]
    by_size = detect_mod.select_faces(faces, (160, 200), min_eye_distance=10)
    assert [round(f.eye_distance) for f in by_size] == [40, 20]
    ltr = detect_mod.select_faces(faces, (160, 200), order="left_to_right")
    assert [round(f.center[0]) for f in ltr] == sorted(round(f.center[0]) for f in faces)
    centre = detect_mod.select_faces(faces, (160, 200), only_center_face=True)
    assert len(centre) == 1 and round(centre[0].eye_distance) == 8
    assert len(detect_mod.select_faces(faces, (160, 200), max_faces=1)) == 1


def test_missing_cascade_says_to_install_opencv_4(monkeypatch, tmp_path):
    monkeypatch.setenv("BFR_HAAR_DIR", str(tmp_path))  # an empty folder: no cascade files
    assert find_cascade(FACE_CASCADE) is None
    with pytest.raises(WeightsUnavailableError, match="opencv-python<5"):
        detect_mod.HaarDetector()


def test_get_detector_says_why_retinaface_was_not_used(no_facexlib_here):
    with pytest.raises(WeightsUnavailableError, match="RetinaFace") as e:
        get_detector("retinaface")
    # offline: says so, where to put facexlib's file by hand, and where it comes from
    msg = str(e.value)
    assert "downloads are off (HF_HUB_OFFLINE=1)" in msg and "$BFR_FACEXLIB_WEIGHTS" in msg
    assert "github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth" in msg
    with pytest.raises(InputError):
        get_detector("mtcnn")
    if not HAVE_CASCADES:
        with pytest.raises(WeightsUnavailableError, match="opencv-python<5"):
            get_detector("auto")
        return
    det = get_detector("auto")
    assert det.name == "haar"
    assert "RetinaFace" in det.reason and "downloads are off" in det.reason
    assert get_detector("haar").reason == ""


def test_facexlib_networks_are_catalogued_with_the_files_facexlib_itself_fetches():
    import importlib.util

    from bfr.faces.paste import PARSENET_FILE
    from bfr.metrics import ARCFACE_FILE
    from bfr.weights import CATALOG

    files = {CATALOG[n].filename for n in detect_mod.FACEXLIB_NETWORKS}
    assert files == {RETINAFACE_FILE, PARSENET_FILE, ARCFACE_FILE}
    facexlib = Path(importlib.util.find_spec("facexlib").submodule_search_locations[0])
    sources = "".join((facexlib / d / "__init__.py").read_text() for d in ("detection", "parsing", "recognition"))
    for name in detect_mod.FACEXLIB_NETWORKS:
        assert f"'{CATALOG[name].url}'" in sources, name  # the URL facexlib 0.3.0's own loaders use


@pytest.fixture
def downloads_from(no_facexlib_here, monkeypatch, tmp_path):
    """Downloads on, and a catalog entry's source (and its sha256) replaced by a local file: URL."""
    import dataclasses

    from bfr.weights import CATALOG, sha256_of

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def serve(name: str, state: dict, sha256: str | None = "served") -> Path:
        src = tmp_path / "release" / CATALOG[name].filename
        src.parent.mkdir(exist_ok=True)
        torch.save(state, src)
        sha = sha256_of(src) if sha256 == "served" else sha256
        monkeypatch.setitem(CATALOG, name, dataclasses.replace(CATALOG[name], url=src.as_uri(), sha256=sha))
        return no_facexlib_here / src.name

    return serve


def test_retinaface_is_fetched_where_downloads_are_on_and_then_found(downloads_from):
    from facexlib.detection.retinaface import RetinaFace

    torch.manual_seed(0)
    net = RetinaFace(network_name="resnet50", half=False, device=torch.device("cpu"))
    cached = downloads_from("retinaface_resnet50", {f"module.{k}": v.half() if v.is_floating_point() else v
                                                    for k, v in net.state_dict().items()})
    assert detect_mod.facexlib_status(RETINAFACE_FILE)[1].startswith("downloads from file:")
    det = get_detector("auto")
    assert det.name == "retinaface" and det.path == cached and cached.is_file()
    # the fetched file is the one served, and it is found locally from now on (no second fetch)
    assert detect_mod.find_facexlib_weights(RETINAFACE_FILE) == cached
    assert detect_mod.facexlib_status(RETINAFACE_FILE) == (True, f"found at {cached}")
    assert torch.equal(det.net.state_dict()["body.conv1.weight"], net.state_dict()["body.conv1.weight"].half().float())


def test_parsenet_is_fetched_for_the_ffhq_pipeline_where_downloads_are_on(downloads_from):
    from facexlib.parsing.parsenet import ParseNet

    from bfr.faces.pipeline import FacePipeline

    torch.manual_seed(0)
    cached = downloads_from("parsenet", ParseNet(in_size=512, out_size=512, parsing_ch=19).state_dict())
    off = FacePipeline(detector="haar", template="lfw", crop_size=64)  # parsing is for the 512-px FFHQ framing
    assert off.parser is None and not cached.exists()
    on = FacePipeline(detector="haar", template="ffhq", crop_size=512)
    assert not cached.exists()  # looked for on the first photo pasted back, not when the pipeline is built
    assert on.parser is not None and on.parser.path == cached and on.parse_note == "face parsing on (ParseNet)"
    assert FaceParser().path == cached  # and found by the parser on its own from now on


def test_an_auto_detector_that_fell_back_is_built_again_once_retinaface_can_be_had(downloads_from, monkeypatch):
    """A long-lived pipeline (the demo's, a Restorer's) that started offline picks RetinaFace up once it can be
    had, instead of keeping the Haar fallback for the life of the process."""
    from facexlib.detection.retinaface import RetinaFace

    from bfr.api import Restorer
    from bfr.faces.pipeline import FacePipeline

    if not HAVE_CASCADES:
        pytest.skip(f"no Haar cascade files: {HOW_TO_GET_CASCADES}")
    torch.manual_seed(0)
    net = RetinaFace(network_name="resnet50", half=False, device=torch.device("cpu"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipeline = FacePipeline(detector="auto", template="lfw", crop_size=64)

    class Model:
        framing, resolution = "lfw", 64

    restorer = Restorer(Model())
    assert pipeline.detector.name == "haar" and restorer.face_pipeline().detector.name == "haar"
    assert pipeline.detector is pipeline.detector  # offline, kept: nothing to build again
    downloads_from("retinaface_resnet50", {f"module.{k}": v.half() if v.is_floating_point() else v
                                           for k, v in net.state_dict().items()})
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert pipeline.detector.name == "retinaface" and restorer.face_pipeline().detector.name == "retinaface"
    assert FacePipeline(detector="haar").detector.reason == ""  # asked for by name: never replaced


def test_a_fetched_file_that_is_not_the_published_one_is_not_kept(downloads_from):
    """A download whose sha256 is not the catalog's (a changed upstream file, a proxy's error page) is refused;
    "auto" falls back to Haar saying why, and the failure is not retried on every photo."""
    cached = downloads_from("retinaface_resnet50", {"not": torch.zeros(1)}, sha256="0" * 64)
    if not HAVE_CASCADES:
        pytest.skip(f"no Haar cascade files: {HOW_TO_GET_CASCADES}")
    det = get_detector("auto")
    assert det.name == "haar" and "sha256" in det.reason and not cached.exists()
    assert not list(cached.parent.glob("*.part"))
    from bfr.weights import hub

    assert detect_mod.facexlib_status(RETINAFACE_FILE) == (False, hub._failed["retinaface_resnet50"][1])


def test_a_broken_facexlib_file_falls_back_naming_the_file(no_facexlib_here):
    broken = no_facexlib_here / RETINAFACE_FILE
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"<html>not a checkpoint</html>")
    with pytest.raises(WeightsUnavailableError, match="not a PyTorch checkpoint.*delete the file to fetch it again"):
        get_detector("retinaface")
    if HAVE_CASCADES:
        det = get_detector("auto")
        assert det.name == "haar" and str(broken) in det.reason


def test_a_broken_file_is_read_once_not_for_every_photo(no_facexlib_here, monkeypatch):
    """A long-lived "auto" pipeline (the demo's face counter, a Restorer) asks for its detector on every photo;
    a file found unreadable is not read again until it changes."""
    from bfr.weights import load as load_mod

    if not HAVE_CASCADES:
        pytest.skip(f"no Haar cascade files: {HOW_TO_GET_CASCADES}")
    broken = no_facexlib_here / RETINAFACE_FILE
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"<html>not a checkpoint</html>")
    reads = []
    real = load_mod.load_state_dict
    monkeypatch.setattr(load_mod, "load_state_dict", lambda path: reads.append(path) or real(path))
    pipeline = FacePipeline(detector="auto", template="lfw", crop_size=64)
    photo = np.full((96, 96, 3), 0.5, np.float32)
    for _ in range(3):
        pipeline.crops(photo)
        assert pipeline.detector.name == "haar" and str(broken) in pipeline.detector.reason
    assert reads == [broken]
    with pytest.raises(WeightsUnavailableError, match="not a PyTorch checkpoint.*delete the file"):
        get_detector("retinaface")  # asked for by name: the same reason, still without reading it again
    assert reads == [broken]
    broken.write_bytes(b"<html>another page</html>")  # a changed file is read again
    assert get_detector("auto").name == "haar" and reads == [broken, broken]


def test_one_download_when_threads_ask_for_the_same_file(monkeypatch, tmp_path):
    import threading
    import urllib.request

    from bfr.weights import hub

    src = tmp_path / "w.bin"
    src.write_bytes(b"x" * 5000)
    opened = []
    real = urllib.request.urlopen

    def slow_open(url, timeout=None):
        opened.append(url)
        threading.Event().wait(0.2)  # both threads arrive while the first download runs
        return real(url, timeout=timeout)

    monkeypatch.setattr(hub.urllib.request, "urlopen", slow_open)
    stale = tmp_path / "out" / "w.bin.1.2.part"
    stale.parent.mkdir()
    stale.write_bytes(b"left by a killed download")
    import os

    os.utime(stale, (0, 0))
    dest = tmp_path / "out" / "w.bin"
    threads = [threading.Thread(target=hub.download_url, args=(src.as_uri(), dest), kwargs={"progress": False})
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(opened) == 1 and dest.read_bytes() == b"x" * 5000
    assert not stale.exists()  # a .part file older than an hour is swept before downloading


def test_a_download_cut_short_is_not_kept(monkeypatch, tmp_path):
    """http.client returns b"" when the server closes early: the length it announced is checked."""
    from bfr.weights import hub

    class CutShort:
        headers = {"Content-Length": "1000000"}

        def __init__(self):
            self.blocks = [b"x" * 1000]

        def read(self, n):
            return self.blocks.pop() if self.blocks else b""

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(hub.urllib.request, "urlopen", lambda url, timeout=None: CutShort())
    dest = tmp_path / "w.bin"
    with pytest.raises(OSError, match="incomplete download: 1000 of 1000000 bytes"):
        hub.download_url("https://example.invalid/w.bin", dest, progress=False)
    assert not dest.exists() and not list(tmp_path.glob("*.part"))


def test_without_parsenet_the_pipeline_says_why_and_pastes_an_ellipse(no_facexlib_here):
    from bfr.faces.pipeline import FacePipeline

    pipe = FacePipeline(detector="haar", template="ffhq", crop_size=512)
    assert pipe.parser is None
    assert "downloads are off (HF_HUB_OFFLINE=1)" in pipe.parse_note and "ellipse" in pipe.parse_note
    with pytest.raises(WeightsUnavailableError, match="ParseNet is unavailable: .*downloads are off"):
        FacePipeline(detector="haar", template="ffhq", crop_size=512, use_parse=True)


def test_retinaface_output_is_parsed_into_faces():
    """The facexlib call is replaced; checks the conversion, score order and size filter."""

    class FakeNet:
        def detect_faces(self, bgr, conf_threshold=0.8):
            assert bgr.max() > 1.5  # facexlib wants 0–255 BGR
            lm_big = (FFHQ_512 * 0.2 + 10).ravel()
            lm_tiny = (FFHQ_512 * 0.02 + 100).ravel()  # eye distance 2.5 px
            return np.array([[5, 5, 110, 110, 0.99, *lm_big], [90, 90, 112, 112, 0.95, *lm_tiny]])

    det = object.__new__(detect_mod.RetinaFaceDetector)
    det.net, det.score_threshold, det.min_eye_distance = FakeNet(), 0.8, 5.0
    faces = det.detect(synthetic_image(128, 128))
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].landmarks, FFHQ_512 * 0.2 + 10)
    assert faces[0].score == pytest.approx(0.99)


def test_images_are_checked():
    det = StubDetector([])
    pipe = FacePipeline(detector=det, crop_size=64)
    with pytest.raises(InputError, match="float"):
        pipe.crops((synthetic_image() * 255).astype(np.uint8))
    with pytest.raises(InputError, match="RGB"):
        pipe.crops(synthetic_image()[..., 0])


# --------------------------------------------------------------------------- paste / pipeline


def test_soft_mask_is_one_inside_zero_at_the_border():
    m = square_soft_mask(128)
    assert m[64, 64] == pytest.approx(1.0, abs=1e-4)
    assert m[0].max() < 0.01 and m[:, -1].max() < 0.01
    assert 0.2 < m[64, 6] < 0.8  # feathered, not a hard edge


def test_output_to_crop_affine_keeps_pixel_centres():
    a = np.array([[2.0, 0, -10], [0, 2.0, -20]])
    # ×2 output and a restored crop twice the crop size: output pixel p ↔ crop (a·(p+0.5)/2 - 0.5)...
    m = output_to_crop_affine(a, upscale=2, crop_size=64, restored_size=128)
    p_out = np.array([[41.0, 63.0]])
    p_in = (p_out + 0.5) / 2 - 0.5
    p_crop = transform_points(p_in, a)
    np.testing.assert_allclose(transform_points(p_out, m), (p_crop + 0.5) * 2 - 0.5)


def test_stub_pipeline_overlapping_faces_and_border_faces():
    img = synthetic_image(160, 200)
    faces = [face_at(70, 80, 30), face_at(95, 85, 24, roll_deg=20), face_at(8, 150, 26)]  # last one half outside
    pipe = FacePipeline(detector=StubDetector(faces), crop_size=128, use_parse=False)
    crops = pipe.crops(img)
    assert [c.crop.shape for c in crops] == [(128, 128, 3)] * 3
    # A crop's landmarks sit on the template.
    for c in crops:
        np.testing.assert_allclose(transform_points(c.face.landmarks, c.affine), template("ffhq", 128), atol=1e-6)
    same = pipe.restore_faces(img, lambda cs: cs)
    assert same.n_faces == 3 and psnr(same.output, img) > 35
    grey = pipe.restore_faces(img, lambda cs: [np.full_like(c, 0.5) for c in cs])
    footprint = np.zeros(img.shape[:2], bool)
    for c in crops:
        footprint |= (
            warp_image(
                np.ones((128, 128), np.float32),
                inverse_affine(c.affine),
                (200, 160),
                border="constant",
                border_value=0.0,
            )
            > 0
        )
    np.testing.assert_array_equal(grey.output[~footprint], img[~footprint])
    # Where faces overlap the larger one is pasted last, so its grey wins at its centre.
    assert np.allclose(grey.output[80, 70], 0.5, atol=0.02)


def test_where_faces_overlap_the_larger_one_ends_on_top():
    """Smaller (usually farther) faces are pasted first: a background face's crop never covers the main face."""
    img = synthetic_image(160, 200)
    big, small = face_at(80, 80, 30), face_at(100, 84, 20)
    pipe = FacePipeline(detector=StubDetector([small, big]), crop_size=128, use_parse=False)
    crops = pipe.crops(img)
    values = [0.8 if c.face is small else 0.2 for c in crops]
    out = pipe.restore_faces(img, lambda cs: [np.full_like(c, v) for c, v in zip(cs, values, strict=True)]).output
    mask = np.minimum(square_soft_mask(128), face_ellipse_mask(template("ffhq", 128), 128))
    weight = {id(c.face): warp_image(mask, inverse_affine(c.affine), (200, 160), border="constant") for c in crops}
    both = (weight[id(big)] > 0.99) & (weight[id(small)] > 0.5)
    assert both.sum() > 50  # the two faces do overlap there
    np.testing.assert_allclose(out[both], 0.2, atol=0.01)  # the larger face's crop (≤ 1% of what lies under it)


def test_restore_fn_must_return_one_square_crop_per_face():
    img = synthetic_image()
    pipe = FacePipeline(detector=StubDetector([face_at(100, 80, 30)]), crop_size=64, use_parse=False)
    with pytest.raises(InputError, match="returned 0 crops"):
        pipe.restore_faces(img, lambda cs: [])
    with pytest.raises(InputError, match="square"):
        pipe.restore_faces(img, lambda cs: [c[:, :32] for c in cs])
    # A restorer that returns larger crops (×2) is fine: the paste scales its affine.
    out = pipe.restore_faces(img, lambda cs: [cv2.resize(c, (128, 128)) for c in cs])
    assert out.output.shape == img.shape


def test_parse_mask_is_intersected_with_the_square_mask():
    import torch

    class FakeParseNet(torch.nn.Module):
        def forward(self, x):  # label everything "background" (0) except a centre block "skin" (1)
            logits = torch.zeros(1, 19, 512, 512)
            logits[:, 0] = 1
            logits[:, 1, 200:312, 200:312] = 2
            return logits, x

    parser = object.__new__(FaceParser)
    parser.net, parser.device = FakeParseNet(), "cpu"
    mask = parser(np.zeros((128, 128, 3), np.float32))
    assert mask.shape == (128, 128) and mask[64, 64] > 0.5 and mask[5, 5] == 0
    img = synthetic_image()
    face = face_at(100, 80, 30)
    crop, affine = warp_face(img, face.landmarks, template("ffhq", 128), 128)
    grey = np.full_like(crop, 0.5)
    with_parse = paste_faces(img, [grey], [affine], parser=parser)
    without = paste_faces(img, [grey], [affine])
    assert (np.abs(with_parse - img) > 1e-6).sum() < (np.abs(without - img) > 1e-6).sum()


def test_without_parsing_faces_are_pasted_through_an_ellipse_not_the_square(blake):
    """A restoration that changes everything (grey) reaches the face, not the hair and background
    at the crop's corners, which the square mask alone would have covered."""
    img, faces = blake
    pipe = FacePipeline(detector=StubDetector(faces[:1]), crop_size=128, use_parse=False)
    assert "soft ellipse" in pipe.parse_note
    affine = pipe.crops(img)[0].affine
    grey = pipe.restore_faces(img, lambda cs: [np.full_like(c, 0.5) for c in cs])
    square = paste_faces(img, [np.full((128, 128, 3), 0.5, np.float32)], [affine])  # no face_points: the square
    changed = np.any(np.abs(grey.output - img) > 1 / 255, axis=2)
    by_square = np.any(np.abs(square - img) > 1 / 255, axis=2)
    assert changed.sum() < 0.6 * by_square.sum() and not (changed & ~by_square).any()
    # the face's middle (between the eyes and the mouth) is the restored crop; a crop corner is the photo
    inv = inverse_affine(affine)
    for point, restored in (((64.0, 78.0), True), ((16.0, 16.0), False), ((112.0, 20.0), False)):
        x, y = transform_points(np.array([point]), inv)[0].round().astype(int)
        if 0 <= y < img.shape[0] and 0 <= x < img.shape[1]:
            assert np.allclose(grey.output[y, x], 0.5, atol=0.02) == restored, point
    mask = face_ellipse_mask(template("ffhq", 128), 128)
    assert mask[78, 64] > 0.99 and mask[5, 5] < 1e-3 and mask[64, 2] < 0.01  # cheek to cheek, not ear to ear


def test_no_face_returns_the_input_with_a_message():
    rng = np.random.default_rng(0)
    noise = rng.random((96, 128, 3)).astype(np.float32)
    pipe = FacePipeline(detector=StubDetector([]), crop_size=64)
    res = pipe.restore_faces(noise, lambda cs: cs)
    assert res.n_faces == 0 and res.faces == []
    assert "No face" in res.message
    np.testing.assert_array_equal(res.output, noise)
    up = FacePipeline(detector=StubDetector([]), crop_size=64, upscale=2).restore_faces(noise, lambda cs: cs)
    assert up.output.shape == (192, 256, 3) and "×2" in up.message


@needs_cascades
def test_no_face_in_noise_with_the_real_detector(haar):
    noise = np.random.default_rng(1).random((120, 160, 3)).astype(np.float32)
    flat = np.full((120, 160, 3), 0.4, np.float32)
    for img in (noise, flat):
        res = FacePipeline(detector=haar, crop_size=64).restore_faces(img, lambda cs: cs)
        assert res.n_faces == 0 and "No face" in res.message
        np.testing.assert_array_equal(res.output, img)
    sliver = np.full((16, 20000, 3), 0.4, np.float32)  # shrunk for the search to under one pixel tall
    res = FacePipeline(detector=haar, crop_size=64).restore_faces(sliver, lambda cs: cs)
    assert res.n_faces == 0 and "No face" in res.message


@pytest.fixture(scope="module")
def blake():
    """A small real photo with two faces (one rolled), and the faces Haar finds in it."""
    if not HAVE_CASCADES:
        pytest.skip(f"no Haar cascade files: {HOW_TO_GET_CASCADES}")
    img = load_rgb(need(REAL / "whole_imgs" / "Blake_Lively.jpg"), max_side=420)
    faces = detect_mod.HaarDetector().detect(img)
    assert len(faces) >= 1
    return img, faces


def test_paste_back_identity_and_grey_on_a_real_photo(blake):
    img, faces = blake
    pipe = FacePipeline(detector=StubDetector(faces), crop_size=256, use_parse=False)
    same = pipe.restore_faces(img, lambda cs: cs)
    assert same.n_faces == len(faces)
    assert psnr(same.output, img) > 35
    grey = pipe.restore_faces(img, lambda cs: [np.full_like(c, 0.5) for c in cs])
    footprint = np.zeros(img.shape[:2], bool)
    for f in grey.faces:
        _, affine = warp_face(img, f.face.landmarks, template("ffhq", 256), 256)
        footprint |= (
            warp_image(
                np.ones((256, 256), np.float32),
                inverse_affine(affine),
                img.shape[1::-1],
                border="constant",
                border_value=0.0,
            )
            > 0
        )
    changed = np.any(grey.output != img, axis=2)
    assert not (changed & ~footprint).any(), "pixels outside every face's crop changed"
    assert changed[footprint].mean() > 0.5
    # Around the first face's landmarks the output is the grey crop.
    cx, cy = faces[0].landmarks.mean(0).round().astype(int)
    assert np.allclose(grey.output[cy, cx], 0.5, atol=0.02)


def test_upscale_two_pastes_at_twice_the_coordinates(blake):
    img, faces = blake
    one = FacePipeline(detector=StubDetector(faces), crop_size=128, use_parse=False)
    two = FacePipeline(detector=StubDetector(faces), crop_size=128, upscale=2, use_parse=False)

    def grey(cs):
        return [np.full_like(c, 0.5) for c in cs]

    r1, r2 = one.restore_faces(img, grey), two.restore_faces(img, grey)
    h, w = img.shape[:2]
    assert r2.output.shape == (2 * h, 2 * w, 3)
    m1 = np.all(np.abs(r1.output - 0.5) < 1e-3, axis=2)
    m2 = np.all(np.abs(r2.output - 0.5) < 1e-3, axis=2)
    c1 = np.argwhere(m1).mean(0)
    c2 = np.argwhere(m2).mean(0)
    np.testing.assert_allclose(c2, 2 * c1 + 0.5, atol=1.5)
    assert m2.sum() == pytest.approx(4 * m1.sum(), rel=0.05)


def test_aligned_mode_keeps_the_size():
    path = need(REAL / "cropped_faces" / "Julia_Roberts_crop.png")
    img = load_rgb(path, max_side=256)
    ffhq = FacePipeline(detector=StubDetector([]), crop_size=256).restore_faces(img, lambda cs: cs, aligned=True)
    assert ffhq.output.shape == img.shape and ffhq.n_faces == 1
    assert psnr(ffhq.output, img) > 60
    lfw = FacePipeline(detector=StubDetector([]), template="lfw", crop_size=64)
    res = lfw.restore_faces(img, lambda cs: [np.full_like(c, 0.5) for c in cs], aligned=True)
    assert res.output.shape == img.shape and res.faces[0].input_crop.shape == (64, 64, 3)
    # The LFW frame is inside the FFHQ one: the image corners keep the original pixels.
    np.testing.assert_array_equal(res.output[:8, :8], img[:8, :8])
    assert np.allclose(res.output[128, 128], 0.5, atol=0.02)
    up = FacePipeline(detector=StubDetector([]), crop_size=128, upscale=2).restore_faces(
        img, lambda cs: cs, aligned=True
    )
    assert up.output.shape == (512, 512, 3)


def test_aligned_mode_refuses_a_crop_it_would_squash():
    path = need(REAL / "cropped_faces" / "Julia_Roberts_crop.png")
    img = load_rgb(path, max_side=256)
    pipe = FacePipeline(detector=StubDetector([]), crop_size=64)
    calls = []
    with pytest.raises(InputError, match=r"square \(e.g. 512×512\), but this image is 256×180"):
        pipe.restore_faces(img[:180], calls.append, aligned=True)
    assert calls == []  # refused before any restoration
    nearly = pipe.restore_faces(img[:252], lambda cs: cs, aligned=True)  # a few pixels off square is still a crop
    assert nearly.output.shape == (252, 256, 3) and nearly.n_faces == 1
    from bfr.faces.pipeline import check_aligned_shape

    check_aligned_shape(18, 16)  # a few pixels off is fine on a small crop too, where 2 % is under one pixel
    for height, width in ((19, 16), (500, 512)):
        with pytest.raises(InputError, match="square"):
            check_aligned_shape(height, width)



def test_aligned_input_in_the_models_own_framing_is_only_resized():
    """An LFW-framed crop (a compact model's own framing) is resized, not re-framed as if FFHQ-aligned."""
    path = need(REAL / "cropped_faces" / "Julia_Roberts_crop.png")
    lfw_crop = ffhq_to_lfw(load_rgb(path, max_side=256), 96)
    pipe = FacePipeline(detector=StubDetector([]), template="lfw", crop_size=64)
    same = pipe.restore_faces(lfw_crop, lambda cs: cs, aligned=True, framing="lfw")
    assert same.output.shape == lfw_crop.shape and "LFW-aligned" in same.message
    np.testing.assert_allclose(same.faces[0].input_crop, cv2.resize(lfw_crop, (64, 64), interpolation=cv2.INTER_AREA),
                               atol=0.03)
    # the restored crop covers the whole image: every output pixel is the restorer's, corners too
    flat = pipe.restore_faces(lfw_crop, lambda cs: [np.full_like(c, 0.5) for c in cs], aligned=True, framing="lfw")
    np.testing.assert_allclose(flat.output, 0.5, atol=1e-5)
    # Read as FFHQ-aligned, the same crop would be zoomed in on a face it already frames.
    wrong = pipe.restore_faces(lfw_crop, lambda cs: cs, aligned=True)
    assert psnr(same.faces[0].input_crop, cv2.resize(lfw_crop, (64, 64), interpolation=cv2.INTER_AREA)) > \
        psnr(wrong.faces[0].input_crop, cv2.resize(lfw_crop, (64, 64), interpolation=cv2.INTER_AREA)) + 5


def test_lfw_framed_input_to_an_ffhq_model_is_padded_and_mapped_straight_back():
    path = need(REAL / "cropped_faces" / "Julia_Roberts_crop.png")
    ffhq_img = load_rgb(path, max_side=256)
    lfw_crop = ffhq_to_lfw(ffhq_img, 128)
    res = FacePipeline(detector=StubDetector([]), template="ffhq", crop_size=256).restore_faces(
        lfw_crop, lambda cs: cs, aligned=True, framing="lfw")
    assert res.output.shape == lfw_crop.shape
    assert psnr(res.output, lfw_crop) > 30  # an identity restorer gives the input back, all of it
    # The model sees the face where FFHQ framing puts it: the middle of its crop is the FFHQ image's middle
    # (the LFW crop lost the rest, and read as FFHQ-aligned the face would be too large: 12.6 dB there).
    middle = np.s_[64:192, 64:192]
    ffhq_ref = cv2.resize(ffhq_img, (256, 256), interpolation=cv2.INTER_AREA)
    assert psnr(res.faces[0].input_crop[middle], ffhq_ref[middle]) > 24
    flat = FacePipeline(detector=StubDetector([]), template="ffhq", crop_size=256).restore_faces(
        lfw_crop, lambda cs: [np.full_like(c, 0.5) for c in cs], aligned=True, framing="lfw")
    np.testing.assert_allclose(flat.output, 0.5, atol=1e-5)  # mapped straight back: no input pixel left
    assert [frame_inside(a, b) for a, b in (("ffhq", "lfw"), ("lfw", "ffhq"), ("lfw", "lfw"))] == [True, False, True]
    with pytest.raises(InputError, match="framing must be one of ffhq, lfw"):
        FacePipeline(detector=StubDetector([])).restore_faces(lfw_crop, lambda cs: cs, aligned=True, framing="celeba")


def test_a_grayscale_photo_keeps_gray_faces():
    """A model that tints its output must not put colour faces into a black-and-white photo."""
    path = need(REAL / "cropped_faces" / "Julia_Roberts_crop.png")
    gray = np.repeat(load_rgb(path, max_side=128).mean(axis=2, keepdims=True), 3, axis=2)
    tint = lambda cs: [np.clip(c * np.array([1.2, 0.9, 0.7], np.float32), 0, 1) for c in cs]  # noqa: E731
    for framing, size in (("ffhq", 128), ("lfw", 64)):
        res = FacePipeline(detector=StubDetector([]), template=framing, crop_size=size).restore_faces(
            gray, tint, aligned=True)
        assert np.abs(res.output - res.output[..., :1]).max() < 1e-5
        assert np.abs(res.faces[0].restored_crop - res.faces[0].restored_crop[..., :1]).max() < 1e-6
    colour = gray * np.array([1.0, 0.8, 0.6], np.float32)  # (that photo is black and white itself)
    res = FacePipeline(detector=StubDetector([]), crop_size=128).restore_faces(colour, tint, aligned=True)
    assert np.abs(res.output - res.output[..., :1]).max() > 0.1  # colour photos are left as the model made them


@needs_cascades
def test_restore_faces_end_to_end_with_haar(blake):
    img, faces = blake
    res = FacePipeline(detector="haar", crop_size=64, template="lfw").restore_faces(img, lambda cs: cs)
    assert res.detector == "haar" and res.n_faces == len(faces)
    assert res.faces[0].input_crop.shape == (64, 64, 3)
    assert res.output.shape == img.shape and psnr(res.output, img) > 25
