"""Masks of named face parts (eyes, hair, ...) in the photo frame, for region control.

A region is a part (:data:`PARTS`) or a group of parts (:data:`GROUPS`). Its mask is built in
the coordinates of the face's aligned crop and warped into the photo by the face's quad
transform, exactly as :func:`falco.faces.paste.photo_mask` warps the face region.

Two sources:

- **landmarks** (always available): polygons of the dlib 68-point groups, grown by ``dilate``
  (:data:`LANDMARK_GROUPS`): eyes 36-41 and 42-47; brows 17-21 and 22-26 as bands; nose the
  hull of 27-35; mouth (the inside, teeth) 60-67; lips 48-59 less the inside; skin the face
  region of :func:`~falco.faces.paste.face_mask` (jaw hull raised over the forehead) less
  all of those. ``hair``, ``neck``, ``ears``, ``glasses``, ``hat`` and ``cloth`` have no
  landmarks: asking for them without a parsing map is an :class:`~falco.errors.InputError`
  that names the model to download.
- **parsing**: a label map of the aligned crop from the BiSeNet face parser
  (:func:`parse_aligned`; classes of :data:`falco.models.parsing.CLASS_NAMES`, grouped by
  :data:`PARSING_CLASSES`; left/right pairs merged).

``everything`` is the face region :func:`~falco.faces.paste.photo_mask` blends (whatever the
source); ``nothing`` is empty. Edges are soft: a smoothstep ramp ``feather`` wide (a fraction
of the face's size, i.e. of the crop side) centred on the part's (grown) outline, and the mask
fades to zero at the crop's border like the face mask.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import scipy.ndimage
from PIL import Image, ImageDraw

from falco.errors import InputError
from falco.faces.ffhq import AlignedFace, apply_transform
from falco.faces.paste import DEFAULT_FOREHEAD, face_mask, photo_mask

if TYPE_CHECKING:
    from falco.models.parsing import BiSeNet

__all__ = [
    "DEFAULT_DILATE",
    "DEFAULT_FEATHER",
    "GROUPS",
    "LANDMARK_GROUPS",
    "LANDMARK_PARTS",
    "PARSING_CLASSES",
    "PARSING_MODEL",
    "PARTS",
    "crop_region_mask",
    "needs_parsing",
    "parse_aligned",
    "region_mask",
    "region_names",
    "resolve_regions",
]

#: Registry name of the face parser (kept equal to ``falco.models.parsing.PARSING_MODEL``).
PARSING_MODEL = "bisenet-face-parsing"

#: Soft edge of a part, as a fraction of the face's size (the crop side).
DEFAULT_FEATHER = 0.02
#: How far landmark polygons are grown, as a fraction of the face's size.
DEFAULT_DILATE = 0.02
#: Half the thickness of the brow bands drawn along landmarks 17-21 / 22-26, same unit.
BROW_HALF_WIDTH = 0.02

#: Parts by name, in display order.
PARTS: tuple[str, ...] = ("skin", "brows", "eyes", "nose", "mouth", "lips", "hair", "neck", "ears", "glasses",
                          "hat", "cloth")

#: CelebAMask-HQ labels of each part (``l_``/``r_`` merged; earrings with ears, necklaces with the neck).
PARSING_CLASSES: dict[str, tuple[int, ...]] = {
    "skin": (1,), "brows": (2, 3), "eyes": (4, 5), "glasses": (6,), "ears": (7, 8, 9), "nose": (10,),
    "mouth": (11,), "lips": (12, 13), "neck": (14, 15), "cloth": (16,), "hair": (17,), "hat": (18,),
}

#: dlib 68-point indices each landmark part is drawn from (skin: the face region less the others).
LANDMARK_GROUPS: dict[str, tuple[tuple[int, ...], ...]] = {
    "eyes": (tuple(range(36, 42)), tuple(range(42, 48))),
    "brows": (tuple(range(17, 22)), tuple(range(22, 27))),
    "nose": (tuple(range(27, 36)),),
    "mouth": (tuple(range(60, 68)),),
    "lips": (tuple(range(48, 60)), tuple(range(60, 68))),
    "skin": (tuple(range(0, 17)), tuple(range(17, 27))),
}

#: Parts that landmarks can draw; the others need the face parser.
LANDMARK_PARTS: frozenset[str] = frozenset(LANDMARK_GROUPS)

#: Groups and presets: name -> parts (``everything`` is the whole blended face region).
GROUPS: dict[str, tuple[str, ...]] = {
    "hair-neck": ("hair", "neck"),
    "mouth-lips": ("mouth", "lips"),
    "eyes-brows": ("eyes", "brows"),
    "everything": ("everything",),
    "nothing": (),
}


def region_names() -> tuple[str, ...]:
    """Every name :func:`resolve_regions` accepts: the parts, then the groups."""
    return PARTS + tuple(GROUPS)


def resolve_regions(regions: str | Iterable[str]) -> tuple[str, ...]:
    """Expand region names into parts (plus ``'everything'`` when asked), without duplicates.

    Args:
        regions: One name, a comma-separated string (``'eyes,hair'``) or names.

    Raises:
        InputError: An unknown name; the message lists the valid ones.
    """
    names = regions.split(",") if isinstance(regions, str) else list(regions)
    out: list[str] = []
    for raw in names:
        name = raw.strip().lower() if isinstance(raw, str) else raw
        if name in GROUPS:
            out.extend(GROUPS[name])
        elif name in PARTS:
            out.append(name)
        else:
            raise InputError(f"unknown region {raw!r}; valid regions: {', '.join(region_names())}")
    return tuple(dict.fromkeys(out))


def needs_parsing(regions: str | Iterable[str]) -> bool:
    """Whether some of ``regions`` can only be drawn from a parsing map (hair, neck, ...)."""
    return any(p not in LANDMARK_PARTS and p != "everything" for p in resolve_regions(regions))


def _missing_parser_error(parts: Sequence[str]) -> InputError:
    need = [p for p in parts if p not in LANDMARK_PARTS and p != "everything"]
    ok = sorted(LANDMARK_PARTS) + [g for g, ps in GROUPS.items() if all(p in LANDMARK_PARTS or p == "everything"
                                                                        for p in ps)]
    return InputError(
        f"region {', '.join(need)} needs the face-parsing model (registry name {PARSING_MODEL!r}), which is "
        f"not loaded: download it with `falco models download {PARSING_MODEL}`; without it only these "
        f"regions work (from the 68 landmarks): {', '.join(ok)}"
    )


def parse_aligned(net: BiSeNet, faces: Sequence[AlignedFace], *, batch_size: int = 8) -> list[np.ndarray]:
    """Run the face parser on each face's aligned crop (``face.image``).

    Returns:
        One label map per face, in its crop's coordinates. Shape: ``[size, size]`` uint8.
    """
    from falco.models.parsing import parse_faces

    out: list[np.ndarray | None] = [None] * len(faces)
    by_size: dict[int, list[int]] = {}
    for i, face in enumerate(faces):
        by_size.setdefault(face.size, []).append(i)
    for idx in by_size.values():
        labels = parse_faces(net, np.stack([faces[i].image for i in idx]), batch_size=batch_size)
        for i, lab in zip(idx, labels):
            out[i] = lab
    return out  # type: ignore[return-value]


def region_mask(
    face: AlignedFace,
    shape: tuple[int, ...],
    regions: str | Iterable[str],
    *,
    parsing: np.ndarray | None = None,
    feather: float = DEFAULT_FEATHER,
    dilate: float | None = None,
    forehead: float = DEFAULT_FOREHEAD,
) -> np.ndarray:
    """Soft mask of some parts of one face, in the photo's frame.

    Args:
        face: The face (:func:`falco.faces.detect_and_align`).
        shape: The photo's shape (``[H, W, ...]``).
        regions: Part or group names (:func:`resolve_regions`).
        parsing: The face's label map from :func:`parse_aligned` (any square size; it covers the
            aligned crop). None: parts are drawn from the landmarks. Shape: ``[M, M]`` ints < 19.
        feather: Width of the soft edge as a fraction of the face's size, in [0, 0.5].
        dilate: Growth of each part, same unit, in [0, 0.5]; default 0.02 for landmark polygons
            and 0 for parsing maps.
        forehead: For the landmark skin and ``everything``: as in :func:`~falco.faces.paste.face_mask`.

    Returns:
        Weights in [0, 1]; ``'everything'`` alone is exactly :func:`~falco.faces.paste.photo_mask`
        with the same ``feather`` and ``forehead``. Shape: ``[H, W]`` float32.

    Raises:
        InputError: An unknown region, a parsing-only region without ``parsing`` (naming the
            model to download), a bad parsing map or parameter.
    """
    parts = resolve_regions(regions)
    if parts == ("everything",):
        return photo_mask(face, shape, feather=_fraction(feather, "feather"), forehead=forehead)
    if not parts:
        return np.zeros((int(shape[0]), int(shape[1])), dtype=np.float32)
    crop = crop_region_mask(face, parts, parsing=parsing, feather=feather, dilate=dilate, forehead=forehead)
    return photo_mask(face, shape, mask=crop)


def crop_region_mask(
    face: AlignedFace,
    regions: str | Iterable[str],
    *,
    size: int | None = None,
    parsing: np.ndarray | None = None,
    feather: float = DEFAULT_FEATHER,
    dilate: float | None = None,
    forehead: float = DEFAULT_FOREHEAD,
) -> np.ndarray:
    """The mask of :func:`region_mask` in the coordinates of the face's aligned crop.

    Args:
        size: Side of the mask; default the parsing map's side, else ``face.size``. A parsing
            map of another side is resized (nearest) to it.
        Others: As in :func:`region_mask`.

    Returns:
        Weights in [0, 1]. Shape: ``[size, size]`` float32.
    """
    parts = resolve_regions(regions)
    feather = _fraction(feather, "feather")
    labels = None if parsing is None else _check_parsing(parsing)
    if size is None:
        size = face.size if labels is None else labels.shape[0]
    elif isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 8 <= size <= 8192:
        raise InputError(f"size must be an int in 8..8192, got {size!r}")
    size = int(size)
    if labels is None and any(p not in LANDMARK_PARTS and p != "everything" for p in parts):
        raise _missing_parser_error(parts)
    if labels is not None and labels.shape[0] != size:
        labels = np.asarray(Image.fromarray(labels).resize((size, size), Image.Resampling.NEAREST))
    grow = (DEFAULT_DILATE if labels is None else 0.0) if dilate is None else _fraction(dilate, "dilate")
    width, grow_px = feather * size, grow * size
    out = np.zeros((size, size), dtype=np.float32)
    for part in parts:
        if part == "everything":
            mask = face_mask(face, size, feather=feather, forehead=forehead)
        elif labels is not None:
            mask = _soft(np.isin(labels, PARSING_CLASSES[part]), grow_px, width)
        else:
            mask = _landmark_part(face, part, size, grow_px, width, feather, forehead)
        np.maximum(out, mask, out=out)
    return out * _border_fade(size, width)


def _landmark_part(face: AlignedFace, part: str, size: int, grow: float, width: float, feather: float,
                   forehead: float) -> np.ndarray:
    """One landmark part at side ``size`` (before the border fade). Shape: ``[size, size]`` float32."""
    pts = apply_transform(face.transform(size), face.landmarks) + 0.5  # PIL draws in pixel-corner coordinates
    if part == "eyes":
        return _soft(_polygons(size, [pts[36:42], pts[42:48]]), grow, width)
    if part == "brows":
        line = max(2.0 * BROW_HALF_WIDTH * size, 1.0)
        return _soft(_polylines(size, [pts[17:22], pts[22:27]], line), grow, width)
    if part == "nose":
        return _soft(_polygons(size, [_hull(pts[27:36])]), grow, width)
    if part == "mouth":
        return _soft(_polygons(size, [pts[60:68]]), grow, width)
    if part == "lips":
        inner = _soft(_polygons(size, [pts[60:68]]), -grow, width)
        return _soft(_polygons(size, [pts[48:60]]), grow, width) * (1.0 - inner)
    assert part == "skin", part
    others = np.zeros((size, size), dtype=np.float32)
    for other in ("eyes", "brows", "nose", "mouth", "lips"):
        np.maximum(others, _landmark_part(face, other, size, grow, width, feather, forehead), out=others)
    return face_mask(face, size, feather=feather, forehead=forehead) * (1.0 - others)


def _polygons(size: int, polys: Sequence[np.ndarray]) -> np.ndarray:
    """Filled polygons (outline included). Shape: ``[size, size]`` bool."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polys:
        draw.polygon([tuple(p) for p in poly], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def _polylines(size: int, lines: Sequence[np.ndarray], width: float) -> np.ndarray:
    """Thick open polylines with round joints and ends. Shape: ``[size, size]`` bool."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    w = max(int(round(width)), 1)
    r = w / 2.0
    for line in lines:
        draw.line([tuple(p) for p in line], fill=1, width=w, joint="curve")
        for x, y in (line[0], line[-1]):
            draw.ellipse([x - r, y - r, x + r, y + r], fill=1)
    return np.asarray(canvas, dtype=bool)


def _hull(points: np.ndarray) -> np.ndarray:
    """Convex hull (Andrew's monotone chain). Shape: ``[N, 2]`` -> ``[K, 2]``."""
    pts = sorted(map(tuple, np.asarray(points, dtype=np.float64)))

    def half(seq):
        chain: list[tuple[float, float]] = []
        for p in seq:
            while len(chain) >= 2 and ((chain[-1][0] - chain[-2][0]) * (p[1] - chain[-2][1])
                                       - (chain[-1][1] - chain[-2][1]) * (p[0] - chain[-2][0])) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    return np.array(half(pts) + half(pts[::-1]))


def _soft(inside: np.ndarray, grow: float, width: float) -> np.ndarray:
    """A soft version of a binary region grown by ``grow`` pixels (negative: shrunk).

    The 0.5 level lies ``grow`` pixels outside the region's outline; the ramp is ``width``
    pixels wide (a hard edge when 0). Shape: ``[S, S]`` bool -> float32.
    """
    if not inside.any():
        signed = np.full(inside.shape, -np.inf)
    elif inside.all():
        signed = np.full(inside.shape, np.inf)
    else:
        # distances between pixel centres: +d inside, -d outside; the outline sits at about +-0.5
        signed = scipy.ndimage.distance_transform_edt(inside) - scipy.ndimage.distance_transform_edt(~inside)
        signed = signed - np.where(inside, 0.5, -0.5)
    level = signed + grow
    if width <= 0:
        return (level >= 0).astype(np.float32)
    return _smoothstep(level / width + 0.5).astype(np.float32)


def _border_fade(size: int, width: float) -> np.ndarray:
    """1 inside, fading to 0 over ``width`` pixels at the crop's border (as the face mask)."""
    if width <= 0:
        return np.ones((size, size), dtype=np.float32)
    idx = np.arange(size, dtype=np.float64)
    edge = _smoothstep(np.minimum(idx + 0.5, size - 0.5 - idx) / width)
    return (edge[:, None] * edge[None, :]).astype(np.float32)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _check_parsing(parsing: object) -> np.ndarray:
    labels = np.asarray(parsing)
    if labels.ndim != 2 or labels.shape[0] != labels.shape[1] or labels.shape[0] < 8:
        raise InputError(f"parsing must be a square [M, M] label map (M >= 8), got shape {list(labels.shape)}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() > 18:
        raise InputError(f"parsing must hold integer class ids in 0..18, got {labels.dtype} "
                         f"in [{labels.min()}, {labels.max()}]")
    return labels.astype(np.uint8)


def _fraction(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0 <= value <= 0.5:
        raise InputError(f"{name} must be a number in [0, 0.5] (a fraction of the face's size), got {value!r}")
    return float(value)
