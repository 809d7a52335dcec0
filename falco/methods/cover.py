"""Covering a face so it cannot be recognised: the primitives (blur, pixelate, mask over the
face region) and the fallback that ``--on-fail`` and the privacy guard use.

The region is falco's face region (:func:`falco.faces.paste.photo_mask`: landmark hull raised
over the forehead, hard edge by default), and the filter sees the pixels around the region, so
the face blends into its surroundings instead of showing a box. Borders of the photo are
reflected as OpenCV's default (``BORDER_REFLECT_101``).

``FALLBACKS`` and ``ON_FAIL`` are the one definition of the choices of ``--on-fail``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import scipy.ndimage
from PIL import Image

from falco.errors import InputError
from falco.faces.detect import check_image
from falco.faces.ffhq import AlignedFace
from falco.faces.paste import DEFAULT_FOREHEAD, photo_mask

__all__ = [
    "FALLBACKS",
    "ON_FAIL",
    "blur_face",
    "check_feather",
    "check_on_fail",
    "cover_failed",
    "fallback",
    "gaussian_sigma",
    "heavy_kernel",
    "mask_face",
    "paste_or_cover",
    "pixelate_face",
    "region",
]

#: What :func:`fallback` can do to a face.
FALLBACKS: tuple[str, ...] = ("blur", "pixelate", "mask")
#: The choices of ``--on-fail``: a fallback, or ``skip`` (leave the face as it is).
ON_FAIL: tuple[str, ...] = (*FALLBACKS, "skip")

Window = tuple[int, int, int, int]  # y0, y1, x0, x1


def region(photo_shape: tuple[int, ...], face: AlignedFace, *, feather: float = 0.0,
           forehead: float = DEFAULT_FOREHEAD) -> tuple[Window, np.ndarray] | None:
    """The face region as blending weights over its bounding window.

    Returns:
        ``((y0, y1, x0, x1), alpha)`` with ``alpha`` of shape ``[y1 - y0, x1 - x0]`` in [0, 1],
        or None when the region misses the photo.
    """
    alpha = photo_mask(face, photo_shape, feather=feather, forehead=forehead)
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    if rows.size == 0:
        return None
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return (y0, y1, x0, x1), alpha[y0:y1, x0:x1]


def _blend(photo: np.ndarray, window: Window, new: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``photo`` with ``new`` blended in by ``alpha`` over ``window``; untouched where alpha is 0.

    Shape: ``new`` ``[h, w, 3]`` float, ``alpha`` ``[h, w]``; returns a new ``[H, W, 3]`` uint8.
    """
    out = photo.copy()
    y0, y1, x0, x1 = window
    view = out[y0:y1, x0:x1]
    hit = alpha > 0
    old = view[hit].astype(np.float32)
    mixed = old + (new[hit].astype(np.float32) - old) * alpha[hit][:, None]
    view[hit] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out


def gaussian_sigma(ksize: int) -> float:
    """OpenCV's sigma for a Gaussian kernel of side ``ksize`` given ``sigma=0``."""
    return 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8


def _gaussian_kernel(ksize: int) -> np.ndarray:
    x = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2
    k = np.exp(-(x * x) / (2 * gaussian_sigma(ksize) ** 2))
    return k / k.sum()


def heavy_kernel(face: AlignedFace, photo_shape: tuple[int, ...]) -> int:
    """DeepPrivacy's heavy-blur kernel: ``max(1, int(0.3 * w))``, ``w`` the box width inside the photo."""
    x0, x1 = max(0, int(face.box[0])), min(int(photo_shape[1]), int(face.box[2]))
    return max(1, int(0.3 * max(x1 - x0, 0)))


def blur_face(photo: np.ndarray, face: AlignedFace, ksize: int, *, kind: str = "box", passes: int = 1,
              feather: float = 0.0, forehead: float = DEFAULT_FOREHEAD) -> np.ndarray:
    """Blur the face region of a photo.

    Args:
        photo: Shape: ``[H, W, 3]`` uint8; not modified.
        face: The face.
        ksize: Kernel side in pixels (>= 1).
        kind: ``'box'`` (normalised box filter, ``cv2.blur``) or ``'gaussian'`` (OpenCV's sigma).
        passes: How many times the filter is applied.
        feather, forehead: Region shape, as in :func:`falco.faces.paste.photo_mask`.

    Returns:
        A new photo, identical outside the region. Shape: ``[H, W, 3]`` uint8.
    """
    found = region(photo.shape, face, feather=feather, forehead=forehead)
    if found is None or ksize <= 1:
        return photo.copy()
    (y0, y1, x0, x1), alpha = found
    margin = ksize * passes
    wy0, wy1 = max(0, y0 - margin), min(photo.shape[0], y1 + margin)
    wx0, wx1 = max(0, x0 - margin), min(photo.shape[1], x1 + margin)
    sub = photo[wy0:wy1, wx0:wx1].astype(np.float32)
    weights = _gaussian_kernel(ksize) if kind == "gaussian" else None
    for _ in range(passes):
        for axis in (0, 1):
            if weights is None:
                sub = scipy.ndimage.uniform_filter1d(sub, ksize, axis=axis, mode="mirror")
            else:
                sub = scipy.ndimage.convolve1d(sub, weights, axis=axis, mode="mirror")
    inner = sub[y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0]
    return _blend(photo, (y0, y1, x0, x1), inner, alpha)


