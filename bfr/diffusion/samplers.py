"""Sampling loops as plain functions (k-diffusion style): the loop is visible, the hook is the extension point.

Every method samples through :func:`sample`: from pure noise (``start=None``) or from an
image already diffused to index ``start`` (DifFace, Kuai et al., SDEdit). Following the
authors' released code, a chain started at index N takes its first denoising step at N−1
(for pure noise, N = num_timesteps, this is the usual chain).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bfr.diffusion.gaussian import DDIM_EPS, GaussianDiffusion, ModelFn, randn_like
from bfr.errors import InputError

# hook(x, index, out) -> x, called after the step at ``index``; x is then at level index−1.
StepHook = Callable[[torch.Tensor, int, dict], torch.Tensor]
# progress(done, total), called after every step (tqdm, gr.Progress, cancellation checks).
ProgressFn = Callable[[int, int], None]


@torch.no_grad()
def sample(
    diffusion: GaussianDiffusion,
    model: ModelFn,
    x: torch.Tensor,
    *,
    start: int | None = None,
    sampler: str = "ddim",
    eta: float = 0.0,
    ddim_eps: str = "model",
    clip_denoised: bool = True,
    generator: torch.Generator | None = None,
    model_kwargs: dict | None = None,
    hook: StepHook | None = None,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """Denoise ``x`` (at index ``start``, or pure noise) down to a clean sample.

    sampler: "ddim" (η in [0, 1]) or "ancestral" (the model's learned variance); ddim_eps: the
    DDIM step's ε, the network's own ("model") or re-derived from the clipped x̂0 ("clipped").
    """
    if sampler not in ("ddim", "ancestral"):
        raise InputError(f"unknown sampler {sampler!r}; use 'ddim' or 'ancestral'")
    if not 0.0 <= eta <= 1.0:
        raise InputError(f"eta must lie in [0, 1], got {eta}")
    if ddim_eps not in DDIM_EPS:
        raise InputError(f"unknown ddim_eps {ddim_eps!r}; use one of: {', '.join(DDIM_EPS)}")
    start = diffusion.num_timesteps if start is None else int(start)
    if not 1 <= start <= diffusion.num_timesteps:
        raise InputError(f"start must lie in [1, {diffusion.num_timesteps}], got {start}")
    indices = list(range(start - 1, -1, -1))
    for done, i in enumerate(indices, 1):
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        out = diffusion.p_mean_variance(model, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        noise = randn_like(x, generator)
        if sampler == "ddim":
            x = diffusion.ddim_step(out, x, t, eta, noise, eps=ddim_eps)
        else:
            x = diffusion.ancestral_step(out, x, t, noise)
        if hook is not None:
            x = hook(x, i, out)
        if progress is not None:
            progress(done, len(indices))
    return x


def noise_like(shape: tuple[int, ...], generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """Pure Gaussian noise to start a chain from, seeded when a generator is given."""
    return randn_like(torch.empty(shape, device=device), generator)
