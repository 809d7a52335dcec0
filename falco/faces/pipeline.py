"""Detection, landmarks and alignment of every face in a photo, in a reproducible order."""

from __future__ import annotations

import numpy as np

from falco.errors import InputError
from falco.faces.detect import DEFAULT_DETECTOR, Box, Detector, check_image, get_detector
from falco.faces.ffhq import AlignedFace, align_face, check_size

__all__ = ["detect_and_align"]


def detect_and_align(
    image: np.ndarray,
    size: int = 256,
    detector: str | Detector = DEFAULT_DETECTOR,
    upsample: int = 1,
    *,
    transform_size: int | None = None,
) -> list[AlignedFace]:
    """Find every face in a photo and FFHQ-align it.

    Faces come back sorted by their box, left to right, then top to bottom
    (``(x0, y0, x1, y1)``), so runs are reproducible.

    Args:
        image: The photo, as :func:`falco.run.image_files.load_image` returns it.
            Shape: ``[H, W, 3]`` uint8 RGB.
        size: Side of the aligned crops (e4e/FALCO: 256).
        detector: A name of :data:`~falco.faces.detect.DETECTORS` (default ``'yunet'``, OpenCV's YuNet;
            ``'hog'`` dlib's HOG, ``'cnn'`` dlib's MMOD CNN, slow on CPU) or any
            :class:`~falco.faces.detect.Detector`.
        upsample: Times the photo is doubled before detecting (named detectors only; YuNet: 1 is
            the photo's own size); dlib's 1 finds faces down to about 40 px.
        transform_size: See :func:`~falco.faces.ffhq.align_face`.

    Returns:
        One :class:`~falco.faces.ffhq.AlignedFace` per face; empty if there is none.

    Raises:
        InputError: A bad image, size, detector or upsample, or a detector that breaks
            its contract.
    """
    image = check_image(image)
    size = check_size(size, "size")
    if transform_size is not None and check_size(transform_size, "transform_size") < size:
        raise InputError(f"transform_size must be >= size ({size}), got {transform_size}")
    det = get_detector(detector, upsample)
    found = [(_check_box(box, det), score) for box, score in det.detect(image)]
    found.sort(key=lambda item: item[0])
    faces = []
    for box, score in found:
        landmarks = np.asarray(det.landmarks(image, box), dtype=np.float64)
        if landmarks.shape != (68, 2):
            raise InputError(f"detector {det!r} returned landmarks of shape {list(landmarks.shape)}, not [68, 2]")
        faces.append(align_face(image, landmarks, size, transform_size=transform_size, box=box, score=score))
    return faces


def _check_box(box: object, det: Detector) -> Box:
    try:
        x0, y0, x1, y1 = (int(v) for v in box)  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise InputError(f"detector {det!r} returned a box that is not (x0, y0, x1, y1): {box!r}") from exc
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"detector {det!r} returned an empty box {box!r}")
    return (x0, y0, x1, y1)
