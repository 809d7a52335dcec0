"""Putting a new aligned face back into its photo.

The new crop is warped back through the inverse of the face's quad transform (bilinear,
after a Lanczos pre-shrink where the face is smaller in the photo than the crop) and
blended with a soft mask of the face region. The mask lives in crop coordinates: the
convex hull of the 68 landmarks, raised over the forehead, with a smooth ramp of width
``feather`` across its edge. Photo pixels where the warped mask is exactly zero are never
written, so everything outside the face stays bit-identical.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
from PIL import Image, ImageDraw

from falco.errors import InputError
from falco.faces.detect import check_image
from falco.faces.ffhq import AlignedFace, apply_transform

__all__ = ["face_mask", "paste_back", "photo_mask"]

DEFAULT_FEATHER = 0.05
DEFAULT_FOREHEAD = 0.6


def face_mask(
    face: AlignedFace,
    size: int | None = None,
    *,
    feather: float = DEFAULT_FEATHER,
    forehead: float = DEFAULT_FOREHEAD,
) -> np.ndarray:
    """Soft mask of the face region in the coordinates of its aligned crop.

    The region is the convex hull of the landmarks plus the eyebrow points raised by
    ``forehead`` times the eye-to-mouth distance. Its edge is a smoothstep ramp ``feather``
    wide (a fraction of the crop side), centred on the hull; the mask also fades to zero at
    the crop's border.

    Args:
        face: The face.
        size: Side of the crop the mask is for (default ``face.size``).
        feather: Width of the soft edge as a fraction of ``size``, in [0, 0.5]; 0 is a hard edge.
        forehead: How far above the eyebrows the region reaches, in eye-to-mouth lengths, >= 0.

    Returns:
        Weights in [0, 1]. Shape: ``[size, size]`` float32.
    """
    size = face.size if size is None else _check_int(size, "size")
    feather = _check_fraction(feather, "feather", 0.5)
    forehead = _check_fraction(forehead, "forehead", 3.0)
    pts = apply_transform(face.transform(size), _region_points(face.landmarks, forehead))
    hull = _convex_hull(pts + 0.5)  # PIL draws in pixel-corner coordinates
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in hull], fill=1)
    inside = np.asarray(canvas, dtype=bool)
    if feather == 0:
        return inside.astype(np.float32)
    width = feather * size
    signed = scipy.ndimage.distance_transform_edt(inside) - scipy.ndimage.distance_transform_edt(~inside)
    ramp = _smoothstep((signed + 0.5 * width) / width)
    idx = np.arange(size, dtype=np.float64)
    edge = np.minimum(idx + 0.5, size - 0.5 - idx)
    ramp *= _smoothstep(edge[:, None] / width) * _smoothstep(edge[None, :] / width)
    return ramp.astype(np.float32)


def photo_mask(
    face: AlignedFace,
    shape: tuple[int, ...],
    *,
    feather: float = DEFAULT_FEATHER,
    forehead: float = DEFAULT_FOREHEAD,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """The blending weights :func:`paste_back` uses, in photo coordinates.

    Args:
        face: The face.
        shape: The photo's shape (``[H, W, ...]``).
        feather, forehead: As in :func:`face_mask`.
        mask: A custom crop-space mask instead of :func:`face_mask`. Shape: ``[M, M]`` in [0, 1].

    Returns:
        Weights in [0, 1]; zero exactly where :func:`paste_back` leaves the photo untouched.
        Shape: ``[H, W]`` float32.
    """
    height, width = int(shape[0]), int(shape[1])
    out = np.zeros((height, width), dtype=np.float32)
    window = _window(face, height, width)
    if window is not None:
        y0, y1, x0, x1 = window
        out[y0:y1, x0:x1] = _window_alpha(face, window, feather, forehead, mask)
    return out


def paste_back(
    photo: np.ndarray,
    face: AlignedFace,
    new_crop: np.ndarray,
    *,
    feather: float = DEFAULT_FEATHER,
    forehead: float = DEFAULT_FOREHEAD,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Blend a new aligned face into the photo the face came from.

    Args:
        photo: The photo. Shape: ``[H, W, 3]`` uint8 RGB. Not modified.
        face: The face, as :func:`falco.align.detect_and_align` returned it.
        new_crop: The replacement, aligned like ``face.image`` but of any side ``N``
            (a 1024-px generator output works). Shape: ``[N, N, 3]`` uint8 RGB.
        feather, forehead: Shape of the blending mask, as in :func:`face_mask`.
        mask: A custom crop-space mask instead of :func:`face_mask`. Shape: ``[M, M]`` in [0, 1].

    Returns:
        A new photo; pixels where :func:`photo_mask` is zero are bit-identical to ``photo``.
        Shape: ``[H, W, 3]`` uint8.

    Raises:
        InputError: Bad photo, crop, mask or mask parameters.
    """
    photo = check_image(photo, "photo")
    new_crop = check_image(new_crop, "new_crop")
    if new_crop.shape[0] != new_crop.shape[1]:
        raise InputError(f"new_crop must be square, got shape {list(new_crop.shape)}")
    out = photo.copy()
    window = _window(face, *photo.shape[:2])
    if window is None:
        return out
    alpha = _window_alpha(face, window, feather, forehead, mask)
    hit = alpha > 0
    if not hit.any():
        return out
    n = _work_size(face, new_crop.shape[0])
    if n != new_crop.shape[0]:  # the face is smaller in the photo: pre-shrink against aliasing
        new_crop = np.asarray(Image.fromarray(new_crop).resize((n, n), Image.Resampling.LANCZOS))
    coords = _crop_coords(face, n, window)[:, hit]
    warped = np.stack([_sample(new_crop[:, :, c].astype(np.float32), coords) for c in range(3)], axis=1)
    y0, y1, x0, x1 = window
    view = out[y0:y1, x0:x1]
    old = view[hit].astype(np.float32)
    view[hit] = np.clip(np.rint(old + (warped - old) * alpha[hit][:, None]), 0, 255).astype(np.uint8)
    return out


