"""Small pieces every training loop uses: image grids, JSON-lines logs, learning-rate warm-up, export,
the fixed held-out loss, the optional perceptual loss."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bfr.errors import WeightsUnavailableError
from bfr.weights.load import save_safetensors


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> None:
    """Save a (N,3,H,W) batch in [-1, 1] as one PNG grid."""
    from torchvision.utils import make_grid

    grid = make_grid(images.detach().float().cpu().clamp(-1, 1) * 0.5 + 0.5, nrow=nrow, padding=2, pad_value=1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)


class JsonlLog:
    """Append-only metrics log, one JSON object per line (easy to plot, survives crashes)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record) -> None:
        record.setdefault("time", time.time())
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def warmup_cosine(step: int, base_lr: float, warmup: int, total: int, final_frac: float = 0.1) -> float:
    """Linear warm-up, then cosine decay to ``final_frac`` of the base rate at ``total`` steps."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def rewarm(step: int, first_step: int | None, steps: int = 100) -> float:
    """Learning-rate factor for a run that starts from exported weights with fresh AdamW moments
    (``first_step``: its first step; None when the optimizer state was resumed or training starts
    at 0): ramp up over ``steps`` so the first, poorly estimated updates do not knock trained
    weights off their minimum."""
    if not first_step:
        return 1.0
    return min(1.0, (step - first_step + 1) / steps)


def export_weights(model: torch.nn.Module | Mapping[str, torch.Tensor], config: dict, path: Path, kind: str,
                   extra: dict | None = None) -> Path:
    """Write inference weights (a network's, or a state dict such as FLIPNET's adapters) in fp16 safetensors,
    with the network config and every ``extra`` value JSON-encoded in the metadata."""
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    tensors = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    metadata = {"kind": kind, "config": json.dumps(config), **{k: json.dumps(v) for k, v in (extra or {}).items()}}
    return save_safetensors(tensors, path, metadata)


def hardware() -> str:
    """A one-line description of where a run happened, for model cards."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    n = torch.get_num_threads()
    return f"CPU ({cpu}, {os.cpu_count()} cores, {n} {'thread' if n == 1 else 'threads'})"


def tune_for_cuda() -> None:
    """cuDNN autotuning and TF32 matmuls: training batches keep one shape, so the search pays off (no-op on CPU)."""
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def reseed(seed: int, step: int, *generators: torch.Generator) -> None:
    """Seed the global RNG and the data generators from (seed, step) when a run resumes at ``step`` > 0, so
    it draws new batches, timesteps and noise instead of replaying the first session's (a fresh run is
    unchanged)."""
    if step > 0:
        torch.manual_seed(seed + step)
        for g in generators:
            g.manual_seed(seed + step)


class StopSignal:
    """Stop a loop cleanly on SIGINT/SIGTERM or after ``max_minutes`` (so the last state is saved); a
    second signal acts at once, as before (the handlers are given back at the first). A trainer that makes
    one is wrapped in ``gives_back_signals``, so the handlers do not outlive it."""

    def __init__(self, max_minutes: float | None = None):
        import signal

        self.deadline = time.time() + max_minutes * 60 if max_minutes else None
        self.requested = False
        self.previous = {sig: signal.signal(sig, self._request) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _request(self, *_) -> None:
        import signal

        self.requested = True
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        print("\nstopping after this step and saving (a second Ctrl-C quits at once)", flush=True)

    def __bool__(self) -> bool:
        return self.requested or (self.deadline is not None and time.time() >= self.deadline)


def gives_back_signals(trainer: Callable) -> Callable:
    """Put back the SIGINT/SIGTERM handlers a trainer found when it returns or fails: its StopSignal would
    otherwise swallow the next Ctrl-C of whatever runs after it (a model card's measurement, a test)."""
    import functools
    import signal

    @functools.wraps(trainer)
    def run(*args, **kwargs):
        found = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return trainer(*args, **kwargs)
        finally:
            for sig, handler in found.items():
                signal.signal(sig, handler)

    return run


def perceptual_loss(weight: float, device: torch.device) -> tuple[Callable | None, str]:
    """LPIPS-VGG as a loss where its weights are here or can be fetched (``bfr.metrics.lpips_network``), else
    (None, why): the term is dropped and the reason goes into the log and the model card.

    The loss is the per-image mean: a recipe that sums LPIPS over micro-batches (Kuai et al.'s code: 0.1 on
    sums over 4 images) sets 4× the weight.
    """
    from bfr.metrics import lpips_network

    if weight <= 0:
        return None, "LPIPS weight is 0: not used"
    try:
        net = lpips_network("vgg", device)
    except WeightsUnavailableError as e:
        return None, f"LPIPS not used: {getattr(e, 'why', e)}"
    return (lambda pred, target: net(pred, target, normalize=True).mean()), "LPIPS-VGG (lpips package), weight " \
        f"{weight}"


def held_out_loss(diffusion, model: torch.nn.Module, x0: torch.Tensor, lq: torch.Tensor | None = None,
                  seed: int = 1234, batch: int = 32, precision: str = "bf16") -> float:
    """Mean diffusion training loss on fixed images (x0 in [-1, 1]), fixed timesteps and fixed noise:
    comparable across steps and between train and test faces (the memorisation check).
    ``lq``: a conditional model's LQ faces in [-1, 1] (IDM), passed to it as ``lq``. ``precision``: the run's
    (bf16, fp16 or no), used on CUDA as in its training steps."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, diffusion.num_timesteps - 1, len(x0)).round().long()
    noise = torch.randn(x0.shape, generator=g)
    device = next(model.parameters()).device
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x0), batch):
            kwargs = None if lq is None else {"lq": lq[i:i + batch].to(device)}
            with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda" and dtype is not None):
                losses = diffusion.training_losses(model, x0[i:i + batch].to(device), t[i:i + batch].to(device),
                                                   noise[i:i + batch].to(device), model_kwargs=kwargs)
            total += losses["loss"].sum().item()
    return total / len(x0)
