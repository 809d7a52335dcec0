"""stylegan2_ops.upfirdn2d and helpers: the twin against an independent numpy/scipy
computation, its gradients, validation, and kernel-vs-twin parity.

Parity runs on two backends: ``cuda`` (the kernel on a GPU; skipped without one) and ``host``
(the same kernel code compiled for the CPU by the extension build; skipped without nvcc/ninja).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F

import stylegan2_ops as so
from stylegan2_ops import OpInputError as InputError
from stylegan2_ops import _upfirdn2d
from tests.conftest import kernel_backend


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _pad4(p):
    if isinstance(p, int):
        return p, p, p, p
    return (p[0], p[0], p[1], p[1]) if len(p) == 2 else tuple(p)


def naive(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1.0):
    """upfirdn2d spelled out with numpy and scipy.signal: zero insertion by slicing, np.pad and
    slicing for pad/crop, convolve2d/correlate2d 'valid', then a strided slice."""
    upx, upy = _pair(up)
    downx, downy = _pair(down)
    px0, px1, py0, py1 = _pad4(padding)
    f2 = np.ones((1, 1)) if f is None else f.double().numpy()
    if f2.ndim == 1:
        f2 = np.outer(f2, f2)
    xs = x.detach().double().numpy()
    n, c, h, w = xs.shape
    u = np.zeros((n, c, h * upy, w * upx))
    u[:, :, ::upy, ::upx] = xs
    u = np.pad(u, ((0, 0), (0, 0), (max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0))))
    u = u[:, :, max(-py0, 0): u.shape[2] - max(-py1, 0), max(-px0, 0): u.shape[3] - max(-px1, 0)]
    op = scipy.signal.correlate2d if flip_filter else scipy.signal.convolve2d
    out = np.stack([np.stack([op(u[i, j], f2, mode="valid") for j in range(c)]) for i in range(n)])
    return torch.from_numpy(out[:, :, ::downy, ::downx] * gain)


# (up, down, padding, filter shape or None, flip_filter, gain)
CONFIGS = [
    (1, 1, 0, None, False, 1.0),
    (1, 1, 1, (3, 3), False, 1.0),
    (1, 1, [2, 1, 0, 3], (4, 4), True, 2.0),
    (1, 1, [1, 2], (5, 2), False, 1.0),
    (2, 1, [2, 1, 2, 1], (4, 4), False, 4.0),
    (2, 1, [2, 1, 2, 1], (4,), False, 4.0),
    (2, 1, 0, (8,), True, 1.0),
    (1, 2, 1, (4, 4), False, 1.0),
    (1, 2, [1, 1, 1, 1], (4,), False, 1.0),
    (1, 3, 2, (3, 3), True, 1.0),
    (4, 1, [3, 2, 3, 2], (6, 6), False, 16.0),
    ([2, 1], [1, 2], [1, 0, 2, -1], (3, 4), False, 1.0),
    (2, 2, -1, (4, 4), False, 1.0),
    (3, 2, [0, -2, 1, 1], (5,), True, -0.5),
]


def _filter(shape):
    return None if shape is None else torch.randn(shape)


# --------------------------------------------------------------------------------------------
# The twin against the independent computation.


@pytest.mark.parametrize("up, down, padding, fshape, flip, gain", CONFIGS)
def test_twin_matches_naive(up, down, padding, fshape, flip, gain):
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    f = _filter(fshape)
    got = so.upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain, impl="ref")
    torch.testing.assert_close(got, naive(x, f, up, down, padding, flip, gain))


def test_separable_equals_its_outer_product():
    x = torch.randn(2, 3, 10, 8)
    f1 = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8
    for kw in (dict(up=2, padding=[2, 1, 2, 1]), dict(down=2, padding=1), dict(padding=[1, 2, 0, 1])):
        torch.testing.assert_close(so.upfirdn2d(x, f1, impl="ref", **kw), so.upfirdn2d(x, torch.outer(f1, f1), impl="ref", **kw))


def test_negative_padding_crops():
    x = torch.randn(1, 2, 6, 6)
    torch.testing.assert_close(so.upfirdn2d(x, None, padding=[-1, -2, -3, 0], impl="ref"), x[:, :, 3:, 1:-2])


def test_upsample_without_filter_is_zero_insertion():
    x = torch.randn(1, 2, 3, 4)
    y = so.upfirdn2d(x, None, up=2, padding=[0, 1, 0, 1], impl="ref")
    want = torch.zeros(1, 2, 7, 9)  # 3x4 -> 6x8 by zero insertion, then one more row/column of padding
    want[:, :, :6:2, :8:2] = x
    torch.testing.assert_close(y, want)


def test_downsample_without_filter_is_strided_slice():
    x = torch.randn(1, 2, 9, 8)
    torch.testing.assert_close(so.upfirdn2d(x, None, down=[2, 3], impl="ref"), x[:, :, ::3, ::2])


def test_twin_keeps_dtype_and_channels_last():
    x = torch.randn(2, 3, 6, 6).to(memory_format=torch.channels_last)
    f = so.setup_filter([1, 3, 3, 1])
    y = so.upfirdn2d(x, f, up=2, padding=[2, 1, 2, 1], gain=4, impl="ref")
    torch.testing.assert_close(y, naive(x, f, 2, 1, [2, 1, 2, 1], False, 4.0).float(), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Helpers.


def test_upsample2d_box_is_nearest_neighbour():
    x = torch.randn(2, 3, 5, 4)
    y = so.upsample2d(x, so.setup_filter([1, 1]))
    torch.testing.assert_close(y, F.interpolate(x, scale_factor=2, mode="nearest"))


def test_downsample2d_box_is_average_pooling():
    x = torch.randn(2, 3, 8, 6)
    torch.testing.assert_close(so.downsample2d(x, so.setup_filter([1, 1])), F.avg_pool2d(x, 2))


def test_upsample2d_and_downsample2d_match_handmade_upfirdn2d():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    f = so.setup_filter([1, 3, 3, 1])
    up = so.upsample2d(x, f, gain=0.5)
    assert up.shape == (2, 3, 16, 16)
    torch.testing.assert_close(up, naive(x, f, 2, 1, [2, 1, 2, 1], False, 0.5 * 4))
    down = so.downsample2d(x, f, gain=3.0)
    assert down.shape == (2, 3, 4, 4)
    torch.testing.assert_close(down, naive(x, f, 1, 2, 1, False, 3.0))
    # extra user padding is applied on top of the defaults
    torch.testing.assert_close(so.upsample2d(x, f, padding=[1, 0, 0, 2]), naive(x, f, 2, 1, [3, 1, 2, 3], False, 4.0))
    torch.testing.assert_close(so.downsample2d(x, f, padding=2), naive(x, f, 1, 2, 3, False, 1.0))


def test_upsample_keeps_a_constant_image_constant_inside():
    x = torch.full((1, 1, 8, 8), 2.5)
    y = so.upsample2d(x, so.setup_filter([1, 3, 3, 1]))
    torch.testing.assert_close(y[:, :, 2:-2, 2:-2], torch.full((1, 1, 12, 12), 2.5))


def test_filter2d_is_same_size_convolution():
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    f = torch.randn(3, 3, dtype=torch.float64)
    want = F.conv2d(x, f.flip([0, 1])[None, None].repeat(3, 1, 1, 1), padding=1, groups=3) * 1.5
    torch.testing.assert_close(so.filter2d(x, f.float(), gain=1.5), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(so.filter2d(x, f.float(), flip_filter=True),
                               F.conv2d(x, f[None, None].repeat(3, 1, 1, 1), padding=1, groups=3), rtol=1e-6, atol=1e-6)
    assert so.filter2d(x, torch.ones(4, 4), padding=[1, 0, 2, 1]).shape == (2, 3, 10, 8)


def test_setup_filter():
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = so.setup_filter(taps)
    assert f.shape == (4, 4) and f.dtype == torch.float32
    torch.testing.assert_close(f.sum(), torch.tensor(1.0))
    torch.testing.assert_close(f, torch.outer(taps, taps) / 64)
    assert torch.equal(taps, torch.tensor([1.0, 3.0, 3.0, 1.0]))  # input untouched
    assert so.setup_filter([1] * 8).shape == (8,)  # >= 8 taps: separable by default
    assert so.setup_filter([1, 2], separable=True).shape == (2,)
    torch.testing.assert_close(so.setup_filter(None), torch.ones(1, 1))
    torch.testing.assert_close(so.setup_filter([1, 2, 3], normalize=False, flip_filter=True, separable=True),
                               torch.tensor([3.0, 2.0, 1.0]))
    torch.testing.assert_close(so.setup_filter([1, 1], gain=4).sum(), torch.tensor(4.0))
    torch.testing.assert_close(so.setup_filter([1, 1], gain=4, separable=True).sum(), torch.tensor(2.0))
    with pytest.raises(InputError):
        so.setup_filter(torch.ones(2, 2, 2))


# --------------------------------------------------------------------------------------------
# Gradients of the twin.


SLOW_GRADCHECKS = (5, 13)  # over 10 s each on 2 CPU cores


@pytest.mark.parametrize("up, down, padding, fshape, flip, gain",
                         [pytest.param(*CONFIGS[i], marks=pytest.mark.slow if i in SLOW_GRADCHECKS else ())
                          for i in (2, 5, 7, 11, 13)])
def test_twin_gradcheck_first_and_second_order(up, down, padding, fshape, flip, gain):
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    f = _filter(fshape)

    def fn(x):
        return so.upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain, impl="ref")

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_helpers_gradcheck():
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    f = so.setup_filter([1, 3, 3, 1])
    for fn in (lambda x: so.upsample2d(x, f), lambda x: so.downsample2d(x, f), lambda x: so.filter2d(x, f)):
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


# --------------------------------------------------------------------------------------------
# Input validation.


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((torch.randn(3, 8, 8), None), {}, "x must be 4-d"),
        ((torch.randn(1, 3, 8, 8), None), dict(padding=[1, 2, 3]), "padding must be"),
        ((torch.randn(1, 3, 8, 8), None), dict(padding=1.5), "padding must be"),
        ((torch.randn(1, 3, 8, 8), None), dict(up=0), "up must be >= 1"),
        ((torch.randn(1, 3, 8, 8), None), dict(down=[2, 2, 2]), "down must be an int"),
        ((torch.randn(1, 3, 8, 8), torch.ones(2, 2, 2)), {}, "f must be a 1-d"),
        ((torch.randn(1, 3, 8, 8), torch.ones(2, 2, requires_grad=True)), {}, "must not require grad"),
        ((torch.randn(1, 3, 2, 2), torch.ones(4, 4)), {}, "smaller than the filter"),
        ((torch.randn(1, 3, 8, 8), None), dict(impl="fast"), "impl must be one of"),
        ((torch.randn(1, 3, 8, 8).long(), None), {}, "floating point"),
    ],
)
def test_bad_arguments_raise_input_error(args, kwargs, match):
    with pytest.raises(InputError, match=match):
        so.upfirdn2d(*args, **kwargs)


def test_helpers_validate_too():
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(InputError, match="padding"):
        so.upsample2d(x, None, padding=[1, 2, 3])
    with pytest.raises(InputError, match="down"):
        so.downsample2d(x, None, down=0)
    with pytest.raises(InputError, match="f must be"):
        so.filter2d(x, torch.ones(1, 1, 1))


def test_impl_cuda_on_cpu_tensor_is_a_clear_value_error():
    with pytest.raises(ValueError, match="impl='cuda' needs a CUDA tensor"):
        so.upfirdn2d(torch.randn(1, 1, 4, 4), None, impl="cuda")


def test_falco_ops_ref_records_the_twin(monkeypatch):
    monkeypatch.setenv("FALCO_OPS", "ref")
    so.upsample2d(torch.randn(1, 1, 4, 4), so.setup_filter([1, 3, 3, 1]))
    assert so.last_used("upfirdn2d") == "ref"


# --------------------------------------------------------------------------------------------
# Kernel vs twin: forward, gradient, and the gradient of the gradient.

# host: the extension built with nvcc/ninja for the CPU (a cold build takes about a minute: slow)
BACKENDS = [pytest.param("cuda", marks=pytest.mark.cuda), pytest.param("host", marks=pytest.mark.slow)]


def _host_kernel(ext, x, f, up=1, down=1, padding=0, flip_filter=False, gain=1.0):
    return _upfirdn2d._apply_kernel(ext, x, f, _upfirdn2d._geometry(up, down, padding, flip_filter, gain))


@pytest.fixture
def kernel(request):
    """A callable running upfirdn2d through the kernel on the given backend, and its device."""
    return kernel_backend(request, "upfirdn2d", lambda x, f, **kw: so.upfirdn2d(x, f, impl="cuda", **kw), _host_kernel)


TOL = {torch.float64: dict(rtol=1e-7, atol=1e-7), torch.float32: dict(rtol=1e-4, atol=1e-4),
       torch.float16: dict(rtol=2e-2, atol=2e-2)}


def _grads(fn, x, w, v):
    y = fn(x)
    (gx,) = torch.autograd.grad((y * w).sum(), [x], create_graph=True)
    (gw,) = torch.autograd.grad((gx * v).sum(), [w])
    return y, gx, gw


@pytest.mark.parametrize("kernel", BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("up, down, padding, fshape, flip, gain", CONFIGS)
def test_kernel_matches_twin(kernel, dtype, up, down, padding, fshape, flip, gain):
    run, device = kernel
    kw = dict(up=up, down=down, padding=padding, flip_filter=flip, gain=gain)
    f = _filter(fshape)
    x0 = torch.randn(2, 5, 11, 9).to(dtype).double()
    with torch.no_grad():
        y_shape = so.upfirdn2d(x0, f, impl="ref", **kw).shape
    w0 = torch.randn(y_shape).to(dtype).double()
    v0 = torch.randn(x0.shape).to(dtype).double()
    dev_f = None if f is None else f.to(device)
    got = _grads(lambda x: run(x, dev_f, **kw), *(t.to(device, dtype).requires_grad_() for t in (x0, w0, v0)))
    want = _grads(lambda x: so.upfirdn2d(x, f, impl="ref", **kw), *(t.clone().requires_grad_() for t in (x0, w0, v0)))
    for name, g, r in zip(["y", "dx", "d2w"], got, want):
        assert g.dtype == dtype and g.shape == r.shape, name
        scale = max(1.0, float(r.detach().abs().max()))
        torch.testing.assert_close(g.detach().cpu().double() / scale, r.detach() / scale, **TOL[dtype],
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("kernel", BACKENDS, indirect=True)
@pytest.mark.parametrize("helper", ["upsample2d", "downsample2d", "filter2d"])
def test_kernel_matches_twin_channels_last_helpers(kernel, helper):
    run, device = kernel
    x = torch.randn(2, 8, 10, 10).to(device).to(memory_format=torch.channels_last)
    f = so.setup_filter([1, 3, 3, 1], device=device)
    fn = getattr(so, helper)
    want = fn(x.cpu(), f.cpu(), impl="ref")
    if device == "cuda":
        got = fn(x, f, impl="cuda")
    else:  # route the helper's upfirdn2d call through the host kernel
        import unittest.mock

        with unittest.mock.patch.object(_upfirdn2d, "upfirdn2d", lambda x, f, impl="auto", **kw: run(x, f, **kw)):
            got = getattr(_upfirdn2d, helper)(x, f)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)
