"""Gaussian diffusion math: schedules, respacing, q_sample, posterior, learned variance, losses.

Pure tensor math with no network inside (the "scheduler" layer). One implementation serves
the four methods. Conventions follow improved-DDPM / guided-diffusion, which DifFace and
Kuai et al. build on: a re-spaced chain keeps the base chain's alpha_bar at the kept
timesteps, and the network is always given the *original* timestep (0…T−1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def get_named_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """Linear (DDPM, scaled to T), cosine (improved DDPM) or scaled-linear (Stable Diffusion) betas, float64."""
    if name == "linear":
        scale = 1000 / num_timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
    if name == "scaled_linear":
        return np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, num_timesteps, dtype=np.float64) ** 2
    if name == "cosine":
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), 0.999)
                 for i in range(num_timesteps)]
        return np.array(betas, dtype=np.float64)
    raise ValueError(f"unknown beta schedule {name!r}; use 'linear', 'cosine' or 'scaled_linear'")


def space_timesteps(num_timesteps: int, section_counts: str | int | Sequence[int]) -> list[int]:
    """Original timesteps kept by a respacing, sorted ascending.

    ``"ddimN"`` keeps every (T // N)-th step starting at 0 (0, 4, 8, … for ddim250 of 1000);
    ``"250"`` or ``"10,15,20"`` split the chain into equal sections and space that many steps
    evenly inside each (both ends included), as in improved-DDPM.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim"):])
            stride = _ddim_stride(num_timesteps, desired)
            if stride is None:
                raise ValueError(f"cannot create exactly {desired} steps with an integer stride from {num_timesteps}")
            return list(range(0, num_timesteps, stride))
        section_counts = [int(x) for x in section_counts.split(",")]
    elif isinstance(section_counts, int):
        section_counts = [section_counts]
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx = 0
    all_steps: list[int] = []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < section_count:
            raise ValueError(f"cannot divide a section of {size} steps into {section_count}")
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur = 0.0
        for _ in range(section_count):
            all_steps.append(start_idx + round(cur))
            cur += frac_stride
        start_idx += size
    return sorted(set(all_steps))


DDIM_EPS = ("model", "clipped")  # where a DDIM step takes its ε from (GaussianDiffusion.ddim_step)


def ddim_respacing(steps: int, num_timesteps: int = 1000) -> str | int:
    """The chain of ``steps`` steps for DDIM sampling: DifFace's integer stride ("ddimN": 0, 4, 8, …)
    when one gives exactly that many steps, else that many steps spaced evenly (e.g. 300 of 1000)."""
    return f"ddim{int(steps)}" if _ddim_stride(num_timesteps, int(steps)) is not None else int(steps)


def _ddim_stride(num_timesteps: int, steps: int) -> int | None:
    """The integer stride that keeps exactly ``steps`` of ``num_timesteps`` (0, s, 2s, …), or None."""
    return next((s for s in range(1, num_timesteps) if len(range(0, num_timesteps, s)) == steps), None)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N1 || N2) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of 8-bit images in [-1,1] under a Gaussian discretised into 256 bins."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(
        x < -0.999, log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))),
    )


PREDICTIONS = ("eps", "v")


