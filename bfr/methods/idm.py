"""IDM (Zhao et al., ICCV 2023): a conditional diffusion model that restores the face.

No code or weights are public; what is built here follows METHODS.md §4 ([choice] items):
an SR3-style pixel model whose UNet sees [x_t, LQ resized to the output size] (6 channels,
both in [-1, 1]), predicts ε — or v, which bfr's own training now uses (see
``bfr/training/idm.py``) — with a fixed variance, on a linear schedule of T = 1000. A
restoration samples from pure noise down a re-spaced chain ("intrinsic iterative
refinement": every step sees the LQ again), and each restored face then takes the LQ's per-channel
mean colour (``color_fix``, on by default [choice]: sampled from pure noise, the compact model
shifted a real photo's face by up to 19/255 in a channel; the degradations keep the mean colour,
LFW faces' within 0.75/255 on average, and on 32 LFW test faces kept apart from every reported
test the fix raised PSNR from 24.18 to 24.38 dB, the AdaIN mean-and-spread fix FLIPNET uses to
24.30, with the 8,500-step weights that preceded the bundled ones). The training side ("extrinsic iterative
enhancement": the model cleans its own training set, then is retrained) is in
``bfr/training/idm.py``.

Tiers: "compact" is COMPACT_IDM_64 trained by bfr (catalog ``idm64``); "paper" is
IDM_UNET_512, untrained here: it runs only from a local file (catalog ``idm_unet_512``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from bfr.diffusion import GaussianDiffusion, noise_like, sample
from bfr.diffusion.gaussian import PREDICTIONS
from bfr.errors import InputError, WeightsUnavailableError
from bfr.methods.base import Progress, autocast, check_batch, check_steps, generator, match_color, resize
from bfr.nets.configs import IDM_UNET_512
from bfr.nets.unet import UNetModel

COMPACT_WEIGHTS = "idm64"
PAPER_WEIGHTS = "idm_unet_512"
SAMPLERS = ("ddim", "ancestral")
# [choice] The compact tier's default chain: 10 DDIM steps. Picked on 32 LFW test faces used by
# neither the card's test nor the README grid (runs of 10/25/50/100 steps, two degradations):
# shorter chains keep more of the LQ (higher PSNR/SSIM), longer ones add detail (lower NIQE);
# 10 was the only length above the input's PSNR on both. The paper tier: 100 re-spaced steps,
# also DDIM η 0 (untested there: no weights exist); SR3's own sampling is ancestral
# (``sampler="ancestral"``, fixed variance) over its full chain.
COMPACT_STEPS = 10
# [choice] DDIM steps take ε re-derived from the clipped x̂0 (guided-diffusion), as when the defaults
# and the card were measured; with the network's own ε the card's test moved by +0.006 dB.
DDIM_EPS = "clipped"
PAPER_STEPS = 100


class IDM:
    name = "idm"
    title = "IDM"
    # an instance's own defaults take its tier's steps (COMPACT_STEPS)
    defaults = dict(steps=PAPER_STEPS, eta=0.0, color_fix=True, seed=0)

    def __init__(self, net: torch.nn.Module, *, resolution: int, framing: str, tier: str, device: torch.device,
                 prediction: str = "eps"):
        if getattr(net, "in_channels", 6) != 6:
            raise InputError(f"IDM needs a UNet with 6 input channels ([x_t, LQ]), got {net.in_channels}")
        if prediction not in PREDICTIONS:
            raise InputError(f"unknown IDM prediction {prediction!r}; use one of: {', '.join(PREDICTIONS)}")
        self.net = net.eval().requires_grad_(False).to(device)
        self.prediction = prediction
        self.resolution = resolution
        self.framing = framing
        self.tier = tier
        self.device = device
        self.half_precision = True  # bf16/fp16 autocast on CUDA; False: float32
        self.defaults = dict(IDM.defaults, steps=COMPACT_STEPS if tier == "compact" else PAPER_STEPS)

    def denoiser(self, x_t: torch.Tensor, t: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        """ε (or v) for x_t at original-scale timesteps t, given the LQ in [-1, 1] at the model size."""
        with autocast(self.device, self.half_precision):
            return self.net(x_t, t, lq=lq).float()

    @torch.no_grad()
    def restore(self, lq: torch.Tensor, *, steps: int | None = None, eta: float = 0.0, sampler: str = "ddim",
                color_fix: bool = True, seed: int | None = 0, progress: Progress | None = None) -> torch.Tensor:
        """Restore aligned faces (B,3,H,W) in [0,1]; returns the same size, on the CPU.

        steps: length of the re-spaced chain (evenly spaced over 0…999, both ends kept);
        None = this tier's default (``self.defaults["steps"]``: compact 10, paper 100);
        sampler: "ddim" (η in [0, 1]; 0 = deterministic) or "ancestral" (fixed variance β̃,
        η unused); color_fix: each face takes the LQ's per-channel mean; seed: the starting noise
        (and the ancestral/DDIM noise), None = random.
        """
        check_batch(lq)
        steps = self.defaults["steps"] if steps is None else steps
        steps = check_steps(steps)
        if sampler not in SAMPLERS:
            raise InputError(f"unknown sampler {sampler!r}; use one of: {', '.join(SAMPLERS)}")
        if not 0.0 <= eta <= 1.0:
            raise InputError(f"eta must lie in [0, 1], got {eta}")
        size = tuple(lq.shape[-2:])
        cond = resize(lq.to(self.device), self.resolution) * 2 - 1
        diffusion = GaussianDiffusion.create(1000, "linear", respacing=int(steps), learn_sigma=False,
                                             prediction=self.prediction)
        g = generator(seed)
        x = noise_like(tuple(cond.shape), g, device=self.device)
        out = sample(diffusion, self.denoiser, x, sampler=sampler, eta=eta, ddim_eps=DDIM_EPS, generator=g,
                     model_kwargs={"lq": cond}, progress=progress)
        out = (out * 0.5 + 0.5).clamp(0, 1)
        if color_fix:
            out = match_color(out, cond * 0.5 + 0.5, spread=False)
        return resize(out, size).cpu()


def prediction_of(path: str | Path) -> str:
    """What a bfr-written IDM weights file predicts ("eps" or "v"; files from before v existed: "eps")."""
    import json

    from bfr.weights import read_metadata

    return json.loads(read_metadata(path).get("prediction", '"eps"'))


def paper_net(path: str | Path | None = None) -> tuple[UNetModel, str]:
    """IDM_UNET_512 with weights from a local file, and what it predicts; without one, a
    WeightsUnavailableError.

    ``path`` is a state dict for IDM_UNET_512 (.safetensors, or .pth read with
    weights_only); without it, the catalog's usual local places ($BFR_WEIGHTS_DIR, the
    cache) are looked at. Nothing is ever downloaded: no public weights exist. The
    prediction ("eps" or "v") is read from a bfr-written file's metadata, as on the compact
    tier; files without it (a .pth) are taken as SR3's ε.
    """
    from bfr.weights import CATALOG, load_into, load_state_dict
    from bfr.weights.hub import find_local

    if path is not None:
        file = Path(path).expanduser()
        if file.is_dir():
            file = file / f"{PAPER_WEIGHTS}.safetensors"
        if not file.is_file():
            raise WeightsUnavailableError(f"IDM paper-tier weights file {file} does not exist.")
    else:
        spec = CATALOG.get(PAPER_WEIGHTS)
        file = find_local(spec) if spec is not None else None
        if file is None:
            raise WeightsUnavailableError(
                f"IDM's paper tier has no weights: Zhao et al. released neither code nor weights, and bfr ships "
                f"IDM_UNET_512 (DifFace's 512-px UNet with 6 input channels) untrained (`python -m bfr train idm` "
                f"trains the compact tier only). With weights of your own for it, trained elsewhere, pass them as "
                f"weights={{'{PAPER_WEIGHTS}': PATH}} (command line: --weights {PAPER_WEIGHTS}=PATH), or put them at "
                f"$BFR_WEIGHTS_DIR/{PAPER_WEIGHTS}.safetensors; or use the compact tier ({COMPACT_WEIGHTS})."
            )
    net = UNetModel(**IDM_UNET_512)
    load_into(net, {k: v.float() for k, v in load_state_dict(file).items()})
    return net, prediction_of(file) if file.suffix == ".safetensors" else "eps"
