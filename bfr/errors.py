"""The kinds of failure a user can act on, each with a message that says what to do."""


class BfrError(Exception):
    """Base class of bfr's own errors."""


class InputError(BfrError, ValueError):
    """The input (image, tensor, option) is not acceptable; the message says why."""


class NoFaceError(InputError):
    """No face was found where one is needed (a photo given to FLIPNET's degradation mode)."""


class WeightsUnavailableError(BfrError, FileNotFoundError):
    """Model weights are not here and cannot be fetched; the message says where to get them."""
