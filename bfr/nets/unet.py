"""ADM / improved-DDPM UNet ("guided-diffusion" family), written for bfr.

The module tree and parameter names follow the authors' layout exactly, so DifFace's
``iddpm_ffhq512_ema500000.pth`` loads strictly. The constructor takes DifFace's config
keys verbatim. ``in_channels`` > 3 gives IDM's conditional variant (LQ image concatenated
to x_t); small configs for the compact tier come from the same class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, cosine half first."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the activation dtype (as the authors do)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> nn.Module:
    return GroupNorm32(32, channels)


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims](*args, **kwargs)


def avg_pool_nd(dims: int, *args, **kwargs) -> nn.Module:
    return {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[dims](*args, **kwargs)


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class TimestepBlock(nn.Module):
    """A block whose forward also takes the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        if use_conv:
            self.conv = conv_nd(dims, channels, self.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dims == 3:
            x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None):
        super().__init__()
        self.out_channels = out_channels or channels
        stride = 2 if dims != 3 else (1, 2, 2)
        if use_conv:
            self.op = conv_nd(dims, channels, self.out_channels, 3, stride=stride, padding=1)
        else:
            if self.out_channels != channels:
                raise ValueError("Downsample without conv cannot change the channel count")
            self.op = avg_pool_nd(dims, kernel_size=stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep, by addition or scale-shift (FiLM)."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_conv: bool = False,
        use_scale_shift_norm: bool = False,
        dims: int = 2,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), conv_nd(dims, channels, self.out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False, dims), Upsample(channels, False, dims)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False, dims), Downsample(channels, False, dims)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels)
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            in_rest, in_conv = self.in_layers[:-1], self.in_layers[-1]
            h = in_conv(self.h_upd(in_rest(x)))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        while emb_out.dim() < h.dim():
            emb_out = emb_out[..., None]
        if self.use_scale_shift_norm:
            out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = emb_out.chunk(2, dim=1)
            h = out_rest(out_norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention; one 1x1 conv makes q, k, v.

    ``use_new_attention_order=False`` is the authors' "legacy" layout: the qkv channels
    are grouped per head (split heads first, then q/k/v), which is what DifFace uses.
    """

    def __init__(
        self, channels: int, num_heads: int = 1, num_head_channels: int = -1, use_new_attention_order: bool = False
    ):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"channels {channels} not divisible by num_head_channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.new_order = use_new_attention_order
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        length, heads = qkv.shape[-1], self.num_heads
        ch = c // heads
        if self.new_order:
            q, k, v = (t.reshape(b * heads, ch, length) for t in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(b * heads, 3 * ch, length).split(ch, dim=1)
        # (B*H, L, C) for the fused kernel; same scale 1/sqrt(ch) as the reference einsum.
        h = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = h.transpose(1, 2).reshape(b, c, length)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class UNetModel(nn.Module):
    """The ADM UNet. Returns what it was trained to predict (ε for the priors, v for bfr's IDM; the diffusion
    reads it), followed by the variance interpolation when out_channels = 2×3."""

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int | Sequence[int],
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        cond_lq: bool | None = None,
    ):
        super().__init__()
        del cond_lq  # DifFace configs carry this flag; the conditioning is decided by in_channels here.
        if isinstance(num_res_blocks, int):
            num_res_blocks = [num_res_blocks] * len(channel_mult)
        if len(num_res_blocks) != len(channel_mult):
            raise ValueError("num_res_blocks must be an int or have one entry per channel_mult level")
        self.image_size = image_size
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.dtype = torch.float16 if use_fp16 else torch.float32
        attention_sizes = {int(r) for r in attention_resolutions}

        attn_kwargs = dict(
            num_heads=num_heads, num_head_channels=num_head_channels, use_new_attention_order=use_new_attention_order
        )

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
        )

        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(conv_nd(dims, in_channels, ch, 3, padding=1))])
        input_block_chans = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks[level]):
                layers: list[nn.Module] = [
                    ResBlock(ch, time_embed_dim, dropout, int(mult * model_channels), dims=dims,
                             use_scale_shift_norm=use_scale_shift_norm)
                ]
                ch = int(mult * model_channels)
                if image_size // ds in attention_sizes:
                    layers.append(AttentionBlock(ch, **attn_kwargs))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                input_block_chans.append(ch)
            if level != len(channel_mult) - 1:
                down = (
                    ResBlock(ch, time_embed_dim, dropout, ch, dims=dims, use_scale_shift_norm=use_scale_shift_norm,
                             down=True)
                    if resblock_updown
                    else Downsample(ch, conv_resample, dims=dims)
                )
                self.input_blocks.append(TimestepEmbedSequential(down))
                input_block_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, time_embed_dim, dropout, dims=dims, use_scale_shift_norm=use_scale_shift_norm),
            AttentionBlock(ch, **attn_kwargs),
            ResBlock(ch, time_embed_dim, dropout, dims=dims, use_scale_shift_norm=use_scale_shift_norm),
        )

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks[level] + 1):
                skip_ch = input_block_chans.pop()
                layers = [
                    ResBlock(ch + skip_ch, time_embed_dim, dropout, int(model_channels * mult), dims=dims,
                             use_scale_shift_norm=use_scale_shift_norm)
                ]
                ch = int(model_channels * mult)
                if image_size // ds in attention_sizes:
                    layers.append(AttentionBlock(ch, **attn_kwargs))
                if level and i == num_res_blocks[level]:
                    layers.append(
                        ResBlock(ch, time_embed_dim, dropout, ch, dims=dims, use_scale_shift_norm=use_scale_shift_norm,
                                 up=True)
                        if resblock_updown
                        else Upsample(ch, conv_resample, dims=dims)
                    )
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            zero_module(conv_nd(dims, int(model_channels * channel_mult[0]), out_channels, 3, padding=1)),
        )
        if use_fp16:
            self.convert_to_fp16()

    def convert_to_fp16(self) -> None:
        """Half-precision convolutions in the body; norms, embeddings and head stay float32 (as the authors do)."""
        self.dtype = torch.float16
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            for m in part.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                    m.half()

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, lq: torch.Tensor | None = None) -> torch.Tensor:
        """x: noisy image (B,C,H,W); timesteps: original-scale t (B,); lq: extra input channels."""
        if lq is not None:
            x = torch.cat([x, lq.to(x.dtype)], dim=1)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects {self.in_channels} input channels, got {x.shape[1]}")
        t_emb = timestep_embedding(timesteps, self.model_channels).to(self.time_embed[0].weight.dtype)
        emb = self.time_embed(t_emb)
        hs = []
        h = x.type(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = torch.cat([h, hs.pop()], dim=1)
            h = module(h, emb)
        return self.out(h.type(x.dtype))
