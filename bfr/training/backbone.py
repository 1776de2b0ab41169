"""Train the compact restoration backbone: a small SwinIR with L1 on synthetic degradations.

data → model → loop → save card. This is DifFace's backbone recipe (L1, DifFace training
degradations, scaled to the model resolution) at 64 px on LFW train faces. Validation
PSNR on a fixed, seeded degraded slice of the test split is logged as it trains.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bfr.degradations import degrade_batch, preset
from bfr.errors import MAX_SEED, check_seed
from bfr.imageio import LUMA
from bfr.metrics import psnr
from bfr.nets.configs import COMPACT_SWINIR_64
from bfr.nets.swinir import SwinIR
from bfr.training.cards import write_card, write_run_config
from bfr.training.checkpoint import resume_or_init, save_state
from bfr.training.common import (
    JsonlLog,
    StopSignal,
    export_weights,
    gives_back_signals,
    hardware,
    reseed,
    rewarm,
    save_grid,
    tune_for_cuda,
    warmup_cosine,
)
from bfr.training.data import FaceBatches, load_faces, split_files
from bfr.training.ema import EMA


@dataclass
class BackboneConfig:
    out_dir: str = "runs/swinir64"
    net: dict = field(default_factory=lambda: dict(COMPACT_SWINIR_64))
    resolution: int = 64
    degradation: str = "difface"
    batch_size: int = 16
    lr: float = 2e-4
    warmup_steps: int = 300
    total_steps: int = 30_000
    max_steps: int | None = None
    max_minutes: float | None = None
    eval_every: int = 250
    sample_every: int = 1000
    save_every: int = 250
    init_from: str | None = None
    mixed_precision: str = "bf16"
    seed: int = 0
    train_images: int | None = None  # use only the first N train faces (quick experiments, tests)

    def __post_init__(self):
        self.seed = check_seed(self.seed)  # the user range, as every command's --seed: fail before loading data


def validation_set(resolution: int, degradation: str, n: int = 64,
                   seed: int = 2024) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed (HQ, LQ) pairs in [0, 1] from the test split: the same every run."""
    hq = load_faces(split_files("test")[1::7][:n], resolution).float() / 255.0
    lq, params = degrade_batch(hq, preset(degradation, resolution), seed=seed, return_params=True)
    return gray_where(hq, params), lq


def gray_where(hq: torch.Tensor, params: list) -> torch.Tensor:
    """Targets made gray where the LQ was (as in the published recipes), so color is not invented."""
    gray = torch.tensor([bool(getattr(p, "gray", False)) for p in params])
    if not gray.any():
        return hq
    luma = (hq * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True).expand_as(hq)
    return torch.where(gray.view(-1, 1, 1, 1), luma, hq)


@torch.no_grad()
def evaluate(model: torch.nn.Module, hq: torch.Tensor, lq: torch.Tensor) -> dict[str, float]:
    device = next(model.parameters()).device
    out = torch.cat([model(lq[i:i + 16].to(device)).float().clamp(0, 1).cpu() for i in range(0, len(lq), 16)])
    return {"psnr": psnr(out, hq).mean().item(), "psnr_input": psnr(lq, hq).mean().item()}


