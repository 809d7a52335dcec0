"""stylegan2_ops.bias_act: the twin against direct formulas, its gradients, validation,
implementation selection, and kernel-vs-twin parity.

Parity runs on two backends: ``cuda`` (the kernel on a GPU; skipped without one) and ``host``
(the same kernel code compiled for the CPU by the extension build; skipped without nvcc/ninja).
"""

from __future__ import annotations

import math
import types
import warnings

import pytest
import torch

import stylegan2_ops as so
from stylegan2_ops import OpInputError as InputError
from stylegan2_ops import _bias_act, _build, _impl
from tests.conftest import kernel_backend

ACTS = list(so.ACTIVATIONS)
SQRT2 = math.sqrt(2)
SELU_SCALE = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717


def direct(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    """bias_act written out from the textbook formulas (no torch.nn.functional)."""
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + b.reshape(shape)
    a = 0.2 if alpha is None else alpha
    e = torch.exp
    formulas = {
        "linear": lambda v: v,
        "relu": lambda v: torch.where(v > 0, v, torch.zeros_like(v)),
        "lrelu": lambda v: torch.where(v > 0, v, a * v),
        "tanh": lambda v: (e(v) - e(-v)) / (e(v) + e(-v)),
        "sigmoid": lambda v: 1 / (1 + e(-v)),
        "elu": lambda v: torch.where(v >= 0, v, e(v) - 1),
        "selu": lambda v: SELU_SCALE * torch.where(v >= 0, v, SELU_ALPHA * (e(v) - 1)),
        "softplus": lambda v: torch.log(1 + e(v)),
        "swish": lambda v: v / (1 + e(-v)),
    }
    default_gain = SQRT2 if act in ("relu", "lrelu", "swish") else 1.0
    y = formulas[act](x) * (default_gain if gain is None else gain)
    if clamp is not None:
        y = torch.minimum(torch.maximum(y, torch.full_like(y, -clamp)), torch.full_like(y, clamp))
    return y


# --------------------------------------------------------------------------------------------
# The twin against direct formulas.


@pytest.mark.parametrize("act", ACTS)
def test_twin_matches_formulas_defaults(act):
    x = torch.randn(3, 5, 4, 4, dtype=torch.float64) * 2
    b = torch.randn(5, dtype=torch.float64)
    torch.testing.assert_close(so.bias_act(x, b, act=act, impl="ref"), direct(x, b, act=act))
    torch.testing.assert_close(so.bias_act(x, act=act, impl="ref"), direct(x, act=act))


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("alpha, gain, clamp", [(0.1, 1.0, None), (None, 0.5, 0.3), (0.3, 2.0, 1.0)])
def test_twin_matches_formulas_alpha_gain_clamp(act, alpha, gain, clamp):
    x = torch.randn(6, 7, dtype=torch.float64) * 2
    b = torch.randn(6, dtype=torch.float64)
    got = so.bias_act(x, b, dim=0, act=act, alpha=alpha, gain=gain, clamp=clamp, impl="ref")
    torch.testing.assert_close(got, direct(x, b, dim=0, act=act, alpha=alpha, gain=gain, clamp=clamp))
    if clamp is not None:
        assert got.abs().max() <= clamp


def test_default_alpha_and_gain_table():
    table = {name: (spec.def_alpha, spec.def_gain) for name, spec in so.ACTIVATIONS.items()}
    assert table["lrelu"] == pytest.approx((0.2, SQRT2))
    assert table["relu"][1] == pytest.approx(SQRT2) and table["swish"][1] == pytest.approx(SQRT2)
    for name in ("linear", "tanh", "sigmoid", "elu", "selu", "softplus"):
        assert table[name][1] == 1.0


@pytest.mark.parametrize("dim", [0, 1, 2, 3, -1])
def test_bias_dimension(dim):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    b = torch.randn(x.shape[dim], dtype=torch.float64)
    got = so.bias_act(x, b, dim=dim, act="lrelu", impl="ref")
    torch.testing.assert_close(got, direct(x, b, dim=dim % 4, act="lrelu"))


def test_dtype_follows_x_and_bias_is_cast():
    x = torch.randn(2, 3, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float32)
    y = so.bias_act(x, b, act="lrelu", impl="ref")
    assert y.dtype == torch.float64 and y.shape == x.shape


def test_channels_last_input():
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64).to(memory_format=torch.channels_last)
    b = torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close(so.bias_act(x, b, act="swish", impl="ref"), direct(x, b, act="swish"))


