"""Which anonymized photo and face belongs to which real one.

Photos pair by their path relative to ``--real`` / ``--anon`` (``a/b.jpg`` with ``a/b.jpg``;
when that file is missing, a file with the same stem and another image suffix, e.g. a PNG
written for a JPEG input). Faces pair in one of two ways:

* **manifest** (``--pairs``): the real faces are the rows of an anonymize run's
  ``manifest.sqlite`` (box, 68 landmarks, status), in its face order;
* **box IoU** (default): the real faces are the reference detector's detections on the real
  photo (falco's left-to-right order); each is matched one-to-one (Hungarian, IoU >= 0.3)
  to a detection on the anonymized photo.

A real face with no matching detection is still evaluated, at its real position: an attacker
who knows where faces were does not need the detector (a worst case for privacy).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from falco.errors import InputError
from falco.faces.detect import Box
from falco.run.inputs import IMAGE_SUFFIXES, discover_inputs
from falco.run.manifest import MANIFEST_NAME

__all__ = [
    "FacePair",
    "ManifestFace",
    "PhotoPair",
    "find_anon_photo",
    "list_photo_pairs",
    "manifest_path",
    "read_manifest_faces",
    "read_manifest_sources",
]


@dataclass(frozen=True)
class PhotoPair:
    """A real photo and its anonymized counterpart (None when missing)."""

    source: str
    real: Path
    anon: Path | None


@dataclass(frozen=True)
class ManifestFace:
    """One face row of an anonymize (or invert) run manifest."""

    source: str
    face_index: int
    status: str
    box: Box
    landmarks: np.ndarray
    regions: dict | None = None  # ``--keep``/``--change`` as the run recorded it for this face


@dataclass
class FacePair:
    """A real face and where its anonymized version is.

    Attributes:
        source: Photo path relative to the input roots.
        face_index: Index of the real face in its photo (manifest order or detection order).
        real_box: The real face's box ``(x0, y0, x1, y1)``.
        real_landmarks: Its 68 landmarks. Shape: ``[68, 2]``.
        anon_box: The matched detection on the anonymized photo, None when none matched.
        anon_landmarks: 68 landmarks predicted on the anonymized photo inside ``anon_box``
            (or ``real_box`` when there is none). Shape: ``[68, 2]``.
        status: The manifest's face status, or ``"paired"`` / ``"unmatched"`` in IoU mode.
        regions: The manifest's ``regions`` of the face (``{"keep": [...]}`` or ``{"change": [...]}``,
            masks, feather) when the run used ``--keep``/``--change``, else None.
    """

    source: str
    face_index: int
    real_box: Box
    real_landmarks: np.ndarray
    anon_box: Box | None = None
    anon_landmarks: np.ndarray | None = None
    status: str = "paired"
    results: dict = field(default_factory=dict)
    regions: dict | None = None


def find_anon_photo(anon_root: Path, source: str) -> Path | None:
    """The anonymized photo for ``source``: same relative path, else same stem with another suffix."""
    path = anon_root / source
    if path.is_file():
        return path
    if path.parent.is_dir():
        for suffix in sorted(IMAGE_SUFFIXES):
            alt = path.with_suffix(suffix)
            if alt.is_file():
                return alt
    return None


def list_photo_pairs(real_root: str | os.PathLike, anon_root: str | os.PathLike,
                     sources: list[str] | None = None, outputs: dict[str, str] | None = None) -> list[PhotoPair]:
    """Pair the photos of two folders by relative path (optionally only ``sources``).

    ``outputs`` maps a source to its anonymized photo's path relative to ``anon_root`` when a
    run manifest records it (``--format png`` changes the suffix).

    Raises:
        InputError: ``real_root`` or ``anon_root`` is not a folder, or holds no image.
    """
    real_root, anon_root = Path(real_root), Path(anon_root)
    for flag, root in (("--real", real_root), ("--anon", anon_root)):
        if not root.is_dir():
            raise InputError(f"{flag} {str(root)!r} is not a folder")
    if sources is None:
        sources = [item.key for item in discover_inputs(real_root)]
    outputs = outputs or {}

    def anon_of(source: str) -> Path | None:
        recorded = outputs.get(source)
        if recorded and (anon_root / recorded).is_file():
            return anon_root / recorded
        return find_anon_photo(anon_root, source)

    return [PhotoPair(s, real_root / s, anon_of(s)) for s in sources]


def manifest_path(path: str | os.PathLike) -> Path:
    """``--pairs`` may name the manifest file or the run's output folder."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    if not p.is_file():
        raise InputError(f"--pairs {str(path)!r}: no run manifest there (expected {MANIFEST_NAME})")
    return p


def read_manifest_faces(path: str | os.PathLike) -> tuple[list[ManifestFace], int]:
    """Every face row of a run manifest (any status), sorted by source and face index.

    Returns:
        The faces, and how many rows were skipped for lack of a box or 68 landmarks.

    Raises:
        InputError: No manifest there.
    """
    from falco.run.manifest import RunManifest

    p = manifest_path(path)
    with RunManifest(p.parent) as manifest:
        rows = manifest.faces()
    faces, skipped = [], 0
    for row in rows:
        try:
            lm = np.asarray(row.get("landmarks", ()), dtype=np.float64)
            box = tuple(int(v) for v in row.get("box") or ())
        except (TypeError, ValueError):
            lm, box = np.zeros(0), ()
        if lm.shape != (68, 2) or not np.isfinite(lm).all() or len(box) != 4:
            skipped += 1
            continue
        faces.append(ManifestFace(str(row["source"]), int(row["face_index"]), str(row.get("status") or "done"),
                                  box, lm, row.get("regions") or None))
    return sorted(faces, key=lambda f: (f.source, f.face_index)), skipped


def read_manifest_sources(path: str | os.PathLike) -> dict[str, str | None]:
    """Every input a run manifest records (with or without faces) -> its output photo, if recorded."""
    from falco.run.manifest import RunManifest

    p = manifest_path(path)
    with RunManifest(p.parent) as manifest:
        rows = manifest.inputs()
    out: dict[str, str | None] = {}
    for row in rows:
        photo = (row.get("outputs") or {}).get("photo")
        out[row["source"]] = photo if isinstance(photo, str) else None
    return dict(sorted(out.items()))
