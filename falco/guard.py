"""Fail-closed privacy guard: check every output photo before it is written.

After an anonymizer has handled a photo, the guard

1. checks each anonymized face against its original with dlib's face-recognition ResNet
   (same person when the 128-d distance is below 0.6) and, when its weights are real, ArcFace
   (cosine at least 0.25). A face that still matches is re-done once by the method (FALCO:
   identity weight x 3), then covered by the fallback (blur by default) if it still matches,
   and by a solid mask if even that matches (no pixel of the region is left; a recogniser that
   still matches then sees only the surroundings, typical of a false detection); without a
   mask to fall back on, a face that still matches is *unsafe*;
2. runs detection again on the output, at one more level of upsampling than the first pass and,
   where one is available, with a detector of another family (first pass dlib HOG/CNN: YuNet,
   else SCRFD, else MTCNN; first pass YuNet/SCRFD/MTCNN: dlib's HOG; ``settings()["redetect"]``
   records which and why): a face found there that overlaps no anonymized or kept face is a
   detector miss of the first pass and is covered by the fallback.

Verdicts per face: ``safe`` (the method's output passed), ``redone`` (passed after the
re-do), ``fallback`` (covered by the fallback, no longer matches), ``unsafe`` (still matches
after everything), ``missed`` (found only by the guard, covered by the fallback), ``kept``
(``--keep-identity``). Modes: ``off`` (no checks), ``warn`` (checks and repairs, exit 0),
``enforce`` (checks and repairs; exit 1 when the method failed to anonymize some face, i.e. a
verdict ``fallback`` or ``unsafe``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from falco.errors import InputError
from falco.faces.ffhq import AlignedFace

log = logging.getLogger(__name__)

MODES = ("off", "warn", "enforce")


def check_mode(mode: object) -> str:
    """Validate a ``--guard`` choice: one of :data:`MODES`. Raises InputError."""
    if mode not in MODES:
        raise InputError(f"--guard must be one of {', '.join(MODES)}, got {mode!r}")
    return str(mode)
FAILING_VERDICTS = ("fallback", "unsafe")


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _covers(box: Sequence[float], others: Sequence[Sequence[float]], min_iou: float) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return any(_iou(box, o) >= min_iou or (o[0] <= cx <= o[2] and o[1] <= cy <= o[3]) for o in others)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _stage(step: str, checks: Sequence["IdentityCheck"]) -> dict:
    """One step of a face's trail through the guard: its scores and whether it still matched."""
    return {"step": step, "identity": {c.name: c.score for c in checks}, "same": any(c.same for c in checks)}


@dataclass
class IdentityCheck:
    """One recogniser's verdict on an (original, output) face pair."""

    name: str
    score: float
    same: bool


class Recognizers:
    """The recognisers the guard uses: dlib always, ArcFace when real weights are installed, SFace and
    insightface's ArcFace ONNX when given."""

    def __init__(self, arcface: Any | None = None, sface: Any | None = None, insightface: Any | None = None) -> None:
        from falco.faces.recognizers import DlibRecognizer

        self.dlib = DlibRecognizer()
        self.arcface = arcface
        self.sface = sface  # a second opinion (cosine >= 0.363), e.g. SFaceRecognizer.from_models()
        self.insightface = insightface  # another (cosine >= 0.28), InsightfaceRecognizer.from_models()

    def check(self, original: np.ndarray, output: np.ndarray, face: AlignedFace) -> list[IdentityCheck]:
        """Compare the face in ``original`` with the same place in ``output``."""
        return self.check_many(original, output, [face])[0]

    def check_many(self, original: np.ndarray, output: np.ndarray, faces: Sequence[AlignedFace]
                   ) -> list[list[IdentityCheck]]:
        """:meth:`check` for several faces of one photo, each network called once per photo."""
        from falco.faces.recognizers import pair_scores, same_person

        if not faces:
            return []
        landmarks = [f.landmarks for f in faces]
        d = pair_scores(self.dlib, self.dlib.embed(original, landmarks), self.dlib.embed(output, landmarks))
        same = same_person(self.dlib, d)
        checks = [[IdentityCheck("dlib", round(float(d[i]), 4), bool(same[i]))] for i in range(len(faces))]
        if self.arcface is not None:
            from falco.faces.ffhq import align_face

            crops = [align_face(output, f.landmarks, size=256).image for f in faces]
            c = pair_scores(self.arcface, self.arcface.embed_crops([f.image for f in faces]),
                            self.arcface.embed_crops(crops))
            same = same_person(self.arcface, c)
            for i in range(len(faces)):
                checks[i].append(IdentityCheck("arcface", round(float(c[i]), 4), bool(same[i])))
        for name in ("sface", "insightface"):  # 5-point recognisers on the same landmarks
            rec = getattr(self, name, None)
            if rec is None:
                continue
            s = pair_scores(rec, rec.embed(original, landmarks), rec.embed(output, landmarks))
            same = same_person(rec, s)
            for i in range(len(faces)):
                checks[i].append(IdentityCheck(name, round(float(s[i]), 4), bool(same[i])))
        return checks


