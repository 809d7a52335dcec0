"""FALCO's latent optimisation, batched: real W+ codes + fake neighbours -> anonymized W+ codes.

For each face the W+ code starts as ``[real layers < start | fake layers start..end-1 | real
layers >= end]`` (paper: 3..7 trainable); only the fake's middle layers are optimised, with

    loss = lambda_id * |cos(ArcFace(x_anon), ArcFace(x_real)) - m| + lambda_attr * L1(FaRL tokens)

Adam (lr 0.01) for ``steps`` steps (50), lr x0.8 at 75 % and 90 % of the steps. The losses of a
batch are summed, every face has its own parameter tensor (so its own Adam state and step count)
and, under fp16, its own loss scale, so a face's result does not depend on which other faces share
its batch. The real faces' ArcFace embeddings and FaRL tokens are computed once, not at every step.

fp16 skips steps per face: a face whose gradient overflows (non-finite after unscaling) does not
step (its code, Adam moments and Adam step count stay as they were) and its loss scale halves;
the other faces step as if it were not there. ``OptimResult.skipped`` counts each face's skipped
steps; more than :data:`MAX_SKIPPED_FRACTION` of the steps means the face was not optimised.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from falco.errors import InputError, RunAbortedError
from falco.latent.invert import to_256
from falco.latent.losses import identity_margin_loss, region_token_weights, token_l1_loss
from falco.models.stylegan2 import SynthesisPrefix

__all__ = ["MAX_SKIPPED_FRACTION", "FalcoParams", "OptimResult", "mix_codes", "optimise", "too_many_skipped"]

StepCallback = Callable[[int, int], None]


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: A face with more fp16 steps skipped (non-finite gradients) than this share of ``steps`` counts
#: as not optimised (:func:`too_many_skipped`); FalcoAnonymizer re-does it alone in fp32.
MAX_SKIPPED_FRACTION = 0.5


@dataclass(frozen=True)
class FalcoParams:
    """FALCO's hyperparameters; the defaults are the paper's (DESIGN.md).

    ``region_focus`` acts only under ``--keep``/``--change`` (an extension, not in the paper): the
    share of the attribute loss's patch-token weights that follows the parts taken from the photo
    (:func:`falco.latent.losses.region_token_weights`; 0 = the paper's uniform loss).

    The speed switches below change how the loop runs, not what it optimises; each one's
    accuracy against fp32 is measured by ``scripts/bench_anonymize.py``:

    - ``amp``: ``'bf16'`` or ``'fp16'`` autocast for ArcFace and FaRL and for the generator's
      top ``num_fp16_res`` resolutions (NVIDIA's fp16 layers, clamped to +-256; 0 keeps the
      generator in fp32). fp16 scales each face's loss by its own dynamic scale and skips the
      step of a face whose gradient overflows, for that face only (see the module's docstring).
    - ``loss_resolution``: compute the losses on the generator's RGB skip output at this
      resolution (e.g. 256) instead of rendering at full size (an approximation).
    - ``fused_modconv``: grouped per-face convolutions (True) or dense convolutions on scaled
      activations (False; usually faster at large batch on GPUs).
    - ``channels_last``: channels-last tensors in the generator and the loss networks
      (implies ``fused_modconv=False``).
    - ``cache_frozen``: compute the generator layers that read only frozen codes (the 4x4 and
      8x8 convolutions for layers 3..7) once instead of at every step. Exact.
    - ``compile``: ``torch.compile`` the render-and-loss function with this backend
      (``'inductor'``; True means that). The first batch of each shape pays for the compilation.
    """

    m: float = 0.0
    steps: int = 50
    lr: float = 0.01
    lr_milestones: tuple[float, ...] = (0.75, 0.9)
    lr_gamma: float = 0.8
    lambda_id: float = 10.0
    lambda_attr: float = 0.1
    layers: tuple[int, int] = (3, 8)
    region_focus: float = 0.75
    amp: str | None = None
    num_fp16_res: int = 4
    loss_resolution: int | None = None
    fused_modconv: bool = True
    channels_last: bool = False
    cache_frozen: bool = True
    compile: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.amp, bool):  # manifests written before amp had a dtype: True meant bf16
            object.__setattr__(self, "amp", "bf16" if self.amp else None)
        if isinstance(self.compile, bool):
            object.__setattr__(self, "compile", "inductor" if self.compile else None)
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise InputError(f"--amp must be one of off, {', '.join(AMP_DTYPES)}, got {self.amp!r}")
        if self.num_fp16_res < 0:
            raise InputError(f"num_fp16_res must be >= 0, got {self.num_fp16_res}")
        if not 0.0 <= self.m <= 1.0:
            raise InputError(f"m must be in [0, 1], got {self.m}")
        if self.steps < 0:
            raise InputError(f"steps must be >= 0, got {self.steps}")
        if isinstance(self.region_focus, bool) or not 0.0 <= self.region_focus <= 1.0:
            raise InputError(f"region_focus must be in [0, 1], got {self.region_focus!r}")
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
        skipped: Per face, the steps skipped because its fp16 gradient overflowed (zeros unless
            ``amp='fp16'``). Shape: ``[B]`` int64.
    """

    ws: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))

    def final(self, i: int) -> dict[str, float]:
        """Face ``i``'s losses at the last step, i.e. of the code *before* the last update (NaN where no step ran)."""
        return {k: (float(v[-1, i]) if len(v) else float("nan")) for k, v in self.losses.items()}


