"""The bfr demo: restore faces with every method that has weights here, and preview degradations.

    python app.py            # http://127.0.0.1:7860

Layout, event wiring and small handlers only; all model work happens in the bfr package.
Two documented API endpoints (see the "Use via API" link, or the README):

- ``/restore`` (image, methods, tier, steps, start_step, eta, seed, aligned, upscale,
  only_center_face, own_defaults) → (PNG files, one per method; JSON summary). With
  ``own_defaults`` (the default) each method samples with its own published/measured
  steps and η, and only the seed is taken; untick it to apply steps, start_step and eta.
- ``/degrade`` (image, preset, seed, blur, downsample, noise, jpeg_quality)
  → (degraded PNG; JSON of the parameters used)
- ``/degrade_flipnet`` (image, variants, seed, aligned) → (gallery of FLIPNET degradation-mode
  variants; a note)

On a Hugging Face ZeroGPU Space the sampling runs inside ``@spaces.GPU`` with a duration
estimated from the request; elsewhere that decorator does nothing and everything runs
unchanged on the CPU (or a local GPU).
"""

import spaces  # noqa: I001 — first, before torch: ZeroGPU patches CUDA initialisation on import

import dataclasses
import functools
import json
import re
import shutil
import tempfile
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import numpy as np
import PIL.Image
import torch

import bfr
from bfr.api import METHODS, Restorer, RestoreResult, method_status
from bfr.degradations import PRESETS, DegradationParams, describe
from bfr.degradations import degrade as degrade_image
from bfr.errors import MAX_SEED, BfrError, InputError, NoFaceError, check_seed
from bfr.faces import FacePipeline
from bfr.faces.detect import facexlib_weights
from bfr.faces.paste import PARSENET_FILE
from bfr.faces.pipeline import check_aligned_shape
from bfr.imageio import MAX_OUTPUT_PIXELS, MAX_PIXELS, check_image_file, load_image, resize, save_image, to_uint8

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
TIERS = tuple(dict.fromkeys(tier for info in METHODS.values() for tier in info.tiers))  # compact, paper
ZERO_GPU = bool(getattr(spaces.config.Config, "zero_gpu", False))  # a ZeroGPU Space: GPU time is per call
ON_GPU = ZERO_GPU or torch.cuda.is_available()

# Every knob a method may declare in METHODS[name].knobs, and how the demo shows it. A new
# method with these knobs needs no change here; a new knob needs one line here (and a
# parameter of restore / restore_for_ui, which name the API's inputs).
KNOBS = {
    "steps": dict(label="Steps", minimum=2, maximum=1000, step=1,
                  info="length of the DDIM chain the sampler runs on"),
    "start_step": dict(label="Started step N", minimum=1, maximum=999, step=1,
                       info="where sampling starts on that chain (N < steps): higher = more realism, less fidelity"),
    "eta": dict(label="η (eta)", minimum=0.0, maximum=1.0, step=0.05,
                info="DDIM stochasticity: 0 = deterministic, 1 = DDPM-like"),
    "seed": dict(label="Seed", minimum=0, maximum=MAX_SEED, step=1, info="same seed, same result"),
}
FLIPNET_STEPS = METHODS["flipnet"].defaults("compact")["steps"]  # the degradation mode's chain, as restore's
VARIANTS_PER_REQUEST = 8  # the demo's cap on FLIPNET degradation variants (one batch, one GPU call)
OWN_DEFAULT_KNOBS = ("steps", "start_step", "eta")  # left to each method under "own defaults" (the seed is not)

# GPU seconds per (face × sampling step), for @spaces.GPU's duration; generous on purpose.
SECONDS_PER_FACE_STEP = {"compact": 0.02, "paper": 0.12}
GPU_BASE_SECONDS, GPU_MAX_SECONDS = 20, 300
RESTORER_CACHE_SIZE = 4  # (method, tier) pairs kept loaded (every compact method); a paper model is ~0.6 GB
DEGRADE_MAX_SIDE = 1024  # the degradation preview works on faces; bigger inputs are shrunk first
PREVIEW_MAX_SIDE = 2048  # sliders and gallery show at most this; the PNG downloads keep the full size
OUTPUT_DIR = Path(tempfile.gettempdir()) / "bfr-app"
# galleries as tall as their pictures (Gradio reserves 450 px even for one row of small faces)
CSS = ("#gallery .fixed-height, #faces .fixed-height, #presets .fixed-height, #flipnet-variants .fixed-height "
       "{ min-height: 0; }"
       # the faces gallery holds one wide strip per face: cells as tall as their strip, not square
       # (and the side-by-side gallery: wide photos are not shown in square cells)
       "#faces .thumbnail-item, #gallery .thumbnail-item { aspect-ratio: auto; height: auto; }"
       "#faces .thumbnail-item img, #gallery .thumbnail-item img { width: 100%; height: auto; object-fit: contain; }"
       # captions name methods and times: under the picture, whole, not over the faces and cut off
       "#faces .caption-label, #gallery .caption-label { position: static; display: block; max-width: 100%; "
       "white-space: normal; }"
       # download names differ at their end (the method): let them wrap on a phone rather than be cut off
       "#files .file-name { white-space: normal; word-break: break-all; }"
       # the galleries' labels sit above their first row, not over it
       "#faces .grid-wrap, #gallery .grid-wrap { padding-top: 2.5em; }"
       # method names with "(unavailable)" are long: wrap them rather than cut them off
       "#methods label { max-width: 100%; } #methods label span { white-space: normal; overflow: visible; }"
       # a phone: one face strip per row, at the full width
       "@media (max-width: 640px) { #faces .grid-container { grid-template-columns: 1fr !important; } }")


def scroll_on_phone(elem_id: str) -> str:
    """JS for a button: on a narrow screen the results are below the inputs and examples, so show where they (and
    the run's progress) appear."""
    return ("() => { if (window.innerWidth <= 640) "
            f"document.getElementById('{elem_id}')?.scrollIntoView({{behavior: 'smooth'}}); }}")


LAUNCH = dict(max_file_size="64mb", css=CSS)  # uploads beyond this stop at the server; MAX_PIXELS per image
CUSTOM = "custom"


# ---------------------------------------------------------------------------- inputs and errors


CHECKED = "bfr-checked"  # elem_classes marker of the inputs whose payload errors read as sentences


