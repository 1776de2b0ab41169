"""Train FLIPNET around a frozen prior, in the paper's order.

Tiers: "compact" works in pixels around the project's 64 px prior on the LFW train split;
"paper" works in Stable Diffusion 2.1-base latents (UNet and VAE frozen, from the Hub or
local files) on a folder of clean FFHQ-aligned faces (``clean_dir``; the paper uses FFHQ),
whose first ``val_faces`` files are held out for the checks. Same stages, losses and code;
only the space, the schedule (SD's scaled-linear, ε, fixed variance) and the data differ.

1. **embed**: the HQ and LQ face autoencoders (Stage I: L1, plus LPIPS where its weights
   exist), then two-way contrastive alignment of their pooled tokens (Stage II) while the
   reconstruction losses keep the tokens informative. The decoders are only a training
   device, so no adversarial term is used here [choice]: sharper reconstructions would not
   change what the encoders must keep.
2. **degrade**: degradation mode (target LQ, condition HQ) with the diffusion loss on pairs
   from the richer synthetic pipelines (camera noise + demosaic + JPEG, and GFPGAN's
   blur/downsample/noise/JPEG): no real paired data is available here [choice, said in the card].
3. **offline**: the degradation mode makes LQ versions of train faces (cached on disk).
4. **restore**: restoration mode on on-the-fly synthetic degradations *plus* the offline LQ
   ("+O/F"), loss = diffusion loss + MSE on the predicted clean face (+ LPIPS where
   available); a quarter of the steps stay in degradation mode so the one network keeps
   both modes [choice]. The clean-face MSE has the same weight at every t, so its noisiest
   steps dominate the gradient (8× the diffusion term's at t ≥ 750 on the compact tier), and
   that is what carries the condition's colours and layout: with its weight capped at
   min(SNR, 1), 360 steps on from the compact run's step 2,889 ended at 19.1 dB on the periodic
   check, against 19.6 dB for the same steps with the flat weight.

Only LoRA, BoostHub, the face attention, the mode embedding and τ train in stages 2–4; the
prior stays frozen and the embedder is frozen after stage 1. Resumable at any step.

In latents the clean-face MSE and LPIPS terms are left out [choice]. On pixels the predicted
face is clamped to [-1, 1], which bounds the MSE; a latent has no such range, and there the
MSE on the predicted clean latent is the ε-MSE divided by the SNR: ~20× on average over SD's
schedule and 200× at the noisiest step, so it would swamp the min-SNR loss (which already
weights the clean-latent error by min(SNR, γ)). LPIPS would need SD's VAE decoder at 512 px on
every step, more than the UNet step it regularises.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bfr.degradations import degrade_batch, preset
from bfr.diffusion import GaussianDiffusion
from bfr.errors import MAX_SEED, InputError, check_seed
from bfr.methods.flipnet import FLIPNET, adapters_metadata
from bfr.metrics import psnr, ssim
from bfr.nets.configs import SD21_BASE_UNET, SD_VAE, SD_VAE_SCALING
from bfr.nets.face_embed import pooled, two_way_contrastive
from bfr.nets.flipnet import FlipNet, FlipNetConfig
from bfr.training.backbone import gray_where, validation_set
from bfr.training.cards import data_note, format_duration, write_run_config
from bfr.training.checkpoint import load_state, save_state
from bfr.training.common import (
    JsonlLog,
    StopSignal,
    export_weights,
    gives_back_signals,
    hardware,
    perceptual_loss,
    reseed,
    save_grid,
    tune_for_cuda,
    warmup_cosine,
)
from bfr.training.data import FaceBatches, FolderBatches, UnitBatches, list_images, load_faces, read_images, split_files
from bfr.training.ema import EMA
from bfr.weights import read_metadata

TIERS = ("compact", "paper")
WEIGHTS_NAME = {"compact": "flipnet64", "paper": "flipnet_sd21"}


@dataclass
class FlipNetTrainConfig:
    out_dir: str | None = None  # None: runs/flipnet64 (compact), runs/flipnet_sd21 (paper)
    tier: str = "compact"  # "compact": pixels around prior64 on LFW; "paper": SD 2.1-base latents on clean_dir
    prior: str | None = None  # compact: prior weights file; None = the bundled prior64
    unet: str | None = None  # paper: SD 2.1-base UNet weights; None = catalog sd21_unet (Hub)
    vae: str | None = None  # paper: its VAE; None = catalog sd21_vae (Hub)
    clean_dir: str | None = None  # paper: clean FFHQ-aligned faces (the paper trains on FFHQ)
    val_faces: int = 16  # paper: the first files of clean_dir, held out for the checks
    paper_unet: dict = field(default_factory=lambda: dict(SD21_BASE_UNET))
    paper_vae: dict = field(default_factory=lambda: dict(SD_VAE))
    flip: dict | None = None  # None: FlipNetConfig() (compact), its "sd" backbone with LoRA rank 64 (paper)
    resolution: int | None = None  # None: 64 (compact), 512 (paper)
    batch_size: int = 16
    embed_steps: int | None = None  # None: 2000, or 0 with init_from
    align_from: float = 0.5  # fraction of the embed stage after which the contrastive loss joins
    embed_lr: float = 2e-4
    degrade_steps: int = 4000
    restore_steps: int = 12000
    lr: float = 1e-4
    warmup_steps: int = 200
    degrade_presets: tuple[str, ...] = ("camera", "gfpgan")
    restore_preset: str = "difface"
    offline_faces: int = 512
    # [choice] LQ variants the degradation mode makes of each offline face (the paper: "several"). The
    # bundled compact run used 1: at a fixed sampling budget, more distinct identities per batch.
    offline_variants: int = 1
    offline_fraction: float = 0.3
    degrade_share: float = 0.25  # share of restore-stage steps trained in degradation mode
    x0_weight: float = 1.0
    lpips_weight: float = 1.0
    min_snr_gamma: float = 5.0  # [choice] as the compact prior's (bfr.training.prior); None: the plain loss
    eval_every: int = 250
    eval_steps: int = 20  # DDIM steps of the periodic restoration check (the final one uses 50)
    save_every: int = 250
    max_minutes: float | None = None
    max_steps: int | None = None  # stop (and save) at this overall step, e.g. after the embed stage
    mixed_precision: str = "bf16"
    seed: int = 0
    train_images: int | None = None
    card_faces: int = 64  # test faces the model card measures at the end (kept by a resumed run, as the rest)
    # Adapters (e.g. the bundled flipnet64) to start from around this run's prior: a re-fit after the prior
    # changed, far cheaper than training anew. Their encoders stand in for the embedding stage (embed_steps 0).
    init_from: str | None = None

    def __post_init__(self):
        self.seed = check_seed(self.seed)
        if self.tier not in TIERS:
            raise InputError(f"unknown tier {self.tier!r}; use 'compact' or 'paper'")
        if self.tier == "paper" and not self.clean_dir:
            raise InputError("FLIPNET's paper tier trains on clean FFHQ-aligned faces at 512 px: pass clean_dir "
                             "(--clean-dir; the paper uses FFHQ)")
        if self.init_from and self.embed_steps:
            raise InputError("--init-from brings the face embedding from its adapters: the embedding stage is "
                             f"skipped, so --embed-steps does not apply (got {self.embed_steps})")
        if self.embed_steps is None:
            self.embed_steps = 0 if self.init_from else 2000
        if self.out_dir is None:
            self.out_dir = f"runs/{WEIGHTS_NAME[self.tier]}"
        if self.resolution is None:
            self.resolution = 64 if self.tier == "compact" else 512
        if self.flip is None:
            paper = dict(backbone="sd", lora_rank=64)  # [paper] rank 64 on Stable Diffusion
            self.flip = FlipNetConfig(**(paper if self.tier == "paper" else {})).to_dict()

    @property
    def total_steps(self) -> int:
        return self.embed_steps + self.degrade_steps + self.restore_steps


def prior_file(cfg: FlipNetTrainConfig) -> Path:
    """The frozen prior's weights file (its sha256 ties the adapters to it)."""
    from bfr.weights import resolve

    if cfg.tier == "compact":
        return resolve("prior64", cfg.prior, option="--prior")
    return resolve("sd21_unet", cfg.unet, option="--unet")


