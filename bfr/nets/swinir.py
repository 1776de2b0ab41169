"""SwinIR (Liang et al. 2021) with DifFace's pixel-unshuffle front end, written for bfr.

Module names and tensor shapes follow the authors' layout, so DifFace's
``swinir_restoration512_L1.pth`` (and DT-BFR's ``swinir_gan_v1.pth``) load strictly, and
the constructor takes DifFace's config keys verbatim. The compact tier's small restorer
is the same class with a smaller config (``bfr.nets.configs.COMPACT_SWINIR_64``).

Shapes: the network sees RGB in [0, 1] as (B, 3, H, W) and returns (B, 3, H·s, W·s) with
s = sf / unshuffle_scale (1 for DifFace: unshuffle by 8, upsample by 8).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bfr.errors import InputError

RGB_MEAN = (0.4488, 0.4371, 0.4040)
UPSAMPLERS = ("nearest+conv", "pixelshuffle", "pixelshuffledirect", "")


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample (training only)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


def to_windows(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B·nW, ws·ws, C), windows in row-major order within each image."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def from_windows(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`to_windows`: (B·nW, ws·ws, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // ws) * (w // ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def relative_position_index(ws: int) -> torch.Tensor:
    """For every (query, key) pair in a ws×ws window, the row of the bias table to use."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)  # 2, N
    rel = coords[:, :, None] - coords[:, None, :] + (ws - 1)  # 2, N, N, each in [0, 2ws-2]
    return rel[0] * (2 * ws - 1) + rel[1]


def shifted_window_mask(h: int, w: int, ws: int, shift: int, device: torch.device | None = None) -> torch.Tensor:
    """Additive mask (nW, N, N) that stops attention across the seams a cyclic shift creates.

    Pixels are labelled by which of the 3×3 regions (split at -ws and -shift on each axis)
    they fall in; pairs with different labels get -100, as the authors do.
    """
    label = torch.zeros(1, h, w, 1, device=device)
    bounds = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    n = 0
    for hs in bounds:
        for wsl in bounds:
            label[:, hs, wsl, :] = n
            n += 1
    lw = to_windows(label, ws).squeeze(-1)  # nW, N
    diff = lw[:, None, :] - lw[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


class Mlp(nn.Module):
    """Token-wise two-layer MLP with GELU."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative position bias."""

    def __init__(
        self,
        dim: int,
        window_size: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # Persistent: it is in the authors' state dict, so strict loading needs it here too.
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B·nW, N, C); mask: (nW, N, N) additive, or None."""
        bw, n, c = x.shape
        h = self.num_heads
        qkv = self.qkv(x).view(bw, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B·nW, heads, N, hd)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, h).permute(2, 0, 1).unsqueeze(0)  # 1, heads, N, N
        if mask is not None:
            # Fold the windows of each image into the head axis, so the per-window mask
            # broadcasts over the batch without being copied B times.
            nw = mask.shape[0]
            bias = (bias + mask.unsqueeze(1)).reshape(1, nw * h, n, n)
            q, k, v = (t.reshape(bw // nw, nw * h, n, -1) for t in (q, k, v))
        bias = bias.to(q.dtype)
        p_drop = self.attn_drop if self.training else 0.0
        if x.device.type == "cpu" and q.dtype != torch.float32:
            # PyTorch's fused CPU attention is ~2-6x slower than this in bf16 (measured); in fp32
            # and on GPUs the fused kernel wins.
            attn = torch.matmul(q * self.scale, k.transpose(-2, -1)).add_(bias)
            out = torch.matmul(F.dropout(attn.softmax(dim=-1), p_drop, self.training), v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p_drop, scale=self.scale)
        out = out.reshape(bw, h, n, -1).transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(out))


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention + MLP, each pre-normed and residual, on (B, H·W, C) tokens."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int = 7,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        if min(self.input_resolution) <= window_size:
            # A window bigger than the image: one window, nothing to shift (as the authors do).
            window_size, shift_size = min(self.input_resolution), 0
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size), got {shift_size} for window {window_size}")
        self.window_size = window_size
        self.shift_size = shift_size
        self.drop_path = drop_path
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        if shift_size > 0:
            # The mask for the training size is in the authors' state dict; other sizes are computed per call.
            h, w = self.input_resolution
            self.register_buffer("attn_mask", shifted_window_mask(h, w, window_size, shift_size))
        else:
            self.attn_mask = None

    def _mask(self, h: int, w: int, device: torch.device) -> torch.Tensor | None:
        if self.shift_size == 0:
            return None
        if (h, w) == self.input_resolution:
            return self.attn_mask
        return shifted_window_mask(h, w, self.window_size, self.shift_size, device=device)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        h, w = x_size
        b, _, c = x.shape
        ws, s = self.window_size, self.shift_size
        y = self.norm1(x).view(b, h, w, c)
        if s > 0:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = self.attn(to_windows(y, ws), mask=self._mask(h, w, x.device))
        y = from_windows(y, ws, h, w)
        if s > 0:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + drop_path(y.reshape(b, h * w, c), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class BasicLayer(nn.Module):
    """A run of Swin blocks alternating plain and shifted windows."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        drop: float,
        attn_drop: float,
        drop_path: Sequence[float],
        norm_layer: Callable[[int], nn.Module],
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim,
                input_resolution,
                num_heads,
                window_size=window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop=drop,
                attn_drop=attn_drop,
                drop_path=drop_path[i],
                norm_layer=norm_layer,
            )
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, x_size)
        return x