# --------------------------------------------------------------------------------------------
# Gradients of the twin.


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("clamp", [None, 0.8])
def test_twin_gradcheck_first_and_second_order(act, clamp):
    x = (torch.randn(2, 3, 3, dtype=torch.float64) * 1.5).requires_grad_()
    b = torch.randn(3, dtype=torch.float64).requires_grad_()

    def fn(x, b):
        return so.bias_act(x, b, act=act, alpha=0.15, gain=1.3, clamp=clamp, impl="ref")

    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


# --------------------------------------------------------------------------------------------
# Input validation.


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(act="gelu"), "act must be one of"),
        (dict(act=None), "act must be one of"),
        (dict(b=torch.zeros(3, 1)), "b must be a 1-d tensor"),
        (dict(b=torch.zeros(5)), r"x.shape\[1\] = 3"),
        (dict(b=torch.zeros(3), dim=4), "dim must be in"),
        (dict(clamp=-1.0), "clamp must be >= 0"),
        (dict(gain="2"), "gain must be a number"),
        (dict(impl="fast"), "impl must be one of"),
    ],
)
def test_bad_arguments_raise_input_error(kwargs, match):
    x = torch.randn(2, 3, 4)
    with pytest.raises(InputError, match=match):
        so.bias_act(x, **kwargs)


def test_x_must_be_a_tensor():
    with pytest.raises(InputError, match="x must be a torch.Tensor"):
        so.bias_act([1.0, 2.0])


def test_impl_cuda_on_cpu_tensor_is_a_clear_value_error():
    with pytest.raises(ValueError, match="impl='cuda' needs a CUDA tensor"):
        so.bias_act(torch.randn(2, 3), impl="cuda")


# --------------------------------------------------------------------------------------------
# Implementation selection (FALCO_OPS), checked without a GPU through a CUDA-looking stand-in.


def _cuda_like():
    return types.SimpleNamespace(device=torch.device("cuda"), dtype=torch.float32)


@pytest.fixture
def no_build(monkeypatch):
    def fail(name, **_):
        raise AssertionError("a build was started")

    monkeypatch.setattr(_build, "build_extension", fail)


def test_falco_ops_ref_forces_twin_even_for_cuda_tensors(monkeypatch, no_build):
    monkeypatch.setenv("FALCO_OPS", "ref")
    assert _impl.select("bias_act", _cuda_like(), "auto") is None
    assert so.last_used("bias_act") == "ref"
    so.bias_act(torch.randn(2, 3), act="lrelu")
    assert so.last_used("bias_act") == "ref"
    status = so.impl_status()
    assert status["requested"] == "ref" and status["bias_act"].startswith("ref")


def test_auto_uses_cuda_when_the_build_works(monkeypatch):
    sentinel = types.SimpleNamespace(name="ext")
    monkeypatch.delenv("FALCO_OPS", raising=False)
    monkeypatch.setattr(_build, "build_extension", lambda name, **_: sentinel)
    assert _impl.select("bias_act", _cuda_like(), "auto") is sentinel
    assert so.last_used("bias_act") == "cuda"
    assert _impl.select("bias_act", _cuda_like(), "ref") is None  # explicit ref wins
    assert _impl.select("bias_act", _cuda_like(), "auto", supported=False) is None


def test_failed_build_warns_once_and_falls_back(monkeypatch):
    def broken(name, **_):
        raise _build.BuildError("nvcc exploded")

    monkeypatch.delenv("FALCO_OPS", raising=False)
    monkeypatch.setattr(_build, "build_extension", broken)
    monkeypatch.setattr(_impl, "_warned", False)
    with pytest.warns(RuntimeWarning, match="nvcc exploded"):
        assert _impl.select("bias_act", _cuda_like(), "auto") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise
        assert _impl.select("upfirdn2d", _cuda_like(), "auto") is None
    with pytest.raises(_build.BuildError, match="nvcc exploded"):
        _impl.select("bias_act", _cuda_like(), "cuda")
    monkeypatch.setenv("FALCO_OPS", "cuda")  # strict: no silent fallback
    with pytest.raises(_build.BuildError):
        _impl.select("bias_act", _cuda_like(), "auto")


def test_bad_falco_ops_value(monkeypatch):
    monkeypatch.setenv("FALCO_OPS", "fast")
    with pytest.raises(InputError, match="FALCO_OPS must be one of"):
        so.bias_act(torch.randn(2, 3))
    assert so.impl_status()["bias_act"].startswith("error")


