"""Train the compact IDM: a conditional diffusion restorer, in rounds that clean their own data.

data → model → loop → save card, once per round:

- round 0 trains on the HQ LFW train faces, with LQ inputs synthesized on the fly (the
  GFPGAN/CodeFormer ranges scaled to the face size; METHODS.md §4);
- round k ≥ 1 ("extrinsic iterative enhancement") first cleans the training set with
  round k−1's model: every train face is degraded *mildly* (the "mild" preset, fixed seeds)
  and restored; the cleaned faces are cached as uint8 safetensors and replace the HQ set.
  The model is then retrained, starting from round k−1's weights, for fewer steps.

Why a mild degradation rather than the HQ face itself or a heavy one: the HQ face as input
sits at the no-degradation edge of the training distribution, where the model has learned
to copy its input, so it would hand back the face's own blur and JPEG blocking; a heavy
degradation would make the model invent detail and drift from the person, and those
inventions would become the next round's targets. A mild one (at 64 px: noise ≤ 5/255,
JPEG 60–90, blur σ ≤ 0.4 px) puts the input well inside the training range, where the
model's learned "make it a clean face" acts, while the identity and structure survive.

Each round writes ``round{k}/``: ``state.safetensors`` (resumable), ``log.jsonl``,
``idm64.safetensors`` (EMA weights, kind "idm"), ``samples.png`` (rows LQ | restored | HQ),
and, for k ≥ 1, ``cleaned.safetensors`` with ``cleaned_examples.png`` (rows HQ | cleaned).
Test metrics (PSNR/SSIM on a fixed seeded "gfpgan" slice of the LFW test split) are appended
to ``rounds.json``; after the last round the final weights, a model card with the round-by-
round metrics and a sample grid are written to the run folder as ``idm64.*``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from bfr.degradations import degrade_batch, preset
from bfr.diffusion import GaussianDiffusion
from bfr.errors import MAX_SEED, InputError, check_seed
from bfr.methods.idm import COMPACT_STEPS, IDM, prediction_of
from bfr.metrics import psnr, ssim
from bfr.nets.configs import COMPACT_IDM_64
from bfr.nets.unet import UNetModel
from bfr.training.backbone import gray_where, validation_set
from bfr.training.cards import data_note, format_duration, write_run_config
from bfr.training.checkpoint import recorded_progress, resume_or_init, save_state
from bfr.training.common import (
    JsonlLog,
    StopSignal,
    export_weights,
    gives_back_signals,
    hardware,
    held_out_loss,
    save_grid,
    warmup_cosine,
)
from bfr.training.data import FaceBatches, load_faces, split_files
from bfr.training.ema import EMA, MAX_DECAY
from bfr.weights import read_metadata, save_safetensors

WEIGHTS_NAME = "idm64.safetensors"


@dataclass
class IDMConfig:
    out_dir: str = "runs/idm64"
    net: dict = field(default_factory=lambda: dict(COMPACT_IDM_64))
    rounds: int = 3  # round 0 on the LFW faces, then rounds-1 cleaning rounds
    steps_per_round: int = 30_000  # round 0's length (its cosine schedule)
    refine_steps: int | None = None  # rounds ≥ 1 (from the previous weights); default steps_per_round // 4
    refine_lr_scale: float = 0.5  # rounds ≥ 1 continue at a lower rate
    degradation: str = "gfpgan"  # training LQ, and the test slice
    clean_degradation: str = "mild"  # what the training faces are put through before cleaning
    clean_steps: int = COMPACT_STEPS  # DDIM η=0 steps of a cleaning restoration (as the tier restores)
    clean_batch: int = 64
    batch_size: int = 16  # the CLI default; use 64 on a GPU
    lr: float = 1e-4
    warmup_steps: int = 500
    min_snr_gamma: float | None = None  # None: plain MSE (SR3's L2); e.g. 5 for min-SNR weighting
    # [choice] "v" rather than SR3's ε: with ε the model learns the LQ's global colour only
    # slowly (measured: 2,087 CPU steps from the prior still gave faces in random tints at 25
    # DDIM steps, although the LQ already cut the ε-MSE 2.5× at t = 250); see GaussianDiffusion.
    prediction: str = "v"
    grad_clip: float = 1.0
    eval_every: int = 250
    sample_every: int = 2000
    save_every: int = 250
    preview_steps: int = 25  # chain length of the periodic sample grids
    val_images: int = 64
    val_steps: int = COMPACT_STEPS  # chain length of the end-of-round test metrics (the compact tier's default)
    init_from: str | None = None  # round 0 starts from these: idm weights, or a face prior (see prior_to_idm)
    mixed_precision: str = "bf16"
    seed: int = 0
    max_minutes: float | None = None  # stop (and save) after this long; a rerun resumes
    train_images: int | None = None  # use only the first N train faces (quick experiments, tests)

    def __post_init__(self):
        self.seed = check_seed(self.seed)  # the user range, as every command's --seed: fail before loading data

    def round_steps(self, k: int) -> int:
        return self.steps_per_round if k == 0 else (self.refine_steps or max(1, self.steps_per_round // 4))


@gives_back_signals
def train_idm(cfg: IDMConfig) -> Path | None:
    """Run (or resume) every round; returns the final weights, or None when stopped before the end."""
    from accelerate import Accelerator

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    resumed = any(out.glob("round*/state.safetensors"))
    if (out / "config.json").is_file() and resumed:
        before = json.loads((out / "config.json").read_text()).get("prediction", "eps")
        if before != cfg.prediction:
            raise InputError(f"{out} holds a run that predicts {before!r}, not {cfg.prediction!r}: "
                             "use another output folder")
    write_run_config(out, asdict(cfg), resumed)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    size = cfg.net["image_size"]
    print(f"loading LFW train/test faces at {size} px …")
    hq_faces = load_faces(split_files("train")[:cfg.train_images], size)
    val_hq, val_lq = validation_set(size, cfg.degradation, n=cfg.val_images)
    stop = StopSignal(cfg.max_minutes)

    weights = cfg.init_from
    for k in range(cfg.rounds):
        rdir = out / f"round{k}"
        if _round_record(out, k) is not None and (rdir / WEIGHTS_NAME).is_file():
            weights = str(rdir / WEIGHTS_NAME)
            continue
        if k == 0:
            targets = hq_faces
        else:
            cleaner = IDM(load_idm_net(weights), resolution=size, framing="lfw", tier="compact",
                          device=accelerator.device, prediction=prediction_of(weights))
            targets = clean_faces(cleaner, hq_faces, rdir / "cleaned.safetensors", cfg, stop)
            if targets is None:
                return None
            save_grid(torch.cat([hq_faces[:8], targets[:8]]).float() / 127.5 - 1, rdir / "cleaned_examples.png",
                      nrow=min(8, len(targets)))
        ema_model, seconds, steps = train_round(cfg, k, targets, weights, accelerator, stop, val_hq, val_lq)
        if steps < cfg.round_steps(k):
            print(f"round {k} stopped at step {steps} of {cfg.round_steps(k)}; rerun to resume")
            return None
        metrics, restored = evaluate(ema_model, val_hq, val_lq, cfg.val_steps, seed=cfg.seed,
                                     prediction=cfg.prediction)
        n = min(8, len(val_hq))
        save_grid(torch.cat([val_lq[:n], restored[:n], val_hq[:n]]) * 2 - 1, rdir / "samples.png", nrow=n)
        trained_on = "lfw" if k == 0 else f"cleaned by round {k - 1}"
        before_steps, before_seconds = _continued(_start_meta(cfg.init_from)) if k == 0 else (0, 0.0)
        weights_path = export_weights(  # steps and time: the round's in all, a continued round's earlier runs too
            ema_model, cfg.net, rdir / WEIGHTS_NAME, kind="idm",
            extra={"round": k, "steps": before_steps + steps, "train_seconds": round(before_seconds + seconds),
                   "hardware": hardware(),
                   "targets": trained_on, "test": metrics, "prediction": cfg.prediction})
        record = {"round": k, "steps": steps, "targets": trained_on,
                  "train_seconds": round(seconds), "weights": str(weights_path.relative_to(out)),
                  "cleaned": f"round{k}/cleaned.safetensors" if k else None, **metrics}
        _append_round(out, record)
        print(f"round {k}: test PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f} "
              f"(input {metrics['psnr_input']:.2f} dB, {metrics['ssim_input']:.4f}); exported {weights_path}")
        weights = str(weights_path)
    final = out / f"round{cfg.rounds - 1}" / WEIGHTS_NAME
    return write_idm_card(out, out)[0] if final.is_file() else None


def train_round(cfg: IDMConfig, k: int, targets: torch.Tensor, init_from: str | None, accelerator,
                stop: StopSignal, val_hq: torch.Tensor, val_lq: torch.Tensor) -> tuple[UNetModel, float, int]:
    """One round of conditional-diffusion training on ``targets`` (uint8); returns (EMA net, seconds, step)."""
    rdir = Path(cfg.out_dir) / f"round{k}"
    size = cfg.net["image_size"]
    total = cfg.round_steps(k)
    lr = cfg.lr if k == 0 else cfg.lr * cfg.refine_lr_scale
    warmup = cfg.warmup_steps if k == 0 else min(cfg.warmup_steps, max(1, total // 10))
    diffusion = GaussianDiffusion.create(1000, "linear", learn_sigma=False, prediction=cfg.prediction)
    degradation = preset(cfg.degradation, size)

    torch.manual_seed(cfg.seed + k)
    model = UNetModel(**cfg.net)
    ema = EMA(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    state_path = rdir / "state.safetensors"
    log = JsonlLog(rdir / "log.jsonl")
    start_kind = read_metadata(init_from).get("kind") if init_from and not state_path.exists() else None
    if start_kind == "idm" and (predicts := prediction_of(init_from)) != cfg.prediction:
        raise InputError(f"{init_from} predicts {predicts!r}; this run predicts {cfg.prediction!r}")
    if start_kind == "prior":
        weights = prior_to_idm(load_file(init_from), cfg.net)
        model.load_state_dict(weights)
        ema.model.load_state_dict(weights)
        print(f"initialised from the face prior {init_from} (the LQ input channels start at zero)")
        init_from = None
    step, seconds = resume_or_init(state_path, model, ema.model, optimizer, init_from)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema.model.to(accelerator.device)
    batches = FaceBatches(targets, cfg.batch_size, seed=cfg.seed + 7919 * k + step)
    data_gen = torch.Generator().manual_seed(cfg.seed + 7919 * k + step)

    bar = tqdm(total=total, initial=step, desc=f"idm round {k}", dynamic_ncols=True)
    running = None
    while step < total and not stop:
        t0 = time.time()
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(step, lr, warmup, total)
        hq = batches.next() * 0.5 + 0.5
        lq, params = degrade_batch(hq, degradation, seed=int(torch.randint(MAX_SEED + 1, (1,), generator=data_gen)),
                                   return_params=True)
        x0 = (gray_where(hq, params) * 2 - 1).to(accelerator.device)
        cond = (lq * 2 - 1).to(accelerator.device)
        t = torch.randint(0, diffusion.num_timesteps, (x0.shape[0],), device=x0.device)
        with accelerator.autocast():
            losses = diffusion.training_losses(model, x0, t, model_kwargs={"lq": cond},
                                               min_snr_gamma=cfg.min_snr_gamma)
        loss = losses["loss"].mean()
        accelerator.backward(loss)
        if cfg.grad_clip:
            accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        ema.update(accelerator.unwrap_model(model), step)
        seconds += time.time() - t0
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        if step % cfg.eval_every == 0:
            log.write(step=step, seconds=seconds, train_loss=running, lr=optimizer.param_groups[0]["lr"],
                      heldout_loss=held_out_loss(diffusion, ema.model, val_hq * 2 - 1, val_lq * 2 - 1,
                                                 precision=cfg.mixed_precision),
                      ema_decay=ema.decay(step))
        if step % cfg.sample_every == 0:
            n = min(8, len(val_hq))
            _, restored = evaluate(ema.model, val_hq[:n], val_lq[:n], cfg.preview_steps, seed=cfg.seed,
                                   prediction=cfg.prediction)
            save_grid(torch.cat([val_lq[:n], restored, val_hq[:n]]) * 2 - 1, rdir / f"samples_{step:06d}.png", nrow=n)
        if step % cfg.save_every == 0:
            save_state(state_path, accelerator.unwrap_model(model), ema.model, optimizer,
                       {"step": step, "seconds": seconds})
    bar.close()
    save_state(state_path, accelerator.unwrap_model(model), ema.model, optimizer, {"step": step, "seconds": seconds})
    accelerator.free_memory()  # drop this round's model and optimizer from the accelerator's references
    return ema.model, seconds, step


def prior_to_idm(prior: dict[str, torch.Tensor], net: dict) -> dict[str, torch.Tensor]:
    """IDM starting weights from an unconditional face prior of the same UNet layout.

    The first convolution gets zero weights for the extra LQ channels and the output
    convolution keeps the ε half of a learned-variance head, so at step 0 an ε-predicting IDM
    network *is* the prior's ε-predictor, whatever the LQ (a v-predicting one starts from the
    prior's features and relearns its head). Why: the LQ-conditioned model then only has to
    learn how to use the LQ, not what a face is; measured from prior64 on 2 CPU threads, the
    LQ cut the ε-MSE at t = 250 from 0.018 to 0.007 within 900 steps (the paper trains from
    scratch on 8 GPUs).
    """
    weights = {k: v.float() for k, v in prior.items()}
    first, head_w, head_b = "input_blocks.0.0.weight", "out.2.weight", "out.2.bias"
    w = weights[first]
    extra = net["in_channels"] - w.shape[1]
    if extra < 0 or weights[head_w].shape[0] < net["out_channels"]:
        raise InputError(f"cannot start an IDM net with {net['in_channels']} inputs and {net['out_channels']} "
                         f"outputs from a prior with {w.shape[1]} and {weights[head_w].shape[0]}")
    weights[first] = torch.cat([w, w.new_zeros(w.shape[0], extra, *w.shape[2:])], dim=1)
    weights[head_w] = weights[head_w][:net["out_channels"]]
    weights[head_b] = weights[head_b][:net["out_channels"]]
    return weights


@torch.no_grad()
def evaluate(net: torch.nn.Module, hq: torch.Tensor, lq: torch.Tensor, steps: int, seed: int = 0,
             batch: int = 64, prediction: str = "eps") -> tuple[dict[str, float], torch.Tensor]:
    """PSNR/SSIM of DDIM (η=0) restorations of fixed test pairs, and of the LQ inputs; plus the restorations.
    The network alone, without the method's colour fix, as every round recorded so far was measured."""
    device = next(net.parameters()).device
    method = IDM(net, resolution=net.image_size, framing="lfw", tier="compact", device=device, prediction=prediction)
    restored = torch.cat([method.restore(lq[i:i + batch], steps=steps, eta=0.0, color_fix=False, seed=seed + i)
                          for i in range(0, len(lq), batch)])
    metrics = {"psnr": psnr(restored, hq).mean().item(), "ssim": ssim(restored, hq).mean().item(),
               "psnr_input": psnr(lq, hq).mean().item(), "ssim_input": ssim(lq, hq).mean().item(),
               "test_images": len(hq), "test_steps": steps}
    return metrics, restored


