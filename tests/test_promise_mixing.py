"""The promises of ``falco.latent.optimise`` that ``scripts/mutants.sh mixing`` found unguarded.

Each expectation comes from the documented contract (the module's and ``FalcoParams``'s
docstrings: per-face fp16 loss scaling with ``GradScaler``'s rule, skipped steps counted per
face, which switch reaches which network), from arithmetic done here by hand, or from a second
computation (a run without the disturbance), never from the output of the code under test.

Fast: stand-in networks of a few hundred weights (no generator), CPU, a few steps; the frozen-
layer cache is checked on the tiny random model set. ``scripts/mutants.sh`` runs this file for
``mixing``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import falco.latent.optimise as om
from falco.errors import InputError, RunAbortedError
from falco.latent.optimise import FalcoParams, _FaceScaler, optimise, too_many_skipped
from tests.test_anonymize import _InfGrad

NUM_WS, W_DIM = 10, 8


# --- stand-in networks that record how they were called ----------------------------------

class _G(nn.Module):
    """A generator stand-in: a 256-px image from a fixed linear map of each face's code (so each
    face's image depends on its own code only), with the signatures and defaults of
    ``Generator.synthesis`` and ``frozen_prefix``; records the arguments of every call.
    ``frozen``: it also offers ``frozen_prefix``."""

    num_ws, w_dim = NUM_WS, W_DIM

    def __init__(self, frozen: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.proj = nn.Parameter(torch.randn(NUM_WS * W_DIM, 3 * 8 * 8, generator=g) * 0.3, requires_grad=False)
        self.calls: list[dict] = []
        self.prefix_calls: list[tuple] = []
        if frozen:
            self.frozen_prefix = self._frozen_prefix

    def _frozen_prefix(self, ws, num_frozen_ws, noise_mode="const", *, channels_last=False):
        prefix = object()
        self.prefix_calls.append((ws, num_frozen_ws, dict(noise_mode=noise_mode, channels_last=channels_last), prefix))
        return prefix

    def synthesis(self, ws, noise_mode="const", *, max_resolution=None, prefix=None, fused_modconv=True,
                  channels_last=False, num_fp16_res=0, fp16_dtype=torch.float16):
        self.calls.append(dict(noise_mode=noise_mode, max_resolution=max_resolution, prefix=prefix,
                               fused_modconv=fused_modconv, channels_last=channels_last, num_fp16_res=num_fp16_res,
                               fp16_dtype=fp16_dtype))
        img = torch.tanh(ws.flatten(1) @ self.proj).view(-1, 3, 8, 8)
        return img.repeat_interleave(32, dim=2).repeat_interleave(32, dim=3)  # 256 px, contiguous


class _Encoder(nn.Module):
    """ArcFace stand-in (a linear map of the 4x4-pooled image); records, per call, whether gradients
    were on, the autocast state and whether the input was channels-last. ``overflow``: step ->
    faces whose gradient it makes infinite at that optimisation step."""

    def __init__(self, overflow: dict[int, list[int]] | None = None):
        super().__init__()
        g = torch.Generator().manual_seed(2)
        self.lin = nn.Linear(48, 16)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(16, 48, generator=g))
            self.lin.bias.copy_(torch.randn(16, generator=g))
        self.lin.requires_grad_(False)
        self.overflow, self.steps, self.seen = overflow or {}, 0, []

    def forward(self, x):
        self.seen.append(_state(x))
        y = self.lin(F.adaptive_avg_pool2d(x, 4).flatten(1))
        if not torch.is_grad_enabled():
            return y
        step, self.steps = self.steps, self.steps + 1
        rows = self.overflow.get(step, [])
        return _InfGrad.apply(y, rows) if rows else y


class _Farl(nn.Module):
    """FaRL stand-in: ``tokens(x)`` = a class token and a 4x4 grid of patch tokens (N = 17, C = 4)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.lin = nn.Linear(3, 4)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(4, 3, generator=g))
            self.lin.bias.zero_()
        self.lin.requires_grad_(False)
        self.seen = []

    def tokens(self, x):
        self.seen.append(_state(x))
        patches = self.lin(F.adaptive_avg_pool2d(x, 4).flatten(2).transpose(1, 2))  # [B, 16, 4]
        return torch.cat([patches.mean(1, keepdim=True), patches], dim=1)


