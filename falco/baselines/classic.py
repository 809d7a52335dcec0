"""The classic baselines: Gaussian/box blur, pixelation and a black mask over the face region.

Parameters follow the papers that report them: Gaussian kernels of 9 x 9 and 17 x 17 (CIAGAN,
Table 1; sigma from OpenCV's rule for ``sigma=0``: ``0.3 ((k - 1) / 2 - 1) + 0.8``), DeepPrivacy's
"heavy blur" (``cv2.blur``, a box filter whose side is 30 % of the face box's width), and 8 x 8
or 16 x 16 pixelation (the face divided into that many blocks, each its mean colour).

Two deliberate differences from the upstream scripts, which filter the detector's box alone:
the region is falco's face region (:func:`falco.faces.paste.photo_mask`: landmark hull raised
over the forehead, hard edge by default), and the filter sees the pixels around the region,
so the face blends into its surroundings instead of showing a box. Borders of the photo are
reflected as OpenCV's default (``BORDER_REFLECT_101``).
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
from PIL import Image

from falco.baselines.base import Anonymizer, check_apply_args
from falco.errors import InputError
from falco.faces.ffhq import AlignedFace
from falco.faces.paste import DEFAULT_FOREHEAD, photo_mask

__all__ = [
    "BLUR_PRESETS",
    "PIXELATE_BLOCKS",
    "BlurAnonymizer",
    "MaskAnonymizer",
    "PixelateAnonymizer",
    "blur_face",
    "gaussian_sigma",
    "heavy_kernel",
    "mask_face",
    "pixelate_face",
    "region",
]

BLUR_PRESETS: tuple[str, ...] = ("9", "17", "heavy")
PIXELATE_BLOCKS: tuple[int, ...] = (8, 16)

Window = tuple[int, int, int, int]  # y0, y1, x0, x1


# ---------------------------------------------------------------------- primitives
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


def _check_feather(feather: object) -> float:
    if isinstance(feather, bool) or not isinstance(feather, (int, float)) or not 0 <= feather <= 0.5:
        raise InputError(f"feather must be a number in [0, 0.5], got {feather!r}")
    return float(feather)


# ---------------------------------------------------------------------- anonymizers
class _Classic(Anonymizer):
    def __init__(self, *, feather: float = 0.0) -> None:
        self.feather = _check_feather(feather)

    def settings(self) -> dict:
        return {"method": self.name, "feather": self.feather, "forehead": DEFAULT_FOREHEAD}

    def _one(self, photo: np.ndarray, face: AlignedFace) -> tuple[np.ndarray, dict]:
        raise NotImplementedError

    def apply(self, photo: np.ndarray, faces: list[AlignedFace], results: list) -> tuple[np.ndarray, list[dict]]:
        out = check_apply_args(photo, faces, results)
        records = []
        for face in faces:
            out, record = self._one(out, face)
            records.append({"method": self.name, "status": "done", **record})
        return (out.copy() if out is photo else out), records


class BlurAnonymizer(_Classic):
    """Blur each face: ``preset`` '9' or '17' (Gaussian kernels, CIAGAN) or 'heavy' (DeepPrivacy).

    Args:
        preset: '9', '17' (ints accepted) or 'heavy' (box filter 30 % of the face box's width).
        feather: Soft edge of the region as a fraction of the aligned crop (0 = hard edge).
    """

    name = "blur"

    def __init__(self, preset: str | int = "heavy", *, feather: float = 0.0) -> None:
        super().__init__(feather=feather)
        preset = str(preset) if isinstance(preset, (int, np.integer)) and not isinstance(preset, bool) else preset
        if preset not in BLUR_PRESETS:
            raise InputError(f"blur preset must be one of {', '.join(BLUR_PRESETS)}, got {preset!r}")
        self.preset = preset

    def settings(self) -> dict:
        if self.preset == "heavy":
            kernel: dict = {"filter": "box", "kernel": "30% of face box width"}
        else:
            k = int(self.preset)
            kernel = {"filter": "gaussian", "kernel": k, "sigma": round(gaussian_sigma(k), 4)}
        return {**super().settings(), "preset": self.preset, **kernel}

    def _one(self, photo: np.ndarray, face: AlignedFace) -> tuple[np.ndarray, dict]:
        if self.preset == "heavy":
            k = heavy_kernel(face, photo.shape)
            return blur_face(photo, face, k, kind="box", feather=self.feather), {"preset": "heavy", "filter": "box",
                                                                                  "kernel": k}
        k = int(self.preset)
        return blur_face(photo, face, k, kind="gaussian", feather=self.feather), {
            "preset": self.preset, "filter": "gaussian", "kernel": k, "sigma": round(gaussian_sigma(k), 4)}


class PixelateAnonymizer(_Classic):
    """Pixelate each face into ``blocks x blocks`` cells (8 or 16, as in CIAGAN and DeepPrivacy)."""

    name = "pixelate"

    def __init__(self, blocks: int = 16, *, feather: float = 0.0) -> None:
        super().__init__(feather=feather)
        if isinstance(blocks, bool) or blocks not in PIXELATE_BLOCKS:
            raise InputError(f"pixelate blocks must be one of {', '.join(map(str, PIXELATE_BLOCKS))}, got {blocks!r}")
        self.blocks = int(blocks)

    def settings(self) -> dict:
        return {**super().settings(), "blocks": self.blocks}

    def _one(self, photo: np.ndarray, face: AlignedFace) -> tuple[np.ndarray, dict]:
        return pixelate_face(photo, face, self.blocks, feather=self.feather), {"blocks": self.blocks}


class MaskAnonymizer(_Classic):
    """Paint each face region black."""

    name = "mask"

    def _one(self, photo: np.ndarray, face: AlignedFace) -> tuple[np.ndarray, dict]:
        return mask_face(photo, face, feather=self.feather), {"colour": [0, 0, 0]}
