"""The classic baselines: Gaussian/box blur, pixelation and a black mask over the face region.

Parameters follow the papers that report them: Gaussian kernels of 9 x 9 and 17 x 17 (CIAGAN,
Table 1; sigma from OpenCV's rule for ``sigma=0``: ``0.3 ((k - 1) / 2 - 1) + 0.8``), DeepPrivacy's
"heavy blur" (``cv2.blur``, a box filter whose side is 30 % of the face box's width), and 8 x 8
or 16 x 16 pixelation (the face divided into that many blocks, each its mean colour).

The filters themselves are in :mod:`falco.methods.cover`. Two deliberate differences from the
upstream scripts, which filter the detector's box alone: the region is falco's face region, and
the filter sees the pixels around it (see :mod:`falco.methods.cover`).

Published presets reproduce the papers' own setups (:data:`PAPER_BLUR`, :data:`PAPER_PIXELATE`):
``ciagan-9x9``/``ciagan-17x17`` (blur) and ``ciagan-16x16``/``ciagan-8x8`` (pixelate) filter the
whole 128 x 128 CIAGAN face crop, the sizes in that crop's pixels (pixelation: block size);
``deepprivacy-heavy``/``deepprivacy-gaussian`` and ``deepprivacy-8x8``/``deepprivacy-16x16``
filter the detector box alone, as DeepPrivacy's ``inference/blur.py`` does (pixelation: blocks).
"""

from __future__ import annotations

import numpy as np

from falco.errors import InputError
from falco.faces.ffhq import AlignedFace
from falco.faces.paste import DEFAULT_FOREHEAD
from falco.methods.base import Anonymizer, check_apply_args
from falco.methods.cover import check_feather, blur_face, gaussian_sigma, heavy_kernel, mask_face, pixelate_face, region

__all__ = ["BLUR_PRESETS", "CIAGAN_CROP", "PAPER_BLUR", "PAPER_PIXELATE", "PIXELATE_BLOCKS", "PIXELATE_PRESETS",
           "BlurAnonymizer", "MaskAnonymizer", "PaperFilter", "PixelateAnonymizer", "ciagan_test_crop",
           "ciagan_window"]


# ------------------------------------------------------------------ the papers' own setups
#: CIAGAN's crops: ``process_data.py`` cuts a 178 x 218 "clr" crop around the eyes; at test time
#: ``util_data.ImageDataset.load_img`` resizes it to 144 x 144 and keeps the central 128 x 128.
CIAGAN_CROP = {"clr": (178, 218), "resized": 144, "crop": 128}


def ciagan_window(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    """The photo region ``(x0, y0, x1, y1)`` that becomes CIAGAN's 128-px test crop of a face.

    dvl-tum/ciagan ``source/process_data.py`` (lines 49-54): centre between landmarks 39 and 42,
    ``h_r = int(5 d)``, ``w_r = int(h_r / 218 * 178)`` (``d`` = their horizontal distance); the
    "clr" crop spans ``centre +- (w_r, h_r)``. ``source/util_data.py`` (``load_img``, lines 64-92,
    ``flag_augment=False``) keeps its central 128/144.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    c_x, c_y = int((lm[42, 0] + lm[39, 0]) / 2), int((lm[42, 1] + lm[39, 1]) / 2)
    h_r = int((lm[42, 0] - lm[39, 0]) * 5)
    w_r = int(h_r / 218 * 178)
    if h_r < 4 or w_r < 4:
        raise InputError(f"face too small for CIAGAN's crop (eye distance {lm[42, 0] - lm[39, 0]:.1f} px)")
    f0, f1 = 8 / 144, 136 / 144
    return (c_x - w_r + 2 * w_r * f0, c_y - h_r + 2 * h_r * f0, c_x - w_r + 2 * w_r * f1, c_y - h_r + 2 * h_r * f1)


def ciagan_test_crop(clr: np.ndarray) -> np.ndarray:
    """CIAGAN's 128 x 128 test crop of a 178 x 218 "clr" image (``load_img``: Lanczos to 144 x 144,
    central 128 x 128). Shape: ``[218, 178, 3]`` uint8 -> ``[128, 128, 3]`` uint8."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(clr)).resize((144, 144), Image.Resampling.LANCZOS)
    return np.asarray(im.crop((8, 8, 136, 136)))