def _state(x: torch.Tensor) -> dict:
    return dict(grad=torch.is_grad_enabled(), autocast=torch.is_autocast_enabled("cpu"),
                dtype=torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None,
                channels_last=x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())


def _codes(n: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ws_real = torch.randn(n, NUM_WS, W_DIM, generator=g)
    ws_fake = torch.randn(n, NUM_WS, W_DIM, generator=g)
    x_real = torch.rand(n, 3, 256, 256, generator=g) * 2 - 1
    return ws_real, ws_fake, x_real


def _start(ws_real, ws_fake, layers=(3, 8)):
    s, e = layers
    return torch.cat([ws_real[:, :s], ws_fake[:, s:e], ws_real[:, e:]], dim=1)


def _run(params: FalcoParams, G=None, enc=None, farl=None, n: int = 2, **kwargs):
    ws_real, ws_fake, x_real = _codes(n)
    return optimise(ws_real, ws_fake, x_real, G or _G(), enc or _Encoder(), farl or _Farl(), params=params, **kwargs)


# --- FalcoParams / too_many_skipped ------------------------------------------------------

@pytest.mark.parametrize("focus", [0.0, 0.5, 1.0])
def test_region_focus_bounds_are_inclusive(focus):
    # docstring: the share of the weights that follows the parts, in [0, 1]
    assert FalcoParams(region_focus=focus).region_focus == focus


@pytest.mark.parametrize("skipped, steps, expected", [(0, 4, False), (1, 4, False), (2, 4, False), (3, 4, True),
                                                      (4, 4, True), (25, 50, False), (26, 50, True), (0, 0, False)])
def test_too_many_skipped_means_more_than_half_of_the_steps(skipped, steps, expected):
    # module docstring: more than MAX_SKIPPED_FRACTION (one half) of the steps means not optimised
    assert too_many_skipped(skipped, steps) is expected


# --- _FaceScaler: GradScaler's rule, one scale per face ----------------------------------

def test_face_scaler_starts_every_face_at_2_pow_10_none_clean():
    s = _FaceScaler(3, torch.device("cpu"))
    assert s.scale.tolist() == [1024.0] * 3 and s.clean.tolist() == [0, 0, 0]


def test_face_scaler_state_lives_on_the_faces_device():
    # the scales multiply the losses and mask the gradients on the device the faces are on
    s = _FaceScaler(2, torch.device("meta"))
    assert s.scale.device.type == "meta" and s.clean.device.type == "meta" and s.scale.shape == (2,)
    finite = s.unscale_([torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)])  # no grads yet
    assert finite.device.type == "meta" and finite.dtype == torch.bool and finite.shape == (2,)


def test_face_scaler_defaults_are_gradscalers_backoff_half_growth_double_every_2000():
    s = _FaceScaler(2, torch.device("cpu"))
    for _ in range(1999):
        s.update(torch.tensor([True, True]))
    assert s.scale.tolist() == [1024.0, 1024.0] and s.clean.tolist() == [1999, 1999]
    s.update(torch.tensor([True, False]))  # face 0: its 2000th clean step in a row; face 1 overflows
    assert s.scale.tolist() == [2048.0, 512.0] and s.clean.tolist() == [0, 0]


def test_face_scaler_update_follows_the_rule_step_by_step():
    # growth_interval 2, factors 2 and 0.5 written out; (scale, clean) of each face after each update
    s = _FaceScaler(2, torch.device("cpu"), init_scale=8.0, growth_interval=2)
    trace = [([True, False], [8, 4], [1, 0]),
             ([True, True], [16, 4], [0, 1]),   # face 0 grows after 2 clean steps, its count restarts
             ([True, True], [16, 8], [1, 0]),
             ([False, True], [8, 8], [0, 1]),
             ([True, True], [8, 16], [1, 0]),
             ([True, True], [16, 16], [0, 1])]
    for finite, scale, clean in trace:
        s.update(torch.tensor(finite))
        assert s.scale.tolist() == scale and s.clean.tolist() == clean


def test_face_scaler_other_factors():
    s = _FaceScaler(1, torch.device("cpu"), init_scale=100.0, growth_factor=3.0, backoff_factor=0.25, growth_interval=1)
    s.update(torch.tensor([True]))
    assert s.scale.tolist() == [300.0]
    s.update(torch.tensor([False]))
    assert s.scale.tolist() == [75.0]


