"""DeepPrivacy v1 (Hukkelås et al., ISVC 2019) as a baseline: upstream input, generator, paste-back.

Per face, as hukkelas/DeepPrivacy's ``ImageAnnotation`` / ``DeepPrivacyAnonymizer`` do it
(v1 config: no face rotation, ``simple_expand=False``):

1. The face box is made square and expanded by 35 % of its side (``box_utils.expand_bbox``,
   kept inside the photo; if that is impossible, the simple 70 % expansion, zero-padded).
2. That square is cut out and resized to 128 x 128 (Pillow's bicubic, antialiased when
   shrinking; upstream uses OpenCV's ``INTER_CUBIC``), scaled to [-1, 1]; the face box (in the
   128 grid, truncated to ints) is the region to generate: ``mask`` is 0 there and the
   condition is ``image * mask``.
3. Seven keypoints (nose, left eye, right eye, left ear, right ear, left shoulder, right
   shoulder; "left" is the person's left) relative to the square, divided by its side and
   clipped to [0, 1]; the generator drops any keypoint that ends at 1.
4. ``z``: zeros with truncation 0 (upstream's default) or, with ``truncation > 0``, a
   standard normal resampled until every ``|z| < truncation``, seeded per face.
5. The output, ``(x + 1) / 2`` clamped to [0, 1], replaces exactly the face box in the photo
   (upstream's ``stitch_faces``; its optional down-and-up resize of the background around the
   box is not done, so everything outside the box stays bit-identical).

Keypoints come from falco's 68 dlib landmarks instead of Mask R-CNN (an approximation):
nose = point 30 (nose tip); eyes = means of points 42-47 (person's left) and 36-41 (right);
ears = the ends of the jaw line (points 16 and 0) pushed outward by 10 % of the jaw's width;
shoulders are estimated from head proportions (eye midpoint ``e``, chin ``c`` = point 8,
``h = |c - e|``, ``d`` the unit vector from ``e`` to ``c``, ``s`` its normal towards the
person's left): ``c + 1.0 h d +- 1.6 h s``, or omitted with ``shoulders='omit'`` (set to 1, which
the generator drops). Mask R-CNN's shoulders are usually outside the square too, so most
estimated shoulders end up clipped as upstream's would.

The face box is dlib's HOG box widened to falco's face region (landmark hull raised over the
forehead, :func:`falco.faces.paste.photo_mask`), because dlib's boxes are tighter than the
DSFD boxes DeepPrivacy was trained with and would leave the forehead untouched.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image

from falco.methods._frame import Frame, crop_padded, paste_frame
from falco.methods.base import (Anonymizer, check_apply_args, check_seed_and_batch, face_seed, load_method_generator,
                                prepare_all)
from falco.methods.cover import check_on_fail, paste_or_cover
from falco.methods.cover import region
from falco.models.deepprivacy_net import DeepPrivacyV1, load_generator
from falco.errors import InputError
from falco.faces.ffhq import AlignedFace

__all__ = [
    "KEYPOINT_NAMES",
    "DeepPrivacyAnonymizer",
    "DeepPrivacyV1",
    "expand_bbox",
    "face_box",
    "keypoints_from_landmarks",
    "load_generator",
    "network_inputs",
    "truncated_z",
]

IMSIZE = 128
KEYPOINT_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder")
EAR_OUT = 0.10  # ears: jaw ends pushed outward by this fraction of the jaw width
SHOULDER_DOWN, SHOULDER_SIDE = 1.0, 1.6  # shoulders: chin + DOWN*h*d +- SIDE*h*s


class _NoFit(Exception):
    """Upstream's expand_bounding_box gave up (it asserts); fall back to the simple expansion."""