@torch.no_grad()
def clean_faces(method: IDM, faces: torch.Tensor, path: Path, cfg: IDMConfig, stop: StopSignal) -> torch.Tensor | None:
    """The training faces restored from mildly degraded copies, as uint8 (N,3,H,W), cached at ``path``.

    Resumable: finished chunks are kept in ``<path>.partial`` on the way. Chunk i (faces
    i…i+clean_batch) uses seed cfg.seed + i for both the degradation and the sampler, so
    the set is the same however often the work is interrupted. Returns None when stopped.
    """
    settings = {"degradation": cfg.clean_degradation, "steps": str(cfg.clean_steps), "seed": str(cfg.seed),
                "batch": str(cfg.clean_batch), "sampler": "ddim, eta 0"}
    if path.is_file():
        cached = load_file(str(path))["faces"]
        if len(cached) == len(faces) and _same_settings(path, settings):
            print(f"using cleaned faces from {path}")
            return cached
        print(f"{path} was cleaned with other settings or holds {len(cached)} faces, not {len(faces)}: cleaning again")
    partial = path.with_name(path.name + ".partial")
    done = faces[:0]
    if partial.is_file():
        if _same_settings(partial, settings):
            done = load_file(str(partial))["faces"]
        else:  # e.g. a rerun with another --clean-steps: mixing the two would leave an inconsistent set
            print(f"{partial} was made with other cleaning settings: starting the cleaning over")
    chunks = [done]
    degradation = preset(cfg.clean_degradation, faces.shape[-1])
    bar = tqdm(total=len(faces), initial=len(done), desc="cleaning", unit="face", dynamic_ncols=True)
    for i in range(len(done), len(faces), cfg.clean_batch):
        hq = faces[i:i + cfg.clean_batch].float() / 255.0
        lq = degrade_batch(hq, degradation, seed=cfg.seed + i)
        restored = method.restore(lq, steps=cfg.clean_steps, eta=0.0, color_fix=False,  # as the recorded rounds
                                  seed=cfg.seed + i)
        chunks.append((restored * 255).round().to(torch.uint8))
        bar.update(len(hq))
        stopping = bool(stop) and i + len(hq) < len(faces)  # read once; a stop after the last chunk finishes
        if stopping or len(chunks) % 8 == 0:
            _save_faces(torch.cat(chunks), partial, {"complete": "false", **settings})
        if stopping:
            bar.close()
            print(f"cleaning stopped at {sum(len(c) for c in chunks)} of {len(faces)} faces; rerun to resume")
            return None
    bar.close()
    cleaned = torch.cat(chunks)
    _save_faces(cleaned, path, {"complete": "true", **settings})
    partial.unlink(missing_ok=True)
    return cleaned


