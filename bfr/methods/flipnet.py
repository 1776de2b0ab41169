"""FLIPNET (Miao et al., ICCV 2025): restoration and degradation modes of one network.

Restoration mode generates the HQ face from pure noise, conditioned on the LQ face;
degradation mode generates realistic LQ versions of a clean face (one per seed). Both use
the shared sampler: 50 DDIM steps, no classifier-free guidance, φ = 1 [choice, METHODS.md
§2], with η = 1 [choice; the paper names no η]: fresh noise at every step lets the sampler
correct what the adapters got wrong at the steps before. On the 32 LFW test faces kept for
choosing defaults (``eval --offset 24``), the compact adapters of 2,819 steps (before the bundled
3,700-step ones; the choice was not measured again) gave PSNR 19.14 /
SSIM 0.541 / NIQE 4.18 at η = 0, 20.39 / 0.630 / 2.29 at η = 0.5 and 20.95 / 0.661 / 2.23 at
η = 1 (input 24.38 / 0.744 / 5.10): deterministic DDIM left speckled, noisy faces. The
degradation mode likewise: on 16 clean test faces its variants' high-frequency energy (mean
|Laplacian|) is 0.182 at η = 0 and 0.055 at η = 1, against 0.063 for the synthetic pairs it
learned from; the variants still differ from one another.

Each sample then takes the per-channel mean and spread of its condition face (StableSR's
AdaIN colour fix, ``color_fix``, on by default [choice]): sampled from pure noise, the compact
outputs follow the condition's structure but drift in global colour (FLIPNET's degradation
mode after 500 CPU steps: 10.4 dB against the clean faces, 19.9 dB once colour-fixed). The
network (frozen prior + LoRA + BoostHub + mode embedding + face embedding) is in
``bfr/nets/flipnet.py``; its training in ``bfr/training/flipnet.py``.

Tiers: "compact" works in pixels on the project's 64 px prior (catalog ``flipnet64``,
adapters trained by bfr); "paper" works in Stable Diffusion 2.1-base latents (UNet and VAE
from the Hub) with adapters from a local file: the authors published none
(``python -m bfr train flipnet --tier paper`` trains them).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bfr.diffusion import GaussianDiffusion, ddim_respacing, noise_like, sample
from bfr.errors import InputError, WeightsUnavailableError
from bfr.methods.base import Progress, autocast, check_batch, check_steps, generator, match_color, resize
from bfr.nets.flipnet import Condition, FlipNet

COMPACT_WEIGHTS = "flipnet64"
PAPER_WEIGHTS = "flipnet_sd21"
MAX_VARIANTS = 16
# [choice] DDIM steps take ε re-derived from the clipped x̂0 (guided-diffusion). On the compact card's 64 test
# faces, with the bundled adapters, the network's own ε (DifFace's current step) gave 21.46 dB / SSIM 0.704 at
# η = 1 (this: 21.10 / 0.691) but 10.19 / 0.296 at η = 0 (this: 19.57 / 0.596): from pure noise the undertrained
# adapters' x̂0 is clipped hard, and the deterministic chain never washes out the mismatch. A default that
# collapses at one η is kept off.
DDIM_EPS = "clipped"


class FLIPNET:
    name = "flipnet"
    title = "FLIPNET"
    defaults = dict(steps=50, eta=1.0, phi=1.0, color_fix=True, seed=0)

    def __init__(self, net: FlipNet, *, resolution: int, framing: str, tier: str, device: torch.device,
                 vae: torch.nn.Module | None = None, vae_scale: float = 1.0, schedule: str = "linear",
                 learn_sigma: bool = True):
        self.net = net.eval().requires_grad_(False).to(device)
        self.vae = vae.eval().requires_grad_(False).to(device) if vae is not None else None
        self.vae_scale = vae_scale
        self.resolution = resolution
        self.framing = framing
        self.tier = tier
        self.device = device
        self.half_precision = True  # bf16/fp16 autocast on CUDA; False: float32
        self.schedule = schedule
        self.learn_sigma = learn_sigma

    # -- spaces ---------------------------------------------------------------------------------
    def to_model_space(self, x: torch.Tensor) -> torch.Tensor:
        """Faces in [-1, 1] → what the prior denoises (pixels, or scaled VAE latents)."""
        if self.vae is None:
            return x
        return self.vae.encode(x).latent_dist.mean * self.vae_scale

    def to_pixels(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of ``to_model_space``, in [0, 1]."""
        x = z if self.vae is None else self.vae.decode(z / self.vae_scale).sample
        return (x.float() * 0.5 + 0.5).clamp(0, 1)

    def denoiser(self, x: torch.Tensor, t: torch.Tensor, condition: Condition, phi: float) -> torch.Tensor:
        with autocast(self.device, self.half_precision):
            return self.net(x, t, condition, phi=phi).float()

    # -- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, cond: torch.Tensor, mode: str, *, variants: int = 1, steps: int = 50, eta: float = 1.0,
                 phi: float = 1.0, color_fix: bool = True, seed: int | None = 0,
                 progress: Progress | None = None) -> torch.Tensor:
        """``variants`` samples per condition face (B, 3, R, R) in [0, 1] → (B·variants, 3, R, R) in [0, 1];
        ``color_fix``: each sample takes its condition face's per-channel mean and spread."""
        steps = check_steps(steps)
        if not 0.0 <= float(phi) <= 4.0:
            raise InputError(f"phi (BoostHub scale) must lie in [0, 4], got {phi}")
        face = cond.to(self.device) * 2 - 1
        with autocast(self.device, self.half_precision):
            condition = self.net.condition(self.to_model_space(face), face, mode)
        condition = condition.repeat(variants) if variants > 1 else condition
        diffusion = GaussianDiffusion.create(1000, self.schedule, respacing=ddim_respacing(steps),
                                             learn_sigma=self.learn_sigma)
        g = generator(seed)
        shape = (len(condition.modes), *self._latent_shape(face))
        x = noise_like(shape, g, device=self.device)
        z = sample(diffusion, self.denoiser, x, sampler="ddim", eta=eta, ddim_eps=DDIM_EPS, generator=g,
                   clip_denoised=self.vae is None, model_kwargs={"condition": condition, "phi": phi},
                   progress=progress)
        out = self.to_pixels(z)
        if color_fix:
            out = match_color(out, cond.to(out.device).float().repeat_interleave(variants, dim=0))
        return out

    def _latent_shape(self, face: torch.Tensor) -> tuple[int, int, int]:
        if self.vae is None:
            return tuple(face.shape[1:])
        down = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (self.vae.config.latent_channels, face.shape[-2] // down, face.shape[-1] // down)

    def restore(self, lq: torch.Tensor, *, steps: int = 50, eta: float = 1.0, phi: float = 1.0,
                color_fix: bool = True, seed: int | None = 0, progress: Progress | None = None) -> torch.Tensor:
        """Restoration mode on aligned faces (B,3,H,W) in [0,1]; returns the same size, on the CPU."""
        check_batch(lq)
        size = tuple(lq.shape[-2:])
        out = self.generate(resize(lq, self.resolution), "restore", steps=steps, eta=eta, phi=phi,
                            color_fix=color_fix, seed=seed, progress=progress)
        return resize(out, size).cpu()

    def degrade(self, hq: torch.Tensor, *, variants: int = 4, steps: int = 50, eta: float = 1.0, phi: float = 1.0,
                color_fix: bool = True, seed: int | None = 0, progress: Progress | None = None) -> torch.Tensor:
        """Degradation mode: ``variants`` degraded versions of each clean aligned face → (B, variants, 3, H, W)."""
        check_batch(hq)
        if not 1 <= int(variants) <= MAX_VARIANTS:
            raise InputError(f"variants must lie in [1, {MAX_VARIANTS}], got {variants}")
        size = tuple(hq.shape[-2:])
        out = self.generate(resize(hq, self.resolution), "degrade", variants=int(variants), steps=steps, eta=eta,
                            phi=phi, color_fix=color_fix, seed=seed, progress=progress)
        return resize(out, size).cpu().reshape(len(hq), int(variants), 3, *size)


# ---------------------------------------------------------------------------- loading


def adapters_metadata(file: str | Path) -> dict:
    """FLIPNET config and the identity of the prior its adapters were trained on."""
    from bfr.weights import read_metadata

    meta = read_metadata(file)
    if meta.get("kind") != "flipnet" or "config" not in meta:
        raise WeightsUnavailableError(f"{file} is not a bfr FLIPNET adapters file (metadata kind={meta.get('kind')!r})")
    return {"config": json.loads(meta["config"]), "prior_sha256": json.loads(meta.get("prior_sha256", "null")),
            "resolution": int(json.loads(meta.get("resolution", "64")))}


def attach_adapters(prior: torch.nn.Module, file: str | Path, prior_file: str | Path | None = None) -> FlipNet:
    """The FlipNet of an adapters file around ``prior``; checks that it is the prior they were trained on."""
    from bfr.weights import load_state_dict
    from bfr.weights.hub import sha256_of

    meta = adapters_metadata(file)
    backbone = "sd" if type(prior).__name__ == "UNet2DConditionModel" else "adm"
    trained_on = meta["config"].get("backbone", "adm")
    if trained_on != backbone:
        kinds = {"adm": "the compact tier (bfr's 64-px prior, catalog flipnet64)",
                 "sd": "the paper tier (Stable Diffusion 2.1-base, catalog flipnet_sd21)"}
        raise WeightsUnavailableError(f"FLIPNET adapters {file} belong to {kinds[trained_on]}, not to "
                                      f"{kinds[backbone]}: pick the other tier or other adapters")
    if prior_file is not None and meta["prior_sha256"] and sha256_of(prior_file) != meta["prior_sha256"]:
        raise WeightsUnavailableError(
            f"FLIPNET adapters {file} were trained on a different prior (sha256 {meta['prior_sha256'][:12]}…) "
            f"than {prior_file} ({sha256_of(prior_file)[:12]}…). Retrain them on this prior with "
            "`python -m bfr train flipnet`, or pass the prior they were trained on.")
    net = FlipNet(prior, meta["config"])
    try:
        net.load_adapters({k: v.float() for k, v in load_state_dict(file).items()})
    except KeyError as e:
        raise WeightsUnavailableError(f"{file}: {e.args[0]}") from None
    return net


def paper_networks(adapters: str | Path | None = None, unet: str | Path | None = None,
                   vae: str | Path | None = None) -> tuple[FlipNet, torch.nn.Module]:
    """SD 2.1-base UNet + VAE (Hub, or local files) with FLIPNET adapters from a local file.

    No FLIPNET weights are public: without ``adapters`` (or $BFR_WEIGHTS_DIR/flipnet_sd21.safetensors)
    this raises WeightsUnavailableError before anything large is loaded.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from bfr.nets.configs import SD21_BASE_UNET, SD_VAE
    from bfr.weights import CATALOG, load_into, load_state_dict, resolve_all
    from bfr.weights.hub import find_local

    if adapters is None:
        adapters = find_local(CATALOG[PAPER_WEIGHTS])
        if adapters is None:
            raise WeightsUnavailableError(
                f"FLIPNET's paper tier has no trained adapters: Miao et al. released neither code nor weights. Train "
                f"them with `python -m bfr train flipnet --tier paper --clean-dir FFHQ_DIR` (a GPU and the Stable "
                f"Diffusion 2.1-base weights needed); given adapters (a FlipNet adapters file, backbone 'sd'), "
                f"pass weights={{'{PAPER_WEIGHTS}': PATH}} "
                f"(command line: --weights {PAPER_WEIGHTS}=PATH) or put them at "
                f"$BFR_WEIGHTS_DIR/{PAPER_WEIGHTS}.safetensors; or use the compact tier ({COMPACT_WEIGHTS}).")
    adapters_metadata(adapters)  # a wrong file fails before gigabytes of Stable Diffusion are fetched or built
    files = resolve_all({"sd21_unet": unet, "sd21_vae": vae})  # both named if missing, before anything is built
    unet_net = UNet2DConditionModel(**SD21_BASE_UNET)
    load_into(unet_net, load_state_dict(files["sd21_unet"]))
    vae_net = AutoencoderKL(**SD_VAE)
    load_into(vae_net, load_state_dict(files["sd21_vae"]))
    return attach_adapters(unet_net, adapters), vae_net