def keypoints_from_landmarks(landmarks: np.ndarray, shoulders: str = "estimate") -> np.ndarray:
    """DeepPrivacy's 7 keypoints approximated from 68 dlib landmarks (see the module docstring).

    Shape: ``landmarks`` ``[68, 2]`` photo pixels; returns ``[7, 2]`` (omitted shoulders are NaN).

    Raises:
        InputError: Bad landmarks or ``shoulders`` not 'estimate' / 'omit'.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2) or not np.isfinite(lm).all():
        raise InputError(f"landmarks must be a finite [68, 2] array, got shape {list(lm.shape)}")
    if shoulders not in ("estimate", "omit"):
        raise InputError(f"shoulders must be 'estimate' or 'omit', got {shoulders!r}")
    left_eye, right_eye = lm[42:48].mean(axis=0), lm[36:42].mean(axis=0)
    jaw = lm[16] - lm[0]
    kp = [lm[30], left_eye, right_eye, lm[16] + EAR_OUT * jaw, lm[0] - EAR_OUT * jaw]
    eyes = (left_eye + right_eye) / 2
    down = lm[8] - eyes
    h = float(np.hypot(*down))
    if shoulders == "omit" or h == 0:
        kp += [np.full(2, np.nan), np.full(2, np.nan)]
    else:
        d = down / h
        s = np.array([d[1], -d[0]])  # the person's left (image right for an upright face)
        base = lm[8] + SHOULDER_DOWN * h * d
        kp += [base + SHOULDER_SIDE * h * s, base - SHOULDER_SIDE * h * s]
    return np.stack(kp)


# ------------------------------------------------------------- upstream box_utils
def _square_up(s0: float, short: float, l0: float, long: float, limit: int) -> tuple[float, float, float, float]:
    """One axis of upstream's squaring: the short side (from ``s0``) grows to ``long``, centred and
    clipped at 0; past the photo's ``limit`` it takes the whole axis instead and the long side (from
    ``l0``) shrinks to match, centred. Returns ``(s0, short, l0, long)``."""
    diff = abs(short - long)
    short += diff
    if short > limit:
        s0, short = 0, limit
        diff = abs(short - long)
        long -= diff
        l0 += diff // 2
    else:
        s0 = max(0, s0 - diff // 2)
    return s0, short, l0, long


def _grow(p0: float, size: float, grow: int, limit: int) -> tuple[float, float]:
    """One axis of upstream's expansion: ``grow`` more on both sides, then shifted back inside ``limit``."""
    p0, size = max(0, p0 - grow), size + 2 * grow
    if size > limit:
        p0, size = p0 - (limit - size), limit
    if size + p0 > limit:
        p0 -= size + p0 - limit
    return p0, size


def _quadratic(x0: float, y0: float, width: float, height: float, imshape: tuple[int, ...]):
    if width > min(imshape[:2]) or height > min(imshape[:2]):
        raise _NoFit
    if height != width:
        if height < width:
            y0, height, x0, width = _square_up(y0, height, x0, width, imshape[0])
        else:
            x0, width, y0, height = _square_up(x0, width, y0, height, imshape[1])
        if imshape[1] < x0 + width:
            x0 -= x0 + width - imshape[1]
        if imshape[0] < y0 + height:
            y0 -= y0 + height - imshape[0]
    if x0 < 0 or y0 < 0 or x0 + width > imshape[1] or y0 + height > imshape[0]:
        raise _NoFit
    return x0, y0, width, height


