"""Choosing between the CUDA kernels and the pure-PyTorch twins (``impl='auto'|'cuda'|'ref'``).

Rules:
  * ``impl='ref'`` always runs the twin; ``impl='cuda'`` needs a CUDA tensor (else
    :class:`~stylegan2_ops.errors.OpInputError`) and a working build (else :class:`BuildError`).
  * ``impl='auto'`` follows ``$FALCO_OPS`` (default ``auto``): ``ref`` forces the twin, ``cuda``
    behaves like ``impl='cuda'`` for CUDA tensors (a failed build raises instead of falling back),
    ``auto`` uses CUDA for CUDA tensors when the build works and the twin otherwise. A failed
    build then emits one warning per process and falls back to the twin.
  * CPU tensors always run the twin under ``impl='auto'``.
"""

from __future__ import annotations

import os
import threading
import warnings
from types import ModuleType

import torch

from .errors import OpInputError

from . import _build

IMPLS = ("auto", "cuda", "ref")
ENV_VAR = "FALCO_OPS"

_warned = False
_warn_lock = threading.Lock()
_last_used: dict[str, str] = {}


def requested() -> str:
    """The value of ``$FALCO_OPS`` (lower-cased, default ``'auto'``); not validated."""
    return os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"


def _requested_checked() -> str:
    value = requested()
    if value not in IMPLS:
        raise OpInputError(f"environment variable {ENV_VAR} must be one of {', '.join(IMPLS)}; got {value!r}")
    return value


def last_used(op: str) -> str | None:
    """Which implementation (``'cuda'`` or ``'ref'``) the last call of ``op`` in this process ran."""
    return _last_used.get(op)


def _warn_fallback(op: str, exc: Exception) -> None:
    global _warned
    with _warn_lock:
        if _warned:
            return
        _warned = True
    warnings.warn(
        f"stylegan2_ops: could not build the CUDA kernels ({op}): {exc}. Falling back to the "
        f"pure-PyTorch implementation (slower). Set {ENV_VAR}=ref to silence this, or see "
        "stylegan2_ops.impl_status().",
        RuntimeWarning,
        stacklevel=4,
    )


def select(op: str, x: torch.Tensor, impl: str, *, supported: bool = True) -> ModuleType | None:
    """Pick the implementation for one call of ``op`` on ``x``.

    Args:
        op: ``'bias_act'`` or ``'upfirdn2d'`` (also the extension name).
        x: The op's main input tensor.
        impl: The caller's ``impl`` argument.
        supported: False when the kernel cannot handle this call (e.g. its dtype); ``'auto'`` then
            uses the twin and ``'cuda'`` raises.

    Returns:
        The extension module to run, or None for the twin.
    """
    if impl not in IMPLS:
        raise OpInputError(f"impl must be one of {', '.join(map(repr, IMPLS))}; got {impl!r}")
    strict = impl == "cuda"
    if impl == "auto":
        env = _requested_checked()
        if env == "ref":
            return _use(op, None)
        strict = env == "cuda"
    elif impl == "ref":
        return _use(op, None)

    if x.device.type != "cuda":
        if impl == "cuda":
            raise OpInputError(f"{op}: impl='cuda' needs a CUDA tensor; got x on {x.device} (use impl='auto' or 'ref')")
        return _use(op, None)
    if not supported:
        if strict:
            raise OpInputError(f"{op}: the CUDA kernel does not support this input (dtype {x.dtype}); use impl='ref'")
        return _use(op, None)
    try:
        module = _build.build_extension(op)
    except _build.BuildError as exc:
        if strict:
            raise
        _warn_fallback(op, exc)
        return _use(op, None)
    return _use(op, module)


def _use(op: str, module: ModuleType | None) -> ModuleType | None:
    _last_used[op] = "ref" if module is None else "cuda"
    return module


def reset_warning() -> None:
    """Allow the fallback warning to be emitted again (tests)."""
    global _warned
    _warned = False