def too_many_skipped(skipped: int, steps: int) -> bool:
    """Whether a face with ``skipped`` of ``steps`` fp16 steps skipped was not really optimised."""
    return skipped > MAX_SKIPPED_FRACTION * steps


class _FaceScaler:
    """Dynamic fp16 loss scaling with one scale per face (``torch.amp.GradScaler``'s rule, per face).

    Each face's loss is multiplied by its own scale (a power of two, initially ``2**10`` so that
    no early step is skipped); its gradient rows are divided by it again (exact). A face whose
    gradient is non-finite has its scale halved and its clean-step count reset; after
    ``growth_interval`` clean steps in a row its scale doubles. One scale per face, not per
    batch, keeps a face's gradients independent of the other faces' overflows.
    """

    def __init__(self, n: int, device: torch.device, init_scale: float = 2.0**10, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000) -> None:
        self.scale = torch.full((n,), init_scale, dtype=torch.float32, device=device)
        self.clean = torch.zeros(n, dtype=torch.int64, device=device)
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval

    def unscale_(self, rows: list[torch.Tensor]) -> torch.Tensor:
        """Divide each face's gradient by its scale in place; return which faces' gradients are finite.

        Shape: ``rows``: B tensors ``[layers, w_dim]`` -> ``[B]`` bool.
        """
        inv = self.scale.double().reciprocal().float()  # as GradScaler: exact for powers of two
        finite = []
        for i, row in enumerate(rows):
            if row.grad is None:  # the face's loss does not reach its code (not the case in FALCO)
                finite.append(torch.ones((), dtype=torch.bool, device=inv.device))
                continue
            row.grad.mul_(inv[i])
            finite.append(torch.isfinite(row.grad).all())
        return torch.stack(finite)

    def update(self, finite: torch.Tensor) -> None:
        """Back off the scales of the faces that overflowed, grow those clean for ``growth_interval`` steps."""
        self.clean = torch.where(finite, self.clean + 1, torch.zeros_like(self.clean))
        grow = self.clean >= self.growth_interval
        self.scale = torch.where(finite, self.scale, self.scale * self.backoff_factor)
        self.scale = torch.where(grow, self.scale * self.growth_factor, self.scale)
        self.clean = torch.where(grow, torch.zeros_like(self.clean), self.clean)


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


