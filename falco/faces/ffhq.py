"""FFHQ alignment (Karras et al.), as e4e's ``utils/alignment.py`` does it for its encoder.

(FALCO's own aligner differs a little: it blurs the padding with ``qsize * 0.01`` and takes
its landmarks from SFD + FAN; we use dlib's 68 landmarks, the detector e4e was trained with.)

The crop quadrilateral comes from the eye, mouth and eye-to-mouth vectors of the 68 iBUG
landmarks; the crop is made as upstream does it: shrink the photo when the face is much
larger than the output, crop around the quad with a border, reflect-pad (blurred and faded
to the median colour) where the quad leaves the photo, then Pillow's bilinear QUAD warp.

Coordinates are source pixels with pixel centres at integers (dlib's convention). The
quad is a square, so the warp is a similarity transform, :func:`quad_transform`, which
:func:`falco.faces.paste.paste_back` inverts exactly. One deliberate difference from
upstream: after the shrink step the quad is rescaled in pixel-centre coordinates
(``(q + 0.5) * s - 0.5``) instead of ``q / shrink``, so the crop agrees with
:func:`quad_transform` for large faces too (upstream drifts by up to half a pixel there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.ndimage
from PIL import Image

from falco.errors import InputError
from falco.faces.detect import Box, check_image

__all__ = ["AlignedFace", "align_face", "apply_transform", "ffhq_quad", "quad_transform"]

#: The smallest quad side (source pixels) :func:`align_face` accepts.
MIN_QUAD_SIZE = 4.0


@dataclass(frozen=True, eq=False)
class AlignedFace:
    """One face of a photo, FFHQ-aligned.

    ``landmarks`` and ``quad`` are read-only; ``image`` is the face's own writable copy.

    Attributes:
        box: Detector box ``(x0, y0, x1, y1)``, half-open, in source pixels (for faces
            aligned from given landmarks: the landmarks' bounding box).
        landmarks: 68 iBUG landmarks in source pixels. Shape: ``[68, 2]`` float64 ``(x, y)``.
        quad: The crop quadrilateral in source pixels, corners ``c-x-y, c-x+y, c+x+y, c+x-y``
            (the crop's top-left, bottom-left, bottom-right, top-right). Shape: ``[4, 2]`` float64.
        image: The aligned crop. Shape: ``[size, size, 3]`` uint8 RGB.
        score: The detector's confidence, ``None`` where it gives none.
        quad_size: Side length of the quad in source pixels (how large the face really is;
            the crop was upsampled where this is below ``size``).
        identity: None for a photo's face; in a video, its track's key (:func:`falco.methods.base.face_key`
            returns it, so every frame of a track draws the same random identity).
    """

    box: Box
    landmarks: np.ndarray
    quad: np.ndarray
    image: np.ndarray
    score: float | None = None
    identity: str | None = field(default=None, repr=False)  # video: the track's key; faces sharing it draw alike
    quad_size: float = field(init=False)

    def __post_init__(self) -> None:
        assert self.landmarks.shape == (68, 2) and self.quad.shape == (4, 2), "internal shape error"
        assert self.image.ndim == 3 and self.image.shape[0] == self.image.shape[1], "internal shape error"
        for name in ("landmarks", "quad"):
            array = np.array(getattr(self, name), dtype=np.float64)
            array.flags.writeable = False
            object.__setattr__(self, name, array)
        object.__setattr__(self, "quad_size", float(np.hypot(*(self.quad[3] - self.quad[0]))))

    def __repr__(self) -> str:
        score = "None" if self.score is None else f"{self.score:.3f}"
        return f"AlignedFace(box={self.box}, score={score}, quad_size={self.quad_size:.1f}, size={self.size})"

    @property
    def size(self) -> int:
        """Side of the aligned crop in pixels."""
        return int(self.image.shape[0])

    def transform(self, size: int | None = None) -> np.ndarray:
        """Source -> crop similarity for a crop of side ``size`` (default: this crop's).

        Shape: ``[3, 3]`` float64, acting on homogeneous ``(x, y, 1)`` pixel centres.
        """
        return quad_transform(self.quad, self.size if size is None else size)


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """The FFHQ crop quadrilateral of a face.

    Args:
        landmarks: 68 iBUG landmarks. Shape: ``[68, 2]`` ``(x, y)``.

    Returns:
        Corners ``c-x-y, c-x+y, c+x+y, c+x-y``. Shape: ``[4, 2]`` float64.

    Raises:
        InputError: Wrong shape or non-finite landmarks, or a degenerate face.
    """
    lm = _check_landmarks(landmarks)
    eye_left = lm[36:42].mean(axis=0)
    eye_right = lm[42:48].mean(axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg

    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    norm = np.hypot(*x)
    if not norm > 0:
        raise InputError("landmarks describe a degenerate face (eyes and mouth coincide)")
    x = x / norm * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def quad_transform(quad: np.ndarray, size: int) -> np.ndarray:
    """Affine map from source pixel centres to the pixel centres of a ``size`` crop of ``quad``.

    It is the map Pillow's QUAD warp samples with (crop pixel ``(u, v)`` reads the source at
    ``q0 + (q3 - q0) (u + 0.5) / size + (q1 - q0) (v + 0.5) / size``), inverted.

    Shape: ``quad`` ``[4, 2]``; returns ``[3, 3]`` float64.

    Raises:
        InputError: A bad ``size`` or a degenerate quad.
    """
    size = check_size(size, "size")
    quad = np.asarray(quad, dtype=np.float64)
    if quad.shape != (4, 2) or not np.isfinite(quad).all():
        raise InputError(f"quad must be a finite [4, 2] array, got shape {list(quad.shape)}")
    crop_to_src = np.eye(3)
    crop_to_src[:2, 0] = (quad[3] - quad[0]) / size
    crop_to_src[:2, 1] = (quad[1] - quad[0]) / size
    crop_to_src[:2, 2] = quad[0] + 0.5 * (crop_to_src[:2, 0] + crop_to_src[:2, 1])
    if abs(np.linalg.det(crop_to_src[:2, :2])) < 1e-12:
        raise InputError("quad is degenerate (zero area)")
    return np.linalg.inv(crop_to_src)


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a ``[3, 3]`` affine/projective matrix to points. Shape: ``[N, 2]`` -> ``[N, 2]``."""
    points = np.asarray(points, dtype=np.float64)
    homog = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ np.asarray(matrix).T
    return homog[:, :2] / homog[:, 2:3]


def align_face(
    image: np.ndarray,
    landmarks: np.ndarray,
    size: int = 256,
    *,
    transform_size: int | None = None,
    box: Box | None = None,
    score: float | None = None,
) -> AlignedFace:
    """Apply the FFHQ / e4e alignment recipe to a face with known landmarks.

    Args:
        image: The photo. Shape: ``[H, W, 3]`` uint8 RGB.
        landmarks: Its 68 iBUG landmarks in source pixels. Shape: ``[68, 2]`` ``(x, y)``.
        size: Side of the aligned crop (e4e: 256; FFHQ: 1024).
        transform_size: Side of the quad warp before a final Lanczos resize to ``size``
            (FFHQ uses 4096 for 1024); default ``size`` (e4e).
        box: Detector box to record; default the landmarks' bounding box.
        score: Detector confidence to record.

    Returns:
        The aligned face; its ``image`` has shape ``[size, size, 3]``.

    Raises:
        InputError: Bad image, landmarks or sizes, or a face under 4 pixels.
    """
    image = check_image(image)
    lm = _check_landmarks(landmarks)
    size = check_size(size, "size")
    transform_size = size if transform_size is None else check_size(transform_size, "transform_size")
    if transform_size < size:
        raise InputError(f"transform_size must be >= size ({size}), got {transform_size}")
    quad = ffhq_quad(lm)
    qsize = float(np.hypot(*(quad[3] - quad[0])))
    if qsize < MIN_QUAD_SIZE:
        raise InputError(f"landmarks describe a face of {qsize:.2f} px; at least {MIN_QUAD_SIZE} px are needed")
    crop = _warp_quad(image, quad, size, transform_size)
    if box is None:
        lo, hi = np.floor(lm.min(axis=0)), np.floor(lm.max(axis=0)) + 1
        box = (int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1]))
    else:
        box = tuple(int(v) for v in box)
    return AlignedFace(box=box, landmarks=lm, quad=quad, image=crop, score=None if score is None else float(score))


