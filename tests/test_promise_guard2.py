"""The privacy guard's promises that ``scripts/mutants.sh guard`` found unguarded: every recogniser
it is given is asked and recorded, scores to 4 decimals, the settings it ran with, and the words of
the summary line.

Fast (stand-in recognisers, no network, no photo). The stand-ins return embeddings chosen here, so
each expected distance or cosine is known by hand: a distance is the first coordinate of the
output's embedding (the original's is 0), a cosine the first coordinate of a unit vector (the
original's is ``[1, 0]``). ``scripts/mutants.sh`` runs this file for ``guard``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import falco.faces.recognizers
from falco.faces.ffhq import AlignedFace
from falco.guard import IdentityCheck, MODES, PrivacyGuard, Recognizers, check_mode, covered_how, guard_summary


def _unit(c: float) -> list[float]:
    return [c, math.sqrt(1.0 - c * c)]


# per recogniser: metric, threshold, the output's embedding of face 0 and face 1
DLIB = ("euclidean", 0.6, [[0.123456, 0.0], [0.654321, 0.0]])      # distances 0.1235 (same), 0.6543
ARCFACE = ("cosine", 0.25, [_unit(0.281234), _unit(0.1)])           # cosines 0.2812 (same), 0.1
SFACE = ("cosine", 0.363, [_unit(0.412345), _unit(0.300007)])       # 0.4123 (same), 0.3
INSIGHTFACE = ("cosine", 0.28, [_unit(0.250049), _unit(0.543216)])  # 0.25, 0.5432 (same)


class _Rec:
    """A recogniser stand-in: ``embed(image, landmarks)`` gives the original's embedding (0 or
    ``[1, 0]``) for the photo whose first pixel is 0, else the output's (``spec``)."""

    def __init__(self, spec):
        self.metric, self.threshold, self.out = spec
        self.calls = []

    def _original(self) -> list[float]:
        return [0.0, 0.0] if self.metric == "euclidean" else [1.0, 0.0]

    def embed(self, image, landmarks):
        self.calls.append(len(landmarks))
        if image[0, 0, 0] == 0:
            return np.array([self._original()] * len(landmarks))
        return np.array(self.out[:len(landmarks)])


class _ArcFace(_Rec):
    """ArcFace takes aligned crops: the faces' own 256-px crops first, then the output's."""

    def embed_crops(self, crops):
        self.shapes = [c.shape for c in crops]
        first = not hasattr(self, "_seen")
        self._seen = True
        return np.array([self._original()] * len(crops) if first else self.out[:len(crops)])


class _Dlib(_Rec):
    def __init__(self):
        super().__init__(DLIB)


def _face(dx: float) -> AlignedFace:
    """68 landmarks of a plausible face (eyes above a mouth), shifted by ``dx``."""
    lm = np.zeros((68, 2))
    lm[:, 0], lm[:, 1] = 40 + dx, 50
    lm[36:42] = [30 + dx, 40]
    lm[42:48] = [50 + dx, 40]
    lm[48], lm[54] = [33 + dx, 62], [47 + dx, 62]
    quad = np.array([[20 + dx, 30], [20 + dx, 70], [60 + dx, 70], [60 + dx, 30]], np.float64)
    return AlignedFace(box=(int(20 + dx), 30, int(60 + dx), 70), landmarks=lm, quad=quad,
                       image=np.zeros((256, 256, 3), np.uint8))


def _photos():
    original = np.zeros((100, 140, 3), np.uint8)
    output = np.full((100, 140, 3), 7, np.uint8)
    return original, output


def _by_hand(*specs, names) -> list[list[tuple]]:
    """The expected checks, per face: (name, score to 4 decimals, same person?)."""
    out = []
    for i in range(2):
        face = []
        for name, (metric, threshold, emb) in zip(names, specs):
            score = emb[i][0]
            face.append((name, round(score, 4), score < threshold if metric == "euclidean" else score >= threshold))
        out.append(face)
    return out


def _as_tuples(checks: list[list[IdentityCheck]]) -> list[list[tuple]]:
    return [[(c.name, c.score, c.same) for c in face] for face in checks]


@pytest.fixture()
def stub_dlib(monkeypatch):
    monkeypatch.setattr(falco.faces.recognizers, "DlibRecognizer", _Dlib)


# --- Recognizers: every recogniser given is asked, each score to 4 decimals ---------------

def test_every_recogniser_given_is_asked_in_order_with_scores_to_4_decimals(stub_dlib):
    arc, sface, insight = _ArcFace(ARCFACE), _Rec(SFACE), _Rec(INSIGHTFACE)
    rec = Recognizers(arc, sface=sface, insightface=insight)
    original, output = _photos()
    checks = rec.check_many(original, output, [_face(0), _face(50)])
    assert _as_tuples(checks) == _by_hand(DLIB, ARCFACE, SFACE, INSIGHTFACE,
                                          names=("dlib", "arcface", "sface", "insightface"))
    # by hand, to be sure of the rounding: 4 decimals, not 5
    assert [c.score for c in checks[0]] == [0.1235, 0.2812, 0.4123, 0.25]
    assert [c.same for c in checks[0]] == [True, True, True, False]
    assert [c.same for c in checks[1]] == [False, False, False, True]
    assert arc.shapes == [(256, 256, 3)] * 2  # ArcFace sees the output's 256-px aligned crops
    assert sface.calls == insight.calls == [2, 2]  # one call per photo for all faces