@pytest.mark.cuda
def test_falco_ops_on_a_gpu(monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    x = torch.randn(2, 3, device="cuda")
    monkeypatch.setenv("FALCO_OPS", "ref")
    so.bias_act(x, act="lrelu")
    assert so.last_used("bias_act") == "ref"
    monkeypatch.setenv("FALCO_OPS", "cuda")
    so.bias_act(x, act="lrelu")
    assert so.last_used("bias_act") == "cuda"


# --------------------------------------------------------------------------------------------
# Kernel vs twin: forward, first and second order gradients.

# host: the extension built with nvcc/ninja for the CPU (a cold build takes about a minute: slow)
BACKENDS = [pytest.param("cuda", marks=pytest.mark.cuda), pytest.param("host", marks=pytest.mark.slow)]


def _host_kernel(ext, x, b, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    return _bias_act._apply_kernel(ext, x, b, _bias_act._parse(x, b, dim, act, alpha, gain, clamp))


@pytest.fixture
def kernel(request):
    """A callable running bias_act through the kernel on the given backend, and its device."""
    return kernel_backend(request, "bias_act", lambda x, b, **kw: so.bias_act(x, b, impl="cuda", **kw), _host_kernel)


TOL = {torch.float64: dict(rtol=1e-7, atol=1e-7), torch.float32: dict(rtol=1e-4, atol=1e-4),
       torch.float16: dict(rtol=2e-2, atol=2e-2)}


def _grads(fn, x, b, w, v):
    """y, dL/dx, dL/db for L = <y, w>, then d<dL/dx, v>/d(x, b, w) (second order)."""
    y = fn(x, b)
    gx, gb = torch.autograd.grad((y * w).sum(), [x, b], create_graph=True)
    second = torch.autograd.grad((gx * v).sum(), [x, b, w], allow_unused=True)
    second = [torch.zeros_like(t) if g is None else g for g, t in zip(second, (x, b, w))]
    return [y, gx, gb, *second]


def _check_parity(run, device, dtype, shape, dim, act, channels_last=False, **kw):
    x0 = torch.randn(shape, dtype=torch.float64) * 2
    b0 = torch.randn(shape[dim], dtype=torch.float64)
    w0, v0 = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    x0, b0, w0, v0 = (t.to(dtype).to(torch.float64) for t in (x0, b0, w0, v0))  # same values in both

    def leaves(dev, dt, channels_last=False):
        out = [t.to(device=dev, dtype=dt) for t in (x0, b0, w0, v0)]
        if channels_last:
            out = [t.to(memory_format=torch.channels_last) if t.ndim == 4 else t for t in out]
        return [t.requires_grad_() for t in out]

    got = _grads(lambda x, b: run(x, b, dim=dim, act=act, **kw), *leaves(device, dtype, channels_last))
    want = _grads(lambda x, b: so.bias_act(x, b, dim=dim, act=act, impl="ref", **kw), *leaves("cpu", torch.float64))
    names = ["y", "dx", "db", "d2x", "d2b", "d2w"]
    for name, g, r in zip(names, got, want):
        assert g.dtype == dtype, name
        scale = max(1.0, float(r.detach().abs().max()))
        tol = TOL[dtype]
        torch.testing.assert_close(g.detach().cpu().double() / scale, r.detach() / scale, **tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("kernel", BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("act", ACTS)
def test_kernel_matches_twin(kernel, dtype, act):
    run, device = kernel
    _check_parity(run, device, dtype, (4, 16, 6, 6), 1, act)


@pytest.mark.parametrize("kernel", BACKENDS, indirect=True)
@pytest.mark.parametrize("act", ["lrelu", "tanh", "swish", "softplus"])
@pytest.mark.parametrize("variant", ["clamp_alpha_gain", "dim0_2d", "channels_last", "float64"])
def test_kernel_matches_twin_variants(kernel, act, variant):
    run, device = kernel
    if variant == "clamp_alpha_gain":
        _check_parity(run, device, torch.float32, (3, 8, 5, 5), 1, act, alpha=0.3, gain=1.7, clamp=1.1)
    elif variant == "dim0_2d":
        _check_parity(run, device, torch.float32, (32, 9), 0, act)
    elif variant == "channels_last":
        _check_parity(run, device, torch.float32, (2, 8, 5, 5), 1, act, channels_last=True)
    else:
        _check_parity(run, device, torch.float64, (2, 8, 5, 5), 1, act, clamp=1.5)
