"""``falco env``: what falco runs on (platform, versions, CUDA, op build status)."""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import sys

OPTIONAL_PACKAGES = (
    "numpy", "pillow", "dlib-bin", "face-recognition-models", "open-clip-torch", "faiss-cpu",
    "faiss-gpu", "safetensors", "scipy", "scikit-image", "facenet-pytorch", "typer", "tqdm",
)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect_env() -> dict:
    """Gather environment facts as a plain dict (used by ``falco env`` and run manifests)."""
    import torch

    import stylegan2_ops
    from falco import __version__

    info: dict = {
        "falco": __version__,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "nvcc": shutil.which("nvcc"),
        "ninja": shutil.which("ninja"),
        "ops": stylegan2_ops.impl_status(),
        "packages": {name: _version(name) for name in OPTIONAL_PACKAGES},
    }
    return info


def format_env(info: dict) -> str:
    """Human-readable, one fact per line."""
    ops = info["ops"]
    lines = [
        f"falco            {info['falco']}",
        f"platform         {info['platform']}",
        f"python           {info['python']}",
        f"torch            {info['torch']} (built for CUDA {info['torch_cuda']})",
        f"CUDA available   {'yes: ' + ', '.join(info['gpus']) if info['cuda_available'] else 'no'}",
        f"nvcc             {info['nvcc'] or 'not found'}",
        f"ninja            {info['ninja'] or 'not found'}",
        f"FALCO_OPS        {ops.get('requested', 'auto')}",
        f"op bias_act      {ops.get('bias_act')}",
        f"op upfirdn2d     {ops.get('upfirdn2d')}",
    ]
    if not info["cuda_available"]:
        lines.append("                 (no CUDA device: the pure-PyTorch twins are active)")
    for name, version in info["packages"].items():
        lines.append(f"{name:<16} {version or 'not installed'}")
    return "\n".join(lines)
