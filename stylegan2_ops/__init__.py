"""StyleGAN2's custom ops: fused bias+activation and upfirdn2d.

Each op has a CUDA kernel, compiled with ninja on the first call with a CUDA tensor (never at
import), and a pure-PyTorch twin with the same semantics. ``impl='auto'`` (the default) picks
the kernel for CUDA tensors when it builds and the twin otherwise; ``$FALCO_OPS=ref|cuda|auto``
changes what ``'auto'`` means. Semantics follow NVIDIA's StyleGAN2-ADA ``torch_utils/ops``.
"""

from __future__ import annotations

import os

import torch

from . import _build, _impl
from ._bias_act import ACTIVATIONS, bias_act
from ._build import build_extension
from .errors import BuildError, OpInputError, OpsError
from ._upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d

__all__ = [
    "ACTIVATIONS",
    "BuildError",
    "OpInputError",
    "OpsError",
    "bias_act",
    "build_extension",
    "downsample2d",
    "filter2d",
    "impl_status",
    "last_used",
    "setup_filter",
    "upfirdn2d",
    "upsample2d",
]

last_used = _impl.last_used


def _op_status(name: str, requested: str, cuda_available: bool, tools: _build.Toolchain) -> str:
    if requested not in _impl.IMPLS:
        return f"error ({_impl.ENV_VAR}={requested!r} is not one of {', '.join(_impl.IMPLS)})"
    if requested == "ref":
        return f"ref ({_impl.ENV_VAR}=ref)"
    if not cuda_available:
        return "ref (no CUDA device)"
    fallback = "error" if requested == "cuda" else "ref"
    if _build.loaded(name) is not None:
        return "cuda (built)"
    reason = _build.failure(name)
    if reason is not None:
        return f"{fallback} (CUDA build failed: {reason})"
    problem = tools.problem()
    if problem is not None:
        return f"{fallback} (cannot build CUDA kernels: {problem})"
    folder, module_name = _build.build_dir(name)
    if any(folder.glob(f"{module_name}*.so")):
        return "cuda (cached build: loads on first CUDA call)"
    return "cuda (not built yet: builds on first CUDA call)"


def impl_status() -> dict:
    """Which implementation each op would use here, without compiling anything.

    Returns:
        A dict with ``requested`` (``$FALCO_OPS``, default ``'auto'``), ``cuda_available``,
        ``nvcc``, ``ninja``, ``cuda_home``, ``build_root`` and, for ``bias_act`` and
        ``upfirdn2d``, a short status such as ``'ref (no CUDA device)'`` or ``'cuda (built)'``.
    """
    requested = _impl.requested()
    cuda_available = torch.cuda.is_available()
    tools = _build.find_toolchain()
    status: dict = {
        "requested": os.environ.get(_impl.ENV_VAR, "auto"),
        "cuda_available": cuda_available,
        "nvcc": tools.nvcc,
        "ninja": tools.ninja,
        "cuda_home": tools.cuda_home,
        "build_root": str(_build.build_root()),
    }
    for name in _build.EXTENSIONS:
        status[name] = _op_status(name, requested, cuda_available, tools)
    return status
