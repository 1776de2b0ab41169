"""Figures for the evaluation and the benchmark: image grids (PIL) and line charts.

Line charts use matplotlib when it is installed (it is not a bfr requirement) and fall
back to a plain PIL drawing otherwise, so reports always come with their figures.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def have_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


# ------------------------------------------------------------------------------ grids


def image_grid(rows: list[list[np.ndarray]], columns: list[str], path: str | Path, scale: int = 2,
               pad: int = 2) -> Path:
    """Tile uint8 HWC images (rows × columns, same size) with a header of column names; nearest upscaling."""
    h, w = rows[0][0].shape[:2]
    th, tw = h * scale, w * scale
    font = ImageFont.load_default()
    header = 14 * max(1, max(len(_wrap(c, tw)) for c in columns))
    canvas = Image.new("RGB", (len(columns) * (tw + pad) + pad, header + len(rows) * (th + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(columns):
        for k, line in enumerate(_wrap(name, tw)):
            draw.text((pad + j * (tw + pad) + 2, 2 + 14 * k), line, fill="black", font=font)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            tile = Image.fromarray(img).resize((tw, th), Image.NEAREST)
            canvas.paste(tile, (pad + j * (tw + pad), header + pad + i * (th + pad)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def _wrap(text: str, width_px: int, char_px: int = 6) -> list[str]:
    """Greedy word wrap for PIL's default bitmap font (about 6 px per character)."""
    per_line = max(4, width_px // char_px)
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= per_line:
            lines[-1] += " " + word
        else:
            lines.append(word[:per_line])
    return lines or [""]


# ------------------------------------------------------------------------ line charts


@dataclass
class Series:
    """One line (or a single marker when it has one point); ``labels`` annotate the points."""

    name: str
    x: list[float]
    y: list[float]
    labels: list[str] = field(default_factory=list)
    marker: str = "o"


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    series: list[Series]
    logx: bool = False
    logy: bool = False
    vlines: list[tuple[float, str]] = field(default_factory=list)  # (x, label)


def line_charts(panels: list[Panel], path: str | Path, note: str = "") -> Path:
    """Draw panels side by side into a PNG, with matplotlib if installed, else PIL."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if have_matplotlib():
        _charts_matplotlib(panels, path, note)
    else:
        _charts_pil(panels, path, note)
    return path


def _charts_matplotlib(panels: list[Panel], path: Path, note: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for s in panel.series:
            ax.plot(s.x, s.y, marker=s.marker, linestyle="-" if len(s.x) > 1 else "none", label=s.name)
            for x, y, lab in zip(s.x, s.y, s.labels, strict=False):
                ax.annotate(lab, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        for x, lab in panel.vlines:
            ax.axvline(x, color="grey", linestyle=":", linewidth=1)
            ax.annotate(lab, (x, 1), xycoords=("data", "axes fraction"), xytext=(2, -12),
                        textcoords="offset points", fontsize=8, color="grey")
        if panel.logx:
            ax.set_xscale("log", base=2)
        if panel.logy:
            ax.set_yscale("log")
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        if panel.series:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "nothing measured", transform=ax.transAxes, ha="center", color="grey")
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, color="dimgrey")
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _charts_pil(panels: list[Panel], path: Path, note: str) -> None:
    """A plain scatter/line chart per panel: axes with min/max ticks, a legend, point labels."""
    pw, ph, m = 520, 400, 56
    canvas = Image.new("RGB", (pw * len(panels), ph + 18), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for k, panel in enumerate(panels):
        ox = k * pw
        fx = (lambda v: math.log2(v)) if panel.logx else (lambda v: v)
        fy = (lambda v: math.log10(v)) if panel.logy else (lambda v: v)
        xs = [fx(v) for s in panel.series for v in s.x] + [fx(v) for v, _ in panel.vlines]
        ys = [fy(v) for s in panel.series for v in s.y]
        if not xs or not ys:
            continue
        x0, x1 = min(xs), max(xs)
        y0, y1 = min(ys), max(ys)
        x0, x1 = (x0 - 1, x1 + 1) if x0 == x1 else (x0 - 0.05 * (x1 - x0), x1 + 0.05 * (x1 - x0))
        y0, y1 = (y0 - 1, y1 + 1) if y0 == y1 else (y0 - 0.05 * (y1 - y0), y1 + 0.05 * (y1 - y0))

        def px(x, y, x0=x0, x1=x1, y0=y0, y1=y1, ox=ox):
            return (ox + m + (x - x0) / (x1 - x0) * (pw - 2 * m), ph - m - (y - y0) / (y1 - y0) * (ph - 2 * m))

        draw.rectangle([ox + m, m, ox + pw - m, ph - m], outline="black")
        draw.text((ox + m, 8), panel.title, fill="black", font=font)
        draw.text((ox + pw // 2 - 3 * len(panel.xlabel), ph - 20), panel.xlabel, fill="black", font=font)
        draw.text((ox + 4, m - 16), panel.ylabel, fill="black", font=font)
        for val in (x0, x1):
            shown = 2 ** val if panel.logx else val
            draw.text((px(val, y0)[0], ph - m + 4), f"{shown:.3g}", fill="black", font=font)
        for val in (y0, y1):
            shown = 10 ** val if panel.logy else val
            draw.text((ox + 4, px(x0, val)[1] - 6), f"{shown:.3g}", fill="black", font=font)
        for xv, lab in panel.vlines:
            a, b = px(fx(xv), y0), px(fx(xv), y1)
            draw.line([a, b], fill="grey")
            draw.text((a[0] + 2, m + 2), lab, fill="grey", font=font)
        for i, s in enumerate(panel.series):
            color = _COLORS[i % len(_COLORS)]
            pts = [px(fx(x), fy(y)) for x, y in zip(s.x, s.y, strict=True)]
            if len(pts) > 1:
                draw.line(pts, fill=color, width=2)
            for (x, y), lab in zip(pts, (s.labels + [""] * len(pts))[: len(pts)], strict=True):
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
                if lab:
                    draw.text((x + 4, y - 12), lab, fill=color, font=font)
            legend = f"o {s.name}"
            draw.text((ox + pw - m - 6 - 6 * len(legend), m + 6 + 12 * i), legend, fill=color, font=font)
    if note:
        draw.text((4, ph + 2), note, fill="dimgrey", font=font)
    canvas.save(path)
