"""Benchmark FALCO's optimisation loop: batched (falco) vs one face at a time in fp32 (the original).

Full-size, randomly initialised networks (StyleGAN2 at --resolutions, ArcFace IR-SE50,
FaRL ViT-B/16): the timings are those of the real models, the outputs are meaningless.
The reference is the loop of the original implementation: one face at a time, fp32, real
features recomputed at every step. Each variant is timed in the same process and reported as
faces/s, seconds per face, the speed-up over the reference, peak GPU memory, TFLOP/s
(FLOPs counted by torch's FlopCounterMode on one step) and the fraction of --peak-tflops.
Accuracy of each variant against fp32 batched is printed (final loss and image difference).

    python scripts/bench_anonymize.py --device cuda --resolutions 256,512,1024 --batch-sizes 1,4,16,64 --steps 50
    python scripts/bench_anonymize.py --device cpu --resolutions 256 --batch-sizes 1,2 --steps 2   # harness check
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

from falco.anonymize import FalcoParams, optimise
from falco.inversion import render_256
from falco.losses import identity_margin_loss, token_l1_loss
from falco.models.arcface import Backbone, IdentityEncoder
from falco.models.farl import FaRLConfig, FaRLEncoder, build_visual
from falco.models.stylegan2 import Generator

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 tensor-core peaks


def build(res: int, device: torch.device):
    torch.manual_seed(0)
    G = Generator(img_resolution=res).to(device).eval().requires_grad_(False)
    id_encoder = IdentityEncoder(Backbone(50, "ir_se").eval()).to(device)
    farl = FaRLEncoder(build_visual(FaRLConfig())).to(device)
    return G, id_encoder, farl


def codes(G, n: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(1)
    with torch.no_grad():
        w_real = G.mapping(torch.randn(n, G.z_dim, generator=g).to(device), truncation_psi=0.7)
        w_fake = G.mapping(torch.randn(n, G.z_dim, generator=g).to(device), truncation_psi=0.7)
        ws_real = w_real[:, None].repeat(1, G.num_ws, 1)
        x_real = render_256(G, ws_real).clamp(-1, 1)
    return ws_real, w_fake[:, None].repeat(1, G.num_ws, 1), x_real


def reference_loop(ws_real, ws_fake, x_real, G, id_encoder, farl, steps: int) -> torch.Tensor:
    """The original FALCO loop: one face, fp32, real features recomputed every step."""
    out = []
    for i in range(ws_real.shape[0]):
        w_train = ws_fake[i:i + 1, 3:8].clone().requires_grad_(True)
        opt = torch.optim.Adam([w_train], lr=0.01)
        for _ in range(steps):
            ws = torch.cat([ws_real[i:i + 1, :3], w_train, ws_real[i:i + 1, 8:]], dim=1)
            img = render_256(G, ws)
            loss = 10 * identity_margin_loss(id_encoder(img), id_encoder(x_real[i:i + 1]), 0.0) + \
                0.1 * token_l1_loss(farl.tokens(img), farl.tokens(x_real[i:i + 1]))
            opt.zero_grad()
            loss.backward()
            opt.step()
        out.append(torch.cat([ws_real[i:i + 1, :3], w_train.detach(), ws_real[i:i + 1, 8:]], dim=1))
    return torch.cat(out)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t0 = time.perf_counter()
    result = fn()
    sync(device)
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return result, time.perf_counter() - t0, mem


def step_flops(ws_real, ws_fake, x_real, G, id_encoder, farl) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        optimise(ws_real, ws_fake, x_real, G, id_encoder, farl, params=FalcoParams(steps=1))
    return float(counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--resolutions", default="256,512,1024")
    ap.add_argument("--batch-sizes", default="1,4,16,64")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--reference-faces", type=int, default=2, help="faces timed in the reference loop")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak (default: by GPU name)")
    ap.add_argument("--amp", action="store_true", help="also time bf16 autocast (CUDA)")
    args = ap.parse_args()
    device = torch.device(args.device)
    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"steps {args.steps}, peak {peak or '?'} TFLOP/s")
    print(f"{'res':>5} {'variant':<18} {'batch':>5} {'faces/s':>9} {'s/face':>8} {'x ref':>7} {'GiB':>6} "
          f"{'TFLOP/s':>8} {'%peak':>6} {'|dloss|':>8} {'|dimg|':>8}")
    for res in (int(r) for r in args.resolutions.split(",")):
        G, id_encoder, farl = build(res, device)
        nref = args.reference_faces
        ws_r, ws_f, x_r = codes(G, nref, device)
        _, t_ref, mem = timed(partial(reference_loop, ws_r, ws_f, x_r, G, id_encoder, farl, args.steps), device)
        ref_fps = nref / t_ref
        print(f"{res:>5} {'reference (fp32,1)':<18} {1:>5} {ref_fps:>9.3f} {1 / ref_fps:>8.2f} {1.0:>7.1f} {mem:>6.1f}")
        variants = [("batched fp32", False, None)]
        if args.amp and device.type == "cuda":
            variants.append(("batched bf16", True, None))
        if res > 256:
            variants.append(("batched loss@256", False, 256))
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            ws_r, ws_f, x_r = codes(G, bs, device)
            flops = step_flops(ws_r, ws_f, x_r, G, id_encoder, farl) * args.steps
            base = None
            for name, amp, loss_res in variants:
                params = FalcoParams(steps=args.steps, amp=amp, loss_resolution=loss_res)
                try:
                    res_, t, mem = timed(partial(optimise, ws_r, ws_f, x_r, G, id_encoder, farl, params=params), device)
                except torch.OutOfMemoryError:
                    print(f"{res:>5} {name:<18} {bs:>5}  out of memory")
                    torch.cuda.empty_cache()
                    break
                fps = bs / t
                tflops = flops / t / 1e12
                if base is None:
                    base, dloss, dimg = res_, 0.0, 0.0
                else:
                    dloss = float((res_.losses["total"][-1] - base.losses["total"][-1]).abs().max())
                    with torch.no_grad():
                        dimg = float((render_256(G, res_.ws) - render_256(G, base.ws)).abs().max())
                pct = f"{100 * tflops / peak:>6.1f}" if peak else f"{'?':>6}"
                print(f"{res:>5} {name:<18} {bs:>5} {fps:>9.3f} {1 / fps:>8.2f} {fps / ref_fps:>7.1f} {mem:>6.1f} "
                      f"{tflops:>8.2f} {pct} {dloss:>8.2e} {dimg:>8.2e}")
        del G, id_encoder, farl
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
