"""Where FAISS searches: the GPU when FAISS has GPU support and sees a GPU, else the CPU.

``faiss-gpu`` (the ``gpu`` extra: ``pip install -e ".[gpu]"``) and ``faiss-cpu`` both provide the
``faiss`` module: install one of them, not both. The choice is ``$FALCO_FAISS_DEVICE``:
``auto`` (default: the GPU when ``faiss.get_num_gpus() > 0``), ``cpu``, or ``cuda`` (the GPU, and
a warning when it is not there: the CPU is used). Flat and IVF indexes and exact search move;
HNSW has no FAISS GPU version and stays on the CPU (with a warning).
"""

from __future__ import annotations

import functools
import os
import warnings

import faiss
import numpy as np

from falco.errors import InputError

__all__ = ["FAISS_DEVICE_ENV", "faiss_gpu_status", "faiss_info", "knn", "search_device"]

FAISS_DEVICE_ENV = "FALCO_FAISS_DEVICE"
DEVICES = ("auto", "cpu", "cuda")


def faiss_gpu_status() -> tuple[int, str]:
    """``(GPUs FAISS sees, why)``: 0 without GPU support (faiss-cpu) or without a visible GPU."""
    version = getattr(faiss, "__version__", "?")
    if not hasattr(faiss, "StandardGpuResources"):
        return 0, f"FAISS {version} has no GPU support (faiss-cpu; the gpu extra installs faiss-gpu)"
    n = int(faiss.get_num_gpus())
    if n <= 0:
        return 0, f"FAISS {version} has GPU support but sees no GPU"
    return n, f"FAISS {version} sees {n} GPU(s)"


def search_device(requested: str | None = None) -> tuple[str, str]:
    """``('cuda' | 'cpu', why)`` for ``requested`` (default ``$FALCO_FAISS_DEVICE``, else ``auto``).

    Raises:
        InputError: Not one of ``auto``, ``cpu``, ``cuda``.
    """
    requested = requested or os.environ.get(FAISS_DEVICE_ENV) or "auto"
    if requested not in DEVICES:
        raise InputError(f"FAISS device must be one of {', '.join(DEVICES)} (${FAISS_DEVICE_ENV}), got {requested!r}")
    if requested == "cpu":
        return "cpu", "the CPU was asked for"
    gpus, why = faiss_gpu_status()
    if gpus > 0:
        return "cuda", why
    if requested == "cuda":
        warnings.warn(f"FAISS on 'cuda' was asked for, but {why}; using the CPU", RuntimeWarning, stacklevel=2)
    return "cpu", why


@functools.cache
def _resources():
    return faiss.StandardGpuResources()


def knn(q: np.ndarray, base: np.ndarray, k: int, metric: int, device: str) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force FAISS k-NN (raw scores, labels) on ``device`` (``faiss.knn_gpu`` on 'cuda')."""
    if device == "cuda":
        return faiss.knn_gpu(_resources(), q, base, k, metric=metric)
    return faiss.knn(q, base, k, metric=metric)


def faiss_info() -> dict:
    """For ``falco env``: FAISS's version, GPU support, GPUs seen, and where search runs and why."""
    gpus, why = faiss_gpu_status()
    try:
        device, why = search_device()
    except InputError as exc:
        device, why = "cpu", str(exc)
    return {"version": getattr(faiss, "__version__", "?"), "gpu_support": hasattr(faiss, "StandardGpuResources"),
            "gpus": gpus, "device": device, "why": why}