@dataclass
class GuardResult:
    """What the guard did to one photo."""

    photo: np.ndarray
    verdicts: list[dict] = field(default_factory=list)   # one per anonymized face, in order
    missed: list[dict] = field(default_factory=list)     # faces only the guard found

    @property
    def failing(self) -> int:
        return sum(v["verdict"] in FAILING_VERDICTS for v in self.verdicts)


class PrivacyGuard:
    """Check and repair output photos (see the module docstring).

    Args:
        mode: ``off``, ``warn`` or ``enforce``.
        recognizers: The identity checkers.
        fallback: ``(photo, face) -> photo`` covering one face (the method's ``--on-fail``).
        detect: ``photo -> list of AlignedFace`` for the second detection pass.
        last_resort: ``(photo, face) -> photo`` for a face the fallback did not hide (a solid mask).
        min_iou: Overlap under which an output detection counts as a new face.
        fallback_name: What ``fallback`` does (``'blur'``...), recorded as a face's ``covered_by``.

    Each verdict records ``identity`` (the last check's scores), ``trail`` (every step: the
    method's output, the re-do, each cover, with its scores and whether it still matched),
    ``covered_by`` (``fallback_name`` or ``'mask'``; ``last_resort`` True for the latter) and,
    unless the face was safe, ``why`` (the trail in words).
    """

    def __init__(self, mode: str, recognizers: Recognizers, fallback: Callable[[np.ndarray, AlignedFace], np.ndarray],
                 detect: Callable[[np.ndarray], list[AlignedFace]], *,
                 last_resort: Callable[[np.ndarray, AlignedFace], np.ndarray] | None = None,
                 min_iou: float = 0.3, fallback_name: str | None = None) -> None:
        check_mode(mode)
        self.mode, self.recognizers, self.fallback, self.detect, self.min_iou = mode, recognizers, fallback, detect, min_iou
        self.last_resort = last_resort
        self.fallback_name = fallback_name
        self.redetect: dict | None = None  # which detector ``detect`` runs, and why (set by make_guard)

    def _rule(self, name: str) -> str:
        """How recogniser ``name``'s score reads, e.g. ``'distance, same person below 0.6'``."""
        if name == "dlib":
            return f"distance, same person below {self.recognizers.dlib.threshold:g}"
        rec = getattr(self.recognizers, name, None)
        threshold = getattr(rec, "threshold", None)
        return f"cosine similarity, same person at or above {threshold:g}" if threshold is not None else "score"

    def explain(self, entry: dict) -> str:
        """One readable sentence per step of ``entry["trail"]``: why the face was re-done or covered."""
        names = {"method": "the method's output", "redo": "re-done with a stronger identity weight",
                 "mask": "covered by a solid mask", "blur": "covered by blur", "pixelate": "covered by pixelation",
                 "fallback": "covered by the fallback"}
        parts = []
        for stage in entry.get("trail", []):
            step = stage["step"]
            what = names.get(step, f"covered by {step}")
            scores = ", ".join(f"{k} {_fmt(v)} ({self._rule(k)})" for k, v in stage["identity"].items())
            if stage["same"]:
                verdict = "still recognised as the same person" if step != "method" else "recognised as the same person"
            else:
                verdict = "no longer recognised"
            parts.append(f"{what}: {verdict} [{scores}]")
        if entry.get("last_resort"):
            parts.append("no pixel of the face region is left; a remaining match comes from the surroundings "
                         "the recogniser also sees (typical of a false detection)")
        return "; ".join(parts)

    @property
    def active(self) -> bool:
        return self.mode != "off"

    def settings(self) -> dict:
        out = {"mode": self.mode, "dlib_threshold": self.recognizers.dlib.threshold,
               "arcface": self.recognizers.arcface is not None, "min_iou": self.min_iou}
        for name in ("sface", "insightface"):
            if getattr(self.recognizers, name, None) is not None:
                out[name] = True
        if self.redetect:
            out["redetect"] = self.redetect
        return out

    def _matches(self, original, output, face) -> tuple[bool, list[IdentityCheck]]:
        checks = self.recognizers.check(original, output, face)
        return any(c.same for c in checks), checks

    def review(self, original: np.ndarray, output: np.ndarray, faces: Sequence[AlignedFace], *,
               redo: Callable[[np.ndarray, int], np.ndarray | None] | None = None,
               kept: Sequence[AlignedFace] = ()) -> GuardResult:
        """Check ``output`` (made from ``original``) face by face and repair it.

        Args:
            faces: The faces the method anonymized (in the original's coordinates).
            redo: ``(photo, i) -> photo`` re-doing face ``i`` more strongly, or None.
            kept: Faces deliberately left as they are (not checked, not treated as missed).
        """
        result = GuardResult(photo=output)
        if not self.active:
            return result
        photo = output
        first = self.recognizers.check_many(original, photo, faces)
        for i, face in enumerate(faces):
            checks = first[i]
            same = any(c.same for c in checks)
            verdict = "safe"
            trail = [_stage("method", checks)]
            if same and redo is not None:
                redone = redo(photo, i)
                if redone is not None:
                    same, checks = self._matches(original, redone, face)
                    trail.append(_stage("redo", checks))
                    photo = redone if not same else photo
                    verdict = "redone" if not same else verdict
            covered_by = None
            for name, cover in (("fallback", self.fallback), ("last_resort", self.last_resort)):
                if not same or cover is None:
                    continue
                photo = cover(photo, face)
                same, checks = self._matches(original, photo, face)
                covered_by = name
                trail.append(_stage("mask" if name == "last_resort" else (self.fallback_name or "fallback"), checks))
            if covered_by == "last_resort":
                # No pixel of the region is left: a remaining "match" comes from the surroundings
                # the recogniser's chip also sees (typical of a false detection), not from the face.
                verdict = "fallback"
            elif covered_by is not None:
                verdict = "unsafe" if same else "fallback"
            entry = {"verdict": verdict, "identity": {c.name: c.score for c in checks}, "trail": trail}
            if covered_by == "last_resort":
                entry["covered_by"] = "mask"
                entry["last_resort"] = True
            elif covered_by == "fallback" and self.fallback_name is not None:
                entry["covered_by"] = self.fallback_name
            if verdict != "safe":
                entry["why"] = self.explain(entry)
            result.verdicts.append(entry)
        known = [f.box for f in faces] + [f.box for f in kept]
        for extra in self.detect(photo):
            if _covers(extra.box, known, self.min_iou):
                continue
            photo = self.fallback(photo, extra)
            known.append(extra.box)
            result.missed.append({"verdict": "missed", "box": list(extra.box), "landmarks": extra.landmarks.tolist(),
                                  "quad": extra.quad.tolist(), "method": "guard-fallback",
                                  "covered_by": self.fallback_name})
        result.photo = photo
        return result