def load_prior(cfg: FlipNetTrainConfig) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The frozen prior, and the VAE of its latent space (None in pixels)."""
    if cfg.tier == "compact":
        from bfr.api import load_net

        return load_net("prior64", prior_file(cfg)), None
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from bfr.weights import load_into, load_state_dict, resolve

    unet = UNet2DConditionModel(**cfg.paper_unet)
    load_into(unet, load_state_dict(prior_file(cfg)))
    vae = AutoencoderKL(**cfg.paper_vae)
    load_into(vae, load_state_dict(resolve("sd21_vae", cfg.vae, option="--vae")))
    return unet, vae.eval().requires_grad_(False)


def build(cfg: FlipNetTrainConfig) -> tuple[FlipNet, torch.nn.Module | None]:
    """A fresh FlipNet around the frozen prior, and the VAE (None in pixels)."""
    prior, vae = load_prior(cfg)
    return FlipNet(prior, cfg.flip), vae


def config_of_run(run: Path) -> FlipNetTrainConfig:
    """The training config a run folder recorded (runs from before the paper tier are compact)."""
    from dataclasses import fields

    raw = json.loads((run / "config.json").read_text())
    names = {f.name for f in fields(FlipNetTrainConfig)}
    return FlipNetTrainConfig(**{k: v for k, v in raw.items() if k in names})


def has_state(out: Path) -> bool:
    """Whether a run folder holds a state to resume."""
    return (out / "state.safetensors").exists()


def saved_progress(out: Path) -> dict:
    """The stage, step, seconds and prior sha256 a run's state was saved at: in the state file's own metadata,
    written with the weights and moments in one atomic save, so the two always agree."""
    return json.loads(read_metadata(out / "state.safetensors")["meta"])


def check_tier(out: Path, tier: str) -> None:
    """A run folder keeps the tier it started with."""
    if has_state(out) and (out / "config.json").exists():
        recorded = json.loads((out / "config.json").read_text()).get("tier", "compact")
        if recorded != tier:
            raise InputError(f"{out} holds a {recorded}-tier FLIPNET run; resume it with --tier {recorded} or "
                             "start a new run folder")


def run_config(out_dir: str | None, given: dict, **limits) -> tuple[FlipNetTrainConfig, list[str] | None]:
    """The config to start or resume a run with, and what ``given`` changed of a resumed run's (None: a new run).

    A run folder that holds a state resumes with the settings it recorded (stage lengths, learning rate, offline
    faces, batch, …); only the values in ``given`` change them. ``limits``: this call's max_steps / max_minutes.
    """
    out = Path(out_dir or f"runs/{WEIGHTS_NAME[given.get('tier', 'compact')]}")
    if not (has_state(out) and (out / "config.json").exists()):
        return FlipNetTrainConfig(**given, out_dir=str(out), **limits), None
    recorded = asdict(config_of_run(out))
    check_tier(out, given.get("tier", recorded["tier"]))
    changed = [f"{k} {recorded[k]} → {v}" for k, v in given.items() if recorded.get(k) != v]
    return FlipNetTrainConfig(**{**recorded, **given, "out_dir": str(out), **limits}), changed


def describe_adapters(file: str | Path) -> dict:
    """What a re-fit starts from, recorded once: the adapters file, its steps and the prior it was trained on."""
    from bfr.weights.hub import sha256_of

    meta = read_metadata(file)
    recorded = adapters_metadata(file)
    return {"file": Path(file).name, "sha256": sha256_of(file), "steps": json.loads(meta.get("steps", "null")),
            "prior_sha256": recorded["prior_sha256"], "config": recorded["config"],
            "tier": json.loads(meta.get("tier", '"compact"'))}


def flipnet_method(net: FlipNet, cfg: FlipNetTrainConfig, vae: torch.nn.Module | None,
                   device: torch.device) -> FLIPNET:
    """The inference method around ``net`` (an EMA copy: the method freezes what it is given)."""
    if vae is None:
        return FLIPNET(net, resolution=cfg.resolution, framing="lfw", tier="compact", device=device)
    return FLIPNET(net, resolution=cfg.resolution, framing="ffhq", tier="paper", device=device, vae=vae,
                   vae_scale=SD_VAE_SCALING, schedule="scaled_linear", learn_sigma=False)


def make_encoder(vae: torch.nn.Module | None):
    """Faces in [-1, 1] → the prior's space: pixels as they are, or SD latents (the posterior mean, scaled)."""
    if vae is None:
        return lambda x: x

    @torch.no_grad()
    def encode(x: torch.Tensor) -> torch.Tensor:
        return vae.encode(x.to(next(vae.parameters()).dtype)).latent_dist.mean.float() * SD_VAE_SCALING

    return encode


