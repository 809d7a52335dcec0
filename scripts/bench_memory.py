"""Estimate the peak device memory of FALCO's optimisation loop, without a GPU.

ESTIMATES OF TENSOR MEMORY ON FAKE TENSORS, NOT A GPU MEASUREMENT.

``falco.latent.optimise.optimise`` runs for ``--steps`` steps (1 is enough: the peak is reached in
the first step's backward; Adam's state is allocated in the step after it) with full-size,
randomly initialised networks: StyleGAN2 at each of ``--resolutions``, ArcFace IR-SE50 and
FaRL ViT-B/16. Everything runs under ``torch._subclasses.fake_tensor.FakeTensorMode``: tensors
have shapes, dtypes and strides but no data, no kernel runs and no memory is allocated, so the
1024-px loop at batch 64 costs a few seconds of CPU.

How the estimate is made: a ``TorchDispatchMode`` above the fake mode sees every op's outputs,
adds the ``nbytes`` of each new untyped storage (rounded up to 512 bytes, the CUDA caching
allocator's block size) to a running total, and subtracts it when the storage dies (a weakref
callback). The networks' weights and buffers and the inputs (``ws_real``, ``ws_fake``,
``x_real``) are counted from the start. The peak of the running total, taken after every op,
is the estimate: weights + inputs + saved activations + temporaries + the trainable W+ layers
with their gradients and Adam state (the networks are frozen: no weight gradients).

What it does not see (hence ``--headroom``, 10 % by default, taken off each budget): the CUDA
context (~0.5 GiB), the caching allocator's fragmentation and rounding of large blocks,
cuDNN / cuBLAS workspaces, and memory a kernel allocates internally. The fake tensors live on
the CPU, so the StyleGAN2 ops take their pure-PyTorch twins (``stylegan2_ops`` ``impl='ref'``);
the CUDA kernels of ``bias_act`` / ``upfirdn2d`` save fewer intermediates for backward, so for
the generator this is an upper bound. By default everything is fp32; ``--param amp=bf16`` runs
under CPU autocast, whose op lists are close to, not the same as, CUDA's.

    python scripts/bench_memory.py --resolutions 256,512,1024 --batch-sizes 1,2,4,8,16,32,64
    python scripts/bench_memory.py --resolutions 1024 --loss-resolution 256
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import gc
import math
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from falco.latent.optimise import FalcoParams, optimise
from falco.models.arcface import Backbone, IdentityEncoder
from falco.models.farl import FaRLConfig, FaRLEncoder, build_visual
from falco.models.stylegan2 import Generator

GiB = 2**30
#: The CUDA caching allocator hands out blocks in multiples of 512 bytes.
CUDA_BLOCK = 512
HEADER = "ESTIMATES of tensor memory on fake tensors (FakeTensorMode), NOT a GPU measurement."

Networks = tuple[nn.Module, nn.Module, nn.Module]  # G, id_encoder, farl


class LiveTensorMemory(TorchDispatchMode):
    """Bytes of the live tensor storages seen while active, and their peak.

    Storages enter when an op returns them or through :meth:`register`; they leave when the
    storage is freed (weakref callback). Works the same on real and on fake tensors.

    Args:
        block: Each storage's size is rounded up to a multiple of this (512: CUDA allocator).
    """

    def __init__(self, block: int = CUDA_BLOCK) -> None:
        super().__init__()
        self.block = block
        self.current = 0
        self.peak = 0
        self.by_category: dict[str, int] = {}
        self.peak_by_category: dict[str, int] = {}
        self._live: dict[int, tuple[weakref.ref, int, str]] = {}

    def _size(self, nbytes: int) -> int:
        return self.block * math.ceil(nbytes / self.block) if self.block > 1 else nbytes

    def _add(self, t: torch.Tensor, category: str) -> None:
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse / storage-less tensors
            return
        key = id(st)
        size = self._size(st.nbytes())
        entry = self._live.get(key)
        if entry is not None:
            ref, old, cat = entry
            if old != size:  # resized in place (``out=`` ops, ``resize_``)
                self._live[key] = (ref, size, cat)
                self._change(cat, size - old)
            return
        self._live[key] = (weakref.ref(st, lambda _, key=key: self._free(key)), size, category)
        self._change(category, size)

    def _free(self, key: int) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self._change(entry[2], -entry[1])

    def _change(self, category: str, delta: int) -> None:
        self.current += delta
        self.by_category[category] = self.by_category.get(category, 0) + delta
        if self.current > self.peak:
            self.peak = self.current
            self.peak_by_category = dict(self.by_category)

    def register(self, category: str, *tensors: torch.Tensor) -> None:
        """Count tensors that exist already (weights, inputs) under ``category``."""
        for t in tensors:
            self._add(t, category)

    def __torch_dispatch__(self, func: Callable[..., Any], types: tuple[type, ...], args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t, "run")
        return out


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak tensor memory of one run of :func:`falco.latent.optimise.optimise` (bytes)."""

    resolution: int
    batch: int
    fake: bool
    weights: int  # the networks' parameters and buffers
    inputs: int  # ws_real, ws_fake, x_real
    trainable: int  # the W+ layers optimised + their gradients + Adam state, after the last step
    peak: int  # everything live at the peak

    @property
    def activations(self) -> int:
        """What the loop itself holds at the peak (saved activations, temporaries, Adam)."""
        return self.peak - self.weights - self.inputs


