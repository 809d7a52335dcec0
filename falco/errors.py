"""Typed exceptions raised at falco's API boundary.

Every message names the offending argument or file and what was expected, so the CLI can
print it as a single line. Internal shape invariants use ``assert`` instead.
"""

from __future__ import annotations


class FalcoError(Exception):
    """Base class of every error falco raises on purpose."""


class InputError(FalcoError, ValueError):
    """A bad argument value (wrong shape, range, option...)."""


class RunAbortedError(FalcoError):
    """A failure no other input would escape (e.g. ``--compile`` cannot compile): the run stops.

    What was already written stays; the next run resumes from the manifest.
    """


class ImageLoadError(FalcoError):
    """An image file could not be read (missing, corrupt, truncated, not an image, too big)."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class CheckpointError(FalcoError):
    """A checkpoint is unreadable, of an unknown layout, or its tensors have unexpected shapes."""

    def __init__(self, source: object, reason: str) -> None:
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


class ModelNotFoundError(FalcoError, FileNotFoundError):
    """A pretrained model file is not in the model set."""


class DownloadError(FalcoError):
    """A download failed (offline, HTTP error, interrupted)."""


class ChecksumError(FalcoError):
    """A file's sha256 does not match the registry."""

