"""Blending an anonymized photo with its original part by part (``--keep`` / ``--change``).

:func:`keep_regions` takes the named parts of every face from the original photo and the rest
from the anonymized one; :func:`change_regions` does the opposite: only the named parts come from
the anonymized photo. Both blend with the soft masks of :func:`falco.faces.regions.region_mask`,
computed in the photo's frame.

Each part is grown by half the feather (plus :data:`LANDMARK_MARGIN` for landmark polygons,
which only approximate a part), so the part itself comes entirely from its source and the seam
lies just outside it. Where a weight is exactly 0 or 1 the result is bit-identical to the photo
it comes from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from falco.errors import InputError
from falco.faces.detect import check_image
from falco.faces.ffhq import AlignedFace
from falco.faces.regions import DEFAULT_FEATHER, region_mask, resolve_regions

__all__ = ["LANDMARK_MARGIN", "blend", "change_regions", "keep_regions", "part_dilation", "regions_weights"]

#: Extra growth of landmark polygons beyond half the feather, as a fraction of the face's size.
LANDMARK_MARGIN = 0.01


def part_dilation(feather: float, parsing: bool) -> float:
    """How far each part is grown: half the ``feather``, plus :data:`LANDMARK_MARGIN` without a parsing map.

    With the default feather (0.02) landmark parts grow by 0.02, the default of
    :func:`~falco.faces.regions.region_mask`.
    """
    return min(0.5, feather / 2.0 + (0.0 if parsing else LANDMARK_MARGIN))


def regions_weights(faces: Sequence[AlignedFace], shape: tuple[int, ...], regions: str | Iterable[str], *,
                    parsing_maps: Sequence[np.ndarray | None] | None = None,
                    feather: float = DEFAULT_FEATHER) -> np.ndarray:
    """The union (maximum) of every face's mask of ``regions``, in the photo's frame.

    Args:
        faces: The faces whose parts are meant.
        shape: The photo's shape (``[H, W, ...]``).
        regions: Part or group names (:func:`~falco.faces.regions.resolve_regions`).
        parsing_maps: One label map per face (None entries, or None: landmark masks).
        feather: Width of the soft edges, a fraction of each face's size.

    Returns:
        Weights in [0, 1]. Shape: ``[H, W]`` float32.

    Raises:
        InputError: A bad region name, a parsing-only part without its map, ``parsing_maps``
            of the wrong length.
    """
    parts = resolve_regions(regions)
    maps = _maps(parsing_maps, len(faces))
    out = np.zeros((int(shape[0]), int(shape[1])), dtype=np.float32)
    if not parts:
        return out
    for face, labels in zip(faces, maps):
        mask = region_mask(face, shape, parts, parsing=labels, feather=feather,
                           dilate=part_dilation(feather, labels is not None))
        np.maximum(out, mask, out=out)
    return out


def blend(base: np.ndarray, new: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``base + (new - base) * weights``, rounded: ``base`` where a weight is 0, ``new`` where it is 1.

    Shape: ``base``, ``new`` ``[H, W, 3]`` uint8, ``weights`` ``[H, W]`` -> ``[H, W, 3]`` uint8 (a new array).
    """
    out = base.copy()
    hit = weights > 0
    if hit.any():
        old = base[hit].astype(np.float32)
        w = weights[hit].astype(np.float32)[:, None]
        out[hit] = np.clip(np.rint(old + (new[hit].astype(np.float32) - old) * w), 0, 255).astype(np.uint8)
    return out


def keep_regions(original: np.ndarray, anonymized: np.ndarray, faces: Sequence[AlignedFace],
                 regions: str | Iterable[str], *, parsing_maps: Sequence[np.ndarray | None] | None = None,
                 feather: float = DEFAULT_FEATHER) -> np.ndarray:
    """The named parts of every face from ``original``, everything else from ``anonymized``.

    Args:
        original: The photo the faces were detected in. Shape: ``[H, W, 3]`` uint8.
        anonymized: The method's output for it. Shape: ``[H, W, 3]`` uint8.
        faces: The faces whose parts are kept.
        regions: Part or group names to keep (``'eyes-brows'``, ``('eyes', 'hair')``...);
            ``'nothing'`` gives ``anonymized`` unchanged.
        parsing_maps: One label map per face from :func:`~falco.faces.regions.parse_aligned`
            (None: masks drawn from the landmarks).
        feather: Width of the soft seam, a fraction of each face's size.

    Returns:
        A new photo. Shape: ``[H, W, 3]`` uint8.

    Raises:
        InputError: Photos of different shapes, a bad region name, a parsing-only part
            (hair...) without parsing maps.
    """
    original, anonymized = _check_pair(original, anonymized)
    weights = regions_weights(faces, original.shape, regions, parsing_maps=parsing_maps, feather=feather)
    return blend(anonymized, original, weights)


def change_regions(original: np.ndarray, anonymized: np.ndarray, faces: Sequence[AlignedFace],
                   regions: str | Iterable[str], *, parsing_maps: Sequence[np.ndarray | None] | None = None,
                   feather: float = DEFAULT_FEATHER) -> np.ndarray:
    """Only the named parts of every face from ``anonymized``, everything else from ``original``.

    Pixels the method changed outside those parts go back to the original, so faces a caller
    wants left as the method made them must not be in ``faces`` and must be restored by it.
    ``'everything'`` gives ``anonymized`` unchanged. Arguments as in :func:`keep_regions`.

    Returns:
        A new photo. Shape: ``[H, W, 3]`` uint8.
    """
    original, anonymized = _check_pair(original, anonymized)
    if "everything" in resolve_regions(regions):
        return anonymized.copy()
    weights = regions_weights(faces, original.shape, regions, parsing_maps=parsing_maps, feather=feather)
    return blend(original, anonymized, weights)


def _check_pair(original: object, anonymized: object) -> tuple[np.ndarray, np.ndarray]:
    original = check_image(original, "original")
    anonymized = check_image(anonymized, "anonymized")
    if original.shape != anonymized.shape:
        raise InputError(f"original and anonymized must have the same shape, got {list(original.shape)} "
                         f"and {list(anonymized.shape)}")
    return original, anonymized


def _maps(parsing_maps: Sequence[np.ndarray | None] | None, n: int) -> list[np.ndarray | None]:
    if parsing_maps is None:
        return [None] * n
    maps = list(parsing_maps)
    if len(maps) != n:
        raise InputError(f"parsing_maps must have one entry per face ({n}), got {len(maps)}")
    return maps
