"""The Gradio demo through its public API (gradio_client against the app served in-process).

Restoration tests need the compact DifFace weights (bfr/weights/compact/) and the LFW faces
in ../shared/data; each skips with the reason when they are absent. Requests stay small
(20-step chain, started at step 8) so the file runs in about a minute on two CPU cores.
"""

import ast
import itertools
import os
import re
import socket
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

import app  # noqa: E402
from bfr.api import method_status  # noqa: E402
from bfr.degradations import DegradationParams, degrade  # noqa: E402
from bfr.imageio import MAX_PIXELS, load_image, resize, save_image, to_uint8  # noqa: E402
from bfr.methods.difface import COMPACT_START_STEP  # noqa: E402
from bfr.methods.idm import COMPACT_STEPS  # noqa: E402
from bfr.paths import data_dir  # noqa: E402
from bfr.weights import offline  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LFW = data_dir() / "lfw150"
FAST = dict(steps=20, start_step=8, eta=0.5, seed=0)
READY, WHY_NOT = method_status("difface", "compact")
needs_weights = pytest.mark.skipif(not READY, reason=f"compact DifFace weights are not here: {WHY_NOT}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client():
    demo = app.build_demo()
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                **app.LAUNCH)
    try:
        yield gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


@pytest.fixture(scope="module")
def clean_face() -> Path:
    """A held-out LFW face (test split), 150×150."""
    path = LFW / "Abbas_Kiarostami_0001.jpg"
    if not path.is_file():
        pytest.skip(f"LFW faces not found at {LFW} (set BFR_DATA or place ../shared/data beside the checkout)")
    return path


def restore(client, image, methods=("difface",), tier="compact", aligned=False, upscale=1, only_center_face=False,
            own_defaults=False, **knobs):
    knobs = {**FAST, **knobs}
    return client.predict(gradio_client.handle_file(str(image)), list(methods), tier, knobs["steps"],
                          knobs["start_step"], knobs["eta"], knobs["seed"], aligned, upscale, only_center_face,
                          own_defaults, api_name="/restore")


class _Request:
    """What Gradio passes as gr.Request: the browser session."""

    def __init__(self, session):
        self.session_hash = session


def app_error(call) -> str:
    with pytest.raises(gradio_client.exceptions.AppError) as info:
        call()
    return str(info.value)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(np.mean((a - b) ** 2), 1e-12)))


# ---------------------------------------------------------------------------- the app as a program


def test_spaces_is_imported_before_torch_and_gradio():
    """ZeroGPU needs `import spaces` before CUDA is touched: it must be app.py's first import."""
    tree = ast.parse((ROOT / "app.py").read_text())
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert isinstance(imports[0], ast.Import) and imports[0].names[0].name == "spaces"


