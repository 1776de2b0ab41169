"""Write an evaluation's table into the README, so that the numbers shown are the numbers measured.

The README marks the block with two HTML comments (invisible on GitHub and the Hub); everything
between them is replaced by the command that reproduces the run, what it ran on, and the table.
The prose around the block is the authors' and is never touched.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from bfr.errors import InputError
from bfr.evaluation.eval import results_table

BEGIN = "<!-- bfr eval: begin (written by `python -m bfr eval … --readme`; edit the text outside) -->"
END = "<!-- bfr eval: end -->"


def check_markers(readme: str | Path) -> Path:
    """The README path, once it is known to hold the block's markers (so a long run is not wasted)."""
    path = Path(readme)
    if not path.is_file():
        raise InputError(f"--readme: {path} is not a file")
    text = path.read_text(encoding="utf-8")
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise InputError(f"--readme: {path} needs one results block, the line {BEGIN!r} and later the line "
                         f"{END!r}")
    return path


def reproduce_command(report: dict, out_dir: str | Path, readme: str | Path | None = None) -> str:
    """The `python -m bfr eval` command line that gives this report (settings that differ from the CLI's
    defaults, read from the CLI's own parser, and the device when it was not the CPU)."""
    from bfr.api import METHODS
    from bfr.cli import build_parser

    s = report["settings"]
    cli = vars(build_parser().parse_args(["eval", "-o", str(out_dir)]))
    args = ["python", "-m", "bfr", "eval", "-o", str(out_dir)]
    if s["n_images"] != cli["n_images"]:
        args += ["--n-images", str(s["n_images"])]
    if sorted(s["methods"]) != sorted(METHODS):
        args += ["--methods", *s["methods"]]
    for flag, key in (("--tiers", "tiers"), ("--start-steps", "start_steps")):
        if list(s[key]) != list(cli[key]):
            args += [flag, *map(str, s[key])]
    for flag, key in (("--offset", "offset"), ("--seed", "seed"), ("--resolution", "resolution"),
                      ("--steps", "steps"), ("--eta", "eta"), ("--batch-size", "batch_size")):
        if s[key] != cli[key]:
            args += [flag, f"{s[key]:g}" if isinstance(s[key], float) else str(s[key])]
    if report["hardware"]["device"] != "cpu":
        args += ["--device", report["hardware"]["device"]]
    if readme is not None:
        args += ["--readme", str(readme)]
    return shlex.join(args)


def results_block(report: dict, out_dir: str | Path, readme: str | Path | None = None) -> str:
    """The block: command, date, hardware and weights in one paragraph, then the table."""
    s, hw = report["settings"], report["hardware"]
    weights = sorted({f"{name} {sha}" for ids in report["weights"].values() for name, sha in ids.items()})
    where = hw.get("gpu", hw["cpu"])
    threads = hw["torch_threads"]
    difface = (f"DifFace on the ddim{s['steps']} chain with η = {s['eta']:g}, one row per started step N; "
               if "difface" in s["methods"] else "")
    lines = [
        f"`{reproduce_command(report, out_dir, readme)}` on {report['date'][:10]}"
        + (f" (git {report['git']})" if report.get("git") else "")
        + f", {hw['device']} ({where}, {threads} torch thread{'s' if threads != 1 else ''}), "
        f"{report['seconds_total'] / 60:.0f} min in all: {s['n_images']} LFW test faces (people never seen in "
        f"training) at {s['resolution']} px, each degraded by one entry of the published test grid (scaled to that "
        f"size), fixed seeds; {difface}every {'other ' if difface else ''}method at its own defaults. Weights "
        f"(sha256 prefixes): {', '.join(weights) or 'none'}.",
        "",
        *results_table(report),
    ]
    if report.get("skipped"):
        lines += ["", "Not evaluated: " + "; ".join(f"{x['method']} / {x['tier']} ({x['reason']})"
                                                   for x in report["skipped"]) + "."]
    return "\n".join(lines)


def update_readme(readme: str | Path, report: dict, out_dir: str | Path) -> Path:
    """Replace the README's results block with this report's; the rest of the file is kept as it is."""
    path = check_markers(readme)
    text = path.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    block = results_block(report, out_dir, readme)
    path.write_text(f"{head}{BEGIN}\n{block}\n\n{END}{tail}", encoding="utf-8")  # a blank line ends the table
    return path
