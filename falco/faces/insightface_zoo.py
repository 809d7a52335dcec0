"""insightface's model zoo on onnxruntime: the SCRFD detector and the ArcFace ONNX recogniser (buffalo_l).

* ``scrfd``: SCRFD-10GF with 5 key points (``det_10g.onnx`` of insightface's ``buffalo_l`` pack,
  registry ``scrfd-10g-buffalo-l``), loaded and run by insightface's own
  ``model_zoo.get_model`` / ``SCRFD.detect`` (letterboxed input, score >= 0.5 and NMS 0.4 as
  insightface ships them). ``upsample`` 0 runs insightface's default 640x640 input; 1 runs the
  photo at its own resolution (at least 640 px on its long side); each level above 1 doubles it.
  The 68 landmarks still come from dlib's shape predictor inside the box (as for YuNet), so FFHQ
  alignment is unchanged.
* ``insightface``: ArcFace ResNet-50 trained on WebFace600K (``w600k_r50.onnx``, registry
  ``arcface-w600k-r50-buffalo-l``), 512-d embeddings of the face warped by insightface's own
  5-point ``norm_crop`` onto the 112x112 ArcFace template (5 points from SCRFD/YuNet, or derived
  from dlib's 68). Same person when the cosine similarity is **at least 0.28**: insightface's
  recognition demo (``web-demos/src_recognition``) reads < 0.2 as "not the same person",
  0.2-0.28 as "likely" and >= 0.28 as "the same person".

Licence: insightface's *code* is MIT, but its pretrained models are for **non-commercial research
only** (``buffalo_l``; a missing signed ``MODEL.LICENSE`` means those public terms). insightface 2.1
verifies signed model licences only in its GUI and manifest-based model packages; the plain
``get_model(path.onnx)`` route used here routes by input/output signature and checks no licence.
falco checks the file against the registry's sha256 (model set), as for every other model.

Execution providers: CUDA when onnxruntime offers it (``onnxruntime-gpu``), then CPU. When CUDA
was asked for but the session did not start on it, a warning says so (no silent fallback).

insightface's metadata requires ``opencv-python``, which clashes with falco's
``opencv-python-headless`` (both provide ``cv2``): install it without dependencies,
``pip install --no-deps insightface==2.1`` (its other needs are falco dependencies).
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from falco.errors import InputError, ModelNotFoundError
from falco.faces.checks import Box, check_image, hog_like_box, package_unavailable
from falco.faces.opencv_zoo import YunetFace, check_detector_settings

__all__ = [
    "INSIGHTFACE_INSTALL",
    "INSIGHTFACE_THRESHOLD",
    "InsightfaceRecognizer",
    "SCRFD",
    "ScrfdDetector",
    "W600K",
    "insightface_unavailable",
    "onnx_providers",
]

SCRFD = "scrfd-10g-buffalo-l"
W600K = "arcface-w600k-r50-buffalo-l"
#: insightface ArcFace: same person when the cosine similarity is at least this (insightface's demo).
INSIGHTFACE_THRESHOLD = 0.28
INSIGHTFACE_INSTALL = ("pip install --no-deps insightface==2.1  (never with its dependencies: it pulls "
                       "opencv-python, which clashes with falco's opencv-python-headless)")
_DET_SIZE = 640
_CUDA, _CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def insightface_unavailable() -> str | None:
    """None when insightface can be used, else the reason it cannot."""
    return package_unavailable("insightface.model_zoo", "insightface", INSIGHTFACE_INSTALL)


def onnx_providers(device: str | None = None) -> list[str]:
    """onnxruntime providers to ask for: CUDA first when available (and ``device`` is not ``'cpu'``), then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device != "cpu" and _CUDA in available:
        return [_CUDA, _CPU]
    return [_CPU]


def _model_file(name: str, models: str | os.PathLike | None) -> Path:
    from falco.pretrained.modelset import resolve_model

    return resolve_model(name, models)


def _check_session(what: str, path: str, session, asked: Sequence[str]) -> list[str]:
    """The providers the session really runs on; warns when CUDA was asked for and is not among them."""
    active = list(session.get_providers())
    if asked and asked[0] == _CUDA and _CUDA not in active:
        warnings.warn(f"{what} ({path}): onnxruntime offers CUDA but the session did not start on it; "
                      f"running on {', '.join(active)}", RuntimeWarning, stacklevel=3)
    return active


