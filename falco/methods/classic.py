"""The classic baselines: Gaussian/box blur, pixelation and a black mask over the face region.

Parameters follow the papers that report them: Gaussian kernels of 9 x 9 and 17 x 17 (CIAGAN,
Table 1; sigma from OpenCV's rule for ``sigma=0``: ``0.3 ((k - 1) / 2 - 1) + 0.8``), DeepPrivacy's
"heavy blur" (``cv2.blur``, a box filter whose side is 30 % of the face box's width), and 8 x 8
or 16 x 16 pixelation (the face divided into that many blocks, each its mean colour).

The filters themselves are in :mod:`falco.methods.cover`. Two deliberate differences from the
upstream scripts, which filter the detector's box alone: the region is falco's face region, and
the filter sees the pixels around it (see :mod:`falco.methods.cover`).
"""

from __future__ import annotations

import numpy as np

from falco.errors import InputError
from falco.faces.ffhq import AlignedFace
from falco.faces.paste import DEFAULT_FOREHEAD
from falco.methods.base import Anonymizer, check_apply_args
from falco.methods.cover import check_feather, blur_face, gaussian_sigma, heavy_kernel, mask_face, pixelate_face

__all__ = ["BLUR_PRESETS", "PIXELATE_BLOCKS", "BlurAnonymizer", "MaskAnonymizer", "PixelateAnonymizer"]

BLUR_PRESETS: tuple[str, ...] = ("9", "17", "heavy")
PIXELATE_BLOCKS: tuple[int, ...] = (8, 16)


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
