"""`python -m bfr`: list methods, synthesize degradations, restore photos, train the compact models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bfr.errors import BfrError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def _inputs(paths: list[str]) -> list[Path]:
    """Expand folders into their images; keep files as given (a bad one fails with a clear message)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    if not out:
        raise BfrError("no input images found")
    return out


def cmd_methods(args: argparse.Namespace) -> None:
    from bfr.api import METHODS, method_status

    for info in METHODS.values():
        print(f"{info.name:13s} {info.title} — {info.paper}")
        for tier in info.tiers:
            ok, why = method_status(info.name, tier)
            print(f"    {tier:8s} {'ready' if ok else 'unavailable'}: {why}")


def cmd_degrade(args: argparse.Namespace) -> None:
    from bfr.degradations import degrade, preset
    from bfr.imageio import load_image, save_image

    out_dir = Path(args.output)
    for path in _inputs(args.inputs):
        img = load_image(path)
        for k in range(args.variants):
            seed = None if args.seed is None else args.seed + k
            lq, params = degrade(img, preset(args.preset, args.resolution or max(img.shape[:2])), seed=seed)
            name = f"{path.stem}_{args.preset}" + (f"_{k}" if args.variants > 1 else "") + ".png"
            save_image(lq, out_dir / name)
            print(f"{out_dir / name}: {params}")


def cmd_restore(args: argparse.Namespace) -> None:
    from tqdm.auto import tqdm

    import bfr
    from bfr.imageio import save_image

    options = {k: v for k, v in dict(steps=args.steps, start_step=args.start_step, eta=args.eta,
                                      seed=args.seed).items() if v is not None}
    weights = dict(w.split("=", 1) for w in args.weights or [])
    restorer = bfr.load(args.method, tier=args.tier, device=args.device, weights=weights, detector=args.detector)
    out_dir = Path(args.output)
    for path in _inputs(args.inputs):
        bar = tqdm(desc=path.name, unit="step", leave=False)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        result = restorer.restore(path, aligned=args.aligned, upscale=args.upscale,
                                  only_center_face=args.only_center_face, progress=progress, **options)
        bar.close()
        target = out_dir / f"{path.stem}_{args.method}.png"
        save_image(result.image, target)
        print(f"{target}: {result.message} ({result.seconds:.1f} s, detector: {result.detector})")
        if args.save_faces:
            for i, (before, after) in enumerate(result.faces):
                save_image(before, out_dir / "faces" / f"{path.stem}_{i:02d}_input.png")
                save_image(after, out_dir / "faces" / f"{path.stem}_{i:02d}_{args.method}.png")


def cmd_train(args: argparse.Namespace) -> None:
    if args.what == "prior":
        from bfr.training.prior import PriorConfig, train_prior

        cfg = PriorConfig(out_dir=args.output or "runs/prior64", batch_size=args.batch_size, max_steps=args.steps,
                          max_minutes=args.minutes, init_from=args.init_from, mixed_precision=args.precision)
        train_prior(cfg)
    elif args.what == "backbone":
        from bfr.training.backbone import BackboneConfig, train_backbone

        cfg = BackboneConfig(out_dir=args.output or "runs/swinir64", batch_size=args.batch_size,
                             max_steps=args.steps, max_minutes=args.minutes, init_from=args.init_from,
                             mixed_precision=args.precision)
        train_backbone(cfg)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bfr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("methods", help="list methods and tiers, and whether their weights are here")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("degrade", help="synthesize degraded versions of clean faces")
    p.add_argument("inputs", nargs="+", help="images or folders")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--preset", default="difface", help="difface | gfpgan | mild | camera")
    p.add_argument("--resolution", type=int, default=None,
                   help="face size the preset's ranges are scaled to (default: the image size)")
    p.add_argument("--variants", type=int, default=1, help="degraded variants per image")
    p.add_argument("--seed", type=int, default=0, help="seed of the first variant (the k-th uses seed+k)")
    p.set_defaults(func=cmd_degrade)

    p = sub.add_parser("restore", help="restore every face in photos (or aligned face crops)")
    p.add_argument("inputs", nargs="+", help="images or folders")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--method", default="difface", help="difface (others as they land: see `methods`)")
    p.add_argument("--tier", default="compact", choices=["compact", "paper"])
    p.add_argument("--aligned", action="store_true", help="inputs are FFHQ-aligned face crops: skip detection")
    p.add_argument("--only-center-face", action="store_true", help="restore only the face nearest the centre")
    p.add_argument("--upscale", type=float, default=1, help="output scale of the whole image (1, 2, 4)")
    p.add_argument("--steps", type=int, default=None, help="DDIM chain length (DifFace default 250)")
    p.add_argument("--start-step", type=int, default=None, help="DifFace's started step N (default 100)")
    p.add_argument("--eta", type=float, default=None, help="DDIM η in [0, 1] (DifFace default 0.5)")
    p.add_argument("--seed", type=int, default=None, help="noise seed (default 0)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when present)")
    p.add_argument("--detector", default="auto", choices=["auto", "retinaface", "haar"])
    p.add_argument("--weights", action="append", metavar="NAME=PATH",
                   help="use a local weights file for a catalog entry, e.g. difface_unet_512=/data/x.pth")
    p.add_argument("--save-faces", action="store_true", help="also write per-face input/restored crops")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("train", help="train a compact-tier model on ../shared/data (LFW train split)")
    p.add_argument("what", choices=["prior", "backbone"])
    p.add_argument("-o", "--output", default=None, help="run folder (resumes if it holds a state)")
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--minutes", type=float, default=None, help="stop (and save) after this many minutes")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--init-from", default=None, help="start from these inference weights (e.g. the bundled ones)")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "no"])
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (BfrError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
