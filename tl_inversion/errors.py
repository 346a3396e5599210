"""One exception hierarchy for tl_inversion.

Every error the library raises on purpose derives from :class:`TLInversionError`, so a caller
(the CLI, a notebook helper) can tell "you asked for something invalid" from a bug: the CLI
prints these as one line and exits with status 2; anything else keeps its traceback.

Each class also derives from the built-in exception a Python user would expect (``ValueError``
for bad values, ``TypeError`` for wrong types, ...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "BridgeUnavailableError",
    "ConfigError",
    "InputTypeError",
    "InputValueError",
    "LoadError",
    "MissingPathError",
    "ModelMismatchError",
    "NotationError",
    "OutputExistsError",
    "PositionError",
    "SiteError",
    "TLInversionError",
    "TLInversionWarning",
    "TokenIdError",
]


class TLInversionError(Exception):
    """Base class of every error tl_inversion raises on purpose."""


class InputValueError(TLInversionError, ValueError):
    """An argument has the right type but a value that is not valid here (the message says
    what was given and what is valid).
    """


class InputTypeError(TLInversionError, TypeError):
    """An argument has the wrong type (the message names the expected type)."""


class TokenIdError(TLInversionError, IndexError):
    """A token id outside the vocabulary (the message gives the id and the valid range)."""


class ConfigError(InputValueError):
    """A config field (``TrainConfig``, ``DecoderConfig``, ...) has an invalid value.

    Args:
        message: what was wrong and what is valid, naming the field as the Python API spells
            it (``train_noise_flag``), never as a command-line flag.
        field: the config field's name (``"train_noise_flag"``), or ``None``. The CLI uses it
            to name the matching flag (``--train-noise-flag``).
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SiteError(InputValueError):
    """A site (hook name + optional head) is malformed or not a hook point of the model; the
    message lists the closest valid names.
    """


class PositionError(InputValueError):
    """A position (index or the task's named position) does not exist in an input."""


class NotationError(InputValueError):
    """Circuit notation (nodes, edges, positions) that cannot be parsed."""


class LoadError(TLInversionError, RuntimeError):
    """A model or decoder folder cannot be loaded as it is (missing or unexpected files or keys)."""


class MissingPathError(LoadError, FileNotFoundError):
    """A file or folder to read does not exist or lacks the files it needs (a bank folder
    without ``bank.json``); still a ``FileNotFoundError``.
    """


class OutputExistsError(TLInversionError, FileExistsError):
    """An output folder already holds what the call would write and it may not replace it
    (a run folder with checkpoints when resuming is off); still a ``FileExistsError``.
    """


class ModelMismatchError(TLInversionError, RuntimeError):
    """Decoders are used with a probed model other than the one they were trained on."""


class BridgeUnavailableError(TLInversionError, ImportError):
    """The installed TransformerLens has no ``TransformerBridge`` (TL 2.x)."""


class TLInversionWarning(UserWarning):
    """Base class of tl_inversion's warnings."""
