#!/usr/bin/env python
"""Benchmark ``falco eval-attributes``: photos/s per metric, and the speed-up of the on-disk
cache of the real side (and of ``--workers``) over today's code path, in the same run.

    python scripts/bench_eval.py                      # 30 shared CelebA photos, hog + cnn:0, dlib
    python scripts/bench_eval.py --photos 150 --workers 2 --detectors hog,cnn:0

Measured on the same photos, one after the other:

Times are CPU seconds (the workers' included), so that a busy shared machine does not blur them.

* per metric, on the real photos: computing it (today: every ``eval-attributes`` run does
  this) against reading it back from a warm disk cache;
* the whole evaluation of one anonymized folder: today's path (memory cache only, one
  process), the new path with a cold disk cache, again as a second invocation would run it
  (fresh in-memory cache, warm disk cache), and with a cold disk cache and ``--workers N``
  (the workers' start-up, a fresh interpreter and models each, is counted);
* the torch networks (ArcFace IR-SE50, FaRL CelebA, FID Inception, at full size with random
  weights: speed only), faces/s through the evaluation's own code, per photo (one call per photo,
  as ``--eval-batch-size 0``) against the batched pass across photos (``--eval-batch-size N``),
  on ``--device`` (the default is the CPU; the GPU figure, the point of batching, needs a GPU:
  ``--device cuda``). Wall-clock on CUDA, CPU seconds on the CPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _photos(src: Path, n: int, out: Path) -> tuple[Path, Path]:
    """``n`` photos of ``src`` (sorted), and an 'anonymized' copy of each (Gaussian blur, radius 3)."""
    from PIL import Image, ImageFilter

    from falco.run.image_files import load_image, save_image

    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    if not files:
        raise SystemExit(f"no photos under {src}")
    real, anon = out / "real", out / "anon"
    for p in files:
        rel = p.relative_to(src)
        (real / rel).parent.mkdir(parents=True, exist_ok=True)
        (anon / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, real / rel)
        img = Image.fromarray(load_image(p)).filter(ImageFilter.GaussianBlur(3))
        save_image((anon / rel).with_suffix(".png"), np.asarray(img))
    return real, anon


def _cpu() -> float:
    t = os.times()  # children: the worker processes, once reaped (10 ms resolution)
    return time.process_time() + t.children_user + t.children_system


def _timed(fn) -> tuple[float, object]:
    """CPU seconds (this process and its finished children: the workers) of ``fn()``, and its value.

    CPU time, not wall-clock time, so that other jobs on a shared machine do not blur the ratios.
    """
    t = _cpu()
    value = fn()
    return _cpu() - t, value


def _wall(fn) -> tuple[float, float, object]:
    w = time.perf_counter()
    cpu, value = _timed(fn)
    return time.perf_counter() - w, cpu, value


def per_metric(real: Path, detectors: list[str], cache_dir: Path) -> list[tuple[str, int, float, float]]:
    """``(metric, photos, today s, warm-cache s)`` for each detector, the landmarks and the dlib descriptor."""
    from falco.evaluation.common import LANDMARKS_SPEC, recognizer_spec
    from falco.evaluation.common import image_digest, landmarks_key
    from falco.evaluation.detection import get_eval_detector
    from falco.evaluation.disk_cache import DiskCache
    from falco.faces.detect import get_detector
    from falco.faces.recognizers import DlibRecognizer
    from falco.run.image_files import load_image

    images = [load_image(p) for p in sorted(real.rglob("*")) if p.is_file()]
    digests = [image_digest(i) for i in images]
    disk = DiskCache(cache_dir)
    rows = []
    ref_boxes = None
    for spec in detectors:
        det = get_eval_detector(spec)
        det.boxes(images[0])  # load the model outside the timing
        t_today, boxes = _timed(lambda: [det.boxes(i) for i in images])
        for d, b in zip(digests, boxes):
            disk.store(("det", d, det.spec), f"det:{det.spec}", b)
        t_warm, _ = _timed(lambda: [disk.load(("det", d, det.spec), f"det:{det.spec}") for d in digests])
        rows.append((f"detection {det.spec}", len(images), t_today, t_warm))
        if det.spec == "hog:1" or ref_boxes is None:
            ref_boxes = boxes
    hog = get_detector("hog")
    faces = [(i, d, tuple(int(v) for v in b[0])) for i, d, b in zip(images, digests, ref_boxes) if b]
    t_today, lms = _timed(lambda: [hog.landmarks(i, b) for i, _, b in faces])
    for (_, d, b), lm in zip(faces, lms):
        disk.store(("lm", d, b), LANDMARKS_SPEC, lm)
    t_warm, _ = _timed(lambda: [disk.load(("lm", d, b), LANDMARKS_SPEC) for _, d, b in faces])
    rows.append(("landmarks (68, dlib)", len(faces), t_today, t_warm))
    rec = DlibRecognizer()
    rec.embed(faces[0][0], [lms[0]])
    spec = recognizer_spec(rec)
    t_today, embs = _timed(lambda: [rec.embed(i, [lm])[0] for (i, _, _), lm in zip(faces, lms)])
    for (_, d, _), lm, e in zip(faces, lms, embs):
        disk.store(("emb", rec.name, d, landmarks_key(lm)), spec, e)
    t_warm, _ = _timed(lambda: [disk.load(("emb", rec.name, d, landmarks_key(lm)), spec)
                                for (_, d, _), lm in zip(faces, lms)])
    rows.append(("embedding (dlib ResNet)", len(faces), t_today, t_warm))
    return rows


def whole(real: Path, anon: Path, detectors: list[str], workers: int,
          cache_dir: Path) -> list[tuple[str, float, float]]:
    from falco.evaluation import EvalConfig, FeatureCache, evaluate

    base = dict(real=real, anon=(anon,), names=("blur",), detectors=tuple(detectors), recognizers=("dlib",),
                classifiers=("landmarks",), fid=False, progress=False, examples=0)
    w_today, t_today, today = _wall(lambda: evaluate(EvalConfig(**base), cache=FeatureCache()))
    cfg = EvalConfig(**base, disk_cache=cache_dir)
    w_cold, t_cold, cold = _wall(lambda: evaluate(cfg, cache=FeatureCache()))
    w_warm, t_warm, warm = _wall(lambda: evaluate(cfg, cache=FeatureCache()))
    par = EvalConfig(**base, disk_cache=cache_dir.with_name(cache_dir.name + "-par"), workers=workers)
    w_par, t_par, parallel = _wall(lambda: evaluate(par, cache=FeatureCache()))
    for r in (cold, warm, parallel):
        if r.runs["blur"]["detection_rate"] != today.runs["blur"]["detection_rate"]:
            raise SystemExit("the cached evaluation disagrees with today's path")
    return [("today (memory cache, 1 process)", t_today, w_today),
            ("new, cold disk cache (first invocation)", t_cold, w_cold),
            ("new, warm disk cache (second invocation)", t_warm, w_warm),
            (f"new, cold disk cache, --workers {workers}", t_par, w_par)]


def _full_size_networks(device: str):
    """ArcFace IR-SE50, FaRL ViT-B/16 + CelebA head and the FID Inception, random weights, on ``device``."""
    import torch

    from falco.evaluation.farl_attributes import FaRLAttributeHead, FaRLCelebAClassifier
    from falco.evaluation.quality import FIDInception, random_fid_inception_state
    from falco.faces.recognizers import ArcFaceRecognizer
    from falco.models.arcface import Backbone, IdentityEncoder
    from falco.models.farl import FaRLConfig, FaRLEncoder, build_visual

    torch.manual_seed(0)
    arcface = ArcFaceRecognizer(IdentityEncoder(Backbone(50, "ir_se").eval()).to(device), device=device)
    farl = FaRLCelebAClassifier(FaRLEncoder(build_visual(FaRLConfig())), FaRLAttributeHead(768, 40), device=device)
    inception = FIDInception()
    inception.net.load_state_dict({k: v for k, v in random_fid_inception_state().items() if not k.startswith("fc.")},
                                  strict=False)
    return arcface, farl, inception.to(device).eval()


def networks(real: Path, anon: Path, batch_size: int, device: str) -> list[tuple[str, int, float, float]]:
    """``(network, crops, per-photo crops/s, batched crops/s)`` through :func:`collect_run`'s per-photo assembly
    and :func:`~falco.evaluation.batched.run_networks` (the dlib part done beforehand, not timed)."""
    import dataclasses

    import torch

    from falco.evaluation import collect
    from falco.evaluation.batched import run_networks
    from falco.evaluation.common import FeatureCache
    from falco.evaluation.detection import get_eval_detector
    from falco.evaluation.pairing import list_photo_pairs
    from falco.evaluation.tools import Tools
    from falco.run.image_files import load_image

    cache = FeatureCache()
    ref = get_eval_detector("hog", 1)
    photos = [collect._photo_faces(Tools(), cache, ref, pp.source, load_image(pp.real), load_image(pp.anon), None,
                                   pair_iou=0.3) for pp in list_photo_pairs(real, anon) if pp.anon is not None]
    faces = sum(len(p.faces) for p in photos)
    arcface, farl, inception = _full_size_networks(device)
    cuda = device.startswith("cuda")

    def clock() -> float:
        if cuda:
            torch.cuda.synchronize()
            return time.perf_counter()
        return _cpu()

    def run(tools: Tools, batched: bool, subset: int | None = None) -> float:
        fresh = [dataclasses.replace(p, crop_ok=None) for p in photos[:subset]]
        data = collect.RunData(detections={}, real_emb={n: [] for n in tools.recognizers},
                               anon_emb={n: [] for n in tools.recognizers})
        c = FeatureCache()
        picker = collect._Examples(0)
        t = clock()
        if batched:
            run_networks(tools, c, fresh, batch_size=batch_size, device=device)
        for p in fresh:
            collect._assemble_photo(data, tools, c, p, picker, detection_iou=0.5, device=device)
        return clock() - t

    rows = []
    for name, tools, crops in (("ArcFace IR-SE50", Tools(recognizers={"arcface": arcface}), 2 * faces),
                               ("FaRL CelebA (ViT-B/16)", Tools(classifiers=[farl]), 2 * faces),
                               ("FID Inception", Tools(inception=inception), 2 * faces)):
        for batched in (False, True):  # warm-up, both ways: allocator, oneDNN/cuDNN kernels of each batch shape
            run(tools, batched, None if cuda else 2)
        t_photo, t_batch = run(tools, False), run(tools, True)
        rows.append((name, crops, crops / t_photo, crops / t_batch))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", type=Path, default=ROOT.parent / "shared" / "data" / "celeba-ids" / "clr")
    ap.add_argument("--photos", type=int, default=30)
    ap.add_argument("--detectors", default="hog,cnn:0")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="where the torch networks run (batched pass: cuda)")
    ap.add_argument("--eval-batch-size", type=int, default=None, help="batched pass: crops per call "
                    "(default 64 on CUDA, 16 on the CPU)")
    ap.add_argument("--network-photos", type=int, default=12, help="photos for the torch-network rows "
                    "(full-size networks are slow on a CPU)")
    ap.add_argument("--only-networks", action="store_true", help="only the torch-network rows")
    args = ap.parse_args()
    detectors = [d.strip() for d in args.detectors.split(",") if d.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        tmp = Path(tmp)
        _network_rows(args, tmp)
        if args.only_networks:
            return
        real, anon = _photos(args.real, args.photos, tmp)
        print(f"\n{args.photos} photos of {args.real}; detectors {', '.join(detectors)}; recogniser dlib")
        print("\nper metric, real photos   photos  today photos/CPU-s  warm cache photos/CPU-s  speed-up")
        for name, n, t_today, t_warm in per_metric(real, detectors, tmp / "metric-cache"):
            print(f"{name:26s} {n:6d} {n / t_today:19.1f} {n / max(t_warm, 1e-9):24.1f} "
                  f"{t_today / max(t_warm, 1e-9):8.0f}x")
        print("\nwhole evaluation (one anonymized folder)      CPU-s  photos/CPU-s  speed-up  (wall s)")
        rows = whole(real, anon, detectors, args.workers, tmp / "eval-cache")
        for name, t, w in rows:
            print(f"{name:44s} {t:6.1f} {args.photos / t:13.2f} {rows[0][1] / t:8.2f}x  ({w:.1f})")


def _network_rows(args, tmp: Path) -> None:
    from falco.evaluation.batched import DEFAULT_BATCH_SIZE

    cuda = args.device.startswith("cuda")
    size = args.eval_batch_size or DEFAULT_BATCH_SIZE["cuda" if cuda else "cpu"]
    real, anon = _photos(args.real, args.network_photos, tmp / "networks")
    unit = "crops/s" if cuda else "crops/CPU-s"
    print(f"torch networks on {args.device}, {args.network_photos} photos of {args.real}, full size, random weights; "
          f"batched pass: {size} crops per call")
    print(f"network                    crops  per photo {unit:>11s}  batched {unit:>11s}  speed-up")
    for name, n, per_photo, batched in networks(real, anon, size, args.device):
        print(f"{name:26s} {n:5d} {per_photo:22.2f} {batched:20.2f} {batched / per_photo:8.2f}x")
    if not cuda:
        print("(CPU figures: batching is for the GPU, where per-photo calls of 1-3 faces leave it idle; the GPU "
              "figure needs a GPU: run with --device cuda there. eval-attributes batches on the CPU too "
              "(16 crops per call) since it measured at least as fast there; --eval-batch-size 0 turns it off.)")


if __name__ == "__main__":
    main()
