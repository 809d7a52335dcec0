"""How much each part of each face changed: the check of ``falco anonymize --keep`` / ``--change``.

For every paired face, the real and the anonymized photos are both FFHQ-aligned with the real
face's landmarks (256 px) and compared inside each part's mask: the mean absolute difference
over the part's pixels and the three channels, in grey levels (0-255). A kept part reads about
0; a changed part more. The masks are the parts themselves, without growth or feather
(:func:`falco.faces.regions.crop_region_mask` with ``dilate=0, feather=0``): from the face
parser's map of the real crop when the parser is installed (every part), else from the 68
landmarks (eyes, brows, nose, mouth, lips, skin; hair and the other parsing-only parts are then
not measured, and ``details.region_change.not_computed`` says why). LPIPS per part is not
computed either (the evaluation has no LPIPS network; said in the same place).

In ``report.json`` per run: ``region_change.<part>`` (mean over the faces where the part has
pixels; ``counts.region_change.<part>`` says how many) for the parts measured on some face, and
``details.region_change`` (masks, measure, and each part left out, LPIPS included, with the
reason); each face row of ``faces.jsonl`` has its own ``region_change``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from falco.errors import InputError
from falco.faces.ffhq import align_face
from falco.faces.regions import LANDMARK_PARTS, PARSING_MODEL, PARTS, crop_region_mask, parse_aligned

__all__ = ["CROP_SIZE", "LANDMARK_ORDER", "LPIPS_REASON", "PARSER_REASON", "part_changes", "summarise_part_changes"]

#: Side of the aligned crops the parts are compared in.
CROP_SIZE = 256
#: The parts the landmarks can draw, in :data:`~falco.faces.regions.PARTS` order.
LANDMARK_ORDER: tuple[str, ...] = tuple(p for p in PARTS if p in LANDMARK_PARTS)
#: The parts only the face parser can draw.
PARSING_ONLY: tuple[str, ...] = tuple(p for p in PARTS if p not in LANDMARK_PARTS)
LPIPS_REASON = ("LPIPS is not part of falco's evaluation (no LPIPS network in the model set); "
                "region_change gives the mean absolute difference per part instead")
PARSER_REASON = f"they need the face parser, which is not installed (`falco models download {PARSING_MODEL}`)"


def part_changes(real: np.ndarray, anon: np.ndarray, landmarks: Sequence[np.ndarray], *,
                 parser: Any = None) -> list[dict[str, float | None]]:
    """Mean absolute difference inside each part of each face (see the module docstring).

    Args:
        real, anon: The photos. Shape: ``[H, W, 3]`` uint8, the same.
        landmarks: The real faces' 68 landmarks. Shape: each ``[68, 2]``.
        parser: The face parser (:func:`falco.models.parsing.load_parser`), or None: landmark masks.

    Returns:
        One ``{part: grey levels or None}`` per face (None: the part has no pixel); ``{}`` for a
        face too small to align.
    """
    faces, anon_crops, slots = [], [], []
    for i, lm in enumerate(landmarks):
        try:
            face, crop = align_face(real, lm, CROP_SIZE), align_face(anon, lm, CROP_SIZE).image
        except InputError:  # a face too small (or degenerate) to align
            continue
        faces.append(face)
        anon_crops.append(crop)
        slots.append(i)
    maps: list[np.ndarray | None] = [None] * len(faces)
    if parser is not None and faces:
        maps = list(parse_aligned(parser, faces))
    parts = PARTS if parser is not None else LANDMARK_ORDER
    out: list[dict[str, float | None]] = [{} for _ in landmarks]
    for slot, face, crop, labels in zip(slots, faces, anon_crops, maps):
        diff = np.abs(face.image.astype(np.int16) - crop.astype(np.int16)).mean(axis=-1)
        row: dict[str, float | None] = {}
        for part in parts:
            inside = crop_region_mask(face, part, size=CROP_SIZE, parsing=labels, feather=0.0, dilate=0.0) > 0.5
            row[part] = round(float(diff[inside].mean()), 4) if inside.any() else None
        out[slot] = row
    return out


def summarise_part_changes(run: dict, counts: dict, details: dict, rows: Sequence[dict[str, float | None]], *,
                           parsing: bool, parser_problem: str | None = None) -> None:
    """Fill ``run["region_change"]``, its counts and details from :func:`part_changes`' rows.

    Only the parts measured on some face get a value; the others are named, with the reason, in
    ``details["region_change"]["not_computed"]`` (as LPIPS is), so an absent part (no glasses
    on any face) is not reported as a failure.

    Args:
        parsing: Whether the rows come from parsing masks (every part) or landmarks.
        parser_problem: Why there is no parser (recorded when ``parsing`` is false).
    """
    parts = PARTS if parsing else LANDMARK_ORDER
    run["region_change"], counts["region_change"] = {}, {}
    not_computed = {"lpips": LPIPS_REASON}
    for part in parts:
        values = [r[part] for r in rows if r.get(part) is not None]
        counts["region_change"][part] = len(values)
        if values:
            run["region_change"][part] = float(np.mean(values))
        else:  # an absent part is not a failure: left out, and said here
            not_computed[part] = "no face has this part" if rows else "no face to compare"
    if not parsing:
        not_computed.update({part: parser_problem or PARSER_REASON for part in PARSING_ONLY})
    details["region_change"] = {
        "masks": "parsing" if parsing else "landmarks",
        "measure": f"mean absolute difference in grey levels (0-255) inside each part of the {CROP_SIZE}-px "
                   "aligned crops (aligned with the real landmarks; parts without growth or feather)",
        "not_computed": not_computed,
    }
