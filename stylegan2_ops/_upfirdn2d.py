"""Upsample, pad, FIR-filter and downsample 2-d images (``upfirdn2d``) and its helpers.

Two implementations behind :func:`upfirdn2d`: a CUDA kernel (``upfirdn2d.cu``, built lazily)
whose gradient is again an ``upfirdn2d`` with the filter flipped (so every order of gradient
works), and a pure-PyTorch twin. Semantics follow NVIDIA's StyleGAN2-ADA
``torch_utils/ops/upfirdn2d.py`` (NVIDIA Source Code License); this is our own implementation.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .errors import OpInputError

from . import _impl

Scaling = Union[int, Sequence[int]]
Padding = Union[int, Sequence[int]]

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class _Geometry:
    upx: int
    upy: int
    downx: int
    downy: int
    padx0: int
    padx1: int
    pady0: int
    pady1: int
    flip_filter: bool
    gain: float


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _parse_scaling(op: str, name: str, value: object) -> tuple[int, int]:
    if _is_int(value):
        value = [value, value]
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(_is_int(v) for v in value):
        raise OpInputError(f"{op}: {name} must be an int or a pair [x, y] of ints; got {value!r}")
    sx, sy = int(value[0]), int(value[1])
    if sx < 1 or sy < 1:
        raise OpInputError(f"{op}: {name} must be >= 1; got {value!r}")
    return sx, sy


def _parse_padding(op: str, padding: object) -> tuple[int, int, int, int]:
    if _is_int(padding):
        padding = [padding, padding]
    if not isinstance(padding, (list, tuple)) or len(padding) not in (2, 4) or not all(_is_int(v) for v in padding):
        raise OpInputError(f"{op}: padding must be an int, [x, y] or [x0, x1, y0, y1] of ints; got {padding!r}")
    if len(padding) == 2:
        padding = [padding[0], padding[0], padding[1], padding[1]]
    px0, px1, py0, py1 = (int(v) for v in padding)
    return px0, px1, py0, py1


def _check_filter(op: str, f: object) -> None:
    if f is None:
        return
    if not isinstance(f, torch.Tensor) or f.ndim not in (1, 2):
        got = f"shape {tuple(f.shape)}" if isinstance(f, torch.Tensor) else type(f).__name__
        raise OpInputError(f"{op}: f must be a 1-d (separable) or 2-d filter tensor, or None; got {got}")
    if f.numel() == 0 or not f.is_floating_point():
        raise OpInputError(f"{op}: f must be a non-empty floating-point tensor; got {f.dtype} with {f.numel()} elements")
    if f.requires_grad:
        raise OpInputError(f"{op}: f must not require grad (filters are constants); detach it first")


def _filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """(width, height) of a filter; a 1-d filter is square."""
    if f is None:
        return 1, 1
    return int(f.shape[-1]), int(f.shape[0])


def _check_x(op: str, x: object) -> None:
    if not isinstance(x, torch.Tensor):
        raise OpInputError(f"{op}: x must be a torch.Tensor; got {type(x).__name__}")
    if x.ndim != 4:
        raise OpInputError(f"{op}: x must be 4-d [batch, channels, height, width]; got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise OpInputError(f"{op}: x must be floating point; got {x.dtype}")


def setup_filter(
    f: object,
    device: torch.device | str = torch.device("cpu"),
    normalize: bool = True,
    flip_filter: bool = False,
    gain: float = 1,
    separable: bool | None = None,
) -> torch.Tensor:
    """Make a float32 FIR filter for :func:`upfirdn2d` from a list, array or tensor.

    Args:
        f: ``[fh, fw]`` (2-d), ``[taps]`` (separable), a scalar (impulse) or None (identity).
        device: Device of the result.
        normalize: Scale so that the taps sum to 1 (unit DC gain).
        flip_filter: Flip the filter.
        gain: Overall signal gain (each of the two 1-d passes gets ``sqrt(gain)``).
        separable: Return a 1-d filter; None: only when 1-d with at least 8 taps.

    Returns:
        A new float32 tensor (the input is never modified).

    Shape:
        output: ``[fh, fw]`` or ``[taps]``.
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32).clone()
    if f.ndim not in (0, 1, 2) or f.numel() == 0:
        raise OpInputError(f"setup_filter: f must be a scalar, 1-d or 2-d and non-empty; got shape {tuple(f.shape)}")
    if f.ndim == 0:
        f = f[None]
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if f.ndim != (1 if separable else 2):
        raise OpInputError("setup_filter: a 2-d filter cannot be made separable")
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: Scaling = 1,
    down: Scaling = 1,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "auto",
) -> torch.Tensor:
    """Upsample (zero insertion), pad (negative: crop), FIR-filter and downsample each channel.

    1. Insert ``up - 1`` zeros after each pixel. 2. Pad by ``padding`` (negative crops).
    3. Convolve with ``f`` (correlate if ``flip_filter``), keeping only outputs whose filter
    footprint lies inside the padded image. 4. Keep every ``down``-th pixel. Like
    ``scipy.signal.upfirdn``. Gradients of any order (w.r.t. ``x``, not ``f``).

    Args:
        x: Images.
        f: 2-d filter, 1-d separable filter (applied along x then y) or None (identity); usually
            from :func:`setup_filter`.
        up: Upsampling factor, int or ``[x, y]``.
        down: Downsampling factor, int or ``[x, y]``.
        padding: Padding of the upsampled image: int, ``[x, y]`` or ``[x0, x1, y0, y1]``.
        flip_filter: False: convolution; True: correlation.
        gain: Overall scale of the output.
        impl: ``'auto'``, ``'cuda'`` or ``'ref'``.

    Returns:
        The filtered images, dtype of ``x``.

    Shape:
        x: ``[N, C, H, W]``; f: ``[fh, fw]`` or ``[taps]``; output: ``[N, C, (H * up_y + py0 + py1 - fh) // down_y + 1,
        (W * up_x + px0 + px1 - fw) // down_x + 1]``.

    Raises:
        OpInputError: Wrong ``x``/``f`` rank, bad ``up``/``down``/``padding``/``impl``, an empty output,
            or ``impl='cuda'`` with a CPU tensor.
    """
    op = "upfirdn2d"
    _check_x(op, x)
    _check_filter(op, f)
    g = _geometry(up, down, padding, flip_filter, gain)
    fw, fh = _filter_size(f)
    _, _, h, w = x.shape
    span_w, span_h = w * g.upx + g.padx0 + g.padx1 - fw, h * g.upy + g.pady0 + g.pady1 - fh
    if span_w < 0 or span_h < 0:
        raise OpInputError(
            f"{op}: the padded image ({span_h + fh}x{span_w + fw}) is smaller than the filter "
            f"({fh}x{fw}); x has shape {tuple(x.shape)}, padding={padding!r}, up={up!r}")
    out_numel = x.shape[0] * x.shape[1] * (span_h // g.downy + 1) * (span_w // g.downx + 1)
    supported = x.dtype in KERNEL_DTYPES and x.numel() > 0 and max(x.numel(), out_numel) < _INT_MAX
    ext = _impl.select(op, x, impl, supported=supported)
    if ext is None:
        return _upfirdn2d_ref(x, f, g)
    return _apply_kernel(ext, x, f, g)


def _geometry(up: Scaling, down: Scaling, padding: Padding, flip_filter: bool, gain: float) -> _Geometry:
    op = "upfirdn2d"
    upx, upy = _parse_scaling(op, "up", up)
    downx, downy = _parse_scaling(op, "down", down)
    px0, px1, py0, py1 = _parse_padding(op, padding)
    if isinstance(gain, bool) or not isinstance(gain, (int, float)):
        raise OpInputError(f"{op}: gain must be a number; got {gain!r}")
    return _Geometry(upx, upy, downx, downy, px0, px1, py0, py1, bool(flip_filter), float(gain))


def _apply_kernel(ext: ModuleType, x: torch.Tensor, f: torch.Tensor | None, geo: _Geometry) -> torch.Tensor:
    """Run the extension's kernel with autograd (CUDA tensors; CPU tensors take its host path)."""
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    f = f.to(device=x.device, dtype=torch.float32)
    return _Upfirdn2dCuda.apply(x, f, geo, ext)


def _upfirdn2d_ref(x: torch.Tensor, f: torch.Tensor | None, g: _Geometry) -> torch.Tensor:
    """The pure-PyTorch twin: zero insertion, pad/crop, grouped conv2d (strided for ``down``)."""
    n, c, h, w = x.shape
    if f is None:
        f = torch.ones([1, 1], dtype=x.dtype, device=x.device)
    if g.upx > 1 or g.upy > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, g.upx - 1, 0, 0, 0, g.upy - 1])
        x = x.reshape(n, c, h * g.upy, w * g.upx)
    x = F.pad(x, [max(g.padx0, 0), max(g.padx1, 0), max(g.pady0, 0), max(g.pady1, 0)])
    x = x[:, :, max(-g.pady0, 0): x.shape[2] - max(-g.pady1, 0), max(-g.padx0, 0): x.shape[3] - max(-g.padx1, 0)]

    f = f.to(device=x.device, dtype=x.dtype)
    if not g.flip_filter:
        f = f.flip(list(range(f.ndim)))  # conv2d correlates: flip to convolve
    weight = f[None, None].expand([c, 1, *f.shape])
    if f.ndim == 2:
        return F.conv2d(x, weight * g.gain, stride=(g.downy, g.downx), groups=c)
    x = F.conv2d(x, weight.unsqueeze(2) * g.gain, stride=(1, g.downx), groups=c)  # along x, whole gain
    return F.conv2d(x, weight.unsqueeze(3), stride=(g.downy, 1), groups=c)  # along y


