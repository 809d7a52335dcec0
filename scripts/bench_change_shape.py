"""What ``--change-shape`` does to the face's geometry: landmark error with and without it.

FALCO (the paper) optimises W+ layers 3..7 and keeps the real face's coarse layers 0..2, which
hold the head's pose and the face's shape. ``falco anonymize --change-shape`` frees those too
(layers 0..7): the fake's shape replaces the real one, for datasets released for face-shape
research. This script runs FALCO twice on the same photos, without and with ``--change-shape``,
and prints, per run, the landmark error between each real face and its anonymized version
(dlib's 68 points fitted in the real face's box on both photos, mean distance over the
inter-ocular distance: :func:`falco.evaluation.landmarks.landmark_nme`), and the ratio.

    python scripts/bench_change_shape.py ../shared/data/faces --limit 4
    python scripts/bench_change_shape.py photos/ --models ~/falco-models --steps 50

With the tiny random model set (no real weights installed) the generator draws no face and the
figures say nothing about FALCO; the script says so. A real-weights run is what the README's
figure needs.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _nme_of_run(real_dir: Path, out: Path) -> list[float]:
    from falco.evaluation.landmarks import landmark_nme
    from falco.faces.detect import get_detector
    from falco.run.image_files import load_image
    from falco.run.manifest import RunManifest

    det = get_detector("hog")
    with RunManifest(out) as manifest:
        faces = [f for f in manifest.faces() if f["status"] == "done"]
        photos = {row["source"]: row for row in manifest.inputs()}
    errors = []
    for face in faces:
        key = face["source"]
        outputs = (photos.get(key) or {}).get("outputs") or {}
        anon_path = out / outputs.get("photo", key)
        real, anon = load_image(real_dir / key), load_image(anon_path)
        box = tuple(face["box"])
        errors.append(landmark_nme(det.landmarks(real, box), det.landmarks(anon, box)))
    return errors


def _installed_models() -> Path | None:
    """falco's default model set when its generator is installed, else None."""
    from falco.errors import FalcoError
    from falco.pretrained.modelset import models_dir, resolve_model

    try:
        resolve_model("generator", None)
    except FalcoError:
        return None
    return models_dir(None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("photos", type=Path, help="a folder of photos")
    ap.add_argument("--models", type=Path, default=None, help="model set (default: falco's; tiny when none)")
    ap.add_argument("--limit", type=int, default=4, help="photos used (sorted by name)")
    ap.add_argument("--steps", type=int, default=10, help="FALCO steps (the paper: 50)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    from falco.config import AnonymizeConfig
    from falco.latent.optimise import FalcoParams
    from falco.models.tiny import write_tiny_model_set
    from falco.pretrained.modelset import is_tiny
    from falco.run.anonymize import run_anonymize

    work = Path(tempfile.mkdtemp(prefix="falco-change-shape-"))
    try:
        photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.limit]
        src = work / "in"
        src.mkdir()
        for p in photos:
            shutil.copy(p, src / p.name)
        models = args.models if args.models is not None else _installed_models()
        if models is None:
            models = work / "tiny"
            write_tiny_model_set(models)
        if is_tiny(models):
            print("warning: tiny random model set: the generator draws no face; these figures only show the "
                  "script runs (install real weights with `falco models download`)")
        rows = []
        for name, start in (("paper (layers 3..7)", 3), ("--change-shape (layers 0..7)", 0)):
            out = work / f"out-{start}"
            t0 = time.perf_counter()
            run_anonymize(AnonymizeConfig(input=src, out=out, models=models, device=args.device, guard="off",
                                          falco=FalcoParams(steps=args.steps, layers=(start, 8)), bank_size=64,
                                          progress=False), echo=lambda *_: None)
            errors = _nme_of_run(src, out)
            rows.append((name, errors, time.perf_counter() - t0))
        print(f"{len(photos)} photos, FALCO {args.steps} steps")
        print(f"{'run':32s} {'faces':>5s} {'landmark NME (mean)':>20s} {'median':>8s} {'s':>6s}")
        for name, errors, secs in rows:
            mean = float(np.mean(errors)) if errors else float("nan")
            med = float(np.median(errors)) if errors else float("nan")
            print(f"{name:32s} {len(errors):5d} {mean:20.4f} {med:8.4f} {secs:6.1f}")
        a, b = (float(np.mean(r[1])) if r[1] else float("nan") for r in rows)
        print(f"--change-shape / paper landmark error: {b / a:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
