"""`python -m bfr`: list methods, synthesize degradations, restore photos, train the compact models."""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from bfr.errors import MAX_SEED, BfrError, InputError, check_seed
from bfr.paths import IMAGE_SUFFIXES

PRESET_HELP = "difface | gfpgan | mild | camera | camera-lowres"  # written out: importing the presets takes seconds


def _inputs(paths: list[str]) -> list[Path]:
    """Expand folders into their images; keep files as given (a bad one fails with a clear message)."""
    out: list[Path] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES) if p.is_dir() else [p]
        for q in found:  # each file once, however it was named
            if q.resolve() not in seen:
                seen.add(q.resolve())
                out.append(q)
    if not out:
        raise BfrError(f"no input images in {', '.join(paths)} (images end in {', '.join(sorted(IMAGE_SUFFIXES))})")
    return out


def _names(paths: list[Path]) -> list[str]:
    """Output names, one per input: its stem, with the extension (then a number) where stems collide,
    so that p.png and p.jpg do not overwrite each other's results."""
    counts = Counter(p.stem for p in paths)
    names: list[str] = []
    for p in paths:
        base = p.stem if counts[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}"
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


_MADE: list[Path] = []  # folders this command made, outermost first: removed again if it fails and they are empty


def _output_dir(path: str) -> Path:
    """The output folder, made before any work: a path that is a file or cannot be made fails at once."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise BfrError(f"output {out} is a file, not a folder")
    new = [d for d in (*reversed(out.parents), out) if not d.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BfrError(f"cannot make the output folder {out}: {e.strerror or e}") from e
    _MADE.extend(new)
    if not os.access(out, os.W_OK | os.X_OK):  # found now, not after the models have loaded and run
        raise BfrError(f"cannot write into the output folder {out}: permission denied")
    return out


def _remove_made() -> None:
    """A failed command leaves no empty folders behind (what it wrote before failing stays)."""
    for d in reversed(_MADE):
        try:
            d.rmdir()  # only if empty
        except OSError:
            pass
    _MADE.clear()


def _weights(items: list[str] | None, method: str, tier: str) -> dict[str, str]:
    """--weights NAME=PATH items (bfr.load refuses a name the method does not use on this tier)."""
    from bfr.api import METHODS

    info = METHODS.get(method)
    used = info.tiers.get(tier, ()) if info else ()
    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not (sep and name and path):
            example = f"{used[0]}=/path/to/file" if used else "NAME=/path/to/file"
            raise BfrError(f"--weights takes NAME=PATH (e.g. {example}), got {item!r}")
        out[name] = path
    return out


def _each(paths: list[Path], work: Callable[[Path, str], None]) -> None:
    """Run ``work(path, name)`` on every input; a bad one is reported and skipped, and the run then fails."""
    failed = []
    for path, name in zip(paths, _names(paths), strict=True):
        try:
            work(path, name)
        except (BfrError, FileNotFoundError) as e:
            if len(paths) == 1:
                raise
            print(f"error: {e}", file=sys.stderr)
            failed.append(path.name)
    if failed:
        raise BfrError(f"{len(failed)} of {len(paths)} inputs failed ({', '.join(failed)}); the others were written")


def cmd_methods(args: argparse.Namespace) -> None:
    from bfr.api import METHODS, method_status
    from bfr.faces.detect import facexlib_status
    from bfr.metrics import torchvision_status
    from bfr.weights import CATALOG, FACEXLIB_NETWORKS, TORCHVISION_NETWORKS

    for info in METHODS.values():
        print(f"{info.name:13s} {info.title} — {info.paper}")
        for tier in info.tiers:
            ok, why = method_status(info.name, tier)
            defaults = ", ".join(f"{k}={v}" for k, v in info.defaults(tier).items())
            extra = f" [defaults: {defaults}]" if defaults else ""
            print(f"    {tier:8s} {'ready' if ok else 'unavailable'}: {why}{extra}")
            for name in info.tiers[tier]:  # what each file is and the terms it comes under
                spec = CATALOG[name]
                print(f"             {name}: {spec.description} License: {spec.license}.")
    print("face pipeline, metrics and losses (facexlib's and torchvision's networks, optional: bfr does without)")
    for name in FACEXLIB_NETWORKS + TORCHVISION_NETWORKS:
        spec = CATALOG[name]
        ok, how = facexlib_status(spec.filename) if name in FACEXLIB_NETWORKS else torchvision_status(name)
        print(f"    {name}: {'ready' if ok else 'unavailable'}: {how}")
        print(f"             {spec.description} License: {spec.license}.")


def cmd_degrade(args: argparse.Namespace) -> None:
    from bfr.degradations import degrade, describe, preset
    from bfr.imageio import load_image, save_image

    if args.method not in ("synthetic", "flipnet"):
        raise BfrError(f"unknown degradation method {args.method!r}; use synthetic or flipnet")
    if args.variants < 1:
        raise BfrError(f"--variants must be at least 1, got {args.variants}")
    if args.method == "synthetic" and args.seed + args.variants - 1 > MAX_SEED:  # variant k uses seed + k
        raise BfrError(f"--seed {args.seed} leaves no room for {args.variants} variants (seeds end at {MAX_SEED})")
    if args.resolution is not None and args.resolution < 16:
        raise BfrError(f"--resolution is a face size in pixels, at least 16; got {args.resolution}")
    # options of the other method are refused, not ignored
    given = {"--preset": args.preset, "--resolution": args.resolution} if args.method == "flipnet" else {
        "--tier": args.tier, "--device": args.device, "--weights": args.weights,
        "--no-color-fix": args.no_color_fix or None, "--fp32": args.fp32 or None, "--photo": args.photo or None}
    for flag, value in given.items():
        if value is not None:
            other = "synthetic" if args.method == "flipnet" else "flipnet"
            raise BfrError(f"{flag} applies to --method {other} only, not {args.method}")
    if args.method == "synthetic":
        args.preset = args.preset or "difface"
        preset(args.preset, 512)  # an unknown preset fails here, before any output
    paths = _inputs(args.inputs)
    out_dir = _output_dir(args.output)
    if args.method == "flipnet":
        import bfr

        args.tier = args.tier or "compact"
        restorer = bfr.load("flipnet", tier=args.tier, device=args.device,
                            weights=_weights(args.weights, "flipnet", args.tier), half_precision=not args.fp32)

        def work(path: Path, stem: str) -> None:
            variants = restorer.degrade(path, variants=args.variants, seed=args.seed, aligned=not args.photo,
                                        color_fix=not args.no_color_fix)
            for k, lq in enumerate(variants):
                name = f"{stem}_flipnet" + (f"_{k}" if args.variants > 1 else "") + ".png"
                save_image(lq, out_dir / name)
                print(f"{out_dir / name}: FLIPNET degradation mode, seed {args.seed}, variant {k} "
                      f"({restorer.framing}-framed: `restore --aligned --framing {restorer.framing}` takes it)")
    else:
        def work(path: Path, stem: str) -> None:
            img = load_image(path)
            for k in range(args.variants):
                seed = None if args.seed is None else args.seed + k
                lq, params = degrade(img, preset(args.preset, args.resolution or max(img.shape[:2])), seed=seed)
                name = f"{stem}_{args.preset}" + (f"_{k}" if args.variants > 1 else "") + ".png"
                save_image(lq, out_dir / name)
                print(f"{out_dir / name}: {describe(params)}")
    _each(paths, work)


def _drop_stale_faces(folder: Path, prefix: str, kept: int) -> None:
    """Remove the crop pairs ``{prefix}_NN_input/restored.png`` numbered from ``kept`` on: an earlier run of the same
    photo and method that found more faces left them, and they would pass for this run's. Nothing else is touched."""
    name = re.compile(rf"{re.escape(prefix)}_(\d{{2,}})_(input|restored)\.png")
    for path in folder.glob(f"{glob.escape(prefix)}_*.png"):
        match = name.fullmatch(path.name)
        if match and int(match[1]) >= kept:
            path.unlink()


