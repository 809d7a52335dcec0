"""e4e encoder (Tov et al., "Designing an Encoder for StyleGAN Image Manipulation", 2021).

:class:`Encoder4Editing` has the exact state-dict layout of omertov/encoder4editing
``models/encoders/psp_encoders.py``: ``input_layer``, ``body.N`` (IR-SE units), ``styles.N``
(:class:`GradualStyleBlock`: ``convs.{0,2,..}`` + rosinality ``EqualLinear`` as ``linear``),
``latlayer1``, ``latlayer2``. A real ``e4e_ffhq_encode.pt`` (``state_dict`` with ``encoder.*`` and
``decoder.*``, ``latent_avg``, ``opts``) loads with :func:`load_e4e`; its ``decoder.*`` part is
read by ``falco.models.load_generator``.

The encoder predicts one base code ``w0`` from the coarsest features and adds a delta per
layer: ``codes[:, 0] = w0``, ``codes[:, i] = w0 + styles[i](features_i)``. ``forward`` returns
these codes *without* ``latent_avg``; the W+ code of a face is ``ws = E(x) + latent_avg``
(e4e's ``pSp.forward`` with ``start_from_latent_avg``), which :meth:`Encoder4Editing.encode` does.

Progressive stage: upstream's encoder is built with ``progressive_stage =
ProgressiveStage.Inference`` (18), i.e. every delta is used, and the released checkpoint is
used that way. We store it as an int, ``progressive_stage = n_styles`` by default (all deltas);
a smaller value ``s`` keeps only the deltas of layers ``1..s`` (training-time behaviour).

Generalisations (the defaults reproduce upstream exactly): depth 50/100/152 or 4 custom stage
lengths, custom stage widths, ``w_dim`` and ``n_styles``, so tests and the tiny model set can
build small encoders with the same key names. The FPN taps are the ends of stages 2, 3, 4 —
``body`` indices 6, 20, 23 at depth 50, exactly upstream's hard-coded indices (which do not fit
depths 100/152, where upstream cannot run).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from falco.errors import CheckpointError, InputError
from falco.models import _checkpoint as ckpt_io
from falco.models.irse import (DEFAULT_WIDTHS, SE_REDUCTION, TINY_UNITS, TINY_WIDTHS, Mode, add_trunk, infer_body,
                               stage_ends, upsample_add)

#: e4e's input resolution.
INPUT_SIZE = 256
COARSE_IND = 3
MIDDLE_IND = 7


def n_styles_for(stylegan_size: int) -> int:
    """Number of W+ codes of a StyleGAN2 of resolution ``stylegan_size`` (18 at 1024)."""
    return int(math.log2(stylegan_size)) * 2 - 2


class EqualLinear(nn.Module):
    """rosinality's ``EqualLinear`` without activation: weight scaled by ``lr_mul / sqrt(in_dim)``.

    Shape:
        ``[B, in_dim]`` -> ``[B, out_dim]``.
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0, lr_mul: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        return F.linear(x, self.weight * self.scale, bias=bias)


