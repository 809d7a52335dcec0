#!/usr/bin/env python
"""Time stylegan2_ops' CUDA kernels against their pure-PyTorch twins.

Shapes are those of a 1024-px StyleGAN2 generator (config-f): fused bias+lrelu after the
convolutions of the 64, 256 and 1024 px blocks, the blur after each x2 transposed convolution
(a 4x4 filter on a (2H+1)-px map, padding 1), and the x2 FIR upsampling of the RGB skip.
Each case is timed forward only and forward+backward, in float32 and float16.

Without a GPU it times the twins on the CPU (smaller batch, resolution capped at 256 px) and
says that CUDA is unavailable.

Usage: python scripts/bench_ops.py [--batch 4] [--iters 20] [--warmup 3] [--max-res 1024]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
import stylegan2_ops as so  # noqa: E402

# (label, op, channels, resolution): resolution is the block's output size.
CASES = [
    ("bias+lrelu  64px x512ch", "bias_act", 512, 64),
    ("bias+lrelu 256px x128ch", "bias_act", 128, 256),
    ("bias+lrelu 1024px x32ch", "bias_act", 32, 1024),
    ("blur(up)    64px x512ch", "blur", 512, 64),
    ("blur(up)   256px x128ch", "blur", 128, 256),
    ("blur(up)  1024px x32ch", "blur", 32, 1024),
    ("rgb upsample 1024px", "upsample", 3, 1024),
]


def make_case(op: str, batch: int, channels: int, res: int, dtype: torch.dtype, device: str):
    """(input, function of (x, impl)) for one benchmark case."""
    if op == "bias_act":
        x = torch.randn(batch, channels, res, res, dtype=dtype, device=device)
        b = torch.randn(channels, dtype=dtype, device=device)
        return x, lambda x, impl: so.bias_act(x, b, act="lrelu", impl=impl)
    f = so.setup_filter([1, 3, 3, 1], device=device)
    if op == "blur":  # StyleGAN2 up-conv: conv_transpose output is (res + 1) px, blurred with pad 1
        x = torch.randn(batch, channels, res + 1, res + 1, dtype=dtype, device=device)
        return x, lambda x, impl: so.upfirdn2d(x, f * 4, padding=[1, 1, 1, 1], impl=impl)
    x = torch.randn(batch, channels, res // 2, res // 2, dtype=dtype, device=device)
    return x, lambda x, impl: so.upsample2d(x, f, impl=impl)


def time_ms(fn: Callable[[], None], device: str, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e3


def bench_one(x: torch.Tensor, op_fn, impl: str, backward: bool, device: str, iters: int, warmup: int) -> float:
    x = x.detach().requires_grad_(backward)
    grad = None

    def step() -> None:
        nonlocal grad
        y = op_fn(x, impl)
        if backward:
            if grad is None:
                grad = torch.randn_like(y)
            x.grad = None
            y.backward(grad)

    with torch.set_grad_enabled(backward):
        return time_ms(step, device, iters, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 4 on GPU, 1 on CPU)")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default 20 on GPU, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations (default 3 on GPU, 1 on CPU)")
    parser.add_argument("--max-res", type=int, default=None,
                        help="skip cases above this resolution (default 1024 on GPU, 256 on CPU)")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    batch = args.batch or (4 if cuda else 1)
    iters = args.iters or (20 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    max_res = args.max_res or (1024 if cuda else 256)
    dtypes = [torch.float32, torch.float16] if cuda else [torch.float32]

    status = so.impl_status()
    print(f"torch {torch.__version__}, device: {torch.cuda.get_device_name() if cuda else 'cpu'}")
    print(f"ops: bias_act={status['bias_act']!r}, upfirdn2d={status['upfirdn2d']!r}")
    if cuda:
        start = time.perf_counter()
        so.build_extension("bias_act")
        so.build_extension("upfirdn2d")
        print(f"CUDA extensions ready in {time.perf_counter() - start:.1f} s")
    else:
        print("CUDA is unavailable: timing the pure-PyTorch twins on the CPU only.")
    print(f"batch {batch}, {iters} iterations after {warmup} warm-up\n")

    header = f"{'case':26s} {'dtype':8s} {'pass':9s} {'ref ms':>9s}"
    if cuda:
        header += f" {'cuda ms':>9s} {'ref/cuda':>9s}"
    print(header)
    print("-" * len(header))
    for label, op, channels, res in CASES:
        if res > max_res:
            continue
        for dtype in dtypes:
            x, op_fn = make_case(op, batch, channels, res, dtype, device)
            for backward in (False, True):
                line = f"{label:26s} {str(dtype).replace('torch.', ''):8s} {'fwd+bwd' if backward else 'fwd':9s}"
                ref = bench_one(x, op_fn, "ref", backward, device, iters, warmup)
                line += f" {ref:9.3f}"
                if cuda:
                    fast = bench_one(x, op_fn, "cuda", backward, device, iters, warmup)
                    line += f" {fast:9.3f} {ref / fast:8.2f}x"
                print(line, flush=True)
            del x
            if cuda:
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
