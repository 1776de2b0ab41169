"""The kinds of failure a user can act on, each with a message that says what to do."""

import numbers


class BfrError(Exception):
    """Base class of bfr's own errors."""


class InputError(BfrError, ValueError):
    """The input (image, tensor, option) is not acceptable; the message says why."""


class NoFaceError(InputError):
    """No face was found where one is needed (a photo given to FLIPNET's degradation mode)."""


class WeightsUnavailableError(BfrError, FileNotFoundError):
    """Model weights are not here and cannot be fetched; the message says where to get them."""


MAX_SEED = 2**31 - 1  # a user's seed, in every command, the API and the demo (whose slider is a JS number)
MAX_DERIVED_SEED = 2**63 - 1  # seeds bfr derives from a user's (seed + batch index, …): what torch and numpy take


def check_seed(seed, limit: int = MAX_SEED) -> int:
    """A seed as an int in [0, limit]: one range for every entry point, so a seed that works in one
    command works in all (torch takes negatives, numpy does not)."""
    whole = isinstance(seed, numbers.Integral) or (isinstance(seed, numbers.Real) and float(seed).is_integer())
    if isinstance(seed, bool) or not whole or not 0 <= int(seed) <= limit:
        raise InputError(f"a seed is a whole number from 0 to {limit}, got {seed!r}")
    return int(seed)