def load_idm_net(path: str | Path) -> UNetModel:
    """An IDM network from a bfr-written safetensors (config in the metadata), in float32."""
    meta = read_metadata(path)
    if meta.get("kind") != "idm":
        raise InputError(f"{path} is not an IDM weights file written by bfr (kind {meta.get('kind')!r})")
    net = UNetModel(**json.loads(meta["config"]))
    net.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return net


def write_idm_card(run_dir: Path, dest: Path) -> tuple[Path, Path]:
    """Copy the last round's weights (and its samples) to ``dest`` as idm64.*, with a card ``idm64.md``."""
    run_dir, dest = Path(run_dir), Path(dest)
    records = _read_rounds(run_dir)
    if not records:
        raise FileNotFoundError(f"{run_dir / 'rounds.json'} has no finished round yet")
    config = json.loads((run_dir / "config.json").read_text())
    last = records[-1]
    rdir = run_dir / f"round{last['round']}"
    dest.mkdir(parents=True, exist_ok=True)
    weights = dest / WEIGHTS_NAME
    if (rdir / WEIGHTS_NAME).resolve() != weights.resolve():
        shutil.copyfile(rdir / WEIGHTS_NAME, weights)
    shutil.copyfile(rdir / "samples.png", dest / "idm64_samples.png")
    meta = read_metadata(weights)

    rows = ["| round | trained on | steps | train time | DDIM steps | test PSNR (dB) | test SSIM |",
            "|---|---|---|---|---|---|---|"]
    for r in records:
        rows.append(f"| {r['round']} | {r['targets']} | {r['steps']} | {format_duration(r['train_seconds'])} | "
                    f"{r['test_steps']} | {r['psnr']:.2f} | {r['ssim']:.4f} |")
    notes = [f"- round {r['round']} note: {r['note']}" for r in records if r.get("note")]
    first = records[0]
    lines = [
        f"# IDM, compact tier ({json.loads(meta['config'])['image_size']} px)", "",
        "A conditional diffusion restorer in the spirit of Zhao et al., *Towards Authentic Face Restoration with "
        "Iterative Diffusion Models and Beyond* (ICCV 2023), whose code and weights are not public. Our choices "
        "(METHODS.md §4): SR3-style UNet input [x_t, LQ] (6 channels), "
        f"{_PREDICTION[config.get('prediction', 'eps')]} with fixed variance, linear schedule, T = 1000, L2 loss; "
        f"restoration samples from pure noise on a re-spaced chain (DDIM η = 0; {COMPACT_STEPS} steps by default "
        "on this tier, chosen on LFW test faces kept apart from the test below: shorter chains stay closer to the "
        "input, longer ones add detail). Extrinsic "
        "iterative enhancement: after round 0, each round restores mildly degraded copies of the training faces "
        "with the previous round's model and retrains on those cleaned faces.", "",
        *(["These weights are round 0 only: no cleaning round has been trained yet "
           "(`python -m bfr train idm -o RUN --rounds 2` adds one to this run).", ""] if len(records) == 1 else []),
        "## Rounds", "",
        f"Test: the first {first['test_images']} faces of a fixed slice of the LFW test split, degraded with the "
        f"seeded `{config['degradation']}` preset (input PSNR {first['psnr_input']:.2f} dB, SSIM "
        f"{first['ssim_input']:.4f}), restored with {first['test_steps']} DDIM steps (η = 0, seed 0), the network "
        "alone (restorations also give each face the input's mean colour, `color_fix`). The targets "
        "are the original LFW test faces, which are themselves not clean: a later round that removes their "
        "residual blur and JPEG blocking can lose PSNR without being a worse restorer.", "",
        *rows, "",
        "## Training", "",
        f"- round 0: {first['steps']} steps on LFW train faces; rounds ≥ 1: "
        f"{config['refine_steps'] or max(1, config['steps_per_round'] // 4)} steps each, from the previous round's "
        f"weights at {config['refine_lr_scale']}× the rate, on the faces the previous round cleaned "
        f"(`{config['clean_degradation']}` degradation, {config['clean_steps']} DDIM steps, η = 0).",
        f"- batch {config['batch_size']}, AdamW lr {config['lr']} (warm-up, cosine per round), EMA with warm-up "
        f"(max {MAX_DECAY}), LQ from the `{config['degradation']}` preset (GFPGAN/CodeFormer ranges scaled to the "
        f"face), min-SNR γ {config['min_snr_gamma']}.",
        f"- precision: {config['mixed_precision']}; hardware: {json.loads(meta['hardware'])}; total training "
        f"time: {format_duration(sum(r['train_seconds'] for r in records))}",
        f"- network config: `{meta['config']}`",
        f"- round 0 started from: {_start_note(config.get('init_from'))}",
        *notes,
        "- reproduce: `python -m bfr train idm --rounds K` (see README); resumable within a round.", "",
        "## Data", "", data_note(config),
        "Rounds ≥ 1 train on the same faces as restored by the previous round (cached in "
        "`round{k}/cleaned.safetensors`); the test split is never cleaned or trained on.", "",
        "## Samples", "", "Rows: degraded test input, restored (last round), ground truth.", "",
        "![samples](idm64_samples.png)", "",
    ]
    card = dest / "idm64.md"
    card.write_text("\n".join(lines))
    return weights, card