def _warp_quad(image: np.ndarray, quad: np.ndarray, size: int, transform_size: int) -> np.ndarray:
    """Shrink, crop, pad and warp as upstream does. Shape: ``[H, W, 3]`` -> ``[size, size, 3]``."""
    img = image
    quad = quad.copy()
    qsize = float(np.hypot(*(quad[3] - quad[0])))

    shrink = int(np.floor(qsize / size * 0.5))
    if shrink > 1:
        height, width = img.shape[:2]
        rsize = (max(int(np.rint(width / shrink)), 1), max(int(np.rint(height / shrink)), 1))
        img = np.asarray(Image.fromarray(img).resize(rsize, Image.Resampling.LANCZOS))
        quad = (quad + 0.5) * (np.array(rsize, dtype=np.float64) / (width, height)) - 0.5
        qsize /= shrink

    border = max(int(np.rint(qsize * 0.1)), 3)
    img, quad = _crop_around(img, quad, border)
    img, quad = _reflect_pad(img, quad, qsize, border)

    data = tuple((quad + 0.5).flatten())
    size2 = (transform_size, transform_size)
    out = Image.fromarray(img).transform(size2, Image.Transform.QUAD, data, Image.Resampling.BILINEAR)
    if size < transform_size:
        out = out.resize((size, size), Image.Resampling.LANCZOS)
    return np.array(out, dtype=np.uint8)