class GaussianDiffusion:
    """A (possibly re-spaced) diffusion chain over indices 0…num_timesteps−1.

    ``timestep_map[i]`` is the original timestep of index i; model functions receive it.
    ``learn_sigma`` means the network outputs 2×C channels (ε, v) with the learned-range
    variance exp(v'·log β + (1−v')·log β̃), v' = (v+1)/2.
    ``prediction`` is what the network's first C channels predict: "eps" (ε, as ADM/DifFace)
    or "v" (v = √ᾱ·ε − √(1−ᾱ)·x0, Salimans & Ho 2022). Why "v" exists: with ε the clean image
    is x0 = (x_t − √(1−ᾱ)·ε)/√ᾱ, and at the chain's start √ᾱ ≈ 0.006, so a conditional model
    gets almost no loss signal for the global colour it should copy from its input there.
    """

    def __init__(self, betas: np.ndarray, timestep_map: Sequence[int] | None = None, learn_sigma: bool = True,
                 prediction: str = "eps"):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must be a 1-D array in (0, 1]")
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; use one of: {', '.join(PREDICTIONS)}")
        self.betas = betas
        self.num_timesteps = len(betas)
        self.timestep_map = np.asarray(timestep_map if timestep_map is not None else range(len(betas)), dtype=np.int64)
        self.learn_sigma = learn_sigma
        self.prediction = prediction

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # log of the posterior variance, with the t=0 entry (zero) replaced by the t=1 value.
        pv1 = self.posterior_variance[1] if len(betas) > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(pv1, self.posterior_variance[1:]))
        self.log_betas = np.log(self.betas)
        self._on_device: dict[tuple[int, torch.device], torch.Tensor] = {}  # float32 copies of the arrays above
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def create(
        cls, steps: int = 1000, schedule: str = "linear", respacing: str | int | Sequence[int] | None = None,
        learn_sigma: bool = True, prediction: str = "eps",
    ) -> GaussianDiffusion:
        """A base chain of ``steps`` steps, re-spaced if asked (e.g. "ddim250", "250", 100)."""
        base = cls(get_named_beta_schedule(schedule, steps), learn_sigma=learn_sigma, prediction=prediction)
        if respacing is None or respacing == "" or respacing == steps:
            return base
        return base.respace(space_timesteps(steps, respacing))

    def respace(self, use_timesteps: Sequence[int]) -> GaussianDiffusion:
        """Keep only ``use_timesteps`` of this chain; betas are rebuilt from alpha_bar."""
        keep = sorted(set(int(t) for t in use_timesteps))
        if not keep or keep[0] < 0 or keep[-1] >= self.num_timesteps:
            raise ValueError("respacing timesteps must lie in [0, num_timesteps)")
        last = 1.0
        new_betas = []
        for t in keep:
            new_betas.append(1 - self.alphas_cumprod[t] / last)
            last = self.alphas_cumprod[t]
        return GaussianDiffusion(np.array(new_betas), self.timestep_map[keep], learn_sigma=self.learn_sigma,
                                 prediction=self.prediction)

    def original_timestep(self, index: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.timestep_map).to(index.device)[index]

    def matched_index(self, index: int, resolution: int, reference_resolution: int = 512) -> int:
        """The index of this chain whose noise destroys as much of a face at ``resolution`` px as
        ``index`` does at ``reference_resolution`` px.

        Why: the same per-pixel noise is much stronger at a lower resolution. One pixel of a
        64-px face covers an 8×8 block of the 512-px face; averaging that block divides the
        noise variance by 64, so at 512 px eyes and mouth survive a noise level that wipes them
        out at 64 px (Hoogeboom et al., "simple diffusion", 2023, shift the schedule by the same
        rule). Matching the face-level damage means raising the log-SNR by
        2·ln(reference_resolution / resolution): index 150 of "250" at 512 px (t ≈ 602,
        ᾱ ≈ 0.025) becomes index 53 at 64 px (t ≈ 213, ᾱ ≈ 0.62). Same resolution: same index.
        """
        if not 0 <= index < self.num_timesteps:
            raise ValueError(f"index must lie in [0, {self.num_timesteps}), got {index}")
        if resolution <= 0 or reference_resolution <= 0:
            raise ValueError("resolutions must be positive")
        log_snr = np.log(self.alphas_cumprod) - np.log1p(-self.alphas_cumprod)
        target = log_snr[index] + 2 * math.log(reference_resolution / resolution)
        return int(np.argmin(np.abs(log_snr - target)))

    # -- forward process ----------------------------------------------------------------------
    def _at(self, arr: np.ndarray, t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """arr[t] as float32, broadcastable to ``shape``. The schedule lives in float64 (as the authors'); each
        array is copied to a device once, in float32 (MPS has no float64), and indexed there: no host round trip
        per sampling step."""
        key = (id(arr), t.device)
        if key not in self._on_device:
            self._on_device[key] = torch.from_numpy(arr).float().to(t.device)
        return self._on_device[key][t].reshape(-1, *([1] * (len(shape) - 1)))

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Diffuse x_start to index t: sqrt(ab)·x0 + sqrt(1−ab)·ε."""
        t = self._as_index(t, x_start)
        if noise is None:
            noise = randn_like(x_start, generator)
        return (self._at(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
                + self._at(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise)

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = (self._at(self.posterior_mean_coef1, t, x_t.shape) * x_start
                + self._at(self.posterior_mean_coef2, t, x_t.shape) * x_t)
        return (mean, self._at(self.posterior_variance, t, x_t.shape),
                self._at(self.posterior_log_variance_clipped, t, x_t.shape))

    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (self._at(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
                - self._at(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps)

    def predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor) -> torch.Tensor:
        return ((self._at(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - pred_xstart)
                / self._at(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape))

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio ᾱ/(1-ᾱ) at (respaced) timesteps ``t``, one value per sample."""
        snr = torch.as_tensor(self.alphas_cumprod / (1 - self.alphas_cumprod), dtype=torch.float32)
        return snr[t.cpu()].to(t.device)

    def v_target(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return (self._at(self.sqrt_alphas_cumprod, t, x_start.shape) * noise
                - self._at(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * x_start)

    def eps_and_xstart(self, x_t: torch.Tensor, t: torch.Tensor,
                       pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ε, x0) implied by the network's prediction (``self.prediction``) at index t."""
        if self.prediction == "eps":
            return pred, self.predict_xstart_from_eps(x_t, t, pred)
        a = self._at(self.sqrt_alphas_cumprod, t, x_t.shape)
        s = self._at(self.sqrt_one_minus_alphas_cumprod, t, x_t.shape)
        return s * x_t + a * pred, a * x_t - s * pred

    # -- reverse process ----------------------------------------------------------------------
    def p_mean_variance(self, model: ModelFn, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool = True,
                        model_kwargs: dict | None = None) -> dict[str, torch.Tensor]:
        """Run the model at index t (given the original timestep) and form p(x_{t-1} | x_t)."""
        out = model(x, self.original_timestep(t), **(model_kwargs or {})).float()
        c = x.shape[1]
        if self.learn_sigma:
            if out.shape[1] != 2 * c:
                raise ValueError(f"learned-variance model must output {2 * c} channels, got {out.shape[1]}")
            pred, v = out[:, :c], out[:, c:]
            min_log = self._at(self.posterior_log_variance_clipped, t, x.shape)
            max_log = self._at(self.log_betas, t, x.shape)
            frac = (v + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
        else:
            pred = out[:, :c]
            log_variance = self._at(self.posterior_log_variance_clipped, t, x.shape).expand_as(x)
        eps, pred_xstart = self.eps_and_xstart(x, t, pred)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": mean, "log_variance": log_variance, "pred_xstart": pred_xstart, "eps": eps}

    def ddim_step(self, out: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor, eta: float,
                  noise: torch.Tensor, eps: str = "model") -> torch.Tensor:
        """DDIM update from index t to t−1 given p_mean_variance's output (η=0: deterministic).

        eps: "model", the network's own ε (the DDIM paper, diffusers' default, DifFace's current
        code), or "clipped", ε re-derived from the clipped x̂0 (guided-diffusion, DifFace's first
        release). The two differ only where x̂0 was clipped.
        """
        if eps not in DDIM_EPS:
            raise ValueError(f"eps must be one of {DDIM_EPS}, got {eps!r}")
        eps = out["eps"] if eps == "model" else self.predict_eps_from_xstart(x, t, out["pred_xstart"])
        ab = self._at(self.alphas_cumprod, t, x.shape)
        ab_prev = self._at(self.alphas_cumprod_prev, t, x.shape)
        sigma = eta * torch.sqrt((1 - ab_prev) / (1 - ab)) * torch.sqrt(1 - ab / ab_prev)
        mean = out["pred_xstart"] * torch.sqrt(ab_prev) + torch.sqrt((1 - ab_prev - sigma ** 2).clamp(min=0)) * eps
        nonzero = (t != 0).float().reshape(-1, *([1] * (x.dim() - 1)))
        return mean + nonzero * sigma * noise

    def ancestral_step(self, out: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor,
                       noise: torch.Tensor) -> torch.Tensor:
        """Ancestral update x_{t-1} ~ p(x_{t-1} | x_t) with the model's (learned) variance."""
        nonzero = (t != 0).float().reshape(-1, *([1] * (x.dim() - 1)))
        return out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise

    # -- training -----------------------------------------------------------------------------
    def training_losses(self, model: ModelFn, x_start: torch.Tensor, t: torch.Tensor,
                        noise: torch.Tensor | None = None, model_kwargs: dict | None = None,
                        min_snr_gamma: float | None = None) -> dict[str, torch.Tensor]:
        """Per-sample losses: MSE of the prediction (ε or v; optionally min-SNR weighted) + the VLB
        term when learning σ.

        The hybrid objective of improved-DDPM: the VLB term trains only the variance (the
        mean is detached) and is scaled by T/1000. Min-SNR-γ (Hang et al. 2023) weights the
        ε-MSE by min(SNR, γ)/SNR and the v-MSE by min(SNR, γ)/(SNR + 1): both equal
        min(SNR, γ) times the x0-MSE.
        """
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        out = model(x_t, self.original_timestep(t), **(model_kwargs or {})).float()
        c = x_start.shape[1]
        target = noise if self.prediction == "eps" else self.v_target(x_start, t, noise)
        mse = (out[:, :c] - target).pow(2).mean(dim=(1, 2, 3))
        if min_snr_gamma:
            snr = self.snr(t)
            mse = mse * torch.clamp(snr, max=min_snr_gamma) / (snr if self.prediction == "eps" else snr + 1)
        losses = {"mse": mse}
        if self.learn_sigma:
            frozen = torch.cat([out[:, :c].detach(), out[:, c:]], dim=1)
            vb = self._vb_terms_bpd(lambda *_: frozen, x_start, x_t, t)
            losses["vb"] = vb * self.num_timesteps / 1000.0
        losses["loss"] = sum(losses.values())
        losses["pred_xstart"] = self.eps_and_xstart(x_t, t, out[:, :c])[1]  # for x0-space losses (FLIPNET)
        return losses

    def _vb_terms_bpd(self, model: ModelFn, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised=False)
        kl = normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"]).mean(dim=(1, 2, 3)) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
        nll = nll.mean(dim=(1, 2, 3)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    # -- helpers ------------------------------------------------------------------------------
    def _as_index(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        if isinstance(t, int):
            if not 0 <= t < self.num_timesteps:
                raise ValueError(f"index {t} outside the chain [0, {self.num_timesteps})")
            return torch.full((like.shape[0],), t, dtype=torch.long, device=like.device)
        return t.to(like.device).long()


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like x, drawn from ``generator`` when given (seeded runs)."""
    if generator is None:
        return torch.randn_like(x)
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
