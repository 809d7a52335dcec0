#!/usr/bin/env python
"""Recall, false positives per image and speed of every available face detector on the shared photos.

Two sets:

* ``faces``: the annotated photos of ``../shared/data/faces`` (imglab ``training.xml`` +
  ``testing.xml``: 9 photos, 43 hand-drawn boxes) plus ``dogs.jpg`` (no human face, 0 boxes).
  ``bald_guys.jpg`` has no annotation and is left out. A detection is a hit when the one-to-one
  (Hungarian) matching pairs it with an annotated box at IoU >= ``--iou`` (0.3: the annotations
  are dlib-style squares, brows to chin; YuNet, MTCNN and SCRFD draw taller boxes); every
  unmatched detection is a false positive.
* ``celeba``: the CelebA photos of ``../shared/data/celeba-ids/clr`` (178x218, one face each):
  a photo is a hit when at least one face is found; every detection beyond the first is a
  false positive.

Landmarks: every detector's faces are FFHQ-aligned from dlib's 68 landmarks, predicted inside the
box it draws, and every method changes the region those landmarks outline. On each hit of the
``faces`` set the script measures how far the jaw (points 0-16, the region's outline) lands from
where dlib's predictor puts it inside the annotated box (dlib-style, the boxes it was trained on):
the largest jaw-point distance per face, in inter-ocular distances; the table gives its median
and 90th percentile (lower: the region is where dlib draws it).

Speed is photos per second of ``detect()`` alone (photos decoded beforehand, the model loaded
and warmed up on the first photo, which is not timed): per second of wall time, and per second of
this process's CPU time (``time.process_time``), which a busy shared machine distorts far less;
run with ``OMP_NUM_THREADS=1`` (onnxruntime, torch) to compare detectors on one core each.

    nice -n 10 python scripts/bench_detection.py --out bench-detection.json
    python scripts/bench_detection.py --detectors hog,yunet --upsample 0,1 --limit 20
    python scripts/bench_detection.py --detectors scrfd --models ~/buffalo-set   # det_10g.onnx there

A detector that cannot be built (``mtcnn`` without facenet-pytorch, ``yunet``/``scrfd`` without
their weights) is listed with the reason instead of figures.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
#: Detectors without an upsampling setting of their own (run once, shown with upsample "-").
NO_UPSAMPLE = ("mtcnn",)


@dataclass
class Sample:
    """One photo and its ground truth: boxes (``faces``) or a face count (``celeba``: exactly one)."""

    name: str
    image: object  # [H, W, 3] uint8 RGB
    boxes: list[tuple[int, int, int, int]] | None = None  # None: one face, position unknown


@dataclass
class Row:
    """One detector x upsampling x set."""

    detector: str
    upsample: int | None
    dataset: str
    photos: int = 0
    faces: int = 0
    found: int = 0
    false_positives: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    error: str | None = None
    missed: list[str] = field(default_factory=list)
    jaw: list[float] = field(default_factory=list)  # per hit (faces set): jaw deviation, inter-ocular distances

    def jaw_quantile(self, q: float) -> float | None:
        """A quantile of :attr:`jaw` (None without hits)."""
        import numpy as np

        return float(np.quantile(self.jaw, q)) if self.jaw else None

    @property
    def recall(self) -> float | None:
        return self.found / self.faces if self.faces else None

    @property
    def fp_per_image(self) -> float | None:
        return self.false_positives / self.photos if self.photos else None

    @property
    def images_per_s(self) -> float | None:
        return self.photos / self.seconds if self.seconds > 0 else None

    @property
    def images_per_cpu_s(self) -> float | None:
        return self.photos / self.cpu_seconds if self.cpu_seconds > 0 else None

    def as_dict(self) -> dict:
        return {**asdict(self), "jaw_median": self.jaw_quantile(0.5), "jaw_p90": self.jaw_quantile(0.9),
                "recall": self.recall, "fp_per_image": self.fp_per_image,
                "images_per_s": self.images_per_s, "images_per_cpu_s": self.images_per_cpu_s}


def annotated_boxes(folder: Path) -> dict[str, list[tuple[int, int, int, int]]]:
    """imglab ``training.xml`` + ``testing.xml``: file name -> ``(x0, y0, x1, y1)`` boxes (ignored boxes dropped)."""
    out: dict[str, list[tuple[int, int, int, int]]] = {}
    for xml in ("training.xml", "testing.xml"):
        text = (folder / xml).read_text(encoding="latin-1")
        for m in re.finditer(r"<image file='([^']+)'[^>]*>(.*?)</image>", text, re.S):
            boxes = []
            for tag in re.findall(r"<box [^>]*>", m.group(2)):
                if "ignore='1'" in tag:
                    continue
                y, x, w, h = (int(re.search(rf"{k}='(-?\d+)'", tag).group(1)) for k in ("top", "left", "width", "height"))
                boxes.append((x, y, x + w, y + h))
            out[m.group(1)] = boxes
    return out


def load_faces(folder: Path, limit: int | None = None) -> list[Sample]:
    """The annotated photos (and ``dogs.jpg`` with no face) of ``folder``."""
    from falco.run.image_files import load_image

    truth = annotated_boxes(folder)
    if (folder / "dogs.jpg").is_file():
        truth["dogs.jpg"] = []
    names = sorted(truth)[:limit] if limit else sorted(truth)
    return [Sample(n, load_image(folder / n), truth[n]) for n in names]


def load_celeba(folder: Path, limit: int | None = None) -> list[Sample]:
    """CelebA photos (one face each) under ``folder/clr/<id>/``; ``limit`` photos taken evenly across people."""
    from falco.run.image_files import load_image

    paths = sorted((folder / "clr").glob("*/*.jpg"))
    if limit and limit < len(paths):
        step = len(paths) / limit
        paths = [paths[int(i * step)] for i in range(limit)]
    return [Sample(f"{p.parent.name}/{p.name}", load_image(p), None) for p in paths]


def score(sample: Sample, found: Sequence[tuple[int, int, int, int]], iou: float) -> tuple[int, int, int]:
    """``(faces, hits, false_positives)`` of one photo's detections."""
    if sample.boxes is None:  # exactly one face somewhere
        return 1, int(len(found) >= 1), max(0, len(found) - 1)
    from falco.evaluation.detection import match_boxes

    hits = len(match_boxes(sample.boxes, list(found), iou)) if sample.boxes and found else 0
    return len(sample.boxes), hits, len(found) - hits