def _bounds(quad: np.ndarray) -> tuple[int, int, int, int]:
    return (
        int(np.floor(quad[:, 0].min())),
        int(np.floor(quad[:, 1].min())),
        int(np.ceil(quad[:, 0].max())),
        int(np.ceil(quad[:, 1].max())),
    )


def _crop_around(img: np.ndarray, quad: np.ndarray, border: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut the photo down to the quad's bounds plus ``border`` (a view, no copy)."""
    height, width = img.shape[:2]
    x0, y0, x1, y1 = _bounds(quad)
    crop = (max(x0 - border, 0), max(y0 - border, 0), min(x1 + border, width), min(y1 + border, height))
    if crop[2] - crop[0] < width or crop[3] - crop[1] < height:
        if crop[2] <= crop[0] or crop[3] <= crop[1]:
            raise InputError("the face's crop quadrilateral lies entirely outside the image")
        img = img[crop[1] : crop[3], crop[0] : crop[2]]
        quad = quad - crop[0:2]
    return img, quad


def _reflect_pad(img: np.ndarray, quad: np.ndarray, qsize: float, border: int) -> tuple[np.ndarray, np.ndarray]:
    """Reflect-pad where the quad leaves the image; fade the padding to blur and median colour."""
    x0, y0, x1, y1 = _bounds(quad)
    h, w = img.shape[:2]
    pad = np.array([max(-x0 + border, 0), max(-y0 + border, 0), max(x1 - w + border, 0), max(y1 - h + border, 0)])
    if not pad.max() > border - 4:
        return img, quad
    pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
    arr = np.pad(img.astype(np.float32), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
    h, w, _ = arr.shape
    yy, xx, _ = np.ogrid[:h, :w, :1]
    mask = np.maximum(
        1.0 - np.minimum(np.float32(xx) / pad[0], np.float32(w - 1 - xx) / pad[2]),
        1.0 - np.minimum(np.float32(yy) / pad[1], np.float32(h - 1 - yy) / pad[3]),
    )
    blur = qsize * 0.02
    arr += (scipy.ndimage.gaussian_filter(arr, [blur, blur, 0]) - arr) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
    return np.uint8(np.clip(np.rint(arr), 0, 255)), quad + pad[:2]


def _check_landmarks(landmarks: object) -> np.ndarray:
    try:
        lm = np.asarray(landmarks, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"landmarks must be a numeric [68, 2] array, got {type(landmarks).__name__}") from exc
    if lm.shape != (68, 2):
        raise InputError(f"landmarks must have shape [68, 2] (iBUG order), got {list(lm.shape)}")
    if not np.isfinite(lm).all():
        raise InputError("landmarks must be finite, got NaN or infinity")
    return lm


def check_size(size: object, name: str) -> int:
    """Validate a crop side: an int in 8..8192. Raises InputError naming ``name``."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8 or size > 8192:
        raise InputError(f"{name} must be an int in 8..8192, got {size!r}")
    return int(size)