def diffusion_of(cfg: FlipNetTrainConfig) -> GaussianDiffusion:
    if cfg.tier == "compact":
        return GaussianDiffusion.create(1000, "linear", learn_sigma=True)
    return GaussianDiffusion.create(1000, "scaled_linear", learn_sigma=False)


def clean_faces(cfg: FlipNetTrainConfig) -> tuple[object, Callable[[], torch.Tensor], list[Path] | None]:
    """(a source of HQ training batches in [0, 1] with ``next()``; a loader of the training faces the
    offline stage may degrade, uint8: all of them (compact) or the first ``offline_faces`` (paper,
    read only if that stage runs); the paper tier's held-out files)."""
    if cfg.tier == "compact":
        print(f"loading LFW faces at {cfg.resolution} px …")
        faces = load_faces(split_files("train")[:cfg.train_images], cfg.resolution)
        batches = FaceBatches(faces, cfg.batch_size, seed=cfg.seed)
        return UnitBatches(batches), lambda: faces, None
    files = list_images(cfg.clean_dir)
    if len(files) <= cfg.val_faces:
        raise InputError(f"{cfg.clean_dir} has {len(files)} images; FLIPNET holds out the first {cfg.val_faces} "
                         "for checks and needs more to train on")
    held, train = files[:cfg.val_faces], files[cfg.val_faces:][:cfg.train_images]
    print(f"{len(train)} clean faces from {cfg.clean_dir} at {cfg.resolution} px ({len(held)} held out)")
    batches = FolderBatches(cfg.clean_dir, cfg.resolution, cfg.batch_size, seed=cfg.seed, files=train)
    return batches, lambda: read_images(train[:cfg.offline_faces], cfg.resolution), held