def _edge_window(photo: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """``photo[y0:y1, x0:x1]`` with the parts outside the photo edge-padded (as ``process_data.py``)."""
    h, w = photo.shape[:2]
    ys = np.clip(np.arange(y0, y1), 0, h - 1)
    xs = np.clip(np.arange(x0, x1), 0, w - 1)
    return photo[ys[:, None], xs[None, :]]


def _cv_gaussian(img: np.ndarray, k: int, sigma: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(img, (k, k), sigmaX=sigma, sigmaY=sigma)


def _cv_pixelate(img: np.ndarray, cells: tuple[int, int], down, up) -> np.ndarray:
    import cv2

    small = cv2.resize(img, cells, interpolation=down)
    return cv2.resize(small, (img.shape[1], img.shape[0]), interpolation=up)


class PaperFilter:
    """One published baseline: what it filters (``region``) and how (``kind``, ``size``).

    ``region='ciagan-crop'``: the face's CIAGAN test window (:func:`ciagan_window`) is resampled to
    128 x 128 (Lanczos), filtered there, resampled back and written over the window (the whole
    crop is filtered, background included). ``region='box'``: the detector box alone, filtered in
    place with OpenCV as DeepPrivacy's ``deep_privacy/inference/blur.py`` does.
    """

    def __init__(self, name: str, region: str, kind: str, size: int, source: str, **params) -> None:
        self.name, self.region, self.kind, self.size, self.source, self.params = name, region, kind, size, source, params

    def settings(self) -> dict:
        return {"region": self.region, "filter": self.kind, "size": self.size, **self.params, "source": self.source}

    def filter(self, img: np.ndarray) -> np.ndarray:
        import cv2

        if self.kind == "gaussian":
            return _cv_gaussian(img, self.size, self.params.get("sigma", 0))
        if self.kind == "box":  # DeepPrivacy heavy blur: side 30 % of the box width
            k = max(1, int(0.3 * img.shape[1]))
            return cv2.blur(img, (k, k))
        if self.kind == "pixel-size":  # cells of `size` px: area-averaged, drawn as flat blocks
            cells = (max(1, img.shape[1] // self.size), max(1, img.shape[0] // self.size))
            return _cv_pixelate(img, cells, cv2.INTER_AREA, cv2.INTER_NEAREST)
        # "pixel-blocks": DeepPrivacy: cv2.resize to (n, n) and back, OpenCV's default (bilinear) both ways
        return _cv_pixelate(img, (self.size, self.size), cv2.INTER_LINEAR, cv2.INTER_LINEAR)


_CIAGAN_SRC = "Maximov et al., CIAGAN, CVPR 2020, Table 1 (filters on the 128-px crop; dvl-tum/ciagan has no baseline code)"
_DP_SRC = "hukkelas/DeepPrivacy deep_privacy/inference/blur.py (PixelationAnonymizer, BlurAnonymizer)"
PAPER_BLUR: dict[str, PaperFilter] = {
    "ciagan-9x9": PaperFilter("ciagan-9x9", "ciagan-crop", "gaussian", 9, _CIAGAN_SRC, sigma=0),
    "ciagan-17x17": PaperFilter("ciagan-17x17", "ciagan-crop", "gaussian", 17, _CIAGAN_SRC, sigma=0),
    "deepprivacy-heavy": PaperFilter("deepprivacy-heavy", "box", "box", 0, _DP_SRC, kernel="30% of box width"),
    "deepprivacy-gaussian": PaperFilter("deepprivacy-gaussian", "box", "gaussian", 9, _DP_SRC, sigma=3),
}
PAPER_PIXELATE: dict[str, PaperFilter] = {
    "ciagan-16x16": PaperFilter("ciagan-16x16", "ciagan-crop", "pixel-size", 16, _CIAGAN_SRC, unit="block side, px"),
    "ciagan-8x8": PaperFilter("ciagan-8x8", "ciagan-crop", "pixel-size", 8, _CIAGAN_SRC, unit="block side, px"),
    "deepprivacy-8x8": PaperFilter("deepprivacy-8x8", "box", "pixel-blocks", 8, _DP_SRC, unit="blocks"),
    "deepprivacy-16x16": PaperFilter("deepprivacy-16x16", "box", "pixel-blocks", 16, _DP_SRC, unit="blocks"),
}


def apply_paper_filter(f: PaperFilter, photo: np.ndarray, face: AlignedFace) -> tuple[np.ndarray, dict]:
    """``photo`` with one face filtered as the paper did; returns ``(new photo, record)``."""
    from PIL import Image

    out = photo.copy()
    h, w = photo.shape[:2]
    if f.region == "box":
        x0, y0 = max(0, int(face.box[0])), max(0, int(face.box[1]))
        x1, y1 = min(w, int(face.box[2])), min(h, int(face.box[3]))
        if x1 > x0 and y1 > y0:
            out[y0:y1, x0:x1] = f.filter(np.ascontiguousarray(photo[y0:y1, x0:x1]))
        return out, {"preset": f.name, "region": [x0, y0, x1, y1]}
    fx0, fy0, fx1, fy1 = ciagan_window(face.landmarks)
    x0, y0, x1, y1 = (int(round(v)) for v in (fx0, fy0, fx1, fy1))
    win = _edge_window(photo, x0, y0, x1, y1)
    crop = np.asarray(Image.fromarray(win).resize((128, 128), Image.Resampling.LANCZOS))
    back = np.asarray(Image.fromarray(f.filter(crop)).resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS))
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if cx1 > cx0 and cy1 > cy0:
        out[cy0:cy1, cx0:cx1] = back[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    return out, {"preset": f.name, "region": [x0, y0, x1, y1]}


def _pixelate_cells(photo: np.ndarray, face: AlignedFace, block_size: int, feather: float) -> tuple[np.ndarray, list]:
    """Pixelate falco's face region in cells of ``block_size`` photo pixels (area means)."""
    found = region(photo.shape, face, feather=feather)
    if found is None:
        return photo.copy(), [0, 0]
    (y0, y1, x0, x1), alpha = found
    cells = [max(1, -(-(x1 - x0) // block_size)), max(1, -(-(y1 - y0) // block_size))]
    from PIL import Image

    sub = Image.fromarray(np.ascontiguousarray(photo[y0:y1, x0:x1]))
    big = np.asarray(sub.resize(tuple(cells), Image.Resampling.BOX).resize((x1 - x0, y1 - y0), Image.Resampling.NEAREST))
    out = photo.copy()
    view, a = out[y0:y1, x0:x1], alpha[..., None]
    view[...] = np.clip(np.rint(view * (1 - a) + big * a), 0, 255).astype(np.uint8)
    return out, cells

BLUR_PRESETS: tuple[str, ...] = ("9", "17", "heavy", *PAPER_BLUR)
PIXELATE_BLOCKS: tuple[int, ...] = (8, 16)
PIXELATE_PRESETS: tuple[str, ...] = tuple(PAPER_PIXELATE)


# ---------------------------------------------------------------------- anonymizers
class _Classic(Anonymizer):
    def __init__(self, *, feather: float = 0.0) -> None:
        self.feather = check_feather(feather)

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
    """Blur each face: ``preset`` '9' or '17' (Gaussian kernels, CIAGAN) or 'heavy' (DeepPrivacy),
    over falco's face region; or a published setup (``ciagan-9x9``, ``ciagan-17x17``,
    ``deepprivacy-heavy``, ``deepprivacy-gaussian``) over the paper's own region.

    Args:
        preset: '9', '17' (ints accepted), 'heavy' (box filter 30 % of the face box's width) or
            a published preset (:data:`BLUR_PRESETS`).
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
        if self.preset in PAPER_BLUR:
            return {**super().settings(), "preset": self.preset, **PAPER_BLUR[self.preset].settings()}
        if self.preset == "heavy":
            kernel: dict = {"filter": "box", "kernel": "30% of face box width"}
        else:
            k = int(self.preset)
            kernel = {"filter": "gaussian", "kernel": k, "sigma": round(gaussian_sigma(k), 4)}
        return {**super().settings(), "preset": self.preset, **kernel}

    def _one(self, photo: np.ndarray, face: AlignedFace) -> tuple[np.ndarray, dict]:
        if self.preset in PAPER_BLUR:
            return apply_paper_filter(PAPER_BLUR[self.preset], photo, face)
        if self.preset == "heavy":
            k = heavy_kernel(face, photo.shape)
            return blur_face(photo, face, k, kind="box", feather=self.feather), {"preset": "heavy", "filter": "box",
                                                                                  "kernel": k}
        k = int(self.preset)
        return blur_face(photo, face, k, kind="gaussian", feather=self.feather), {
            "preset": self.preset, "filter": "gaussian", "kernel": k, "sigma": round(gaussian_sigma(k), 4)}


class PixelateAnonymizer(_Classic):
    """Pixelate each face region: ``blocks x blocks`` cells (8 or 16), or cells of ``block_size``
    pixels, or a published setup (``preset``: :data:`PIXELATE_PRESETS`). At most one of the
    three; none means 16 blocks.

    Args:
        blocks: Cells across the face region's bounding window (8 or 16).
        block_size: Side of a cell in photo pixels (2..256); the window is cut into
            ``ceil(side / block_size)`` cells each way.
        preset: ``ciagan-16x16`` / ``ciagan-8x8`` (blocks of 16 / 8 px on the 128-px CIAGAN
            crop) or ``deepprivacy-8x8`` / ``deepprivacy-16x16`` (8 / 16 blocks on the box).
    """

    name = "pixelate"

    def __init__(self, blocks: int | None = None, *, block_size: int | None = None, preset: str | None = None,
                 feather: float = 0.0) -> None:
        super().__init__(feather=feather)
        if sum(v is not None for v in (blocks, block_size, preset)) > 1:
            raise InputError("pixelate takes one of blocks, block_size or preset, got "
                             f"blocks={blocks!r}, block_size={block_size!r}, preset={preset!r}")
        if preset is not None and preset not in PAPER_PIXELATE:
            raise InputError(f"pixelate preset must be one of {', '.join(PIXELATE_PRESETS)}, got {preset!r}")
        if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer))
                                       or not 2 <= block_size <= 256):
            raise InputError(f"pixelate block_size must be an integer number of pixels in 2..256, got {block_size!r}")
        if blocks is None and block_size is None and preset is None:
            blocks = 16
        if blocks is not None and (isinstance(blocks, bool) or blocks not in PIXELATE_BLOCKS):
            raise InputError(f"pixelate blocks must be one of {', '.join(map(str, PIXELATE_BLOCKS))}, got {blocks!r}")
        self.blocks = int(blocks) if blocks is not None else None
        self.block_size = int(block_size) if block_size is not None else None
        self.preset = preset

    def settings(self) -> dict:
        if self.preset is not None:
            return {**super().settings(), "preset": self.preset, **PAPER_PIXELATE[self.preset].settings()}
        if self.block_size is not None:
            return {**super().settings(), "block_size": self.block_size}
        return {**super().settings(), "blocks": self.blocks}

    def _one(self, photo: np.ndarray, face: AlignedFace) -> tuple[np.ndarray, dict]:
        if self.preset is not None:
            return apply_paper_filter(PAPER_PIXELATE[self.preset], photo, face)
        if self.block_size is not None:
            out, cells = _pixelate_cells(photo, face, self.block_size, self.feather)
            return out, {"block_size": self.block_size, "blocks": cells}
        return pixelate_face(photo, face, self.blocks, feather=self.feather), {"blocks": self.blocks}


class MaskAnonymizer(_Classic):
    """Paint each face region black."""

    name = "mask"

    def _one(self, photo: np.ndarray, face: AlignedFace) -> tuple[np.ndarray, dict]:
        return mask_face(photo, face, feather=self.feather), {"colour": [0, 0, 0]}
