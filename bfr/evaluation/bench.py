"""Speed and memory of the methods: seconds per face, peak memory, fp32 vs bf16/fp16, batching and steps,
and whole photos by size.

    >>> from bfr.evaluation import run_bench
    >>> run_bench("runs/bench")        # writes bench.md, bench.json and bench.png there

For every method × tier with weights here, device and precision, and every (faces per
call, network calls per face) pair: ``repeats`` timed calls after ``warmup`` untimed ones; the
report gives the median seconds per face, the peak memory of a call, and the largest
absolute difference of the bf16 output from the fp32 output on the same device, inputs
and noise. Timings are noisy (shared machines, thermal state): read medians and ratios.

Precision is set from outside the method: each network the model holds is wrapped for
the duration of the run, fp32 = autocast off inside the network (also on CUDA, where
bfr's methods otherwise run in bf16), bf16 = torch.autocast(dtype=bfloat16) on the device.

Peak memory: CUDA = torch.cuda.max_memory_allocated() during the call minus the memory
allocated before it (tensors only, not the caching allocator's reserve). CPU = growth of
the process's resident-set high-water mark (Linux VmHWM, reset through
/proc/self/clear_refs before each call) over the RSS before it, after glibc's malloc_trim
has returned freed pages (else a warm allocator hides the growth): everything the call
touched, not only tensors; approximate; "n/a" where /proc does not allow it.

Whole photos (``photo``, ``photo_sizes``): the photo resized to each long side, through the
face pipeline as ``Restorer.restore`` runs it, each stage timed apart (detect + align,
restore the crops with the method's own defaults and precision, paste back): what a user
of the demo waits for, and which stage grows with the picture.
"""

from __future__ import annotations

import ctypes
import datetime
import json
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from bfr.errors import InputError
from bfr.evaluation.eval import build_test_set, counted, git_revision, hardware, step_knob
from bfr.evaluation.plots import Panel, Series, line_charts
from bfr.imageio import load_image, resize

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PHOTO = Path("real-lq") / "whole_imgs" / "00.jpg"  # in the shared data folder: a real photo of two children


def default_devices() -> tuple[str, ...]:
    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


# ------------------------------------------------------------------------- precision


class _AtPrecision(torch.nn.Module):
    """Runs the wrapped network under autocast at ``dtype`` (None: autocast off, float32)."""

    def __init__(self, net: torch.nn.Module, device_type: str, dtype: torch.dtype | None):
        super().__init__()
        self.net = net
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, *args, **kwargs):
        if self.dtype is None:
            with torch.autocast(self.device_type, enabled=False):
                args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
                return self.net(*args, **kwargs)
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.net(*args, **kwargs)

    def __getattr__(self, name):  # image_size, in_channels, …: ask the wrapped network
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("net"), name)


@contextmanager
def precision(model, name: str, device: torch.device):
    """Within the block, every network held by ``model`` (its nn.Module attributes) runs at ``name``."""
    if name not in PRECISIONS:
        raise InputError(f"unknown precision {name!r}; choose one of: {', '.join(PRECISIONS)}")
    nets = {k: v for k, v in vars(model).items() if isinstance(v, torch.nn.Module)}
    try:
        for k, v in nets.items():
            setattr(model, k, _AtPrecision(v, device.type, PRECISIONS[name]))
        yield model
    finally:
        for k, v in nets.items():
            setattr(model, k, v)


# ---------------------------------------------------------------------------- memory


