"""Errors that reach the user: each carries what went wrong and how to fix it."""
from __future__ import annotations


class AsapError(Exception):
    """Base class for errors shown to users without a traceback.

    ``message`` says what went wrong (naming the file or model), ``hint`` how to fix it.
    """

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message}\n  Fix: {hint}" if hint else message)


class ModelLoadError(AsapError):
    """A CLIP checkpoint or a distiller could not be loaded."""


class InputError(AsapError):
    """The input folder, manifest or option cannot be used as given."""


class ImageLoadError(AsapError):
    """One image file cannot be decoded; the run skips it and reports ``path`` and ``reason``."""

    def __init__(self, path: str, reason: str, hint: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}", hint)


class BundleError(AsapError):
    """A bundle folder is missing, incomplete or not safe to open."""
