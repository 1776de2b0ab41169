"""FLIPNET's face embedding: an HQ and an LQ autoencoder whose encoders give token grids.

Stage I trains each autoencoder to reconstruct its own kind of face (HQ or LQ); Stage II
aligns the two encoders with a two-way contrastive loss on their pooled tokens, so an LQ
face and its HQ original land close together. At inference the condition image's tokens
(mapped by FLIPNET's adapter τ) stand in for a text prompt. The paper gives no
architecture; this is a plain convolutional autoencoder (stride-2 convolutions with
residual blocks, mirrored by a nearest-upsampling decoder), sized by ``EmbedConfig``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class EmbedConfig:
    image_size: int = 64
    grid: int = 8  # tokens per side: image_size / grid must be a power of two
    dim: int = 128  # token width
    base_channels: int = 32

    def to_dict(self) -> dict:
        return asdict(self)


class _ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
                                  nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _widths(cfg: EmbedConfig) -> list[int]:
    levels = math.log2(cfg.image_size / cfg.grid)
    if levels != int(levels) or levels < 1:
        raise ValueError(f"image_size / grid must be a power of two ≥ 2, got {cfg.image_size} / {cfg.grid}")
    return [min(cfg.base_channels * 2 ** i, cfg.dim) for i in range(int(levels) + 1)]


class FaceEncoder(nn.Module):
    """Face in [-1, 1] (B, 3, S, S) → tokens (B, grid², dim)."""

    def __init__(self, cfg: EmbedConfig):
        super().__init__()
        widths = _widths(cfg)
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1)]
        for cin, cout in pairwise(widths):
            layers += [_ResBlock(cin), nn.Conv2d(cin, cout, 4, stride=2, padding=1)]
        layers += [_ResBlock(widths[-1]), nn.GroupNorm(8, widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], cfg.dim, 1)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(2).transpose(1, 2)


class FaceDecoder(nn.Module):
    """Tokens (B, grid², dim) → face in [-1, 1]; only used to train the encoder (Stage I)."""

    def __init__(self, cfg: EmbedConfig):
        super().__init__()
        widths = _widths(cfg)[::-1]
        self.grid = cfg.grid
        layers: list[nn.Module] = [nn.Conv2d(cfg.dim, widths[0], 1), _ResBlock(widths[0])]
        for cin, cout in pairwise(widths):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1), _ResBlock(cout)]
        layers += [nn.GroupNorm(8, widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], 3, 3, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, d = tokens.shape
        return self.body(tokens.transpose(1, 2).reshape(b, d, self.grid, self.grid))


class FaceEmbedder(nn.Module):
    """The HQ and LQ autoencoders plus the contrastive temperature (a learned logit scale, as in CLIP)."""

    KINDS = ("hq", "lq")

    def __init__(self, cfg: EmbedConfig | dict | None = None):
        super().__init__()
        cfg = EmbedConfig(**cfg) if isinstance(cfg, dict) else (cfg or EmbedConfig())
        self.config = cfg
        self.encoders = nn.ModuleDict({k: FaceEncoder(cfg) for k in self.KINDS})
        self.decoders = nn.ModuleDict({k: FaceDecoder(cfg) for k in self.KINDS})
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def fit(self, x: torch.Tensor) -> torch.Tensor:
        """A face resized to the embedder's own size (what the encoders read, the decoders give back)."""
        if x.shape[-1] != self.config.image_size or x.shape[-2] != self.config.image_size:
            x = F.interpolate(x, size=(self.config.image_size,) * 2, mode="bicubic", antialias=True,
                              align_corners=False)
        return x

    def tokens(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        """Token grid of a face in [-1, 1] (any size) from the ``kind`` ("hq" or "lq") encoder."""
        return self.encoders[kind](self.fit(x))

    def reconstruct(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        """The face as the ``kind`` autoencoder gives it back, at the embedder's size (compare with ``fit(x)``)."""
        return self.decoders[kind](self.tokens(x, kind))


def pooled(tokens: torch.Tensor) -> torch.Tensor:
    """The unit-norm mean token: what the contrastive loss compares."""
    return F.normalize(tokens.mean(dim=1), dim=-1)


def two_way_contrastive(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Cross-entropy both ways over the N×N similarity matrix of unit vectors; the diagonal pairs are positives."""
    logits = logit_scale.exp().clamp(max=100) * a @ b.t()
    labels = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
