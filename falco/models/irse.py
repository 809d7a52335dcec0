"""IR / IR-SE residual building blocks shared by ArcFace (TreB1eN) and the pSp/e4e encoders.

Module and attribute names follow TreB1eN's ``InsightFace_Pytorch/model.py`` as vendored by
pSp and e4e (``models/encoders/helpers.py``), so state dicts load unchanged:
``input_layer.{0,1,2}``, ``body.N.shortcut_layer.{0,1}``, ``body.N.res_layer.{0..5}`` with
``res_layer.5.fc1`` / ``fc2`` the squeeze-excitation convolutions.

The network is four stages; the first unit of each stage has stride 2. Besides the standard
depths (50, 100, 152) the stage lengths and widths are parameters, so tests can build tiny
networks with the same key names, and :func:`infer_body` recovers them from a state dict.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from falco.errors import CheckpointError, InputError

Mode = Literal["ir", "ir_se"]

#: Units per stage of the standard depths (``get_blocks`` upstream).
STAGE_UNITS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    152: (3, 8, 36, 3),
}
#: Output channels of the four stages (the stem has ``widths[0]`` channels).
DEFAULT_WIDTHS: tuple[int, int, int, int] = (64, 128, 256, 512)
#: A tiny configuration with the real key layout: one unit per stage, narrow channels.
TINY_UNITS: tuple[int, int, int, int] = (1, 1, 1, 1)
TINY_WIDTHS: tuple[int, int, int, int] = (16, 32, 64, 128)
SE_REDUCTION = 16


class Bottleneck(NamedTuple):
    """One residual unit: input channels, output channels (``depth``), stride."""

    in_channel: int
    depth: int
    stride: int


def stage_units(num_layers: int | Sequence[int]) -> tuple[int, ...]:
    """Units per stage for a standard depth (50/100/152) or an explicit 4-tuple."""
    if isinstance(num_layers, int):
        if num_layers not in STAGE_UNITS:
            raise InputError(f"num_layers must be 50, 100 or 152 (or 4 stage lengths), got {num_layers}")
        return STAGE_UNITS[num_layers]
    units = tuple(int(u) for u in num_layers)
    if len(units) != 4 or min(units) < 1:
        raise InputError(f"num_layers as stage lengths must be 4 positive ints, got {list(num_layers)}")
    return units


def depth_name(units: Sequence[int]) -> int | tuple[int, ...]:
    """The standard depth whose stage lengths are ``units``, else ``units`` itself."""
    for depth, spec in STAGE_UNITS.items():
        if tuple(units) == spec:
            return depth
    return tuple(units)


def get_blocks(num_layers: int | Sequence[int] = 50, widths: Sequence[int] = DEFAULT_WIDTHS) -> list[list[Bottleneck]]:
    """The per-stage unit specs (upstream ``get_blocks``), for any depth and widths."""
    units = stage_units(num_layers)
    if len(widths) != 4:
        raise InputError(f"widths must have 4 entries, got {list(widths)}")
    blocks = []
    in_channel = widths[0]
    for n, depth in zip(units, widths, strict=True):
        blocks.append([Bottleneck(in_channel, depth, 2)] + [Bottleneck(depth, depth, 1) for _ in range(n - 1)])
        in_channel = depth
    return blocks


class SEModule(nn.Module):
    """Squeeze-and-excitation: channel gates from globally pooled features.

    Shape:
        ``[B, C, H, W]`` -> ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        if channels // reduction < 1:
            raise InputError(f"SEModule: channels ({channels}) must be >= reduction ({reduction})")
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * s


def _shortcut(in_channel: int, depth: int, stride: int) -> nn.Module:
    if in_channel == depth:
        return nn.MaxPool2d(1, stride)
    return nn.Sequential(nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False), nn.BatchNorm2d(depth))


def _residual(in_channel: int, depth: int, stride: int, se_reduction: int | None = None) -> nn.Sequential:
    """The residual branch (``res_layer.*``): BN, 3x3 conv, PReLU, 3x3 conv (stride), BN, and an SE gate
    when ``se_reduction`` is given."""
    layers = [
        nn.BatchNorm2d(in_channel),
        nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
        nn.PReLU(depth),
        nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
        nn.BatchNorm2d(depth),
    ]
    if se_reduction is not None:
        layers.append(SEModule(depth, se_reduction))
    return nn.Sequential(*layers)


