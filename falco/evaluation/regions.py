"""How much each part of each face changed: the check of ``falco anonymize --keep`` / ``--change``.

For every paired face, the real and the anonymized photos are both FFHQ-aligned with the real
face's landmarks (256 px) and compared inside each part's mask: the mean absolute difference
over the part's pixels and the three channels, in grey levels (0-255). A kept part reads about
0; a changed part more. The masks are the parts themselves, without growth or feather
(:func:`falco.faces.regions.crop_region_mask` with ``dilate=0, feather=0``): from the face
parser's map of the real crop when the parser is installed (every part), else from the 68
landmarks (eyes, brows, nose, mouth, lips, skin; hair and the other parsing-only parts are then
not measured, and ``details.region_change.not_computed`` says why). With LPIPS installed
(:func:`falco.models.lpips.load_lpips`), the LPIPS distance map of the two crops (AlexNet v0.1,
``spatial=True``) is averaged inside each part too: ``region_lpips.<part>``; without it, the
reason is said in the same place.

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

__all__ = ["CROP_SIZE", "LANDMARK_ORDER", "LPIPS_REASON", "PARSER_REASON", "part_changes", "summarise_part_changes",
           "summarise_region_choice"]

#: Side of the aligned crops the parts are compared in.
CROP_SIZE = 256
#: The parts the landmarks can draw, in :data:`~falco.faces.regions.PARTS` order.
LANDMARK_ORDER: tuple[str, ...] = tuple(p for p in PARTS if p in LANDMARK_PARTS)
#: The parts only the face parser can draw.
PARSING_ONLY: tuple[str, ...] = tuple(p for p in PARTS if p not in LANDMARK_PARTS)
LPIPS_REASON = ("LPIPS is not installed (`falco models download lpips-alexnet lpips-alex-lin`); "
                "region_change gives the mean absolute difference per part instead")
PARSER_REASON = f"they need the face parser, which is not installed (`falco models download {PARSING_MODEL}`)"


def part_changes(real: np.ndarray, anon: np.ndarray, landmarks: Sequence[np.ndarray], *,
                 parser: Any = None, lpips: Any = None) -> list[dict[str, Any]]:
    """Mean absolute difference inside each part of each face (see the module docstring).

    Args:
        real, anon: The photos. Shape: ``[H, W, 3]`` uint8, the same.
        landmarks: The real faces' 68 landmarks. Shape: each ``[68, 2]``.
        parser: The face parser (:func:`falco.models.parsing.load_parser`), or None: landmark masks.
        lpips: An :class:`falco.models.lpips.LPIPS`, or None: no LPIPS per part.

    Returns:
        One ``{part: grey levels or None}`` per face (None: the part has no pixel), plus
        ``"lpips": {part: distance or None}`` when ``lpips`` is given; ``{}`` for a face too small
        to align.
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
    lpips_maps: list[np.ndarray | None] = [None] * len(faces)
    if lpips is not None and faces:
        lpips_maps = list(_lpips_maps(lpips, [f.image for f in faces], anon_crops))
    out: list[dict[str, Any]] = [{} for _ in landmarks]
    for slot, face, crop, labels, lp in zip(slots, faces, anon_crops, maps, lpips_maps):
        diff = np.abs(face.image.astype(np.int16) - crop.astype(np.int16)).mean(axis=-1)
        row: dict[str, float | None] = {}
        for part in parts:
            inside = crop_region_mask(face, part, size=CROP_SIZE, parsing=labels, feather=0.0, dilate=0.0) > 0.5
            row[part] = round(float(diff[inside].mean()), 4) if inside.any() else None
            if lp is not None:
                row.setdefault("lpips", {})[part] = round(float(lp[inside].mean()), 5) if inside.any() else None
        out[slot] = row
    return out


def _lpips_maps(net: Any, real: Sequence[np.ndarray], anon: Sequence[np.ndarray]) -> np.ndarray:
    """LPIPS distance maps of crop pairs (uint8 RGB, ``CROP_SIZE`` px), one ``[H, W]`` per pair."""
    import torch

    from falco.latent.images import to_tensor

    device = next(net.parameters()).device
    a, b = (to_tensor(np.stack(crops), size=CROP_SIZE, device=device) for crops in (real, anon))
    with torch.no_grad():
        return net(a, b, spatial=True).cpu().numpy()