def test_endpoints_are_named_and_documented(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert set(api) == {"/restore", "/degrade", "/degrade_flipnet"}  # the UI's own events are private
    names = lambda endpoint: [p["parameter_name"] for p in api[endpoint]["parameters"]]  # noqa: E731
    assert names("/restore") == ["image", "methods", "tier", "steps", "start_step", "eta", "seed", "aligned",
                                 "upscale", "only_center_face", "own_defaults"]
    own = api["/restore"]["parameters"][-1]
    assert own["parameter_has_default"] and own["parameter_default"] is True  # left out: each method's defaults
    assert names("/degrade") == ["image", "preset", "seed", "blur", "downsample", "noise", "jpeg_quality"]
    assert names("/degrade_flipnet") == ["image", "variants", "seed", "aligned"]
    assert [r["label"] for r in api["/degrade_flipnet"]["returns"]] == ["FLIPNET degraded variants", "Note"]


def test_gpu_duration_grows_with_methods_faces_and_steps():
    img = np.zeros((64, 64, 3), np.float32)
    knobs = dict(steps=250, start_step=100, eta=0.5, seed=0)
    seconds = lambda methods=("difface",), faces=1, **kw: app.gpu_seconds(  # noqa: E731
        img, list(methods), "paper", {**knobs, **kw}, False, 1, False, faces)
    base = seconds()
    assert seconds(faces=3) > base
    assert seconds(start_step=50) < base  # DifFace samples start_step steps, not all of them
    assert seconds(methods=("difface", "difface")) > base
    assert seconds(steps=1000, start_step=1000, faces=50) == app.GPU_MAX_SECONDS
    for name, info in app.METHODS.items():  # every method: its own steps count
        if "steps" in info.knobs and "start_step" not in info.knobs:
            assert seconds(methods=(name,), steps=200) > seconds(methods=(name,), steps=100)


def test_own_defaults_take_only_the_seed_and_size_the_gpu_by_each_methods_steps():
    img = np.zeros((64, 64, 3), np.float32)
    values = dict(steps=20, start_step=30, eta=0.9, seed=7)  # N > steps: refused only when applied
    assert app.check_knobs(["difface", "idm"], values, own_defaults=True) == {"seed": 7}
    with pytest.raises(gr.Error, match="must be smaller than steps"):
        app.check_knobs(["difface", "idm"], values)
    seconds = lambda tier, knobs: app.gpu_seconds(img, ["idm"], tier, knobs, False, 1, False, 1)  # noqa: E731
    per_step = app.SECONDS_PER_FACE_STEP
    assert seconds("compact", {"seed": 0}) == int(app.GPU_BASE_SECONDS + per_step["compact"] * COMPACT_STEPS)
    assert seconds("paper", {"seed": 0}) == int(app.GPU_BASE_SECONDS + per_step["paper"] * 100)
    assert seconds("compact", {"steps": 200, "seed": 0}) > seconds("compact", {"seed": 0})
    note = app.defaults_note()
    assert f"DifFace: 250 steps, N {COMPACT_START_STEP} (paper 100), η 0.5" in note
    assert f"IDM: {COMPACT_STEPS} steps (paper 100), η 0" in note and "FLIPNET: 50 steps, η 1" in note


def test_every_method_is_listed_with_its_status():
    listing = app.status_list()
    for name, info in app.METHODS.items():
        assert info.title in listing
        for tier in app.TIERS:
            ok, why = method_status(name, tier)
            assert ok or why.removeprefix(f"{info.title} is ") in listing
    labels = dict((value, label) for label, value in app.method_choices("compact"))
    assert set(labels) == set(app.METHODS)
    for name in app.METHODS:
        assert labels[name].endswith("(unavailable)") != method_status(name, "compact")[0]


# ---------------------------------------------------------------------------- /degrade


def test_degrade_endpoint(client, clean_face, tmp_path):
    hq = load_image(clean_face)
    out, params = client.predict(gradio_client.handle_file(str(clean_face)), "difface", 3, 0, 1, 0, 0,
                                 api_name="/degrade")
    lq = load_image(out)
    assert lq.shape == hq.shape and Path(out).name == f"{clean_face.stem}_difface.png"  # named after the input
    assert np.abs(lq - hq).mean() > 2 / 255
    assert params["preset"] == "difface" and params["seed"] == 3 and params["pipeline"] == "synthetic"
    expected, used = degrade(hq, "difface", seed=3)  # the same as the library, value for value
    assert params["params"]["sigma_x"] == pytest.approx(used.sigma_x, abs=1e-6)
    assert np.abs(lq - expected).max() <= 1 / 255 + 1e-6  # PNG is lossless: only 8-bit rounding

    again, _ = client.predict(gradio_client.handle_file(str(clean_face)), "difface", 3, 0, 1, 0, 0,
                              api_name="/degrade")
    np.testing.assert_array_equal(load_image(again), lq)


def test_flipnet_degradation_mode_endpoint(client, clean_face):
    """FLIPNET's degradation mode on a real LFW face: K different degraded crops, the same again for the same seed.
    Where the compact FLIPNET weights are not bundled, the endpoint says so instead."""
    ok, why = method_status("flipnet", "compact")
    if not ok:
        message = app_error(lambda: client.predict(gradio_client.handle_file(str(clean_face)), 3, 7, True,
                                                    api_name="/degrade_flipnet"))
        assert "FLIPNET cannot run here" in message and "flipnet64" in message
        return
    gallery, note = client.predict(gradio_client.handle_file(str(clean_face)), 3, 7, True,
                                   api_name="/degrade_flipnet")
    images = [load_image(item["image"]) for item in gallery]
    assert [Path(item["image"]).name for item in gallery] == [f"{Path(clean_face).stem}_flipnet_{k}.png"
                                                              for k in range(3)]  # named after the input
    assert len(images) == 3 and "3 variants" in note and f"{app.FLIPNET_STEPS} DDIM steps" in note
    assert f"(1–{app.VARIANTS_PER_REQUEST})" in app.degrade_flipnet.__doc__  # the API page states the demo's limit
    hq = load_image(clean_face)
    assert all(im.shape == hq.shape for im in images)
    assert min(np.abs(a - b).mean() for a, b in itertools.combinations(images, 2)) > 0.005
    again, _ = client.predict(gradio_client.handle_file(str(clean_face)), 3, 7, True, api_name="/degrade_flipnet")
    np.testing.assert_allclose(load_image(again[0]["image"]), images[0], atol=2 / 255)
    refused = app_error(lambda: client.predict(
        gradio_client.handle_file(str(clean_face)), 0, 7, True, api_name="/degrade_flipnet"))
    assert "Variants must lie" in refused or "less than minimum value 1" in refused  # ours, or Gradio's slider check


def test_stop_ends_flipnet_degradation_mode(monkeypatch, clean_face):
    """The Degradation tab's Stop: the FLIPNET variants end at the next sampling step, said as a note."""
    class Stepping:
        def degrade(self, img, progress=None, **kwargs):
            progress(1, 50)
            raise AssertionError("a stop request must end the run at the first step")

    monkeypatch.setattr(app, "get_restorer", lambda name, tier: Stepping())
    monkeypatch.setattr(app, "method_status", lambda name, tier: (True, ""))
    monkeypatch.setattr(app.gr, "Info", lambda message: None)
    said = []
    monkeypatch.setattr(app.gr, "Info", said.append)
    app.arm_flipnet(_Request("flip-session"))
    app.request_stop(_Request("flip-session"))  # the Restore tab's Stop: not this run's
    assert said == ["Nothing is running."] and not app._stop_requested
    app.request_stop_variants(_Request("flip-session"))
    gallery, note = app.degrade_flipnet(str(clean_face), 2, 0, True, progress=None, request=_Request("flip-session"))
    assert gallery == app.gr.skip() and note == "Stopped by you: no new variants were made."  # earlier ones stay
    assert not app._armed and not app._stop_requested


def test_each_stop_button_ends_its_own_runs_queued_or_running(monkeypatch):
    """Restore and FLIPNET's degradation mode share a queue: a run that ends must not disarm the other button's
    queued run, nor a second click of its own button queued behind it."""
    monkeypatch.setattr(app.gr, "Info", lambda message: None)
    request = _Request("both-session")
    app.arm_restore(request)
    app.arm_flipnet(request)  # queued behind the restore
    app.arm_restore(request)  # a second restore click, queued too
    app.disarm_stop(app.stop_key(request, "restore"))  # the first restore ends
    app.request_stop_variants(request)
    with pytest.raises(app.StopRequested):
        app.check_stop(app.stop_key(request, "flipnet"))
    app.check_stop(app.stop_key(request, "restore"))  # not asked to stop
    app.request_stop(request)  # the second restore is still armed: its Stop reaches it
    with pytest.raises(app.StopRequested):
        app.check_stop(app.stop_key(request, "restore"))
    for button in ("restore", "flipnet"):
        app.disarm_stop(app.stop_key(request, button))
    assert not app._armed and not app._stop_requested
    app.arm_restore(request)  # a new click after the ends: runs to the end
    app.check_stop(app.stop_key(request, "restore"))
    app.disarm_stop(app.stop_key(request, "restore"))


def test_a_fractional_seed_is_refused_not_rounded(client, clean_face):
    """gr.Number(precision=0) would run 2.5 as seed 2 (and 1.5 as 2 too): the API caller is told instead."""
    message = app_error(lambda: client.predict(gradio_client.handle_file(str(clean_face)), "difface", 2.5, 0, 1, 0, 0,
                                               api_name="/degrade"))
    assert "Seed must be a whole number, got 2.5" in message
    out, params = client.predict(gradio_client.handle_file(str(clean_face)), "difface", 2.0, 0, 1, 0, 0,
                                 api_name="/degrade")
    assert params["seed"] == 2


def test_degrade_custom_settings(client, clean_face):
    hq = load_image(clean_face)
    out, params = client.predict(gradio_client.handle_file(str(clean_face)), "custom", 0, 0, 1, 0, 0,
                                 api_name="/degrade")
    np.testing.assert_allclose(load_image(out), hq, atol=1 / 255 + 1e-6)  # all four off: the input back
    assert params["params"]["jpeg_quality"] is None

    out, params = client.predict(gradio_client.handle_file(str(clean_face)), "custom", 0, 2.0, 4, 10, 50,
                                 api_name="/degrade")
    assert params["params"]["sigma_x"] == 2.0 and params["params"]["scale"] == 4.0
    assert params["params"]["noise"] == 10.0 and params["params"]["jpeg_quality"] == 50
    assert psnr(load_image(out), hq) < 30


def test_compare_presets_shows_every_preset(clean_face):
    items, table = app.compare_presets(str(clean_face), 0, 2.0, 4, 10, 50)
    assert [caption for _, caption in items] == ["Clean input", *app.PRESETS, "custom"]
    assert all(img.shape == (150, 150, 3) for img, _ in items)
    assert "| custom | blur σ 2.0, ↓4.0, noise 10.0, JPEG 50 |" in table
    assert "| camera | camera, ↓" in table


# ---------------------------------------------------------------------------- errors a visitor can act on


def test_not_an_image_is_a_clear_error(client, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    message = app_error(lambda: restore(client, text))
    assert "notes.txt is not an image" in message
    message = app_error(lambda: client.predict(gradio_client.handle_file(str(text)), "mild", 0, 0, 1, 0, 0,
                                               api_name="/degrade"))
    assert "not an image" in message


def test_upload_errors_stay_sentences_when_gradio_rebuilds_the_component(tmp_path):
    """An example click (any property update) makes Gradio rebuild a session's component from its
    constructor arguments (``block.__class__(**kwargs)``): the readable upload error must survive it."""
    from gradio.data_classes import FileData

    text = tmp_path / "notes.png"
    text.write_text("not a photo")
    photo = app.photo_input(label="Photo")
    rebuilt = type(photo)(**{**photo.constructor_args, "render": False})
    for component in (photo, rebuilt):
        with pytest.raises(gr.Error, match="notes.png is not an image this demo can read"):
            component.preprocess(FileData(path=str(text), orig_name="notes.png"))
    plain = gr.Image(type="filepath", render=False)  # components without the marker keep Gradio's behaviour
    with pytest.raises(Exception) as err:
        plain.preprocess(FileData(path=str(text), orig_name="notes.png"))
    assert not isinstance(err.value, gr.Error)


def test_a_string_for_methods_and_a_missing_number_are_sentences(client, clean_face):
    message = app_error(lambda: client.predict(gradio_client.handle_file(str(clean_face)), "difface", "compact",
                                               20, 8, 0.5, 0, True, 1, False, api_name="/restore"))
    assert "Methods must be a list of names, e.g. ['difface'], not a string" in message
    message = app_error(lambda: client.predict(gradio_client.handle_file(str(clean_face)), ["difface"], "compact",
                                               20, 8, 0.5, 0, True, None, False, api_name="/restore"))
    assert "Upscale needs a number" in message


def test_out_of_range_values_and_unknown_choices_name_their_input(client, clean_face):
    """Gradio's own checks run before the app's: their errors must say which of the 11 inputs is wrong."""
    assert "Steps: value 0 is less than minimum value 2" in app_error(lambda: restore(client, clean_face, steps=0))
    assert "Seed: value -1 is less than minimum value 0" in app_error(lambda: restore(client, clean_face, seed=-1))
    message = app_error(lambda: restore(client, clean_face, methods=["difface", "codeformer"]))
    assert "Methods: 'codeformer' is not a choice here; choose from: difface" in message
    assert "Tier: 'papr' is not a choice here" in app_error(lambda: restore(client, clean_face, tier="papr"))
    message = app_error(lambda: client.predict(gradio_client.handle_file(str(clean_face)), "blurry", 0, 0, 1, 0, 0,
                                               api_name="/degrade"))
    assert "Preset: 'blurry' is not a choice here; choose from: difface" in message


def test_an_empty_method_list_on_a_tier_where_nothing_runs_says_why():
    if any(method_status(name, "paper")[0] for name in app.METHODS):
        pytest.skip("a paper-tier method can run here")
    with pytest.raises(gr.Error, match=r"No method can run on the paper tier here: DifFace: .*Choose the compact"):
        app.check_methods([], "paper")
    with pytest.raises(gr.Error, match="Choose at least one method"):
        app.check_methods([], "compact")


def test_unticked_methods_say_why_in_the_page_and_ticks_skip_the_queue():
    """Ticks and tier switches run unqueued (a full queue must not stop them), so they explain themselves in the
    methods' help line (Gradio shows toasts of queued events only); the upload check is queued, for its toast."""
    deps = {d.get("api_name"): d for d in app.build_demo().config["dependencies"]}
    assert all(deps[name]["queue"] is False for name in ("pick_methods", "change_tier", "send_to_restore"))
    assert deps["check_upload"]["queue"] is not False
    paper = {name: method_status(name, "paper") for name in app.METHODS}
    if not any(ok for ok, _ in paper.values()):
        update = app.change_tier("paper", ["difface", "idm"])
        assert update["value"] == [] and update["info"].startswith("No method can run on the paper tier here.")
        assert f"DifFace cannot run on the paper tier here: {paper['difface'][1]}." in update["info"]
        assert "IDM cannot run on the paper tier here" in update["info"]
        # a visitor is not shown the command that trains the weights; “Methods on this machine” keeps it
        unsupervised = app.change_tier("paper", ["unsupervised"])["info"]
        assert "make it with" in paper["unsupervised"][1] and "make it with" in app.status_list()
        assert "swinir512_adapted.safetensors is not in this install" in unsupervised and "make it" not in unsupervised
        back = app.change_tier("compact", [])
        assert back["value"] == app.compact_methods()[:1] and back["info"] == app.METHODS_INFO


def test_messages_read_as_sentences():
    assert app.sentence("no face found by the haar detector; pass an aligned face crop") == (
        "No face found by the haar detector; pass an aligned face crop.")
    assert app.sentence("Done.") == "Done." and app.sentence("stopped (2 of 3)") == "Stopped (2 of 3)."
    assert app.sentence("idm64.safetensors is missing") == "idm64.safetensors is missing."  # a name stays as it is


def test_flipnet_without_a_face_tells_the_visitor_what_to_tick(monkeypatch, tmp_path):
    from bfr.errors import InputError

    if not method_status("flipnet", "compact")[0]:
        pytest.skip("flipnet64 is not bundled")
    import pickle

    save_image(np.full((64, 96, 3), 0.5, np.float32), tmp_path / "wall.png")
    with pytest.raises(gr.Error) as raised:
        app._degrade_flipnet(str(tmp_path / "wall.png"), 2, 0, False, None, None)
    hint = "No face found by the haar detector in this image. If it is a face crop filling the frame, tick"
    assert raised.value.message.startswith(hint)
    assert pickle.loads(pickle.dumps(raised.value)).message.startswith(hint)  # as ZeroGPU sends it back

    class OtherError:  # another input error is passed on as it is, whatever its words
        def degrade(self, *args, **kwargs):
            raise InputError("no face found: an unrelated message")

    monkeypatch.setattr(app, "get_restorer", lambda name, tier: OtherError())
    with pytest.raises(gr.Error) as raised:
        app._degrade_flipnet(str(tmp_path / "wall.png"), 2, 0, False, None, None)
    assert raised.value.message == "No face found: an unrelated message."


def test_a_tiny_photo_without_a_face_says_it_is_tiny(tmp_path):
    save_image(np.full((20, 24, 3), 0.5, np.float32), tmp_path / "tiny.png")
    run = app.run_restore(str(tmp_path / "tiny.png"), ["difface"], "compact", 20, 8, 0.5, 0, False, 1, False, True,
                          None)
    assert run.n_faces == 0 and "The photo is only 24×20 px" in run.message


def test_too_large_image_is_refused_before_decoding(client, tmp_path):
    side = int(MAX_PIXELS**0.5) + 8
    big = tmp_path / "huge.png"
    save_image(np.zeros((side, side, 3), np.uint8), big)  # a few kB on disk, 17 MP decoded
    message = app_error(lambda: restore(client, big))
    assert f"{side}×{side}" in message and "limit" in message and "downscale" in message
    size, limit = re.search(r"= ([\d.]+) MP, above the ([\d.]+) MP limit", message).groups()
    assert size != limit  # "16.8 MP, above the 16.8 MP limit" said nothing
    assert "/tmp" not in message  # the upload's temporary path is not shown, only its name


def test_unavailable_method_says_why(client, clean_face):
    status = {name: method_status(name, "compact") for name in app.METHODS}
    missing = [(name, why) for name, (ok, why) in status.items() if not ok]
    if not missing:
        pytest.skip("every method can run on the compact tier here")
    name, why = missing[0]
    message = app_error(lambda: restore(client, clean_face, methods=[name]))
    assert app.METHODS[name].title in message and why in message


@pytest.mark.skipif(not offline()[0], reason="checks the offline message; with downloads on it would download")
def test_missing_paper_weights_say_why(client, clean_face):
    ok, why = method_status("difface", "paper")
    if ok:
        pytest.skip("the paper weights are on this machine")
    message = app_error(lambda: restore(client, clean_face, tier="paper"))
    assert "paper tier" in message and why in message


def test_missing_image_and_method(client, clean_face):
    message = app_error(lambda: client.predict(None, ["difface"], "compact", 20, 8, 0.5, 0, False, 1, False,
                                               api_name="/restore"))
    assert "Upload a photo" in message
    assert "at least one method" in app_error(lambda: restore(client, clean_face, methods=[]))


@needs_weights
def test_bad_knobs_are_refused_before_sampling(client, clean_face):
    message = app_error(lambda: restore(client, clean_face, steps=20, start_step=30))
    assert "Started step N (30) must be smaller than steps (20)" in message
    message = app_error(lambda: restore(client, clean_face, upscale=8))  # Gradio's slider bounds say so
    assert "greater than maximum value 4" in message


# ---------------------------------------------------------------------------- /restore on real faces


@pytest.fixture(scope="module")
def degraded_face(clean_face, tmp_path_factory) -> Path:
    hq = load_image(clean_face)
    lq, _ = degrade(hq, DegradationParams(sigma_x=1.5, sigma_y=1.5, scale=3.0, noise=8.0, jpeg_quality=50), seed=0)
    path = tmp_path_factory.mktemp("faces") / "lq.png"
    save_image(lq, path)
    return path


@needs_weights
def test_restore_endpoint_on_a_real_face(client, clean_face, degraded_face):
    """A held-out LFW face, degraded, restored: right size, changed, and still this person's face.

    What the compact tier can honestly promise on every snapshot of its weights: the face is
    found, restored and pasted back in place with its colours (at the 16-px scale the result
    matches its own clean face, and matches it better than another person's); sharper detail
    is a matter of training, measured in the model cards, not here.
    """
    hq, lq = load_image(clean_face), load_image(degraded_face)
    files, info = restore(client, degraded_face)
    assert len(files) == 1 and Path(files[0]).name == "lq_difface_compact.png"
    out = load_image(files[0])
    assert out.shape == hq.shape
    assert np.abs(out - lq).mean() > 1 / 255
    assert info["faces"] == 1 and info["results"][0]["method"] == "difface"
    assert info["results"][0]["seconds"] > 0 and info["options"] == FAST
    small = lambda img: resize(img, 16)  # noqa: E731
    other = load_image(LFW / "Abel_Pacheco_0001.jpg")
    assert psnr(small(out), small(hq)) > 20
    assert psnr(small(out), small(hq)) > psnr(small(out), small(other)) + 3


@pytest.mark.skipif(not method_status("idm", "compact")[0], reason="compact IDM weights are not bundled")
def test_own_defaults_run_each_method_as_its_own_defaults_say(client, degraded_face):
    """IDM beside DifFace: ticked, IDM samples its 10-step compact chain at η 0, whatever the shared knobs say."""
    files, info = restore(client, degraded_face, methods=("difface", "idm"), own_defaults=True, steps=1000, eta=1)
    assert info["options"] == {"seed": FAST["seed"]}
    options = {r["method"]: r["options"] for r in info["results"]}
    assert options["idm"] == {"steps": COMPACT_STEPS, "eta": 0.0, "color_fix": True, "seed": FAST["seed"]}
    assert options["difface"] == {"steps": 250, "start_step": COMPACT_START_STEP, "eta": 0.5, "seed": FAST["seed"]}
    explicit, _ = restore(client, degraded_face, methods=("idm",), steps=COMPACT_STEPS, eta=0)
    np.testing.assert_array_equal(load_image(files[1]), load_image(explicit[0]))


@needs_weights
def test_restore_seed_is_reproducible_and_matters(client, degraded_face):
    first, _ = restore(client, degraded_face, seed=1)
    again, _ = restore(client, degraded_face, seed=1)
    other, _ = restore(client, degraded_face, seed=2)
    np.testing.assert_array_equal(load_image(first[0]), load_image(again[0]))
    assert np.abs(load_image(first[0]) - load_image(other[0])).mean() > 1 / 255


@needs_weights
def test_restore_aligned_with_upscale(client, clean_face):
    files, info = restore(client, clean_face, aligned=True, upscale=2)
    assert load_image(files[0]).shape == (300, 300, 3)
    assert info["detector"] == "none (aligned input)" and info["faces"] == 1


@needs_weights
def test_no_face_is_a_message_not_an_error(client, tmp_path):
    flat = tmp_path / "wall.png"
    save_image(np.full((96, 128, 3), 0.6, np.float32), flat)
    files, info = restore(client, flat)
    assert not files and info["faces"] == 0
    assert info["message"].startswith("No face found")


@needs_weights
def test_ui_shows_slider_gallery_and_face_crops_for_a_group(clean_face, tmp_path):
    """The Restore button's handler, called directly: two faces → a slider, a gallery and 2×2 face crops."""
    other = LFW / "Abel_Pacheco_0001.jpg"
    pair = np.concatenate([load_image(clean_face), load_image(other)], axis=1)
    save_image(pair, tmp_path / "pair.png")
    message, *rest = app.restore_for_ui(str(tmp_path / "pair.png"), ["difface"], "compact", *FAST.values(), False,
                                        1, False, False, progress=None)
    sliders, (gallery, faces, files, _summary) = rest[:len(app.METHODS)], rest[len(app.METHODS):]
    shown = {name: value for name, value in zip(app.METHODS, sliders, strict=True) if value is not None}
    assert list(shown) == ["difface"]
    before, after = shown["difface"]
    assert before.shape == after.shape == (150, 300, 3)
    assert "2 faces" in message
    captions = [c for _, c in gallery]
    assert captions[0] == "Input" and len(captions) == 2
    assert re.fullmatch(r"DifFace · compact · \d+\.\d s", captions[1])  # method, tier, time taken
    assert [c for _, c in faces] == ["Face 1: input · DifFace", "Face 2: input · DifFace"]  # a row per face
    crop = run_crop = 64  # the compact crops, input then DifFace, with a white gap between
    assert all(strip.shape == (crop, 2 * run_crop + 4, 3) for strip, _ in faces)
    assert (faces[0][0][:, crop:crop + 4] == 255).all()
    assert len(files) == 1 and Path(files[0]).is_file()
    # what the pictures show: the slider's left is the photo, its right the restored file; each strip is that
    # face's input crop, then its restoration
    restored = load_image(files[0])
    np.testing.assert_array_equal(before, to_uint8(load_image(tmp_path / "pair.png")))
    np.testing.assert_array_equal(after, to_uint8(restored))
    assert np.abs(before.astype(int) - after.astype(int)).mean() > 1
    for strip, _ in faces:
        left, right = strip[:, :crop].astype(int), strip[:, crop + 4:].astype(int)
        assert np.abs(left - right).mean() > 1  # not the input twice
    face_x = np.argwhere(np.abs(restored - load_image(tmp_path / "pair.png")).max(axis=2) > 0.02)[:, 1]
    assert face_x.min() < 150 <= face_x.max()  # both halves of the photo (both faces) were restored


@needs_weights
def test_the_ui_runs_methods_in_the_sliders_order(clean_face):
    """Gallery, face strips and message follow the sliders (METHODS order), whatever order the boxes were ticked."""
    ticked = [name for name in reversed(app.METHODS) if name in app.compact_methods() and name != "flipnet"][:2]
    if len(ticked) < 2:
        pytest.skip("needs two fast compact methods")
    message, *rest = app.restore_for_ui(str(clean_face), ticked, "compact", *FAST.values(), True, 1, False, True,
                                        progress=None)
    gallery = rest[len(app.METHODS)]
    titles = [caption.split(" · ")[0] for _, caption in gallery[1:]]
    assert titles == [app.METHODS[name].title for name in app.METHODS if name in ticked] != \
        [app.METHODS[name].title for name in ticked]


def test_only_center_face_restores_the_middle_face_alone(clean_face, tmp_path):
    other = load_image(LFW / "Abel_Pacheco_0001.jpg")
    row = np.concatenate([load_image(clean_face), other, np.full_like(other, 0.5)], axis=1)  # face 2 is central
    save_image(row, tmp_path / "row.png")
    message, *rest = app.restore_for_ui(str(tmp_path / "row.png"), ["difface"], "compact", *FAST.values(), False,
                                        1, True, False, progress=None)
    faces, files = rest[len(app.METHODS) + 1], rest[len(app.METHODS) + 2]
    assert "1 face" in message and [c for _, c in faces] == ["Face 1: input · DifFace"]
    changed = np.argwhere(np.abs(load_image(files[0]) - load_image(tmp_path / "row.png")).max(axis=2) > 0.02)
    assert len(changed) > 500 and 150 <= changed[:, 1].min() and changed[:, 1].max() < 300


@needs_weights
def test_restorers_are_loaded_once():
    assert app.get_restorer("difface", "compact") is app.get_restorer("difface", "compact")


def test_a_slow_load_holds_up_only_the_requests_for_that_model(monkeypatch):
    """A paper-tier download must not stall a request for a model already loaded; two requests for the model
    being loaded get the one load."""
    import threading
    from collections import OrderedDict

    release, loads = threading.Event(), []

    def slow_load(method, tier):
        loads.append((method, tier))
        assert release.wait(10)
        return object()

    monkeypatch.setattr(app, "_restorers", OrderedDict({("unsupervised", "compact"): "cached"}))
    monkeypatch.setattr(app, "_loading", {})
    monkeypatch.setattr(app.bfr, "load", slow_load)
    got = []
    first, second = (threading.Thread(target=lambda: got.append(app.get_restorer("idm", "paper"))) for _ in range(2))
    first.start()
    while not loads:
        threading.Event().wait(0.01)
    second.start()
    cached = threading.Thread(target=lambda: got.append(app.get_restorer("unsupervised", "compact")))
    cached.start()
    cached.join(2)
    assert not cached.is_alive() and got == ["cached"]  # answered while the paper model is still loading
    got.clear()
    release.set()
    first.join(10), second.join(10)
    assert loads == [("idm", "paper")] and len(got) == 2 and got[0] is got[1] is app._restorers[("idm", "paper")]


@needs_weights
def test_method_ticks_are_left_alone_unless_a_tier_rules_one_out():
    """pick_methods writes the boxes back only to untick an unavailable method (a quick second tick is
    never overwritten by the first one's reply); coming back to a tier with none ticked ticks its first."""
    ready = app.compact_methods()
    assert app.pick_methods(ready, "compact") == gr.skip()
    deps = {d.get("api_name"): d for d in app.build_demo().config["dependencies"]}
    assert deps["pick_methods"]["trigger_mode"] == deps["change_tier"]["trigger_mode"] == "always_last"
    assert app.change_tier("compact", [])["value"] == ready[:1]
    unavailable = [name for name in app.METHODS if not method_status(name, "paper")[0]]
    if unavailable:
        update = app.pick_methods(unavailable, "paper")  # unticked, each with its reason in the help line
        assert update["value"] == [] and update["info"].count("cannot run on the paper tier here") == len(unavailable)


def test_send_to_restore_needs_a_degraded_face():
    with pytest.raises(gr.Error):
        app.send_to_restore(None)
    image, aligned, tabs = app.send_to_restore("/tmp/x.png")
    assert image == "/tmp/x.png" and aligned is False


# ---------------------------------------------------------------------------- examples/


def test_examples_index_matches_the_files():
    index = ROOT / "examples" / "examples.json"
    if not index.is_file():
        pytest.skip("examples not made yet: run `python examples/make_examples.py`")
    import json

    data = json.loads(index.read_text())
    for item in data["restore"]:
        assert (ROOT / "examples" / item["file"]).is_file() and (ROOT / "examples" / item["clean"]).is_file()
        assert item["preset"] in app.PRESETS and isinstance(item["seed"], int)
    assert any("group" in item["file"] for item in data["restore"])
    for item in data["degrade"]:
        assert (ROOT / "examples" / item["file"]).is_file()
    assert app._examples()["restore"] and app._examples()["degrade"]


def test_example_faces_are_drawn_from_the_diffused_start_image():
    """SDEdit from a start image: seeded, in range, and the farther the start, the farther from it."""
    import torch

    from bfr.nets import UNetModel

    make = pytest.importorskip("examples.make_examples")
    torch.manual_seed(0)
    prior = UNetModel(image_size=16, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                      attention_resolutions=(8,), channel_mult=(1, 2), num_head_channels=32).eval()
    start = torch.linspace(-0.5, 0.5, 3 * 16 * 16).reshape(1, 3, 16, 16)
    near = make.sample_face(prior, start, seed=1, steps=50, start_step=2, eta=1.0)
    far = make.sample_face(prior, start, seed=1, steps=50, start_step=45, eta=1.0)
    assert near.shape == (16, 16, 3) and near.dtype == np.float32 and 0 <= near.min() and near.max() <= 1
    np.testing.assert_array_equal(near, make.sample_face(prior, start, seed=1, steps=50, start_step=2, eta=1.0))
    target = start[0].permute(1, 2, 0).numpy() * 0.5 + 0.5
    assert np.abs(near - target).mean() < np.abs(far - target).mean()


def test_group_photo_blends_faces_onto_a_plain_background():
    make = pytest.importorskip("examples.make_examples")
    faces = [np.full((64, 64, 3), v, np.float32) for v in (0.0, 0.5, 1.0)]
    img = make.group_photo(faces, face_size=40, gap=10, background=(0.8, 0.8, 0.8))
    assert img.shape == (60, 3 * 50 + 10, 3)
    np.testing.assert_allclose(img[0], 0.8)  # border rows: background only
    np.testing.assert_allclose(img[30, 30], 0.0, atol=1e-6)  # centre of face 1
    np.testing.assert_allclose(img[30, 130], 1.0, atol=1e-6)  # centre of face 3


def test_the_app_builds_with_lazy_example_caching(monkeypatch):
    """What a GPU Space gets: restore examples cached lazily (on first click), not at start-up; none on a CPU."""
    if not app._examples()["restore"]:
        pytest.skip("examples not made yet: run `python examples/make_examples.py`")
    seen, real = [], gr.Examples

    def spy(*args, **kwargs):
        seen.append((kwargs.get("cache_examples"), kwargs.get("cache_mode")))
        return real(*args, **kwargs)

    monkeypatch.setattr(gr, "Examples", spy)
    monkeypatch.setattr(app, "ON_GPU", True)
    app.build_demo()
    assert seen == [(True, "lazy"), (None, None)]  # restore examples, then the clean faces (inputs only)
    seen.clear()
    monkeypatch.setattr(app, "ON_GPU", False)
    app.build_demo()
    assert seen == [(False, None), (None, None)]


@needs_weights
def test_example_outputs_are_all_filled(clean_face):
    """Gradio 6.31's example cache cannot read back empty outputs: an example fills every output it lists."""
    out = app.restore_example(str(clean_face), progress=None)
    assert len(out) == 1 + len(app.compact_methods()) + 4
    assert all(value is not None for value in out)
    ran = {r["method"]: r["options"] for r in out[-1]["results"]}  # each method at its own defaults
    assert list(ran) == app.compact_methods()
    assert all(ran[name] == app.METHODS[name].defaults("compact") for name in ran)


class _Failing:
    """A restorer whose restore raises ``error`` (a method that breaks mid-request)."""

    def __init__(self, error: Exception):
        self.error = error

    def restore(self, *args, **kwargs):
        raise self.error


def _run(image, methods, **knobs):
    knobs = {**FAST, **knobs}
    return app.run_restore(str(image), list(methods), "compact", knobs["steps"], knobs["start_step"], knobs["eta"],
                           knobs["seed"], True, 1, False, False, None)


@needs_weights
def test_a_failing_method_keeps_the_others_results(monkeypatch, clean_face):
    from bfr.errors import WeightsUnavailableError

    if not method_status("idm", "compact")[0]:
        pytest.skip("needs a second compact method")
    real = app.get_restorer
    gone = WeightsUnavailableError("idm64.safetensors is gone; put it back at bfr/weights/compact/")
    monkeypatch.setattr(app, "get_restorer", lambda name, tier: _Failing(gone) if name == "idm" else real(name, tier))
    run = _run(clean_face, ["difface", "idm"])
    assert [r.method for r in run.results] == ["difface"] and len(run.files) == 1
    assert "Not restored: IDM" in run.message and "put it back at bfr/weights/compact/" in run.message


def test_failures_inside_the_gpu_call_become_sentences(monkeypatch, clean_face):
    """ZeroGPU passes only gr.Error out of @spaces.GPU: bfr's errors and unexpected ones are turned into
    sentences there, one per failed method; with nothing restored the request fails with them."""
    from bfr.errors import InputError

    face = np.zeros((64, 64, 3), np.float32)
    for error, said in ((InputError("the face is too small to restore"), "DifFace: The face is too small to restore."),
                        (RuntimeError("boom"), "DifFace: Unexpected error (RuntimeError: boom). Please report it "
                                               "with the photo's size and the options you chose.")):
        monkeypatch.setattr(app, "get_restorer", lambda name, tier, error=error: _Failing(error))
        assert app.run_methods(face, ["difface"], "compact", {}, True, 1, False, 1) == ([], [said], False)
    with pytest.raises(gr.Error, match="Unexpected error"):
        _run(clean_face, ["difface"])


def test_an_aligned_crop_that_is_not_square_is_one_sentence_before_any_model(monkeypatch, tmp_path):
    wide = tmp_path / "wide.png"
    save_image(np.full((64, 128, 3), 0.5, np.float32), wide)
    monkeypatch.setattr(app, "get_restorer", lambda name, tier: pytest.fail("must be refused before loading"))
    with pytest.raises(gr.Error, match=r"An aligned face crop is square \(e.g. 512×512\), but this image is 128×64"):
        _run(wide, ["difface", "idm"])


def test_zero_gpu_refuses_a_request_longer_than_one_call(monkeypatch, clean_face):
    monkeypatch.setattr(app, "ZERO_GPU", True)
    monkeypatch.setattr(app, "GPU_MAX_SECONDS", 30)
    monkeypatch.setattr(app, "get_restorer", lambda name, tier: pytest.fail("must be refused before loading"))
    with pytest.raises(gr.Error, match="more than the 30 s one ZeroGPU call may take"):
        _run(clean_face, ["difface"], steps=1000, start_step=999)


def test_seed_range_and_method_list_are_checked(clean_face, monkeypatch):
    from bfr.errors import MAX_SEED

    for seed in (2**40, MAX_SEED + 1, -1, 1.5):  # bfr's one range, fractions refused rather than rounded
        with pytest.raises(gr.Error, match=rf"A seed is a whole number from 0 to {MAX_SEED}, got {seed}\."):
            app.degrade(str(clean_face), "difface", seed, 0, 1, 0, 0)
        with pytest.raises(gr.Error, match="A seed is a whole number from 0 to"):
            app.check_knobs(["difface"], {"seed": seed})
    assert app.check_knobs(["difface"], {"seed": float(MAX_SEED)}) == {"seed": MAX_SEED}
    assert app.KNOBS["seed"]["maximum"] == MAX_SEED
    with pytest.raises(gr.Error, match="list of names"):
        app.check_methods("difface", "compact")


def test_after_a_run_only_the_methods_with_a_result_keep_a_slider():
    """A method that failed or was stopped leaves no empty before/after frame; a run without a face, none."""
    shown = app.sliders_of_results({"results": [{"method": "idm"}, {"method": "difface"}]})
    assert [u["visible"] for u in shown] == [name in ("difface", "idm") for name in app.METHODS]
    assert not any(u["visible"] for u in app.sliders_of_results({"faces": 0, "results": []}))
    deps = app.build_demo().config["dependencies"]
    after = next(d for d in deps if d.get("api_name") == "sliders_of_results")
    assert after["trigger_only_on_success"] and deps[after["trigger_after"]]["api_name"] == "restore_ui"


def test_preset_comparison_runs_only_after_a_successful_degradation():
    deps = app.build_demo().config["dependencies"]
    compare = next(d for d in deps if d.get("api_name") == "compare_presets")
    assert compare["trigger_only_on_success"] and deps[compare["trigger_after"]]["api_name"] == "degrade"


class _Stepping:
    """A restorer that reports sampling steps (and would return nothing useful: it is stopped first)."""

    def restore(self, *args, progress=None, **kwargs):
        for done in range(1, 11):
            progress(done, 10)
        raise AssertionError("a stop request must end the run at the first step")


def test_stop_ends_the_run_at_the_next_step_and_says_what_was_skipped(monkeypatch, clean_face):
    monkeypatch.setattr(app, "get_restorer", lambda name, tier: _Stepping())
    monkeypatch.setattr(app.gr, "Info", lambda message: None)
    app.arm_restore(_Request("session-1"))
    app.request_stop(_Request("session-1"))
    try:
        results, failures, stopped = app.run_methods(np.zeros((64, 64, 3), np.float32), ["difface", "idm"],
                                                     "compact", {}, True, 1, False, 1, None, "session-1/restore")
    finally:
        app.disarm_stop("session-1/restore")
    assert results == [] and stopped and failures == ["Stopped by you during DifFace (skipped: IDM)"]
    deps = app.build_demo().config["dependencies"]
    assert any(d.get("api_name") == "stop" for d in deps) and any(d.get("api_name") == "stop_flipnet" for d in deps)


def test_stop_reaches_a_queued_run_and_is_not_an_error(monkeypatch, clean_face):
    """The click arms Stop before the run waits in the queue; a Stop then ends the run before it samples,
    as a message, not an error; a Stop with nothing armed says so and does not end the next run."""
    monkeypatch.setattr(app, "get_restorer", lambda name, tier: _Stepping())
    said = []
    monkeypatch.setattr(app.gr, "Info", said.append)
    app.request_stop(_Request("session-2"))  # nothing running: nothing to stop
    assert said == ["Nothing is running."] and "session-2/restore" not in app._stop_requested
    with pytest.raises(gr.Error, match="must end the run"):  # so the next run samples all its steps
        app.run_restore(str(clean_face), ["difface"], "compact", 20, 8, 0.5, 0, True, 1, False, False, None,
                        "session-2/restore")
    app.arm_restore(_Request("session-3"))  # the click
    app.request_stop(_Request("session-3"))  # Stop while the run is queued
    run = app.run_restore(str(clean_face), ["difface"], "compact", 20, 8, 0.5, 0, True, 1, False, False, None,
                          "session-3/restore")
    assert run.results == [] and run.files == [] and run.message.startswith("Stopped by you before any method")
    assert not app._armed and not app._stop_requested  # disarmed at the end
    deps = {d.get("api_name"): d for d in app.build_demo().config["dependencies"]}
    arm = deps["arm_restore"]
    assert not arm["queue"] and deps["restore_ui"]["trigger_after"] is not None


@needs_weights
def test_a_method_that_cannot_load_is_reported_and_the_others_run(monkeypatch, clean_face):
    from bfr.errors import WeightsUnavailableError

    if not method_status("idm", "compact")[0]:
        pytest.skip("needs a second compact method")
    real = app.get_restorer

    def get(name, tier):
        if name == "idm":
            raise WeightsUnavailableError("idm64.safetensors is missing")
        return real(name, tier)

    monkeypatch.setattr(app, "get_restorer", get)
    run = _run(clean_face, ["idm", "difface"])
    assert [r.method for r in run.results] == ["difface"] and "IDM: idm64.safetensors is missing" in run.message


def test_previews_are_capped_and_downloads_keep_the_full_size():
    big = np.random.default_rng(0).random((2100, 4200, 3)).astype(np.float32)
    shown = app._preview(big)
    assert shown.shape == (1024, 2048, 3) and shown.dtype == np.uint8
    small = np.full((300, 200, 3), 0.5, np.float32)
    assert app._preview(small).shape == (300, 200, 3)