def _check_payload(component, payload, preprocess):
    """Gradio's own checks of an input, with the errors a visitor or an API caller can act on."""
    if isinstance(component, gr.CheckboxGroup) and isinstance(payload, str):
        raise gr.Error(f"{component.label} must be a list of names, e.g. [{payload!r}], not a string.")
    if isinstance(component, (gr.Slider, gr.Number)) and payload is None:
        raise gr.Error(f"{component.label} needs a number, got None.")
    if isinstance(component, gr.Number) and component.precision == 0 and isinstance(payload, float) \
            and not payload.is_integer():  # Gradio would round it (2.5 → 2) and run with another seed than asked
        raise gr.Error(f"{component.label} must be a whole number, got {payload:g}.")
    if not isinstance(component, gr.Image):
        try:
            return preprocess(component, payload)
        except gr.Error as e:  # Gradio's range and choice checks, which do not say which of 11 inputs is wrong
            if isinstance(component, (gr.CheckboxGroup, gr.Radio, gr.Dropdown)):
                values = [value for _, value in component.choices]
                bad = [v for v in payload if v not in values] if isinstance(payload, list) else [payload]
                raise gr.Error(f"{component.label}: {', '.join(map(repr, bad))} is not a choice here; choose from: "
                               f"{', '.join(map(str, values))}.") from e
            raise gr.Error(f"{component.label}: {e.message[:1].lower()}{e.message[1:]}") from e
    try:
        return preprocess(component, payload)
    except gr.Error:
        raise
    except PIL.Image.DecompressionBombError as e:
        raise gr.Error(f"This image is far too large to open safely; downscale it below "
                       f"{MAX_PIXELS / 1e6:.1f} MP first.") from e
    except (PIL.UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        name = Path(getattr(payload, "orig_name", None) or "The file").name
        raise gr.Error(f"{name} is not an image this demo can read; upload a PNG, JPEG, WebP, TIFF or BMP "
                       "photo.") from e


def _install_checks() -> None:
    """Route the preprocess of the demo's input kinds through ``_check_payload`` for components marked CHECKED.

    On the class, not the instance: an example click or any property update makes Gradio rebuild the
    session's copy of a component from its constructor arguments (which keep the marker), and a
    subclass would make Gradio write an app.pyi stub beside this file.
    """
    for cls in (gr.Image, gr.CheckboxGroup, gr.Slider, gr.Number, gr.Radio, gr.Dropdown):
        original = getattr(cls.preprocess, "__wrapped__", cls.preprocess)  # idempotent on re-import

        @functools.wraps(original)
        def preprocess(self, payload, original=original):
            if CHECKED in (self.elem_classes or []):
                return _check_payload(self, payload, original)
            return original(self, payload)

        cls.preprocess = preprocess


_install_checks()


def photo_input(**kwargs) -> gr.Image:
    """A gr.Image (file path) whose upload errors read as sentences, not "cannot identify image file '/tmp/…'"."""
    return gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], elem_classes=[CHECKED],
                    **kwargs)


def sentence(text: str) -> str:
    """bfr's messages are clauses (the CLI prints "error: …"); a toast shows a sentence."""
    text = text.strip()
    first = text.split(" ", 1)[0]
    if first.isalpha() and first.islower():  # not a file name such as idm64.safetensors
        text = text[:1].upper() + text[1:]
    return text + ("" if text.endswith((".", "!", "?")) else ".")


@contextmanager
def user_errors(path: str | None = None):
    """bfr's InputError / WeightsUnavailableError → gr.Error, with temporary paths shortened to file names."""
    try:
        yield
    except BfrError as e:
        message = str(e).replace(path, Path(path).name) if path else str(e)
        raise gr.Error(sentence(message)) from e


@contextmanager
def readable_errors():
    """Around model work: every failure leaves as a gr.Error that says what happened.

    Needed inside the ``@spaces.GPU`` functions in particular: ZeroGPU passes only gr.Error
    through to the user and turns anything else into its bare class name.
    """
    try:
        yield
    except (gr.Error, StopRequested):
        raise
    except BfrError as e:
        raise gr.Error(sentence(str(e))) from e
    except torch.OutOfMemoryError as e:
        raise gr.Error("Out of memory. Tick “only the centre face”, choose a smaller upscale, or use the compact "
                       "tier.") from e
    except Exception as e:
        traceback.print_exc()
        raise gr.Error(f"Unexpected error ({type(e).__name__}: {e}). Please report it with the photo's size and "
                       "the options you chose.") from e


def read_photo(path: str | None, what: str = "a photo") -> np.ndarray:
    """The upload as float32 RGB; the size cap (MAX_PIXELS) is checked from the header, before decoding."""
    if not path:
        raise gr.Error(f"Upload {what} first (or pick an example).")
    with user_errors(path):
        return load_image(path)


def check_upload(payload):
    """On upload, from the raw upload (before Gradio opens it): a file that cannot be restored (not an image, too
    large or small) is said now, from its header, and taken out of the box, which then invites another upload
    instead of failing again at Restore."""
    path = payload.get("path") if isinstance(payload, dict) else getattr(payload, "path", None)
    if not path:
        return gr.skip()
    shown = (payload.get("orig_name") if isinstance(payload, dict) else None) or Path(path).name
    try:
        with user_errors(path):
            check_image_file(path)
    except gr.Error as e:
        gr.Warning(e.message.replace(Path(path).name, shown))
        return None
    return gr.skip()


def why_not(name: str, tier: str) -> str:
    """Why a method cannot run on a tier, without the command that trains its weights (a visitor cannot run it;
    “Methods on this machine” keeps the whole reason)."""
    return method_status(name, tier)[1].split("; make it with")[0]


def check_methods(methods: list[str] | None, tier: str) -> list[str]:
    if isinstance(methods, str):
        raise gr.Error(f"Methods must be a list of names, e.g. [{methods!r}], not a string.")
    if tier not in TIERS:
        raise gr.Error(f"Unknown tier {tier!r}; choose one of: {', '.join(TIERS)}.")
    if not methods:
        if not any(method_status(name, tier)[0] for name in METHODS):
            raise gr.Error(f"No method can run on the {tier} tier here: "
                           + " · ".join(f"{METHODS[name].title}: {why_not(name, tier)}" for name in METHODS)
                           + ". Choose the compact tier, or see “Methods on this machine”.")
        raise gr.Error("Choose at least one method.")
    for name in methods:
        if name not in METHODS:
            raise gr.Error(f"Unknown method {name!r}; choose from: {', '.join(METHODS)}.")
        if not method_status(name, tier)[0]:
            advice = (" Choose the compact tier, or run the demo where the weights can be downloaded (or are in "
                      "$BFR_WEIGHTS_DIR)." if tier == "paper" else "")
            raise gr.Error(f"{METHODS[name].title} cannot run on the {tier} tier here: {why_not(name, tier)}.{advice}")
    return list(dict.fromkeys(methods))


def app_seed(seed) -> int:
    """The seed as an int if bfr takes it (a whole number in [0, MAX_SEED]), else a sentence for the user."""
    try:
        return check_seed(seed)
    except InputError as e:
        raise gr.Error(sentence(str(e))) from None


def check_knobs(methods: list[str], values: dict, own_defaults: bool = False) -> dict:
    """Range-check the knobs the chosen methods use, before any model is loaded.

    With ``own_defaults`` only the seed is taken: each method keeps its own steps and η
    (they differ: DifFace 250 steps at η 0.5, IDM's compact tier 10 at η 0, FLIPNET 50 at η 1).
    """
    used = {k for m in methods for k in METHODS[m].knobs} - set(OWN_DEFAULT_KNOBS if own_defaults else ())
    knobs = {}
    for name, value in values.items():
        if name not in used:
            continue
        if name == "seed":
            knobs[name] = app_seed(value)
            continue
        spec = KNOBS[name]
        if value is None or not spec["minimum"] <= float(value) <= spec["maximum"]:
            raise gr.Error(f"{spec['label']} must lie in [{spec['minimum']}, {spec['maximum']}], got {value}.")
        knobs[name] = int(value) if isinstance(spec["step"], int) else float(value)
    if "start_step" in knobs and "steps" in knobs and knobs["start_step"] >= knobs["steps"]:
        raise gr.Error(f"Started step N ({knobs['start_step']}) must be smaller than steps ({knobs['steps']}).")
    return knobs