def _tokens_to_image(x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
    b, _, c = x.shape
    return x.transpose(1, 2).reshape(b, c, *x_size)


def _residual_conv(dim: int, resi_connection: str) -> nn.Module:
    """The conv closing a residual group: one 3×3, or the authors' cheaper 3-conv bottleneck."""
    if resi_connection == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if resi_connection == "3conv":
        return nn.Sequential(
            nn.Conv2d(dim, dim // 4, 3, 1, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(dim // 4, dim // 4, 1, 1, 0),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(dim // 4, dim, 3, 1, 1),
        )
    raise ValueError(f"resi_connection must be '1conv' or '3conv', got {resi_connection!r}")


class RSTB(nn.Module):
    """Residual Swin Transformer Block: Swin blocks, then a conv on the image grid, plus a skip."""

    def __init__(self, dim: int, resi_connection: str = "1conv", **layer_kwargs):
        super().__init__()
        self.residual_group = BasicLayer(dim=dim, **layer_kwargs)
        self.conv = _residual_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        y = _tokens_to_image(self.residual_group(x, x_size), x_size)
        return x + self.conv(y).flatten(2).transpose(1, 2)


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, H·W, C) tokens, optionally normalised (patch size 1: a reshape)."""

    def __init__(self, dim: int, norm_layer: Callable[[int], nn.Module] | None):
        super().__init__()
        self.norm = norm_layer(dim) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)
        return self.norm(x) if self.norm is not None else x


class SwinIR(nn.Module):
    """SwinIR restorer; keyword arguments are the authors' (DifFace) config keys.

    ``img_size`` is the token-grid size the model was built for (after the unshuffle:
    64 for DifFace's 512 input); other input sizes work, their attention masks are computed
    on the fly. ``num_feat`` (not an authors' key; they fix 64) is the width of the
    upsampling tail. ``drop_path_rate`` (stochastic depth) acts in training only.
    ``use_checkpoint`` is accepted for config compatibility and ignored.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 64,
        patch_size: int = 1,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (6, 6, 6, 6),
        num_heads: Sequence[int] = (6, 6, 6, 6),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        ape: bool = False,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        sf: int = 4,
        img_range: float = 1.0,
        upsampler: str = "",
        resi_connection: str = "1conv",
        unshuffle: bool = False,
        unshuffle_scale: int | None = None,
        num_feat: int = 64,
    ):
        super().__init__()
        if patch_size != 1:
            raise ValueError("only patch_size=1 is supported (as in every released SwinIR)")
        if upsampler not in UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {UPSAMPLERS}, got {upsampler!r}")
        if len(depths) != len(num_heads):
            raise ValueError("depths and num_heads must have the same length")
        if unshuffle and not unshuffle_scale:
            raise ValueError("unshuffle=True needs unshuffle_scale")
        self.unshuffle_scale = int(unshuffle_scale) if unshuffle else 1
        if upsampler == "" and (sf != 1 or self.unshuffle_scale != 1):
            raise ValueError("upsampler '' keeps the input grid: it needs sf=1 and no unshuffle")
        if upsampler == "nearest+conv" and (sf < 2 or sf & (sf - 1)):
            raise ValueError(f"upsampler 'nearest+conv' upsamples by powers of 2, got sf={sf}")

        self.sf = sf
        self.img_range = img_range
        self.upsampler = upsampler
        self.window_size = window_size
        self.embed_dim = embed_dim
        self.ape = ape
        self.in_chans = in_chans
        mean = RGB_MEAN if in_chans == 3 else (0.0,)
        # Not persistent: the authors keep the mean outside the state dict.
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)

        # 1. shallow features
        first_in = in_chans * self.unshuffle_scale**2
        if unshuffle:
            self.conv_first = nn.Sequential(
                nn.PixelUnshuffle(self.unshuffle_scale), nn.Conv2d(first_in, embed_dim, 3, 1, 1)
            )
        else:
            self.conv_first = nn.Conv2d(first_in, embed_dim, 3, 1, 1)

        # 2. deep features: residual Swin groups on the token grid
        res = _pair(img_size)
        self.patches_resolution = (res[0] // patch_size, res[1] // patch_size)
        self.patch_embed = PatchEmbed(embed_dim, norm_layer if patch_norm else None)
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, res[0] * res[1], embed_dim))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)
        total = sum(depths)
        # Stochastic depth grows linearly from 0 to drop_path_rate over all blocks (plain floats: works on meta).
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.layers = nn.ModuleList()
        start = 0
        for depth, heads in zip(depths, num_heads, strict=True):
            self.layers.append(
                RSTB(
                    embed_dim,
                    resi_connection,
                    input_resolution=self.patches_resolution,
                    depth=depth,
                    num_heads=heads,
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[start : start + depth],
                    norm_layer=norm_layer,
                )
            )
            start += depth
        self.norm = norm_layer(embed_dim)
        self.conv_after_body = _residual_conv(embed_dim, resi_connection)

        # 3. reconstruction
        out_ch = in_chans
        if upsampler == "nearest+conv":
            # Slope 0.01 here (nn.LeakyReLU's default) vs 0.2 below: the authors' choice, kept for their weights.
            self.conv_before_upsample = nn.Sequential(
                nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True)
            )
            self.num_up = int(math.log2(sf))
            for i in range(1, self.num_up + 1):
                setattr(self, f"conv_up{i}", nn.Conv2d(num_feat, num_feat, 3, 1, 1))
            self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_last = nn.Conv2d(num_feat, out_ch, 3, 1, 1)
            self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        elif upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(
                nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True)
            )
            self.upsample = _pixelshuffle_upsample(sf, num_feat)
            self.conv_last = nn.Conv2d(num_feat, out_ch, 3, 1, 1)
        elif upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(nn.Conv2d(embed_dim, sf * sf * out_ch, 3, 1, 1), nn.PixelShuffle(sf))
        else:
            self.conv_last = nn.Conv2d(embed_dim, out_ch, 3, 1, 1)

        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def pad_multiple(self) -> int:
        """Input sides are padded to a multiple of this (window size on the unshuffled grid)."""
        return self.window_size * self.unshuffle_scale

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x_size = (x.shape[2], x.shape[3])
        x = self.patch_embed(x)
        if self.ape:
            if x_size != self.patches_resolution:
                raise InputError(f"ape=True fixes the token grid to {self.patches_resolution}, got {x_size}")
            x = x + self.absolute_pos_embed
        x = self.pos_drop(x)
        for layer in self.layers:
            x = layer(x, x_size)
        return _tokens_to_image(self.norm(x), x_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_chans, H, W) in [0, 1] -> (B, in_chans, H·sf/unshuffle_scale, W·sf/unshuffle_scale)."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise InputError(f"SwinIR expects a (B, {self.in_chans}, H, W) tensor, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        m = self.pad_multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            # Reflect as the authors do; replicate where the image is too small to reflect.
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.img_range

        feat = self.conv_first(x)
        feat = self.conv_after_body(self.forward_features(feat)) + feat
        if self.upsampler == "nearest+conv":
            y = self.conv_before_upsample(feat)
            for i in range(1, self.num_up + 1):
                up = getattr(self, f"conv_up{i}")
                y = self.lrelu(up(F.interpolate(y, scale_factor=2, mode="nearest")))
            x = self.conv_last(self.lrelu(self.conv_hr(y)))
        elif self.upsampler == "pixelshuffle":
            x = self.conv_last(self.upsample(self.conv_before_upsample(feat)))
        elif self.upsampler == "pixelshuffledirect":
            x = self.upsample(feat)
        else:  # same grid in and out: predict a residual on the image
            x = x + self.conv_last(feat)

        x = x / self.img_range + mean
        oh, ow = h * self.sf // self.unshuffle_scale, w * self.sf // self.unshuffle_scale
        return x[..., :oh, :ow]


def _pixelshuffle_upsample(sf: int, num_feat: int) -> nn.Sequential:
    """Conv + PixelShuffle stages: ×2 steps for powers of 2, or one ×3 step."""
    mods: list[nn.Module] = []
    if sf >= 2 and sf & (sf - 1) == 0:
        for _ in range(int(math.log2(sf))):
            mods += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
    elif sf == 3:
        mods += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
    else:
        raise ValueError(f"upsampler 'pixelshuffle' supports sf = 2^n or 3, got {sf}")
    return nn.Sequential(*mods)
