"""Model cards for the bundled compact weights: what was trained, on what, how long, how well.

Numbers come from the run's own log and metadata, never typed by hand.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bfr.paths import COMPACT_WEIGHTS_DIR
from bfr.training.common import JsonlLog
from bfr.training.ema import MAX_DECAY

DATA_NOTE = (
    "Trained on the LFW train split (`lfw150-splits/train.txt`, 6,945 deep-funneled 150×150 crops of "
    "4,281 people; the 756 test images of 428 other people were never used for training), resized to "
    "the model resolution with area resampling, random horizontal flips. LFW has no formal licence: "
    "these weights are for research and demonstration only."
)


def write_run_config(out: Path, config: dict, resumed: bool) -> None:
    """Write a run's ``config.json``, keeping the distinct ``--train-images`` values of the invocations it resumes.

    A run resumed without the flag after a quick start still has those steps in it: the card must say so. A run
    that starts afresh in an old folder keeps none of them."""
    path = Path(out) / "config.json"
    history = []
    if resumed and path.is_file():
        before = json.loads(path.read_text())
        history = before.get("train_images_runs", [before.get("train_images")])
    current = config.get("train_images")
    config = {**config, "train_images_runs": history + ([current] if current not in history else [])}
    path.write_text(json.dumps(config, indent=2))


RUN_CONTROLS = ("max_steps", "max_minutes", "eval_every", "sample_every", "save_every", "cache_every", "out_dir",
                "eval_dir")


def settings_changes(out: Path, config: dict, step: int) -> list[dict]:
    """The settings a resumed run changed, per resume: ``[{"step": s, "lr": [old, new], …}, …]``, carried over
    from the run's earlier ``config.json`` so a card can say that the run did not use one setting throughout
    (when to stop or log, ``RUN_CONTROLS``, is not a setting of the weights)."""
    path = Path(out) / "config.json"
    if step == 0 or not path.is_file():
        return []
    before = json.loads(path.read_text())
    changes = before.get("changes", [])
    if changes and changes[-1]["step"] == step:  # resumed again before any step: compare with the values before
        before.update({k: v[0] for k, v in changes.pop().items() if k != "step"})
    config = json.loads(json.dumps(config))  # as it will be read back: tuples become lists
    changed = {k: [before[k], v] for k, v in config.items()
               if k not in ("changes", *RUN_CONTROLS) and k in before and before[k] != v}
    return changes + ([{"step": step, **changed}] if changed else [])


def changes_line(changes: list[dict]) -> str | None:
    """A card line for ``settings_changes`` (None when the run kept its settings)."""
    if not changes:
        return None
    parts = ["at step {:,}: {}".format(c["step"], ", ".join(f"{k} {v[0]} → {v[1]}" for k, v in c.items()
                                                             if k != "step")) for c in changes]
    return "- settings changed when the run was resumed (the values above are the last ones): " + "; ".join(parts)


def data_note(config: dict) -> str:
    """DATA_NOTE, led by a warning when the run trained on only some of the faces (``--train-images``)."""
    runs = config.get("train_images_runs", [config.get("train_images")])
    subsets = [n for n in runs if n is not None]
    if not subsets:
        return DATA_NOTE
    n = max(subsets)
    if len(subsets) == len(runs):
        return (f"**A quick run on only the first {n} train faces** (`--train-images {n}`), not weights to ship. "
                + DATA_NOTE)
    return (f"**Part of this run trained on only the first {n} train faces** (invocations with `--train-images`; "
            "the others on all of them), not weights to ship. " + DATA_NOTE)


def format_duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def write_card(run_dir: Path, weights: Path, dest: Path, title: str, summary: str, extra_sections: dict[str, str],
               samples_png: str | None = None, *, command: str) -> Path:
    """Copy ``weights`` (and a sample grid) to ``dest`` and write ``<name>.md`` beside them."""
    from bfr.weights import read_metadata

    dest.mkdir(parents=True, exist_ok=True)
    target = dest / weights.name
    if weights.resolve() != target.resolve():
        shutil.copyfile(weights, target)
    meta = read_metadata(target)
    config = json.loads((run_dir / "config.json").read_text())
    log = JsonlLog(run_dir / "log.jsonl").read()
    bundled = dest.resolve() == COMPACT_WEIGHTS_DIR.resolve()
    init = target.stem if bundled else str(target)  # a bare name means the bundled weights to --init-from
    lines = [f"# {title}", "", summary, "", "## Training", "",
             f"- steps: {json.loads(meta['steps'])}, batch {config['batch_size']}, AdamW lr {config['lr']} "
             f"(warm-up {config['warmup_steps']}, cosine over {config['total_steps']}), EMA with warm-up (decay "
             f"1 − (1 + step)^−⅔, capped at {MAX_DECAY})",
             f"- precision: {config['mixed_precision']}; hardware: {json.loads(meta['hardware'])}; "
             f"training time: {format_duration(json.loads(meta['train_seconds']))}",
             f"- network config: `{meta['config']}`",
             f"- reproduce: `python -m bfr {command}` (resumable); a later run continues from these weights with "
             f"`--init-from {init}` (`--schedule-steps N` anneals it by step N).",
             "", "## Data", "", data_note(config), ""]
    if log:
        keys = [k for k in log[-1] if k not in ("time", "lr", "ema_decay")]
        lines += ["## Log (every evaluation)", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        rows = log[:: max(1, len(log) // 12)]
        for rec in rows + ([log[-1]] if rows[-1] is not log[-1] else []):
            lines.append("| " + " | ".join(f"{rec[k]:.4g}" if isinstance(rec[k], float) else str(rec[k])
                                            for k in keys) + " |")
        lines.append("")
    for heading, text in extra_sections.items():
        lines += [f"## {heading}", "", text, ""]
    if samples_png:
        shutil.copyfile(run_dir / samples_png, dest / f"{target.stem}_samples.png")
        lines += ["## Samples", "", f"![samples]({target.stem}_samples.png)", ""]
    card = dest / f"{target.stem}.md"
    card.write_text("\n".join(lines))
    return card
