"""Quality evaluation on a fixed synthetic test set made from the LFW test split.

    >>> from bfr.evaluation import run_eval
    >>> report = run_eval("runs/eval", n_images=64)      # writes results.md / .json / *.png there

The test set: a seeded choice of ``n_images`` faces from ``lfw150-splits/test.txt`` (people
never seen in training), resized to ``resolution`` (the compact LFW framing), each degraded
with the next entry of ``test_grid(resolution)`` (cycled) and noise seeded by (seed, index),
then stored as 8-bit images. The same arguments always give the same images, and a larger
``n_images`` extends a smaller one. ``offset`` skips the first faces of that seeded order, so a set
with ``offset=24`` holds the faces (and degradations) that follow a 24-face set: faces kept apart
for choosing defaults. The set is cached in ``out_dir``.

Rows: the ground truth (NIQE only: the realism to aim for), the degraded input, and for
every method × tier with weights here its outputs (DifFace: the backbone alone, then the
full method at each started step N, which traces the fidelity–realism trade-off).
"Bicubic" is not a baseline here: the LQ is already brought back to full size by the
degradation itself, so a bicubic re-upsampling would be the input again.
Outputs are rounded to 8 bits (as saved files are) before every metric.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bfr import metrics as M
from bfr.degradations import apply, test_grid
from bfr.errors import InputError, WeightsUnavailableError
from bfr.evaluation.plots import Panel, Series, have_matplotlib, image_grid, line_charts
from bfr.paths import REPO_DIR

DEFAULT_START_STEPS = (15, 25, 50, 100, 150)  # 15: the compact default; 100: the paper's

# --------------------------------------------------------------------------- test set


@dataclass
class TestSet:
    """GT and LQ faces as uint8 (N, 3, R, R), with the file names and degradation of each."""

    gt: torch.Tensor
    lq: torch.Tensor
    names: list[str]
    params: list[dict]
    resolution: int
    seed: int

    __test__ = False  # not a pytest class

    def __len__(self) -> int:
        return len(self.names)

    @staticmethod
    def as_float(x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255.0

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, gt=self.gt.numpy(), lq=self.lq.numpy(), names=np.array(self.names),
                            params=json.dumps(self.params), resolution=self.resolution, seed=self.seed)
        return path

    @classmethod
    def load(cls, path: Path) -> TestSet:
        with np.load(path) as z:
            return cls(torch.from_numpy(z["gt"]), torch.from_numpy(z["lq"]), [str(n) for n in z["names"]],
                       json.loads(str(z["params"])), int(z["resolution"]), int(z["seed"]))


def build_test_set(n_images: int, resolution: int = 64, seed: int = 0, offset: int = 0) -> TestSet:
    """Degrade a seeded choice of LFW test faces with the test grid, cycled (see the module docstring)."""
    from bfr.training.data import load_faces, split_files

    files = split_files("test")
    if offset < 0 or not 1 <= n_images <= len(files) - offset:
        raise InputError(f"offset + n_images must lie in [1, {len(files)}] (the LFW test split) with offset ≥ 0, "
                         f"got offset {offset}, n_images {n_images}")
    order = np.random.default_rng(seed).permutation(len(files))[offset:offset + n_images]
    files = [files[i] for i in order]
    gt = load_faces(files, resolution)
    grid = test_grid(resolution)
    lq, params = [], []
    for i, face in enumerate(gt, start=offset):
        p = grid[i % len(grid)]
        hq = face.permute(1, 2, 0).numpy().astype(np.float32) / 255.0
        img = apply(hq, p, np.random.default_rng([seed, i]))
        lq.append(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8).transpose(2, 0, 1))
        params.append(dict(dataclasses.asdict(p), grid_index=i % len(grid)))
    names = [f"{f.parent.name}/{f.name}" for f in files]
    return TestSet(gt, torch.from_numpy(np.stack(lq)), names, params, resolution, seed)


def test_set_path(out_dir: str | Path, n_images: int, resolution: int, seed: int, offset: int = 0) -> Path:
    skip = f"_o{offset}" if offset else ""
    return Path(out_dir) / f"testset_r{resolution}_n{n_images}_s{seed}{skip}.npz"


test_set_path.__test__ = False


def load_or_build_test_set(out_dir: str | Path, n_images: int, resolution: int = 64, seed: int = 0,
                           offset: int = 0) -> TestSet:
    """The cached test set in ``out_dir``, built (and cached) on first use."""
    path = test_set_path(out_dir, n_images, resolution, seed, offset)
    if path.is_file():
        return TestSet.load(path)
    ts = build_test_set(n_images, resolution, seed, offset)
    ts.save(path)
    return ts


# ---------------------------------------------------------------------------- metrics


class Scorer:
    """Every metric usable here, applied to (outputs, GT) pairs; records why the others are not."""

    def __init__(self, resolution: int, device: torch.device, framing: str = "lfw"):
        self.niqe_model = M.load_niqe_model(resolution)
        self.status = M.optional_metrics()
        self.pairwise: dict[str, object] = {}
        self.inception = None
        for name, (ok, _) in self.status.items():
            if not ok:
                continue
            try:
                if name == "lpips":
                    self.pairwise["lpips"] = M.LPIPS(device)
                elif name == "identity":
                    self.pairwise["identity"] = M.IdentitySimilarity(device=device, framing=framing)
                elif name == "identity_dlib":
                    self.pairwise["identity_dlib"] = M.DlibIdentityDistance(framing=framing)
                elif name == "landmarks":
                    self.pairwise["landmarks"] = M.LandmarkDistance(device=str(device))
                elif name == "landmarks_dlib":
                    self.pairwise["landmarks_dlib"] = M.DlibLandmarkDistance(framing=framing)
                elif name == "fid":
                    self.inception = M.InceptionFeatures(device=device)
            except (WeightsUnavailableError, OSError, RuntimeError, ImportError) as e:
                self.status[name] = (False, f"failed to load ({type(e).__name__}: {e})")
        self._gt_feats = None

    def descriptions(self) -> dict[str, str]:
        out = {
            "psnr": "PSNR in dB on RGB, peak 1 (higher is better)",
            "ssim": "SSIM on BT.601 luma, 11×11 Gaussian σ 1.5, valid region (higher is better)",
            "niqe": M.niqe_description(self.niqe_model),
        }
        names = {"lpips": "LPIPS-AlexNet (lower is better)", "identity": "ArcFace cosine similarity to GT "
                 "(higher is better)", "identity_dlib": "distance of dlib ResNet face descriptors to GT's, each face "
                 "chipped through its own 5 dlib landmarks (lower is better; dlib: one person's photos are under "
                 "0.6 apart); descriptor network trained on 150-px chips, so small faces are upscaled to it",
                 "landmarks": "mean 5-point landmark distance to GT in px (lower is better)",
                 "landmarks_dlib": "mean distance of dlib's 68 landmarks to GT's in px at the faces' size (lower is "
                 "better), predicted from the aligned crop's fixed face box on the crop warped to 256 px",
                 "fid": "FID against the GT faces of the same set, torchvision Inception-v3 (lower is better; "
                 "biased upwards for small sets)"}
        for name, (ok, why) in self.status.items():
            out[name] = names[name] if ok else f"unavailable: {why}"
        return out

    def per_image(self, out: torch.Tensor, gt: torch.Tensor | None) -> dict[str, list[float]]:
        """Per-image values of every metric (full-reference ones only when ``gt`` is given)."""
        res = {"niqe": M.niqe(out, self.niqe_model).tolist()}
        if gt is not None:
            res["psnr"] = M.psnr(out, gt).double().tolist()
            res["ssim"] = M.ssim(out, gt).double().tolist()
            for name, metric in self.pairwise.items():
                res[name] = metric(out, gt).tolist()
        return res

    def set_level(self, out: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
        if self.inception is None or len(out) < 2:
            return {}
        if self._gt_feats is None:
            self._gt_feats = self.inception(gt)
        return {"fid": M.fid(self.inception(out), self._gt_feats)}


COLUMN = {"psnr": "PSNR ↑", "ssim": "SSIM ↑", "niqe": "NIQE ↓", "lpips": "LPIPS ↓", "identity": "IDS ↑",
          "identity_dlib": "ID dist (dlib) ↓", "landmarks": "LMD ↓", "landmarks_dlib": "LMD-68 (dlib) ↓",
          "fid": "FID ↓"}


def _summary(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    ok = arr[np.isfinite(arr)]
    return {"mean": float(ok.mean()) if len(ok) else None, "std": float(ok.std()) if len(ok) else None,
            "n": int(len(ok)), "missing": int(len(arr) - len(ok))}


# -------------------------------------------------------------------------------- runs


def _batched(fn, lq: torch.Tensor, batch_size: int, desc: str, progress: bool) -> tuple[torch.Tensor, float]:
    """Run ``fn(batch, k)`` over batches; returns the 8-bit-rounded outputs and the seconds taken."""
    from tqdm.auto import tqdm

    outs = []
    t0 = time.perf_counter()
    batches = list(lq.split(batch_size))
    for k, batch in enumerate(tqdm(batches, desc=desc, disable=not progress, leave=False)):
        outs.append(M.quantize(fn(batch, k).cpu()))
    return torch.cat(outs), time.perf_counter() - t0


def step_knob(model) -> str | None:
    """How a method's network calls per face are set: "start_step" (DifFace's N on a fixed chain),
    "steps" (a sampler from noise, e.g. IDM: the chain length), or None (one forward pass)."""
    knobs = getattr(model, "defaults", {})  # the sampling knobs a method declares (bfr.api.METHODS[name].knobs)
    return "start_step" if "start_step" in knobs else "steps" if "steps" in knobs else None


def _model_rows(model, steps: int, eta: float, start_steps: tuple[int, ...], seed: int):
    """(label, knobs, fn(batch, k)) for every row a method contributes.

    A method with a backbone estimate (DifFace) adds a "backbone alone" row; one with a
    started step (DifFace) a row per N; any other method one row at its defaults.
    """
    rows = []
    if hasattr(model, "estimate"):
        rows.append(("backbone alone", {"part": "backbone"}, lambda b, k: model.estimate(b)))
    defaults = dict(getattr(model, "defaults", {}))
    if step_knob(model) == "start_step":
        for n in start_steps:
            knobs = dict(steps=steps, start_step=n, eta=eta)
            mark = " (default)" if knobs == {k: defaults.get(k) for k in knobs} else ""
            rows.append((f"{model.title} N={n}{mark}", knobs,
                         lambda b, k, kn=knobs: model.restore(b, seed=seed + k, **kn)))
    else:
        label = model.title + (f", {defaults['steps']} steps" if "steps" in defaults else "")
        shown = [KNOB_LABELS[k](v) for k, v in defaults.items() if k in KNOB_LABELS]
        label += f" ({', '.join(shown)})" if shown else ""
        rows.append((label, defaults, lambda b, k: model.restore(b, seed=seed + k)))
    return rows


KNOB_LABELS = {  # how a method's sampling defaults read in a row label
    "sampler": str,
    "eta": lambda v: f"η {v:g}",
    "phi": lambda v: f"φ {v:g}",
    "color_fix": lambda v: "colour fix" if v else "no colour fix",
}


def counted(n: int, noun: str) -> str:
    """'1 call', '3 calls': report lines read right for any count."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def hardware(device: torch.device) -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "torch_threads": torch.get_num_threads(), "device": str(device),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def git_revision() -> str | None:
    try:
        rev = subprocess.run(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(REPO_DIR), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _weights_ids(method: str, tier: str) -> dict[str, str]:
    """sha256 (first 12 hex digits) of each weights file a method × tier uses: which snapshot was measured."""
    from bfr.api import METHODS
    from bfr.weights import resolve
    from bfr.weights.hub import sha256_of

    out = {}
    for name in METHODS[method].tiers[tier]:
        try:
            out[name] = sha256_of(resolve(name, download=False))[:12]
        except WeightsUnavailableError:
            out[name] = "?"
    return out


def run_eval(out_dir: str | Path, methods: tuple[str, ...] = ("difface",), tiers: tuple[str, ...] = ("compact",),
             n_images: int = 64, resolution: int = 64, seed: int = 0,
             start_steps: tuple[int, ...] = DEFAULT_START_STEPS, steps: int = 250, eta: float = 0.5,
             batch_size: int = 16, device: str | None = None, n_samples: int = 6, progress: bool = True,
             offset: int = 0) -> dict:
    """Evaluate methods × tiers and the baselines; write results.md, results.json and figures to ``out_dir``.

    start_steps: DifFace's started steps N on the ``ddim{steps}`` chain (one row each; the
    trade-off curve). Noise: batch k of ``batch_size`` faces uses seed + k. Returns the report dict.
    """
    import bfr
    from bfr.api import method_status
    from bfr.methods.base import pick_device, resize

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start_steps = tuple(int(n) for n in start_steps)
    bad = [n for n in start_steps if not 1 <= n <= steps]
    if bad:
        raise InputError(f"start steps {bad} are outside [1, steps={steps}]")
    dev = pick_device(device)
    t_start = time.perf_counter()
    ts = load_or_build_test_set(out_dir, n_images, resolution, seed, offset)
    gt, lq = ts.as_float(ts.gt), ts.as_float(ts.lq)
    scorer = Scorer(resolution, dev)

    rows: list[dict] = []
    samples: dict[tuple[str, str], list[tuple[str, torch.Tensor]]] = {}

    def add(method: str, tier: str, label: str, knobs: dict, out: torch.Tensor, seconds: float | None,
            reference: bool = False) -> None:
        per = scorer.per_image(out, None if reference else gt)
        per_set = {} if reference else scorer.set_level(out, gt)
        rows.append(dict(method=method, tier=tier, label=label, knobs=knobs,
                         seconds_per_face=None if seconds is None else seconds / len(out),
                         metrics={**{k: _summary(v) for k, v in per.items()},
                                  **{k: {"value": v} for k, v in per_set.items()}},
                         per_image=per))

    add("-", "-", "ground truth", {}, gt, None, reference=True)
    add("-", "-", "input (LQ)", {}, lq, None)

    skipped = []
    weights = {}
    for method in methods:
        for tier in tiers:
            ok, why = method_status(method, tier)
            if not ok:
                skipped.append(dict(method=method, tier=tier, reason=why))
                continue
            restorer = bfr.load(method, tier, device=str(dev))
            model = restorer.model
            if model.framing != "lfw":
                skipped.append(dict(method=method, tier=tier, reason=(
                    f"the {tier} tier expects {model.framing.upper()}-framed crops; the test set is LFW-framed "
                    "(an LFW crop does not cover the FFHQ frame), so its numbers would not be comparable")))
                continue
            weights[f"{method}/{tier}"] = _weights_ids(method, tier)
            shown = samples.setdefault((method, tier), [])
            for label, knobs, fn in _model_rows(model, steps, eta, start_steps, seed):
                out, secs = _batched(fn, lq, batch_size, f"{method}/{tier} {label}", progress)
                if out.shape != gt.shape:  # a part that works at its own size (e.g. a backbone at 512)
                    out = M.quantize(resize(out, tuple(gt.shape[-2:])))
                add(method, tier, label, knobs, out, secs)
                shown.append((label, out[:n_samples]))
            del restorer, model

    report = dict(
        title="bfr evaluation",
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        bfr_version=bfr.__version__,
        git=git_revision(),
        hardware=hardware(dev),
        seconds_total=time.perf_counter() - t_start,
        settings=dict(n_images=len(ts), offset=offset, resolution=resolution, seed=seed, steps=steps, eta=eta,
                      start_steps=list(start_steps), batch_size=batch_size, noise_seeds="seed + batch index",
                      methods=list(methods), tiers=list(tiers),
                      test_set=str(test_set_path(out_dir, n_images, resolution, seed, offset).name)),
        test_set=dict(split="LFW test (lfw150-splits/test.txt), seeded choice", images=ts.names, degradations=ts.params,
                      grid=f"bfr.degradations.test_grid({resolution}), cycled: image i gets entry i mod "
                           f"{len(test_grid(resolution))}, noise rng default_rng([seed, i]); LQ stored as 8 bits"),
        metrics=scorer.descriptions(),
        weights=weights,
        rows=rows,
        skipped=skipped,
        notes=["Outputs are rounded to 8 bits before every metric.",
               "No bicubic baseline: the degraded input is already resized back to full size by the degradation.",
               "GT row: NIQE of the clean faces (the realism level to aim for); full-reference metrics do not apply."],
    )
    (out_dir / "results.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    figures = _figures(report, ts, samples, out_dir, n_samples)
    report["figures"] = figures
    (out_dir / "results.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    (out_dir / "results.md").write_text(results_markdown(report))
    return report


# ---------------------------------------------------------------------------- writing


def _fmt(m: dict | None, key: str) -> str:
    if m is None:
        return "–"
    if "value" in m:
        return f"{m['value']:.2f}"
    if m.get("mean") is None:
        return "n/a"
    digits = 3 if key in ("ssim", "lpips", "identity", "identity_dlib") else 2
    s = f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f}"
    return s + (f" ({m['missing']} missed)" if m.get("missing") else "")


def _measured(report: dict, key: str) -> bool:
    """Whether the report has this metric (reports list an unavailable one with the reason)."""
    return key in ("psnr", "ssim") or not report["metrics"].get(key, "unavailable").startswith("unavailable")


def results_table(report: dict) -> list[str]:
    """The table's Markdown lines: one row per baseline and method setting, mean ± std over images."""
    keys = ["psnr", "ssim", "niqe"] + [k for k in M.OPTIONAL_METRICS if _measured(report, k)]
    head = ["Method", "Tier", "Setting"] + [COLUMN[k] for k in keys] + ["s / face"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        secs = "–" if r["seconds_per_face"] is None else f"{r['seconds_per_face']:.3f}"
        cells = [r["method"], r["tier"], r["label"]] + [_fmt(r["metrics"].get(k), k) for k in keys] + [secs]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# The per-face changes the paired table reports: PSNR and SSIM (the defaults' rule), then identity and
# landmarks wherever they were measured.
PAIRED = (("psnr", 2, "ΔPSNR (dB) ↑"), ("ssim", 3, "ΔSSIM ↑"), ("identity", 3, "ΔIDS ↑"),
          ("identity_dlib", 3, "ΔID dist (dlib) ↓"), ("landmarks", 2, "ΔLMD (px) ↓"),
          ("landmarks_dlib", 2, "ΔLMD-68 (dlib, px) ↓"))


def paired_gains(report: dict) -> list[str]:
    """Each setting's change over the degraded input, paired per face: mean ± standard error and t = mean / SE.

    The defaults (DifFace's N, IDM's chain length) are the longest setting whose PSNR and SSIM gains both
    have t ≥ 2 on faces kept apart from the test set: a row's own spread (± std in the table) is mostly
    the faces', which pairing removes. Faces a metric missed (NaN) are left out of its pairs."""
    lq = next(r for r in report["rows"] if r["label"] == "input (LQ)")["per_image"]
    keys = [k for k in PAIRED if _measured(report, k[0])]
    head = ["Method", "Tier", "Setting"] + [c for _, _, title in keys for c in (title, "t")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        if r["method"] == "-":
            continue
        cells = [r["method"], r["tier"], r["label"]]
        for key, digits, _ in keys:
            d = np.asarray(r["per_image"][key], dtype=np.float64) - np.asarray(lq[key], dtype=np.float64)
            d = d[np.isfinite(d)]
            if len(d) == 0:
                cells += ["n/a", "–"]
                continue
            se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            t = d.mean() / se if se > 0 else float("nan")
            cells += [f"{d.mean():+.{digits}f} ± {se:.{digits}f}", f"{t:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def results_markdown(report: dict) -> str:
    """The Markdown report: the table (mean ± std over images), then how it was measured."""
    s = report["settings"]
    lines = [f"# {report['title']}", "",
             f"{s['n_images']} LFW test faces at {s['resolution']} px, synthetic degradations from the test grid; "
             "mean ± std over images.", "", *results_table(report), ""]
    if report["skipped"]:
        lines += ["Not evaluated:", ""] + [f"- {x['method']} / {x['tier']}: {x['reason']}" for x in report["skipped"]]
        lines.append("")
    lines += ["## Gains over the input, paired per face", "",
              "Mean ± standard error of (setting − input) over the same faces, and t = mean / SE; ↑ or ↓ says "
              "which way is better (a distance's gain is negative). Defaults are chosen on these: the longest "
              "setting with t ≥ 2 on both PSNR and SSIM, on faces kept apart.", "",
              *paired_gains(report), ""]
    lines += ["## Metrics", ""] + [f"- **{k}**: {v}" for k, v in report["metrics"].items()] + [""]
    hw = report["hardware"]
    lines += [
        "## How it was measured", "",
        f"- Test set: {s['n_images']} faces, a seeded choice (seed {s['seed']}"
        f"{', after the first ' + str(s['offset']) if s.get('offset') else ''}) from the LFW test split "
        f"(people never seen in training), resized to {s['resolution']} px (compact LFW framing); "
        f"{report['test_set']['grid']}. Cached as `{s['test_set']}`.",
        f"- DifFace: ddim{s['steps']} chain, η = {s['eta']}, started steps N ∈ {s['start_steps']}; "
        f"batch size {s['batch_size']}, noise seed = {s['seed']} + batch index.",
        f"- Weights (sha256 prefixes): {json.dumps(report['weights'])}.",
        f"- Hardware: {hw['device']} — {hw.get('gpu', hw['cpu'])}; {counted(hw['torch_threads'], 'torch thread')}; "
        f"torch {hw['torch']}, Python {hw['python']}.",
        f"- Date: {report['date']}; bfr {report['bfr_version']}" + (f" (git {report['git']})" if report['git'] else "")
        + f"; total {report['seconds_total']:.0f} s.",
    ] + [f"- {n}" for n in report["notes"]] + [""]
    if report.get("figures"):
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in report["figures"]] + [""]
    return "\n".join(lines)


def _figures(report: dict, ts: TestSet, samples: dict, out_dir: Path, n_samples: int) -> list[str]:
    files = []
    k = min(n_samples, len(ts))
    to_img = lambda t: t.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()  # noqa: E731
    for (method, tier), outs in samples.items():
        if not outs:
            continue
        columns = ["GT", "input"] + [label for label, _ in outs]
        grid = [[to_img(ts.as_float(ts.gt[i])), to_img(ts.as_float(ts.lq[i]))] + [to_img(o[i]) for _, o in outs]
                for i in range(k)]
        files.append(image_grid(grid, columns, out_dir / f"samples_{method}_{tier}.png").name)

    rows = report["rows"]
    lq_row = next(r for r in rows if r["label"] == "input (LQ)")

    def chart(y_key: str) -> list[Series]:
        """Every setting as a point (NIQE, y_key); DifFace's started steps as one curve per model."""
        def point(r):
            return r["metrics"]["niqe"]["mean"], r["metrics"][y_key]["mean"]

        series = [Series("input (LQ)", [point(lq_row)[0]], [point(lq_row)[1]], marker="s")]
        for method, tier in samples:
            mine = [r for r in rows if r["method"] == method and r["tier"] == tier]
            backbone = [r for r in mine if r["knobs"].get("part") == "backbone"]
            curve = [r for r in mine if "start_step" in r["knobs"]]
            others = [r for r in mine if r not in backbone and r not in curve]
            if backbone:
                x, y = point(backbone[0])
                series.append(Series(f"{method}/{tier} backbone", [x], [y], marker="D"))
            for r in others:
                x, y = point(r)
                series.append(Series(f"{method}/{tier}", [x], [y], marker="^"))
            if curve:
                curve.sort(key=lambda r: r["knobs"]["start_step"])
                series.append(Series(f"{method}/{tier} (started step N)", [point(r)[0] for r in curve],
                                     [point(r)[1] for r in curve], [f"N={r['knobs']['start_step']}" for r in curve]))
        return series

    gt_niqe = rows[0]["metrics"]["niqe"]["mean"]
    niqe_axis = "NIQE (LFW model, lower = more natural)"
    s = report["settings"]
    panels = [Panel("Fidelity vs realism (DifFace: over its started step N)", niqe_axis, "PSNR (dB)",
                    chart("psnr"), vlines=[(gt_niqe, "GT NIQE")])]
    # identity kept vs realism, with the first identity metric this machine has
    for key, axis in (("identity", "ArcFace cosine similarity to GT (higher = same person)"),
                      ("identity_dlib", "dlib descriptor distance to GT (lower = same person)")):
        if lq_row["metrics"].get(key, {}).get("mean") is not None:
            panels.append(Panel("Identity vs realism", niqe_axis, axis, chart(key), vlines=[(gt_niqe, "GT NIQE")]))
            break
    note = f"{s['n_images']} LFW test faces at {s['resolution']} px, ddim{s['steps']}, eta {s['eta']}"
    files.append(line_charts(panels, out_dir / "tradeoff.png", note).name)
    report.setdefault("notes", []).append(
        "Plots drawn with " + ("matplotlib" if have_matplotlib() else "PIL (matplotlib is not installed)") + ".")
    return files
