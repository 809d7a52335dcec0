"""The errors of stylegan2_ops (a package of its own: it imports nothing from falco)."""

from __future__ import annotations


class OpsError(Exception):
    """Base class of every error stylegan2_ops raises on purpose."""


class OpInputError(OpsError, ValueError):
    """A bad argument to an op (shape, dtype, device, option); the message names it."""


class BuildError(OpsError, RuntimeError):
    """A CUDA extension could not be built or loaded (the message says why)."""