def _region_points(landmarks: np.ndarray, forehead: float) -> np.ndarray:
    """Landmarks plus the eyebrows raised over the forehead. Shape: ``[78, 2]``."""
    eye_avg = landmarks[36:48].mean(axis=0)
    mouth_avg = (landmarks[48] + landmarks[54]) * 0.5
    up = eye_avg - mouth_avg
    return np.concatenate([landmarks, landmarks[17:27] + forehead * up], axis=0)


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain. Shape: ``[N, 2]`` -> ``[K, 2]``, counter-clockwise."""
    pts = sorted(map(tuple, np.asarray(points, dtype=np.float64)))

    def half(seq):
        chain: list[tuple[float, float]] = []
        for p in seq:
            while len(chain) >= 2:
                (ax, ay), (bx, by) = chain[-2], chain[-1]
                if (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax) > 0:
                    break
                chain.pop()
            chain.append(p)
        return chain[:-1]

    return np.array(half(pts) + half(pts[::-1]))


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _work_size(face: AlignedFace, crop_size: int) -> int:
    """Resolution to warp back from: the crop's, capped at twice the face's size in the photo.

    Bilinear sampling from at most 2x the target resolution keeps aliasing mild, and the
    2x margin keeps a round trip sharp (a 1x pre-shrink costs about 4 dB of PSNR).
    """
    return int(min(crop_size, max(int(np.ceil(2.0 * face.quad_size)), 8)))


def _window_alpha(
    face: AlignedFace, window: tuple[int, int, int, int], feather: float, forehead: float, mask: np.ndarray | None
) -> np.ndarray:
    """Blending weights over the photo window. Shape: ``[y1 - y0, x1 - x0]`` float32."""
    if mask is None:
        n = _work_size(face, face.size)
        crop_mask = face_mask(face, n, feather=feather, forehead=forehead)
    else:
        crop_mask = np.asarray(mask, dtype=np.float32)
        if crop_mask.ndim != 2 or crop_mask.shape[0] != crop_mask.shape[1] or crop_mask.shape[0] == 0:
            raise InputError(f"mask must be a square [M, M] array, got shape {list(crop_mask.shape)}")
        if not np.isfinite(crop_mask).all() or crop_mask.min() < 0 or crop_mask.max() > 1:
            raise InputError("mask values must lie in [0, 1]")
        n = _work_size(face, crop_mask.shape[0])
        if n != crop_mask.shape[0]:
            crop_mask = np.asarray(Image.fromarray(crop_mask, "F").resize((n, n), Image.Resampling.BOX))
            crop_mask = np.clip(crop_mask, 0.0, 1.0)
    return _sample(crop_mask, _crop_coords(face, n, window), cval=0.0).astype(np.float32)


def _window(face: AlignedFace, height: int, width: int) -> tuple[int, int, int, int] | None:
    """Photo window ``(y0, y1, x0, x1)`` covering the face's quad, or None if it misses the photo."""
    quad = face.quad
    x0 = max(int(np.floor(quad[:, 0].min())) - 1, 0)
    y0 = max(int(np.floor(quad[:, 1].min())) - 1, 0)
    x1 = min(int(np.ceil(quad[:, 0].max())) + 2, width)
    y1 = min(int(np.ceil(quad[:, 1].max())) + 2, height)
    if x1 <= x0 or y1 <= y0:
        return None
    return y0, y1, x0, x1


def _crop_coords(face: AlignedFace, n: int, window: tuple[int, int, int, int]) -> np.ndarray:
    """Crop coordinates (row, col) of the window's pixels in a side-``n`` crop. Shape: ``[2, h, w]``."""
    y0, y1, x0, x1 = window
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    m = face.transform(n)
    u = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    v = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    return np.stack([v, u])


def _sample(grid: np.ndarray, coords: np.ndarray, cval: float | None = None) -> np.ndarray:
    """Bilinear sampling at (row, col) coordinates; ``cval=None`` clamps at the edges."""
    mode = "nearest" if cval is None else "constant"
    return scipy.ndimage.map_coordinates(grid, coords, order=1, mode=mode, cval=cval or 0.0, prefilter=False)


def _check_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_fraction(value: object, name: str, upper: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0 <= value <= upper:
        raise InputError(f"{name} must be a number in [0, {upper}], got {value!r}")
    return float(value)
