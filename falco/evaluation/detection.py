"""Detection rate: does a face detector still find the faces after anonymization?

For each detector the rate is measured on the faces *that detector* finds in the real
photos: a real face counts as detected in the anonymized photo when the same detector
returns a box there that overlaps it (IoU >= ``min_iou`` after a one-to-one Hungarian
matching). Comparing a photo with itself therefore gives exactly 1.0 for every detector.

Detectors:
    ``hog``   dlib's HOG + linear SVM (``get_frontal_face_detector``);
    ``cnn``   dlib's MMOD CNN (``mmod_human_face_detector.dat``); slow on a CPU;
    ``mtcnn`` MTCNN from the ``facenet-pytorch`` wheel, whose P/R/O-net weights ship inside
              the wheel. Optional. Its metadata pins ``torch<2.3`` and old numpy/Pillow, so
              install it **without** dependencies: ``pip install --no-deps facenet-pytorch``
              (then check ``pip show torch`` is unchanged).

A dlib detector spec may carry its upsampling: ``"cnn:0"`` (default: the ``upsample``
argument of :func:`get_eval_detector`).
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from falco.errors import InputError
from falco.evaluation.common import MetricUnavailable
from falco.faces.detect import Box, check_image, get_detector

__all__ = [
    "DETECTORS",
    "DetectionCount",
    "EvalDetector",
    "MTCNN_INSTALL",
    "box_iou",
    "count_detected",
    "get_eval_detector",
    "match_boxes",
    "parse_detector_spec",
]

#: Detector names the evaluation knows.
DETECTORS: tuple[str, ...] = ("hog", "cnn", "mtcnn")

MTCNN_INSTALL = (
    "pip install --no-deps facenet-pytorch  (never with its dependencies: its metadata pins torch<2.3)"
)


class EvalDetector(Protocol):
    """A face detector as the evaluation uses it: boxes only."""

    name: str

    def boxes(self, image: np.ndarray) -> list[Box]:
        """Face boxes ``(x0, y0, x1, y1)``. Shape: ``image`` ``[H, W, 3]`` uint8 RGB."""
        ...


@dataclass(frozen=True)
class DlibEvalDetector:
    """dlib's HOG or CNN detector (see :mod:`falco.faces.detect`)."""

    name: str
    upsample: int = 1

    def boxes(self, image: np.ndarray) -> list[Box]:
        det = get_detector(self.name, self.upsample)
        return sorted(box for box, _ in det.detect(check_image(image)))

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.upsample}"


@functools.cache
def _mtcnn_model(device: str):
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, device=device)


@dataclass(frozen=True)
class MtcnnEvalDetector:
    """MTCNN (Zhang et al. 2016) as packaged by ``facenet-pytorch`` (weights inside the wheel).

    Default thresholds (0.6, 0.7, 0.7) and minimum face size 20 px, as the package ships them.
    """

    name: str = "mtcnn"
    device: str = "cpu"

    def boxes(self, image: np.ndarray) -> list[Box]:
        import torch

        image = check_image(image)
        with torch.no_grad():
            found, _ = _mtcnn_model(self.device).detect(image)
        if found is None:
            return []
        out = [tuple(int(round(float(v))) for v in b) for b in np.asarray(found).reshape(-1, 4)]
        return sorted((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)) for x0, y0, x1, y1 in out)

    @property
    def spec(self) -> str:
        return "mtcnn"


def mtcnn_available() -> str | None:
    """None when MTCNN can be used, else the reason it cannot."""
    if importlib.util.find_spec("facenet_pytorch") is None:
        return f"facenet-pytorch is not installed; install it with: {MTCNN_INSTALL}"
    try:
        import facenet_pytorch  # noqa: F401
    except Exception as exc:  # a broken install must not break the evaluation
        return f"facenet-pytorch is installed but does not import ({type(exc).__name__}: {exc})"
    return None


def parse_detector_spec(spec: str, upsample: int = 1) -> tuple[str, int]:
    """Split ``"cnn:0"`` into ``("cnn", 0)``; a bare name takes ``upsample``.

    Raises:
        InputError: Unknown name or a bad upsample.
    """
    name, _, up = str(spec).strip().lower().partition(":")
    if name not in DETECTORS:
        raise InputError(f"detector must be one of {', '.join(DETECTORS)} (optionally 'name:upsample'), got {spec!r}")
    if up:
        if name == "mtcnn":
            raise InputError(f"detector {spec!r}: mtcnn takes no upsample")
        try:
            upsample = int(up)
        except ValueError:
            raise InputError(f"detector {spec!r}: upsample must be an integer") from None
    if not 0 <= int(upsample) <= 4:
        raise InputError(f"detector {spec!r}: upsample must be in 0..4, got {upsample}")
    return name, int(upsample)


def get_eval_detector(spec: str, upsample: int = 1, device: str = "cpu") -> EvalDetector:
    """Build a detector from a spec (``hog``, ``cnn``, ``cnn:0``, ``mtcnn``).

    Raises:
        InputError: Unknown spec.
        MetricUnavailable: MTCNN asked for but ``facenet-pytorch`` is missing (the message
            says how to install it).
    """
    name, up = parse_detector_spec(spec, upsample)
    if name == "mtcnn":
        reason = mtcnn_available()
        if reason:
            raise MetricUnavailable(reason)
        return MtcnnEvalDetector(device=device)
    return DlibEvalDetector(name, up)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (0 when disjoint)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def match_boxes(real: Sequence[Box], anon: Sequence[Box], min_iou: float = 0.5) -> list[tuple[int, int, float]]:
    """One-to-one matching of two box lists maximising total IoU (Hungarian).

    Returns:
        ``(real_index, anon_index, iou)`` for matched pairs with ``iou >= min_iou``,
        sorted by ``real_index``.
    """
    if not 0.0 < min_iou <= 1.0:
        raise InputError(f"min_iou must be in (0, 1], got {min_iou}")
    if not real or not anon:
        return []
    from scipy.optimize import linear_sum_assignment

    iou = np.array([[box_iou(r, a) for a in anon] for r in real], dtype=np.float64)
    rows, cols = linear_sum_assignment(-iou)
    return sorted((int(r), int(c), float(iou[r, c])) for r, c in zip(rows, cols) if iou[r, c] >= min_iou)


@dataclass(frozen=True)
class DetectionCount:
    """Detections of one detector on one or many photo pairs.

    Attributes:
        real: Faces the detector finds in the real photos (the denominator).
        detected: Of those, how many it finds again in the anonymized photos.
        anon: All boxes it returns on the anonymized photos (including new ones).
    """

    real: int = 0
    detected: int = 0
    anon: int = 0

    def __add__(self, other: DetectionCount) -> DetectionCount:
        return DetectionCount(self.real + other.real, self.detected + other.detected, self.anon + other.anon)

    @property
    def rate(self) -> float | None:
        """``detected / real`` in [0, 1]; None when the detector found no real face."""
        return self.detected / self.real if self.real else None


def count_detected(real: Sequence[Box], anon: Sequence[Box], min_iou: float = 0.5) -> DetectionCount:
    """Detection count of one photo pair (see the module docstring)."""
    return DetectionCount(len(real), len(match_boxes(real, anon, min_iou)), len(anon))