def _expand(bbox: np.ndarray, pct: float, imshape: tuple[int, ...]) -> np.ndarray:
    ox0, oy0, ox1, oy1 = (float(v) for v in bbox)
    x0, y0, width, height = _quadratic(ox0, oy0, ox1 - ox0, oy1 - oy0, imshape)
    grow = min((imshape[0] - width) // 2, (imshape[1] - height) // 2, int(max(height, width) * pct))
    if grow > 0:
        y0, height = _grow(y0, height, grow, imshape[0])
        x0, width = _grow(x0, width, grow, imshape[1])
    ok = (y0 >= 0 and x0 >= 0 and height <= imshape[0] and width <= imshape[1] and width == height
          and x0 + width <= imshape[1] and y0 + height <= imshape[0]
          and x0 <= ox0 and x0 + width >= ox1 and y0 <= oy0 and y0 + height >= oy1)
    if not ok:
        raise _NoFit
    x0, y0, width, height = int(x0), int(y0), int(width), int(height)
    return np.array([x0, y0, x0 + width, y0 + height])


def _expand_simple(bbox: np.ndarray, pct: float) -> np.ndarray:
    x0, y0, x1, y1 = (float(v) for v in bbox)
    width, height = x1 - x0, y1 - y0
    xc, yc = int(x0) + width // 2, int(y0) + height // 2
    half = (max(width, height) * (1 + pct)) // 2
    return np.array([xc - half, yc - half, xc + half, yc + half]).astype(int)


def expand_bbox(bbox: np.ndarray, imshape: tuple[int, ...], pct: float = 0.35) -> np.ndarray:
    """Upstream's square expanded box (``box_utils.expand_bbox``, ``simple_expand=False``).

    Shape: ``bbox`` ``[4]`` ``(x0, y0, x1, y1)`` inside the photo; returns ``[4]`` int.
    """
    try:
        return _expand(np.asarray(bbox, dtype=np.float64), pct, imshape)
    except _NoFit:
        return _expand_simple(np.asarray(bbox, dtype=np.float64), pct * 2)


def face_box(face: AlignedFace, photo_shape: tuple[int, ...]) -> np.ndarray:
    """The box to generate: the detector box widened to falco's face region, clipped to the photo.

    Shape: returns ``[4]`` int ``(x0, y0, x1, y1)``.

    Raises:
        InputError: The box misses the photo.
    """
    x0, y0, x1, y1 = (int(v) for v in face.box)
    found = region(photo_shape, face)
    if found is not None:
        (ry0, ry1, rx0, rx1), _ = found
        x0, y0, x1, y1 = min(x0, rx0), min(y0, ry0), max(x1, rx1), max(y1, ry1)
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, int(photo_shape[1])), min(y1, int(photo_shape[0]))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise InputError(f"face box {tuple(face.box)} lies outside the photo")
    return np.array([x0, y0, x1, y1])


def network_inputs(photo: np.ndarray, face: AlignedFace, shoulders: str = "estimate") -> dict[str, Any]:
    """The generator's inputs for one face (z aside).

    Returns:
        ``box``, ``expanded`` (``[4]`` int photo boxes); ``condition`` ``[3, 128, 128]`` in
        [-1, 1] with the box zeroed, ``mask`` ``[1, 128, 128]`` (1 = keep), ``landmarks`` ``[14]``.
    """
    box = face_box(face, photo.shape)
    exp = expand_bbox(box, photo.shape)
    side = int(exp[2] - exp[0])
    cut = crop_padded(photo, *(int(v) for v in exp), mode="zero")
    img = np.asarray(Image.fromarray(cut).resize((IMSIZE, IMSIZE), Image.Resampling.BICUBIC), np.float32)
    img = torch.from_numpy(img / 255.0 * 2 - 1).permute(2, 0, 1)
    rel = ((box - np.tile(exp[:2], 2)).astype(np.float32) * (IMSIZE / side)).astype(int)
    mask = torch.ones(1, IMSIZE, IMSIZE)
    mask[:, max(rel[1], 0) : rel[3], max(rel[0], 0) : rel[2]] = 0
    kp = (keypoints_from_landmarks(face.landmarks, shoulders) - exp[:2]) / side
    kp = np.where(np.isnan(kp), 1.0, np.clip(kp, 0.0, 1.0))  # NaN (omitted) -> 1, which the generator drops
    return {"box": box, "expanded": exp, "condition": (img * mask).contiguous(), "mask": mask,
            "landmarks": torch.from_numpy(kp.reshape(-1).astype(np.float32))}


def truncated_z(z_shape: tuple[int, ...], truncation: float, seed: int) -> torch.Tensor:
    """Upstream ``infer.truncated_z`` for one face, seeded: zeros at 0, else |z| < truncation.

    Shape: returns ``z_shape``.
    """
    if truncation == 0:
        return torch.zeros(z_shape)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(z_shape, generator=g)
    while (bad := z.abs() >= truncation).any():
        z[bad] = torch.randn(z_shape, generator=g)[bad]
    return z


