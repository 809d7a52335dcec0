"""Fused bias + activation + gain + clamp, with NVlabs StyleGAN2-ADA semantics.

Two implementations behind :func:`bias_act`: a CUDA kernel (``bias_act.cu``, built lazily)
whose autograd Functions support first and second order gradients the way NVlabs does (the
gradient is computed by the kernel again, in gradient modes 1 and 2), and a pure-PyTorch twin.
The op and its activation table follow NVIDIA's ``torch_utils/ops/bias_act.py``
(NVIDIA Source Code License); this is our own implementation.
"""

from __future__ import annotations

import dataclasses
import math
from types import ModuleType
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import OpInputError

from . import _impl


@dataclasses.dataclass(frozen=True)
class Activation:
    """One entry of the activation table.

    Attributes:
        func: The activation as plain torch ops (the twin).
        def_alpha: Default shape parameter (only ``lrelu`` uses it).
        def_gain: Default output gain.
        code: Activation code of the kernel (``BiasActCode`` in ``bias_act.h``).
        ref: Which forward tensor the kernel's gradient reads: ``'x'`` (input), ``'y'`` (output) or ``''``.
        has_2nd_grad: Whether the second derivative is non-zero.
    """

    func: Callable[[torch.Tensor, float], torch.Tensor]
    def_alpha: float
    def_gain: float
    code: int
    ref: str
    has_2nd_grad: bool


ACTIVATIONS: dict[str, Activation] = {
    "linear": Activation(lambda x, a: x, 0.0, 1.0, 1, "", False),
    "relu": Activation(lambda x, a: F.relu(x), 0.0, math.sqrt(2), 2, "y", False),
    "lrelu": Activation(lambda x, a: F.leaky_relu(x, a), 0.2, math.sqrt(2), 3, "y", False),
    "tanh": Activation(lambda x, a: torch.tanh(x), 0.0, 1.0, 4, "y", True),
    "sigmoid": Activation(lambda x, a: torch.sigmoid(x), 0.0, 1.0, 5, "y", True),
    "elu": Activation(lambda x, a: F.elu(x), 0.0, 1.0, 6, "y", True),
    "selu": Activation(lambda x, a: F.selu(x), 0.0, 1.0, 7, "y", True),
    "softplus": Activation(lambda x, a: F.softplus(x), 0.0, 1.0, 8, "y", True),
    "swish": Activation(lambda x, a: torch.sigmoid(x) * x, 0.0, math.sqrt(2), 9, "x", True),
}

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT_MAX = 2**31 - 1
_NULL = torch.empty([0])


@dataclasses.dataclass(frozen=True)
class _Config:
    act: str
    dim: int
    alpha: float
    gain: float
    clamp: float  # < 0: no clamping

    @property
    def spec(self) -> Activation:
        return ACTIVATIONS[self.act]

    @property
    def is_identity_grad(self) -> bool:
        return self.act == "linear" and self.gain == 1 and self.clamp < 0


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OpInputError(f"bias_act: {name} must be a number or None; got {value!r}")
    if not math.isfinite(float(value)):
        raise OpInputError(f"bias_act: {name} must be finite; got {value!r}")
    return float(value)