class _Upfirdn2dCuda(torch.autograd.Function):
    """The kernel; its gradient is upfirdn2d with up/down swapped and the filter flipped."""

    @staticmethod
    def forward(ctx, x, f, geo, ext):  # type: ignore[override]
        g = geo
        if f.ndim == 2:
            y = ext.upfirdn2d(x, f, g.upx, g.upy, g.downx, g.downy, g.padx0, g.padx1, g.pady0, g.pady1,
                              g.flip_filter, g.gain)
        else:  # separable: along x (with the whole gain), then along y
            y = ext.upfirdn2d(x, f[None, :], g.upx, 1, g.downx, 1, g.padx0, g.padx1, 0, 0, g.flip_filter, g.gain)
            y = ext.upfirdn2d(y, f[:, None], 1, g.upy, 1, g.downy, 0, 0, g.pady0, g.pady1, g.flip_filter, 1.0)
        ctx.save_for_backward(f)
        ctx.x_shape, ctx.geo, ctx.ext = x.shape, geo, ext
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        (f,) = ctx.saved_tensors
        g = ctx.geo
        _, _, ih, iw = ctx.x_shape
        _, _, oh, ow = dy.shape
        fw, fh = _filter_size(f)
        dx = None
        if ctx.needs_input_grad[0]:
            back = _Geometry(
                upx=g.downx, upy=g.downy, downx=g.upx, downy=g.upy,
                padx0=fw - g.padx0 - 1, padx1=iw * g.upx - ow * g.downx + g.padx0 - g.upx + 1,
                pady0=fh - g.pady0 - 1, pady1=ih * g.upy - oh * g.downy + g.pady0 - g.upy + 1,
                flip_filter=not g.flip_filter, gain=g.gain,
            )
            dx = _Upfirdn2dCuda.apply(dy, f, back, ctx.ext)
        return dx, None, None, None