# ---------------------------------------------------------------------------- running the methods


_restorers: OrderedDict[tuple[str, str], Restorer] = OrderedDict()
_restorers_lock = threading.Lock()  # held only to read or change the cache, never while a model loads
_loading: dict[tuple[str, str], threading.Lock] = {}  # one per (method, tier): a model loads once at a time


def get_restorer(method: str, tier: str) -> Restorer:
    """Each (method, tier) is loaded once and reused; the least recently used is dropped beyond the cache size.
    A load (seconds, or a download for the paper tier) holds up only the requests for that same model."""
    key = (method, tier)
    with _restorers_lock:
        if key in _restorers:
            _restorers.move_to_end(key)
            return _restorers[key]
        gate = _loading.setdefault(key, threading.Lock())
    with gate:
        with _restorers_lock:
            if key in _restorers:  # loaded by the request this one waited for
                return _restorers[key]
        restorer = bfr.load(method, tier)
        with _restorers_lock:
            _restorers[key] = restorer
            while len(_restorers) > RESTORER_CACHE_SIZE:
                _restorers.popitem(last=False)
            return restorer


def load_restorers(methods: list[str], tier: str, progress=None) -> tuple[list[str], list[str]]:
    """Load (or find cached) each method's models before any GPU call: the methods that loaded, and a line
    per one that did not. On ZeroGPU this keeps downloads and loading out of the GPU time, and the GPU
    worker, forked from this process, finds them loaded."""
    ready, failures = [], []
    for name in methods:
        if progress is not None:
            progress(0, desc=f"Loading {METHODS[name].title} ({tier}; weights are fetched on first use)")
        try:
            with readable_errors():
                get_restorer(name, tier)
            ready.append(name)
        except gr.Error as e:
            failures.append(f"{METHODS[name].title}: {e.message}")
    if tier == "paper" and ready:  # 512-px faces are pasted through ParseNet's mask: fetch it here, not in GPU time
        facexlib_weights(PARSENET_FILE)
    return ready, failures


# Stop, per browser session and per button (restore, FLIPNET's degradation mode): a run is armed when its
# button is clicked (before it waits in the queue) and disarmed when it ends; a Stop marks its own button's
# armed runs, which end at their next check (before they start, or at the next sampling step), keeping what is
# done. Keys are "SESSION/BUTTON"; a second click queued behind a run is counted, so the first run's end leaves
# it armed.
_armed: dict[str, int] = {}
_stop_requested: set[str] = set()
_stop_lock = threading.Lock()


class StopRequested(Exception):
    """Raised from a progress report once the user pressed Stop."""


def stop_key(request: gr.Request | None, button: str) -> str | None:
    """Which Stop ends a run: the one of ``button`` ("restore" or "flipnet") in the request's browser session."""
    return f"{request.session_hash}/{button}" if request is not None and request.session_hash else None


def _arm(key: str | None) -> None:
    if key is not None:
        with _stop_lock:
            if not _armed.get(key):
                _stop_requested.discard(key)  # a Stop pressed when nothing ran does not end the next run
            _armed[key] = _armed.get(key, 0) + 1


def arm_restore(request: gr.Request) -> None:
    """Runs unqueued as Restore is clicked: from now on, the restoration's Stop ends the run that click starts."""
    _arm(stop_key(request, "restore"))


def arm_flipnet(request: gr.Request) -> None:
    """The same for "Degrade with FLIPNET" and its own Stop."""
    _arm(stop_key(request, "flipnet"))


def disarm_stop(key: str | None) -> None:
    if key is not None:
        with _stop_lock:
            _armed[key] = _armed.get(key, 1) - 1
            if _armed[key] <= 0:
                del _armed[key]
                _stop_requested.discard(key)


def check_stop(key: str | None) -> None:
    if key is not None and key in _stop_requested:
        raise StopRequested


def request_stop(request: gr.Request) -> None:
    """The restoration's Stop button: its run (queued or running) ends at its next check."""
    _request_stop(stop_key(request, "restore"), " Methods already done are kept.")


def request_stop_variants(request: gr.Request) -> None:
    """The Stop button of FLIPNET's degradation mode."""
    _request_stop(stop_key(request, "flipnet"), " Variants shown before are kept.")


def _request_stop(key: str | None, kept: str) -> None:
    if key is None:
        return
    with _stop_lock:
        running = bool(_armed.get(key))
        if running:
            _stop_requested.add(key)
    gr.Info("Stopping: the run ends at its next sampling step, or before it starts if it is still waiting." + kept
            if running else "Nothing is running.")


_counter = FacePipeline(detector="auto", use_parse=False)
_counter_lock = threading.Lock()  # OpenCV's cascade is not safe to share between threads (e.g. an example + /restore)


def count_faces(img: np.ndarray, aligned: bool, only_center_face: bool) -> tuple[int, str]:
    """Faces the restorer will see (to size the GPU request, and to skip photos without faces)."""
    if aligned:
        check_aligned_shape(*img.shape[:2])  # one sentence now, not one per method later
        return 1, "none (aligned input)"
    with _counter_lock:
        faces, detector = _counter.detect(img), _counter.detector.name
    return (min(len(faces), 1) if only_center_face else len(faces)), detector


def gpu_estimate(methods, tier, knobs, n_faces) -> float:
    """Seconds of GPU one request needs: faces × the sampling steps of each method (DifFace runs start_step)."""
    steps = 0
    for name in methods:
        own = {**METHODS[name].defaults(tier), **knobs}
        steps += own["start_step"] if "start_step" in METHODS[name].knobs else own.get("steps", 100)
    return GPU_BASE_SECONDS + SECONDS_PER_FACE_STEP[tier] * steps * max(1, n_faces)


def gpu_seconds(img, methods, tier, knobs, aligned, upscale, only_center_face, n_faces, progress=None,
                session=None) -> int:
    """ZeroGPU duration for one request (run_restore refuses requests beyond GPU_MAX_SECONDS first)."""
    return int(min(GPU_MAX_SECONDS, gpu_estimate(methods, tier, knobs, n_faces)))


