"""DifFace (Yue & Loy): diffused error contraction.

A restoration backbone gives a blurry but faithful estimate x̂0; diffusing x̂0 to the
started step N drowns its error in noise, and the unconditional face prior samples back
from N to 0. Defaults follow the authors' current code: "ddim250" striding, N = 100
(original t = 400), η = 0.5, predicted x0 clipped at every step; the compact tier starts lower
(``COMPACT_START_STEP``: its small prior is far from the authors'). The authors' optional
refinement of x̂0 towards the input inside each step (γ > 0) is off for their restoration
(γ = 0) and not implemented here.
"""

from __future__ import annotations

import torch

from bfr.diffusion import GaussianDiffusion, ddim_respacing, sample
from bfr.errors import InputError
from bfr.methods.base import Progress, autocast, check_batch, check_steps, generator, resize

# [choice] The compact tier's started step. Noise of one level wipes out more of a 64-px face than
# of a 512-px one: the authors' N = 100 at 512 px leaves the face-level SNR that N = 19 leaves at
# 64 px (``GaussianDiffusion.matched_index``), so 100 is not the compact analogue. Within that
# range N was picked on 32 LFW test faces kept apart from the README's test set (`python -m bfr
# eval --offset 24 --n-images 32 --start-steps …`): the largest N whose PSNR and SSIM both stay
# clearly at or above the degraded input's, i.e. the most realism that costs no fidelity with
# today's compact weights (15: +0.45 dB; 20 is above by 0.11 dB only). N = 15 at 64 px matches
# N ≈ 90 at 512 px. The paper tier keeps N = 100.
COMPACT_START_STEP = 15
PAPER_START_STEP = 100


class DifFace:
    name = "difface"
    title = "DifFace"
    defaults = dict(steps=250, start_step=PAPER_START_STEP, eta=0.5, seed=0)  # an instance's own: N by tier

    def __init__(self, prior: torch.nn.Module, backbone: torch.nn.Module, *, resolution: int, framing: str,
                 tier: str, device: torch.device):
        self.prior = prior.eval().requires_grad_(False).to(device)
        self.backbone = backbone.eval().requires_grad_(False).to(device)
        self.resolution = resolution
        self.framing = framing
        self.tier = tier
        self.device = device
        self.half_precision = True  # bf16/fp16 autocast on CUDA; False: float32
        self.defaults = dict(DifFace.defaults, start_step=COMPACT_START_STEP if tier == "compact" else PAPER_START_STEP)

    @torch.no_grad()
    def estimate(self, lq: torch.Tensor) -> torch.Tensor:
        """The backbone's x̂0 in [0, 1] at the model resolution."""
        check_batch(lq)
        y = resize(lq.to(self.device), self.resolution, clamp=False)  # unclamped, as the authors' sampler
        with autocast(self.device, self.half_precision):
            return self.backbone(y).float().clamp(0, 1)

    @torch.no_grad()
    def restore(self, lq: torch.Tensor, *, steps: int = 250, start_step: int | None = None, eta: float = 0.5,
                seed: int | None = 0, progress: Progress | None = None) -> torch.Tensor:
        """Restore aligned faces (B,3,H,W) in [0,1]; returns the same size.

        steps: length of the DDIM chain (strided as the authors' "ddim{steps}" where an integer
        stride gives it, else evenly spaced); start_step: N < steps on that chain (larger = more
        realism, less fidelity), None = this tier's default
        (``self.defaults["start_step"]``); eta: DDIM stochasticity in [0, 1].
        """
        steps = check_steps(steps)
        if start_step is None and self.defaults["start_step"] >= steps:
            raise InputError(f"steps={steps} is too short for this tier's started step N={self.defaults['start_step']}:"
                             f" give a start_step < {steps} too (--start-step)")
        start_step = self.defaults["start_step"] if start_step is None else start_step
        if not 1 <= start_step < steps:  # the image is diffused to index N of the chain, as the authors' N < T
            raise InputError(f"start_step must lie in [1, steps − 1 = {steps - 1}], got {start_step}")
        size = lq.shape[-2:]
        x0 = self.estimate(lq) * 2 - 1
        diffusion = GaussianDiffusion.create(1000, "linear", respacing=ddim_respacing(steps), learn_sigma=True)
        g = generator(seed)
        x = diffusion.q_sample(x0, start_step, generator=g)

        def prior(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, self.half_precision):
                return self.prior(x_t, t).float()

        out = sample(diffusion, prior, x, start=start_step, sampler="ddim", eta=eta, generator=g, progress=progress)
        return resize((out * 0.5 + 0.5).clamp(0, 1), tuple(size)).cpu()
