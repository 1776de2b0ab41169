"""Diffusion core shared by all methods: the chain math and the sampling loop."""

from bfr.diffusion.gaussian import GaussianDiffusion, ddim_respacing, get_named_beta_schedule, space_timesteps
from bfr.diffusion.samplers import noise_like, sample

__all__ = ["GaussianDiffusion", "ddim_respacing", "get_named_beta_schedule", "noise_like", "sample",
           "space_timesteps"]