# ------------------------------------------------------------------ reporting
#: How each covering is said in words.
COVER_WORDS = {"blur": "blur", "pixelate": "pixelation", "mask": "a solid mask"}


def covered_how(row: dict) -> str | None:
    """How a face row's region was covered, in words (``'a solid mask (blur still matched)'``); None if it was not."""
    how = row.get("fallback")
    if row.get("status") not in ("fallback", "unsafe", "missed") or how in (None, "skip"):
        return None
    text = COVER_WORDS.get(how, str(how))
    guard = row.get("guard") or {}
    if guard.get("last_resort"):
        tried = [s["step"] for s in guard.get("trail", []) if s["step"] not in ("method", "redo", "mask")]
        if tried:
            text += f" ({', '.join(COVER_WORDS.get(t, t) for t in tried)} still matched)"
    return text


def guard_summary(mode: str, faces: list[dict]) -> str:
    """The privacy guard's one-line summary, from the recorded face rows (how each face was really covered)."""
    checked = sum(1 for f in faces if f.get("guard"))
    redone = sum(1 for f in faces if (f.get("guard") or {}).get("verdict") == "redone")
    counts = {s: sum(1 for f in faces if f["status"] == s) for s in ("fallback", "unsafe", "missed", "kept")}
    covers: dict[str, int] = {}
    for f in faces:
        if f["status"] == "fallback":
            how = covered_how(f) or "nothing"
            covers[how] = covers.get(how, 0) + 1
    fell = f"{counts['fallback']} fell back"
    if covers:
        most_first = sorted(covers.items(), key=lambda kv: (-kv[1], kv[0]))
        fell += ": " + ", ".join(f"{n} covered by {how}" for how, n in most_first)
    missed = f"{counts['missed']} missed by detection and covered"
    missed_covers = sorted({covered_how(f) for f in faces if f["status"] == "missed"} - {None})
    if missed_covers:
        missed += f" by {', '.join(missed_covers)}"
    return (f"privacy guard ({mode}): {checked} faces checked; {redone} re-done; {fell}; {counts['unsafe']} unsafe; "
            f"{missed}; {counts['kept']} kept")
