"""The thin inference API that the command line and app.py call: load a method once, restore many.

    >>> import bfr
    >>> restorer = bfr.load("difface")            # compact tier, bundled weights, CPU or CUDA
    >>> result = restorer.restore("photo.jpg")    # every face detected, restored, pasted back
    >>> result.image                               # float32 HWC RGB in [0, 1]
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bfr.errors import InputError, NoFaceError, WeightsUnavailableError, check_seed
from bfr.faces.detect import FaceDetector, get_detector, stands_in
from bfr.faces.paste import FaceParser
from bfr.faces.pipeline import FacePipeline, FaceRestoreResult, check_aligned_shape, keep_gray
from bfr.faces.templates import template as template_points
from bfr.imageio import from_tensor, load_image, to_tensor
from bfr.methods.base import Progress, pick_device
from bfr.methods.difface import COMPACT_START_STEP, DifFace
from bfr.methods.flipnet import FLIPNET, adapters_metadata, attach_adapters, paper_networks
from bfr.methods.idm import COMPACT_STEPS, IDM, paper_net, prediction_of
from bfr.methods.unsupervised import Unsupervised
from bfr.nets import SwinIR, UNetModel, build_net
from bfr.nets.configs import DIFFACE_SWINIR_512, DIFFACE_UNET_512, SD_VAE_SCALING
from bfr.weights import available, load_into, load_state_dict, read_metadata, resolve, resolve_all


@dataclass(frozen=True)
class MethodInfo:
    """What a method is and which weights each tier needs (catalog names)."""

    name: str
    title: str
    paper: str
    tiers: dict[str, tuple[str, ...]]
    knobs: dict = field(default_factory=dict)
    tier_knobs: dict[str, dict] = field(default_factory=dict)  # a tier's own defaults, over ``knobs``

    def defaults(self, tier: str) -> dict:
        """The sampling knobs this method runs with on ``tier`` when none are given."""
        return {**self.knobs, **self.tier_knobs.get(tier, {})}


METHODS: dict[str, MethodInfo] = {
    "difface": MethodInfo(
        "difface", "DifFace", "Yue & Loy, Blind Face Restoration with Diffused Error Contraction (TPAMI 2024)",
        {"compact": ("prior64", "swinir64"), "paper": ("difface_unet_512", "difface_swinir_512")},
        knobs=DifFace.defaults, tier_knobs={"compact": {"start_step": COMPACT_START_STEP}},
    ),
    "unsupervised": MethodInfo(
        "unsupervised", "Unsupervised BFR (Kuai et al.)",
        "Kuai et al., Towards Unsupervised Blind Face Restoration using Diffusion Prior (WACV 2025)",
        {"compact": ("swinir64_adapted",), "paper": ("swinir512_adapted",)},
        knobs=Unsupervised.defaults,
    ),
    "idm": MethodInfo(
        "idm", "IDM", "Zhao et al., Towards Authentic Face Restoration with Iterative Diffusion Models (ICCV 2023)",
        {"compact": ("idm64",), "paper": ("idm_unet_512",)}, knobs=IDM.defaults,
        tier_knobs={"compact": {"steps": COMPACT_STEPS}},
    ),
    "flipnet": MethodInfo(
        "flipnet", "FLIPNET", "Miao et al., Unlocking the Potential of Diffusion Priors in BFR (ICCV 2025)",
        {"compact": ("prior64", "flipnet64"), "paper": ("flipnet_sd21", "sd21_unet", "sd21_vae")},
        knobs=FLIPNET.defaults,
    ),
}


def method_status(name: str, tier: str) -> tuple[bool, str]:
    """Whether ``name`` can run on ``tier`` here, and why not (without downloading)."""
    info = _info(name)
    if tier not in info.tiers:
        return False, _no_tier(info, tier)
    for weights in info.tiers[tier]:
        ok, why = available(weights)
        if not ok:
            return False, why
    return True, "weights " + ", ".join(info.tiers[tier]) + " available"


def _no_tier(info: MethodInfo, tier: str) -> str:
    return f"{info.title} has no {tier!r} tier; choose one of: {', '.join(info.tiers)}"


def _info(name: str) -> MethodInfo:
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


NET_KINDS = {"prior64": "prior", "swinir64": "swinir", "swinir64_adapted": "swinir", "idm64": "idm",
             "swinir512_adapted": "swinir"}  # files bfr writes


def load_net(weights: str, path: str | Path | None = None) -> torch.nn.Module:
    """A bfr-written network from its safetensors (config in the metadata), in float32."""
    if weights not in NET_KINDS:
        raise InputError(f"load_net loads the networks bfr writes ({', '.join(NET_KINDS)}), not {weights!r}")
    file = resolve(weights, path)
    meta = read_metadata(file)
    if "kind" not in meta or "config" not in meta:
        raise WeightsUnavailableError(f"{file} has no bfr metadata (kind/config); was it written by bfr?")
    if meta["kind"] != (expected := NET_KINDS[weights]):
        raise InputError(f"{Path(file).name} holds a {meta['kind']} network, but {weights} must be a {expected} "
                         "network")
    net = build_net(meta["kind"], json.loads(meta["config"]))
    load_into(net, {k: v.float() for k, v in load_state_dict(file).items()})
    return net


def load(method: str = "difface", tier: str = "compact", device: str | None = None,
         weights: dict[str, str] | None = None, detector: str = "auto", half_precision: bool = True) -> Restorer:
    """Load a method's networks once; ``weights`` maps catalog names to local files.

    ``half_precision``: on CUDA the networks run under bf16 autocast (fp16 where bf16 is missing); False runs
    them in float32, as the authors sample. CPU is always float32."""
    info = _info(method)
    if tier not in info.tiers:
        raise InputError(_no_tier(info, tier))
    weights = dict(weights or {})
    if unused := sorted(set(weights) - set(info.tiers[tier])):  # a misspelt name would load the default silently
        raise InputError(f"weights {', '.join(map(repr, unused))}: {info.title} on the {tier} tier uses "
                         f"{', '.join(info.tiers[tier])}")
    dev = pick_device(device)
    # Every missing file named at once, before any network is built (a 512-px one takes seconds). FLIPNET's and
    # IDM's paper tiers look for their unpublished weights themselves, with their own advice.
    files = resolve_all({name: weights.get(name) for name in info.tiers[tier]
                         if not (tier == "paper" and method in ("flipnet", "idm"))})
    if method == "difface":
        if tier == "compact":
            prior, backbone = load_net("prior64", files["prior64"]), load_net("swinir64", files["swinir64"])
            model = DifFace(prior, backbone, resolution=prior.image_size, framing="lfw", tier=tier, device=dev)
        else:
            prior, backbone = UNetModel(**DIFFACE_UNET_512), SwinIR(**DIFFACE_SWINIR_512)
            load_into(prior, load_state_dict(files["difface_unet_512"]))
            load_into(backbone, load_state_dict(files["difface_swinir_512"]))
            model = DifFace(prior, backbone, resolution=512, framing="ffhq", tier=tier, device=dev)
    elif method == "flipnet":
        if tier == "compact":
            prior_file, adapters = files["prior64"], files["flipnet64"]
            net = attach_adapters(load_net("prior64", prior_file), adapters, prior_file)
            model = FLIPNET(net, resolution=adapters_metadata(adapters)["resolution"], framing="lfw", tier=tier,
                            device=dev)
        else:
            net, vae = paper_networks(weights.get("flipnet_sd21"), weights.get("sd21_unet"), weights.get("sd21_vae"))
            model = FLIPNET(net, resolution=512, framing="ffhq", tier=tier, device=dev, vae=vae,
                            vae_scale=SD_VAE_SCALING, schedule="scaled_linear", learn_sigma=False)
    elif method == "idm":
        if tier == "compact":
            file = files["idm64"]
            net = load_net("idm64", file)
            model = IDM(net, resolution=net.image_size, framing="lfw", tier=tier, device=dev,
                        prediction=prediction_of(file))
        else:
            net, prediction = paper_net(weights.get("idm_unet_512"))
            model = IDM(net, resolution=512, framing="ffhq", tier=tier, device=dev, prediction=prediction)
    elif method == "unsupervised":
        # One forward pass of a restorer adapted by `python -m bfr adapt` (the prior is needed only there). On the
        # paper tier too: DT-BFR's SwinIR-GAN before adaptation is the method's starting point, not the method.
        name = "swinir64_adapted" if tier == "compact" else "swinir512_adapted"
        file = files[name]
        if Path(file).suffix != ".safetensors":
            raise InputError(f"{name} must be a restorer adapted by `python -m bfr adapt` (the .safetensors it "
                             f"writes), not {Path(file).name}: a published restorer is where the adaptation "
                             "starts, not Kuai et al.'s method")
        meta = read_metadata(file)
        if meta.get("method") != json.dumps("unsupervised") or "tier" not in meta:
            raise InputError(f"{Path(file).name} is not a restorer adapted by `python -m bfr adapt` (its metadata "
                             "does not say so): an un-adapted restorer is where the method starts, not the method")
        made_on = json.loads(meta["tier"])
        if made_on != tier:
            raise InputError(f"{Path(file).name} was adapted on the {made_on} tier, not the {tier} tier")
        resolution = int(json.loads(meta.get("resolution", "64" if tier == "compact" else "512")))
        model = Unsupervised(load_net(name, file), resolution=resolution,
                             framing="lfw" if tier == "compact" else "ffhq", tier=tier, device=dev)
    model.half_precision = half_precision
    return Restorer(model, detector=detector)


@dataclass
class RestoreResult:
    """A restored image with its faces (input crop, restored crop), and what happened."""

    image: np.ndarray
    faces: list[tuple[np.ndarray, np.ndarray]]
    detector: str
    message: str
    seconds: float
    method: str
    tier: str


BATCH_PIXELS = 4 * 512 * 512  # faces restored at once: 4 at 512 px (the paper tier on a GPU), 256 at 64 px


class Restorer:
    """A method plus the face pipeline around it: whole photos in, restored photos out.

    The face detector and parser (RetinaFace and ParseNet, ~100 MB networks, where their weights
    are here or can be fetched) load on the first photo that needs them and serve every later one.
    Calls on one Restorer from several threads run one at a time (OpenCV's cascades are not
    thread-safe); load one Restorer per thread to run them side by side.
    """

    def __init__(self, model, detector: str = "auto"):
        self.model = model
        self.detector = detector
        self._detectors: dict[float | None, FaceDetector] = {}  # per min_face_size (the detector filters by it)
        self._parser: FaceParser | None = None
        self._last_pipeline: FacePipeline | None = None
        self._lock = threading.RLock()

    def face_pipeline(self, *, aligned: bool = False, upscale: float = 1, only_center_face: bool = False,
                      min_face_size: float | None = None) -> FacePipeline:
        """The face pipeline for these options, with this restorer's detector and face parser."""
        with self._lock:
            if self._parser is None and self._last_pipeline is not None:
                self._parser = self._last_pipeline.loaded_parser
            detector: str | FaceDetector = self.detector
            if not aligned:  # aligned crops never need a detector: do not load one for them
                cached = self._detectors.get(min_face_size)
                if cached is None or (self.detector == "auto" and stands_in(cached)):
                    self._detectors[min_face_size] = get_detector(self.detector, min_eye_distance=min_face_size)
                detector = self._detectors[min_face_size]
            pipeline = FacePipeline(detector=detector, template=self.model.framing, crop_size=self.model.resolution,
                                    upscale=upscale, only_center_face=only_center_face, min_face_size=min_face_size,
                                    use_parse=self._parser or "auto")
            self._last_pipeline = pipeline  # its parser, once a photo has loaded one, serves the next pipelines
            return pipeline

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def framing(self) -> str:
        """How the model's face crops are framed: "lfw" (compact tier) or "ffhq" (paper tier)."""
        return self.model.framing

    def check_options(self, options: dict) -> None:
        """A misspelt keyword is named with the ones this method takes, before any photo is read."""
        known = [*self.model.defaults, *(() if "seed" in self.model.defaults else ("seed",))]
        if unknown := sorted(set(options) - set(known)):
            takes = ", ".join(known) if self.model.defaults else "seed (unused: one forward pass)"
            raise InputError(f"{self.model.title} has no option {', '.join(map(repr, unknown))}: its sampling options "
                             f"are {takes}; restore also takes aligned, framing, upscale, only_center_face, "
                             "min_face_size, progress")

    def restore_crops(self, crops: list[np.ndarray], progress: Progress | None = None, **options) -> list[np.ndarray]:
        """Restore aligned crops (the model's framing) in batches of at most ``BATCH_PIXELS`` pixels (4 faces at
        512 px, 256 at 64 px): a group photo must not take all the memory at once. Batch k samples with seed
        + k; progress counts the steps of all batches."""
        self.check_options(options)
        size = max(1, BATCH_PIXELS // self.model.resolution ** 2)
        chunks = [crops[i:i + size] for i in range(0, len(crops), size)]
        seed = options.pop("seed", self.model.defaults.get("seed", 0))
        seed = None if seed is None else check_seed(seed)  # batch k samples with seed + k
        out = []
        for k, chunk in enumerate(chunks):
            def report(done: int, total: int, k: int = k) -> None:
                if progress is not None:
                    progress(k * total + done, len(chunks) * total)

            batch = torch.cat([to_tensor(c) for c in chunk])
            out += self.model.restore(batch, progress=report, seed=None if seed is None else seed + k, **options)
        return [from_tensor(o[None]) for o in out]

    def degrade(self, image, *, variants: int = 4, aligned: bool = True, progress: Progress | None = None,
                **options) -> list[np.ndarray]:
        """FLIPNET's degradation mode: ``variants`` realistic degraded versions of a clean face.

        ``aligned``: the image is a face crop in the model's framing (``self.framing``; compact: "lfw", paper:
        "ffhq"), degraded at its own size; otherwise the largest detected face is aligned first and its crop is
        degraded. The variants keep that framing: restore one with ``restore(v, aligned=True,
        framing=self.framing)``.
        """
        if not hasattr(self.model, "degrade"):
            raise InputError(f"{self.model.title} has no degradation mode (only FLIPNET does)")
        img = load_image(image)
        if options.get("seed") is not None:
            options["seed"] = check_seed(options["seed"])
        if aligned:
            check_aligned_shape(*img.shape[:2], otherwise="pass aligned=False (command line: --photo) to degrade "
                                                          "its largest face")
        with self._lock:
            if not aligned:
                pipeline = self.face_pipeline()
                found = pipeline.crops(img)
                if not found:
                    raise NoFaceError(f"no face found by the {pipeline.detector.name} detector; pass an aligned face "
                                      "crop")
                img = max(found, key=lambda f: 0.0 if f.face is None else f.face.eye_distance).crop
            out = self.model.degrade(to_tensor(img), variants=variants, progress=progress, **options)
        return keep_gray(img, [from_tensor(v[None]) for v in out[0]])  # a gray face gives gray variants, as restore

    def restore(self, image, *, aligned: bool = False, framing: str = "ffhq", upscale: float = 1,
                only_center_face: bool = False, min_face_size: float | None = None, progress: Progress | None = None,
                **options) -> RestoreResult:
        """Restore every face in ``image`` (path, bytes, PIL, or array).

        ``aligned``: the image is one face crop, framed as ``framing`` says: "ffhq" (the usual aligned BFR
        input, e.g. 512×512 FFHQ crops) or "lfw" (the compact models' own crops, e.g. ``degrade``'s
        variants and ``bfr demo-set``'s faces); no detection.
        """
        if framing != "ffhq" and not aligned:
            raise InputError(f"framing={framing!r} says how an aligned crop is framed: pass aligned=True with it "
                             "(photos are aligned by the face pipeline)")
        self.check_options(options)
        img = load_image(image)
        with self._lock:
            pipeline = self.face_pipeline(aligned=aligned, upscale=upscale, only_center_face=only_center_face,
                                          min_face_size=min_face_size)
            t0 = time.perf_counter()
            result: FaceRestoreResult = pipeline.restore_faces(
                img, lambda crops: self.restore_crops(crops, progress=progress, **options), aligned=aligned,
                framing=framing)
        note = self._enlargement_note(result, upscale, framing if aligned else None)
        return RestoreResult(
            image=result.output, faces=[(f.input_crop, f.restored_crop) for f in result.faces],
            detector=result.detector, message=result.message + note,
            seconds=time.perf_counter() - t0, method=self.model.name, tier=self.model.tier,
        )

    def _enlargement_note(self, result: FaceRestoreResult, upscale: float, aligned_framing: str | None) -> str:
        """A sentence when faces are pasted back much larger than the model restores them (soft next to the photo).

        The enlargement compares eye distances: a detected face's, or the template's at an aligned crop's size."""
        if not result.faces:
            return ""
        if aligned_framing is not None:
            side = max(result.output.shape[:2]) / upscale  # the crop as given
            t_in = template_points(aligned_framing, round(side))
            eyes = [float(np.linalg.norm(t_in[1] - t_in[0]))]
        else:
            eyes = [f.face.eye_distance for f in result.faces if f.face is not None]
        if not eyes:
            return ""
        t = template_points(self.model.framing, self.model.resolution)
        zoom = max(eyes) * upscale / float(np.linalg.norm(t[1] - t[0]))
        if zoom <= 2:
            return ""
        hint = "; the paper tier restores at 512 px" if self.model.tier == "compact" else ""
        return (f" Faces are restored at {self.model.resolution} px and enlarged up to ×{zoom:.1f} to fit back, so "
                f"they look softer than the photo around them{hint}.")