def full_networks(resolution: int) -> Networks:
    """The real architectures, uninitialised (meta device; FaRL in uninitialised CPU memory)."""
    with torch.device("meta"):
        G = Generator(img_resolution=resolution).eval().requires_grad_(False)
        id_encoder = IdentityEncoder(Backbone(50, "ir_se").eval())
    farl = FaRLEncoder(build_visual(FaRLConfig(), init_weights=False))
    return G, id_encoder, farl


def to_fake(module: nn.Module, mode: FakeTensorMode) -> nn.Module:
    """Replace every parameter and buffer of ``module`` by a fake CPU tensor of ``mode``, in place.

    Shared tensors stay shared. Works on meta and real modules; the data is not read.
    """
    memo: dict[int, torch.Tensor] = {}

    def fake(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in memo:
            with mode:
                memo[id(t)] = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cpu")
        return memo[id(t)]

    for m in module.modules():
        for name, p in m._parameters.items():
            if p is not None:
                m._parameters[name] = nn.Parameter(fake(p), requires_grad=p.requires_grad)
        for name, b in m._buffers.items():
            if b is not None:
                m._buffers[name] = fake(b)
    return module


@contextlib.contextmanager
def _optimizer_bytes(block: int) -> Iterator[list[int]]:
    """Yields a list that gets, after each optimizer step, the bytes of its params, grads and state."""
    seen: list[int] = []

    def hook(opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        tensors = [p for g in opt.param_groups for p in g["params"]]
        tensors += [p.grad for p in tensors if p.grad is not None]
        tensors += [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        storages = {id(t.untyped_storage()): t.untyped_storage().nbytes() for t in tensors}
        seen.append(sum(block * math.ceil(n / block) for n in storages.values()))

    handle = register_optimizer_step_post_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def _tensors(modules: Iterable[nn.Module]) -> list[torch.Tensor]:
    return [t for m in modules for t in (*m.parameters(), *m.buffers())]


def measure(nets: Networks, batch: int, params: FalcoParams, *, mode: FakeTensorMode | None = None,
            block: int = CUDA_BLOCK) -> MemoryEstimate:
    """Run ``optimise`` once on random inputs of ``batch`` faces and return its peak tensor memory.

    With ``mode``, ``nets`` must be fake tensors of that mode (:func:`to_fake`) and nothing is
    computed; without it the run is real (CPU), for checking the fake estimate.
    """
    G, id_encoder, farl = nets
    gc.collect()
    with mode if mode is not None else contextlib.nullcontext():
        ws_real = torch.randn(batch, G.num_ws, G.w_dim)
        ws_fake = torch.randn(batch, G.num_ws, G.w_dim)
        x_real = torch.rand(batch, 3, 256, 256) * 2 - 1
        with _optimizer_bytes(block) as trainable, LiveTensorMemory(block) as mem:
            mem.register("weights", *_tensors(nets))
            mem.register("inputs", ws_real, ws_fake, x_real)
            optimise(ws_real, ws_fake, x_real, G, id_encoder, farl, params=params)
    return MemoryEstimate(
        resolution=G.img_resolution, batch=batch, fake=mode is not None,
        weights=mem.peak_by_category.get("weights", 0), inputs=mem.peak_by_category.get("inputs", 0),
        trainable=max(trainable, default=0), peak=mem.peak,
    )


def estimate(build: Callable[[], Networks], batch_sizes: Sequence[int], params: FalcoParams, *,
             fake: bool = True, block: int = CUDA_BLOCK) -> list[MemoryEstimate]:
    """Build the networks once (``build()``) and :func:`measure` each batch size.

    ``fake=True`` converts them to fake tensors first (no memory, no compute); ``fake=False``
    runs for real on the CPU, with the same tracker (for tests on tiny networks).
    """
    nets = build()
    mode = None
    if fake:
        mode = FakeTensorMode()
        nets = tuple(to_fake(m, mode) for m in nets)  # type: ignore[assignment]
    return [measure(nets, b, params, mode=mode, block=block) for b in batch_sizes]


def largest_fitting(rows: Sequence[MemoryEstimate], usable: float) -> tuple[int | None, int | None]:
    """(largest measured batch with peak <= ``usable`` bytes, batch a linear fit of peak(batch) allows)."""
    fits = [r.batch for r in rows if r.peak <= usable]
    measured = max(fits) if fits else None
    if len(rows) < 2:
        return measured, None
    a, b = rows[-2], rows[-1]
    per_face = (b.peak - a.peak) / (b.batch - a.batch)
    if per_face <= 0:
        return measured, None
    fit = math.floor((usable - (b.peak - per_face * b.batch)) / per_face)
    return measured, max(fit, 0)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key.strip(), value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolutions", default="256,512,1024", type=_ints)
    ap.add_argument("--batch-sizes", default="1,2,4,8,16,32,64", type=_ints)
    ap.add_argument("--steps", type=int, default=1, help="optimisation steps per run (peak: first step)")
    ap.add_argument("--loss-resolution", type=int, default=None,
                    help="FalcoParams(loss_resolution=...): render the losses' image at this resolution")
    ap.add_argument("--budgets", default="24,80", type=lambda s: [float(x) for x in s.split(",")],
                    help="GPU memory sizes in GiB")
    ap.add_argument("--headroom", type=float, default=0.10,
                    help="fraction of each budget kept free for what is not counted (default 0.10)")
    ap.add_argument("--param", type=_param, action="append", default=[], metavar="KEY=VALUE",
                    help="any other FalcoParams field, e.g. --param amp=bf16 (CPU autocast stands in for CUDA's)")
    args = ap.parse_args()
    params = FalcoParams(**{"steps": args.steps, "loss_resolution": args.loss_resolution, **dict(args.param)})
    batch_sizes = sorted(set(args.batch_sizes))

    print(HEADER)
    print("Peak = weights + inputs + activations/temporaries + trainable W+ layers, grads and Adam "
          "state (networks frozen);")
    print(f"storages rounded to {CUDA_BLOCK} B; StyleGAN2 ops by their pure-PyTorch twins (upper bound "
          f"for the CUDA kernels).")
    changed = {k: v for k, v in params.as_dict().items() if v != FalcoParams().as_dict()[k]}
    print(f"FalcoParams changes from the defaults: {changed or 'none'}.")
    print(f"Budgets keep {args.headroom:.0%} headroom for the CUDA context, allocator fragmentation and "
          f"cuDNN/cuBLAS workspaces (not counted): usable = budget x {1 - args.headroom:.2f}.")
    print()
    print(f"{'res':>5} {'batch':>5} {'weights':>8} {'inputs':>8} {'W+/Adam':>8} {'activ.':>8} {'peak':>8} "
          f"{'GiB/face':>8}   " + " ".join(f"{f'<={b:g}G':>6}" for b in args.budgets))
    summary: list[str] = []
    t0 = time.perf_counter()
    for res in args.resolutions:
        rows = estimate(lambda res=res: full_networks(res), batch_sizes, params)
        for r in rows:
            fits = " ".join(f"{'yes' if r.peak <= b * GiB * (1 - args.headroom) else 'no':>6}" for b in args.budgets)
            print(f"{res:>5} {r.batch:>5} {r.weights / GiB:>8.2f} {r.inputs / GiB:>8.3f} {r.trainable / GiB:>8.4f} "
                  f"{r.activations / GiB:>8.2f} {r.peak / GiB:>8.2f} {r.activations / r.batch / GiB:>8.3f}   {fits}")
        for budget in args.budgets:
            usable = budget * GiB * (1 - args.headroom)
            measured, fit = largest_fitting(rows, usable)
            fit_text = f", linear fit of the two largest batches allows ~{fit}" if fit is not None else ""
            summary.append(f"{res:>5} px, {budget:g} GiB GPU ({usable / GiB:.1f} GiB usable): largest measured "
                           f"batch {measured if measured is not None else 'none'}{fit_text}")
    print()
    print("Largest batch per budget (" + HEADER.split(" (")[0].lower() + "):")
    print("\n".join(summary))
    print(f"\n({time.perf_counter() - t0:.0f} s on the CPU, no GPU memory used)")


if __name__ == "__main__":
    main()