def _proc_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    """Give freed heap pages back to the OS (glibc), so the RSS before a call is its live memory."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of one call on ``device``, in bytes (None where it cannot be measured)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak: int | None = None
        self.how = ("torch.cuda.max_memory_allocated − allocated before" if device.type == "cuda"
                    else "RSS high-water mark (VmHWM, reset via /proc/self/clear_refs) − RSS before, after "
                    "glibc malloc_trim")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device)
        else:
            _malloc_trim()
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self._before = _proc_kib("VmRSS")
            except OSError:
                self._before = None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._before
        elif self._before is not None:
            hwm = _proc_kib("VmHWM")
            self.peak = None if hwm is None else max(0, hwm - self._before) * 1024
        return False


# ------------------------------------------------------------------------------- runs


def _inputs(n: int, resolution: int, seed: int) -> tuple[torch.Tensor, str]:
    """LQ faces from the evaluation's test set, or seeded smooth noise where the LFW data is absent."""
    try:
        ts = build_test_set(n, resolution, seed)
        return ts.lq.float() / 255.0, f"{counted(n, 'LQ face')} of the evaluation test set (seed {seed})"
    except InputError:
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(n, 3, resolution // 8, resolution // 8, generator=g)
        x = torch.nn.functional.interpolate(x, size=resolution, mode="bilinear", align_corners=False)
        return x.clamp(0, 1), "seeded smooth random images (the LFW test split is not here)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_bench(out_dir: str | Path, methods: tuple[str, ...] = ("difface",), tiers: tuple[str, ...] = ("compact",),
              devices: tuple[str, ...] | None = None, precisions: tuple[str, ...] = ("fp32", "bf16"),
              batch_sizes: tuple[int, ...] = (1, 4, 16), start_steps: tuple[int, ...] = (25, 100),
              steps: int = 250, repeats: int = 3, warmup: int = 1, seed: int = 0, progress: bool = True,
              photo: str | Path | None = None,
              photo_sizes: tuple[int, ...] = (960, 1920, 3840)) -> dict:
    """Time every method × tier × device × precision × batch size × started step N; write bench.md/.json/.png.

    batch_sizes: faces per call (scaling with batching); start_steps: network calls per face
    (scaling with steps): DifFace's started step N on the ``ddim{steps}`` chain, a sampler
    from noise's chain length (IDM); one-pass methods (unsupervised) get one row per batch.
    photo / photo_sizes: a whole photo (default: the shared data's ``real-lq/whole_imgs/00.jpg``)
    at each long side in pixels, timed by stage; no sizes, or no photo found, skips that part.
    """
    import bfr
    from bfr.api import method_status
    from bfr.paths import data_dir

    if repeats < 1:
        raise InputError(f"repeats must be ≥ 1, got {repeats}")
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise InputError(f"batch sizes are faces per call, each at least 1; got {list(batch_sizes)}")
    if any(s < 64 for s in photo_sizes):
        raise InputError(f"photo sizes are long sides in pixels, at least 64; got {list(photo_sizes)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    devices = tuple(devices or default_devices())
    photo_img, photo_note = None, "not measured (no photo sizes asked for)"
    if photo_sizes:
        path = Path(photo) if photo else data_dir() / PHOTO
        if path.is_file():
            photo_img = load_image(path)
            photo_note = f"{path.name} ({photo_img.shape[1]}×{photo_img.shape[0]})"
        elif photo:
            raise InputError(f"photo not found: {path}")
        else:
            photo_note = f"not measured: {path} is not here (give one with photo=…)"
    for d in devices:
        if d.startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"device {d!r} asked for, but CUDA is not available here")
    records, photo_records, skipped = [], [], []
    inputs_note = None
    for method in methods:
        for tier in tiers:
            ok, why = method_status(method, tier)
            if not ok:
                skipped.append(dict(method=method, tier=tier, reason=why))
                continue
            for dev_name in devices:
                dev = torch.device(dev_name)
                restorer = bfr.load(method, tier, device=dev_name)
                model = restorer.model
                lq, inputs_note = _inputs(max(batch_sizes), model.resolution, seed)
                fp32_out = {}
                ns = start_steps if step_knob(model) else (None,)
                for prec in precisions:
                    for b in batch_sizes:
                        for n in ns:
                            rec = _time_one(model, lq[:b], n, steps, prec, dev, repeats, warmup, seed)
                            rec.update(method=method, tier=tier, device=dev_name, precision=prec, batch=b,
                                       start_step=n)
                            out = rec.pop("output")
                            if prec == "fp32":
                                fp32_out[(b, n)] = out
                            if prec != "fp32" and (b, n) in fp32_out:
                                rec["max_abs_err_vs_fp32"] = float((out - fp32_out[(b, n)]).abs().max())
                            records.append(rec)
                            if progress:
                                calls = "1 pass" if n is None else f"calls={n}"
                                print(f"{method}/{tier} {dev_name} {prec} batch {b} {calls}: "
                                      f"{rec['seconds_per_face']:.4f} s/face", flush=True)
                for size in photo_sizes if photo_img is not None else ():
                    rec = _time_photo(restorer, photo_img, size, dev, repeats, warmup, seed)
                    rec.update(method=method, tier=tier, device=dev_name)
                    photo_records.append(rec)
                    if progress:
                        print(f"{method}/{tier} {dev_name} photo {rec['width']}×{rec['height']}, {rec['faces']} "
                              f"faces: {rec['seconds_total']:.3f} s", flush=True)
                del model, restorer
    _ratios(records)
    report = dict(
        title="bfr benchmark",
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        bfr_version=bfr.__version__, git=git_revision(),
        hardware={d: hardware(torch.device(d)) for d in devices},
        settings=dict(methods=list(methods), tiers=list(tiers), devices=list(devices), precisions=list(precisions),
                      batch_sizes=list(batch_sizes), start_steps=list(start_steps), steps=steps, repeats=repeats,
                      warmup=warmup, seed=seed, inputs=inputs_note, photo=photo_note,
                      photo_sizes=list(photo_sizes)),
        memory={d: PeakMemory(torch.device(d)).how for d in devices},
        records=records, photo_records=photo_records, skipped=skipped,
    )
    (out_dir / "bench.json").write_text(json.dumps(report, indent=1))
    report["figures"] = [_plot(report, out_dir)] + ([_plot_photo(report, out_dir)] if photo_records else [])
    (out_dir / "bench.json").write_text(json.dumps(report, indent=1))
    (out_dir / "bench.md").write_text(bench_markdown(report))
    return report