# ---------------------------------------------------------------------------------------------
# Helpers with "same"-style default padding.


def filter2d(x: torch.Tensor, f: torch.Tensor | None, padding: Padding = 0, flip_filter: bool = False,
             gain: float = 1, impl: str = "auto") -> torch.Tensor:
    """Filter images with ``f``, padded so that the output has the input's size (plus ``padding``).

    Shape:
        x: ``[N, C, H, W]``; output: ``[N, C, H + py0 + py1, W + px0 + px1]``.
    """
    _check_filter("filter2d", f)
    px0, px1, py0, py1 = _parse_padding("filter2d", padding)
    fw, fh = _filter_size(f)
    p = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x: torch.Tensor, f: torch.Tensor | None, up: Scaling = 2, padding: Padding = 0,
               flip_filter: bool = False, gain: float = 1, impl: str = "auto") -> torch.Tensor:
    """Upsample images by ``up`` with FIR filter ``f`` (gain scaled by ``up_x * up_y`` to keep DC).

    Shape:
        x: ``[N, C, H, W]``; output: ``[N, C, H * up_y + py0 + py1, W * up_x + px0 + px1]``.
    """
    _check_filter("upsample2d", f)
    upx, upy = _parse_scaling("upsample2d", "up", up)
    px0, px1, py0, py1 = _parse_padding("upsample2d", padding)
    fw, fh = _filter_size(f)
    p = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x: torch.Tensor, f: torch.Tensor | None, down: Scaling = 2, padding: Padding = 0,
                 flip_filter: bool = False, gain: float = 1, impl: str = "auto") -> torch.Tensor:
    """Downsample images by ``down`` after FIR filtering with ``f``.

    Shape:
        x: ``[N, C, H, W]``; output: ``[N, C, (H + py0 + py1) // down_y, (W + px0 + px1) // down_x]``.
    """
    _check_filter("downsample2d", f)
    downx, downy = _parse_scaling("downsample2d", "down", down)
    px0, px1, py0, py1 = _parse_padding("downsample2d", padding)
    fw, fh = _filter_size(f)
    p = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2, py0 + (fh - downy + 1) // 2, py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)
