"""MTCNN (Zhang et al. 2016) from the ``facenet-pytorch`` wheel, whose P/R/O-net weights ship inside it.

Shared by ``--detector mtcnn`` and the evaluation's detection rate. ``facenet-pytorch``'s
metadata pins an old torch: install it without dependencies,
``pip install --no-deps facenet-pytorch==2.6.0``. Default thresholds (0.6, 0.7, 0.7) and
minimum face size 20 px, as the package ships them.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from falco.errors import InputError, ModelNotFoundError
from falco.faces.checks import Box, check_image, hog_like_box, package_unavailable

__all__ = ["MTCNN_INSTALL", "MtcnnDetector", "mtcnn_boxes", "mtcnn_unavailable"]

MTCNN_INSTALL = "pip install --no-deps facenet-pytorch==2.6.0  (never with its dependencies: its metadata pins torch<2.3)"


def mtcnn_unavailable() -> str | None:
    """None when MTCNN can be used, else the reason it cannot."""
    return package_unavailable("facenet_pytorch", "facenet-pytorch", MTCNN_INSTALL)


@functools.cache
def mtcnn_model(device: str = "cpu"):
    """facenet-pytorch's ``MTCNN(keep_all=True)`` on ``device`` (cached)."""
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, device=device)


def mtcnn_boxes(image: np.ndarray, device: str = "cpu") -> list[tuple[Box, float]]:
    """Integer boxes ``(x0, y0, x1, y1)`` and probabilities. Shape: ``image`` ``[H, W, 3]`` uint8 RGB."""
    import torch

    image = check_image(image)
    with torch.no_grad():
        found, probs = mtcnn_model(device).detect(image)
    if found is None:
        return []
    out = []
    for b, p in zip(np.asarray(found).reshape(-1, 4), np.asarray(probs).reshape(-1), strict=True):
        x0, y0, x1, y1 = (int(round(float(v))) for v in b)
        out.append(((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)), float(p)))
    return out


class MtcnnDetector:
    """MTCNN boxes; 68 landmarks from ``landmarker`` (dlib's shape predictor) in each box's HOG-like square.

    Raises:
        ModelNotFoundError: facenet-pytorch is missing or broken (the message says how to install it).
    """

    def __init__(self, *, device: str = "cpu", landmarker: Callable[[np.ndarray, Box], np.ndarray] | None = None
                 ) -> None:
        reason = mtcnn_unavailable()
        if reason:
            raise ModelNotFoundError(f"--detector mtcnn: {reason}")
        self.device = device
        self.landmarker = landmarker

    def __repr__(self) -> str:
        return f"MtcnnDetector(device={self.device!r})"

    def detect(self, image: np.ndarray) -> list[tuple[Box, float | None]]:
        """Boxes and probabilities. Shape: ``image`` ``[H, W, 3]`` uint8 RGB."""
        return mtcnn_boxes(image, self.device)

    def landmarks(self, image: np.ndarray, box: Box) -> np.ndarray:
        """dlib's 68 landmarks inside the HOG-like square of the box. Shape: ``[68, 2]`` float64."""
        if self.landmarker is None:
            raise InputError("MtcnnDetector has no landmarker: build it with falco.faces.detect.get_detector('mtcnn')")
        return self.landmarker(image, hog_like_box(box))