def validation_pairs(cfg: FlipNetTrainConfig, degradation: str, held: list[Path] | None,
                     n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed (HQ, LQ) check pairs in [0, 1]: LFW test faces (compact) or the held-out clean files (paper)."""
    if held is None:
        return validation_set(cfg.resolution, degradation, n=n)
    hq = read_images(held[:n], cfg.resolution).float() / 255
    lq, params = degrade_batch(hq, preset(degradation, cfg.resolution), seed=2024, return_params=True)
    return gray_where(hq, params), lq


class Pairs:
    """(HQ, LQ) batches in [0, 1]: HQ from a source of clean faces, LQ synthesized on the fly, seeded."""

    def __init__(self, source, seed: int, resolution: int):
        self.source = source
        self.rng = torch.Generator().manual_seed(seed + 1)
        self.resolution = resolution

    def next(self, preset_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        hq = self.source.next()
        lq, params = degrade_batch(hq, preset(preset_name, self.resolution),
                                   seed=int(torch.randint(MAX_SEED + 1, (1,), generator=self.rng)), return_params=True)
        return gray_where(hq, params), lq


def diffusion_loss(net: FlipNet, diffusion: GaussianDiffusion, target: torch.Tensor, cond: torch.Tensor, mode: str,
                   cfg: FlipNetTrainConfig, perceptual=None, encode=None) -> tuple[torch.Tensor, dict[str, float]]:
    """Diffusion loss of ``target`` given ``cond`` (both [0, 1], pixels) in ``mode``; plus x0 losses.

    ``encode`` maps faces in [-1, 1] to the prior's space (None: pixels); in latents there is no x0
    term (see the module docstring)."""
    pixels = encode is None
    encode = encode or (lambda x: x)
    face = cond * 2 - 1
    x0 = encode(target * 2 - 1)
    condition = net.condition(encode(face), face, mode)
    t = torch.randint(0, diffusion.num_timesteps, (len(x0),), device=x0.device)
    losses = diffusion.training_losses(lambda x, tt: net(x, tt, condition), x0, t, min_snr_gamma=cfg.min_snr_gamma)
    loss = losses["loss"].mean()
    parts = {"diffusion": loss.item()}
    if mode == "restore" and cfg.x0_weight and pixels:
        pred = losses["pred_xstart"].clamp(-1, 1)
        mse = F.mse_loss(pred, x0)
        loss = loss + cfg.x0_weight * mse
        parts["x0_mse"] = mse.item()
        if perceptual is not None and pixels:
            lp = perceptual(pred * 0.5 + 0.5, target)
            loss = loss + cfg.lpips_weight * lp
            parts["lpips"] = lp.item()
    return loss, parts


@torch.no_grad()
def held_out_loss(net: FlipNet, diffusion: GaussianDiffusion, hq: torch.Tensor, lq: torch.Tensor, mode: str,
                  seed: int = 1234, encode=None) -> float:
    """ε-MSE on fixed test pairs, timesteps and noise: comparable across steps (memorisation check).

    The ε part only: the VLB term of the hybrid loss is dominated by its t = 0 decoder term,
    which the condition cannot move, and it hid whether the condition was being used."""
    g = torch.Generator().manual_seed(seed)
    encode = encode or (lambda x: x)
    device = next(net.parameters()).device
    target, cond = (hq, lq) if mode == "restore" else (lq, hq)
    x0 = encode(target.to(device) * 2 - 1).cpu()
    t = torch.linspace(0, diffusion.num_timesteps - 1, len(x0)).round().long()
    noise = torch.randn(x0.shape, generator=g)
    face = cond.to(device) * 2 - 1
    condition = net.condition(encode(face), face, mode)
    out = diffusion.training_losses(lambda x, tt: net(x, tt, condition), x0.to(device), t.to(device), noise.to(device))
    return out["mse"].mean().item()


def evaluate_restoration(method: FLIPNET, hq: torch.Tensor, lq: torch.Tensor, steps: int,
                         **knobs) -> dict[str, float]:
    """PSNR/SSIM of restoration mode on fixed test pairs, next to the degraded input's (around the EMA copy);
    ``knobs``: other ``restore`` arguments (e.g. ``color_fix``, ``eta``)."""
    batch = len(lq) if method.vae is None else 16  # 512-px latents: batches of 16, each with its own seed
    out = torch.cat([method.restore(lq[i:i + batch], steps=steps, seed=i, **knobs)
                     for i in range(0, len(lq), batch)])
    return {"psnr": psnr(out, hq).mean().item(), "ssim": ssim(out, hq).mean().item(),
            "psnr_input": psnr(lq, hq).mean().item(), "ssim_input": ssim(lq, hq).mean().item()}


def _trainable(name: str) -> bool:
    """Stages 2–4: the adapters only (not the frozen prior, not the embedder)."""
    if name.startswith("prior."):
        return "lora_" in name
    return not name.startswith("embedder.")


@gives_back_signals
def train_flipnet(cfg: FlipNetTrainConfig) -> Path:
    """Run (or resume) all stages; returns the exported adapters file."""
    from accelerate import Accelerator

    from bfr.weights import load_state_dict, resolve_all
    from bfr.weights.hub import sha256_of

    if cfg.tier == "paper":  # the faces' folder, then both of Stable Diffusion's files, before a run folder is made
        list_images(cfg.clean_dir)
        resolve_all({"sd21_unet": cfg.unet, "sd21_vae": cfg.vae}, options={"sd21_unet": "--unet", "sd21_vae": "--vae"})
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_tier(out, cfg.tier)
    state_path, started_from = out / "state.safetensors", out / "started_from.json"
    refit = None  # the adapters a re-fit started from; their FLIPNET config is the run's, so that they fit
    if not has_state(out):
        started_from.unlink(missing_ok=True)  # from an earlier run in this folder
    elif cfg.init_from and not started_from.exists():
        raise InputError(f"{out} holds a run that did not start from other adapters: --init-from starts a new run, "
                         "give it a new folder")
    if cfg.init_from:
        refit = json.loads(started_from.read_text()) if started_from.exists() else describe_adapters(cfg.init_from)
        if refit["tier"] != cfg.tier:
            raise InputError(f"--init-from {refit['file']} holds {refit['tier']}-tier adapters; this run trains "
                             f"the {cfg.tier} tier")
        cfg.flip = refit["config"]
    write_run_config(out, {**asdict(cfg), "total_steps": cfg.total_steps}, resumed=has_state(out))
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    tune_for_cuda()
    device = accelerator.device
    torch.manual_seed(cfg.seed)
    source, offline_pool, held = clean_faces(cfg)
    pairs = Pairs(source, cfg.seed, cfg.resolution)
    val_hq, val_lq = validation_pairs(cfg, cfg.restore_preset, held)
    deg_hq, deg_lq = validation_pairs(cfg, cfg.degrade_presets[0], held)
    diffusion = diffusion_of(cfg)
    if cfg.tier == "compact":
        perceptual, perceptual_note = perceptual_loss(cfg.lpips_weight, device)
    else:
        perceptual = None
        perceptual_note = "none in latents (no clean-latent MSE or LPIPS term: see bfr/training/flipnet.py)"
    print(f"perceptual term: {perceptual_note}", flush=True)  # also in the model card

    net, vae = build(cfg)
    if refit is not None and not has_state(out):
        try:
            net.load_adapters({k: v.float() for k, v in load_state_dict(cfg.init_from).items()})
        except KeyError as e:
            raise InputError(f"--init-from {cfg.init_from}: {e.args[0]}") from None
        started_from.write_text(json.dumps(refit))
    net = net.to(device)
    if vae is not None:
        vae = vae.to(device)
    encode = None if vae is None else make_encoder(vae)
    ema = EMA(net)
    log = JsonlLog(out / "log.jsonl")
    stage, step, seconds = "embed", 0, 0.0
    prior_sha = sha256_of(prior_file(cfg))
    embed_opt = torch.optim.AdamW(net.embedder.parameters(), lr=cfg.embed_lr)
    net.requires_grad_(False)
    for name, p in net.named_parameters():
        p.requires_grad_(_trainable(name))
    flip_opt = torch.optim.AdamW(net.trainable_parameters(), lr=cfg.lr)
    if has_state(out):
        meta = saved_progress(out)
        stage, step, seconds = meta["stage"], meta["step"], meta["seconds"]
        if step > cfg.embed_steps and meta.get("prior_sha256") not in (None, prior_sha):
            raise InputError(f"{out} was trained on another prior (sha256 {meta['prior_sha256'][:12]}…) than "
                             f"{prior_file(cfg)} ({prior_sha[:12]}…); start a new run folder or pass the prior "
                             "it was trained on (--prior, or --unet for the paper tier).")
        load_state(state_path, net, ema.model, embed_opt if stage == "embed" else flip_opt)
        print(f"resumed at stage {stage}, step {step}")
    resumed_at = step
    reseed(cfg.seed, step, source.generator, pairs.rng)

    def save() -> None:
        save_state(state_path, net, ema.model, embed_opt if stage == "embed" else flip_opt,
                   {"stage": stage, "step": step, "seconds": seconds, "prior_sha256": prior_sha})

    stop = StopSignal(cfg.max_minutes)
    last_step = cfg.total_steps if cfg.max_steps is None else min(cfg.max_steps, cfg.total_steps)
    bar = tqdm(total=cfg.total_steps, initial=step, desc=f"flipnet:{stage}", dynamic_ncols=True)
    running: dict[str, float] = {}

    def track(parts: dict[str, float]) -> None:
        if bar.desc != f"flipnet:{stage}":
            bar.set_description(f"flipnet:{stage}")
            running.clear()
        for k, v in parts.items():
            running[k] = v if k not in running else 0.98 * running[k] + 0.02 * v
        bar.update(1)
        bar.set_postfix({k: f"{v:.4f}" for k, v in running.items()})

    # 1. face embedding -------------------------------------------------------------------------
    if stage == "embed":
        net.embedder.requires_grad_(True)
        while step < min(cfg.embed_steps, last_step) and not stop:
            t0 = time.time()
            for group in embed_opt.param_groups:
                group["lr"] = warmup_cosine(step, cfg.embed_lr, cfg.warmup_steps, cfg.embed_steps)
            name = (cfg.restore_preset, *cfg.degrade_presets)[step % (1 + len(cfg.degrade_presets))]
            hq, lq = (net.embedder.fit(x.to(device) * 2 - 1) for x in pairs.next(name))  # the embedder's size
            with accelerator.autocast():
                tok = {"hq": net.embedder.tokens(hq, "hq"), "lq": net.embedder.tokens(lq, "lq")}
                recon = {k: net.embedder.decoders[k](tok[k]).float() for k in tok}
            parts = {f"l1_{k}": (recon[k] - x).abs().mean() for k, x in (("hq", hq), ("lq", lq))}
            if perceptual is not None:
                parts.update({f"lpips_{k}": cfg.lpips_weight * perceptual(recon[k] * 0.5 + 0.5, x * 0.5 + 0.5)
                              for k, x in (("hq", hq), ("lq", lq))})
            if step >= cfg.align_from * cfg.embed_steps:
                parts["contrastive"] = two_way_contrastive(pooled(tok["hq"].float()), pooled(tok["lq"].float()),
                                                           net.embedder.logit_scale)
            loss = sum(parts.values())
            accelerator.backward(loss)
            embed_opt.step()
            embed_opt.zero_grad(set_to_none=True)
            step += 1
            ema.update(net, step)
            seconds += time.time() - t0
            track({k: v.item() for k, v in parts.items()})
            if step % cfg.eval_every == 0:
                log.write(stage=stage, step=step, seconds=seconds, **running,
                          **embedding_check(ema.model, val_hq.to(device), val_lq.to(device)))
            if step % cfg.save_every == 0:
                save()
        if step >= cfg.embed_steps:
            net.embedder.requires_grad_(False)
            net.embedder.load_state_dict(ema.model.embedder.state_dict())  # both copies go on with the averaged one
            stage = "degrade"
            save()

    # 2.–4. diffusion stages --------------------------------------------------------------------
    offline_path = out / "offline_lq.npz"
    offline: tuple[torch.Tensor, torch.Tensor] | None = None
    gen = torch.Generator().manual_seed(cfg.seed + 7 + resumed_at)
    while not stop and stage in ("degrade", "offline", "restore") and step < last_step:
        if stage == "offline":
            offline = make_offline(flipnet_method(ema.model, cfg, vae, device), offline_pool, cfg, offline_path)
            stage = "restore"
            save()
            continue
        last = cfg.embed_steps + (cfg.degrade_steps if stage == "degrade" else cfg.degrade_steps + cfg.restore_steps)
        if step >= last:
            stage = "offline" if stage == "degrade" else "done"
            save()
            continue
        if stage == "restore" and offline is None:
            offline = make_offline(flipnet_method(ema.model, cfg, vae, device), offline_pool, cfg, offline_path)
        t0 = time.time()
        local = step - cfg.embed_steps - (cfg.degrade_steps if stage == "restore" else 0)
        span = cfg.degrade_steps if stage == "degrade" else cfg.restore_steps
        for group in flip_opt.param_groups:
            group["lr"] = warmup_cosine(local, cfg.lr, cfg.warmup_steps, span)
        degrade_turn = stage == "degrade" or torch.rand(1, generator=gen).item() < cfg.degrade_share
        if degrade_turn:
            hq, lq = pairs.next(cfg.degrade_presets[step % len(cfg.degrade_presets)])
            target, cond, mode = lq, hq, "degrade"
        else:
            hq, lq = pairs.next(cfg.restore_preset)
            n_off = int(round(cfg.offline_fraction * len(hq))) if offline is not None else 0
            if n_off:
                idx = torch.randint(len(offline[0]), (n_off,), generator=gen)
                hq = torch.cat([hq[n_off:], offline[0][idx].float() / 255])
                lq = torch.cat([lq[n_off:], offline[1][idx].float() / 255])
            target, cond, mode = hq, lq, "restore"
        with accelerator.autocast():
            loss, parts = diffusion_loss(net, diffusion, target.to(device), cond.to(device), mode, cfg, perceptual,
                                         encode)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(net.trainable_parameters(), 1.0)
        flip_opt.step()
        flip_opt.zero_grad(set_to_none=True)
        step += 1
        ema.update(net, step)
        seconds += time.time() - t0
        track({f"{mode}_{k}": v for k, v in parts.items()})
        if step % cfg.eval_every == 0:
            record = {"stage": stage, "step": step, "seconds": seconds,
                      "heldout_degrade": held_out_loss(ema.model, diffusion, deg_hq, deg_lq, "degrade", encode=encode),
                      "heldout_restore": held_out_loss(ema.model, diffusion, val_hq, val_lq, "restore", encode=encode)}
            if stage == "restore":
                method = flipnet_method(ema.model, cfg, vae, device)
                record.update({f"val_{k}": v for k, v in
                               evaluate_restoration(method, val_hq, val_lq, cfg.eval_steps).items()},
                              val_eta=method.defaults["eta"])
            log.write(**record)
        if step % cfg.save_every == 0:
            save()
    bar.close()
    save()
    return export(ema.model, cfg, out, step, seconds, prior_sha, perceptual_note,
                  finished=step >= cfg.total_steps)


@torch.no_grad()
def embedding_check(net: FlipNet, hq: torch.Tensor, lq: torch.Tensor) -> dict[str, float]:
    """How often an LQ face's pooled token is nearest its own HQ face's, among the held-out batch."""
    a, b = pooled(net.embedder.tokens(hq * 2 - 1, "hq")), pooled(net.embedder.tokens(lq * 2 - 1, "lq"))
    top1 = ((b @ a.t()).argmax(dim=1) == torch.arange(len(a), device=a.device)).float().mean().item()
    face = net.embedder.fit(hq * 2 - 1)
    recon_l1 = (net.embedder.reconstruct(face, "hq") - face).abs().mean().item()
    return {"val_retrieval_top1": top1, "val_recon_l1_hq": recon_l1}


@torch.no_grad()
def make_offline(method: FLIPNET, pool: Callable[[], torch.Tensor], cfg: FlipNetTrainConfig,
                 path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``offline_variants`` LQ versions of each of ``offline_faces`` train faces (from ``pool()``, uint8) by
    the degradation mode, as (HQ, LQ) pairs cached as uint8 npz. The variants keep their HQ face's channel
    statistics (the colour fix, as at inference): global colour shifts come from the synthetic pairs."""
    variants = int(cfg.offline_variants)
    if path.exists():
        data = np.load(path)
        if (int(data["variants"]) if "variants" in data else 1) == variants:
            return torch.from_numpy(data["hq"]), torch.from_numpy(data["lq"])
        print(f"{path} holds another number of variants per face: making the offline LQ again")
    faces = pool()
    g = torch.Generator().manual_seed(cfg.seed + 99)
    idx = torch.randperm(len(faces), generator=g)[:cfg.offline_faces]
    hq = faces[idx]
    lq = []
    batch = max(1, (64 if method.vae is None else 8) // variants)
    for i in tqdm(range(0, len(hq), batch), desc="offline LQ (degradation mode)"):
        out = method.degrade(hq[i:i + batch].float() / 255, variants=variants, seed=cfg.seed + i).flatten(0, 1)
        lq.append((out * 255).round().to(torch.uint8))
    lq_t = torch.cat(lq) if lq else torch.empty(0, 3, cfg.resolution, cfg.resolution, dtype=torch.uint8)
    hq = hq.repeat_interleave(variants, dim=0)
    np.savez_compressed(path, hq=hq.numpy(), lq=lq_t.numpy(), variants=np.array(variants))
    save_grid(torch.cat([hq[:8].float() / 127.5 - 1, lq_t[:8].float() / 127.5 - 1]), path.with_suffix(".png"), nrow=8)
    return hq, lq_t


def export(net: FlipNet, cfg: FlipNetTrainConfig, out: Path, step: int, seconds: float, prior_sha: str,
           perceptual_note: str, finished: bool) -> Path:
    """Adapters in fp16 safetensors with the config and the prior's sha256 in the metadata."""
    extra = {"prior_sha256": prior_sha, "resolution": cfg.resolution, "steps": step, "train_seconds": round(seconds),
             "hardware": hardware(), "finished": finished, "losses": perceptual_note, "tier": cfg.tier}
    if (out / "started_from.json").exists():
        extra["started_from"] = json.loads((out / "started_from.json").read_text())
    path = export_weights(net.adapter_state_dict(), net.config.to_dict(), out / f"{WEIGHTS_NAME[cfg.tier]}.safetensors",
                          kind="flipnet", extra=extra)
    print(f"step {step}: exported {path}")
    return path


def refit_line(source: dict) -> str:
    """The card's line for a run that started from other adapters (``--init-from``)."""
    steps = f"{source['steps']:,} steps, " if source.get("steps") is not None else ""
    return (f"- started from the adapters `{source['file']}` (sha256 {source['sha256'][:12]}…; {steps}trained around "
            f"the prior {str(source['prior_sha256'])[:12]}…): their face embedding was kept (no embedding stage) "
            "and the other adapters re-fitted around this prior; the steps above count this run only")


def write_flipnet_card(run_dir: str | Path, dest: str | Path | None = None, n_test: int = 64,
                       device: str | torch.device | None = None) -> Path:
    """Measure the exported adapters on seeded test faces (50 DDIM steps) and write the card (and copy the
    weights and a sample grid to ``dest`` when given, e.g. bfr/weights/compact).

    Test faces: LFW test faces (compact) or the run's held-out clean faces (paper, at most ``val_faces``).
    ``device``: default CUDA when present (the paper tier runs Stable Diffusion)."""
    import shutil

    from bfr.methods.base import pick_device
    from bfr.methods.flipnet import attach_adapters

    run = Path(run_dir)
    config = config_of_run(run)
    cfg = asdict(config)
    name = WEIGHTS_NAME[config.tier]
    weights = run / f"{name}.safetensors"
    meta = {k: json.loads(v) for k, v in read_metadata(weights).items() if k not in ("config", "kind")}
    prior, vae = load_prior(config)
    net = attach_adapters(prior, weights, prior_file(config)).eval()
    held = list_images(config.clean_dir)[:config.val_faces] if config.tier == "paper" else None
    hq, lq = validation_pairs(config, config.restore_preset, held, n=n_test)
    method = flipnet_method(net, config, vae, pick_device(device))
    print(f"model card: restoring {len(hq)} test faces three ways (50 steps each; minutes on a CPU) …", flush=True)
    metrics = evaluate_restoration(method, hq, lq, steps=50)
    for suffix, knobs in (("no_color_fix", dict(color_fix=False)), ("eta0", dict(eta=0.0))):
        metrics.update({f"{k}_{suffix}": v for k, v in evaluate_restoration(method, hq, lq, steps=50, **knobs).items()
                        if k in ("psnr", "ssim")})
    restored = method.restore(lq[:8], steps=50, seed=0)
    variants = method.degrade(hq[:8], variants=2, steps=50, seed=0)
    grid = torch.cat([lq[:8], restored, hq[:8], variants[:, 0], variants[:, 1]]) * 2 - 1
    save_grid(grid, run / "samples_final.png", nrow=min(8, len(hq)))

    log = JsonlLog(run / "log.jsonl").read()
    rows = [r for r in log if r.get("stage") != "embed"]
    embed_rows = [r for r in log if r.get("stage") == "embed"]
    table = ["| stage | step | held-out ε-MSE (degrade) | held-out ε-MSE (restore) | val PSNR (20 steps) |",
             "|---|---|---|---|---|"]
    shown = rows[:: max(1, len(rows) // 12)]
    shown += [r for r in rows[-1:] if r not in shown]  # the last row once, even when the stride hits it
    for r in shown:
        table.append(f"| {r['stage']} | {r['step']} | {r['heldout_degrade']:.4f} | {r['heldout_restore']:.4f} | "
                     f"{r.get('val_psnr', float('nan')):.2f} |")
    embed_cfg = cfg["flip"]["embed"]
    perceptual = meta["losses"] if config.tier == "compact" else "none in this tier"
    if meta.get("started_from"):
        embed_line = (f"Kept from `{meta['started_from']['file']}` (this run had no embedding stage; see Training): "
                      f"HQ and LQ encoders on faces resized to {embed_cfg['image_size']} px.")
    else:
        embed_line = (f"HQ and LQ autoencoders on faces resized to {embed_cfg['image_size']} px ({embed_cfg['grid']}"
                      f"×{embed_cfg['grid']} tokens of width {embed_cfg['dim']}), trained with L1 reconstruction "
                      f"(perceptual term: {perceptual}) and, from {cfg['align_from']:.0%} of the stage, the two-way "
                      "contrastive loss; no adversarial term (the paper's Stage I has one; the decoders are only a "
                      "training device here). ")
        embed_line += (f"After {embed_rows[-1]['step']} steps an LQ test face's pooled token is nearest its own HQ "
                       f"face's for {embed_rows[-1]['val_retrieval_top1']:.0%} of a batch of 16 (chance 6%)."
                       if embed_rows else "Its retrieval check was not logged.")
    total = config.total_steps
    widths = sorted({hub.to_q.in_features for hub in net.boost})  # of the prior's self-attention layers
    span = f"{widths[0]}" if len(widths) == 1 else f"{widths[0]}–{widths[-1]}"
    rank_note = (f" (the paper's 64 is for Stable Diffusion's 320–1280-wide projections; this prior's attention "
                 f"layers are {span} wide)" if config.tier == "compact" and cfg["flip"]["lora_rank"] < 64 else "")
    reproduce = "" if config.tier == "compact" else f" --tier paper --clean-dir {config.clean_dir}"
    if meta.get("started_from"):
        prior = f" --prior {config.prior}" if config.prior else ""
        reproduce += f" --init-from {meta['started_from']['file']}{prior}"
    if config.tier == "compact":
        title, around = "compact tier", "the project's frozen 64 px face prior (prior64)"
        face_entry = ("through a zero-initialised cross-attention per site (the ADM prior has no text "
                      "cross-attention)")
        data = data_note(json.loads((run / "config.json").read_text()))  # with the --train-images of every invocation
        test_faces = f"seeded `{config.restore_preset}`-degraded LFW test faces"
        limits = ("Trained for few steps on a CPU around an undertrained prior: a demonstration of the method's "
                  "mechanics, not of its published quality. Restoration starts from pure noise, so identity is not "
                  "guaranteed. 64 px only.")
    else:
        title, around = "paper tier", "the frozen Stable Diffusion 2.1-base UNet, in its VAE's latents"
        face_entry = "as the UNet's cross-attention context, in place of text (SD's own cross-attention)"
        data = (f"Clean faces from `{config.clean_dir}` (the paper trains on FFHQ), the first "
                f"{config.val_faces} files held out for the checks and this card's test"
                + (f"; only the next {config.train_images} trained on (`--train-images`)." if config.train_images
                   else "."))
        test_faces = f"seeded `{config.restore_preset}`-degraded held-out clean faces"
        limits = ("Restoration starts from pure noise, so identity is not guaranteed. No real paired degradation "
                  "data was used (see Training).")
    lines = [
        f"# FLIPNET, {title} ({name})", "",
        f"FLIPNET (Miao et al., ICCV 2025) re-implemented from the paper (no code or weights are public) around "
        f"{around}: LoRA (rank {cfg['flip']['lora_rank']}) on every attention projection{rank_note}, a "
        "BoostHub beside every self-attention (queries from the target, keys/values from the condition's features "
        "at the same layer, "
        "zero-initialised output, φ = 1), a learned mode embedding added to the timestep embedding (restore = 0, "
        "degrade = 1), and the face embedding (HQ/LQ convolutional autoencoders aligned by a two-way contrastive "
        f"loss) entering {face_entry}. Inference: pure noise, 50 DDIM steps with η = 1, no guidance, then each sample "
        "takes its condition face's per-channel mean and spread (StableSR's AdaIN colour fix; `color_fix`), in both "
        "modes: the degradation mode's variants keep the clean face's global colour and contrast "
        "(`--no-color-fix` shows them raw).", "",
        "## Training", "",
        f"- steps: {meta['steps']} of {total} planned (embed {cfg['embed_steps']}, degrade {cfg['degrade_steps']}, "
        f"restore {cfg['restore_steps']}); finished: {meta['finished']}; batch {cfg['batch_size']}, AdamW lr "
        f"{cfg['lr']} (embedder {cfg['embed_lr']}), EMA with warm-up",
        f"- precision: {cfg['mixed_precision']}; hardware: {meta['hardware']}; training time: "
        f"{format_duration(meta['train_seconds'])}",
        f"- frozen prior: sha256 {meta['prior_sha256'][:16]}… (the adapters refuse any other prior)",
        *([refit_line(meta["started_from"])] if meta.get("started_from") else []),
        f"- degradation mode trained on synthetic pairs ({', '.join(cfg['degrade_presets'])} presets): no real "
        "paired degradation data is available here, so this mode learns a richer synthetic pipeline, not real "
        "camera degradations as in the paper.",
        f"- restoration mode: on-the-fly `{cfg['restore_preset']}` degradations plus "
        f"{cfg['offline_fraction']:.0%} of each batch from {cfg['offline_faces']} train faces × "
        f"{cfg.get('offline_variants', 1)} offline LQ variants made by the "
        f"degradation mode (the paper's \"+O/F\"); {cfg['degrade_share']:.0%} of these steps stay in degradation "
        f"mode. Loss: diffusion loss (min-SNR-{cfg['min_snr_gamma']:g})"
        + (f" + {cfg['x0_weight']:g}·MSE on the predicted clean face; perceptual term: {meta['losses']}."
           if config.tier == "compact" else f" only; clean-image terms: {meta['losses']}."),
        f"- reproduce: `python -m bfr train flipnet{reproduce}` (resumable; stages embed → degrade → offline → "
        "restore).", "",
        "## Data", "", data, "",
        "## Face embedding", "", embed_line, "",
        "## Log", "", *table, "",
        "## Test", "",
        f"Restoration mode on {len(hq)} {test_faces} (50 DDIM steps, η = 1, seed 0): PSNR {metrics['psnr']:.2f} dB "
        f"/ SSIM {metrics['ssim']:.3f}, against {metrics['psnr_input']:.2f} dB / {metrics['ssim_input']:.3f} for the "
        f"degraded input; without the colour fix {metrics['psnr_no_color_fix']:.2f} dB / "
        f"{metrics['ssim_no_color_fix']:.3f}; with η = 0 {metrics['psnr_eta0']:.2f} dB / {metrics['ssim_eta0']:.3f}. "
        "The periodic checks in the log use 20 steps.", "",
        "## Limitations", "", limits, "",
        "## Samples", "",
        "Rows: degraded input, FLIPNET restoration, ground truth, two degradation-mode variants of the ground truth.",
        "", f"![samples]({name}_samples.png)", ""]
    card = run / f"{name}.md"
    (run / f"{name}_samples.png").write_bytes((run / "samples_final.png").read_bytes())
    card.write_text("\n".join(lines))
    (run / "test_metrics.json").write_text(json.dumps(metrics, indent=2))
    if dest is not None:
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for file in (f"{name}.safetensors", f"{name}.md", f"{name}_samples.png"):
            shutil.copyfile(run / file, dest / file)
        card = dest / f"{name}.md"
    return card
