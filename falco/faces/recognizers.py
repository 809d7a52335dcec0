"""Face recognisers shared by the privacy guard and the evaluation: embeddings and a "same person" rule.

* ``dlib``: dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``,
  PyPI ``face-recognition-models``), 128-d descriptors of a 150-px chip aligned from the 68
  landmarks. Same person when the Euclidean distance is **below 0.6** (dlib's documented
  threshold, 99.38 % on LFW). Always available offline.
* ``arcface``: ArcFace IR-SE50 (the FALCO/e4e identity network) on the 256-px FFHQ-aligned
  face, 512-d unit embeddings. Same person when the cosine similarity is **at least 0.25**:
  the inference threshold of TreB1eN/InsightFace_Pytorch (``config.threshold = 1.5`` on the
  squared distance of unit embeddings, i.e. cos >= 1 - 1.5 / 2), whose IR-SE50 weights these
  are. FALCO's authors published no threshold of their own
  (https://github.com/chi0tzp/FALCO/issues/13).
* ``sface``: SFace (OpenCV model zoo, onnxruntime), 128-d embeddings of the face warped onto
  the ArcFace 5-point 112x112 template; same person when the cosine similarity is **at least
  0.363** (OpenCV's threshold). Lives in :mod:`falco.faces.opencv_zoo`, re-exported here.
* ``insightface``: insightface's ArcFace ONNX (``w600k_r50``, buffalo_l, non-commercial) through its
  own model zoo and 5-point ``norm_crop``, 512-d; same person when the cosine similarity is **at
  least 0.28** (insightface's demo). Lives in :mod:`falco.faces.insightface_zoo`, re-exported here.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from falco.errors import InputError
from falco.faces.detect import check_image, dlib_model_path
from falco.faces.insightface_zoo import INSIGHTFACE_THRESHOLD, InsightfaceRecognizer
from falco.faces.opencv_zoo import SFACE_THRESHOLD, SFaceRecognizer

__all__ = [
    "ARCFACE_THRESHOLD",
    "DLIB_THRESHOLD",
    "ArcFaceRecognizer",
    "DlibRecognizer",
    "reference_descriptors",
    "INSIGHTFACE_THRESHOLD",
    "InsightfaceRecognizer",
    "Recognizer",
    "SFACE_THRESHOLD",
    "SFaceRecognizer",
    "pair_scores",
    "same_person",
]

DLIB_RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
#: dlib: same person when the Euclidean distance of descriptors is below this.
DLIB_THRESHOLD = 0.6
#: ArcFace: same person when the cosine similarity is at least this (TreB1eN's 1.5 squared L2).
ARCFACE_THRESHOLD = 0.25


class Recognizer(Protocol):
    """A face recogniser: embeddings plus a "same person" rule."""

    name: str
    metric: str  # 'euclidean' (match when distance < threshold) or 'cosine' (similarity >= threshold)
    threshold: float

    def embed(self, image: np.ndarray, landmarks: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings of the faces of one photo. Shape: ``[N, D]`` for N landmark sets."""
        ...

    def describe(self) -> str:
        """The matching rule in words, for reports."""
        ...


@functools.cache
def _dlib_recognition_model():
    import dlib

    return dlib.face_recognition_model_v1(str(dlib_model_path(DLIB_RECOGNITION_MODEL)))


@dataclass(frozen=True)
class DlibRecognizer:
    """dlib's ResNet face descriptor (see the module docstring)."""

    name: str = "dlib"
    metric: str = "euclidean"
    threshold: float = DLIB_THRESHOLD
    num_jitters: int = 0

    def embed(self, image: np.ndarray, landmarks: Sequence[np.ndarray]) -> np.ndarray:
        """128-d descriptors. Shape: ``image`` ``[H, W, 3]`` uint8; returns ``[N, 128]`` float64."""
        import dlib

        image = check_image(image)
        if len(landmarks) == 0:
            return np.zeros((0, 128))
        shapes = dlib.full_object_detections()
        for lm in landmarks:
            lm = np.asarray(lm, dtype=np.float64)
            if lm.shape != (68, 2):
                raise InputError(f"landmarks must be [68, 2], got {list(lm.shape)}")
            pts = [dlib.point(int(round(x)), int(round(y))) for x, y in lm]
            lo, hi = np.floor(lm.min(axis=0)), np.ceil(lm.max(axis=0))
            rect = dlib.rectangle(int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1]))
            shapes.append(dlib.full_object_detection(rect, pts))
        desc = _dlib_recognition_model().compute_face_descriptor(image, shapes, self.num_jitters)
        return np.array([np.array(d) for d in desc], dtype=np.float64)

    def describe(self) -> str:
        return f"dlib ResNet descriptor, same person when Euclidean distance < {self.threshold}"


