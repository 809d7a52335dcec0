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
  (the workers' start-up, a fresh interpreter and models each, is counted).
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
    from falco.evaluation.collect import LANDMARKS_SPEC, recognizer_spec
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", type=Path, default=ROOT.parent / "shared" / "data" / "celeba-ids" / "clr")
    ap.add_argument("--photos", type=int, default=30)
    ap.add_argument("--detectors", default="hog,cnn:0")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    detectors = [d.strip() for d in args.detectors.split(",") if d.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        tmp = Path(tmp)
        real, anon = _photos(args.real, args.photos, tmp)
        print(f"{args.photos} photos of {args.real}; detectors {', '.join(detectors)}; recogniser dlib")
        print("\nper metric, real photos   photos  today photos/CPU-s  warm cache photos/CPU-s  speed-up")
        for name, n, t_today, t_warm in per_metric(real, detectors, tmp / "metric-cache"):
            print(f"{name:26s} {n:6d} {n / t_today:19.1f} {n / max(t_warm, 1e-9):24.1f} "
                  f"{t_today / max(t_warm, 1e-9):8.0f}x")
        print("\nwhole evaluation (one anonymized folder)      CPU-s  photos/CPU-s  speed-up  (wall s)")
        rows = whole(real, anon, detectors, args.workers, tmp / "eval-cache")
        for name, t, w in rows:
            print(f"{name:44s} {t:6.1f} {args.photos / t:13.2f} {rows[0][1] / t:8.2f}x  ({w:.1f})")


if __name__ == "__main__":
    main()
