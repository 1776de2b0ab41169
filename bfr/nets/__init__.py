"""Networks shared by the four methods: the ADM UNet and SwinIR, in the authors' layouts."""

from __future__ import annotations

from torch import nn

from bfr.nets.swinir import SwinIR
from bfr.nets.unet import UNetModel

__all__ = ["SwinIR", "UNetModel", "build_net"]


def build_net(kind: str, config: dict) -> nn.Module:
    """The network a weights file describes in its metadata ("kind" and "config")."""
    if kind in ("prior", "idm"):
        return UNetModel(**config)
    if kind == "swinir":
        return SwinIR(**config)
    raise ValueError(f"unknown network kind {kind!r}")