def _time_one(model, lq: torch.Tensor, n: int | None, steps: int, prec: str, dev: torch.device,
              repeats: int, warmup: int, seed: int) -> dict:
    knob = step_knob(model)
    knobs = {"start_step": n, "steps": steps} if knob == "start_step" else {"steps": n} if knob == "steps" else {}

    def call():
        return model.restore(lq, seed=seed, **knobs)

    times, peaks = [], []
    with precision(model, prec, dev):
        for _ in range(warmup):
            call()
        for _ in range(repeats):
            with PeakMemory(dev) as mem:
                _sync(dev)
                t0 = time.perf_counter()
                out = call()
                _sync(dev)
                times.append(time.perf_counter() - t0)
            peaks.append(mem.peak)
    median = statistics.median(times)
    peak = None if any(p is None for p in peaks) else max(peaks)
    return dict(times=times, seconds_median=median, seconds_per_face=median / len(lq),
                faces_per_second=len(lq) / median, peak_memory_bytes=peak, output=out.float().cpu())


def _time_photo(restorer, img: np.ndarray, long_side: int, dev: torch.device, repeats: int, warmup: int,
                seed: int) -> dict:
    """Median seconds of each stage of ``Restorer.restore`` on ``img`` resized to ``long_side``."""
    h, w = img.shape[:2]
    scale = long_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    photo = resize(img, (size[1], size[0]))  # area when shrinking, bicubic when enlarging
    pipeline = restorer.face_pipeline()
    stages: dict[str, list[float]] = {"detect": [], "restore": [], "paste": []}
    faces = 0
    for k in range(warmup + repeats):
        t0 = time.perf_counter()
        found = pipeline.crops(photo)
        t1 = time.perf_counter()
        restored = restorer.restore_crops([f.crop for f in found], seed=seed) if found else []
        _sync(dev)
        t2 = time.perf_counter()
        if found:
            pipeline.paste(photo, restored, [f.affine for f in found])
        t3 = time.perf_counter()
        faces = len(found)
        if k >= warmup:
            for name, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                stages[name].append(dt)
    medians = {f"seconds_{k}": statistics.median(v) for k, v in stages.items()}
    return dict(width=size[0], height=size[1], megapixels=size[0] * size[1] / 1e6, faces=faces, **medians,
                seconds_total=sum(medians.values()), detector=pipeline.detector.name, paste=pipeline.parse_note)


def _ratios(records: list[dict]) -> None:
    """Speed-up of each record over fp32 (same device, batch, N) and over batch 1 (same everything else)."""
    def key(r, **over):
        d = {k: r[k] for k in ("method", "tier", "device", "precision", "batch", "start_step")}
        d.update(over)
        return tuple(d.values())

    index = {key(r): r for r in records}
    for r in records:
        ref = index.get(key(r, precision="fp32"))
        r["speedup_vs_fp32"] = ref["seconds_per_face"] / r["seconds_per_face"] if ref else None
        one = index.get(key(r, batch=min(x["batch"] for x in records)))
        r["speedup_vs_smallest_batch"] = one["seconds_per_face"] / r["seconds_per_face"] if one else None


def _mib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2 ** 20:.0f} MiB"