@spaces.GPU(duration=gpu_seconds)
def run_methods(img, methods, tier, knobs, aligned, upscale, only_center_face, n_faces, progress=None,
                session=None) -> tuple[list[RestoreResult], list[str], bool]:
    """The only GPU work: each method restores the photo; results come back as CPU numpy arrays.

    A method that fails does not take the others' results with it: its error comes back as a line.
    When the user of ``session`` presses Stop, the run ends at the next step, keeping what is done
    (the third value says it was stopped).
    """
    results, failures = [], []
    for i, name in enumerate(methods, 1):
        title = f"{METHODS[name].title} ({tier})" + (f", method {i} of {len(methods)}" if len(methods) > 1 else "")
        if progress is not None:
            progress(0, desc=f"Loading {title}")

        def report(done: int, total: int, title: str = title) -> None:
            check_stop(session)
            if progress is not None:
                progress((done, total), desc=f"Sampling: {title}", unit="steps")

        options = {k: v for k, v in knobs.items() if k in METHODS[name].knobs}
        try:
            with readable_errors():
                restorer = get_restorer(name, tier)
                results.append(restorer.restore(img, aligned=aligned, upscale=upscale,
                                                only_center_face=only_center_face, progress=report, **options))
        except gr.Error as e:
            failures.append(f"{METHODS[name].title}: {e.message}")
        except StopRequested:
            failures.append(f"Stopped by you during {METHODS[name].title}"
                            + (f" (skipped: {', '.join(METHODS[m].title for m in methods[i:])})" if i < len(methods)
                               else ""))
            return results, failures, True
    return results, failures, False


@dataclasses.dataclass
class Run:
    """One restore request: the input, what each method gave, and the files written."""

    name: str
    image: np.ndarray
    tier: str
    knobs: dict
    results: list[RestoreResult]
    files: list[str]
    message: str
    n_faces: int
    detector: str


def run_restore(image, methods, tier, steps, start_step, eta, seed, aligned, upscale, only_center_face,
                own_defaults, progress, session: str | None = None) -> Run:
    """Check everything cheap first (image, methods, knobs, output size, faces), then sample. ``session``:
    the browser session whose Stop ends this run (armed at the click, disarmed here at the end)."""
    try:
        return _run_restore(image, methods, tier, steps, start_step, eta, seed, aligned, upscale, only_center_face,
                            own_defaults, progress, session)
    finally:
        disarm_stop(session)


def _run_restore(image, methods, tier, steps, start_step, eta, seed, aligned, upscale, only_center_face,
                 own_defaults, progress, session):
    methods = check_methods(methods, tier)
    img = read_photo(image)
    knobs = check_knobs(methods, dict(steps=steps, start_step=start_step, eta=eta, seed=seed), bool(own_defaults))
    upscale = float(upscale or 1)
    h, w = img.shape[:2]
    if not 1 <= upscale <= 4:
        raise gr.Error(f"Upscale must lie in [1, 4], got {upscale:g}.")
    if round(w * upscale) * round(h * upscale) > MAX_PIXELS:
        raise gr.Error(f"Upscaling this {w}×{h} photo ×{upscale:g} would exceed the {MAX_PIXELS / 1e6:.1f} MP "
                       f"output limit of this demo; choose a smaller upscale (`python -m bfr restore` goes to "
                       f"{MAX_OUTPUT_PIXELS / 1e6:.0f} MP).")
    name = _safe_stem(image)
    with user_errors(image), readable_errors():
        n_faces, detector = count_faces(img, bool(aligned), bool(only_center_face))
    if n_faces == 0:
        message = (f"No face found by the {detector} detector, so nothing was restored. If the photo is a single "
                   "face crop filling the frame, open “Faces” and tick “Input is an aligned face crop” (aligned=True "
                   "in the API)."
                   + (f" The photo is only {w}×{h} px: a face needs more pixels to be found." if min(h, w) < 48
                      else ""))
        gr.Warning(message)
        return Run(name, img, tier, knobs, [], [], message, 0, detector)
    needed = gpu_estimate(methods, tier, knobs, n_faces)
    if ZERO_GPU and needed > GPU_MAX_SECONDS:
        raise gr.Error(f"This request needs about {needed:.0f} s of GPU time ({n_faces} faces × "
                       f"{len(methods)} methods), more than the {GPU_MAX_SECONDS} s one ZeroGPU call may take: tick "
                       "fewer methods, lower the steps, or tick “only the centre face”.")
    ready, failures = load_restorers(methods, tier, progress)
    results, failed, stopped = [], [], False
    if ready:
        try:
            check_stop(session)  # pressed while the run was queued, reading the photo or loading models
            with user_errors(image):
                results, failed, stopped = run_methods(img, ready, tier, knobs, bool(aligned), upscale,
                                                       bool(only_center_face), n_faces, progress, session)
        except StopRequested:
            stopped = True
    failures += failed
    if stopped and not results:
        message = "Stopped by you before any method finished: nothing was restored."
        gr.Info(message)
        return Run(name, img, tier, knobs, [], [], message, 0, detector)
    if not results:
        raise gr.Error(" · ".join(failures))
    out_dir = _new_output_dir()
    files = [str(save_image(r.image, out_dir / f"{name}_{r.method}_{r.tier}.png")) for r in results]
    message = results[0].message
    if failures:
        message += " Not restored: " + sentence(" · ".join(failures))
        if stopped and len(failures) == 1:
            gr.Info(f"{failures[0]}; the methods already done are kept.")
        else:
            gr.Warning("Some methods failed: " + " · ".join(failures))
    return Run(name, img, tier, knobs, results, files, message, len(results[0].faces), detector)


def summary(run: Run) -> dict:
    h, w = run.image.shape[:2]
    return {
        "input": {"name": run.name, "width": w, "height": h},
        "tier": run.tier,
        "faces": run.n_faces,
        "detector": run.results[0].detector if run.results else run.detector,
        "message": run.message,
        "options": run.knobs,
        "results": [
            {"method": r.method, "title": METHODS[r.method].title, "tier": r.tier, "seconds": round(r.seconds, 2),
             "options": {**METHODS[r.method].defaults(r.tier),
                         **{k: v for k, v in run.knobs.items() if k in METHODS[r.method].knobs}},
             "width": r.image.shape[1], "height": r.image.shape[0], "file": Path(f).name}
            for r, f in zip(run.results, run.files, strict=True)
        ],
    }


def _preview(img: np.ndarray) -> np.ndarray:
    """uint8 for display, at most PREVIEW_MAX_SIDE px: a 16 MP photo per slider would be slow to encode and send."""
    h, w = img.shape[:2]
    if max(h, w) > PREVIEW_MAX_SIDE:
        s = PREVIEW_MAX_SIDE / max(h, w)
        img = resize(img, (max(1, round(h * s)), max(1, round(w * s))))
    return to_uint8(img)


def _caption(r: RestoreResult) -> str:
    return f"{METHODS[r.method].title} · {r.tier} · {r.seconds:.1f} s"


def _safe_stem(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem)[:60] or "photo"


def _new_output_dir() -> Path:
    """A fresh folder for this request's PNGs; folders older than an hour are removed."""
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    for old in OUTPUT_DIR.iterdir():
        if old.is_dir() and time.time() - old.stat().st_mtime > 3600:
            shutil.rmtree(old, ignore_errors=True)
    out = OUTPUT_DIR / uuid.uuid4().hex[:12]
    out.mkdir()
    return out


# ---------------------------------------------------------------------------- event handlers


