"""FALCO's latent optimisation, batched: real W+ codes + fake neighbours -> anonymized W+ codes.

For each face the W+ code starts as ``[real layers < start | fake layers start..end-1 | real
layers >= end]`` (paper: 3..7 trainable); only the fake's middle layers are optimised, with

    loss = lambda_id * |cos(ArcFace(x_anon), ArcFace(x_real)) - m| + lambda_attr * L1(FaRL tokens)

Adam (lr 0.01) for ``steps`` steps (50), lr x0.8 at 75 % and 90 % of the steps. The losses of a
batch are summed, every face has its own parameters and Adam's state is per element, so a
face's result does not depend on which other faces share its batch. The real faces' ArcFace
embeddings and FaRL tokens are computed once, not at every step.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from falco.errors import InputError
from falco.inversion import render_256
from falco.losses import identity_margin_loss, token_l1_loss

__all__ = ["FalcoParams", "OptimResult", "mix_codes", "optimise"]


@dataclass(frozen=True)
class FalcoParams:
    """FALCO's hyperparameters; the defaults are the paper's (DESIGN.md)."""

    m: float = 0.0
    steps: int = 50
    lr: float = 0.01
    lr_milestones: tuple[float, ...] = (0.75, 0.9)
    lr_gamma: float = 0.8
    lambda_id: float = 10.0
    lambda_attr: float = 0.1
    layers: tuple[int, int] = (3, 8)
    amp: bool = False
    loss_resolution: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.m <= 1.0:
            raise InputError(f"m must be in [0, 1], got {self.m}")
        if self.steps < 0:
            raise InputError(f"steps must be >= 0, got {self.steps}")
        if self.lr <= 0:
            raise InputError(f"lr must be > 0, got {self.lr}")
        start, end = self.layers
        if not 0 <= start < end:
            raise InputError(f"layers must be (start, end) with 0 <= start < end, got {self.layers}")
        if self.loss_resolution is not None and (self.loss_resolution < 4 or self.loss_resolution & (self.loss_resolution - 1)):
            raise InputError(f"loss_resolution must be a power of two >= 4, got {self.loss_resolution}")

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class OptimResult:
    """Output of :func:`optimise`.

    Attributes:
        ws: Anonymized W+ codes. Shape: ``[B, num_ws, w_dim]``.
        losses: Per step and face: ``'id'``, ``'attr'``, ``'total'``. Shape: ``[steps, B]`` each.
    """

    ws: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)

    def final(self, i: int) -> dict[str, float]:
        """The last step's losses of face ``i`` (NaN where no step ran)."""
        return {k: (float(v[-1, i]) if len(v) else float("nan")) for k, v in self.losses.items()}


def mix_codes(ws_real: torch.Tensor, ws_fake: torch.Tensor, layers: tuple[int, int]) -> torch.Tensor:
    """``[real < start | fake start..end-1 | real >= end]``.

    Shape:
        ``ws_real``, ``ws_fake``: ``[B, num_ws, w_dim]`` -> ``[B, num_ws, w_dim]``.
    """
    _check_codes(ws_real, ws_fake, layers)
    start, end = layers
    return torch.cat([ws_real[:, :start], ws_fake[:, start:end], ws_real[:, end:]], dim=1)


def _check_codes(ws_real: torch.Tensor, ws_fake: torch.Tensor, layers: tuple[int, int]) -> None:
    if ws_real.ndim != 3 or ws_real.shape != ws_fake.shape:
        raise InputError(f"ws_real and ws_fake must both be [B, num_ws, w_dim], got "
                         f"{list(ws_real.shape)} and {list(ws_fake.shape)}")
    if layers[1] > ws_real.shape[1]:
        raise InputError(f"layers {tuple(layers)}: the generator has only {ws_real.shape[1]} W+ layers")


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def optimise(
    ws_real: torch.Tensor,
    ws_fake: torch.Tensor,
    x_real: torch.Tensor,
    G: nn.Module,
    id_encoder: nn.Module,
    farl: nn.Module,
    *,
    params: FalcoParams = FalcoParams(),
) -> OptimResult:
    """Optimise the fake neighbours' middle layers so each face keeps its attributes but not its identity.

    Args:
        ws_real: The real faces' W+ codes (e4e inversions).
        ws_fake: The paired fakes' W+ codes.
        x_real: The aligned real crops that were inverted, in [-1, 1] (256 px).
        G: The generator; ``id_encoder``: ArcFace; ``farl``: FaRL encoder with ``tokens(x)``.
        params: Hyperparameters (paper defaults).

    Shape:
        ``ws_*``: ``[B, num_ws, w_dim]``; ``x_real``: ``[B, 3, 256, 256]`` -> ``OptimResult.ws`` like ``ws_real``.
    """
    _check_codes(ws_real, ws_fake, params.layers)
    if x_real.ndim != 4 or x_real.shape[0] != ws_real.shape[0]:
        raise InputError(f"x_real must be [B, 3, H, W] with B = {ws_real.shape[0]}, got {list(x_real.shape)}")
    start, end = params.layers
    device = ws_real.device
    with torch.no_grad(), _autocast(device, params.amp):
        e_real = id_encoder(x_real).float()
        t_real = farl.tokens(x_real).float()
    head, tail = ws_real[:, :start].detach(), ws_real[:, end:].detach()
    w_train = ws_fake[:, start:end].detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([w_train], lr=params.lr)
    milestones = sorted({int(round(f * params.steps)) for f in params.lr_milestones})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=params.lr_gamma)
    history: dict[str, list[torch.Tensor]] = {"id": [], "attr": [], "total": []}
    for _ in range(params.steps):
        ws = torch.cat([head, w_train, tail], dim=1)
        with _autocast(device, params.amp):
            img = render_256(G, ws, max_resolution=params.loss_resolution)
            l_id = identity_margin_loss(id_encoder(img).float(), e_real, params.m, reduction="none")
            l_attr = token_l1_loss(farl.tokens(img).float(), t_real, reduction="none")
        total = params.lambda_id * l_id + params.lambda_attr * l_attr
        opt.zero_grad(set_to_none=True)
        total.sum().backward()
        opt.step()
        sched.step()
        for key, value in (("id", l_id), ("attr", l_attr), ("total", total)):
            history[key].append(value.detach().float().cpu())
    ws = torch.cat([head, w_train.detach(), tail], dim=1)
    losses = {k: torch.stack(v) if v else torch.empty(0, ws.shape[0]) for k, v in history.items()}
    return OptimResult(ws=ws, losses=losses)
