"""Benchmark FALCO's optimisation loop: every speed switch vs one face at a time in fp32 (the original).

Full-size, randomly initialised networks (StyleGAN2 at --resolutions, ArcFace IR-SE50, FaRL
ViT-B/16): the timings are those of the real models, the outputs are meaningless. The
reference is the loop of the original implementation: one face at a time, fp32, grouped
modulated convolutions, the real faces' features and the frozen layers recomputed at every
step. Every variant is timed in the same process after a warm-up run (cuDNN autotuning,
torch.compile) and reported as faces/s, seconds per face, the speed-up over the reference,
peak GPU memory, TFLOP/s (FLOPs counted on fake tensors by torch's FlopCounterMode for one
step of the fp32 loop, so every variant is credited with the same useful work) and the
fraction of --peak-tflops. Accuracy of each variant against batched fp32 (the same faces, the
same batch) is printed as the largest relative difference of the final total loss and the
mean / max absolute difference of the rendered images (pixels in [-1, 1]).

    python scripts/bench_anonymize.py --device cuda --resolutions 256,512,1024 --batch-sizes 1,4,16,64 --steps 50
    python scripts/bench_anonymize.py --device cpu --resolutions 256 --batch-sizes 2 --steps 2 \\
        --variants fp32,no-cache,dense,channels-last,bf16      # CPU harness check
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from falco.latent.optimise import FalcoParams, OptimResult, optimise
from falco.latent.invert import render_256
from falco.latent.losses import identity_margin_loss, token_l1_loss
from falco.models.arcface import Backbone, IdentityEncoder
from falco.models.farl import FaRLConfig, FaRLEncoder, build_visual
from falco.models.stylegan2 import Generator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import full_networks, to_fake  # noqa: E402

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 tensor-core peaks

#: name -> FalcoParams changes from batched fp32 (the base every other variant is compared with)
VARIANTS: dict[str, dict] = {
    "fp32": {},
    "no-cache": dict(cache_frozen=False),
    "dense": dict(fused_modconv=False),
    "channels-last": dict(channels_last=True),
    "bf16": dict(amp="bf16"),
    "bf16-nets-only": dict(amp="bf16", num_fp16_res=0),
    "fp16": dict(amp="fp16"),
    "compile": dict(compile="inductor"),
    "fast": dict(amp="bf16", channels_last=True, compile="inductor"),
    "loss@256": dict(loss_resolution=256),
    "fast+loss@256": dict(amp="bf16", channels_last=True, compile="inductor", loss_resolution=256),
    "twin-ops": {},
}
#: variants that differ by environment: the pure-PyTorch twins instead of the CUDA kernels
VARIANT_ENV: dict[str, dict[str, str]] = {"twin-ops": {"FALCO_OPS": "ref"}}


def build(res: int, device: torch.device):
    """Full-size, randomly initialised networks on ``device``."""
    torch.manual_seed(0)
    G = Generator(img_resolution=res).to(device).eval().requires_grad_(False)
    id_encoder = IdentityEncoder(Backbone(50, "ir_se").eval()).to(device)
    farl = FaRLEncoder(build_visual(FaRLConfig())).to(device)
    return G, id_encoder, farl


def codes(G, n: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n real codes (with their renders as the real crops) and n fake codes."""
    g = torch.Generator(device="cpu").manual_seed(1)
    with torch.no_grad():
        w_real = G.mapping(torch.randn(n, G.z_dim, generator=g).to(device), truncation_psi=0.7)
        w_fake = G.mapping(torch.randn(n, G.z_dim, generator=g).to(device), truncation_psi=0.7)
        ws_real = w_real[:, None].repeat(1, G.num_ws, 1)
        x_real = render_256(G, ws_real).clamp(-1, 1)
    return ws_real, w_fake[:, None].repeat(1, G.num_ws, 1), x_real


def reference_loop(ws_real, ws_fake, x_real, G, id_encoder, farl, params: FalcoParams) -> torch.Tensor:
    """The original FALCO loop: one face at a time, fp32, real features recomputed every step.

    ``optimise`` on one face at a time gives these codes bit for bit; batched, it differs by float
    rounding (other kernel blocking), which Adam amplifies in components with near-zero gradients.
    """
    start, end = params.layers
    out = []
    for i in range(ws_real.shape[0]):
        w_train = ws_fake[i:i + 1, start:end].clone().requires_grad_(True)
        opt = torch.optim.Adam([w_train], lr=params.lr)
        milestones = sorted({int(f * params.steps) for f in params.lr_milestones})
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=params.lr_gamma)
        for _ in range(params.steps):
            ws = torch.cat([ws_real[i:i + 1, :start], w_train, ws_real[i:i + 1, end:]], dim=1)
            img = render_256(G, ws)
            x = x_real[i:i + 1]
            loss = params.lambda_id * identity_margin_loss(id_encoder(img), id_encoder(x), params.m) + \
                params.lambda_attr * token_l1_loss(farl.tokens(img), farl.tokens(x))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        out.append(torch.cat([ws_real[i:i + 1, :start], w_train.detach(), ws_real[i:i + 1, end:]], dim=1))
    return torch.cat(out)


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """Set environment variables for the duration of the block."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device):
    """(result, seconds, peak GPU GiB) of ``fn()``."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t0 = time.perf_counter()
    result = fn()
    sync(device)
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return result, time.perf_counter() - t0, mem