def restore(image: str, methods: list[str], tier: str, steps: int, start_step: int, eta: float, seed: int,
            aligned: bool, upscale: float, only_center_face: bool, own_defaults: bool = True,
            progress=gr.Progress()):  # noqa: B008 (how Gradio injects progress)
    """Restore every face in a photo with one or more methods.

    Args:
        image: the photo (any size up to 16.8 MP); faces are detected unless `aligned`.
        methods: a list of method names, e.g. ["difface"] or ["difface", "idm"] (not a string).
        tier: "compact" (bundled 64-px models) or "paper" (the authors' 512-px weights).
        steps: length of the DDIM chain (1–1000), used only when own_defaults is False.
        start_step: DifFace's started step N (1–999, < steps), used only when own_defaults is False.
        eta: DDIM stochasticity η (0–1), used only when own_defaults is False.
        seed: random seed (0–2147483647); the same seed gives the same result.
        aligned: the photo is one FFHQ-aligned face crop (skip detection).
        upscale: output size relative to the input (1–4).
        only_center_face: restore only the face nearest the centre.
        own_defaults: True: each method samples with its own steps/start_step/eta; False: apply the values given.

    Returns:
        The restored photos as PNG files (one per method, in order) and a JSON summary
        (faces found, detector, seconds per method, file names).
    """
    run = run_restore(image, methods, tier, steps, start_step, eta, seed, aligned, upscale, only_center_face,
                      own_defaults, progress)
    return run.files, summary(run)


def restore_for_ui(image, methods, tier, steps, start_step, eta, seed, aligned, upscale, only_center_face,
                   own_defaults=True, progress=gr.Progress(), request: gr.Request = None):  # noqa: B008
    """The Restore button: the same run as /restore, shown as sliders, a gallery and face crops; the Stop
    button ends it early (``request`` names the session).

    Plain values only (no gr.update): Gradio 6.31's lazy example caching fails on property updates.
    """
    session = stop_key(request, "restore")
    if isinstance(methods, list) and set(methods) <= set(METHODS):  # the sliders' order, in gallery and strips too
        methods = sorted(methods, key=list(METHODS).index)
    run = run_restore(image, methods, tier, steps, start_step, eta, seed, aligned, upscale, only_center_face,
                      own_defaults, progress, session)
    by_method = {r.method: r for r in run.results}
    sliders = []
    for name in METHODS:  # one slider per method; those that did not run are emptied
        r = by_method.get(name)
        before = run.image if r is None or r.image.shape == run.image.shape else resize(run.image, r.image.shape[:2])
        sliders.append(None if r is None else (_preview(before), _preview(r.image)))
    gallery = [(_preview(run.image), "Input")] + [(_preview(r.image), _caption(r)) for r in run.results]
    faces = [_face_strip(run, i) for i in range(run.n_faces)] if run.results else []
    lines = [run.message] + [f"- {_caption(r)}" for r in run.results]
    return ("\n".join(lines), *sliders, gallery if run.results else None, faces or None, run.files or None,
            summary(run))


