"""The two kinds of failure a user can act on, each with a message that says what to do."""


class BfrError(Exception):
    """Base class of bfr's own errors."""


class InputError(BfrError, ValueError):
    """The input (image, tensor, option) is not acceptable; the message says why."""


class WeightsUnavailableError(BfrError, FileNotFoundError):
    """Model weights are not here and cannot be fetched; the message says where to get them."""