class ArcFaceRecognizer:
    """ArcFace IR-SE50 on FFHQ-aligned 256-px faces (``falco.models.zoo.load_role('identity')``).

    Args:
        encoder: An :class:`~falco.models.arcface.IdentityEncoder` (or anything mapping
            ``[B, 3, 256, 256]`` in [-1, 1] to unit embeddings).
        threshold: Cosine similarity at or above which two faces are the same person.
        device: Where the encoder runs.
        tiny: The weights are a tiny random set (numbers not meaningful; reported as such).
    """

    name = "arcface"
    metric = "cosine"

    def __init__(self, encoder, *, threshold: float = ARCFACE_THRESHOLD, device: str = "cpu",
                 tiny: bool = False, batch_size: int = 16) -> None:
        self.encoder = encoder
        self.threshold = float(threshold)
        self.device = device
        self.tiny = bool(tiny)
        self.batch_size = int(batch_size)

    @classmethod
    def from_models(cls, models: str | os.PathLike | None = None, *, device: str = "cpu",
                    **kwargs) -> ArcFaceRecognizer:
        """Load the model set's identity network.

        Raises:
            ModelNotFoundError: The ArcFace weights are not installed.
            ChecksumError / CheckpointError: They are corrupt or not ArcFace.
        """
        from falco.models.zoo import load_role
        from falco.pretrained.modelset import is_tiny

        return cls(load_role("identity", models, device), device=device, tiny=is_tiny(models), **kwargs)

    def embed(self, image: np.ndarray, landmarks: Sequence[np.ndarray]) -> np.ndarray:
        """512-d unit embeddings. Shape: ``[N, 512]`` float64."""
        from falco.faces.ffhq import align_face

        crops = [align_face(image, lm, 256).image for lm in landmarks]
        return self.embed_crops(crops)

    def embed_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings of 256-px aligned crops (``[256, 256, 3]`` uint8 each). Shape: ``[N, D]``."""
        import torch

        if len(crops) == 0:
            return np.zeros((0, int(getattr(self.encoder, "embedding_dim", 512))))
        out = []
        with torch.no_grad():
            for i in range(0, len(crops), self.batch_size):
                x = torch.from_numpy(np.stack(crops[i:i + self.batch_size])).permute(0, 3, 1, 2).float()
                x = (x / 127.5 - 1.0).to(self.device)
                e = self.encoder(x).float()
                out.append(torch.nn.functional.normalize(e, dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    def describe(self) -> str:
        rule = f"ArcFace IR-SE50, same person when cosine similarity >= {self.threshold}"
        return rule + (" (TINY RANDOM WEIGHTS: not meaningful)" if self.tiny else "")


def _scores(recognizer: Recognizer, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise scores, oriented so that higher means "more alike". Shape: ``[N, M]``."""
    if recognizer.metric == "euclidean":
        return -np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    if recognizer.metric == "cosine":
        return a @ b.T
    raise InputError(f"recognizer {recognizer.name!r}: unknown metric {recognizer.metric!r}")


def pair_scores(recognizer: Recognizer, real: np.ndarray, anon: np.ndarray) -> np.ndarray:
    """Distance (euclidean) or similarity (cosine) of each real/anonymized pair. Shape: ``[N]``."""
    real, anon = np.asarray(real, np.float64), np.asarray(anon, np.float64)
    if real.shape != anon.shape:
        raise InputError(f"real and anon embeddings differ in shape: {real.shape} vs {anon.shape}")
    if recognizer.metric == "euclidean":
        return np.linalg.norm(real - anon, axis=-1)
    return np.sum(real * anon, axis=-1)


def same_person(recognizer: Recognizer, scores: np.ndarray) -> np.ndarray:
    """Apply the recogniser's threshold to :func:`pair_scores`. Shape: ``[N]`` bool."""
    if recognizer.metric == "euclidean":
        return np.asarray(scores) < recognizer.threshold
    return np.asarray(scores) >= recognizer.threshold


def reference_descriptors(paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """``--keep-identity``: dlib descriptors of the largest face of each reference photo (photos and videos).

    Shape: ``[len(paths), 128]``.

    Raises:
        InputError: A reference photo without a face.
    """
    from falco.faces.pipeline import detect_and_align
    from falco.run.image_files import load_image

    rec = DlibRecognizer()
    out = []
    for path in paths:
        image = load_image(path)
        faces = detect_and_align(image, size=64)
        if not faces:
            raise InputError(f"--keep-identity {str(path)!r}: no face found in the reference photo")
        largest = max(faces, key=lambda f: f.quad_size)
        out.append(rec.embed(image, [largest.landmarks])[0])
    return np.stack(out)
