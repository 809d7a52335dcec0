"""CIAGAN (Maximov et al., CVPR 2020) as a baseline: upstream preprocessing, generator, compositing.

Per face, as dvl-tum/ciagan does it:

1. ``process_data.py``: centre between the inner eye corners (dlib points 39 and 42),
   ``h_r = int(5 * (x42 - x39))``, ``w_r = int(h_r * 178 / 218)``; the photo (edge-padded) is
   cropped to ``2 w_r x 2 h_r`` and resized to 178 x 218. On a white 178 x 218 canvas it draws
   the landmark image (1-px blue lines: jaw 0-16, nose bridge 27-30, inner lips 60-67-60) and
   the face mask (black polygon: jaw line closed over the brows' height, points 19 and 24).
2. ``util_data.py``: each image is resized to 144 x 144 (Lanczos) and centre-cropped to 128;
   the mask is ``(1 - msk) > 0.2``.
3. ``test.py``: ``G(cat(lndm, face * (1 - mask)), onehot)`` and
   ``clamp(out * mask + face * (1 - mask), 0, 1)``.

falco then pastes the composite back into the photo through the inverse of the crop-and-resize
(bilinear, weighted by the mask), so pixels outside CIAGAN's mask are untouched.

Differences from upstream, all small: images are decoded and resized with Pillow (upstream
resizes the crop with OpenCV's bicubic and stores the crops, landmark images and masks as
JPEG before reading them back), lines are rasterised with OpenCV's 8-connected line algorithm
re-implemented here, and the generator runs in eval mode (see :mod:`falco.models.ciagan_net`).
Landmarks come from falco's detector (dlib HOG + 68 points on the RGB photo; upstream feeds
dlib the BGR array ``cv2.imread`` returns). On upstream's prepared CelebA data the landmark
images come out pixel-identical; the masks differ at one top corner, because those masks
were made with a variant that raises the higher of the brow points 19/24 by 5 px (see
``tests/test_baselines_gan.py``); we follow the published ``process_data.py``.

The target identity is ``ciagan_id`` (0 .. num_classes - 1) or, if None, drawn per face from
the run seed and the face (:func:`falco.methods.base.face_seed`) and recorded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from falco.methods._frame import Frame, crop_padded, paste_frame
from falco.methods.base import (Anonymizer, check_apply_args, check_seed_and_batch, face_seed, load_method_generator,
                                prepare_all)
from falco.methods.cover import check_on_fail, paste_or_cover
from falco.models.ciagan_net import Generator, load_generator
from falco.errors import InputError
from falco.faces.ffhq import AlignedFace

__all__ = [
    "CiaganAnonymizer",
    "CiaganCrop",
    "Generator",
    "ciagan_crop",
    "crop_face",
    "landmark_image",
    "load_generator",
    "mask_image",
    "network_inputs",
    "to_network",
]

RES_W, RES_H = 178, 218  # process_data.py's crop size (CelebA's aligned size)
LOAD_SIZE = 144  # util_data.py: int(128 * 1.125)
NET_SIZE = 128
LINE_RGB = (0, 0, 255)  # cv2 draws (0, 0, 255) into an array that PIL then saves as RGB: blue
#: Line segments of the landmark image: (offset, start, end) as upstream's draw_line calls.
_SEGMENTS = ([(0, i, i + 1) for i in range(16)] + [(27, i, i + 1) for i in range(3)]
             + [(60, i, i + 1) for i in range(4)] + [(64, i, i + 1) for i in range(3)] + [(0, 67, 60)])


@dataclass(frozen=True)
class CiaganCrop:
    """The crop ``process_data.py`` takes around a face (integers, photo pixels).

    Attributes:
        c_x, c_y: Centre between the inner eye corners.
        w_r, h_r: Half width and half height of the crop.
    """

    c_x: int
    c_y: int
    w_r: int
    h_r: int

    @classmethod
    def whole(cls) -> CiaganCrop:
        """The crop of an image that already is a 178 x 218 CIAGAN crop (upstream's prepared CelebA data)."""
        return cls(RES_W // 2, RES_H // 2, RES_W // 2, RES_H // 2)

    @property
    def t_x(self) -> int:
        """Left edge of the crop."""
        return self.c_x - self.w_r

    @property
    def t_y(self) -> int:
        """Top edge of the crop."""
        return self.c_y - self.h_r

    @property
    def ratio_w(self) -> float:
        """Horizontal scale from the photo to the 178-px wide image."""
        return RES_W / (2 * self.w_r)

    @property
    def ratio_h(self) -> float:
        """Vertical scale from the photo to the 218-px high image."""
        return RES_H / (2 * self.h_r)

    def points(self, landmarks: np.ndarray) -> np.ndarray:
        """Landmarks in the 178 x 218 image, as floats (upstream truncates with ``int`` where it draws)."""
        lm = np.asarray(landmarks, dtype=np.float64)
        return np.stack([(lm[:, 0] - self.t_x) * self.ratio_w, (lm[:, 1] - self.t_y) * self.ratio_h], axis=1)

    def frame(self) -> Frame:
        """Where the generator's 128 x 128 grid lies in the photo (the centre 128/144 of the crop)."""
        w, h = 2 * self.w_r, 2 * self.h_r
        off = (LOAD_SIZE - NET_SIZE) / 2
        return Frame(self.t_x + off * w / LOAD_SIZE, self.t_y + off * h / LOAD_SIZE,
                     NET_SIZE * w / LOAD_SIZE, NET_SIZE * h / LOAD_SIZE, NET_SIZE, NET_SIZE)


def ciagan_crop(landmarks: np.ndarray) -> CiaganCrop:
    """Upstream's crop from 68 dlib landmarks.

    Shape: ``landmarks`` ``[68, 2]`` ``(x, y)`` photo pixels.

    Raises:
        InputError: Bad landmarks, or inner eye corners too close in x for a crop (profile face).
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2) or not np.isfinite(lm).all():
        raise InputError(f"landmarks must be a finite [68, 2] array, got shape {list(lm.shape)}")
    c_x = int((lm[42, 0] + lm[39, 0]) / 2)
    c_y = int((lm[42, 1] + lm[39, 1]) / 2)
    h_r = int((lm[42, 0] - lm[39, 0]) * 5)
    w_r = int(h_r / RES_H * RES_W)
    if w_r < 2 or h_r < 2:
        raise InputError(f"CIAGAN cannot crop this face: inner eye corners {lm[39, 0] - lm[42, 0]:+.1f} px "
                         "apart in x (a profile or tiny face)")
    return CiaganCrop(c_x, c_y, w_r, h_r)


def _line(p: tuple[int, int], q: tuple[int, int]) -> np.ndarray:
    """Pixels of OpenCV's 8-connected line from ``p`` to ``q`` (``LineIterator``, left to right). Shape: ``[N, 2]``."""
    (x1, y1), (x2, y2) = p, q
    if x2 < x1:
        (x1, y1), (x2, y2) = (x2, y2), (x1, y1)
    dx, dy = x2 - x1, y2 - y1
    ystep = -1 if dy < 0 else 1
    dy = abs(dy)
    steep = dy > dx
    big, small = (dy, dx) if steep else (dx, dy)
    err, pts, x, y = big - 2 * small, [], x1, y1
    for _ in range(big + 1):
        pts.append((x, y))
        diag = err < 0
        err += -2 * small + (2 * big if diag else 0)
        if steep:
            y += ystep
            x += 1 if diag else 0
        else:
            x += 1
            y += ystep if diag else 0
    return np.array(pts, dtype=np.int64)


def _int(v: float) -> int:
    return int(v)  # truncation toward zero, as upstream's int()


def landmark_image(landmarks: np.ndarray, crop: CiaganCrop) -> np.ndarray:
    """The landmark drawing of ``process_data.py``: blue 1-px lines on white.

    Shape: ``landmarks`` ``[68, 2]``; returns ``[218, 178, 3]`` uint8 RGB.
    """
    pts = crop.points(landmarks)
    img = np.full((RES_H, RES_W, 3), 255, np.uint8)
    for off, a, b in _SEGMENTS:
        pa, pb = pts[off + a], pts[off + b]
        line = _line((_int(pa[0]), _int(pa[1])), (_int(pb[0]), _int(pb[1])))
        ok = (line[:, 0] >= 0) & (line[:, 0] < RES_W) & (line[:, 1] >= 0) & (line[:, 1] < RES_H)
        img[line[ok, 1], line[ok, 0]] = LINE_RGB
    return img


def mask_image(landmarks: np.ndarray, crop: CiaganCrop) -> np.ndarray:
    """The face mask of ``process_data.py``: the jaw line closed at the brows' height, black on white.

    Shape: ``landmarks`` ``[68, 2]``; returns ``[218, 178]`` uint8 (0 = face).
    """
    pts = crop.points(landmarks)
    contour = np.concatenate([[[pts[0, 0], pts[19, 1]]], pts[0:17], [[pts[16, 0], pts[24, 1]]]]).astype(int)
    canvas = Image.new("L", (RES_W, RES_H), 255)
    poly = [tuple(map(int, p)) for p in contour]
    ImageDraw.Draw(canvas).polygon(poly, fill=0)
    img = np.array(canvas)
    for p, q in zip(poly, poly[1:] + poly[:1]):  # cv2.fillPoly also paints the outline
        line = _line(p, q)
        ok = (line[:, 0] >= 0) & (line[:, 0] < RES_W) & (line[:, 1] >= 0) & (line[:, 1] < RES_H)
        img[line[ok, 1], line[ok, 0]] = 0
    return img


def crop_face(photo: np.ndarray, crop: CiaganCrop) -> np.ndarray:
    """The photo's crop (edge-padded) resized to 178 x 218 (bicubic). Shape: returns ``[218, 178, 3]`` uint8."""
    sub = crop_padded(photo, crop.t_x, crop.t_y, crop.c_x + crop.w_r, crop.c_y + crop.h_r, mode="edge")
    return np.asarray(Image.fromarray(sub).resize((RES_W, RES_H), Image.Resampling.BICUBIC))


def to_network(image: np.ndarray) -> np.ndarray:
    """``util_data.load_img`` without augmentation: 144 x 144 Lanczos, centre 128 crop, [0, 1].

    Shape: ``[218, 178(, C)]`` uint8 -> ``[128, 128(, C)]`` float32.
    """
    im = Image.fromarray(np.ascontiguousarray(image)).resize((LOAD_SIZE, LOAD_SIZE), Image.Resampling.LANCZOS)
    c = LOAD_SIZE / 2
    box = (int(c - NET_SIZE / 2), int(c - NET_SIZE / 2), int(c + NET_SIZE / 2), int(c + NET_SIZE / 2))
    return np.asarray(im.crop(box), dtype=np.float32) / 255.0


def network_inputs(photo: np.ndarray, landmarks: np.ndarray) -> dict[str, Any]:
    """Everything CIAGAN's generator needs for one face.

    Returns:
        ``crop`` (:class:`CiaganCrop`), ``face`` ``[3, 128, 128]`` in [0, 1], ``lndm``
        ``[3, 128, 128]`` in [0, 1], ``mask`` ``[1, 128, 128]`` {0, 1} (1 = generated),
        as float32 tensors.
    """
    crop = ciagan_crop(landmarks)
    face = to_network(crop_face(photo, crop))
    lndm = to_network(landmark_image(landmarks, crop))
    mask = (1.0 - to_network(mask_image(landmarks, crop))) > 0.2
    return {
        "crop": crop,
        "face": torch.from_numpy(face).permute(2, 0, 1).contiguous(),
        "lndm": torch.from_numpy(lndm).permute(2, 0, 1).contiguous(),
        "mask": torch.from_numpy(mask.astype(np.float32))[None],
    }


class CiaganAnonymizer(Anonymizer):
    """CIAGAN behind the :class:`~falco.methods.base.Anonymizer` interface.

    Args:
        models: Model set directory (``--models``); the checkpoint is the registry's ``ciagan``.
        ciagan_id: Target identity for every face, or None to draw one per face (seeded).
        seed: Run seed for the per-face identity draw.
        device: Where the generator runs.
        generator: A loaded :class:`Generator` (or a path / state dict) instead of the model set's.
        on_fail: How a face CIAGAN cannot crop (a profile) is covered: 'blur', 'pixelate', 'mask'
            (see :func:`~falco.methods.cover.fallback`) or 'skip' (left as is, recorded as failed).
        batch_size: Faces per generator call. 1 (default) makes every face's output independent
            of which faces share its photo, bit for bit; larger batches are faster on a GPU but
            float rounding may then differ in the last bit.
    """

    name = "ciagan"

    def __init__(self, models: str | os.PathLike | None = None, ciagan_id: int | None = None, seed: int = 0,
                 device: str | torch.device = "cpu", *, generator: Any = None, batch_size: int = 1,
                 on_fail: str = "blur") -> None:
        self.on_fail = check_on_fail(on_fail)
        self.device = torch.device(device)
        self.G, self.source = load_method_generator("ciagan", models, generator, Generator, load_generator, self.device)
        if not self.G.flag_onehot:
            raise InputError(f"{self.source}: this CIAGAN generator has no identity branch (encode_one_hot=False)")
        self.num_classes = self.G.num_classes
        if ciagan_id is not None and (isinstance(ciagan_id, bool) or not isinstance(ciagan_id, (int, np.integer))
                                      or not 0 <= ciagan_id < self.num_classes):
            raise InputError(f"ciagan_id must be an int in 0..{self.num_classes - 1} or None, got {ciagan_id!r}")
        check_seed_and_batch(seed, batch_size)
        self.ciagan_id = None if ciagan_id is None else int(ciagan_id)
        self.seed, self.batch_size = int(seed), batch_size

    def settings(self) -> dict:
        return {"method": "ciagan", "ciagan_id": self.ciagan_id if self.ciagan_id is not None else "random",
                "seed": self.seed, "num_classes": self.num_classes, "checkpoint": self.source,
                "on_fail": self.on_fail}

    def identity_for(self, face: AlignedFace) -> int:
        """The target identity of a face: ``ciagan_id`` or a seeded draw."""
        if self.ciagan_id is not None:
            return self.ciagan_id
        return int(np.random.default_rng(face_seed(self.seed, face)).integers(self.num_classes))

    @torch.no_grad()
    def generate(self, inputs: list[dict[str, Any]], ids: list[int]) -> list[torch.Tensor]:
        """Composited 128-px faces for prepared inputs (see :func:`network_inputs`).

        Shape: returns ``[3, 128, 128]`` tensors in [0, 1], one per input.
        """
        out = []
        for i in range(0, len(inputs), self.batch_size):
            chunk = inputs[i : i + self.batch_size]
            face = torch.stack([c["face"] for c in chunk]).to(self.device)
            lndm = torch.stack([c["lndm"] for c in chunk]).to(self.device)
            mask = torch.stack([c["mask"] for c in chunk]).to(self.device)
            onehot = torch.zeros(len(chunk), self.num_classes, device=self.device)
            onehot[torch.arange(len(chunk)), torch.tensor(ids[i : i + self.batch_size])] = 1
            gen = self.G(torch.cat((lndm, face * (1 - mask)), 1), onehot=onehot)
            out += list(torch.clamp(gen * mask + face * (1 - mask), 0, 1).cpu())
        return out

    def apply(self, photo: np.ndarray, faces: list[AlignedFace], results: list) -> tuple[np.ndarray, list[dict]]:
        photo = check_apply_args(photo, faces, results)
        inputs, failed = prepare_all(faces, lambda face: network_inputs(photo, face.landmarks))
        ok = [i for i in range(len(faces)) if i not in failed]
        ids = {i: self.identity_for(faces[i]) for i in ok}
        generated = dict(zip(ok, self.generate([inputs[i] for i in ok], [ids[i] for i in ok])))

        def paste(out: np.ndarray, i: int) -> tuple[np.ndarray, dict]:
            crop = inputs[i]["crop"]
            rgb = generated[i].permute(1, 2, 0).numpy() * 255.0
            record = {"method": "ciagan", "status": "done", "ciagan_id": ids[i],
                      "ciagan_crop": [crop.t_x, crop.t_y, 2 * crop.w_r, 2 * crop.h_r]}
            return paste_frame(out, crop.frame(), rgb, inputs[i]["mask"][0].numpy()), record

        return paste_or_cover(photo, faces, failed, self.on_fail, paste)
