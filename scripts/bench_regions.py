"""The region-control presets side by side, with the thesis's columns.

The segmentation-based anonymizer of the TUM thesis ("Face Shape Segmentation Mask
Anonymization using a GAN") reports, per choice of kept parts, dlib detection, identification,
FID and LPIPS on CelebA. This script runs ``falco anonymize --keep PRESET`` for each preset
(``nothing``, ``eyes-brows``, ``mouth-lips``, and ``hair-neck`` when the face parser is
installed) with one method, evaluates every output against the real photos with
``falco eval-attributes`` (paired by the runs' manifests), and prints one row per preset:
detection rate (dlib HOG), identification (rank-1 and re-identification rate of each installed
recognizer), FID, mean LPIPS over the measured parts, and the region check read back from the
manifest (grey-level change of the parts taken from the photo, and of the rest). A column
whose model is not installed reads ``n/a`` (and the reason is printed below the table).

    python scripts/bench_regions.py ../shared/data/celeba-ids --method blur --limit 30
    python scripts/bench_regions.py photos/ --method falco --models ~/falco-models

The thesis's CelebA figures for keeping hair & neck: detection 99.80 % (dlib), identification
1.20 %, FID 67.11 (CIAGAN on the same protocol: 99.73 / 2.85 / 71.95).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

PRESETS = ("nothing", "eyes-brows", "mouth-lips", "hair-neck")


def _photos(folder: Path, limit: int) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return files[:limit]


def _fmt(value, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{100 * value:.1f}" if pct else f"{value:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("photos", type=Path)
    ap.add_argument("--method", default="blur")
    ap.add_argument("--models", type=Path, default=None)
    ap.add_argument("--limit", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--recognizers", default="dlib,sface")
    args = ap.parse_args()

    from falco.config import AnonymizeConfig
    from falco.errors import FalcoError
    from falco.evaluation import EvalConfig, evaluate
    from falco.faces.regions import needs_parsing
    from falco.models import parsing
    from falco.run.anonymize import run_anonymize

    work = Path(tempfile.mkdtemp(prefix="falco-regions-"))
    try:
        src = work / "real"
        for p in _photos(args.photos, args.limit):
            dest = src / p.relative_to(args.photos)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, dest)
        try:
            parsing.load_parser(args.models)
            presets = PRESETS
        except FalcoError as exc:
            presets = tuple(p for p in PRESETS if not needs_parsing(p))
            print(f"note: hair-neck left out: {exc}")
        outs, secs = [], {}
        for preset in presets:
            out = work / preset
            t0 = time.perf_counter()
            run_anonymize(AnonymizeConfig(input=src, out=out, method=args.method, models=args.models,
                                          device=args.device, keep=(preset,), progress=False, guard="off"),
                          echo=lambda *_: None)
            secs[preset] = time.perf_counter() - t0
            outs.append(out)
        recognizers = tuple(r for r in args.recognizers.split(",") if r)
        report = evaluate(EvalConfig(real=src, anon=tuple(outs), names=presets, pairs=tuple(outs), detectors=("hog",),
                                     recognizers=recognizers, classifiers=("landmarks",), examples=0,
                                     models=args.models, device=args.device, progress=False))
        n = len(list(src.rglob("*.*")))
        print(f"{n} photos, method {args.method}; rates in %")
        head = ["preset", "detect(hog)", *[f"rank1.{r}" for r in recognizers], *[f"reid.{r}" for r in recognizers],
                "FID", "LPIPS(parts)", "photo parts", "method parts", "s"]
        print(" | ".join(head))
        for preset in presets:
            run = report.runs[preset]
            lp = list((run.get("region_lpips") or {}).values())
            check = run.get("region_check") or {}
            row = [preset, _fmt(run["detection_rate"].get("hog"), True),
                   *[_fmt(run["rank1_identification"].get(r), True) for r in recognizers],
                   *[_fmt(run["reid_rate"].get(r), True) for r in recognizers],
                   _fmt(run.get("fid")), _fmt(float(np.mean(lp)) if lp else None),
                   _fmt(check.get("from_photo")), _fmt(check.get("from_method")), f"{secs[preset]:.0f}"]
            print(" | ".join(row))
        missing = {k: v for r in report.runs.values() for k, v in (r.get("not_computed") or {}).items()}
        for key, why in sorted(missing.items()):
            print(f"n/a {key}: {why}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