def run_one(make: Callable[[], object], name: str, upsample: int | None, dataset: str,
            samples: Sequence[Sample], iou: float) -> Row:
    """Build the detector (a failure is recorded, not raised), warm it up, then time ``detect`` on every photo."""
    row = Row(name, upsample, dataset)
    try:
        det = make()
        if samples:
            det.detect(samples[0].image)  # load the model, first-call setup: not timed
    except Exception as exc:  # noqa: BLE001 - an unavailable detector is a row with its reason
        row.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return row
    for s in samples:
        t0, c0 = time.perf_counter(), time.process_time()
        found = [tuple(int(v) for v in box) for box, _ in det.detect(s.image)]
        row.seconds += time.perf_counter() - t0
        row.cpu_seconds += time.process_time() - c0
        faces, hits, fps = score(s, found, iou)
        row.photos += 1
        row.faces += faces
        row.found += hits
        row.false_positives += fps
        if hits < faces:
            row.missed.append(s.name)
        if s.boxes and hasattr(det, "landmarks"):
            row.jaw += jaw_deviations(det, s, found, iou)
    return row


def jaw_deviations(det, sample: Sample, found: Sequence[tuple[int, int, int, int]], iou: float) -> list[float]:
    """Per hit: the largest distance between the jaw points (0-16) dlib predicts in the detector's box
    and in the matched annotated box, over the latter's inter-ocular distance."""
    import numpy as np

    from falco.evaluation.detection import match_boxes
    from falco.faces.detect import get_detector

    ref_of = get_detector("hog").landmarks
    out = []
    for i, j, _ in match_boxes(sample.boxes, list(found), iou):
        ref, got = ref_of(sample.image, sample.boxes[i]), det.landmarks(sample.image, found[j])
        inter_ocular = np.linalg.norm(ref[36:42].mean(0) - ref[42:48].mean(0))
        out.append(float(np.linalg.norm(got[:17] - ref[:17], axis=1).max() / inter_ocular))
    return out


