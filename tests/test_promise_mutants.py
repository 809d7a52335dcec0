"""Tests written to kill the mutants that survived ``scripts/mutants.sh`` (issue #25).

Each expectation comes from outside the code under test: the paper's defaults (DESIGN.md),
the definition of cosine similarity, or the documented contract of the function. Fast (no
networks, no shared data); ``scripts/mutants.sh`` runs this file for every module.
"""

from __future__ import annotations

import pytest
import torch

from falco.errors import InputError
from falco.losses import identity_loss, identity_margin_loss, token_l1_loss


def _pair(batch: int = 3, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, dim, generator=g), torch.randn(batch, dim, generator=g)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity by its definition, in float64."""
    a, b = a.double(), b.double()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


# --- losses: the margin m ----------------------------------------------------------------

def test_identity_margin_loss_default_margin_is_the_papers_zero():
    # DESIGN.md: m = 0.0 by default, so the default loss is |cos|
    a, b = _pair()
    expected = _cos(a, b).abs().mean()
    assert identity_margin_loss(a, b).item() == pytest.approx(expected.item(), abs=1e-6)


def test_identity_loss_default_margin_is_the_papers_zero():
    enc = torch.nn.Flatten()
    x_anon = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    x_real = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    expected = _cos(enc(x_anon), enc(x_real)).abs().mean()
    assert identity_loss(enc, x_anon, x_real).item() == pytest.approx(expected.item(), abs=1e-6)


def test_identity_margin_loss_is_cosine_for_embeddings_of_small_norm():
    # cosine similarity does not depend on the norm: a face embedding scaled by 1e-3 is the
    # same direction (cos = 1 with itself, loss |1 - m|)
    a, b = _pair()
    a, b = a * 1e-3, b * 1e-3
    expected = (_cos(a, b) - 0.25).abs().mean()
    assert identity_margin_loss(a, b, m=0.25).item() == pytest.approx(expected.item(), abs=1e-5)
    assert identity_margin_loss(a, a.clone(), m=0.0).item() == pytest.approx(1.0, abs=1e-5)


def test_identity_margin_loss_follows_the_dtype_of_the_optimised_side():
    # under autocast the anonymized embeddings are bf16 while the real ones were computed in fp32
    a, b = _pair()
    out = identity_margin_loss(a.to(torch.bfloat16), b.double(), reduction="none")
    assert out.dtype == torch.bfloat16


def test_token_l1_loss_follows_the_dtype_of_the_optimised_side():
    g = torch.Generator().manual_seed(3)
    t_anon, t_real = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    out = token_l1_loss(t_anon.to(torch.bfloat16), t_real.double(), reduction="none")
    assert out.dtype == torch.bfloat16


def test_margin_given_as_a_one_element_tensor_is_the_same_margin():
    a, b = _pair()
    ref = identity_margin_loss(a, b, m=0.5)
    assert torch.allclose(identity_margin_loss(a, b, m=torch.tensor(0.5)), ref)


@pytest.mark.parametrize("m", [-1.0, 1.0, 0])
def test_margin_bounds_are_inclusive(m):
    a, b = _pair()
    expected = (_cos(a, b) - m).abs().mean()
    assert identity_margin_loss(a, b, m=m).item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("m", [-1.5, 1.01, True, "0.5", float("nan"), float("inf")])
def test_margin_outside_minus_one_one_or_not_a_number_is_an_input_error(m):
    a, b = _pair()
    with pytest.raises(InputError):
        identity_margin_loss(a, b, m=m)


def test_empty_batch_is_an_input_error():
    e = torch.zeros(0, 8)
    with pytest.raises(InputError):
        identity_margin_loss(e, e)


# --- pixels: rendering pooled to 256 px ---------------------------------------------------

def test_to_256_of_a_1024_render_is_the_mean_of_each_4x4_block():
    # e4e's face_pool: AdaptiveAvgPool2d((256, 256)); at 1024 px that is the 4x4 block mean
    from falco.inversion import to_256

    img = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(4))
    expected = img.reshape(1, 3, 256, 4, 256, 4).mean(dim=(3, 5))
    out = to_256(img)
    assert out.shape == (1, 3, 256, 256)
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.equal(to_256(expected), expected)  # already 256: unchanged


# --- guard: which second-pass detections count as faces the first pass missed ------------

def _iou_by_pixels(a, b, scale: int = 4) -> float:
    """IoU of two boxes by counting grid cells (boxes on a 1/scale grid), no formula shared."""
    import numpy as np

    size = 40 * scale
    ma, mb = np.zeros((size, size), bool), np.zeros((size, size), bool)
    for m, (x0, y0, x1, y1) in ((ma, a), (mb, b)):
        m[round(y0 * scale):round(y1 * scale), round(x0 * scale):round(x1 * scale)] = True
    union = (ma | mb).sum()
    return float((ma & mb).sum() / union) if union else 0.0


@pytest.mark.parametrize("a, b", [
    ((0, 0, 2, 2), (1, 1, 3, 3)),          # corner overlap: 1 / 7
    ((0, 1, 4, 3), (1, 0, 3, 5)),          # a cross: wide and tall boxes
    ((2, 3, 9, 5), (4, 0, 6, 12)),         # asymmetric cross
    ((0, 0, 10, 10), (2, 3, 5, 4)),        # b inside a
    ((2, 3, 5, 4), (0, 0, 10, 10)),        # a inside b
    ((0, 0, 1, 1), (2, 2, 3, 3)),          # disjoint in x and in y
    ((0, 0, 2, 2), (1, 5, 3, 7)),          # overlapping in x only
    ((0, 0, 2, 2), (5, 1, 7, 3)),          # overlapping in y only
    ((0, 0, 2, 2), (2, 0, 4, 2)),          # touching edges
    ((1.5, 0.25, 7.75, 3.5), (0.5, 1.25, 3.0, 9.0)),
    ((3, 2, 8, 11), (3, 2, 8, 11)),        # identical: 1
])
def test_guard_iou_is_the_area_ratio_counted_on_a_grid(a, b):
    from falco.guard import _iou

    assert _iou(a, b) == pytest.approx(_iou_by_pixels(a, b), abs=1e-9)
    assert _iou(b, a) == pytest.approx(_iou_by_pixels(a, b), abs=1e-9)


def test_guard_iou_of_empty_boxes_is_zero():
    from falco.guard import _iou

    assert _iou((1, 1, 1, 1), (1, 1, 1, 1)) == 0.0


def test_guard_covers_a_box_whose_centre_lies_in_a_known_face_edges_included():
    from falco.guard import _covers

    box = (10, 10, 12, 12)  # centre (11, 11); IoU with every box below is under 0.99
    assert _covers(box, [(0, 0, 20, 20)], 0.99)
    assert _covers(box, [(11, 11, 20, 20)], 0.99)   # centre on the top-left corner
    assert _covers(box, [(0, 0, 11, 11)], 0.99)     # centre on the bottom-right corner
    for outside in [(11.5, 0, 20, 20), (0, 0, 10.5, 20), (0, 11.5, 20, 20), (0, 0, 20, 10.5)]:
        assert not _covers(box, [outside], 0.99), outside
    assert not _covers(box, [], 0.0)
    assert _covers(box, [(0, 0, 1, 1), (0, 0, 20, 20)], 0.99)  # any known face, not only the first


def test_guard_covers_a_box_overlapping_a_known_face_by_min_iou_or_more():
    from falco.guard import _covers

    box, other = (0, 0, 4, 1), (2.5, 0, 6.5, 1)  # centre (2, 0.5) outside other; IoU 1.5 / 6.5
    assert _covers(box, [other], 1.5 / 6.5)
    assert _covers(box, [other], 0.2)
    assert not _covers(box, [other], 0.24)


class _Thresholds:
    """Recognisers as the guard's wording sees them: dlib (distance < 0.6), ArcFace (cosine >= 0.25)."""

    class _Dlib:
        threshold = 0.6

    class _ArcFace:
        threshold = 0.25

    def __init__(self, arcface: bool = True) -> None:
        self.dlib = self._Dlib()
        self.arcface = self._ArcFace() if arcface else None


