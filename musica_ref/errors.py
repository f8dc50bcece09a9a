"""The exception types of musica_ref. Every error the library raises on bad input is one of these."""


class MusicaError(Exception):
    """Base class of every error musica_ref raises on purpose."""


class WeightsError(MusicaError, ValueError):
    """A weights file is unreadable, of the wrong format or version, or has a missing, misshaped,
    non-finite or inconsistent entry. The message names the problem."""


class InputError(MusicaError, ValueError):
    """An image, box, point file or setting given to the model is unusable. The message names the problem."""