@pytest.mark.parametrize("given", ["sface", "insightface"])
def test_a_recogniser_given_alone_is_asked(stub_dlib, given):
    spec = {"sface": SFACE, "insightface": INSIGHTFACE}[given]
    rec = Recognizers(**{given: _Rec(spec)})
    assert rec.arcface is None and getattr(rec, given) is not None
    original, output = _photos()
    checks = rec.check_many(original, output, [_face(0), _face(50)])
    assert _as_tuples(checks) == _by_hand(DLIB, spec, names=("dlib", given))


def test_check_is_check_many_of_one_face(stub_dlib):
    rec = Recognizers(sface=_Rec(SFACE))
    original, output = _photos()
    assert _as_tuples([rec.check(original, output, _face(0))]) == [_by_hand(DLIB, SFACE, names=("dlib", "sface"))[0]]
    assert rec.check_many(original, output, []) == []


# --- PrivacyGuard.settings: what it ran with ----------------------------------------------

class _Named:
    def __init__(self, **recs):
        class _D:
            threshold = 0.6
        self.dlib, self.arcface = _D(), None
        for k, v in recs.items():
            setattr(self, k, v)


def _guard(recognizers, **kwargs):
    return PrivacyGuard("warn", recognizers, lambda img, f: img, lambda img: [], **kwargs)


def test_settings_record_each_second_recogniser_and_the_redetection():
    g = _guard(_Named(sface=object(), insightface=object()))
    g.redetect = {"detector": "yunet", "why": "another family than the first pass (dlib)"}
    assert g.settings() == {"mode": "warn", "dlib_threshold": 0.6, "arcface": False, "min_iou": 0.3,
                            "sface": True, "insightface": True,
                            "redetect": {"detector": "yunet", "why": "another family than the first pass (dlib)"}}


@pytest.mark.parametrize("given", ["sface", "insightface"])
def test_settings_name_only_the_recognisers_given(given):
    s = _guard(_Named(**{given: object()})).settings()
    assert s[given] is True and ({"sface", "insightface"} - {given}).isdisjoint(s) and "redetect" not in s
    assert "sface" not in _guard(_Named(sface=None)).settings()


@pytest.mark.parametrize("mode", MODES)
def test_check_mode_returns_the_mode(mode):
    assert check_mode(mode) == mode


# --- covered_how / guard_summary: the words ----------------------------------------------

@pytest.mark.parametrize("row, words", [
    ({"status": "fallback", "fallback": "blur"}, "blur"),
    ({"status": "unsafe", "fallback": "pixelate"}, "pixelation"),
    ({"status": "missed", "fallback": "mask"}, "a solid mask"),
    ({"status": "fallback", "fallback": "smudge"}, "smudge"),            # an unnamed cover: its own name
    ({"status": "done", "fallback": "blur"}, None),                      # not covered: the method's output
    ({"status": "kept", "fallback": "blur"}, None),
    ({"status": "fallback", "fallback": None}, None),
    ({"status": "fallback"}, None),
    ({"status": "fallback", "fallback": "skip"}, None),                  # --on-fail skip covers nothing
    ({"status": "fallback", "fallback": "mask", "guard": {"last_resort": True}}, "a solid mask"),
    ({"status": "fallback", "fallback": "mask", "guard": {"last_resort": True, "trail": [
        {"step": "method"}, {"step": "redo"}, {"step": "blur"}, {"step": "mask"}]}}, "a solid mask (blur still matched)"),
    ({"status": "unsafe", "fallback": "mask", "guard": {"last_resort": True, "trail": [
        {"step": "method"}, {"step": "pixelate"}, {"step": "smudge"}, {"step": "mask"}]}},
     "a solid mask (pixelation, smudge still matched)"),
])
def test_covered_how_says_how_the_region_was_covered(row, words):
    assert covered_how(row) == words


def _row(status, fallback=None, **guard):
    return {"status": status, "fallback": fallback, "guard": {"verdict": status, **guard}}


def test_summary_orders_equal_counts_by_name_and_says_nothing_for_an_uncovered_fallback():
    # the ties come in the reverse of their alphabetical order
    rows = [_row("fallback", "pixelate"), _row("fallback", "blur"), _row("fallback", "skip"), _row("fallback", "mask"),
            _row("fallback", "blur")]
    line = guard_summary("enforce", rows)
    assert ("5 fell back: 2 covered by blur, 1 covered by a solid mask, 1 covered by nothing, "
            "1 covered by pixelation;") in line, line


def test_summary_names_the_covers_of_the_missed_faces_only():
    rows = [_row("fallback", "blur"), {"status": "missed", "fallback": "pixelate"},
            {"status": "missed", "fallback": "blur"}, {"status": "missed", "fallback": "pixelate"}]
    line = guard_summary("warn", rows)
    assert line.endswith("; 3 missed by detection and covered by blur, pixelation; 0 kept"), line
    one = guard_summary("warn", [_row("fallback", "blur"), {"status": "missed", "fallback": "pixelate"}])
    assert "1 missed by detection and covered by pixelation;" in one, one