def _guard(mode="warn", arcface=True, **kwargs):
    from falco.guard import PrivacyGuard

    return PrivacyGuard(mode, _Thresholds(arcface), lambda img, f: img, lambda img: [], **kwargs)


def test_guard_rule_states_each_recognisers_threshold_and_direction():
    # the module docstring: dlib same person below 0.6 (a distance), ArcFace at or above 0.25 (a cosine)
    g = _guard()
    assert g._rule("dlib") == "distance, same person below 0.6"
    assert g._rule("arcface") == "cosine similarity, same person at or above 0.25"
    assert g._rule("unknown") == "score"


def test_guard_explains_every_step_of_the_trail_in_order():
    g = _guard()
    entry = {"trail": [
        {"step": "method", "identity": {"dlib": 0.312345}, "same": True},
        {"step": "redo", "identity": {"dlib": 0.5}, "same": True},
        {"step": "blur", "identity": {"dlib": 0.9, "arcface": 0.1}, "same": False},
        {"step": "smudge", "identity": {}, "same": False},
    ]}
    assert g.explain(entry).split("; ") == [
        "the method's output: recognised as the same person [dlib 0.312 (distance, same person below 0.6)]",
        "re-done with a stronger identity weight: still recognised as the same person "
        "[dlib 0.5 (distance, same person below 0.6)]",
        "covered by blur: no longer recognised [dlib 0.9 (distance, same person below 0.6), "
        "arcface 0.1 (cosine similarity, same person at or above 0.25)]",
        "covered by smudge: no longer recognised []",
    ]