def _face_strip(run: Run, i: int) -> tuple[np.ndarray, str]:
    """Face i's input crop, then each method's, side by side in one picture: a row per face, whatever the
    number of methods."""
    crops = [run.results[0].faces[i][0]] + [r.faces[i][1] for r in run.results]
    size = max(c.shape[0] for c in crops)
    crops = [np.atleast_3d(c if c.shape[0] == size else resize(c, (size, size))) for c in crops]
    crops = [np.repeat(c, 3, axis=2) if c.shape[2] == 1 else c for c in crops]  # gray photos keep gray crops
    gap = np.ones((size, max(2, size // 16), 3), np.float32)
    strip = np.concatenate([part for c in crops for part in (c, gap)][:-1], axis=1)
    titles = " · ".join(METHODS[r.method].title for r in run.results)
    return to_uint8(strip), f"Face {i + 1}: input · {titles}"


def restore_example(image, progress=gr.Progress()):  # noqa: B008 (how Gradio injects progress)
    """An example with every compact method at its own defaults (what lazy caching stores on a GPU Space).

    Returns the sliders of those methods only, all filled: Gradio 6.31 cannot read empty values back from its
    example cache.
    """
    methods = compact_methods()
    message, *rest = restore_for_ui(image, methods, "compact", *(_knob_default(k) for k in KNOBS), False, 1, False,
                                    True, progress)
    sliders = [value for name, value in zip(METHODS, rest, strict=False) if name in methods]
    return message, *sliders, *rest[len(METHODS):]


def compact_methods() -> list[str]:
    return [name for name in METHODS if method_status(name, "compact")[0]]


def degrade(image: str, preset: str, seed: int, blur: float, downsample: float, noise: float, jpeg_quality: int):
    """Synthetically degrade a clean face, as the training data and test sets are made.

    Args:
        image: a clean face photo (shrunk to at most 1024 px on its longer side first).
        preset: "difface", "gfpgan", "mild", "camera", "camera-lowres" (random settings in the preset's ranges)
            or "custom".
        seed: random seed; the same seed gives the same degradation.
        blur: Gaussian blur σ in pixels (custom only; 0 = none).
        downsample: downsampling factor r ≥ 1 (custom only; 1 = none).
        noise: Gaussian noise std on the 0–255 scale (custom only).
        jpeg_quality: JPEG quality 1–100, or 0 for no compression (custom only).

    Returns:
        The degraded face (PNG, same size as the input) and the parameters actually used.
    """
    img = _clean_face(image)
    lq, params = _degrade(img, preset, seed, blur, downsample, noise, jpeg_quality)
    path = save_image(lq, _new_output_dir() / f"{_safe_stem(image)}_{preset}.png")  # named after the input
    return str(path), _params_json(params, preset, seed, img)


def flipnet_seconds(img, variants, seed, aligned, progress=None, session=None) -> int:
    """ZeroGPU duration of a FLIPNET degradation request: one chain for all variants at once."""
    return int(min(GPU_MAX_SECONDS, GPU_BASE_SECONDS + SECONDS_PER_FACE_STEP["compact"] * FLIPNET_STEPS * variants))


@spaces.GPU(duration=flipnet_seconds)
def flipnet_variants(img, variants, seed, aligned, progress=None, session=None) -> list[np.ndarray]:
    def report(done: int, total: int) -> None:
        check_stop(session)
        if progress is not None:
            progress((done, total), desc="FLIPNET degradation mode", unit="steps")

    with readable_errors():
        restorer = get_restorer("flipnet", "compact")
        try:
            return restorer.degrade(img, variants=variants, steps=FLIPNET_STEPS, seed=seed, aligned=aligned,
                                    progress=report)
        except NoFaceError as e:  # decided here: ZeroGPU sends errors back pickled, without their cause
            raise gr.Error(f"No face found by the {restorer.face_pipeline().detector.name} detector in this image. "
                           "If it is a face crop filling the frame, tick “Input is an aligned face crop”.") from e


def degrade_flipnet(image: str, variants: int, seed: int, aligned: bool,
                    progress=gr.Progress(), request: gr.Request = None):  # noqa: B008 (how Gradio injects these)
    """Realistic degraded versions of a clean face from FLIPNET's degradation mode (compact tier).

    Args:
        image: a clean face: an aligned crop (LFW-like framing), or a photo whose largest face is aligned first.
        variants: how many degraded versions (1–8); each starts from different noise.
        seed: random seed of the whole set; the same seed gives the same variants.
        aligned: the image is already an aligned face crop.

    Returns:
        A gallery of the degraded variants (PNG, at the crop's size) and a one-line note.
    """
    session = stop_key(request, "flipnet")
    try:
        return _degrade_flipnet(image, variants, seed, aligned, progress, session)
    except StopRequested:  # the variants of an earlier run stay on show
        gr.Info("Stopped by you: no new variants were made.")
        return gr.skip(), "Stopped by you: no new variants were made."
    finally:
        disarm_stop(session)


def _degrade_flipnet(image, variants, seed, aligned, progress, session):
    img = _clean_face(image)
    ok, why = method_status("flipnet", "compact")
    if not ok:
        raise gr.Error(f"FLIPNET cannot run here: {why}.")
    if variants is None or not 1 <= int(variants) <= VARIANTS_PER_REQUEST:
        raise gr.Error(f"Variants must lie in [1, {VARIANTS_PER_REQUEST}], got {variants}.")
    seed = app_seed(seed)
    t0 = time.perf_counter()
    with user_errors(image):
        outs = flipnet_variants(img, int(variants), seed, bool(aligned), progress, session)
    note = (f"{len(outs)} variant{'s' if len(outs) > 1 else ''} from FLIPNET's degradation mode (seed {seed}, "
            f"{FLIPNET_STEPS} DDIM steps, {time.perf_counter() - t0:.1f} s). Compact tier: see its model card for how "
            "little it was trained.")
    out_dir, stem = _new_output_dir(), _safe_stem(image)  # files named after the input, as /degrade's
    return [(str(save_image(o, out_dir / f"{stem}_flipnet_{k}.png")), f"variant {k + 1}")
            for k, o in enumerate(outs)], note


def compare_presets(image, seed, blur, downsample, noise, jpeg_quality):
    """Every preset and the custom sliders, same seed, side by side; a table says what each one did."""
    if not image:
        return None, ""
    img = _clean_face(image)
    items, rows = [(to_uint8(img), "Clean input")], ["| preset | what it did |", "|---|---|"]
    for preset in (*PRESETS, CUSTOM):
        lq, params = _degrade(img, preset, seed, blur, downsample, noise, jpeg_quality)
        items.append((to_uint8(lq), preset))
        rows.append(f"| {preset} | {describe(params)} |")
    return items, "\n".join(rows)


def _clean_face(image: str) -> np.ndarray:
    img = read_photo(image, "a clean face")
    if max(img.shape[:2]) > DEGRADE_MAX_SIDE:
        h, w = img.shape[:2]
        s = DEGRADE_MAX_SIDE / max(h, w)
        img = resize(img, (max(1, round(h * s)), max(1, round(w * s))))
        gr.Info(f"The face was shrunk from {w}×{h} to {img.shape[1]}×{img.shape[0]} for the preview.")
    return img


def _degrade(img, preset, seed, blur, downsample, noise, jpeg_quality):
    if preset not in (*PRESETS, CUSTOM):
        raise gr.Error(f"Unknown preset {preset!r}; choose one of: {', '.join((*PRESETS, CUSTOM))}.")
    seed = app_seed(seed)
    config = preset
    if preset == CUSTOM:  # the sliders have checked the ranges
        kernel = 2 * max(3, int(np.ceil(3 * blur))) + 1  # ±3σ
        config = DegradationParams(sigma_x=float(blur), sigma_y=float(blur), scale=float(downsample),
                                   noise=float(noise), jpeg_quality=int(jpeg_quality) or None, kernel_size=kernel)
    with user_errors():
        return degrade_image(img, config, seed=seed)


def _params_json(params, preset, seed, img) -> dict:
    values = {k: round(v, 6) if isinstance(v, float) else v for k, v in dataclasses.asdict(params).items()}
    return {"preset": preset, "seed": int(seed), "width": img.shape[1], "height": img.shape[0],
            "pipeline": "synthetic" if isinstance(params, DegradationParams) else "camera",
            "summary": describe(params), "params": values}


def send_to_restore(degraded: str | None):
    if not degraded:
        raise gr.Error("Degrade a face first, then send it to the restoration tab.")
    return degraded, False, gr.Tabs(selected="restore")


def methods_info(tier: str, dropped: list[str] = ()) -> str:
    """The method list's help line: why ticked methods were unticked, or that none can run on this tier.

    In the page, not a toast: these events run unqueued (a full queue must not stop a tick), and Gradio shows
    toasts of queued events only."""
    reasons = [f"{METHODS[name].title} cannot run on the {tier} tier here: {why_not(name, tier)}." for name in dropped]
    if not any(method_status(name, tier)[0] for name in METHODS):
        reasons.insert(0, f"No method can run on the {tier} tier here.")
    if reasons:
        return " ".join(reasons) + " See “Methods on this machine” below."
    return METHODS_INFO


def pick_methods(methods: list[str], tier: str):
    """A ticked method that cannot run on this tier is unticked, saying why (the list shows them all);
    otherwise the boxes are left alone, so a quick second tick is never overwritten."""
    dropped = [name for name in methods if not method_status(name, tier)[0]]
    if not dropped:
        return gr.skip()
    return gr.update(value=[name for name in methods if name not in dropped], info=methods_info(tier, dropped))


def show_sliders(methods: list[str]):
    """A before/after slider for each ticked method only: no empty slider for a method that will not run."""
    return [gr.update(visible=name in methods) for name in METHODS]


def sliders_of_results(summary_json: dict | None):
    """After a run: a before/after slider for each method with a result, so a method that failed or was stopped
    leaves no empty frame (nor do all of them when no face was found); ticking methods shows theirs again."""
    done = {r["method"] for r in (summary_json or {}).get("results", [])}
    return [gr.update(visible=name in done) for name in METHODS]


def change_tier(tier: str, methods: list[str]):
    """New labels for the tier; methods that cannot run there are unticked, and a tier left with none
    ticked gets its first available one (coming back from a tier where nothing could run)."""
    dropped = [name for name in methods if not method_status(name, tier)[0]]
    keep = [name for name in methods if name not in dropped]
    first = [name for name in METHODS if method_status(name, tier)[0]][:1]
    return gr.update(choices=method_choices(tier), value=keep or first, info=methods_info(tier, dropped))


# ---------------------------------------------------------------------------- layout


def method_choices(tier: str) -> list[tuple[str, str]]:
    return [(info.title if method_status(name, tier)[0] else f"{info.title} (unavailable)", name)
            for name, info in METHODS.items()]


def status_list() -> str:
    """One line per method: which tiers can run here, and why the others cannot (from bfr.method_status)."""
    lines = []
    for name, info in METHODS.items():
        status = {tier: method_status(name, tier) for tier in TIERS}
        reasons = {why.removeprefix(f"{info.title} is ") for ok, why in status.values() if not ok}
        if not any(ok for ok, _ in status.values()) and len(reasons) == 1:
            lines.append(f"- **{info.title}**: unavailable: {reasons.pop()}.")
            continue
        tiers = [f"{tier} ready" if ok else f"{tier} unavailable ({why})" for tier, (ok, why) in status.items()]
        lines.append(f"- **{info.title}**: " + "; ".join(tiers) + ".")
    return "\n".join(lines)


def _knob_default(name: str):
    """The knob's value on the compact tier (the demo opens on it) of the first method that has it."""
    return next(info.defaults("compact")[name] for info in METHODS.values() if name in info.defaults("compact"))


def _knob_widget(name: str, own_defaults: bool) -> gr.components.Component:
    spec = dict(KNOBS[name])
    users = [info.title for info in METHODS.values() if name in info.knobs]
    spec["info"] = spec["info"] + (f" (used by {', '.join(users)})" if users else "")
    if name == "seed":
        return gr.Number(value=_knob_default(name), precision=0, elem_id=f"knob-{name}", elem_classes=[CHECKED],
                         **spec)
    return gr.Slider(value=_knob_default(name), elem_id=f"knob-{name}", interactive=not own_defaults,
                     elem_classes=[CHECKED], **spec)


def defaults_note() -> str:
    """Each method's own sampling defaults, per tier where they differ, for the checkbox's help text."""
    parts = []
    for info in METHODS.values():
        if not set(OWN_DEFAULT_KNOBS) & set(info.knobs):
            continue
        first, *others = [info.defaults(tier) | {"tier": tier} for tier in TIERS]  # the demo opens on the first
        texts = []
        for knob, fmt in (("steps", "{:g} steps"), ("start_step", "N {:g}"), ("eta", "η {:g}")):
            if knob in first:
                other = [f"{d['tier']} {d[knob]:g}" for d in others if d.get(knob, first[knob]) != first[knob]]
                texts.append(fmt.format(first[knob]) + (f" ({', '.join(other)})" if other else ""))
        parts.append(f"{info.title}: " + ", ".join(texts))
    return "untick to set the knobs below for every method · " + " · ".join(parts)


def _examples() -> dict:
    """examples/examples.json as written by examples/make_examples.py (empty when not made yet)."""
    index = EXAMPLES_DIR / "examples.json"
    if not index.is_file():
        return {"restore": [], "degrade": []}
    data = json.loads(index.read_text())
    return {tab: [[str(EXAMPLES_DIR / e["file"])] for e in data.get(tab, []) if (EXAMPLES_DIR / e["file"]).is_file()]
            for tab in ("restore", "degrade")}


METHODS_INFO = ("one or several; unavailable ones are explained under “Methods on this machine”"
                + ("" if ON_GPU else " · on a CPU, FLIPNET takes tens of seconds per face"))
INTRO = """# bfr — blind face restoration with diffusion priors
Upload a photo with faces (or pick an example), choose one or more methods and press **Restore**. Each face
is detected, aligned, restored and pasted back. The **compact** tier runs small 64-px models trained by this
project (a demonstration, fast on a CPU); the **paper** tier runs the authors' 512-px weights where they are
available. Results are PNG (lossless). Programs can call the `/restore`, `/degrade` and `/degrade_flipnet`
endpoints (“Use via API” at the bottom of the page on a wide screen; the README's “The demo and its API”).
"""


def build_demo() -> gr.Blocks:
    examples = _examples()
    ready = [m for m in METHODS if any(method_status(m, tier)[0] for tier in TIERS)]  # can put results in the gallery
    first_ready = compact_methods()[:1]
    flipnet_ok, flipnet_why = method_status("flipnet", "compact")
    with gr.Blocks(title="bfr — blind face restoration", delete_cache=(3600, 7200)) as demo:
        gr.Markdown(INTRO)
        with gr.Tabs() as tabs:
            with gr.Tab("Restore", id="restore"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=2, min_width=320) as inputs_column:
                        image = photo_input(label="Photo", height=300, elem_id="photo")
                        methods = gr.CheckboxGroup(method_choices("compact"), value=first_ready, label="Methods",
                                                   info=METHODS_INFO,
                                                   elem_id="methods", elem_classes=[CHECKED])
                        tier = gr.Radio(list(TIERS), value="compact", label="Tier", elem_id="tier",
                                        elem_classes=[CHECKED],
                                        info="compact: bundled 64-px models · paper: the authors' 512-px weights")
                        with gr.Accordion("Sampling", open=False):  # each method's own defaults until unticked
                            own_defaults = gr.Checkbox(True, label="Each method's own defaults",
                                                       info=defaults_note(), elem_id="knob-own-defaults")
                            knobs = [_knob_widget(name, own_defaults.value) for name in KNOBS]
                        with gr.Accordion("Faces", open=False):
                            aligned = gr.Checkbox(False, label="Input is an aligned face crop",
                                                  info="FFHQ-aligned, e.g. 512×512: skip detection")
                            upscale = gr.Slider(1, 4, value=1, step=0.5, label="Upscale",
                                                info="output size relative to the input", elem_classes=[CHECKED])
                            only_center = gr.Checkbox(False, label="Only the centre face")
                        with gr.Row():
                            run = gr.Button("Restore", variant="primary", elem_id="restore-button", scale=3)
                            stop = gr.Button("Stop", variant="stop", elem_id="stop-button", scale=1)
                    with gr.Column(scale=3, min_width=360):
                        message = gr.Markdown("Results appear here.", elem_id="message")
                        sliders = [gr.ImageSlider(label=f"{info.title}: before / after",
                                                  format="png", visible=name in first_ready, max_height=520,
                                                  elem_id=f"slider-{name}")
                                   for name, info in METHODS.items()]
                        gallery = gr.Gallery(label="All methods side by side", format="png",
                                             columns=max(2, min(5, 1 + len(ready))), object_fit="contain",
                                             rows=1, height="auto", elem_id="gallery")
                        faces = gr.Gallery(label="Faces: input, then each method (largest face first)",
                                           format="png", columns=2, height="auto", object_fit="contain",
                                           elem_id="faces")
                        files = gr.File(label="Download (PNG)", file_count="multiple", elem_id="files")
                        with gr.Accordion("Summary (JSON)", open=False):
                            summary_box = gr.JSON(label="Summary")
                ui_outputs = [message, *sliders, gallery, faces, files, summary_box]
                example_outputs = [message, *(s for name, s in zip(METHODS, sliders, strict=True)
                                              if name in compact_methods()), gallery, faces, files, summary_box]
                with inputs_column:  # examples under the button; they are built once the outputs exist
                    if examples["restore"]:  # on a GPU, each example's result is cached on its first click
                        gr.Examples(examples["restore"], inputs=[image], label="Examples (made by this project)",
                                    fn=restore_example if ON_GPU else None,
                                    outputs=example_outputs if ON_GPU else None, cache_examples=ON_GPU,
                                    cache_mode="lazy" if ON_GPU else None, examples_per_page=6)
                    with gr.Accordion("Methods on this machine", open=False):  # a phone scrolls past it to results
                        gr.Markdown(status_list())
                api_only = gr.Button(visible=False)  # carries the /restore endpoint: files + summary, no display

            with gr.Tab("Degradation preview", id="degrade"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=2, min_width=320):
                        clean = photo_input(label="Clean face", height=300, elem_id="clean")
                        preset = gr.Dropdown([*PRESETS, CUSTOM], value="mild", label="Preset", elem_classes=[CHECKED],
                                             info="random settings within a preset's ranges, or custom below")
                        deg_seed = gr.Number(0, precision=0, minimum=0, label="Seed", elem_classes=[CHECKED])
                        with gr.Accordion("Custom settings (moving one selects “custom”)", open=True):
                            blur = gr.Slider(0, 10, value=2, step=0.1, label="Blur σ (px)", elem_classes=[CHECKED])
                            downsample = gr.Slider(1, 16, value=4, step=0.5, label="Downsample ×",
                                                   elem_classes=[CHECKED])
                            noise = gr.Slider(0, 50, value=10, step=1, label="Noise (0–255 scale)",
                                              elem_classes=[CHECKED])
                            quality = gr.Slider(0, 100, value=60, step=1, label="JPEG quality (0 = none)",
                                                elem_classes=[CHECKED])
                        deg_run = gr.Button("Degrade", variant="primary", elem_id="degrade-button")
                        if examples["degrade"]:
                            gr.Examples(examples["degrade"], inputs=[clean],
                                        label="Clean faces (made by this project)")
                    with gr.Column(scale=3, min_width=360):
                        with gr.Row():
                            degraded = gr.Image(label="Degraded", type="filepath", format="png", height=300,
                                                interactive=False, elem_id="degraded")
                            params = gr.JSON(label="Parameters used")
                        send = gr.Button("Restore this →", elem_id="send-to-restore", interactive=False)
                        presets = gr.Gallery(label="Every preset at this seed", format="png", columns=4,
                                             object_fit="contain", rows=2, height="auto", elem_id="presets")
                        presets_table = gr.Markdown(elem_id="presets-table")
                        with gr.Column(variant="panel"):
                            gr.Markdown("**FLIPNET degradation mode**: the FLIPNET network with its roles flipped "
                                        "(the clean face is the condition) generates realistic degraded versions, "
                                        "a different one per noise seed. "
                                        + ("" if ON_GPU else "On a CPU it takes tens of seconds. ")
                                        + ("" if flipnet_ok else f"Unavailable here: {flipnet_why}."))
                            with gr.Row():
                                flip_variants = gr.Slider(1, VARIANTS_PER_REQUEST, value=4, step=1, label="Variants",
                                                          elem_classes=[CHECKED])
                                flip_aligned = gr.Checkbox(True, label="Input is an aligned face crop",
                                                           info="otherwise the largest face is aligned first")
                            with gr.Row():
                                flip_run = gr.Button("Degrade with FLIPNET", interactive=flipnet_ok,
                                                     elem_id="flipnet-button", scale=3)
                                flip_stop = gr.Button("Stop", variant="stop", elem_id="flipnet-stop", scale=1)
                            flip_gallery = gr.Gallery(label="FLIPNET degraded variants", format="png", columns=4,
                                                      object_fit="contain", rows=1, height="auto",
                                                      elem_id="flipnet-variants")
                            flip_note = gr.Markdown(label="Note", elem_id="flipnet-note")

        restore_inputs = [image, methods, tier, *knobs, aligned, upscale, only_center, own_defaults]
        shared = [k for name, k in zip(KNOBS, knobs, strict=True) if name in OWN_DEFAULT_KNOBS]
        own_defaults.change(lambda own: [gr.update(interactive=not own)] * len(shared), own_defaults, shared,
                            api_name="own_defaults", api_visibility="private")
        # The UI's own events are private: programs use /restore and /degrade.
        # Stop is armed by the click itself (unqueued), so it also ends a run still waiting in the queue.
        run.click(None, js=scroll_on_phone("message"))
        run.click(arm_restore, None, None, api_name="arm_restore", api_visibility="private", queue=False).then(
            restore_for_ui, restore_inputs, ui_outputs, api_name="restore_ui", api_visibility="private",
            concurrency_id="gpu", show_progress_on=[message]).success(  # one progress bar, where the message goes
            sliders_of_results, summary_box, sliders, api_name="sliders_of_results", api_visibility="private",
            queue=False)
        api_only.click(restore, restore_inputs, [files, summary_box], api_name="restore", concurrency_id="gpu")
        stop.click(request_stop, None, None, api_name="stop", api_visibility="private")
        # Unqueued, so a full queue never stops a tick; they say why in the methods' help line, not in a toast.
        methods.input(pick_methods, [methods, tier], methods, api_name="pick_methods", api_visibility="private",
                      queue=False, trigger_mode="always_last")
        tier.input(change_tier, [tier, methods], methods, api_name="change_tier", api_visibility="private",
                   queue=False, trigger_mode="always_last")
        for photo in (image, clean):
            photo.upload(check_upload, photo, photo, api_name="check_upload", api_visibility="private",
                         preprocess=False, show_progress="hidden")
        methods.change(show_sliders, methods, sliders, api_name="show_sliders", api_visibility="private", queue=False)

        custom_inputs = [blur, downsample, noise, quality]
        deg_run.click(degrade, [clean, preset, deg_seed, *custom_inputs], [degraded, params], api_name="degrade",
                      concurrency_limit=4).success(
            compare_presets, [clean, deg_seed, *custom_inputs], [presets, presets_table], api_name="compare_presets",
            api_visibility="private", concurrency_limit=4)
        flip_run.click(arm_flipnet, None, None, api_name="arm_flipnet", api_visibility="private", queue=False).then(
            degrade_flipnet, [clean, flip_variants, deg_seed, flip_aligned], [flip_gallery, flip_note],
            api_name="degrade_flipnet", concurrency_id="gpu", show_progress_on=[flip_gallery])
        flip_stop.click(request_stop_variants, None, None, api_name="stop_flipnet", api_visibility="private")
        for slider in custom_inputs:
            slider.input(lambda: CUSTOM, None, preset, api_name="use_custom", api_visibility="private", queue=False)
        degraded.change(lambda path: gr.update(interactive=bool(path)), degraded, send, api_name="can_send",
                        api_visibility="private", queue=False)  # nothing to send before a degradation
        deg_run.click(None, js=scroll_on_phone("degraded"))
        flip_run.click(None, js=scroll_on_phone("flipnet-variants"))
        send.click(None, js="() => window.scrollTo({top: 0, behavior: 'smooth'})")  # the photo, on the Restore tab
        send.click(send_to_restore, degraded, [image, aligned, tabs], api_name="send_to_restore",
                   api_visibility="private", queue=False)
    demo.queue(default_concurrency_limit=1, max_size=16)
    return demo


demo = build_demo()

if __name__ == "__main__":
    demo.launch(**LAUNCH)