class GradualStyleBlock(nn.Module):
    """Stride-2 convs (LeakyReLU 0.01) down to 1x1, then an ``EqualLinear``: one W code per map.

    Args:
        in_c: Channels of the feature map.
        out_c: Width of the code (``w_dim``).
        spatial: Side of the feature map at a 256-px input (16, 32, 64): ``log2(spatial)`` convs.

    Shape:
        ``[B, in_c, spatial, spatial]`` -> ``[B, out_c]``.
    """

    def __init__(self, in_c: int, out_c: int, spatial: int) -> None:
        super().__init__()
        self.out_c = out_c
        self.spatial = spatial
        num_pools = int(math.log2(spatial))
        modules: list[nn.Module] = [nn.Conv2d(in_c, out_c, kernel_size=3, stride=2, padding=1), nn.LeakyReLU()]
        for _ in range(num_pools - 1):
            modules += [nn.Conv2d(out_c, out_c, kernel_size=3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*modules)
        self.linear = EqualLinear(out_c, out_c, lr_mul=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x)
        assert x.shape[-2:] == (1, 1), f"GradualStyleBlock left a {tuple(x.shape[-2:])} map (input not 256 px?)"
        return self.linear(x.flatten(1))


class Encoder4Editing(nn.Module):
    """e4e encoder: IR-SE trunk, 3-level FPN, one :class:`GradualStyleBlock` per W+ layer.

    Args:
        num_layers: 50 (e4e), 100, 152, or 4 stage lengths (tiny test nets).
        mode: ``'ir_se'`` (e4e) or ``'ir'``.
        n_styles: Number of W+ codes (``n_styles_for(stylegan_size)``; 18 at 1024 px).
        w_dim: Width of each code (512).
        widths: Output channels of the 4 trunk stages; the FPN works at ``widths[3]``.
        se_reduction: Squeeze-excitation reduction (16).
        progressive_stage: Number of deltas used (``None`` = all, upstream's ``Inference``).

    Shape:
        ``[B, 3, 256, 256]`` in [-1, 1] -> codes ``[B, n_styles, w_dim]`` (without ``latent_avg``).
    """

    def __init__(
        self,
        num_layers: int | Sequence[int] = 50,
        mode: Mode = "ir_se",
        *,
        n_styles: int = 18,
        w_dim: int = 512,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        se_reduction: int = SE_REDUCTION,
        progressive_stage: int | None = None,
    ) -> None:
        super().__init__()
        if n_styles < 1:
            raise InputError(f"n_styles must be >= 1, got {n_styles}")
        add_trunk(self, num_layers, mode, widths, se_reduction)
        self.n_styles = self.style_count = int(n_styles)
        self.w_dim = int(w_dim)
        self.coarse_ind = COARSE_IND
        self.middle_ind = MIDDLE_IND
        _, self._c1, self._c2, self._c3 = stage_ends(self.units)
        fpn = self.widths[3]
        self.styles = nn.ModuleList()
        for i in range(self.n_styles):
            spatial = 16 if i < self.coarse_ind else 32 if i < self.middle_ind else 64
            self.styles.append(GradualStyleBlock(fpn, self.w_dim, spatial))
        self.latlayer1 = nn.Conv2d(self.widths[2], fpn, kernel_size=1, stride=1, padding=0)
        self.latlayer2 = nn.Conv2d(self.widths[1], fpn, kernel_size=1, stride=1, padding=0)
        self.progressive_stage = self.n_styles if progressive_stage is None else int(progressive_stage)
        # e4e's latent_avg, filled by load_e4e; not part of the encoder's state dict.
        self.register_buffer("latent_avg", torch.zeros(self.n_styles, self.w_dim), persistent=False)

    @property
    def num_ws(self) -> int:
        """StyleGAN-native alias of ``n_styles``."""
        return self.n_styles

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
            shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(
                f"e4e input must be [B, 3, {INPUT_SIZE}, {INPUT_SIZE}] in [-1, 1], got {shape} "
                "(Encoder4Editing.encode resizes other sizes)"
            )
        x = self.input_layer(x)
        c1 = c2 = c3 = x
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i == self._c1:
                c1 = x
            elif i == self._c2:
                c2 = x
            elif i == self._c3:
                c3 = x

        w0 = self.styles[0](c3)
        codes = [w0]
        features = c3
        last = min(self.progressive_stage + 1, self.n_styles)  # upstream: range(1, min(stage + 1, style_count))
        for i in range(1, last):
            if i == self.coarse_ind:
                p2 = upsample_add(c3, self.latlayer1(c2))  # FPN middle features
                features = p2
            elif i == self.middle_ind:
                features = upsample_add(p2, self.latlayer2(c1))  # FPN fine features
            codes.append(w0 + self.styles[i](features))
        codes += [w0] * (self.n_styles - len(codes))
        return torch.stack(codes, dim=1)

    def encode(self, x: torch.Tensor, latent_avg: torch.Tensor | None = None) -> torch.Tensor:
        """W+ codes of faces: ``E(x) + latent_avg`` (faces of other sizes are resized to 256 first).

        Args:
            x: Aligned faces in [-1, 1]; a size other than 256 px is resized (bilinear,
                antialiased when shrinking), as e4e's ``Resize((256, 256))``.
            latent_avg: ``[w_dim]``, ``[1, w_dim]`` or ``[n_styles, w_dim]``; defaults to the
                ``latent_avg`` read by :func:`load_e4e`.

        Shape:
            ``[B, 3, H, W]`` -> ws ``[B, n_styles, w_dim]``.
        """
        if isinstance(x, torch.Tensor) and x.ndim == 4 and tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                              antialias=bool(x.shape[-1] > INPUT_SIZE or x.shape[-2] > INPUT_SIZE))
        avg = self.latent_avg if latent_avg is None else latent_avg
        return self(x) + _expand_latent_avg(avg, self.n_styles, self.w_dim, "latent_avg").to(x)