@pytest.mark.parametrize("step, words", [("mask", "covered by a solid mask"), ("pixelate", "covered by pixelation"),
                                         ("fallback", "covered by the fallback")])
def test_guard_names_each_cover(step, words):
    g = _guard()
    entry = {"trail": [{"step": step, "identity": {"dlib": 0.1}, "same": True}]}
    assert g.explain(entry).startswith(f"{words}: still recognised as the same person [")


def test_guard_explains_the_last_resort_only_when_it_was_used():
    g = _guard()
    trail = [{"step": "mask", "identity": {"dlib": 0.1}, "same": True}]
    plain = g.explain({"trail": trail})
    assert plain.startswith("covered by a solid mask: still recognised") and "no pixel" not in plain
    assert g.explain({"trail": trail, "last_resort": False}) == plain
    with_note = g.explain({"trail": trail, "last_resort": True})
    assert with_note.startswith(plain + "; no pixel of the face region is left")
    assert "false detection" in with_note
    assert g.explain({}) == ""


@pytest.mark.parametrize("arcface", [True, False])
def test_guard_settings_record_what_it_ran_with(arcface):
    g = _guard("enforce", arcface=arcface, min_iou=0.45)
    assert g.settings() == {"mode": "enforce", "dlib_threshold": 0.6, "arcface": arcface, "min_iou": 0.45}
    assert _guard("warn").settings()["min_iou"] == 0.3  # the documented default overlap


def test_guard_scores_are_the_recognisers_own_distance_and_cosine_to_4_decimals():
    # recomputed outside the guard: dlib's descriptors and ArcFace's embeddings of the 256-px
    # aligned crops, compared by their definitions (Euclidean distance, dot product of unit vectors)
    import numpy as np

    from falco.align import detect_and_align
    from falco.baselines.base import fallback
    from falco.evaluation.reid import ArcFaceRecognizer, DlibRecognizer
    from falco.guard import Recognizers
    from falco.imageio import load_image
    from falco.models.arcface import tiny_arcface
    from tests.conftest import shared_path

    photo = load_image(shared_path("data", "faces", "2008_001322.jpg"))
    faces = detect_and_align(photo, size=256)
    out = photo.copy()
    for f in faces[:2]:
        out = fallback(out, f, "pixelate")
    arc = ArcFaceRecognizer(tiny_arcface())
    checks = Recognizers(arc).check_many(photo, out, faces)
    lms = [f.landmarks for f in faces]
    dist = np.linalg.norm(DlibRecognizer().embed(photo, lms) - DlibRecognizer().embed(out, lms), axis=-1)
    cos = np.sum(arc.embed(photo, lms) * arc.embed(out, lms), axis=-1)
    assert len(checks) == len(faces) >= 3
    for i, face_checks in enumerate(checks):
        by = {c.name: c for c in face_checks}
        assert abs(by["dlib"].score - dist[i]) <= 5e-5 and by["dlib"].same == bool(dist[i] < 0.6)
        assert abs(by["arcface"].score - cos[i]) <= 5e-5 and by["arcface"].same == bool(cos[i] >= 0.25)
    assert any(0.0 < dist[i] < 1.0 and abs(dist[i] - round(dist[i])) > 1e-3 for i in range(len(faces)))
