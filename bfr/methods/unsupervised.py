"""Unsupervised BFR with a diffusion prior (Kuai, Honari, Gilitschenski, Levinshtein; WACV 2025).

A restorer that meets a degradation it was never trained on is adapted to it without any
ground truth. For every degraded input, the restorer's own output (the *reference*) is
diffused to re-spaced index 150 of the "250" chain (original t ≈ 602) and sampled back to
0 with the face prior (ancestral steps, learned variance). After each step whose index is
≥ 90 the sample's low frequencies are replaced by the reference's, diffused to the same
level (ILVR-style low-pass consistency): the prior re-invents the detail, the reference
keeps the layout and identity. The final samples are *pseudo-targets*; the restorer is
fine-tuned on (input, pseudo-target) pairs (``bfr.training.adapt``). Diffusion runs only
while adapting: at inference the method is one forward pass of the adapted restorer.

Defaults follow the authors' released code (SamsungLabs/DT-BFR, scripts/generate_targets_*.sh):
respacing "250", start 150, low-pass down to index 90, factor 16 (SwinIR path) or 8
(general path) at 512 px. A smaller prior gets the same recipe relative to the face: the
factor keeps the 32×32 low-pass grid (``lowpass_factor``) and the indices keep the face-level
noise (``GaussianDiffusion.matched_index``): start 53, floor 15 at 64 px.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bfr.diffusion import GaussianDiffusion, sample
from bfr.diffusion.samplers import StepHook
from bfr.errors import MAX_DERIVED_SEED, InputError, check_seed
from bfr.methods.base import Progress, autocast, check_batch, generator, resize

PAPER_RESOLUTION = 512
# Down/up-sampling factor of the low-pass at 512 px, per path (the authors' --down_N).
PAPER_FACTORS = {"swinir": 16, "general": 8}
# Re-spaced "250" indices at 512 px: where sampling starts, and the last step that is low-pass replaced.
PAPER_START, PAPER_MIN_INDEX = 150, 90


def recipe_indices(diffusion: GaussianDiffusion, resolution: int) -> tuple[int, int]:
    """(start, min_index) for a prior of ``resolution`` px: the authors' 150 / 90 at 512 px, and the
    indices with the same face-level noise elsewhere (53 / 15 at 64 px).

    Why not 150 / 90 everywhere: at 64 px index 150 (ᾱ ≈ 0.025) leaves nothing of the face, and
    the free steps below 90 redraw it (measured with prior64 at 7,764 steps on 32 faces of the
    demo set: 19.9 dB against the truth with 150 / 90, 26.5 dB with 53 / 15; the reference was 28.1).
    """
    start = max(1, diffusion.matched_index(PAPER_START, resolution))
    return start, min(start, max(1, diffusion.matched_index(PAPER_MIN_INDEX, resolution)))


def lowpass_factor(resolution: int, path: str = "swinir") -> int:
    """The low-pass factor for faces of ``resolution`` px: the paper's cutoff, kept relative to the face.

    At 512 px the SwinIR path uses factor 16: U(D(x)) keeps a 32×32 grid, each cell 16 px,
    i.e. 1/32 of the face width; the reference is trusted for structure coarser than that
    (up to 16 cycles per face width: face outline, position and shape of eyes, nose and
    mouth, shading) and the prior is free above it. Everything else in the compact tier is
    defined relative to the face (the degradations are scaled with ``scale_to``, the prior
    and restorer see the same LFW framing at every size), so the cutoff is too: the grid
    stays 32×32 (16×16 on the general path), i.e. factor = paper factor × resolution / 512,
    which is 2 at 64 px.

    The other reading, "same factor" (16 at 64 px), would keep a 4×4 grid: a cutoff of 2
    cycles per face, only the global tone layout. From t ≈ 602 the prior would then be free
    to redraw the eyes, nose and mouth, so pseudo-targets would drift in identity — the
    failure the low-pass exists to prevent. The price of the face-relative rule at 64 px is
    that the prior only owns the top octave (16–32 cycles per face); that is the band the
    compact faces have, and the free, un-pinned last steps (below the floor: index 90 of "250" at
    512 px, 15 at 64 px, see ``recipe_indices``) still clean all bands.

    The factor never drops below 2 (factor 1 would replace the whole sample by the diffused
    reference, i.e. plain DifFace from index 90). 512 → 16 (SwinIR) / 8 (general); 256 → 8 / 4;
    128 → 4 / 2; 64 → 2 / 2.
    """
    if path not in PAPER_FACTORS:
        raise InputError(f"unknown pseudo-target path {path!r}; use 'swinir' or 'general'")
    return max(2, round(PAPER_FACTORS[path] * resolution / PAPER_RESOLUTION))


def fill_indices(start: int | None, min_index: int | None, respacing: str, resolution: int) -> tuple[int, int]:
    """(start, min_index) with the missing ones taken from ``recipe_indices`` at ``resolution`` (a given
    start caps the default floor); checked: 1 ≤ min_index ≤ start. The defaults are "250" indices."""
    if start is None or min_index is None:
        if respacing != "250":
            raise InputError(f"give start and min_index for respacing {respacing!r} (the defaults are \"250\" indices)")
        default_start, default_min = recipe_indices(GaussianDiffusion.create(1000, "linear", respacing="250"),
                                                    resolution)
        start = default_start if start is None else start
        min_index = min(default_min, start) if min_index is None else min_index
    if not 1 <= min_index <= start:
        raise InputError(f"need 1 ≤ min_index ≤ start, got min_index={min_index}, start={start}")
    return start, min_index


def lowpass(x: torch.Tensor, factor: int) -> torch.Tensor:
    """U(D(x)): cubic downsampling by ``factor`` with antialiasing, cubic upsampling back, the image
    mirrored at its borders first (half-sample symmetric), as the authors' resizer does.

    PyTorch's ``antialias=True`` bicubic is the Keys a = −0.5 kernel (stretched by the factor
    when shrinking), the kernel of the resizer the authors use (MATLAB-style ``cubic``); its
    plain bicubic is a = −0.75, so both directions go through the antialiased path. Where the
    kernel runs off the image PyTorch renormalises it; the mirrored margin (4·factor px: the
    down kernel's reach plus two low-resolution cells, whole cells so the grid stays aligned)
    gives the authors' numbers there (≤ 1.4e-6 against their code; without it pseudo-targets
    differed by up to 0.35 within ~3.5·factor px of the border).
    """
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise InputError(f"low-pass factor {factor} does not divide the image size {h}×{w}")
    m = 4 * factor
    x = x.index_select(-2, _mirrored(h, m, x.device)).index_select(-1, _mirrored(w, m, x.device))
    size = (h + 2 * m) // factor, (w + 2 * m) // factor
    small = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    out = F.interpolate(small, size=x.shape[-2:], mode="bicubic", antialias=True, align_corners=False)
    return out[..., m:m + h, m:m + w]


def _mirrored(n: int, margin: int, device: torch.device) -> torch.Tensor:
    """Indices of a length-n axis extended by ``margin`` on both sides by repeated half-sample mirroring
    (…, 1, 0, 0, 1, …, n−1, n−1, n−2, …), so a margin longer than the axis still mirrors as the authors'."""
    i = torch.arange(-margin, n + margin, device=device) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


