"""Exports of an anonymize run for other tools: per-photo JSON sidecars and COCO detections."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from falco import __version__
from falco.errors import InputError
from falco.faces.ffhq import AlignedFace
from falco.faces.paste import photo_mask
from falco.run.atomic import atomic_write_text
from falco.run.manifest import RunManifest

__all__ = ["EXPORT_FORMATS", "SIDECAR_FIELDS", "check_export", "export_coco", "mask_rle", "write_sidecar"]

#: ``--export-detections`` choices.
EXPORT_FORMATS: tuple[str, ...] = ("coco",)
#: The face-row fields a sidecar keeps.
SIDECAR_FIELDS = ("box", "score", "landmarks", "quad", "status", "method", "reason", "fallback", "guard", "neighbour",
                  "losses")


def check_export(fmt: object) -> str | None:
    """Validate an ``--export-detections`` choice: None or one of :data:`EXPORT_FORMATS`."""
    if fmt is not None and fmt not in EXPORT_FORMATS:
        raise InputError(f"--export-detections must be {' or '.join(map(repr, EXPORT_FORMATS))}, got {fmt!r}")
    return fmt  # type: ignore[return-value]


def mask_rle(row: dict, shape: tuple[int, ...]) -> dict:
    """COCO uncompressed RLE of a face's region (the paste-back mask) in the photo."""
    face = AlignedFace(box=tuple(row["box"]), landmarks=np.asarray(row["landmarks"]), quad=np.asarray(row["quad"]),
                       image=np.zeros((8, 8, 3), np.uint8))
    mask = (photo_mask(face, shape) > 0).astype(np.uint8)
    flat = mask.flatten(order="F")  # COCO: column-major, counts alternate zeros and ones
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(shape[0]), int(shape[1])], "counts": [int(c) for c in counts]}


def export_coco(manifest: RunManifest, path: Path) -> Path:
    """Every face of the run as COCO detections (bbox, RLE mask, status) in ``path``."""
    images, annotations = [], []
    ids = {}
    for row in manifest.inputs():
        if row["status"] != "done":
            continue
        ids[row["source"]] = len(ids) + 1
        h, w = row["outputs"].get("size", [0, 0])
        images.append({"id": ids[row["source"]], "file_name": row["outputs"].get("photo", row["source"]),
                       "source": row["source"], "height": h, "width": w})
    for face in manifest.faces():
        if face["source"] not in ids or "mask_rle" not in face:
            continue
        x0, y0, x1, y1 = face["box"]
        rle = face["mask_rle"]
        annotations.append({"id": len(annotations) + 1, "image_id": ids[face["source"]], "category_id": 1,
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(sum(rle["counts"][1::2])),
                            "segmentation": rle, "iscrowd": 0, "score": face.get("score"),
                            "status": face["status"], "face_index": face["face_index"]})
    data = {"info": {"description": "falco anonymize detections", "version": __version__},
            "images": images, "annotations": annotations, "categories": [{"id": 1, "name": "face"}]}
    atomic_write_text(path, json.dumps(data))
    return path


def write_sidecar(path: Path, key: str, shape: tuple[int, ...], rows: list[dict], provenance: dict) -> None:
    """``<photo>.json``: the photo's size, the run's provenance and each face's row (:data:`SIDECAR_FIELDS`)."""
    faces = [{k: row[k] for k in SIDECAR_FIELDS if k in row} for row in rows]
    data = {"source": key, "height": int(shape[0]), "width": int(shape[1]), **provenance, "faces": faces}
    atomic_write_text(path, json.dumps(data, indent=1))