@functools.cache
def _zoo_model(path: str, kind: str, providers: tuple[str, ...]):
    """insightface's ``model_zoo.get_model`` on one file (cached); checks it routed to the expected class."""
    reason = insightface_unavailable()
    if reason:
        raise ModelNotFoundError(f"{kind}: {reason}")
    from insightface.model_zoo import ArcFaceONNX, SCRFD as _Scrfd, get_model

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)  # as falco's YuNet/SFace
    kwargs = {"providers": list(providers), "sess_options": opts}
    if kind == "scrfd":
        kwargs["static_shape_sessions"] = False  # one dynamic session for every input size
    try:
        model = get_model(path, **kwargs)
    except Exception as exc:  # onnxruntime/onnx errors on a corrupt or foreign file
        raise InputError(f"{kind}: insightface could not load {path}: {type(exc).__name__}: {exc}") from None
    want = _Scrfd if kind == "scrfd" else ArcFaceONNX
    if not isinstance(model, want):
        got = type(model).__name__ if model is not None else "nothing"
        raise InputError(f"{kind}: insightface's model_zoo routed {path} to {got}, not {want.__name__} "
                         f"(SCRFD: 6/9/10/15 outputs; ArcFace: one square input >= 112 px, one output)")
    return model


#: One SCRFD detection: box ``(x0, y0, x1, y1)`` floats, score, 5 points ``[5, 2]`` (image-left
#: eye first): the same record as YuNet's.
ScrfdFace = YunetFace


class ScrfdDetector:
    """SCRFD (insightface) boxes and 5 points; 68 landmarks from ``landmarker`` inside each box.

    Args:
        upsample: 0: insightface's 640x640 input; 1: the photo's own size (long side at least
            640); each level above 1 doubles that.
        score_threshold: Minimum score (insightface's ``det_thresh``, 0.5).
        nms_threshold: IoU of non-maximum suppression (insightface: 0.4).
        models: Model set holding ``scrfd-10g-buffalo-l`` (default ``$FALCO_HOME/models``).
        path: An ONNX file to use instead (not checked against the registry).
        device: ``'cpu'`` forces the CPU provider; otherwise CUDA when onnxruntime has it.
        max_pixels: Largest detector input (after upsampling); a larger photo is shrunk.
        landmarker: ``(image, box) -> [68, 2]`` (dlib's shape predictor, from
            :func:`falco.faces.detect.get_detector`); given the HOG-like square of the box.
    """

    def __init__(self, upsample: int = 1, *, score_threshold: float = 0.5, nms_threshold: float = 0.4,
                 models: str | os.PathLike | None = None, path: str | os.PathLike | None = None,
                 device: str | None = None, max_pixels: int = 16_000_000,
                 landmarker: Callable[[np.ndarray, Box], np.ndarray] | None = None) -> None:
        check_detector_settings(upsample, score_threshold)
        self.upsample = int(upsample)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.models, self.path, self.device = models, path, device
        self.max_pixels = int(max_pixels)
        self.landmarker = landmarker
        self.providers: list[str] = []

    def __repr__(self) -> str:
        return f"ScrfdDetector(upsample={self.upsample}, score_threshold={self.score_threshold})"

    def model_path(self) -> Path:
        """The ONNX file: ``path``, else the model set's verified ``scrfd-10g-buffalo-l``."""
        if self.path is not None:
            p = Path(self.path)
            if not p.is_file():
                raise ModelNotFoundError(f"--detector scrfd: ONNX file {p} not found")
            return p
        return _model_file(SCRFD, self.models)

    def model(self):
        """insightface's ``SCRFD`` on this file (loaded once per file and providers)."""
        path, asked = str(self.model_path()), tuple(onnx_providers(self.device))
        model = _zoo_model(path, "scrfd", asked)
        self.providers = _check_session("--detector scrfd", path, model.session, asked)
        return model

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The detector input ``(width, height)`` for a photo (multiples of 32; see ``upsample``)."""
        if self.upsample == 0:
            return (_DET_SIZE, _DET_SIZE)
        scale = max(2.0 ** (self.upsample - 1), _DET_SIZE / max(height, width))
        scale = min(scale, (self.max_pixels / (height * width)) ** 0.5)
        return (max(32, -(-round(width * scale) // 32) * 32), max(32, -(-round(height * scale) // 32) * 32))

    def faces(self, image: np.ndarray) -> list[ScrfdFace]:
        """Boxes, scores and 5 points, in source pixels. Shape: ``image`` ``[H, W, 3]`` uint8 RGB."""
        image = check_image(image)
        model = self.model()
        model.nms_thresh = self.nms_threshold
        bgr = np.ascontiguousarray(image[:, :, ::-1])  # insightface takes OpenCV's BGR
        det, kps = model.detect(bgr, input_size=self.input_size(*image.shape[:2]), det_thresh=self.score_threshold)
        out = []
        for i in range(det.shape[0]):
            pts = np.asarray(kps[i], np.float64) if kps is not None else np.full((5, 2), np.nan)
            out.append(ScrfdFace(tuple(float(v) for v in det[i, :4]), float(det[i, 4]), pts))
        return out

    def detect(self, image: np.ndarray) -> list[tuple[Box, float | None]]:
        """Integer boxes and scores. Shape: ``image`` ``[H, W, 3]`` uint8 RGB."""
        out = []
        for f in self.faces(image):
            x0, y0, x1, y1 = f.box
            out.append(((int(np.floor(x0)), int(np.floor(y0)), max(int(np.ceil(x1)), int(np.floor(x0)) + 1),
                         max(int(np.ceil(y1)), int(np.floor(y0)) + 1)), f.score))
        return out

    def landmarks(self, image: np.ndarray, box: Box) -> np.ndarray:
        """dlib's 68 landmarks inside the HOG-like square of an SCRFD box. Shape: ``[68, 2]`` float64."""
        if self.landmarker is None:
            raise InputError("ScrfdDetector has no landmarker: build it with falco.faces.detect.get_detector('scrfd')")
        return self.landmarker(image, hog_like_box(box))