def lowpass_hook(reference: torch.Tensor, diffusion: GaussianDiffusion, factor: int, min_index: int = 90,
                 generator: torch.Generator | None = None) -> StepHook:
    """A :func:`bfr.diffusion.sample` hook: after each step with index ≥ ``min_index``,
    x ← x − U(D(x)) + U(D(q_sample(reference, index − 1))).

    ``reference`` is in the diffusion's space ([-1, 1]) and shaped like the sample. After the
    step at ``index`` the sample is at level index − 1, so the reference is diffused to that
    level (fresh noise each step, as in the authors' code). Steps below ``min_index`` are
    left untouched: the prior finishes on its own.
    """
    if min_index < 1:
        raise InputError(f"min_index must be ≥ 1 (the reference is diffused to index − 1), got {min_index}")
    reference = reference.float()

    def hook(x: torch.Tensor, index: int, out: dict) -> torch.Tensor:
        if index < min_index:
            return x
        ref_t = diffusion.q_sample(reference.to(x.device), index - 1, generator=generator)
        return x - lowpass(x, factor) + lowpass(ref_t, factor)

    return hook


@torch.no_grad()
def pseudo_targets(
    prior: torch.nn.Module,
    references: torch.Tensor,
    *,
    start: int | None = None,
    respacing: str = "250",
    min_index: int | None = None,
    factor: int | None = None,
    seed: int | None = 0,
    progress: Progress | None = None,
    batch_size: int = 8,
) -> torch.Tensor:
    """Pseudo-targets (N,3,H,W) in [0, 1] on the CPU from references (N,3,H,W) in [0, 1].

    Each reference is diffused to re-spaced index ``start`` and sampled back to 0 with
    ancestral steps and the prior's learned variance, low-pass-replaced down to
    ``min_index``: ``start`` network calls per batch. ``start`` / ``min_index`` default to
    ``recipe_indices`` at the prior's size (150 / 90 at 512 px; they are indices of the "250"
    chain, so another ``respacing`` needs both given). References not at the prior's size are
    resized to it and the results back. ``factor`` defaults to ``lowpass_factor`` (SwinIR
    path) at the prior's size. One generator seeded ``seed + first index`` per batch, so the
    result is reproducible for a given ``batch_size``. ``progress(done, total)`` counts
    network calls over all batches.
    """
    check_batch(references)
    size = int(getattr(prior, "image_size", references.shape[-1]))
    factor = factor or lowpass_factor(size, "swinir")
    diffusion = GaussianDiffusion.create(1000, "linear", respacing=respacing, learn_sigma=True)
    start, min_index = fill_indices(start, min_index, respacing, size)
    if not 1 <= start < diffusion.num_timesteps:  # the reference is diffused to index ``start``
        raise InputError(f"start must lie in [1, {diffusion.num_timesteps - 1}] for respacing {respacing!r}, "
                         f"got {start}")
    params = next(prior.parameters(), None)
    device = params.device if params is not None else torch.device("cpu")

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with autocast(device):
            return prior(x_t, t).float()

    n_batches = -(-len(references) // batch_size)
    outs = []
    for b, i in enumerate(range(0, len(references), batch_size)):
        ref = resize(references[i:i + batch_size].float(), size).to(device) * 2 - 1
        g = generator(None if seed is None else seed + i)
        x = diffusion.q_sample(ref, start, generator=g)
        hook = lowpass_hook(ref, diffusion, factor, min_index, generator=g)
        step_progress = None if progress is None else (lambda d, _t, b=b: progress(b * start + d, n_batches * start))
        out = sample(diffusion, model, x, start=start, sampler="ancestral", generator=g, hook=hook,
                     progress=step_progress)
        outs.append(resize((out * 0.5 + 0.5).clamp(0, 1), tuple(references.shape[-2:])).cpu())
    return torch.cat(outs) if outs else references.new_zeros((0, *references.shape[1:]))


class Unsupervised:
    """Inference: one forward pass of the restorer adapted by ``bfr.training.adapt``."""

    name = "unsupervised"
    title = "Unsupervised BFR (Kuai et al.)"
    defaults: dict = {}

    def __init__(self, restorer: torch.nn.Module, *, resolution: int, framing: str, tier: str, device: torch.device):
        self.restorer = restorer.eval().requires_grad_(False).to(device)
        self.resolution = resolution
        self.framing = framing
        self.tier = tier
        self.device = device
        self.half_precision = True  # bf16/fp16 autocast on CUDA; False: float32

    @torch.no_grad()
    def restore(self, lq: torch.Tensor, *, seed: int | None = None, progress: Progress | None = None,
                **knobs) -> torch.Tensor:
        """Restore aligned faces (B,3,H,W) in [0,1]; returns the same size. ``seed`` is accepted for a
        uniform interface and unused (the method is deterministic)."""
        if knobs:
            raise InputError(f"{self.title} has no options ({', '.join(sorted(knobs))} given): it is one "
                             "forward pass of the adapted restorer")
        check_batch(lq)
        if seed is not None:
            check_seed(seed, MAX_DERIVED_SEED)  # unused, but a seed no other method takes is refused here too
        size = lq.shape[-2:]
        y = resize(lq.to(self.device), self.resolution)
        with autocast(self.device, self.half_precision):
            out = self.restorer(y).float().clamp(0, 1)
        if progress is not None:
            progress(1, 1)
        return resize(out, tuple(size)).cpu()
