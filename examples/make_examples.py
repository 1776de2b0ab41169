"""Make the demo's example inputs from the compact face prior: no photo of a real person is shipped.

    python examples/make_examples.py            # writes examples/*.png and examples/examples.json

Each example face is drawn by the bundled 64-px prior (``prior64``, a recorded seed) from the
average of the LFW train faces (nobody's photo) diffused to a started step N and sampled back,
as in SDEdit: the average fixes the framing and natural colours, the prior draws a new face
(a young prior's samples from pure noise come out in random tints). It is upsampled to 256 px,
then degraded with a recorded preset and seed. The
"group photo" places three such faces on a plain background and degrades the whole picture,
for the detect → restore → paste-back pipeline. A degradation seed is only kept if the face
detector still finds the face(s) afterwards (the first such seed from the one given is used,
and recorded). Re-run after the compact weights change; the output follows the weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bfr.api import load_net  # noqa: E402
from bfr.degradations import degrade  # noqa: E402
from bfr.diffusion import GaussianDiffusion, sample  # noqa: E402
from bfr.faces import FacePipeline  # noqa: E402
from bfr.imageio import resize, save_image  # noqa: E402
from bfr.training.data import load_faces, split_files  # noqa: E402
from bfr.weights import resolve  # noqa: E402

HERE = Path(__file__).resolve().parent
SIZE = 256  # example faces are shown at this size (the prior samples 64 px)
# name, prior seed, degradation preset, first degradation seed
FACES = [("face_1", 1, "gfpgan", 1), ("face_2", 2, "difface", 2), ("face_3", 9, "camera", 3)]
GROUP = dict(name="group", prior_seeds=(4, 5, 6), face_size=200, gap=40, preset="gfpgan", seed=7,
             background=(0.80, 0.83, 0.86))


def mean_face(size: int) -> torch.Tensor:
    """The average of the LFW train faces at ``size``, (1,3,H,W) in [-1, 1]."""
    return load_faces(split_files("train"), size).float().mean(0, keepdim=True) / 127.5 - 1


@torch.no_grad()
def sample_face(prior: torch.nn.Module, start: torch.Tensor, seed: int, steps: int, start_step: int,
                eta: float) -> np.ndarray:
    """One face: ``start`` diffused to ``start_step`` of the ddim{steps} chain and sampled back
    (learned variance, DDIM η); float32 HWC in [0, 1] at the prior's size."""
    diffusion = GaussianDiffusion.create(1000, "linear", respacing=f"ddim{steps}", learn_sigma=True)
    g = torch.Generator().manual_seed(seed)
    x = diffusion.q_sample(start, start_step, generator=g)
    x = sample(diffusion, prior, x, start=start_step, sampler="ddim", eta=eta, generator=g)
    return (x[0] * 0.5 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy().astype(np.float32)


def group_photo(faces: list[np.ndarray], face_size: int, gap: int, background: tuple[float, float, float]
                ) -> np.ndarray:
    """Faces side by side on a plain background, each blended in through a soft oval."""
    h, w = face_size + 2 * gap, len(faces) * (face_size + gap) + gap
    canvas = np.empty((h, w, 3), np.float32)
    canvas[:] = background
    yy, xx = np.mgrid[0:face_size, 0:face_size].astype(np.float32) / (face_size - 1) * 2 - 1
    r = np.sqrt((xx / 0.92) ** 2 + (yy / 0.98) ** 2)
    alpha = np.clip((1.0 - r) / 0.2, 0.0, 1.0)[..., None]  # 1 inside the oval, feathered edge
    for i, face in enumerate(faces):
        x0 = gap + i * (face_size + gap)
        tile = canvas[gap:gap + face_size, x0:x0 + face_size]
        canvas[gap:gap + face_size, x0:x0 + face_size] = alpha * resize(face, face_size) + (1 - alpha) * tile
    return canvas


def degrade_until_found(img: np.ndarray, preset: str, seed: int, resolution: int, faces: int,
                        detector: FacePipeline, tries: int = 50) -> tuple[np.ndarray, object, int, int]:
    """The first seed from ``seed`` whose degraded image still shows ``faces`` faces to the detector.

    Returns (degraded image, params, seed, faces found). When no seed in ``tries`` gets there
    (weak weights make odd faces), the seed with the most faces found is used, with a warning.
    """
    best = None
    for s in range(seed, seed + tries):
        lq, params = degrade(img, preset, seed=s, resolution=resolution)
        found = len(detector.detect(lq))
        if found >= faces:
            return lq, params, s, found
        if best is None or found > best[3]:
            best = (lq, params, s, found)
    print(f"warning: no seed in [{seed}, {seed + tries}) leaves {faces} detectable face(s) with preset {preset}; "
          f"using seed {best[2]} ({best[3]} found)", file=sys.stderr)
    return best


def describe(params) -> dict:
    return {"pipeline": type(params).__name__, **dataclasses.asdict(params)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE, help="output folder (default: examples/)")
    p.add_argument("--steps", type=int, default=250, help="length of the DDIM chain the faces are sampled on")
    p.add_argument("--start-step", type=int, default=150, help="where on that chain sampling starts from the "
                   "diffused average face (higher: more varied faces, less of the average's framing)")
    p.add_argument("--eta", type=float, default=1.0, help="DDIM η for sampling the faces")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)

    weights = resolve("prior64")
    prior = load_net("prior64").eval()
    start = mean_face(prior.image_size)
    detector = FacePipeline(detector="auto", use_parse=False)
    record = {
        "about": "Synthetic inputs for the demo: faces the compact prior draws from the average LFW train face, "
                 "then degraded. Re-make with `python examples/make_examples.py`.",
        "prior": {"weights": weights.name, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()[:16],
                  "start": "the average of the LFW train faces, diffused to start_step",
                  "sampler": "ddim", "steps": args.steps, "start_step": args.start_step, "eta": args.eta,
                  "size": prior.image_size},
        "size": SIZE,
        "detector": detector.detector.name,
        "restore": [],
        "degrade": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)

    for name, prior_seed, preset, seed in FACES:
        clean = resize(sample_face(prior, start, prior_seed, args.steps, args.start_step, args.eta), SIZE)
        lq, params, used, found = degrade_until_found(clean, preset, seed, SIZE, 1, detector)
        save_image(clean, args.out / f"{name}_clean.png")
        save_image(lq, args.out / f"{name}_lq.png")
        record["degrade"].append({"file": f"{name}_clean.png", "prior_seed": prior_seed})
        record["restore"].append({"file": f"{name}_lq.png", "clean": f"{name}_clean.png", "prior_seed": prior_seed,
                                  "preset": preset, "seed": used, "resolution": SIZE, "faces_found": found,
                                  "params": describe(params)})
        print(f"{name}: prior seed {prior_seed}, {preset} seed {used}")

    g = GROUP
    faces = [sample_face(prior, start, s, args.steps, args.start_step, args.eta) for s in g["prior_seeds"]]
    clean = group_photo(faces, g["face_size"], g["gap"], g["background"])
    lq, params, used, found = degrade_until_found(clean, g["preset"], g["seed"], g["face_size"], len(faces),
                                                  detector)
    save_image(clean, args.out / f"{g['name']}_clean.png")
    save_image(lq, args.out / f"{g['name']}_lq.png")
    record["restore"].append({"file": f"{g['name']}_lq.png", "clean": f"{g['name']}_clean.png",
                              "prior_seeds": list(g["prior_seeds"]), "face_size": g["face_size"],
                              "background": list(g["background"]), "preset": g["preset"], "seed": used,
                              "resolution": g["face_size"], "faces_found": found, "params": describe(params)})
    print(f"{g['name']}: prior seeds {g['prior_seeds']}, {g['preset']} seed {used}")

    (args.out / "examples.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out / 'examples.json'}")


if __name__ == "__main__":
    main()
