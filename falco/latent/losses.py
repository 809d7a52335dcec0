"""FALCO's identity and attribute losses, batched, with per-sample values.

Definitions (chi0tzp/FALCO ``lib/id_loss.py`` and ``lib/attr_loss.py``, branch ``cvpr23``):

* identity: ``|cos(E_A(x_anon), E_A(x_real)) - m|`` with ArcFace embeddings ``E_A`` and the real
  face's embedding detached. ``m = 0`` (the paper's default) pushes the anonymized face to be
  orthogonal to the real identity. Upstream accumulates over the batch and divides by its size
  (its first release overwrote instead of accumulating; fixed in 2024); we take the same mean.
* attribute: upstream sums ``nn.L1Loss()`` over the token axis, i.e. for each token the mean
  absolute difference over batch and channels, summed over the N = 197 FaRL tokens (class token
  included, taken after the transformer and before ``ln_post``). Per sample this is
  ``sum_t mean_c |T_anon - T_real|``; its mean over the batch is exactly upstream's value.

Both losses take the networks' outputs, not images: :func:`falco.latent.optimise.optimise`
embeds the real faces once and the rendered faces at every step, then calls
:func:`identity_margin_loss` and :func:`token_l1_loss`.

``reduction``: ``'mean'`` (over the batch; the value upstream optimises), ``'sum'``, or ``'none'``
(one value per sample; ``optimise`` records these per face and sums them). With ``'sum'`` each
sample's gradient is independent of the other samples in the batch; ``'mean'`` scales it by 1/B.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F

from falco.errors import InputError

Reduction = Literal["mean", "sum", "none"]
_REDUCTIONS = ("mean", "sum", "none")


def identity_margin_loss(
    e_anon: torch.Tensor,
    e_real: torch.Tensor,
    m: float = 0.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """``|cos(e_anon, e_real) - m|`` per sample, reduced over the batch.

    ``e_real`` is detached. Embeddings need not be normalised (cosine similarity is used; for
    L2-normalised ArcFace outputs it equals upstream's dot product).

    Shape:
        ``e_anon``, ``e_real``: ``[B, D]`` -> ``[]`` (``'mean'``/``'sum'``) or ``[B]`` (``'none'``).
    """
    _check_reduction(reduction)
    _check_margin(m)
    _check_tensor(e_anon, "e_anon", ndim=2, shape_hint="[B, D]")
    _check_tensor(e_real, "e_real", ndim=2, shape_hint="[B, D]")
    if e_anon.shape != e_real.shape:
        raise InputError(f"e_real: expected shape {tuple(e_anon.shape)} (like e_anon), got {tuple(e_real.shape)}")
    cos = F.cosine_similarity(e_anon, e_real.detach().to(e_anon.dtype), dim=-1, eps=1e-8)
    return _reduce((cos - m).abs(), reduction)


def token_l1_loss(
    t_anon: torch.Tensor,
    t_real: torch.Tensor,
    reduction: Reduction = "mean",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per sample ``sum over tokens of mean over channels |t_anon - t_real|``; ``t_real`` detached.

    ``weights`` (optional, one per token, e.g. :func:`region_token_weights`) multiply each token's
    term before the sum; None is the paper's loss (every weight 1).

    Shape:
        ``t_anon``, ``t_real``: ``[B, N, C]``; ``weights``: ``[B, N]`` -> ``[]`` or ``[B]``.
    """
    _check_reduction(reduction)
    _check_tensor(t_anon, "t_anon", ndim=3, shape_hint="[B, N, C]")
    _check_tensor(t_real, "t_real", ndim=3, shape_hint="[B, N, C]")
    if t_anon.shape != t_real.shape:
        raise InputError(f"t_real: expected shape {tuple(t_anon.shape)} (like t_anon), got {tuple(t_real.shape)}")
    per_token = (t_anon - t_real.detach().to(t_anon.dtype)).abs().mean(dim=-1)
    if weights is not None:
        if not isinstance(weights, torch.Tensor) or weights.shape != per_token.shape:
            raise InputError(f"weights: expected shape {tuple(per_token.shape)} (one per token), got "
                             f"{tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__}")
        per_token = per_token * weights.detach().to(per_token.dtype)
    return _reduce(per_token.sum(dim=-1), reduction)


def region_token_weights(masks: torch.Tensor, num_tokens: int, focus: float) -> torch.Tensor:
    """Per-token weights of the attribute loss that favour the face's masked region.

    The tokens are a ViT's class token followed by a ``g x g`` grid of patch tokens over the
    whole (square) image, as FaRL's. Each patch token's share of the mask ``k`` (its mean mask
    value) gives it the weight ``(1 - focus) + focus * k / mean(k)``, so the patch weights still
    average 1 (the loss keeps the paper's scale) and ``focus = 0`` is the paper's uniform loss;
    the class token keeps weight 1. A face whose mask is empty gets uniform weights.

    Args:
        masks: Weights in [0, 1] over each face's image (aligned crop), 1 where attributes matter.
        num_tokens: ``N = 1 + g * g``.
        focus: In [0, 1]; how much of the patch weights follows the mask.

    Shape:
        ``masks``: ``[B, H, W]`` -> ``[B, N]``.
    """
    if not isinstance(masks, torch.Tensor) or masks.ndim != 3:
        raise InputError(f"masks: expected a [B, H, W] tensor, got "
                         f"{tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__}")
    grid = math.isqrt(max(num_tokens - 1, 0))
    if grid < 1 or grid * grid != num_tokens - 1:
        raise InputError(f"num_tokens: expected 1 + g*g (a class token and a square patch grid), got {num_tokens}")
    if isinstance(focus, bool) or not isinstance(focus, (int, float)) or not 0.0 <= focus <= 1.0:
        raise InputError(f"focus: expected a number in [0, 1], got {focus!r}")
    share = F.adaptive_avg_pool2d(masks.float().clamp(0, 1)[:, None], grid).flatten(1)  # [B, g*g]
    mean = share.mean(dim=1, keepdim=True)
    relative = torch.where(mean > 0, share / mean.clamp_min(1e-12), torch.ones_like(share))
    patches = (1.0 - focus) + focus * relative
    return torch.cat([torch.ones_like(patches[:, :1]), patches], dim=1)


# --------------------------------------------------------------------------------------------


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_sample
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


def _check_reduction(reduction: Any) -> None:
    if reduction not in _REDUCTIONS:
        raise InputError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")


def _check_margin(m: Any) -> None:
    if isinstance(m, torch.Tensor) and m.numel() == 1:
        m = m.item()
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or not -1.0 <= m <= 1.0:
        raise InputError(f"m: expected a number in [-1, 1] (a cosine similarity margin), got {m!r}")


def _check_tensor(x: Any, name: str, *, ndim: int, shape_hint: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor {shape_hint}, got {type(x).__name__}")
    if x.ndim != ndim or x.shape[0] < 1:
        raise InputError(f"{name}: expected shape {shape_hint}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{name}: expected a floating point tensor, got dtype {x.dtype}")