def bench_markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# {report['title']}", "",
             f"Median of {counted(s['repeats'], 'timed call')} (after {s['warmup']} untimed) per row; calls = network "
             f"calls per face (DifFace: started step N on a ddim{s['steps']} chain; IDM: chain length); "
             f"inputs: {s['inputs']}.", "",
             "| Method | Tier | Device | Precision | Faces / call | Calls | s / face (median) | faces / s | "
             "× vs fp32 | × vs smallest batch | Peak memory | max abs Δ vs fp32 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["records"]:
        err = r.get("max_abs_err_vs_fp32")
        lines.append("| " + " | ".join([
            r["method"], r["tier"], r["device"], r["precision"], str(r["batch"]),
            "1 pass" if r["start_step"] is None else str(r["start_step"]),
            f"{r['seconds_per_face']:.4f}", f"{r['faces_per_second']:.2f}",
            "–" if r["speedup_vs_fp32"] is None else f"{r['speedup_vs_fp32']:.2f}",
            "–" if r["speedup_vs_smallest_batch"] is None else f"{r['speedup_vs_smallest_batch']:.2f}",
            _mib(r["peak_memory_bytes"]), "–" if err is None else f"{err:.4f}"]) + " |")
    lines.append("")
    if report.get("photo_records"):
        lines += [f"Whole photo: {s['photo']}, resized to each long side; median seconds of each stage over "
                  f"{counted(s['repeats'], 'call')}, the method's own defaults and precision:", "",
                  "| Method | Tier | Device | Size | Megapixels | Faces | detect + align (s) | restore (s) | "
                  "paste (s) | total (s) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in report["photo_records"]:
            lines.append(f"| {r['method']} | {r['tier']} | {r['device']} | {r['width']}×{r['height']} | "
                         f"{r['megapixels']:.2f} | {r['faces']} | {r['seconds_detect']:.3f} | "
                         f"{r['seconds_restore']:.3f} | {r['seconds_paste']:.3f} | {r['seconds_total']:.3f} |")
        timed = sorted({f"{r['method']}/{r['tier']}: {r['detector']} detector, {r['paste']}"
                        for r in report["photo_records"]})
        lines += ["", "Timed with: " + "; ".join(timed) + "."]
        lines.append("")
    elif s.get("photo"):
        lines += [f"Whole photo: {s['photo']}.", ""]
    if report["skipped"]:
        lines += ["Not measured:", ""] + [f"- {x['method']} / {x['tier']}: {x['reason']}" for x in report["skipped"]]
        lines.append("")
    lines += ["## How it was measured", "",
              "- Precision: each network of the method is wrapped for the run; fp32 = autocast off inside it, "
              "bf16 / fp16 = torch.autocast(bfloat16 / float16) on the device. max abs Δ: largest |output − fp32 "
              "output| pixel (0–1 scale), same inputs and noise seed.",
              "- s / face = median wall time of one call / faces in it (CUDA synchronised before and after)."]
    lines += [f"- Peak memory on {d}: {how}." for d, how in report["memory"].items()]
    for d, hw in report["hardware"].items():
        threads = counted(hw["torch_threads"], "torch thread")
        lines.append(f"- {d}: {hw.get('gpu', hw['cpu'])}; {threads}; torch {hw['torch']}.")
    lines += [f"- Date: {report['date']}; bfr {report['bfr_version']}"
              + (f" (git {report['git']})" if report["git"] else "") + ".",
              "- Timings are noisy: compare medians and ratios measured in the same run, never across machines.", ""]
    if report.get("figures"):
        lines += [f"![bench]({f})" for f in report["figures"]] + [""]
    return "\n".join(lines)


def _plot(report: dict, out_dir: Path) -> str:
    recs = report["records"]
    s = report["settings"]
    n_max, b_max = max(s["start_steps"]), max(s["batch_sizes"])
    groups = sorted({(r["method"], r["tier"], r["device"], r["precision"]) for r in recs})
    by_batch, by_steps = [], []
    for g in groups:
        mine = [r for r in recs if (r["method"], r["tier"], r["device"], r["precision"]) == g]
        a = sorted((r for r in mine if r["start_step"] in (n_max, None)), key=lambda r: r["batch"])
        b = sorted((r for r in mine if r["batch"] == b_max and r["start_step"] is not None),
                   key=lambda r: r["start_step"])
        name = "/".join(g)
        by_batch.append(Series(name, [r["batch"] for r in a], [r["seconds_per_face"] for r in a]))
        by_steps.append(Series(name, [r["start_step"] for r in b], [r["seconds_per_face"] for r in b]))
    by_steps = [s for s in by_steps if s.x]
    panels = [Panel(f"Batching ({n_max} network calls per face)", "faces per call", "s / face (median)", by_batch,
                    logx=True, logy=True),
              Panel(f"Steps (faces per call = {b_max})", "network calls per face (DifFace: N; IDM: steps)",
                    "s / face (median)", by_steps, logx=True, logy=True)]
    return line_charts(panels, out_dir / "bench.png", f"medians of {counted(s['repeats'], 'call')}").name


def _plot_photo(report: dict, out_dir: Path) -> str:
    recs = report["photo_records"]
    groups = sorted({(r["method"], r["tier"], r["device"]) for r in recs})
    panels = []
    for stage in ("total", "detect", "restore", "paste"):
        series = []
        for g in groups:
            mine = sorted((r for r in recs if (r["method"], r["tier"], r["device"]) == g),
                          key=lambda r: r["megapixels"])
            series.append(Series("/".join(g), [r["megapixels"] for r in mine],
                                 [r[f"seconds_{stage}"] for r in mine]))
        title = "Whole photo" if stage == "total" else {"detect": "Detect + align", "restore": "Restore the faces",
                                                         "paste": "Paste back"}[stage]
        panels.append(Panel(title, "megapixels", "s (median)", series, logx=True, logy=True))
    repeats = counted(report["settings"]["repeats"], "call")
    return line_charts(panels, out_dir / "bench_photo.png", f"medians of {repeats}").name