NO_FACE_EXIT = 3  # some photos had no face: copied unchanged, as the library returns them


def cmd_restore(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    import bfr
    from bfr.imageio import save_image

    options = {k: v for k, v in dict(steps=args.steps, start_step=args.start_step, eta=args.eta, seed=args.seed,
                                      sampler=args.sampler, phi=args.phi,
                                      color_fix=False if args.no_color_fix else None).items() if v is not None}
    if args.framing and not args.aligned:
        raise BfrError("--framing says how --aligned crops are framed; add --aligned (photos are aligned by the "
                       "face pipeline)")
    weights = _weights(args.weights, args.method, args.tier)
    paths = _inputs(args.inputs)
    out_dir = _output_dir(args.output)
    # An earlier run's results in the folder it restores are not restored again (unless they are all there is).
    own = [p for p in paths if p.parent.resolve() == out_dir.resolve() and p.stem.endswith(f"_{args.method}")]
    if own and len(own) < len(paths):
        paths = [p for p in paths if p not in own]
        print(f"skipping {len(own)} earlier result(s) of this command in {out_dir} (*_{args.method}.png)")
    restorer = bfr.load(args.method, tier=args.tier, device=args.device, weights=weights, detector=args.detector,
                        half_precision=not args.fp32)
    accepted = {*restorer.model.defaults, "seed"}  # the sampling knobs the method declares
    for name in options:
        if name not in accepted:
            flag = "--no-color-fix" if name == "color_fix" else f"--{name.replace('_', '-')}"
            raise BfrError(f"{flag} does not apply to {args.method}")

    def work(path: Path, stem: str) -> None:
        with tqdm(desc=path.name, unit="step", leave=False, disable=None) as bar:  # no bar when not a terminal

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            result = restorer.restore(path, aligned=args.aligned, framing=args.framing or "ffhq", upscale=args.upscale,
                                      only_center_face=args.only_center_face, progress=progress, **options)
        target = out_dir / f"{stem}_{args.method}.png"
        save_image(result.image, target)
        if args.save_faces:  # each method its own pairs: another run's crops may be of other faces or framing
            prefix = f"{stem}_{args.method}"
            for i, (before, after) in enumerate(result.faces):
                save_image(before, out_dir / "faces" / f"{prefix}_{i:02d}_input.png")
                save_image(after, out_dir / "faces" / f"{prefix}_{i:02d}_restored.png")
            _drop_stale_faces(out_dir / "faces", prefix, kept=len(result.faces))
        if result.faces:
            print(f"{target}: {result.message} ({result.seconds:.1f} s, detector: {result.detector})")
        else:  # a script must be able to tell this file from a restoration
            no_face.append(path.name)
            print(f"warning: {target}: {result.message}", file=sys.stderr)

    no_face: list[str] = []
    try:
        _each(paths, work)
    finally:  # said also when another input failed (exit code 2 then)
        if no_face:
            failure = sys.exc_info()[1]
            code = (NO_FACE_EXIT if failure is None else 2 if isinstance(failure, (BfrError, FileNotFoundError))
                    else None)  # interrupted (130) or a bug: not this message's to say
            said = "" if code is None else f" (exit code {code})"
            print(f"warning: no face found in {len(no_face)} of {len(paths)} inputs ({', '.join(no_face)}): written "
                  f"as the library returns them, not restored{said}; a face crop needs --aligned", file=sys.stderr)
    return NO_FACE_EXIT if no_face else 0


# `train` options and the models they belong to: a flag given to another model is refused, not ignored.
TRAIN_FLAGS = {
    "schedule_steps": ("prior", "backbone"),
    "init_from": ("prior", "backbone", "idm", "flipnet"),
    "rounds": ("idm",), "steps_per_round": ("idm",), "refine_steps": ("idm",), "clean_steps": ("idm",),
    "lr": ("flipnet",), "prior": ("flipnet",), "embed_steps": ("flipnet",), "degrade_steps": ("flipnet",),
    "restore_steps": ("flipnet",), "offline_faces": ("flipnet",), "offline_variants": ("flipnet",),
    "tier": ("flipnet",), "clean_dir": ("flipnet",), "unet": ("flipnet",), "vae": ("flipnet",),
    "card_faces": ("flipnet",), "lpips_weight": ("flipnet",),
}
INIT_KINDS = {"prior": ("prior",), "backbone": ("swinir",), "idm": ("idm", "prior"),
              "flipnet": ("flipnet",)}  # what --init-from may hold


def _check_train_flags(args: argparse.Namespace) -> None:
    """Refuse options that mean nothing for this model, and numbers no run can use."""
    for flag, users in TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is not None and args.what not in users and not (flag == "tier" and value == "compact"):
            option = "--" + flag.replace("_", "-")
            if flag == "tier":
                raise BfrError(f"`train {args.what}` trains the compact tier only; --tier paper is for `train flipnet`")
            raise BfrError(f"{option} is an option of `train {' / '.join(users)}`, not of `train {args.what}`")
    _check_numbers(args, counts=("steps", "batch_size", "schedule_steps", "rounds", "steps_per_round", "refine_steps",
                                 "clean_steps", "embed_steps", "restore_steps", "offline_variants", "train_images",
                                 "card_faces"),
                   positive=("minutes", "lr"))
    _check_numbers(args, counts=("degrade_steps", "offline_faces"), low=0)  # a FLIPNET stage may be skipped
    if args.lpips_weight is not None and not args.lpips_weight >= 0:
        raise BfrError(f"--lpips-weight must be 0 or more, got {args.lpips_weight}")


def _seed_arg(text: str) -> int:
    """--seed as argparse reads it: anything but a whole number in the library's range is a usage error."""
    try:
        value = int(text)
    except ValueError:
        value = text  # check_seed refuses it, saying why
    try:
        return check_seed(value)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _check_numbers(args: argparse.Namespace, counts: tuple[str, ...] = (), positive: tuple[str, ...] = (),
                   low: int = 1) -> None:
    """Options given as counts must be at least ``low``; ``positive`` ones finite and above zero."""
    for flag in counts:
        value = getattr(args, flag)
        if value is not None and value < low:
            raise BfrError(f"--{flag.replace('_', '-')} must be at least {low}, got {value}")
    for flag in positive:
        value = getattr(args, flag)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise BfrError(f"--{flag.replace('_', '-')} must be a positive number, got {value}")


def _init_file(value: str, what: str) -> str:
    """--init-from as a file: a path, or a catalog name (e.g. prior64); its network must be the one `what` trains."""
    from bfr.weights import CATALOG, read_metadata, resolve

    path = Path(value).expanduser()
    example = {"backbone": "swinir64", "flipnet": "flipnet64"}.get(what, "prior64")
    if not path.is_file():
        if value not in CATALOG:
            raise BfrError(f"--init-from {value}: no such file (give a weights file, or a name such as {example})")
        if not CATALOG[value].made_by:  # a published checkpoint: not a network bfr's trainers continue
            raise BfrError(f"--init-from {value}: `train {what}` continues bfr-trained weights such as {example}, "
                           "not a third-party checkpoint")
        path = resolve(value)
    kind = read_metadata(path).get("kind")
    if kind not in INIT_KINDS[what]:
        held = f"a {kind} network" if kind else "no bfr network (no kind in its metadata)"
        raise BfrError(f"--init-from {value} holds {held}; `train {what}` starts from "
                       f"{' or '.join(INIT_KINDS[what])} weights")
    return str(path)


def cmd_train(args: argparse.Namespace) -> None:
    _check_train_flags(args)
    if args.init_from is not None and not (args.what == "idm" and args.init_from == "scratch"):
        args.init_from = _init_file(args.init_from, args.what)
    if args.output:
        _output_dir(args.output)
    common = {k: v for k, v in dict(batch_size=args.batch_size, mixed_precision=args.precision,
                                    train_images=args.train_images).items() if v is not None}
    if args.what == "prior":
        from bfr.training.prior import PriorConfig, train_prior

        cfg = PriorConfig(out_dir=args.output or "runs/prior64", max_steps=args.steps, max_minutes=args.minutes,
                          init_from=args.init_from, **common)
        if args.schedule_steps is not None:
            cfg.total_steps = args.schedule_steps
        train_prior(cfg)
    elif args.what == "backbone":
        from bfr.training.backbone import BackboneConfig, train_backbone

        cfg = BackboneConfig(out_dir=args.output or "runs/swinir64", max_steps=args.steps, max_minutes=args.minutes,
                             init_from=args.init_from, **common)
        if args.schedule_steps is not None:
            cfg.total_steps = args.schedule_steps
        train_backbone(cfg)
    elif args.what == "flipnet":
        from bfr.training.flipnet import run_config, train_flipnet, write_flipnet_card
        from bfr.weights import read_metadata

        given = dict(tier=args.tier, prior=args.prior, unet=args.unet, vae=args.vae, clean_dir=args.clean_dir,
                     embed_steps=args.embed_steps, degrade_steps=args.degrade_steps,
                     restore_steps=args.restore_steps, offline_faces=args.offline_faces,
                     offline_variants=args.offline_variants, lr=args.lr, init_from=args.init_from,
                     lpips_weight=args.lpips_weight, card_faces=args.card_faces, **common)
        cfg, changed = run_config(args.output, {k: v for k, v in given.items() if v is not None},
                                  max_steps=args.steps, max_minutes=args.minutes)
        if cfg.tier == "compact" and (cfg.unet or cfg.vae or cfg.clean_dir):
            raise BfrError("--unet, --vae and --clean-dir belong to FLIPNET's paper tier (--tier paper)")
        if cfg.tier == "paper" and cfg.prior:
            raise BfrError("the paper tier's frozen prior is Stable Diffusion 2.1-base: give its weights with --unet")
        if changed is not None:
            print(f"resuming {cfg.out_dir} with the settings it recorded"
                  + (f"; changed here: {', '.join(changed)}" if changed else ""))
        path = train_flipnet(cfg)
        if json.loads(read_metadata(path)["steps"]) > cfg.embed_steps:  # the card measures restoration mode
            card = write_flipnet_card(cfg.out_dir, n_test=cfg.card_faces)
            print(f"adapters: {path}; card: {card}")
        else:
            print(f"stopped in the embedding stage; run the same command again to resume ({path})")
    elif args.what == "idm":
        from bfr.training.idm import IDMConfig, train_idm
        from bfr.weights import resolve

        if args.steps is not None:
            raise BfrError("idm trains in rounds: use --steps-per-round (round 0) and --refine-steps (later rounds)")
        init = args.init_from or str(resolve("prior64"))  # "scratch": the paper's start
        cfg = IDMConfig(out_dir=args.output or "runs/idm64", rounds=args.rounds or 3, max_minutes=args.minutes,
                        init_from=None if init == "scratch" else init, **common)
        if args.steps_per_round is not None:
            cfg.steps_per_round = args.steps_per_round
        if args.refine_steps is not None:
            cfg.refine_steps = args.refine_steps
        if args.clean_steps is not None:
            cfg.clean_steps = args.clean_steps
        if train_idm(cfg) is None:
            print("stopped before the last round finished; run the same command again to resume")


def cmd_adapt(args: argparse.Namespace) -> None:
    from bfr.training.adapt import AdaptConfig, adapt, write_card

    _check_numbers(args, counts=("iters", "batch_size", "gen_batch_size", "regenerate_every", "factor"),
                   positive=("minutes", "lr"))
    _check_numbers(args, counts=("start", "min_index"), low=0)
    if not 0 <= args.ema_decay < 1:
        raise BfrError(f"--ema-decay must be in [0, 1), got {args.ema_decay}")
    for flag in ("gan_weight", "lpips_weight"):
        value = getattr(args, flag)
        if value is not None and not value >= 0:
            raise BfrError(f"--{flag.replace('_', '-')} must be 0 or more, got {value}")
    _output_dir(args.output)

    cfg = AdaptConfig(lq_dir=args.lq_dir, out_dir=args.output, tier=args.tier, restorer=args.restorer,
                      prior=args.prior, references_dir=args.references, clean_dir=args.clean_dir,
                      eval_dir=args.eval_dir, total_steps=args.iters, max_minutes=args.minutes,
                      batch_size=args.batch_size, lr=args.lr, regenerate_every=args.regenerate_every,
                      factor=args.factor, start=args.start, min_index=args.min_index,
                      gen_batch_size=args.gen_batch_size, mixed_precision=args.precision,
                      ema_decay=args.ema_decay, seed=args.seed,
                      **{k: v for k, v in (("gan_weight", args.gan_weight), ("lpips_weight", args.lpips_weight))
                         if v is not None})
    if adapt(cfg) is None:
        print("stopped while generating pseudo-targets (those made are cached); run the same command to continue")
    elif args.bundle:
        name = args.bundle_name or ("swinir64_adapted" if args.tier == "compact" else "swinir512_adapted")
        print(f"weights and card copied: {write_card(args.output, dest=args.bundle, name=name)}")


def cmd_demo_set(args: argparse.Namespace) -> None:
    from bfr.training.adapt import make_demo_set

    if args.n_images is not None and args.n_images < 2:
        raise BfrError(f"--n-images must be 2 or more (some to adapt on, some held out), got {args.n_images}")
    _output_dir(args.output)
    m = make_demo_set(args.output, resolution=args.resolution, preset=args.preset, seed=args.seed,
                      limit=args.n_images)
    print(f"{args.output}: {m['counts']['adapt']} degraded faces in adapt/, {m['counts']['holdout']} held out in "
          "holdout/ (ground truth in holdout_gt/, for evaluation only)")


def cmd_eval(args: argparse.Namespace) -> None:
    from bfr.api import METHODS
    from bfr.evaluation import run_eval
    from bfr.evaluation.readme import check_markers, update_readme

    if args.readme:
        check_markers(args.readme)  # before the run, not after it
    _output_dir(args.output)
    report = run_eval(args.output, methods=tuple(args.methods or METHODS), tiers=tuple(args.tiers),
                      n_images=args.n_images, offset=args.offset,
                      resolution=args.resolution, seed=args.seed, start_steps=tuple(args.start_steps),
                      steps=args.steps, eta=args.eta, batch_size=args.batch_size, device=args.device)
    for s in report["skipped"]:
        print(f"skipped {s['method']}/{s['tier']}: {s['reason']}")
    print(f"{Path(args.output) / 'results.md'}: {len(report['rows'])} rows in {report['seconds_total']:.0f} s")
    if args.readme:
        print(f"{update_readme(args.readme, report, args.output)}: results block rewritten")


def cmd_bench(args: argparse.Namespace) -> None:
    from bfr.evaluation import run_bench

    _output_dir(args.output)
    report = run_bench(args.output, methods=tuple(args.methods), tiers=tuple(args.tiers),
                       devices=tuple(args.devices) if args.devices else None, precisions=tuple(args.precisions),
                       batch_sizes=tuple(args.batch_sizes), start_steps=tuple(args.start_steps), steps=args.steps,
                       repeats=args.repeats, photo=args.photo, photo_sizes=tuple(args.photo_sizes))
    for s in report["skipped"]:
        print(f"skipped {s['method']}/{s['tier']}: {s['reason']}")
    print(f"{Path(args.output) / 'bench.md'}: {len(report['records'])} measurements")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bfr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("methods", help="list methods and tiers, and whether their weights are here")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("degrade", help="synthesize degraded versions of clean faces")
    p.add_argument("inputs", nargs="+", help="images or folders")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--preset", default=None, help=PRESET_HELP + " (default difface)")
    p.add_argument("--resolution", type=int, default=None,
                   help="face size the preset's ranges are scaled to (default: the image size)")
    p.add_argument("--variants", type=int, default=1, help="degraded variants per image")
    p.add_argument("--seed", type=_seed_arg, default=0, help="seed of the first variant (the k-th uses seed+k)")
    p.add_argument("--method", default="synthetic",
                   help="synthetic (the --preset pipeline) | flipnet (FLIPNET's degradation mode on aligned faces)")
    p.add_argument("--tier", default=None, choices=["compact", "paper"], help="flipnet: weights tier (default compact)")
    p.add_argument("--device", default=None, help="flipnet: cpu | cuda (default: cuda when present)")
    p.add_argument("--fp32", action="store_true",
                   help="flipnet: on CUDA, run in float32 (default there: bf16 autocast; CPU always float32)")
    p.add_argument("--weights", action="append", metavar="NAME=PATH",
                   help="flipnet: local weights for a catalog entry (repeat the option for each file)")
    p.add_argument("--photo", action="store_true",
                   help="flipnet: the inputs are photos: each one's largest face is detected and aligned first "
                        "(default: aligned face crops in the model's framing)")
    p.add_argument("--no-color-fix", action="store_true",
                   help="flipnet: keep the samples' own colours (default: each takes the clean face's "
                        "channel statistics)")
    p.set_defaults(func=cmd_degrade)

    p = sub.add_parser("restore", help="restore every face in photos (or aligned face crops)")
    p.add_argument("inputs", nargs="+", help="images or folders")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--method", default="difface",
                   help="difface (default) | flipnet | idm | unsupervised (see `methods`)")
    p.add_argument("--tier", default="compact", choices=["compact", "paper"],
                   help="compact (default: the bundled 64-px models) or paper (the authors' 512-px weights)")
    p.add_argument("--aligned", action="store_true", help="inputs are aligned face crops: skip detection")
    p.add_argument("--framing", default=None, choices=["ffhq", "lfw"],
                   help="with --aligned, how the crops are framed: ffhq (default; FFHQ/facexlib crops, e.g. 512 px) "
                        "or lfw (the compact models' own crops: `degrade --method flipnet` and `demo-set` output)")
    p.add_argument("--only-center-face", action="store_true", help="restore only the face nearest the centre")
    p.add_argument("--upscale", type=float, default=1,
                   help="output scale of the whole image, e.g. 2 or 4 (default 1); any factor that keeps the output "
                        "at least 16 px a side and at most 67 MP")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling chain length (default: the method's own on this tier; `methods` lists them)")
    p.add_argument("--start-step", type=int, default=None,
                   help="DifFace's started step N (default: the tier's own; `methods` lists them)")
    p.add_argument("--eta", type=float, default=None, help="DDIM η in [0, 1] (DifFace default 0.5, IDM 0, FLIPNET 1)")
    p.add_argument("--sampler", default=None, choices=["ddim", "ancestral"],
                   help="IDM's sampler: DDIM (with --eta) or ancestral with fixed variance (default ddim)")
    p.add_argument("--phi", type=float, default=None, help="FLIPNET's BoostHub scale φ (default 1; 0 = no condition)")
    p.add_argument("--no-color-fix", action="store_true",
                   help="FLIPNET, IDM: keep the samples' own colours (default: each takes the input's per-channel "
                        "mean, FLIPNET also its spread)")
    p.add_argument("--seed", type=_seed_arg, default=None, help="noise seed (default 0)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when present)")
    p.add_argument("--fp32", action="store_true",
                   help="on CUDA, run the networks in float32 (default there: bf16 autocast, fp16 where bf16 is "
                        "missing; CPU always runs float32)")
    p.add_argument("--detector", default="auto", choices=["auto", "retinaface", "haar"],
                   help="auto (default): RetinaFace when its weights are here or can be fetched, else OpenCV's "
                        "Haar cascade")
    p.add_argument("--weights", action="append", metavar="NAME=PATH",
                   help="use a local weights file for a catalog entry, e.g. difface_unet_512=/data/x.pth; "
                        "repeat the option for each file (your own trained or adapted weights too: "
                        "prior64=RUN/prior64.safetensors)")
    p.add_argument("--save-faces", action="store_true",
                   help="also write each face's input and restored crops: faces/STEM_METHOD_NN_input.png and "
                        "_restored.png")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("train", help="train a compact-tier model on ../shared/data (LFW train split); "
                                   "FLIPNET also in Stable Diffusion latents (--tier paper)")
    p.add_argument("what", choices=["prior", "backbone", "idm", "flipnet"])
    p.add_argument("-o", "--output", default=None,
                   help="run folder (resumes if it holds a state; default runs/prior64, runs/swinir64, runs/idm64 or "
                        "runs/flipnet64 under the current folder)")
    p.add_argument("--steps", type=int, default=None,
                   help="stop at this total step count (a resumed or --init-from run counts its earlier steps)")
    p.add_argument("--minutes", type=float, default=None, help="stop (and save) after this many minutes")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default 16 (flipnet: a resumed run keeps its own, as it keeps every setting not given)")
    p.add_argument("--init-from", default=None, help="start from these inference weights (e.g. the bundled ones); idm: "
                   "default the bundled prior64, 'scratch' for none; flipnet: adapters (e.g. flipnet64) to re-fit "
                   "around --prior, the embedding stage skipped")
    p.add_argument("--precision", default=None, choices=["bf16", "fp16", "no"], help="default bf16")
    p.add_argument("--train-images", type=int, default=None, metavar="N",
                   help="train on only the first N train faces: a quick run to try the pipeline (its card says so)")
    p.add_argument("--schedule-steps", type=int, default=None,
                   help="prior/backbone: length of the cosine lr schedule, and of the run unless --steps is "
                        "given (defaults 60000 / 30000); a shorter one anneals a resumed run")
    p.add_argument("--rounds", type=int, default=None,
                   help="idm: training rounds, default 3; each after the first cleans the training faces with the "
                        "previous one")
    p.add_argument("--steps-per-round", type=int, default=None, help="idm: steps of round 0 (default 30000)")
    p.add_argument("--refine-steps", type=int, default=None,
                   help="idm: steps of each later round, from the previous weights (default a quarter of round 0)")
    p.add_argument("--clean-steps", type=int, default=None,
                   help="idm: DDIM steps of each cleaning restoration "
                        "(default 10, the compact tier's restoration default)")
    p.add_argument("--lr", type=float, default=None, help="flipnet: adapters' learning rate (default 1e-4)")
    p.add_argument("--prior", default=None, help="flipnet: the frozen prior's weights (default: the bundled prior64)")
    p.add_argument("--embed-steps", type=int, default=None, help="flipnet: face-embedding stage (default 2000)")
    p.add_argument("--lpips-weight", type=float, default=None,
                   help="flipnet: weight of the embedder's LPIPS-VGG loss (default 1; 0 = none, and VGG16 is not "
                        "fetched)")
    p.add_argument("--degrade-steps", type=int, default=None, help="flipnet: degradation-mode stage (default 4000)")
    p.add_argument("--restore-steps", type=int, default=None, help="flipnet: restoration-mode stage (default 12000)")
    p.add_argument("--offline-faces", type=int, default=None,
                   help="flipnet: train faces the degradation mode degrades for the restoration stage (default 512)")
    p.add_argument("--offline-variants", type=int, default=None,
                   help="flipnet: degraded variants of each of those faces (default 1)")
    p.add_argument("--tier", default=None, choices=["compact", "paper"],
                   help="flipnet: compact (pixels, prior64, LFW; the default) or paper (Stable Diffusion 2.1-base "
                        "latents)")
    p.add_argument("--clean-dir", default=None, help="flipnet paper tier: clean FFHQ-aligned faces to train on")
    p.add_argument("--unet", default=None, help="flipnet paper tier: SD 2.1-base UNet weights (default: the Hub)")
    p.add_argument("--vae", default=None, help="flipnet paper tier: SD 2.1-base VAE weights (default: the Hub)")
    p.add_argument("--card-faces", type=int, default=None,
                   help="flipnet: test faces the model card measures (default 64; 50-step restorations, minutes on "
                        "a CPU)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("adapt", help="adapt a restorer to degraded faces without ground truth (Kuai et al.)")
    p.add_argument("lq_dir", help="folder of degraded, aligned faces (the model's framing)")
    p.add_argument("-o", "--output", required=True, help="run folder (resumes if it holds a state)")
    p.add_argument("--tier", default="compact", choices=["compact", "paper"])
    p.add_argument("--iters", type=int, default=20_000,
                   help="fine-tuning iterations (cosine lr schedule length; default 20000: hours on a CPU)")
    p.add_argument("--minutes", type=float, default=None, help="stop (and save) after this many minutes")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-5, help="start of the cosine schedule (ends at 5e-6)")
    p.add_argument("--regenerate-every", type=int, default=None, metavar="K",
                   help="regenerate pseudo-targets with the improved restorer every K iterations")
    p.add_argument("--restorer", default=None, help="starting restorer weights (default: swinir64 / swinir_gan_v1)")
    p.add_argument("--prior", default=None, help="face prior weights (default: prior64 / iddpm_ffhq512_ema500000)")
    p.add_argument("--references", default=None, help="general path: folder of fixed references (same file names)")
    p.add_argument("--clean-dir", default=None, help="clean aligned faces for the discriminator (paper tier: FFHQ)")
    p.add_argument("--eval-dir", default=None, help="a demo-set folder: holdout PSNR/SSIM logged while adapting")
    p.add_argument("--factor", type=int, default=None, help="low-pass factor (default: 16 at 512 px, 2 at 64 px)")
    p.add_argument("--start", type=int, default=None,
                   help='pseudo-targets start at this index of the "250" chain (default: 150 at 512 px, 53 at 64 px)')
    p.add_argument("--min-index", type=int, default=None,
                   help="last index whose step is low-pass replaced (default: 90 at 512 px, 15 at 64 px)")
    p.add_argument("--gen-batch-size", type=int, default=16, help="batch of the pseudo-target sampler")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "no"])
    p.add_argument("--ema-decay", type=float, default=0.999,
                   help="the exported restorer is an EMA with this decay (0: the fine-tuned weights, as the authors)")
    p.add_argument("--gan-weight", type=float, default=None,
                   help="weight of the adversarial loss (default 0.1, the recipe's; 0 = L1 only)")
    p.add_argument("--lpips-weight", type=float, default=None,
                   help="weight of the LPIPS-VGG loss (default 0.4, the recipe's; 0 = none, and VGG16 is not fetched)")
    p.add_argument("--seed", type=_seed_arg, default=0)
    p.add_argument("--bundle", default=None, metavar="DIR",
                   help="also copy weights, card and samples into DIR (e.g. bfr/weights/compact)")
    p.add_argument("--bundle-name", default=None,
                   help="file name in --bundle (default swinir64_adapted, or swinir512_adapted on the paper tier: "
                        "the names restore --method unsupervised looks for)")
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("demo-set", help="LFW test faces under an unseen degradation, split adapt / holdout")
    p.add_argument("output", help="folder for adapt/, holdout/, holdout_gt/ and manifest.json")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--preset", default="camera-lowres",
                   help="degradation preset (default camera-lowres: a small-sensor photo of a small face, "
                        "unseen in training)")
    p.add_argument("--seed", type=_seed_arg, default=0)
    p.add_argument("--n-images", type=int, default=None,
                   help="only the first N LFW test faces (default all 756): a quick try of adapt")
    p.set_defaults(func=cmd_demo_set)
    p = sub.add_parser("eval", help="PSNR/SSIM/NIQE (+ identity, landmarks, LPIPS, FID where they can run) on a "
                                    "fixed synthetic LFW test set")
    p.add_argument("-o", "--output", required=True, help="output folder: results.md/.json, figures, cached test set")
    p.add_argument("--methods", nargs="+", default=None,
                   help="methods to evaluate (default all; those without weights are skipped with the reason)")
    p.add_argument("--tiers", nargs="+", default=["compact"], choices=["compact", "paper"])
    p.add_argument("--n-images", type=int, default=64, help="faces from the LFW test split (default 64, at most 756)")
    p.add_argument("--resolution", type=int, default=64, help="face size of the test set")
    p.add_argument("--seed", type=_seed_arg, default=0, help="picks the faces and the noise; same seed, same test set")
    p.add_argument("--offset", type=int, default=0,
                   help="skip the first faces of the seeded order (e.g. --offset 64: faces kept apart from a "
                        "64-face test set, to choose defaults on)")
    p.add_argument("--start-steps", type=int, nargs="+", default=[15, 25, 50, 100, 150],
                   help="DifFace's started steps N to evaluate (the fidelity–realism curve; default 15 25 50 100 150)")
    p.add_argument("--steps", type=int, default=250, help="DDIM chain length (DifFace default 250)")
    p.add_argument("--eta", type=float, default=0.5, help="DDIM η (DifFace default 0.5)")
    p.add_argument("--batch-size", type=int, default=16, help="faces per call; batch k uses noise seed + k")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when present)")
    p.add_argument("--readme", default=None, metavar="PATH",
                   help="also rewrite the results block of this README (between its `bfr eval` markers) with the "
                        "command, hardware and table")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="seconds per face, peak memory, fp32 vs bf16/fp16, scaling with batch, steps "
                                      "and photo size")
    p.add_argument("-o", "--output", required=True,
                   help="output folder: bench.md, bench.json, bench.png (+ bench_photo.png)")
    p.add_argument("--methods", nargs="+", default=["difface"])
    p.add_argument("--tiers", nargs="+", default=["compact"], choices=["compact", "paper"])
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16], help="faces per call")
    p.add_argument("--start-steps", type=int, nargs="+", default=[25, 100],
                   help="DifFace's started step N = network calls per face")
    p.add_argument("--steps", type=int, default=250, help="DDIM chain length")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per setting (the median is reported)")
    p.add_argument("--photo", default=None,
                   help="whole photo timed by stage (default: real-lq/whole_imgs/00.jpg in the shared data folder)")
    p.add_argument("--photo-sizes", type=int, nargs="*", default=[960, 1920, 3840],
                   help="long sides in pixels the photo is resized to (none: skip the photo)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _MADE.clear()
    try:
        code = args.func(args) or 0
    except (BfrError, FileNotFoundError) as e:
        _remove_made()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _remove_made()
        print("interrupted", file=sys.stderr)
        return 130
    _MADE.clear()
    return code