def bench(detectors: Iterable[str], upsamples: Sequence[int], sets: dict[str, Sequence[Sample]], *,
          iou: float = 0.3, get: Callable[[str, int], object] | None = None,
          echo: Callable[[str], None] = lambda s: None) -> list[Row]:
    """Every detector x upsampling (once for :data:`NO_UPSAMPLE`) x set."""
    if get is None:
        from falco.faces.detect import get_detector as get
    rows = []
    for name in detectors:
        for up in ([None] if name in NO_UPSAMPLE else list(upsamples)):
            for dataset, samples in sets.items():
                row = run_one(lambda: get(name, 1 if up is None else up), name, up, dataset, samples, iou)
                rows.append(row)
                echo(format_row(row))
    return rows


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def format_row(row: Row) -> str:
    up = "-" if row.upsample is None else str(row.upsample)
    if row.error:
        return f"| {row.detector} | {up} | {row.dataset} | not available: {row.error} | | | |"
    wall, cpu = row.images_per_s, row.images_per_cpu_s
    jaw = "-" if not row.jaw else f"{row.jaw_quantile(0.5):.3f} / {row.jaw_quantile(0.9):.3f}"
    return (f"| {row.detector} | {up} | {row.dataset} | {_pct(row.recall)} ({row.found}/{row.faces}) | "
            f"{row.fp_per_image:.2f} | {jaw} | {'-' if wall is None else f'{wall:.2f}'} | "
            f"{'-' if cpu is None else f'{cpu:.2f}'} |")


def table(rows: Sequence[Row]) -> str:
    head = ["| detector | upsample | set | recall | false pos. / image | jaw dev. median / p90 | images / s | "
            "images / CPU-s |", "|---|---|---|---|---|---|---|---|"]
    return "\n".join(head + [format_row(r) for r in rows])


#: Jaw deviations (90th percentile, inter-ocular distances) closer than this count as equal in :func:`recommend`.
JAW_TOLERANCE = 0.05


def recommend(rows: Sequence[Row]) -> str | None:
    """The detector (and upsampling) with the best recall over both sets, then the jaw closest to dlib's
    (90th percentile, in steps of :data:`JAW_TOLERANCE`), then the fastest (CPU time): ``'hog:1'``."""
    by: dict[tuple[str, int | None], list[Row]] = {}
    for r in rows:
        if not r.error:
            by.setdefault((r.detector, r.upsample), []).append(r)
    if not by:
        return None

    def key(item):
        rs = item[1]
        found, faces = sum(r.found for r in rs), sum(r.faces for r in rs)
        photos, secs = sum(r.photos for r in rs), sum(r.cpu_seconds for r in rs)
        jaw = [v for r in rs for v in r.jaw]
        p90 = float(np.quantile(jaw, 0.9)) if jaw else 0.0
        return (found / faces if faces else 0.0, -round(p90 / JAW_TOLERANCE), photos / secs if secs else 0.0)

    import numpy as np

    (name, up), _ = max(by.items(), key=key)
    return name if up is None else f"{name}:{up}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--detectors", default="hog,cnn,mtcnn,yunet,scrfd")
    p.add_argument("--upsample", default="0,1", help="upsampling levels, comma-separated (default 0,1)")
    p.add_argument("--sets", default="faces,celeba")
    p.add_argument("--limit", type=int, default=None, help="at most this many photos per set (a quick run)")
    p.add_argument("--iou", type=float, default=0.3)
    p.add_argument("--shared", type=Path, default=SHARED, help="the shared data folder (default ../shared)")
    p.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    p.add_argument("--models", type=Path, default=None, help="model set with the YuNet/SCRFD files (default: falco's)")
    a = p.parse_args(argv)
    loaders = {"faces": lambda: load_faces(a.shared / "data" / "faces", a.limit),
               "celeba": lambda: load_celeba(a.shared / "data" / "celeba-ids", a.limit)}
    sets = {s: loaders[s]() for s in a.sets.split(",") if s}
    print(table([]))
    from falco.faces.detect import get_detector

    rows = bench([d for d in a.detectors.split(",") if d], [int(u) for u in a.upsample.split(",")], sets,
                 iou=a.iou, get=lambda name, up: get_detector(name, up, models=a.models),
                 echo=lambda s: print(s, flush=True))
    best = recommend(rows)
    print(f"\nbest recall (then jaw deviation, then speed): {best}")
    if a.out:
        a.out.write_text(json.dumps({"rows": [r.as_dict() for r in rows], "best": best, "iou": a.iou,
                                     "limit": a.limit}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