def _autocast(device: torch.device, amp: str | None):
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def _to_channels_last(x: torch.Tensor, enabled: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if enabled else x


def _losses(G: nn.Module, id_encoder: nn.Module, farl: nn.Module, ws: torch.Tensor, prefix: SynthesisPrefix | None,
            e_real: torch.Tensor, t_real: torch.Tensor, params: FalcoParams,
            attr_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``ws`` and return the per-face identity and attribute losses (fp32)."""
    # the generator's precision is per resolution (num_fp16_res), not the loss networks' autocast
    img = G.synthesis(ws, noise_mode="const", max_resolution=params.loss_resolution, prefix=prefix,
                      fused_modconv=params.fused_modconv, channels_last=params.channels_last,
                      num_fp16_res=params.num_fp16_res if params.amp else 0,
                      fp16_dtype=AMP_DTYPES[params.amp or "fp16"])
    img = _to_channels_last(to_256(img), params.channels_last)
    with _autocast(ws.device, params.amp):
        l_id = identity_margin_loss(id_encoder(img).float(), e_real, params.m, reduction="none")
        l_attr = token_l1_loss(farl.tokens(img).float(), t_real, reduction="none", weights=attr_weights)
    return l_id, l_attr


_compiled_losses: dict[str, object] = {}


def _loss_fn(params: FalcoParams):
    if params.compile is None:
        return _losses
    if params.compile not in _compiled_losses:
        _compiled_losses[params.compile] = torch.compile(_losses, backend=params.compile, dynamic=False)
    return _compiled_losses[params.compile]


def optimise(
    ws_real: torch.Tensor,
    ws_fake: torch.Tensor,
    x_real: torch.Tensor,
    G: nn.Module,
    id_encoder: nn.Module,
    farl: nn.Module,
    *,
    params: FalcoParams = FalcoParams(),
    on_step: StepCallback | None = None,
    attr_masks: torch.Tensor | None = None,
) -> OptimResult:
    """Optimise the fake neighbours' middle layers so each face keeps its attributes but not its identity.

    Args:
        ws_real: The real faces' W+ codes (e4e inversions).
        ws_fake: The paired fakes' W+ codes.
        x_real: The aligned real crops that were inverted, in [-1, 1] (256 px).
        G: The generator; ``id_encoder``: ArcFace; ``farl``: FaRL encoder with ``tokens(x)``.
        params: Hyperparameters (paper defaults) and speed switches.
        on_step: Called as ``on_step(step, steps)`` after each step (``step`` 1-based, ``steps`` =
            ``params.steps``), once the update is applied and the step's losses recorded, e.g. for a
            progress bar.
        attr_masks: Optional weights in [0, 1] over each aligned crop, 1 where the face's attributes
            matter most (``--keep``/``--change``: the parts taken from the photo); the attribute
            loss then weighs FaRL's patch tokens by them (:func:`falco.latent.losses.region_token_weights`
            with ``params.region_focus``). None is the paper's loss.

    Shape:
        ``ws_*``: ``[B, num_ws, w_dim]``; ``x_real``: ``[B, 3, 256, 256]`` -> ``OptimResult.ws`` like ``ws_real``.
    """
    _check_codes(ws_real, ws_fake, params.layers)
    if x_real.ndim != 4 or x_real.shape[0] != ws_real.shape[0]:
        raise InputError(f"x_real must be [B, 3, H, W] with B = {ws_real.shape[0]}, got {list(x_real.shape)}")
    start, end = params.layers
    device = ws_real.device
    with torch.no_grad(), _autocast(device, params.amp):
        x_in = _to_channels_last(x_real, params.channels_last)
        e_real = id_encoder(x_in).float()
        t_real = farl.tokens(x_in).float()
    weights = None
    if attr_masks is not None and params.region_focus > 0:
        if attr_masks.ndim != 3 or attr_masks.shape[0] != ws_real.shape[0]:
            raise InputError(f"attr_masks must be [B, H, W] with B = {ws_real.shape[0]}, got {list(attr_masks.shape)}")
        weights = region_token_weights(attr_masks.to(device), t_real.shape[1], params.region_focus)
    focus = {} if weights is None else {"attr_weights": weights}
    head, tail = ws_real[:, :start].detach(), ws_real[:, end:].detach()
    # one leaf tensor per face: Adam keeps its moments *and its step count* per tensor, so a face
    # whose fp16 step is skipped (grad None) leaves the others' bias correction untouched
    rows = [w.detach().clone().requires_grad_(True) for w in ws_fake[:, start:end].unbind(0)]
    prefix = None
    if params.cache_frozen and start > 0 and hasattr(G, "frozen_prefix"):
        with torch.no_grad():
            prefix = G.frozen_prefix(ws_real, start, channels_last=params.channels_last)
    opt = torch.optim.Adam(rows, lr=params.lr)
    # the reference's rule: int(0.75 * steps), int(0.9 * steps) (37 and 45 of 50; round() would give 38)
    milestones = sorted({int(f * params.steps) for f in params.lr_milestones})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=params.lr_gamma)
    # fp16 gradients would underflow unscaled: one dynamic loss scale per face (_FaceScaler)
    scaler = _FaceScaler(len(rows), device) if params.amp == "fp16" else None
    skipped = torch.zeros(len(rows), dtype=torch.int64)
    losses_fn = _loss_fn(params)
    history: dict[str, list[torch.Tensor]] = {"id": [], "attr": [], "total": []}
    for step in range(params.steps):
        ws = torch.cat([head, torch.stack(rows), tail], dim=1)
        try:
            l_id, l_attr = losses_fn(G, id_encoder, farl, ws, prefix, e_real, t_real, params, **focus)
        except Exception as exc:
            if params.compile is not None and type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise RunAbortedError(f"--compile: torch.compile (backend {params.compile!r}) failed: {first}; "
                                      "run without --compile") from exc
            raise
        total = params.lambda_id * l_id + params.lambda_attr * l_attr
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            total.sum().backward()
        else:
            (total * scaler.scale).sum().backward()
            finite = scaler.unscale_(rows)
            scaler.update(finite)
            bad = (~finite).cpu()
            skipped += bad
            for i in bad.nonzero().flatten().tolist():
                rows[i].grad = None  # Adam leaves a parameter without a gradient alone: no step, no state change
        opt.step()
        sched.step()
        for key, value in (("id", l_id), ("attr", l_attr), ("total", total)):
            history[key].append(value.detach().float().cpu())
        if on_step is not None:
            on_step(step + 1, params.steps)
    ws = torch.cat([head, torch.stack(rows).detach(), tail], dim=1)
    losses = {k: torch.stack(v) if v else torch.empty(0, ws.shape[0]) for k, v in history.items()}
    return OptimResult(ws=ws, losses=losses, skipped=skipped)