def pixelate_face(photo: np.ndarray, face: AlignedFace, blocks: int, *, feather: float = 0.0,
                  forehead: float = DEFAULT_FOREHEAD) -> np.ndarray:
    """Pixelate the face region: its bounding window as ``blocks x blocks`` cells of mean colour.

    Returns:
        A new photo, identical outside the region. Shape: ``[H, W, 3]`` uint8.
    """
    found = region(photo.shape, face, feather=feather, forehead=forehead)
    if found is None:
        return photo.copy()
    (y0, y1, x0, x1), alpha = found
    sub = Image.fromarray(np.ascontiguousarray(photo[y0:y1, x0:x1]))
    small = sub.resize((blocks, blocks), Image.Resampling.BOX)
    big = np.asarray(small.resize((x1 - x0, y1 - y0), Image.Resampling.NEAREST))
    return _blend(photo, (y0, y1, x0, x1), big, alpha)


def mask_face(photo: np.ndarray, face: AlignedFace, *, feather: float = 0.0,
              forehead: float = DEFAULT_FOREHEAD) -> np.ndarray:
    """Paint the face region black. Returns a new photo. Shape: ``[H, W, 3]`` uint8."""
    found = region(photo.shape, face, feather=feather, forehead=forehead)
    if found is None:
        return photo.copy()
    (y0, y1, x0, x1), alpha = found
    return _blend(photo, (y0, y1, x0, x1), np.zeros((*alpha.shape, 3), np.float32), alpha)


def check_feather(feather: object) -> float:
    """Validate a region's soft edge (a fraction of the aligned crop in [0, 0.5]). Raises InputError."""
    if isinstance(feather, bool) or not isinstance(feather, (int, float)) or not 0 <= feather <= 0.5:
        raise InputError(f"feather must be a number in [0, 0.5], got {feather!r}")
    return float(feather)


def check_on_fail(on_fail: object) -> str:
    """Validate an ``on_fail`` choice: one of :data:`FALLBACKS` or ``'skip'``. Raises InputError."""
    if on_fail not in ON_FAIL:
        raise InputError(f"--on-fail must be one of {', '.join(ON_FAIL)}, got {on_fail!r}")
    return str(on_fail)


def cover_failed(photo: np.ndarray, face: AlignedFace, reason: str, on_fail: str) -> tuple[np.ndarray, dict]:
    """Cover a face a method could not handle with :func:`fallback` (or leave it: ``'skip'``).

    Returns:
        ``(photo, record)``; the record says ``status`` 'fallback' or 'failed' and why.
    """
    if on_fail == "skip":
        return photo, {"method": "none", "status": "failed", "reason": reason, "fallback": "skip"}
    return fallback(photo, face, on_fail), {"method": on_fail, "status": "fallback", "reason": reason,
                                            "fallback": on_fail}


def paste_or_cover(photo: np.ndarray, faces: Sequence[AlignedFace], failed: Mapping[int, str], on_fail: str,
                   paste: Callable[[np.ndarray, int], tuple[np.ndarray, dict]]) -> tuple[np.ndarray, list[dict]]:
    """Every face's result in a copy of ``photo``: ``paste(out, i)`` for the faces the method handled,
    :func:`cover_failed` for those in ``failed`` (face index -> reason).

    Returns:
        ``(photo, records)``, one record per face.
    """
    out, records = photo.copy(), []
    for i, face in enumerate(faces):
        out, record = cover_failed(out, face, failed[i], on_fail) if i in failed else paste(out, i)
        records.append(record)
    return out, records


def fallback(photo: np.ndarray, face: AlignedFace, how: str = "blur") -> np.ndarray:
    """Cover one face so that it is not identifiable (for ``--on-fail`` and the privacy guard).

    ``'blur'`` is stronger than the heavy blur preset: three passes of a box filter 30 % of the
    face's width, at least 5 px (about a Gaussian of sigma 0.15 x the width), over the face region;
    ``'pixelate'`` is 8 x 8 blocks; ``'mask'`` paints the region black. The region is the one
    :func:`falco.faces.paste.photo_mask` gives, with a hard edge.

    Args:
        photo: The photo. Shape: ``[H, W, 3]`` uint8 RGB; not modified.
        face: The face to cover.
        how: ``'blur'``, ``'pixelate'`` or ``'mask'``.

    Returns:
        A new photo; pixels outside the face region are bit-identical. Shape: ``[H, W, 3]`` uint8.

    Raises:
        InputError: Unknown ``how``, a bad photo or a face that is not an AlignedFace.
    """
    if how not in FALLBACKS:
        raise InputError(f"fallback must be one of {', '.join(FALLBACKS)}, got {how!r}")
    photo = check_image(photo, "photo")
    if not isinstance(face, AlignedFace):
        raise InputError(f"face must be an AlignedFace, got {type(face).__name__}")
    if how == "blur":
        return blur_face(photo, face, max(heavy_kernel(face, photo.shape), 5), passes=3)
    if how == "pixelate":
        return pixelate_face(photo, face, 8)
    return mask_face(photo, face)