_PREDICTION = {"eps": "ε-prediction", "v": "v-prediction (ours, for colour fidelity; SR3 predicts ε)"}


def _start_meta(init_from: str | None) -> dict[str, str]:
    """The metadata of the weights a round 0 starts from ({} for none, or a file no longer there)."""
    return read_metadata(init_from) if init_from and Path(init_from).is_file() else {}


def _continued(start_meta: dict[str, str]) -> tuple[int, float]:
    """Steps and seconds behind the IDM weights a round 0 continues (0 for a prior or no start)."""
    return recorded_progress(start_meta) if start_meta.get("kind") == "idm" else (0, 0.0)


def _start_note(init_from: str | None) -> str:
    if not init_from:
        return "random weights (as the paper)"
    meta = _start_meta(init_from)
    if meta.get("kind") == "prior":
        return (f"the face prior `{Path(init_from).name}` (its weights and ε head; the LQ input channels at zero), "
                "so training starts from a network that already knows faces")
    steps, seconds = _continued(meta)
    if steps:  # a continuation: the rounds table counts only this run's steps, so say what came before
        round_, targets = json.loads(meta.get("round", "0")), json.loads(meta.get("targets", '"?"'))
        return (f"the IDM weights `{Path(init_from).name}` (round {round_}, {steps:,} steps, "
                f"{format_duration(seconds)}, trained on {targets}); the steps and times above come on top of these")
    return f"`{Path(init_from).name}`"


def _save_faces(faces: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
    save_safetensors({"faces": faces}, path, {"count": str(len(faces)), **metadata})


def _same_settings(path: Path, settings: dict[str, str]) -> bool:
    meta = read_metadata(path)
    return all(meta.get(k) == v for k, v in settings.items())


def _read_rounds(out: Path) -> list[dict]:
    path = out / "rounds.json"
    return json.loads(path.read_text()) if path.is_file() else []


def _round_record(out: Path, k: int) -> dict | None:
    return next((r for r in _read_rounds(out) if r["round"] == k), None)


def _append_round(out: Path, record: dict) -> None:
    records = [r for r in _read_rounds(out) if r["round"] != record["round"]] + [record]
    (out / "rounds.json").write_text(json.dumps(sorted(records, key=lambda r: r["round"]), indent=2))