@functools.cache
def step_flops(res: int, batch: int, loss_resolution: int | None) -> float:
    """FLOPs of one optimisation step of ``batch`` faces, counted on fake tensors (nothing runs).

    Counted on the dense modulated convolutions (the same arithmetic as the grouped ones):
    torch's counter charges a grouped convolution's weight gradient ``groups`` times over.
    """
    mode = FakeTensorMode()
    G, id_encoder, farl = (to_fake(m, mode) for m in full_networks(res))
    with mode:
        ws, x = torch.randn(batch, G.num_ws, G.w_dim), torch.rand(batch, 3, 256, 256)
        counts = []
        for steps in (1, 2):  # the difference removes the once-per-batch work
            with FlopCounterMode(display=False) as counter:
                optimise(ws, ws, x, G, id_encoder, farl, params=FalcoParams(steps=steps, loss_resolution=loss_resolution,
                                                                            fused_modconv=False))
            counts.append(counter.get_total_flops())
    return float(counts[1] - counts[0])


def accuracy(out: OptimResult, base: OptimResult, G) -> tuple[float, float, float]:
    """(max relative |final total loss - base|, mean |image - base|, max |image - base|)."""
    rel = float(((out.losses["total"][-1] - base.losses["total"][-1]).abs()
                 / base.losses["total"][-1].abs().clamp_min(1e-12)).max())
    with torch.no_grad():
        d = (G.synthesis(out.ws) - G.synthesis(base.ws)).abs()
    return rel, float(d.mean()), float(d.max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--resolutions", default="256,512,1024")
    ap.add_argument("--batch-sizes", default="1,4,16,64")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--reference-faces", type=int, default=2, help="faces timed in the reference loop")
    ap.add_argument("--no-warmup", action="store_true", help="time the first run too (compilation included)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak (default: by GPU name)")
    args = ap.parse_args()
    device = torch.device(args.device)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"steps {args.steps}, peak {peak or '?'} TFLOP/s, warm-up {'off' if args.no_warmup else 'on'}")
    print(f"{'res':>5} {'variant':<19} {'batch':>5} {'faces/s':>9} {'s/face':>8} {'x ref':>7} {'GiB':>6} "
          f"{'TFLOP/s':>8} {'%peak':>6} {'dloss':>8} {'|dimg|':>8} {'max':>8}")
    base_params = FalcoParams(steps=args.steps)
    for res in (int(r) for r in args.resolutions.split(",")):
        G, id_encoder, farl = build(res, device)
        nets = (G, id_encoder, farl)
        ws_r, ws_f, x_r = codes(G, args.reference_faces, device)
        if not args.no_warmup:
            reference_loop(ws_r[:1], ws_f[:1], x_r[:1], *nets, FalcoParams(steps=1))
        _, t_ref, mem = timed(functools.partial(reference_loop, ws_r, ws_f, x_r, *nets, base_params), device)
        ref_fps = args.reference_faces / t_ref
        print(f"{res:>5} {'reference (fp32, 1)':<19} {1:>5} {ref_fps:>9.3f} {1 / ref_fps:>8.2f} {1.0:>7.1f} {mem:>6.1f}",
              flush=True)
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            ws_r, ws_f, x_r = codes(G, bs, device)
            base = None
            for name in names:
                changes = VARIANTS[name]
                if changes.get("loss_resolution", res) >= res and "loss_resolution" in changes:
                    continue  # loss@256 at 256 px is plain fp32
                params = FalcoParams(steps=args.steps, **changes)
                flops = step_flops(res, bs, params.loss_resolution) * args.steps
                try:
                    with environment(VARIANT_ENV.get(name, {})):
                        if not args.no_warmup:
                            optimise(ws_r, ws_f, x_r, *nets, params=replace(params, steps=1))
                        out, t, mem = timed(functools.partial(optimise, ws_r, ws_f, x_r, *nets, params=params),
                                            device)
                except torch.OutOfMemoryError:
                    print(f"{res:>5} {name:<19} {bs:>5}  out of memory", flush=True)
                    torch.cuda.empty_cache()
                    continue
                if base is None and not changes and name not in VARIANT_ENV:
                    base = out
                dloss, dimg, dmax = accuracy(out, base, G) if base is not None else (float("nan"),) * 3
                fps = bs / t
                tflops = flops / t / 1e12
                pct = f"{100 * tflops / peak:>6.1f}" if peak else f"{'?':>6}"
                print(f"{res:>5} {name:<19} {bs:>5} {fps:>9.3f} {1 / fps:>8.2f} {fps / ref_fps:>7.1f} {mem:>6.1f} "
                      f"{tflops:>8.3f} {pct} {dloss:>8.1e} {dimg:>8.1e} {dmax:>8.1e}", flush=True)
        del G, id_encoder, farl, nets
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