class DeepPrivacyAnonymizer(Anonymizer):
    """DeepPrivacy v1 behind the :class:`~falco.methods.base.Anonymizer` interface.

    Args:
        models: Model set directory (``--models``); the checkpoint is the registry's ``deepprivacy``.
        seed: Run seed for the per-face ``z`` (used when ``truncation > 0``).
        device: Where the generator runs.
        truncation: 0 (upstream default: ``z = 0``) or the truncation level of sampled ``z``.
        shoulders: 'estimate' or 'omit' (see the module docstring).
        generator: A loaded :class:`DeepPrivacyV1` (or a path / state dict) instead of the model set's.
        on_fail: How a face outside the photo's usable area is covered: 'blur', 'pixelate', 'mask'
            (see :func:`~falco.methods.cover.fallback`) or 'skip' (left as is, recorded as failed).
        batch_size: Faces per generator call. 1 (default) makes every face's output independent
            of which faces share its photo, bit for bit; larger batches are faster on a GPU but
            float rounding may then differ in the last bit.
    """

    name = "deepprivacy"

    def __init__(self, models: str | os.PathLike | None = None, seed: int = 0, device: str | torch.device = "cpu",
                 *, truncation: float = 0.0, shoulders: str = "estimate", generator: Any = None,
                 batch_size: int = 1, on_fail: str = "blur") -> None:
        self.on_fail = check_on_fail(on_fail)
        if isinstance(truncation, bool) or not isinstance(truncation, (int, float)) or truncation < 0:
            raise InputError(f"truncation must be a number >= 0, got {truncation!r}")
        if truncation and truncation < 0.5:
            raise InputError(f"truncation must be 0 or at least 0.5, got {truncation!r}")
        if shoulders not in ("estimate", "omit"):
            raise InputError(f"shoulders must be 'estimate' or 'omit', got {shoulders!r}")
        check_seed_and_batch(seed, batch_size)
        self.device = torch.device(device)
        self.G, self.source = load_method_generator("deepprivacy", models, generator, DeepPrivacyV1, load_generator,
                                                    self.device)
        self.seed, self.truncation, self.shoulders, self.batch_size = int(seed), float(truncation), shoulders, batch_size

    def settings(self) -> dict:
        return {"method": "deepprivacy", "seed": self.seed, "truncation": self.truncation,
                "z": "zeros" if self.truncation == 0 else "truncated normal, seeded per face",
                "shoulders": self.shoulders, "keypoints": "dlib 68 -> 7 (approximated)", "checkpoint": self.source,
                "on_fail": self.on_fail}

    @torch.no_grad()
    def generate(self, inputs: list[dict[str, Any]], zs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Generated 128-px faces in [0, 1] for prepared inputs. Shape: ``[3, 128, 128]`` each."""
        out = []
        for i in range(0, len(inputs), self.batch_size):
            chunk = inputs[i : i + self.batch_size]
            batch = [torch.stack([c[k] for c in chunk]).to(self.device) for k in ("condition", "mask", "landmarks")]
            z = torch.stack(zs[i : i + self.batch_size]).to(self.device)
            x = self.G(*batch, z=z)
            out += list(((x + 1) / 2).clamp(0, 1).float().cpu())
        return out

    def apply(self, photo: np.ndarray, faces: list[AlignedFace], results: list) -> tuple[np.ndarray, list[dict]]:
        photo = check_apply_args(photo, faces, results)
        inputs, failed = prepare_all(faces, lambda face: network_inputs(photo, face, self.shoulders))
        ok = [i for i in range(len(faces)) if i not in failed]
        zs = [truncated_z(self.G.z_shape, self.truncation, face_seed(self.seed, faces[i])) for i in ok]
        generated = dict(zip(ok, self.generate([inputs[i] for i in ok], zs)))

        def paste(out: np.ndarray, i: int) -> tuple[np.ndarray, dict]:
            inp = inputs[i]
            x0, y0, x1, y1 = (int(v) for v in inp["expanded"])
            frame = Frame(x0, y0, x1 - x0, y1 - y0, IMSIZE, IMSIZE)
            rgb = generated[i].permute(1, 2, 0).numpy() * 255.0
            record = {"method": "deepprivacy", "status": "done", "region_box": inp["box"].tolist(),
                      "expanded_box": inp["expanded"].tolist(), "truncation": self.truncation}
            return paste_frame(out, frame, rgb, box=tuple(int(v) for v in inp["box"])), record

        return paste_or_cover(photo, faces, failed, self.on_fail, paste)