def summarise_part_changes(run: dict, counts: dict, details: dict, rows: Sequence[dict[str, float | None]], *,
                           parsing: bool, parser_problem: str | None = None, lpips: bool = False,
                           lpips_problem: str | None = None) -> None:
    """Fill ``run["region_change"]``, its counts and details from :func:`part_changes`' rows.

    Only the parts measured on some face get a value; the others are named, with the reason, in
    ``details["region_change"]["not_computed"]`` (as LPIPS is), so an absent part (no glasses
    on any face) is not reported as a failure.

    Args:
        parsing: Whether the rows come from parsing masks (every part) or landmarks.
        parser_problem: Why there is no parser (recorded when ``parsing`` is false).
        lpips: Whether LPIPS was measured (``region_lpips.<part>``); ``lpips_problem``: why not.
    """
    parts = PARTS if parsing else LANDMARK_ORDER
    run["region_change"], counts["region_change"] = {}, {}
    with_lpips = [r["lpips"] for r in rows if r.get("lpips")]
    not_computed = {} if with_lpips or lpips else {"lpips": lpips_problem or LPIPS_REASON}
    if with_lpips or lpips:
        run["region_lpips"] = {}
        for part in parts:
            values = [r[part] for r in with_lpips if r.get(part) is not None]
            if values:
                run["region_lpips"][part] = float(np.mean(values))
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
                   "aligned crops (aligned with the real landmarks; parts without growth or feather)"
                   + ("; region_lpips: LPIPS (AlexNet v0.1) distance map averaged inside each part"
                      if with_lpips or lpips else ""),
        "not_computed": not_computed,
    }


def summarise_region_choice(run: dict, counts: dict, details: dict, faces: Sequence[Any],
                            rows: Sequence[dict[str, Any]]) -> None:
    """``region_check``: the ``--keep``/``--change`` choice read from the run's manifest, checked.

    For each anonymized face (status ``done``) whose manifest row records ``regions``, the parts
    taken from the photo (the kept ones; under ``--change``, the measured parts not changed, skin
    left out unless named: it borders every part and carries the changed parts' feathered seams) and
    the parts the method made are averaged separately from :func:`part_changes`' row:
    ``region_check.from_photo`` should read about 0 grey levels, ``region_check.from_method``
    more. Nothing is added when no face records a choice.

    Args:
        faces: The paired faces (:class:`~falco.evaluation.pairing.FacePair`, with ``regions``).
        rows: Their :func:`part_changes` rows, in the same order.
    """
    photo, method, choices = [], [], set()
    for face, row in zip(faces, rows):
        regions = getattr(face, "regions", None)
        if not regions or getattr(face, "status", "done") != "done" or not row:
            continue
        mode = "keep" if "keep" in regions else "change"
        named = set(regions.get(mode) or ())
        measured = [p for p in row if p != "lpips" and row[p] is not None]
        taken = [p for p in measured if (p in named) == (mode == "keep")]
        made = [p for p in measured if p not in taken]
        if mode == "change" and "skin" not in named:  # skin borders every part: it carries their seams
            taken = [p for p in taken if p != "skin"]
        choices.add(f"{mode} {', '.join(sorted(named)) or 'nothing'} ({regions.get('masks', '?')} masks)")
        if taken:
            photo.append(float(np.mean([row[p] for p in taken])))
        if made:
            method.append(float(np.mean([row[p] for p in made])))
    if not choices:
        return
    run["region_check"] = {"from_photo": float(np.mean(photo)) if photo else None,
                           "from_method": float(np.mean(method)) if method else None}
    counts["region_check"] = {"from_photo": len(photo), "from_method": len(method)}
    details["region_check"] = {
        "choice": sorted(choices),
        "measure": "region_change averaged over the parts each face's manifest row says came from the photo "
                   "(kept) and over the other measured parts (made by the method); grey levels 0-255",
    }
