"""Reading and writing state dicts safely, and loading them into a model with a readable verdict.

bfr writes safetensors only. Third-party ``.pth`` checkpoints are read with
``torch.load(weights_only=True)``, which refuses pickled code, so a malicious file cannot
run anything.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from bfr.errors import BfrError, InputError, WeightsUnavailableError
from bfr.weights.catalog import WeightSpec
from bfr.weights.hub import mark_unreadable, resolve

# Containers trainers wrap a state dict in, most specific first (BasicSR keeps EMA in "params_ema").
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model")
SAFETENSORS_SUFFIXES = (".safetensors",)


class StateDictMismatchError(BfrError, RuntimeError):
    """A state dict does not fit the model: missing, unexpected or mis-shaped tensors."""


def save_safetensors(
    state_dict: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, object] | None = None
) -> Path:
    """Write tensors (moved to CPU, contiguous) and string metadata to a .safetensors file, through a
    temporary file renamed into place, so a run stopped mid-write never leaves a half file.

    Non-string metadata values are stored as JSON. Tensors sharing storage are copied, since
    the format forbids aliasing.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seen: set[int] = set()
    tensors = {}
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise InputError(f"state dict entry {k!r} is a {type(v).__name__}, not a tensor")
        t = v.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        tensors[k] = t
    meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write leaves the earlier file as it was, and no half file
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata stored in a .safetensors header (empty dict when none)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except SafetensorError as e:
        raise InputError(f"{path} is not a readable .safetensors file ({e})") from e


def unwrap_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Dig the tensor dict out of common checkpoint wrappers and drop a DataParallel ``module.`` prefix."""
    while isinstance(obj, Mapping) and not _all_tensors(obj):
        inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            keys = ", ".join(map(repr, list(obj)[:10]))
            raise InputError(f"{source} is not a state dict and has none under {WRAPPER_KEYS}; top-level keys: {keys}")
        obj = inner
    if not isinstance(obj, Mapping):
        raise InputError(f"{source} holds a {type(obj).__name__}, not a state dict")
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _all_tensors(d: Mapping) -> bool:
    return all(isinstance(v, torch.Tensor) for v in d.values())


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors, or from a third-party .pth via weights_only torch.load."""
    path = Path(path)
    if path.suffix in SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as e:
            raise InputError(f"{path} is not a readable .safetensors file ({e})") from e
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # a zip checkpoint, or a legacy pickle
        raise InputError(f"{path} is not a PyTorch checkpoint (.pth/.pt) or a .safetensors file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):
            raise InputError(f"{path} is not a readable PyTorch checkpoint ({str(e).splitlines()[0]})") from e
        raise InputError(
            f"{path} contains pickled Python objects besides tensors, so bfr will not load it "
            "(torch.load weights_only=True refused it). If you trust the file, convert it to "
            f".safetensors in a separate session. Details: {str(e).splitlines()[0]}"
        ) from e
    except (RuntimeError, EOFError, ValueError, KeyError, IndexError) as e:  # a damaged or truncated checkpoint
        raise InputError(f"{path} is not a readable PyTorch checkpoint ({str(e).splitlines()[0]})") from e
    return unwrap_state_dict(obj, source=str(path))


def load_fetched(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """``load_state_dict`` for an optional network bfr found or fetched: a file it cannot read (a broken or
    foreign download) is a WeightsUnavailableError naming it, so that callers do without it as for a missing one."""
    try:
        return load_state_dict(path)
    except (InputError, OSError) as e:  # the error names the file
        err = WeightsUnavailableError(f"{what} is unavailable: {e}; delete the file to fetch it again")
        err.why = f"{e}; delete the file to fetch it again"
        if Path(path).is_file():
            mark_unreadable(path, err.why)
        raise err from e


@dataclass
class LoadReport:
    """What did not fit when loading a state dict into a model."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # key, file, model

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 10) -> str:
        parts = []
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                more = f", … (+{len(items) - limit} more)" if len(items) > limit else ""
                parts.append(f"{len(items)} {label} keys: {', '.join(items[:limit])}{more}")
        if self.mismatched:
            shown = "; ".join(f"{k}: file {list(a)} vs model {list(b)}" for k, a, b in self.mismatched[:limit])
            more = f"; … (+{len(self.mismatched) - limit} more)" if len(self.mismatched) > limit else ""
            parts.append(f"{len(self.mismatched)} shape mismatches: {shown}{more}")
        return "\n".join(parts) if parts else "all keys match"


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> LoadReport:
    """Copy `state_dict` into `model`; with `strict`, any misfit raises StateDictMismatchError.

    Non-strict loads every tensor whose key and shape fit and reports the rest.
    """
    own = model.state_dict()
    report = LoadReport(
        missing=[k for k in own if k not in state_dict],
        unexpected=[k for k in state_dict if k not in own],
        mismatched=[
            (k, tuple(v.shape), tuple(own[k].shape))
            for k, v in state_dict.items()
            if k in own and tuple(v.shape) != tuple(own[k].shape)
        ],
    )
    if strict and not report.ok:
        raise StateDictMismatchError(
            f"weights do not fit {type(model).__name__} (wrong file or wrong config?):\n{report.describe()}"
        )
    bad = {k for k, _, _ in report.mismatched}
    fitting = {k: v for k, v in state_dict.items() if k in own and k not in bad}
    model.load_state_dict(fitting, strict=strict)
    return report


def load_pretrained(
    model: nn.Module, weights: str | WeightSpec, path: str | Path | None = None, strict: bool = True
) -> LoadReport:
    """Resolve catalog weights (or an explicit `path`), read them and load them into `model`."""
    return load_into(model, load_state_dict(resolve(weights, path)), strict=strict)
