"""Conversions between uint8 RGB faces and the networks' float images in [-1, 1].

One quantiser, :func:`quantize`, turns generator output into uint8: clamp to [-1, 1], then
``round((x + 1) * 127.5)`` (round half to even), with no per-image rescaling. One
dequantiser, :func:`dequantize`, is its inverse on the 256 levels: ``v / 127.5 - 1``. Every
other function here is one of them plus a change of layout or size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from falco.errors import InputError

__all__ = ["dequantize", "quantize", "quantize_uint8", "to_tensor", "to_uint8"]


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Generator output in about [-1, 1] to uint8, clamped (the package's one uint8 quantiser).

    Shape:
        ``[B, 3, H, W]`` float -> ``[B, 3, H, W]`` uint8, on the same device.
    """
    return images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)


def dequantize(u8: torch.Tensor) -> torch.Tensor:
    """uint8 levels to float32 in [-1, 1]: ``v / 127.5 - 1`` (``dequantize(quantize(x))`` reads ``x`` back).

    Shape:
        any uint8 ``[...]`` -> float32 ``[...]``.
    """
    return u8.float().div(127.5).sub(1.0)


def to_tensor(faces: np.ndarray | torch.Tensor, *, size: int = 256, device: str | torch.device = "cpu") -> torch.Tensor:
    """Aligned RGB uint8 faces to the encoders' input: float in [-1, 1], ``size`` px.

    Shape:
        faces ``[B, H, W, 3]`` uint8 (or one ``[H, W, 3]``) -> ``[B, 3, size, size]``.
    """
    x = torch.as_tensor(np.asarray(faces))
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
        raise InputError(f"faces must be uint8 [B, H, W, 3], got {x.dtype} {list(x.shape)}")
    x = dequantize(x.to(device).permute(0, 3, 1, 2))
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Generator output to uint8 RGB images on the CPU (:func:`quantize`, channels last).

    Shape:
        ``[B, 3, H, W]`` -> ``[B, H, W, 3]``.
    """
    return quantize(images).permute(0, 2, 3, 1).cpu().numpy()


def quantize_uint8(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Generator output -> (uint8 image, the float image a PNG of it reads back as).

    The float is bit-identical to ``to_tensor(to_uint8(images), size=H)``, so a bank fake is
    embedded exactly like its saved image would be.

    Shape:
        ``[B, 3, H, W]`` float -> uint8 ``[B, 3, H, W]``, float32 ``[B, 3, H, W]`` in [-1, 1].
    """
    u8 = quantize(images)
    return u8, dequantize(u8)