def test_face_scaler_unscale_divides_each_face_by_its_own_scale_and_flags_overflows():
    s = _FaceScaler(3, torch.device("cpu"))
    s.scale = torch.tensor([4.0, 8.0, 2.0])
    rows = [torch.zeros(2, 3, requires_grad=True) for _ in range(3)]
    grads = [torch.full((2, 3), 8.0), torch.full((2, 3), 8.0), torch.tensor([[1.0, float("inf"), 0.0], [0.0] * 3])]
    for r, g in zip(rows, grads):
        r.grad = g.clone()
    finite = s.unscale_(rows)
    assert finite.dtype == torch.bool and finite.tolist() == [True, True, False]
    assert rows[0].grad.eq(2.0).all() and rows[1].grad.eq(1.0).all() and rows[2].grad[0, 0] == 0.5


def test_face_scaler_unscale_counts_a_face_without_gradient_as_finite_and_goes_on():
    s = _FaceScaler(3, torch.device("cpu"))
    s.scale = torch.tensor([4.0, 8.0, 16.0])
    rows = [torch.zeros(2, requires_grad=True) for _ in range(3)]
    rows[1].grad = torch.tensor([16.0, float("nan")])
    rows[2].grad = torch.tensor([16.0, 32.0])
    finite = s.unscale_(rows)
    assert finite.dtype == torch.bool and finite.tolist() == [True, False, True]
    assert rows[0].grad is None and rows[1].grad[0] == 2.0 and rows[2].grad.tolist() == [1.0, 2.0]


# --- the speed switches reach the networks they name ------------------------------------