class InsightfaceRecognizer:
    """insightface's ArcFace ONNX (``w600k_r50``): 512-d unit embeddings of ``norm_crop`` 112x112 faces.

    Args:
        path: The ONNX file.
        threshold: Cosine similarity at or above which two faces are the same person.
        device: ``'cpu'`` forces the CPU provider; otherwise CUDA when onnxruntime has it.
        tiny: The file is a tiny random stand-in (numbers not meaningful; reported as such).
    """

    name = "insightface"
    metric = "cosine"

    def __init__(self, path: str | os.PathLike, *, threshold: float = INSIGHTFACE_THRESHOLD,
                 device: str | None = None, tiny: bool = False) -> None:
        self.path = str(path)
        self.threshold = float(threshold)
        self.device = device
        self.tiny = bool(tiny)
        self.providers: list[str] = []

    @classmethod
    def from_models(cls, models: str | os.PathLike | None = None, **kwargs) -> InsightfaceRecognizer:
        """Find, verify and load ``arcface-w600k-r50-buffalo-l`` through insightface's model zoo.

        Raises:
            ModelNotFoundError: insightface or the file is not installed. ChecksumError: corrupt
            file. InputError: insightface did not recognise an ArcFace model in it.
        """
        from falco.pretrained.modelset import is_tiny

        reason = insightface_unavailable()
        if reason:
            raise ModelNotFoundError(f"insightface recogniser: {reason}")
        rec = cls(_model_file(W600K, models), tiny=is_tiny(models), **kwargs)
        rec.model()
        return rec

    def model(self):
        """insightface's ``ArcFaceONNX`` on this file (loaded once per file and providers)."""
        asked = tuple(onnx_providers(self.device))
        model = _zoo_model(self.path, "insightface recogniser", asked)
        self.providers = _check_session("insightface recogniser", self.path, model.session, asked)
        return model

    def embed(self, image: np.ndarray, landmarks: Sequence[np.ndarray]) -> np.ndarray:
        """Unit embeddings of the faces of one photo (68 or 5 points each). Shape: ``[N, D]`` float64."""
        from insightface.utils.face_align import norm_crop

        from falco.faces.opencv_zoo import five_points

        bgr = np.ascontiguousarray(check_image(image)[:, :, ::-1])
        size = int(self.model().input_size[0])
        with warnings.catch_warnings():  # insightface 2.1 calls scikit-image's deprecated SimilarityTransform.estimate
            warnings.filterwarnings("ignore", category=FutureWarning, module="insightface")
            crops = [norm_crop(bgr, five_points(lm).astype(np.float32), image_size=size) for lm in landmarks]
        return self.embed_crops(crops)

    def embed_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Unit embeddings of aligned BGR crops (``norm_crop`` output). Shape: ``[N, D]`` float64."""
        model = self.model()
        if len(crops) == 0:
            dim = model.output_shape[-1] if isinstance(model.output_shape[-1], int) else 512
            return np.zeros((0, dim))
        emb = np.asarray(model.get_feat(list(crops)), dtype=np.float64).reshape(len(crops), -1)
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    def describe(self) -> str:
        rule = (f"insightface ArcFace w600k_r50 (buffalo_l, non-commercial), same person when cosine similarity "
                f">= {self.threshold}")
        return rule + (" (TINY RANDOM WEIGHTS: not meaningful)" if self.tiny else "")


def env_lines() -> list[str]:
    """For ``falco env``: insightface's state and the onnxruntime providers falco's ONNX models run on."""
    reason = insightface_unavailable()
    if reason is None:
        import insightface

        state = f"{insightface.__version__} (buffalo_l weights: non-commercial research only)"
    else:
        state = reason
    lines = [f"{'insightface':<16} {state}"]
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return lines + [f"{'onnxruntime':<16} does not import ({exc})"]
    asked = onnx_providers()
    note = "CUDA" if asked[0] == _CUDA else "CPU only (no CUDAExecutionProvider: install onnxruntime-gpu for CUDA)"
    return lines + [f"onnxruntime providers {', '.join(ort.get_available_providers())}; SCRFD/insightface run on {note}"]
