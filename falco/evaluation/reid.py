"""Re-identification: is an anonymized face still matched to the person it came from?

The recognisers (dlib, ArcFace) and their "same person" rules live in
:mod:`falco.faces.recognizers`, shared with the privacy guard; they are re-exported here.

Metrics (both over the paired faces):

* :func:`reid_rate`: share of anonymized faces whose recogniser says "same person" as their
  own real face (lower is more private);
* :func:`rank1_identification`: share of anonymized faces whose nearest real face, in the
  gallery of all real faces, is their own (closed-set rank-1 identification).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from falco.errors import InputError
from falco.faces import recognizers
from falco.faces.recognizers import (ARCFACE_THRESHOLD, DLIB_THRESHOLD, ArcFaceRecognizer, DlibRecognizer,  # noqa: F401
                                     Recognizer, _scores, pair_scores, same_person)

__all__ = ["rank1_identification", "reid_rate", *recognizers.__all__]


def reid_rate(recognizer: Recognizer, real: np.ndarray, anon: np.ndarray) -> float | None:
    """Share of pairs the recogniser calls the same person. Shape: ``[N, D]`` each; None if N = 0."""
    if len(real) == 0:
        return None
    return float(same_person(recognizer, pair_scores(recognizer, real, anon)).mean())


def rank1_identification(recognizer: Recognizer, anon: np.ndarray, gallery: np.ndarray,
                         own: Sequence[int]) -> float | None:
    """Share of anonymized faces whose best gallery match is their own real face.

    Args:
        anon: Embeddings of the anonymized faces. Shape: ``[N, D]``.
        gallery: Embeddings of all real faces. Shape: ``[G, D]``.
        own: For each anonymized face, the gallery index of its real face.

    Returns:
        A fraction in [0, 1]; None when there is no anonymized face.
    """
    if len(anon) == 0:
        return None
    own = np.asarray(own, dtype=np.int64)
    if own.shape != (len(anon),) or (own < 0).any() or (own >= len(gallery)).any():
        raise InputError(f"own must hold {len(anon)} gallery indices in [0, {len(gallery)})")
    best = np.argmax(_scores(recognizer, np.asarray(anon, np.float64), np.asarray(gallery, np.float64)), axis=1)
    return float((best == own).mean())