@pytest.mark.parametrize("amp, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_is_the_requested_precision(amp, dtype):
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with om._autocast(torch.device("cpu"), amp):
        assert torch.is_autocast_enabled("cpu") and torch.mm(a, b).dtype == dtype
    with om._autocast(torch.device("cpu"), None):
        assert not torch.is_autocast_enabled("cpu") and torch.mm(a, b).dtype == torch.float32


def test_to_channels_last_only_when_enabled():
    x = torch.randn(2, 3, 5, 5)
    y = om._to_channels_last(x, True)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous() and torch.equal(y, x)
    assert om._to_channels_last(x, False) is x


@pytest.mark.parametrize("amp, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_amp_and_render_switches_reach_the_generator_and_the_loss_networks(amp, dtype):
    G, enc, farl = _G(), _Encoder(), _Farl()
    params = FalcoParams(steps=2, amp=amp, num_fp16_res=2, loss_resolution=32, fused_modconv=False,
                         channels_last=True)
    _run(params, G, enc, farl)
    assert len(G.calls) == 2
    for call in G.calls:
        assert call == dict(noise_mode="const", max_resolution=32, prefix=None, fused_modconv=False,
                            channels_last=True, num_fp16_res=2, fp16_dtype=dtype)
    # ArcFace and FaRL: the real crops once without gradients, then each step's render; every call
    # under the requested autocast, on channels-last images
    for net in (enc, farl):
        assert [s["grad"] for s in net.seen] == [False, True, True]
        assert all(s["autocast"] and s["dtype"] == dtype and s["channels_last"] for s in net.seen), net.seen


def test_without_amp_the_generator_and_loss_networks_run_in_fp32():
    G, enc, farl = _G(), _Encoder(), _Farl()
    _run(FalcoParams(steps=1), G, enc, farl)
    assert len(G.calls) == 1
    call = G.calls[0]  # fp16_dtype does not matter here: no generator layer runs in low precision
    assert (call["noise_mode"], call["max_resolution"], call["prefix"], call["fused_modconv"], call["channels_last"],
            call["num_fp16_res"]) == ("const", None, None, True, False, 0)
    for net in (enc, farl):
        assert [s["grad"] for s in net.seen] == [False, True]
        assert not any(s["autocast"] or s["channels_last"] for s in net.seen)


# --- cache_frozen: the frozen layers are computed once and reused at every step ----------

@pytest.mark.parametrize("layers", [(3, 8), (1, 8)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_frozen_prefix_is_computed_once_and_given_to_every_step(layers, channels_last):
    G = _G(frozen=True)
    ws_real, ws_fake, x_real = _codes()
    optimise(ws_real, ws_fake, x_real, G, _Encoder(), _Farl(),
             params=FalcoParams(steps=3, layers=layers, channels_last=channels_last))
    assert len(G.prefix_calls) == 1
    ws, start, kwargs, prefix = G.prefix_calls[0]
    assert torch.equal(ws[:, :start], ws_real[:, :start]) and start == layers[0]
    assert kwargs == {"noise_mode": "const", "channels_last": channels_last}
    assert [c["prefix"] for c in G.calls] == [prefix] * 3


def test_no_prefix_without_the_cache():
    G = _G(frozen=True)
    _run(FalcoParams(steps=2, cache_frozen=False), G)
    assert [c["prefix"] for c in G.calls] == [None, None] and G.prefix_calls == []


def test_a_generator_without_frozen_prefix_renders_from_scratch():
    G = _G(frozen=False)
    _run(FalcoParams(steps=2), G)
    assert [c["prefix"] for c in G.calls] == [None, None]


def test_frozen_layers_of_layers_1_to_8_are_computed_once_on_the_tiny_generator(tiny_nets):
    G = tiny_nets["G"]
    g = torch.Generator().manual_seed(4)
    ws_real = G.mapping(torch.randn(2, G.z_dim, generator=g))[:, None].repeat(1, G.num_ws, 1).detach()
    ws_fake = G.mapping(torch.randn(2, G.z_dim, generator=g))[:, None].repeat(1, G.num_ws, 1).detach()
    x = torch.rand(2, 3, 256, 256, generator=g) * 2 - 1
    calls = []
    hook = G.conv1.register_forward_hook(lambda *_: calls.append(1))  # the 4x4 conv, reads ws[:, 0] only
    try:
        ref = optimise(ws_real, ws_fake, x, G, tiny_nets["id_encoder"], tiny_nets["farl"],
                       params=FalcoParams(steps=2, layers=(1, 8), cache_frozen=False))
        assert len(calls) == 2  # once per step without the cache
        calls.clear()
        out = optimise(ws_real, ws_fake, x, G, tiny_nets["id_encoder"], tiny_nets["farl"],
                       params=FalcoParams(steps=2, layers=(1, 8)))
    finally:
        hook.remove()
    assert len(calls) == 1
    torch.testing.assert_close(out.ws, ref.ws, rtol=1e-5, atol=1e-6)


# --- fp16: per-face loss scale, skipped steps counted per face ----------------------------

FP16 = FalcoParams(steps=3, amp="fp16", num_fp16_res=0)


def test_fp16_face_that_always_overflows_keeps_its_start_code_and_counts_every_step():
    ws_real, ws_fake, x_real = _codes()
    start = _start(ws_real, ws_fake)
    clean = optimise(ws_real, ws_fake, x_real, _G(), _Encoder(), _Farl(), params=FP16)
    out = optimise(ws_real, ws_fake, x_real, _G(), _Encoder({s: [1] for s in range(3)}), _Farl(), params=FP16)
    assert out.skipped.dtype == torch.int64 and out.skipped.tolist() == [0, 3]
    assert clean.skipped.dtype == torch.int64 and clean.skipped.tolist() == [0, 0]
    assert torch.equal(out.ws[1], start[1])  # never stepped
    assert not torch.equal(out.ws[0], start[0])  # face 0 did
    assert torch.equal(out.ws[0], clean.ws[0])  # exactly as without face 1's overflows
    assert too_many_skipped(int(out.skipped[1]), FP16.steps)


def test_fp16_skips_are_added_up_over_the_steps():
    # face 0 overflows at steps 0 and 2, face 1 at step 1: 2 and 1 skipped steps
    out = _run(FalcoParams(steps=4, amp="fp16", num_fp16_res=0), enc=_Encoder({0: [0], 1: [1], 2: [0]}))
    assert out.skipped.tolist() == [2, 1]
    assert torch.isfinite(out.ws).all()


@pytest.mark.parametrize("amp", [None, "bf16"])
def test_only_fp16_skips_steps(amp):
    # OptimResult.skipped: "zeros unless amp='fp16'", even when a gradient is not finite
    out = _run(FalcoParams(steps=2, amp=amp), enc=_Encoder({0: [1]}))
    assert out.skipped.dtype == torch.int64 and out.skipped.tolist() == [0, 0]


def test_fp16_moves_the_codes_as_fp32_does():
    # The per-face loss scale is divided out again: fp16 steps the way fp32 does, up to fp16 rounding
    # in the loss networks. Small lambdas give small gradients (~1e-5), which Adam still normalises to
    # steps of ~lr, unless they were left scaled by the wrong power of 2**10 (~1e-11, under Adam's eps
    # 1e-8: the codes would hardly move, 0.97 of fp32's distance away). Measured: 4e-4 of the
    # distance fp32 moved the codes; the bound leaves 50x for other CPUs.
    ws_real, ws_fake, x_real = _codes()
    start = _start(ws_real, ws_fake)
    params = dict(steps=3, lr=0.05, num_fp16_res=0, lambda_id=0.01, lambda_attr=0.001)
    ref = optimise(ws_real, ws_fake, x_real, _G(), _Encoder(), _Farl(), params=FalcoParams(**params))
    out = optimise(ws_real, ws_fake, x_real, _G(), _Encoder(), _Farl(), params=FalcoParams(amp="fp16", **params))
    moved = float((ref.ws - start).norm())
    assert moved > 0
    assert float((out.ws - ref.ws).norm()) / moved < 0.02


# --- --compile: its failures stop the run, nobody else's --------------------------------

class _FakeDynamoError(RuntimeError):
    pass


class _FakeInductorError(RuntimeError):
    pass


_FakeDynamoError.__module__ = "torch._dynamo.exc"
_FakeInductorError.__module__ = "torch._inductor.exc"


def _compile_raising(monkeypatch, exc: BaseException):
    seen = []

    def fake_compile(fn, **kwargs):
        seen.append((fn, kwargs))

        def run(*args, **kw):
            raise exc
        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(om, "_compiled_losses", {})
    return seen


@pytest.mark.parametrize("cls", [_FakeDynamoError, _FakeInductorError])
def test_a_torch_compile_failure_is_a_run_aborted_error_with_its_first_line(monkeypatch, cls):
    _compile_raising(monkeypatch, cls("  backend exploded\nsecond line\n"))
    with pytest.raises(RunAbortedError) as info:
        _run(FalcoParams(steps=1, compile="eager"))
    msg = str(info.value)
    assert "--compile" in msg and "'eager'" in msg and "backend exploded" in msg and "second line" not in msg
    assert isinstance(info.value.__cause__, cls)


def test_a_torch_compile_failure_without_a_message_is_named_by_its_type(monkeypatch):
    _compile_raising(monkeypatch, _FakeDynamoError("   "))
    with pytest.raises(RunAbortedError, match="_FakeDynamoError"):
        _run(FalcoParams(steps=1, compile="eager"))


def test_under_compile_an_error_that_is_not_torch_compiles_passes_unchanged(monkeypatch):
    _compile_raising(monkeypatch, ValueError("a bug in the loss"))
    with pytest.raises(ValueError, match="a bug in the loss"):
        _run(FalcoParams(steps=1, compile="eager"))


def test_without_compile_no_error_is_blamed_on_compile(monkeypatch):
    def broken(*args, **kwargs):
        raise _FakeDynamoError("raised by torch internals")

    monkeypatch.setattr(om, "_losses", broken)
    with pytest.raises(_FakeDynamoError):
        _run(FalcoParams(steps=1))


def test_compile_compiles_the_loss_function_once_per_backend_with_static_shapes(monkeypatch):
    seen = _compile_raising(monkeypatch, RuntimeError("unused"))
    fn = om._loss_fn(FalcoParams(compile="eager"))
    assert om._loss_fn(FalcoParams(compile="eager")) is fn  # cached
    om._loss_fn(FalcoParams(compile="aot_eager"))
    assert seen == [(om._losses, dict(backend="eager", dynamic=False)), (om._losses, dict(backend="aot_eager", dynamic=False))]
    assert om._loss_fn(FalcoParams()) is om._losses


# --- what a run returns -----------------------------------------------------------------

def test_zero_steps_return_no_losses_and_no_skips():
    out = _run(FalcoParams(steps=0, amp="fp16"))
    assert out.skipped.dtype == torch.int64 and out.skipped.tolist() == [0, 0]
    assert all(v.shape == (0, 2) for v in out.losses.values())
    assert math.isnan(out.final(0)["total"])


def test_masks_of_the_wrong_batch_are_refused():
    ws_real, ws_fake, x_real = _codes()
    with pytest.raises(InputError, match="attr_masks"):
        optimise(ws_real, ws_fake, x_real, _G(), _Encoder(), _Farl(), params=FalcoParams(steps=1),
                 attr_masks=torch.ones(3, 256, 256))
