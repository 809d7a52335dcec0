"""Inversion of aligned faces into StyleGAN2's W+ space (e4e encoder, optional refinement).

``ws = E(x) + latent_avg`` as in e4e's ``pSp.forward``; an optional refinement then runs a
few Adam steps on ``ws`` against the input (pixel L2 on the 256-px pooled render, plus the
ArcFace identity term ``1 - cos`` when an identity encoder is given).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from falco.errors import InputError


def render_256(G: nn.Module, ws: torch.Tensor, noise_mode: str = "const", *,
               max_resolution: int | None = None) -> torch.Tensor:
    """Render ``ws`` and pool to 256 px (e4e's ``face_pool``) for losses and previews.

    ``max_resolution`` (e.g. 256) reads the generator's RGB skip output at that resolution
    instead of rendering at full size (faster; an approximation, see ``Generator.synthesis``).

    Shape:
        ws ``[B, num_ws, w_dim]`` -> ``[B, 3, 256, 256]``.
    """
    if max_resolution is None:
        img = G.synthesis(ws, noise_mode=noise_mode)
    else:
        img = G.synthesis(ws, noise_mode=noise_mode, max_resolution=max_resolution)
    return to_256(img)


def to_256(img: torch.Tensor) -> torch.Tensor:
    """Average-pool (larger) or bilinearly resize (smaller) images to 256 px.

    Shape:
        ``[B, 3, H, W]`` -> ``[B, 3, 256, 256]``.
    """
    if img.shape[-1] == 256:
        return img
    if img.shape[-1] > 256:
        return F.adaptive_avg_pool2d(img, (256, 256))
    return F.interpolate(img, size=(256, 256), mode="bilinear", align_corners=False)


def encode(E: nn.Module, x: torch.Tensor, latent_avg: torch.Tensor) -> torch.Tensor:
    """e4e codes plus ``latent_avg``: the W+ code of each face.

    Shape:
        x ``[B, 3, 256, 256]`` in [-1, 1] -> ws ``[B, num_ws, w_dim]``.
    """
    codes = E(x)
    avg = latent_avg.to(codes)
    if avg.ndim == 1:
        avg = avg[None, None]
    elif avg.ndim == 2:
        avg = avg[None]
    return codes + avg


def invert(images: torch.Tensor, E: nn.Module, G: nn.Module, *, latent_avg: torch.Tensor,
           refine_steps: int = 0, refine_lr: float = 0.01, id_encoder: nn.Module | None = None,
           id_weight: float = 0.1, batch_size: int = 8) -> torch.Tensor:
    """Invert aligned faces into W+ codes, batched.

    Args:
        images: Aligned faces in [-1, 1] (see :func:`falco.latent.images.to_tensor`).
        E: e4e encoder returning codes without ``latent_avg``.
        G: Generator whose W+ space the codes live in (used by refinement only).
        latent_avg: e4e's ``latent_avg`` (``[w_dim]`` or ``[num_ws, w_dim]``).
        refine_steps: Adam steps of latent refinement after encoding (0 = off, the default).
        refine_lr: Refinement learning rate.
        id_encoder: ArcFace identity encoder; adds ``id_weight * (1 - cos)`` to refinement.
        id_weight: Weight of the identity term.
        batch_size: Faces per forward pass.

    Shape:
        images ``[B, 3, 256, 256]`` -> ws ``[B, num_ws, w_dim]``.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"images must be [B, 3, H, W], got {list(images.shape)}")
    if refine_steps < 0:
        raise InputError(f"refine_steps must be >= 0, got {refine_steps}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size]
        with torch.no_grad():
            ws = encode(E, x, latent_avg)
        if refine_steps:
            ws = refine(x, ws, G, steps=refine_steps, lr=refine_lr, id_encoder=id_encoder, id_weight=id_weight)
        out.append(ws.detach())
    return torch.cat(out)


def refine(x: torch.Tensor, ws: torch.Tensor, G: nn.Module, *, steps: int, lr: float = 0.01,
           id_encoder: nn.Module | None = None, id_weight: float = 0.1) -> torch.Tensor:
    """Optimise W+ codes against their faces (per-face losses summed, so faces stay independent).

    Shape:
        x ``[B, 3, 256, 256]``, ws ``[B, num_ws, w_dim]`` -> refined ws.
    """
    ws = ws.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([ws], lr=lr)
    target_id = id_encoder(x).detach() if id_encoder is not None else None
    for _ in range(steps):
        img = render_256(G, ws)
        loss = (img - x).pow(2).flatten(1).mean(1)
        if target_id is not None:
            loss = loss + id_weight * (1 - F.cosine_similarity(id_encoder(img), target_id, dim=1))
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
    return ws.detach()