class bottleneck_IR(nn.Module):
    """Improved residual unit: BN-conv-PReLU-conv(stride)-BN plus a (projected) shortcut.

    Shape:
        ``[B, in_channel, H, W]`` -> ``[B, depth, H / stride, W / stride]``.
    """

    def __init__(self, in_channel: int, depth: int, stride: int) -> None:
        super().__init__()
        self.shortcut_layer = _shortcut(in_channel, depth, stride)
        self.res_layer = _residual(in_channel, depth, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class bottleneck_IR_SE(nn.Module):
    """:class:`bottleneck_IR` with a squeeze-excitation gate at the end of the residual branch.

    Shape:
        ``[B, in_channel, H, W]`` -> ``[B, depth, H / stride, W / stride]``.
    """

    def __init__(self, in_channel: int, depth: int, stride: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        self.shortcut_layer = _shortcut(in_channel, depth, stride)
        self.res_layer = _residual(in_channel, depth, stride, se_reduction=reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def make_input_layer(width: int = 64) -> nn.Sequential:
    """The stem: 3x3 conv (no bias), BN, PReLU (``input_layer.{0,1,2}``)."""
    return nn.Sequential(nn.Conv2d(3, width, (3, 3), 1, 1, bias=False), nn.BatchNorm2d(width), nn.PReLU(width))


def make_body(
    num_layers: int | Sequence[int] = 50,
    mode: Mode = "ir_se",
    widths: Sequence[int] = DEFAULT_WIDTHS,
    se_reduction: int = SE_REDUCTION,
) -> nn.Sequential:
    """All residual units of the four stages, flat, as ``body.N``."""
    if mode not in ("ir", "ir_se"):
        raise InputError(f"mode must be 'ir' or 'ir_se', got {mode!r}")
    modules: list[nn.Module] = []
    for block in get_blocks(num_layers, widths):
        for b in block:
            if mode == "ir_se":
                modules.append(bottleneck_IR_SE(b.in_channel, b.depth, b.stride, se_reduction))
            else:
                modules.append(bottleneck_IR(b.in_channel, b.depth, b.stride))
    return nn.Sequential(*modules)


def add_trunk(net: nn.Module, num_layers: int | Sequence[int], mode: Mode, widths: Sequence[int],
              se_reduction: int) -> None:
    """Give ``net`` the stem and residual units (``input_layer``, ``body``), and record ``units``,
    ``num_layers`` (the standard depth, else the stage lengths), ``mode`` and ``widths`` on it."""
    net.units = stage_units(num_layers)
    net.num_layers = depth_name(net.units)
    net.mode = mode
    net.widths = tuple(int(w) for w in widths)
    net.input_layer = make_input_layer(net.widths[0])
    net.body = make_body(net.units, mode, net.widths, se_reduction)


def stage_ends(num_layers: int | Sequence[int]) -> tuple[int, ...]:
    """Index in ``body`` of the last unit of each stage (``(2, 6, 20, 23)`` for depth 50)."""
    ends, total = [], 0
    for n in stage_units(num_layers):
        total += n
        ends.append(total - 1)
    return tuple(ends)


class BodyConfig(NamedTuple):
    """Architecture of an IR/IR-SE trunk as read from a state dict."""

    units: tuple[int, ...]
    widths: tuple[int, ...]
    mode: Mode
    se_reduction: int


_BODY_RE = re.compile(r"body\.(\d+)\.res_layer\.1\.weight")


def infer_body(state: Mapping[str, torch.Tensor], source: str, prefix: str = "") -> BodyConfig:
    """Recover stage lengths, widths, unit type and SE reduction from ``input_layer``/``body`` tensors.

    A stage starts wherever the unit's output width changes (the first stage starts at
    ``body.0``), which is how every IR-SE trunk is built.

    Raises:
        CheckpointError: no ``body.N`` units, gaps in their numbering, or an inconsistent layout.
    """
    idx = sorted(int(m.group(1)) for k in state if (m := _BODY_RE.fullmatch(k)))
    if not idx:
        raise CheckpointError(source, f"no IR-SE units found (expected keys like {prefix}body.0.res_layer.1.weight)")
    if idx != list(range(len(idx))):
        raise CheckpointError(source, f"{prefix}body.N units are not numbered 0..{len(idx) - 1}")
    stem = state.get("input_layer.0.weight")
    if not isinstance(stem, torch.Tensor) or stem.ndim != 4:
        raise CheckpointError(source, f"missing tensor {prefix}input_layer.0.weight")
    depths = []
    for i in idx:
        w = state[f"body.{i}.res_layer.1.weight"]
        if not isinstance(w, torch.Tensor) or w.ndim != 4:
            shape = list(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            raise CheckpointError(source, f"{prefix}body.{i}.res_layer.1.weight is {shape}, expected a 4-d conv weight")
        depths.append(int(w.shape[0]))
    units: list[int] = []
    widths: list[int] = []
    for d in depths:
        if widths and widths[-1] == d:
            units[-1] += 1
        else:
            widths.append(d)
            units.append(1)
    if len(units) != 4:
        raise CheckpointError(
            source, f"expected 4 stages of IR units (output widths change 3 times), found widths {widths} with {units} units"
        )
    if int(stem.shape[0]) != widths[0]:
        raise CheckpointError(
            source, f"{prefix}input_layer.0.weight has {stem.shape[0]} output channels, expected {widths[0]} (body.0 width)"
        )
    fc1 = state.get("body.0.res_layer.5.fc1.weight")
    if isinstance(fc1, torch.Tensor):
        mode: Mode = "ir_se"
        reduction = max(1, widths[0] // max(1, int(fc1.shape[0])))
    else:
        mode, reduction = "ir", SE_REDUCTION
    return BodyConfig(tuple(units), tuple(widths), mode, reduction)


def l2_norm(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``x / ||x||_2`` along ``dim`` (TreB1eN ``l2_norm``; the norm is floored at 1e-12)."""
    return x / torch.linalg.vector_norm(x, 2, dim=dim, keepdim=True).clamp_min(1e-12)


def upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bilinear-upsample ``x`` (``align_corners=True``) to ``y``'s size and add (pSp ``_upsample_add``).

    Shape:
        x ``[B, C, h, w]``, y ``[B, C, H, W]`` -> ``[B, C, H, W]``.
    """
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y