def _parse(x: object, b: object, dim: object, act: object, alpha: object, gain: object, clamp: object) -> _Config:
    if not isinstance(x, torch.Tensor):
        raise OpInputError(f"bias_act: x must be a torch.Tensor; got {type(x).__name__}")
    if not isinstance(act, str) or act not in ACTIVATIONS:
        raise OpInputError(f"bias_act: act must be one of {', '.join(ACTIVATIONS)}; got {act!r}")
    spec = ACTIVATIONS[act]
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise OpInputError(f"bias_act: dim must be an int; got {dim!r}")
    if b is not None:
        if not isinstance(b, torch.Tensor) or b.ndim != 1:
            shape = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
            raise OpInputError(f"bias_act: b must be a 1-d tensor or None; got {shape}")
        if not -x.ndim <= dim < x.ndim:
            raise OpInputError(f"bias_act: dim must be in [{-x.ndim}, {x.ndim}) for x of shape {tuple(x.shape)}; got {dim}")
        dim %= x.ndim
        if b.shape[0] != x.shape[dim]:
            raise OpInputError(f"bias_act: b must have x.shape[{dim}] = {x.shape[dim]} elements; got {b.shape[0]}")
        if b.device != x.device:
            raise OpInputError(f"bias_act: b must be on the device of x ({x.device}); got {b.device}")
    alpha = spec.def_alpha if alpha is None else _number("alpha", alpha)
    gain = spec.def_gain if gain is None else _number("gain", gain)
    if clamp is None:
        clamp = -1.0
    else:
        clamp = _number("clamp", clamp)
        if clamp < 0:
            raise OpInputError(f"bias_act: clamp must be >= 0 or None; got {clamp}")
    return _Config(act=act, dim=dim, alpha=alpha, gain=gain, clamp=clamp)


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    dim: int = 1,
    act: str = "linear",
    alpha: float | None = None,
    gain: float | None = None,
    clamp: float | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Add a bias, apply an activation, scale by a gain and clamp, in one fused op.

    ``y = clamp(act(x + b, alpha) * gain, -clamp, clamp)``; every step is optional.
    Supports first and second order gradients (not third on the CUDA path).

    Args:
        x: Input of any shape.
        b: Bias, 1-d with ``x.shape[dim]`` elements, or None. Cast to ``x.dtype``.
        dim: The dimension of ``x`` the bias runs along (ignored without ``b``).
        act: One of ``linear, relu, lrelu, tanh, sigmoid, elu, selu, softplus, swish``.
        alpha: Shape parameter (``lrelu`` slope), None for the default (0.2 for lrelu).
        gain: Output scale, None for the activation's default (sqrt(2) for relu, lrelu, swish; else 1).
        clamp: Clamp the output to ``[-clamp, clamp]``; None disables.
        impl: ``'auto'``, ``'cuda'`` or ``'ref'`` (see :mod:`stylegan2_ops._impl`).

    Returns:
        A tensor of the shape and dtype of ``x``.

    Shape:
        x: ``[*]``; b: ``[x.shape[dim]]``; output: ``[*]``.

    Raises:
        OpInputError: Bad ``act``, ``b`` shape, ``dim``, ``clamp``, ``impl``, or ``impl='cuda'`` with a CPU tensor.
    """
    cfg = _parse(x, b, dim, act, alpha, gain, clamp)
    if b is not None and b.dtype != x.dtype:
        b = b.to(x.dtype)
    supported = x.dtype in KERNEL_DTYPES and x.numel() <= _INT_MAX
    ext = _impl.select("bias_act", x, impl, supported=supported)
    if ext is None:
        return _bias_act_ref(x, b, cfg)
    return _apply_kernel(ext, x, b, cfg)


def _bias_act_ref(x: torch.Tensor, b: torch.Tensor | None, cfg: _Config) -> torch.Tensor:
    """The pure-PyTorch twin: plain ops, differentiable to any order."""
    if b is not None:
        x = x + b.reshape([-1 if i == cfg.dim else 1 for i in range(x.ndim)])
    x = cfg.spec.func(x, cfg.alpha)
    if cfg.gain != 1:
        x = x * cfg.gain
    if cfg.clamp >= 0:
        x = x.clamp(-cfg.clamp, cfg.clamp)
    return x


# ---------------------------------------------------------------------------------------------
# CUDA path. The kernel's grad mode 1 gives dx from dy; mode 2 gives the second derivative term.


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    if t.ndim == 4 and t.stride(1) == 1 and t.shape[1] > 1:
        return torch.channels_last
    return torch.contiguous_format


def _or_null(t: torch.Tensor | None) -> torch.Tensor:
    return _NULL if t is None else t


def _apply_kernel(ext: ModuleType, x: torch.Tensor, b: torch.Tensor | None, cfg: _Config) -> torch.Tensor:
    """Run the extension's kernel with autograd (CUDA tensors; CPU tensors take its host path)."""
    if cfg.is_identity_grad and b is None:
        return x
    return _BiasActCuda.apply(x, b, cfg, ext)


def _run(ext: ModuleType, x: torch.Tensor, b: torch.Tensor | None, xref: torch.Tensor | None,
         yref: torch.Tensor | None, dy: torch.Tensor | None, grad: int, cfg: _Config) -> torch.Tensor:
    return ext.bias_act(x, _or_null(b), _or_null(xref), _or_null(yref), _or_null(dy), grad, cfg.dim,
                        cfg.spec.code, cfg.alpha, cfg.gain, cfg.clamp)


class _BiasActCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, cfg, ext):  # type: ignore[override]
        ctx.cfg, ctx.ext = cfg, ext
        ctx.memory_format = _memory_format(x)
        x = x.contiguous(memory_format=ctx.memory_format)
        b = b.contiguous() if b is not None else None
        y = _run(ext, x, b, None, None, None, 0, cfg)
        needs_x = "x" in cfg.spec.ref or cfg.spec.has_2nd_grad
        ctx.save_for_backward(x if needs_x else None, b if needs_x else None, y if "y" in cfg.spec.ref else None)
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        cfg = ctx.cfg
        dy = dy.contiguous(memory_format=ctx.memory_format)
        x, b, y = ctx.saved_tensors
        dx = db = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            dx = dy if cfg.is_identity_grad else _BiasActCudaGrad.apply(dy, x, b, y, cfg, ctx.ext)
        if ctx.needs_input_grad[1]:
            db = dx.sum([i for i in range(dx.ndim) if i != cfg.dim])
        return dx, db, None, None


class _BiasActCudaGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dy, x, b, y, cfg, ext):  # type: ignore[override]
        ctx.cfg, ctx.ext = cfg, ext
        ctx.memory_format = _memory_format(dy)
        dx = _run(ext, dy, b, x, y, None, 1, cfg)
        ctx.save_for_backward(dy if cfg.spec.has_2nd_grad else None, x, b, y)
        return dx

    @staticmethod
    def backward(ctx, d_dx):  # type: ignore[override]
        cfg = ctx.cfg
        d_dx = d_dx.contiguous(memory_format=ctx.memory_format)
        dy, x, b, y = ctx.saved_tensors
        d_dy = d_x = d_b = None
        if ctx.needs_input_grad[0]:
            d_dy = _BiasActCudaGrad.apply(d_dx, x, b, y, cfg, ctx.ext)
        if cfg.spec.has_2nd_grad and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            d_x = _run(ctx.ext, d_dx, b, x, y, dy, 2, cfg)
        if cfg.spec.has_2nd_grad and ctx.needs_input_grad[2]:
            d_b = d_x.sum([i for i in range(d_x.ndim) if i != cfg.dim])
        return d_dy, d_x, d_b, None, None, None
