"""Attribute preservation: do real and anonymized faces get the same attribute labels?

Classifiers are pluggable: anything with ``name``, ``attributes`` and
``predict_faces(image, landmarks) -> [{attribute: label}]`` works. Built in:

* :class:`~falco.evaluation.landmarks.LandmarkAttributes` (always available): head pose
  classes, eyes open, mouth open, from dlib's 68 landmarks;
* :class:`~falco.evaluation.farl_attributes.FaRLCelebAClassifier`: the 40 CelebA attributes,
  when ``face_attribute.farl.celeba.pt`` is installed (registry ``farl-celeba-attributes``);
* user labels from a CSV (:func:`load_labels_csv`), scored against the predictions on the
  anonymized faces (:func:`label_accuracy`).

Agreement of one attribute = share of paired faces whose real and anonymized labels are equal;
the report also gives their mean over attributes.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import numpy as np

from falco.errors import InputError

__all__ = [
    "AttributeClassifier",
    "FaceLabels",
    "agreement",
    "label_accuracy",
    "load_labels_csv",
    "normalize_label",
]

#: ``(source, face_index) -> {attribute: label}``, as read from a labels CSV.
FaceLabels = dict[tuple[str, int], dict[str, str]]

_TRUE = {"1", "+1", "true", "yes", "y", "t", "open", "present"}
_FALSE = {"0", "-1", "false", "no", "n", "f", "closed", "absent"}
_SOURCE_COLUMNS = ("source", "path", "file", "filename", "image", "image_id")


class AttributeClassifier(Protocol):
    """What the evaluation needs from an attribute classifier."""

    name: str
    attributes: Sequence[str]

    def predict_faces(self, image: np.ndarray, landmarks: Sequence[np.ndarray]) -> list[dict[str, str]]:
        """One ``{attribute: label}`` per face. Shape: ``image`` ``[H, W, 3]``, landmarks ``[68, 2]`` each."""
        ...


def normalize_label(value: object) -> str:
    """Canonical label text: yes/true/1/open -> ``"1"``, no/false/0/-1/closed -> ``"0"``, else lower-case."""
    text = str(value).strip().lower()
    if text in _TRUE:
        return "1"
    if text in _FALSE:
        return "0"
    return text


def agreement(real: Sequence[Mapping[str, str]], anon: Sequence[Mapping[str, str]],
              attributes: Sequence[str] | None = None) -> dict[str, float]:
    """Per-attribute share of faces with equal real and anonymized labels.

    Args:
        real: One label dict per real face.
        anon: One label dict per anonymized face, in the same order.
        attributes: Which to score (default: every attribute of the first real face).

    Returns:
        ``{attribute: fraction}``; empty when there is no face.
    """
    if len(real) != len(anon):
        raise InputError(f"real and anon label lists differ in length: {len(real)} vs {len(anon)}")
    if not real:
        return {}
    names = list(attributes) if attributes is not None else list(real[0])
    return {a: float(np.mean([normalize_label(r[a]) == normalize_label(s[a]) for r, s in zip(real, anon)]))
            for a in names}


def label_accuracy(labels: Sequence[Mapping[str, str]], predicted: Sequence[Mapping[str, str]]) -> tuple[
        dict[str, float], dict[str, int]]:
    """Per-attribute accuracy of predictions against given labels (attributes both sides have).

    Returns:
        ``({attribute: accuracy}, {attribute: faces scored})``; empty cells are skipped.
    """
    if len(labels) != len(predicted):
        raise InputError(f"labels and predictions differ in length: {len(labels)} vs {len(predicted)}")
    hits: dict[str, list[bool]] = {}
    for given, pred in zip(labels, predicted):
        for attr, value in given.items():
            if attr in pred and str(value).strip() != "":
                hits.setdefault(attr, []).append(normalize_label(value) == normalize_label(pred[attr]))
    return {a: float(np.mean(h)) for a, h in hits.items()}, {a: len(h) for a, h in hits.items()}


def load_labels_csv(path: str | os.PathLike) -> FaceLabels:
    """Read attribute labels supplied by a user.

    Format: a header row; one column naming the photo (``source``, or ``path``, ``file``,
    ``filename``, ``image``, ``image_id``) by its path relative to ``--real`` or its file name;
    an optional ``face_index`` column (default 0: the first face in falco's left-to-right
    order); every other column is an attribute (``Smiling``, ``eyes_open``...). Labels may be
    1/0, -1/1 (CelebA), yes/no, true/false or class names (``frontal``).

    Raises:
        InputError: Missing file, no header, no source column, or a bad ``face_index``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--labels {str(path)!r} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        sample = f.read(4096)
        f.seek(0)
        try:
            dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        reader = csv.DictReader(f, dialect=dialect)
        if not reader.fieldnames:
            raise InputError(f"--labels {str(path)!r}: no header row")
        fields = [h.strip() for h in reader.fieldnames]
        lower = {h.lower(): h for h in fields}
        source_col = next((lower[c] for c in _SOURCE_COLUMNS if c in lower), None)
        if source_col is None:
            raise InputError(f"--labels {str(path)!r}: needs a column naming the photo ({', '.join(_SOURCE_COLUMNS)}); "
                             f"found {', '.join(fields)}")
        index_col = lower.get("face_index")
        out: FaceLabels = {}
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            try:
                index = int(row.get(index_col, "") or 0) if index_col else 0
            except ValueError:
                raise InputError(f"--labels {str(path)!r} line {line}: face_index {row[index_col]!r} "
                                 "is not an integer") from None
            attrs = {k: v for k, v in row.items() if k not in (source_col, index_col) and v != ""}
            out[(row[source_col].replace("\\", "/"), index)] = attrs
    return out


def lookup_labels(labels: FaceLabels, source: str, face_index: int) -> dict[str, str] | None:
    """The labels of one face: by relative path, else by file name when that is unambiguous."""
    hit = labels.get((source, face_index))
    if hit is not None:
        return hit
    name = source.rsplit("/", 1)[-1]
    matches = [v for (s, i), v in labels.items() if i == face_index and s.rsplit("/", 1)[-1] == name]
    return matches[0] if len(matches) == 1 else None
