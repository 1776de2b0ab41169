"""What every restoration method shares: input checks, resizing to the model's size, devices, seeds."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from bfr.errors import MAX_DERIVED_SEED, InputError, check_seed

Progress = Callable[[int, int], None]


def check_batch(x: torch.Tensor) -> None:
    """Methods take (B, 3, H, W) float tensors in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"expected a torch.Tensor of shape (B, 3, H, W), got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise InputError(f"expected a (B, 3, H, W) RGB batch, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"expected a float tensor in [0, 1], got {x.dtype}")
    if x.numel() and (x.min() < -1e-3 or x.max() > 1 + 1e-3):
        raise InputError(f"expected values in [0, 1], got [{x.min().item():.3f}, {x.max().item():.3f}]")


def check_steps(steps: int) -> int:
    """A sampling chain has 2 to 1000 steps: a one-step re-spacing keeps only t = 0, where the
    network takes its input for an almost clean image, so it would hand back the noise it started from."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Real) or not 2 <= steps <= 1000 or steps != int(steps):
        raise InputError(f"steps must lie in [2, 1000] (a whole number), got {steps!r}")
    return int(steps)


def resize(x: torch.Tensor, size: int | tuple[int, int], clamp: bool = True) -> torch.Tensor:
    """Antialiased bicubic resize (the authors' preprocessing); a no-op at the same size. ``clamp=False``
    keeps the cubic kernel's overshoot past [0, 1], as DifFace feeds its backbone."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    out = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    return out.clamp(0, 1) if clamp else out


def match_color(x: torch.Tensor, ref: torch.Tensor, spread: bool = True, eps: float = 1e-5) -> torch.Tensor:
    """AdaIN colour correction (StableSR's "colour fix"): each channel of each image in ``x`` takes the
    mean and standard deviation of the same channel of ``ref``; with ``spread=False`` the mean only.
    Both (B, 3, H, W) in [0, 1], any sizes.

    Diffusion samples drawn from pure noise drift in global colour (an ε-model gets little signal for
    the mean colour at the noisiest steps); the condition face fixes it.
    """
    m, rm = x.mean((2, 3), keepdim=True), ref.mean((2, 3), keepdim=True)
    if not spread:
        return (x - m + rm).clamp(0, 1)
    s, rs = x.std((2, 3), keepdim=True), ref.std((2, 3), keepdim=True)
    return ((x - m) / (s + eps) * rs + rm).clamp(0, 1)


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: ``None``/"auto" = CUDA when present; a named one must exist here."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise InputError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} asked for, but CUDA is not available here: use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r} asked for, but only {torch.cuda.device_count()} CUDA devices exist")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"device {device!r} asked for, but MPS is not available here: use cpu")
    elif dev.type != "cpu":
        raise InputError(f"device {device!r} is not supported: use cpu or cuda")
    return dev


def autocast(device: torch.device, enabled: bool = True):
    """Half precision on CUDA (bf16 where supported, else fp16); fp32 on CPU (usability first)."""
    if device.type != "cuda" or not enabled:
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def generator(seed: int | None) -> torch.Generator:
    """A CPU generator: the same seed gives the same noise on CPU and GPU."""
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(check_seed(seed, MAX_DERIVED_SEED))  # the user's was checked where it came in
    return g
