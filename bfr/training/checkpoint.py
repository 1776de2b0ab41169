"""Resumable training state in safetensors: model, EMA and AdamW moments, plus JSON metadata."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from bfr.weights.load import load_into, read_metadata, save_safetensors


def save_state(path: Path, model: torch.nn.Module, ema: torch.nn.Module, optimizer: torch.optim.Optimizer,
               meta: dict) -> None:
    """Write everything a resumed run needs to one .safetensors file (atomically: see save_safetensors)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}  # save_safetensors moves them to the CPU
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for name, value in state.items():
            tensors[f"optim.{idx}.{name}"] = torch.as_tensor(value)
    save_safetensors(tensors, path, {"meta": json.dumps(meta), "param_groups": json.dumps(opt["param_groups"])})


def load_state(path: Path, model: torch.nn.Module, ema: torch.nn.Module,
               optimizer: torch.optim.Optimizer | None) -> dict:
    """Restore a state written by :func:`save_state`; returns its metadata dict."""
    metadata = read_metadata(path)
    tensors = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    if optimizer is not None:
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, name = k.split(".", 2)
                state.setdefault(int(idx), {})[name] = v
        optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    return json.loads(metadata["meta"])


def recorded_progress(meta: dict[str, str]) -> tuple[int, float]:
    """The steps and training seconds an exported weights file records (0 when it records none)."""
    return int(json.loads(meta.get("steps", "0"))), float(json.loads(meta.get("train_seconds", "0")))


def resume_or_init(state_path: Path, model: torch.nn.Module, ema: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   init_from: str | None = None, continue_count: bool = False) -> tuple[int, float]:
    """Resume a run from its state file, else start from inference weights (e.g. the bundled
    ones, so CPU sessions can continue each other), else from scratch. Returns (step, seconds);
    with ``continue_count`` a start from weights carries on their recorded steps and seconds, so
    schedules, EMA warm-up and the model card count the whole training, not the last session."""
    if state_path.exists():
        meta = load_state(state_path, model, ema, optimizer)
        print(f"resumed from {state_path} at step {meta['step']}")
        return meta["step"], meta["seconds"]
    if init_from:
        weights = {k: v.float() for k, v in load_file(init_from).items()}
        load_into(model, weights)  # a file for another network is a readable error, not a key dump
        load_into(ema, weights)
        print(f"initialised from {init_from}")
        if continue_count:
            return recorded_progress(read_metadata(init_from))
    return 0, 0.0
