"""bfr: blind face restoration with diffusion priors (DifFace, FLIPNET, unsupervised BFR, IDM)."""

__version__ = "0.1.0"


def __getattr__(name):  # keep `import bfr` light: torch and friends load on first use
    if name in ("load", "Restorer", "RestoreResult", "METHODS", "method_status"):
        from bfr import api

        return getattr(api, name)
    raise AttributeError(f"module 'bfr' has no attribute {name!r}")