def _expand_latent_avg(avg: Any, n_styles: int, w_dim: int, source: str) -> torch.Tensor:
    """``latent_avg`` as ``[n_styles, w_dim]`` from ``[w_dim]``, ``[1, w_dim]`` or ``[n_styles, w_dim]``."""
    if not isinstance(avg, torch.Tensor):
        raise InputError(f"{source}: latent_avg must be a tensor, got {type(avg).__name__}")
    t = avg.float()
    if t.ndim == 1 and t.shape[0] == w_dim:
        t = t[None]
    if t.ndim == 2 and t.shape[1] == w_dim and t.shape[0] in (1, n_styles):
        return t.expand(n_styles, w_dim).clone() if t.shape[0] == 1 else t
    raise InputError(
        f"{source}: latent_avg has shape {list(avg.shape)}, expected [{w_dim}], [1, {w_dim}] or [{n_styles}, {w_dim}]"
    )


# ---------------------------------------------------------------------------------------------
# Loading

_STYLE_RE = re.compile(r"styles\.(\d+)\.linear\.weight")
_CONV_RE = re.compile(r"styles\.0\.convs\.(\d+)\.weight")


def infer_e4e_kwargs(state: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """Constructor kwargs of :class:`Encoder4Editing` read from an (unprefixed) encoder state dict."""
    cfg = infer_body(state, source, prefix="encoder.")
    styles = sorted(int(m.group(1)) for k in state if (m := _STYLE_RE.fullmatch(k)))
    if not styles:
        raise CheckpointError(source, "no e4e style blocks (expected encoder.styles.N.linear.weight)")
    if styles != list(range(len(styles))):
        raise CheckpointError(source, f"encoder.styles.N are not numbered 0..{len(styles) - 1}")
    if "latlayer1.weight" not in state or "latlayer2.weight" not in state:
        raise CheckpointError(
            source, "no FPN lateral layers encoder.latlayer1/latlayer2: not e4e's Encoder4Editing "
            "(a single-code pSp/e4e encoder such as BackboneEncoderUsingLastLayerIntoW is not supported)"
        )
    w_dim = int(ckpt_io.tensor(state, "styles.0.linear.weight", source, ndim=2, prefix="encoder.").shape[0])
    return {"num_layers": cfg.units, "mode": cfg.mode, "n_styles": len(styles), "w_dim": w_dim,
            "widths": cfg.widths, "se_reduction": cfg.se_reduction}


def load_e4e(source: ckpt_io.Source) -> tuple[Encoder4Editing, torch.Tensor]:
    """Load the e4e encoder and its ``latent_avg`` from ``e4e_ffhq_encode.pt`` (or its loaded dict).

    The checkpoint is read with ``torch.load(weights_only=True)``: e4e saves ``opts`` as a plain
    dict, so this works; a file whose ``opts`` is a pickled object (``argparse.Namespace``) is
    refused with a CheckpointError that says how to convert it. Encoder keys are taken from
    ``ckpt['state_dict']`` (or the top level) under ``encoder.``; depth, widths, ``n_styles``
    and ``w_dim`` come from the tensor shapes.

    Args:
        source: Path to the checkpoint or the loaded checkpoint dict.

    Returns:
        ``(E, latent_avg)``: the encoder in eval mode (``E.latent_avg`` is set too) and
        ``latent_avg`` as ``[n_styles, w_dim]`` (a ``[w_dim]`` or ``[1, w_dim]`` one is repeated).
        ``ws = E(x) + latent_avg``.

    Raises:
        CheckpointError: unreadable file, no ``encoder.*`` keys, no ``latent_avg``, missing or
            unexpected keys, or tensors of the wrong shape.
    """
    name = ckpt_io.source_name(source)
    ckpt = ckpt_io.load_checkpoint(source)
    sd = ckpt_io.unwrap_state_dict(ckpt, source)
    state = ckpt_io.strip_prefix(sd, "encoder.")
    if not state:
        keys = ", ".join(str(k) for k in list(sd)[:5]) or "nothing"
        raise CheckpointError(
            name, f"no e4e encoder in this checkpoint: expected 'encoder.*' keys (as in e4e_ffhq_encode.pt), found: {keys}"
        )
    opts = ckpt.get("opts") if isinstance(ckpt, Mapping) else None
    encoder_type = opts.get("encoder_type") if isinstance(opts, Mapping) else None
    if encoder_type is not None and encoder_type != "Encoder4Editing":
        # pSp's GradualStyleEncoder has the same keys but predicts each code independently.
        raise CheckpointError(
            name, f"opts['encoder_type'] is {encoder_type!r}: this is not an e4e (Encoder4Editing) checkpoint "
            "(a pSp GradualStyleEncoder has the same tensors but different semantics)"
        )
    kwargs = infer_e4e_kwargs(state, name)
    E = ckpt_io.build_empty(lambda: Encoder4Editing(**kwargs))
    ckpt_io.load_checked(E, state, name, what="e4e encoder", prefix="encoder.")
    avg = ckpt.get("latent_avg") if isinstance(ckpt, Mapping) else None
    if avg is None:
        avg = sd.get("latent_avg")
    if avg is None:
        raise CheckpointError(
            name, "no 'latent_avg' in the checkpoint (e4e checkpoints store it; ws = E(x) + latent_avg needs it)"
        )
    try:
        latent_avg = _expand_latent_avg(avg, E.n_styles, E.w_dim, name)
    except InputError as exc:
        raise CheckpointError(name, str(exc).split(": ", 1)[-1]) from None
    E.latent_avg.copy_(latent_avg)
    return E.eval(), latent_avg.clone()


def tiny_e4e(*, n_styles: int = 8, w_dim: int = 64, mode: Mode = "ir_se", seed: int | None = 0) -> Encoder4Editing:
    """A tiny random e4e (1 IR-SE unit per stage, widths 16-128) with the real key layout.

    Pair it with a generator of ``num_ws == n_styles`` and ``w_dim`` (e.g. 32 px -> 8 codes).
    Write it as e4e does::

        torch.save({"state_dict": {**{"encoder." + k: v for k, v in E.state_dict().items()},
                                   **{"decoder." + k: v for k, v in G_rosinality_sd.items()}},
                    "latent_avg": w_avg.repeat(n_styles, 1), "opts": {"stylegan_size": 32, ...}}, path)
    """
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        E = Encoder4Editing(TINY_UNITS, mode, n_styles=n_styles, w_dim=w_dim, widths=TINY_WIDTHS)
    return E.eval()