@gives_back_signals
def train_backbone(cfg: BackboneConfig) -> Path:
    """Run (or resume) training; returns the path of the exported EMA weights."""
    from accelerate import Accelerator

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    tune_for_cuda()
    torch.manual_seed(cfg.seed)
    print(f"loading LFW faces at {cfg.resolution} px …")
    faces = load_faces(split_files("train")[:cfg.train_images], cfg.resolution)
    batches = FaceBatches(faces, cfg.batch_size, seed=cfg.seed)
    val_hq, val_lq = validation_set(cfg.resolution, cfg.degradation)
    degradation = preset(cfg.degradation, cfg.resolution)

    model = SwinIR(**cfg.net)
    ema = EMA(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    state_path = out / "state.safetensors"
    log = JsonlLog(out / "log.jsonl")
    step, seconds = resume_or_init(state_path, model, ema.model, optimizer, cfg.init_from,
                                   continue_count=True)
    first_step = None if state_path.exists() else step  # fresh AdamW moments: re-warm (rewarm)
    resumed_at = step
    reseed(cfg.seed, step, batches.generator)
    write_run_config(out, asdict(cfg), resumed=first_step is None)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema.model.to(accelerator.device)

    stop = StopSignal(cfg.max_minutes)
    last_step = cfg.total_steps if cfg.max_steps is None else cfg.max_steps
    bar = tqdm(total=last_step, initial=step, desc="backbone", dynamic_ncols=True)
    running = None
    data_gen = torch.Generator().manual_seed(cfg.seed + step)
    while step < last_step and not stop:
        t0 = time.time()
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(step, cfg.lr, cfg.warmup_steps, cfg.total_steps) * rewarm(step, first_step)
        hq = batches.next() * 0.5 + 0.5
        lq, params = degrade_batch(hq, degradation, seed=int(torch.randint(MAX_SEED + 1, (1,), generator=data_gen)),
                                   return_params=True)
        hq = gray_where(hq, params)
        hq, lq = hq.to(accelerator.device), lq.to(accelerator.device)
        with accelerator.autocast():
            loss = (model(lq).float() - hq).abs().mean()
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        ema.update(accelerator.unwrap_model(model), step)
        seconds += time.time() - t0
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(l1=f"{running:.4f}")
        if step % cfg.eval_every == 0:
            log.write(step=step, seconds=seconds, train_l1=running, lr=optimizer.param_groups[0]["lr"],
                      **{f"val_{k}": v for k, v in evaluate(ema.model, val_hq, val_lq).items()})
        if step % cfg.sample_every == 0:
            save_preview(ema.model, val_hq[:8], val_lq[:8], out / f"samples_{step:06d}.png")
        if step % cfg.save_every == 0:
            save_state(state_path, accelerator.unwrap_model(model), ema.model, optimizer,
                       {"step": step, "seconds": seconds})
    bar.close()
    if step < last_step:
        print(f"stopped at step {step} of {last_step}; rerun the same command to resume (exporting what there is)")
    elif step == resumed_at:
        print(f"nothing to train: the run is already at step {step} (--steps counts the run's total steps)")
    save_state(state_path, accelerator.unwrap_model(model), ema.model, optimizer, {"step": step, "seconds": seconds})
    save_preview(ema.model, val_hq[:8], val_lq[:8], out / "samples_final.png")
    metrics = evaluate(ema.model, val_hq, val_lq)
    weights = export_weights(ema.model, cfg.net, out / "swinir64.safetensors", kind="swinir",
                             extra={"steps": step, "train_seconds": round(seconds), "hardware": hardware(),
                                    "val": metrics})
    print(f"step {step}: val PSNR {metrics['psnr']:.2f} dB (input {metrics['psnr_input']:.2f}); exported {weights}")
    write_backbone_card(out, weights, out, metrics)
    return weights


def write_backbone_card(run_dir: Path, weights: Path, dest: Path, metrics: dict[str, float]) -> Path:
    """The backbone's model card (in ``dest``, beside a copy of the weights and a preview grid)."""
    return write_card(
        run_dir, weights, dest, "Compact restoration backbone (swinir64)",
        "A small SwinIR (pixel-unshuffle ×2 stem, 4 residual Swin groups of depth 4, width 64, window 8, "
        "nearest+conv upsampler; 0.78 M parameters) for 64×64 faces in the LFW framing, trained with L1 on "
        "DifFace's training degradations scaled to 64 px (σ ∈ [0.1, 1.9], r ∈ [0.8, 4], noise ≤ 20, "
        "JPEG 30–100, 1% gray). It is DifFace's backbone recipe at small scale and gives x̂0 to the "
        "compact DifFace tier.",
        {"Validation": f"PSNR on 64 seeded degraded LFW test faces: {metrics['psnr']:.2f} dB restored vs "
                       f"{metrics['psnr_input']:.2f} dB for the degraded input.",
         "Limitations": "Regression to the mean: outputs are smooth (that is DifFace's premise). 64 px only."},
        samples_png="samples_final.png", command="train backbone",
    )


@torch.no_grad()
def save_preview(model: torch.nn.Module, hq: torch.Tensor, lq: torch.Tensor, path: Path) -> None:
    """Rows: degraded input, restored, ground truth."""
    device = next(model.parameters()).device
    restored = model(lq.to(device)).float().clamp(0, 1).cpu()
    save_grid(torch.cat([lq, restored, hq]) * 2 - 1, path, nrow=len(hq))
