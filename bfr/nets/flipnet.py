"""FLIPNET (Miao et al., ICCV 2025): one frozen diffusion prior, two modes, added trainable parts.

No code is public; this follows METHODS.md §2. Around a frozen prior UNet it adds:

- LoRA on every attention projection (peft), shared by both modes;
- **BoostHub** beside every self-attention: queries from the target's features, keys and
  values from the *condition's* features at the same layer, a zero-initialised output,
  scaled by φ and added to the self-attention output;
- a learned **mode embedding** (restore = 0, degrade = 1) added to the timestep embedding
  [choice: one network that knows its mode, rather than one LoRA set per mode];
- the face embedding (``FaceEmbedder``) whose condition tokens, mapped by the adapter τ,
  enter cross-attention in place of text.

The condition features come from running the condition image through the same (LoRA'd)
prior at t = 0 and keeping what enters each self-attention [choice: reference-network
style]. They do not depend on the sampling step, so a restoration computes them once.

BoostHub's Q, K and V start as copies of the site's own self-attention projections (and its
head count) [choice, reference-attention style]: from the first step each target position
attends to the matching content of the condition, so the zero-initialised W_O learns from
aligned features instead of waiting for random Q/K to find the correspondence. Measured on 8
LFW pairs around prior64 (60 adapter steps, lr 1e-3, fixed t and noise): ε-MSE 0.98e-2 →
0.84e-2 with this start, → 0.88e-2 with random Q/K/V; with the LQs shuffled among the pairs
it ends at 1.02e-2 (the condition is used), against 0.97e-2.

Two backbones share this code. ``"adm"``: the project's ADM UNet (compact tier, pixels);
it has no cross-attention, so the face tokens enter through one more zero-initialised
added attention per self-attention site, GLIDE-style. ``"sd"``: a diffusers
UNet2DConditionModel (paper tier, Stable Diffusion 2.x latents), whose own cross-attention
takes the face tokens as ``encoder_hidden_states``.

Everything added is an add-on: at initialisation (LoRA B = 0, zero output projections, zero
mode embedding) the network returns exactly the frozen prior's output, and φ = 0 removes
BoostHub's contribution whatever its weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from bfr.nets.face_embed import EmbedConfig, FaceEmbedder
from bfr.nets.unet import AttentionBlock

MODES = {"restore": 0, "degrade": 1}
# Which encoder embeds the condition image: the LQ encoder in restoration mode (the paper's
# inference), the HQ encoder for the clean face that conditions the degradation mode.
CONDITION_KIND = {"restore": "lq", "degrade": "hq"}


@dataclass
class FlipNetConfig:
    backbone: str = "adm"  # "adm" (bfr UNetModel) or "sd" (diffusers UNet2DConditionModel)
    lora_rank: int = 8  # the paper uses 64 on Stable Diffusion
    head_dim: int = 32
    context_dim: int = 256  # width of τ's output for "adm"; "sd" uses the UNet's cross_attention_dim
    embed: dict = field(default_factory=lambda: EmbedConfig().to_dict())

    def to_dict(self) -> dict:
        return asdict(self)


class AddedAttention(nn.Module):
    """An attention branch beside an existing layer, whose output starts at zero.

    out = W_O · softmax(Q(x) K(c)ᵀ / √d) V(c), with x the layer's tokens and c another sequence:
    the condition's features at the same layer (BoostHub) or the face tokens.
    """

    def __init__(self, dim: int, context_dim: int, head_dim: int = 32, heads: int | None = None):
        super().__init__()
        self.heads = heads or max(1, dim // head_dim)
        self.norm = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(context_dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        c = self.norm_context(context.to(x.dtype))
        q, k, v = self.to_q(self.norm(x)), self.to_k(c), self.to_v(c)
        q, k, v = (t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        return self.to_out(h)


def self_attention_sites(prior: nn.Module, backbone: str) -> list[tuple[nn.Module, int]]:
    """(module, channels) of every self-attention of the prior (registration order, not call order)."""
    if backbone == "adm":
        return [(m, m.qkv.in_channels) for m in prior.modules() if isinstance(m, AttentionBlock)]
    if backbone == "sd":
        from diffusers.models.attention import BasicTransformerBlock

        return [(m.attn1, m.attn1.to_q.in_features) for m in prior.modules() if isinstance(m, BasicTransformerBlock)]
    raise ValueError(f"unknown FLIPNET backbone {backbone!r}; use 'adm' or 'sd'")


def site_projections(site: nn.Module, backbone: str) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(heads, W_q, W_k, W_v) of a self-attention site, each W (out, in), as the prior computes them."""
    if backbone == "adm":
        c, heads = site.qkv.in_channels, site.num_heads
        w = site.qkv.weight.detach().squeeze(-1)  # (3c, c)
        if site.new_order:
            q, k, v = w.chunk(3)
        else:  # legacy layout: per head [q; k; v]
            q, k, v = (part.reshape(c, c) for part in w.reshape(heads, 3, c // heads, c).unbind(1))
        return heads, q, k, v
    return site.heads, site.to_q.weight.detach(), site.to_k.weight.detach(), site.to_v.weight.detach()


LORA_TARGETS = {"adm": r".*\.(qkv|proj_out)$", "sd": r".*attn[12]\.(to_q|to_k|to_v|to_out\.0)$"}


class _ConditionDone(Exception):
    """Raised once every site's condition features are kept: the rest of that pass is not needed."""


@dataclass
class Condition:
    """What a target pass reads: features at every site, the face tokens (after τ), the modes."""

    features: list[torch.Tensor]
    context: torch.Tensor
    modes: torch.Tensor

    def repeat(self, k: int) -> Condition:
        """The same condition for k samples each (e.g. several degraded variants of one face)."""
        rep = lambda t: t.repeat_interleave(k, dim=0)  # noqa: E731
        return Condition([rep(f) for f in self.features], rep(self.context), rep(self.modes))


class FlipNet(nn.Module):
    """The frozen prior plus FLIPNET's trainable parts; call ``condition`` once, then ``forward`` per step."""

    def __init__(self, prior: nn.Module, config: FlipNetConfig | dict | None = None):
        super().__init__()
        from peft import LoraConfig, inject_adapter_in_model

        cfg = FlipNetConfig(**config) if isinstance(config, dict) else (config or FlipNetConfig())
        self.config = cfg
        self.prior = prior.requires_grad_(False)
        sites = self_attention_sites(prior, cfg.backbone)
        if not sites:
            raise ValueError("the prior has no self-attention layers for BoostHub to sit beside")
        self.sites = [m for m, _ in sites]
        dims = [d for _, d in sites]
        if cfg.backbone == "adm":
            context_dim = cfg.context_dim
            time_module, time_dim = prior.time_embed, prior.model_channels * 4
            self.face_attention = nn.ModuleList(AddedAttention(d, context_dim, cfg.head_dim) for d in dims)
        else:
            context_dim = prior.config.cross_attention_dim
            time_module, time_dim = prior.time_embedding, prior.time_embedding.linear_2.out_features
            self.face_attention = None
        self.boost = nn.ModuleList()
        for site, d in zip(self.sites, dims, strict=True):  # BoostHub starts as the site's own attention (see above)
            heads, w_q, w_k, w_v = site_projections(site, cfg.backbone)
            hub = AddedAttention(d, d, heads=heads)
            for linear, w in ((hub.to_q, w_q), (hub.to_k, w_k), (hub.to_v, w_v)):
                linear.weight.data.copy_(w)
            self.boost.append(hub)
        self.mode_embedding = nn.Embedding(len(MODES), time_dim)
        nn.init.zeros_(self.mode_embedding.weight)
        self.embedder = FaceEmbedder(cfg.embed).requires_grad_(False)
        embed_dim = self.embedder.config.dim
        self.tau = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, context_dim), nn.GELU(),
                                 nn.Linear(context_dim, context_dim))
        inject_adapter_in_model(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_rank,
                                           target_modules=LORA_TARGETS[cfg.backbone]), self.prior)
        for name, p in self.prior.named_parameters():
            p.requires_grad_("lora_" in name)

        self._ctx: dict | None = None
        time_module.register_forward_hook(self._add_mode)
        for i, site in enumerate(self.sites):
            site.register_forward_pre_hook(partial(self._keep_input, i), with_kwargs=True)
            site.register_forward_hook(partial(self._add_branches, i))

    # -- hooks ----------------------------------------------------------------------------------
    def _add_mode(self, module, args, output):
        if self._ctx is None:
            return output
        return output + self.mode_embedding(self._ctx["modes"]).to(output.dtype)

    # Hooks are partials of bound methods (not closures) so that a deep copy (the EMA) rebinds them.
    def _keep_input(self, i: int, module, args, kwargs):
        if self._ctx is not None:
            self._ctx["input"] = args[0] if args else kwargs["hidden_states"]

    def _add_branches(self, i: int, module, args, output):
        ctx = self._ctx
        if ctx is None:
            return output
        x = ctx.pop("input")
        spatial = x.dim() == 4  # ADM: (B, C, H, W) residual stream; diffusers: (B, N, C) tokens
        tokens = x.flatten(2).transpose(1, 2) if spatial else x
        extra = 0
        if self.face_attention is not None:
            extra = self.face_attention[i](tokens, ctx["context"])
        if ctx["write"] is not None:
            ctx["write"][i] = tokens
            if len(ctx["write"]) == len(self.sites):
                raise _ConditionDone
        elif ctx["phi"]:
            extra = extra + ctx["phi"] * self.boost[i](tokens, ctx["features"][i])
        if isinstance(extra, int):
            return output
        if spatial:
            extra = extra.transpose(1, 2).reshape(x.shape)
        return output + extra.to(output.dtype)

    # -- calls ----------------------------------------------------------------------------------
    def _prior(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if self.config.backbone == "adm":
            return self.prior(x, t)
        return self.prior(x, t, encoder_hidden_states=context).sample

    def mode_ids(self, mode: str, n: int, device: torch.device) -> torch.Tensor:
        if mode not in MODES:
            raise ValueError(f"unknown FLIPNET mode {mode!r}; use one of: {', '.join(MODES)}")
        return torch.full((n,), MODES[mode], dtype=torch.long, device=device)

    def condition(self, cond: torch.Tensor, face: torch.Tensor, mode: str) -> Condition:
        """Condition features of ``cond`` (the prior's input space) and tokens of ``face`` (pixels, [-1, 1]).

        In pixel space the two are the same image; in latent space ``cond`` is its latent.
        """
        modes = self.mode_ids(mode, len(cond), cond.device)
        context = self.tau(self.embedder.tokens(face, CONDITION_KIND[mode]))
        written: dict[int, torch.Tensor] = {}
        self._ctx = {"modes": modes, "context": context, "write": written, "phi": 0.0}
        try:
            self._prior(cond, torch.zeros(len(cond), dtype=torch.long, device=cond.device), context)
        except _ConditionDone:
            pass
        finally:
            self._ctx = None
        return Condition([written[i] for i in range(len(self.sites))], context, modes)

    def forward(self, x: torch.Tensor, t: torch.Tensor, condition: Condition, phi: float = 1.0) -> torch.Tensor:
        """The prior's output for the target ``x`` at timesteps ``t``, steered by ``condition``."""
        self._ctx = {"modes": condition.modes, "context": condition.context, "write": None,
                     "features": condition.features, "phi": float(phi)}
        try:
            return self._prior(x, t, condition.context)
        finally:
            self._ctx = None

    # -- weights --------------------------------------------------------------------------------
    @staticmethod
    def _frozen(key: str) -> bool:
        return key.startswith("prior.") and "lora_" not in key

    def state_dict(self, *args, **kwargs):
        """Without the frozen prior's weights: those come from the prior's own file."""
        state = super().state_dict(*args, **kwargs)
        for key in [k for k in state if self._frozen(k)]:
            del state[key]
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not self._frozen(k)]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"FlipNet state does not fit: missing {missing[:5]}, unexpected "
                               f"{result.unexpected_keys[:5]}")
        return result

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """What inference needs besides the frozen prior: LoRA, BoostHub, face attention, mode embedding, τ,
        the encoders (the decoders only serve training)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("embedder.decoders.")}

    def load_adapters(self, state: dict[str, torch.Tensor]) -> None:
        """Load ``adapter_state_dict`` output; complains about anything missing or unknown."""
        expected = set(self.adapter_state_dict())
        missing, unknown = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unknown:
            more = lambda keys: " …" if len(keys) > 5 else ""  # noqa: E731
            raise KeyError(f"FLIPNET adapter weights do not fit this network: missing {missing[:5]}{more(missing)}, "
                           f"unexpected {unknown[:5]}{more(unknown)}")
        super().load_state_dict(state, strict=False)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
