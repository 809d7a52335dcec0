"""Tests written to kill the mutants that survived ``scripts/mutants.sh``.

Each expectation comes from outside the code under test: the paper's defaults (DESIGN.md),
the definition of cosine similarity, or the documented contract of the function. Fast (no
networks, no shared data); ``scripts/mutants.sh`` runs this file for every module.
"""

from __future__ import annotations

import pytest
import torch

from falco.errors import InputError
from falco.latent.losses import identity_margin_loss, token_l1_loss
from tests.conftest import ScriptedRecognizers, anonymize_cli_configs


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
    from falco.latent.invert import to_256

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
    ((3, 3, 4, 4), (3, 3, 4, 4)),          # identical single pixels: 1 (a union of 1 is not empty)
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

    box = (10, 30, 12, 34)  # centre (11, 32); IoU with every box below is under 0.99
    assert _covers(box, [(0, 0, 40, 40)], 0.99)
    assert _covers(box, [(11, 32, 40, 40)], 0.99)   # centre on the top-left corner
    assert _covers(box, [(0, 0, 11, 32)], 0.99)     # centre on the bottom-right corner
    for outside in [(11.5, 0, 40, 40), (0, 0, 10.5, 40), (0, 32.5, 40, 40), (0, 0, 40, 31.5),
                    (20, 0, 40, 40), (0, 0, 40, 23)]:
        assert not _covers(box, [outside], 0.99), outside
    assert not _covers(box, [], 0.0)
    assert _covers(box, [(0, 0, 1, 1), (0, 0, 40, 40)], 0.99)  # any known face, not only the first


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
    assert with_note.endswith("the recogniser also sees (typical of a false detection)")
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
    from falco.methods.cover import fallback
    from falco.evaluation.reid import ArcFaceRecognizer, DlibRecognizer
    from falco.guard import Recognizers
    from falco.run.image_files import load_image
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


# --- guard: review, on a synthetic photo with a recogniser that matches untouched pixels ----

def _box_face(box):
    import numpy as np

    from falco.faces.ffhq import AlignedFace

    x0, y0, x1, y1 = box
    lm = np.stack([np.linspace(x0, x1 - 1, 68), np.linspace(y0, y1 - 1, 68)], axis=1)
    quad = np.array([[x0, y0], [x0, y1], [x1, y1], [x1, y0]], np.float64)
    return AlignedFace(box=tuple(box), landmarks=lm, quad=quad, image=np.zeros((8, 8, 3), np.uint8))


class _SameWhileUntouched(ScriptedRecognizers):
    """'Same person' (dlib distance 0.1) while the face box still holds the original pixels, else 0.9."""

    same_score, other_score = 0.1, 0.9


def _photo():
    import numpy as np

    return np.random.default_rng(0).integers(1, 255, (64, 96, 3), dtype=np.uint8)


def _fill(value):
    def cover(img, face):
        out = img.copy()
        x0, y0, x1, y1 = face.box
        out[y0:y1, x0:x1] = value
        return out
    return cover


def _review_guard(detect=lambda img: [], fallback_name="blur", **kwargs):
    from falco.guard import PrivacyGuard

    return PrivacyGuard("enforce", _SameWhileUntouched(), _fill(7), detect, last_resort=_fill(0),
                        fallback_name=fallback_name, **kwargs)


def test_guard_review_keeps_a_successful_redo_in_the_written_photo():
    photo = _photo()
    faces = [_box_face((4, 4, 20, 20)), _box_face((40, 10, 60, 30))]

    def redo(img, i):  # the re-do changes face 0 only
        return _fill(200)(img, faces[0]) if i == 0 else None

    res = _review_guard().review(photo, photo.copy(), faces, redo=redo)
    v0, v1 = res.verdicts
    assert v0["verdict"] == "redone" and [s["step"] for s in v0["trail"]] == ["method", "redo"]
    assert v0["identity"] == {"dlib": 0.9} and "why" in v0 and "covered_by" not in v0
    assert (res.photo[4:20, 4:20] == 200).all()          # the re-done pixels are what is written
    assert v1["verdict"] == "fallback" and v1["covered_by"] == "blur"
    assert [s["step"] for s in v1["trail"]] == ["method", "blur"]
    assert (res.photo[10:30, 40:60] == 7).all()
    assert res.failing == 1


def test_guard_review_discards_a_redo_that_still_matches():
    photo = _photo()
    face = _box_face((4, 4, 20, 20))

    def redo(img, i):  # changes pixels outside the face only: still the same person
        out = img.copy()
        out[40:50, 70:80] = 123
        return out

    res = _review_guard().review(photo, photo.copy(), [face], redo=redo)
    assert res.verdicts[0]["verdict"] == "fallback"
    assert (res.photo[40:50, 70:80] == photo[40:50, 70:80]).all()  # the rejected re-do is not written
    assert (res.photo[4:20, 4:20] == 7).all()


def test_guard_review_of_a_safe_face_records_no_cover_and_no_explanation():
    photo = _photo()
    face = _box_face((4, 4, 20, 20))
    out = _fill(50)(photo, face)  # the method changed the face: not the same person
    res = _review_guard().review(photo, out, [face])
    (v,) = res.verdicts
    assert v == {"verdict": "safe", "identity": {"dlib": 0.9},
                 "trail": [{"step": "method", "identity": {"dlib": 0.9}, "same": False}]}
    assert res.failing == 0 and (res.photo == out).all()


def test_guard_review_names_an_unnamed_fallback_the_fallback():
    photo = _photo()
    face = _box_face((4, 4, 20, 20))
    res = _review_guard(fallback_name=None).review(photo, photo.copy(), [face])
    (v,) = res.verdicts
    assert [s["step"] for s in v["trail"]] == ["method", "fallback"] and "covered_by" not in v
    assert v["why"].startswith("the method's output: recognised as the same person")
    assert "covered by the fallback: no longer recognised" in v["why"]


def test_guard_review_covers_faces_only_the_second_detection_found():
    photo = _photo()
    face = _box_face((4, 4, 20, 20))
    extra = _box_face((50, 30, 70, 50))       # overlaps no known face
    near = _box_face((5, 5, 21, 21))          # the same face found again
    out = _fill(50)(photo, face)
    res = _review_guard(detect=lambda img: [near, extra]).review(photo, out, [face])
    assert len(res.missed) == 1
    m = res.missed[0]
    assert m["verdict"] == "missed" and m["box"] == [50, 30, 70, 50] and m["covered_by"] == "blur"
    assert m["method"] == "guard-fallback" and len(m["landmarks"]) == 68 and len(m["quad"]) == 4
    assert (res.photo[30:50, 50:70] == 7).all() and (res.photo[5:21, 20:21] == photo[5:21, 20:21]).all()


# --- config: every anonymize flag reaches the config the run gets ------------------------

def _anonymize_cfg(monkeypatch, tmp_path, *flags):
    """The AnonymizeConfig `falco anonymize IN --out OUT FLAGS...` hands to run_anonymize."""
    code, seen = anonymize_cli_configs(monkeypatch, tmp_path, *flags)
    assert code == 0 and len(seen) == 1
    return seen[0]


def test_anonymize_cli_without_flags_gives_the_documented_defaults(monkeypatch, tmp_path, capsys):
    cfg = _anonymize_cfg(monkeypatch, tmp_path)
    assert "message from the run" in capsys.readouterr().err
    assert (cfg.method, cfg.bank, cfg.reuse, cfg.falco.amp, cfg.falco.fused_modconv, cfg.falco.channels_last, cfg.falco.compile) == \
        ("falco", None, True, None, True, False, None)
    assert (cfg.falco.loss_resolution, cfg.format, cfg.quality, cfg.save_crops, cfg.method_options) == \
        (None, None, 95, False, {})
    assert (cfg.sidecar, cfg.export_detections, cfg.progress, cfg.keep_identity, cfg.falco.layers) == \
        (False, None, True, (), (3, 8))


def test_anonymize_cli_flags_reach_the_config(monkeypatch, tmp_path):
    keep = tmp_path / "me.jpg"
    cfg = _anonymize_cfg(
        monkeypatch, tmp_path, "--method", "blur", "--bank", str(tmp_path / "bank"), "--no-reuse",
        "--amp", "bf16", "--modconv", "dense", "--channels-last", "--compile", "--loss-resolution", "128",
        "--format", "JPEG", "--quality", "80", "--save-crops", "--blur-preset", "heavy",
        "--pixelate-blocks", "8", "--ciagan-id", "3", "--sidecar", "--export-detections", "coco",
        "--max-pixels", "1000", "--no-progress", "--keep-identity", str(keep), "--layers", "2:6",
        "--detector", "cnn", "--upsample", "2", "--batch-size", "3", "--device", "cpu", "--seed", "5",
        "--on-fail", "pixelate", "--guard", "warn", "--fp16-res", "2", "--bank-size", "77", "--m", "0.5",
        "--steps", "9", "--lr", "0.02", "--lambda-id", "5", "--lambda-attr", "0.3", "--models", str(tmp_path))
    assert (cfg.detector, cfg.upsample, cfg.batch_size, cfg.device, cfg.seed, cfg.on_fail, cfg.guard) == \
        ("cnn", 2, 3, "cpu", 5, "pixelate", "warn")
    assert (cfg.falco.num_fp16_res, cfg.bank_size, cfg.falco.m, cfg.falco.steps, cfg.falco.lr, cfg.falco.lambda_id, cfg.falco.lambda_attr) == \
        (2, 77, 0.5, 9, 0.02, 5.0, 0.3)
    assert cfg.models == tmp_path and cfg.input == tmp_path / "in" and cfg.out == tmp_path / "out"
    assert cfg.method == "blur" and cfg.bank == tmp_path / "bank" and cfg.reuse is False
    assert cfg.falco.amp == "bf16" and cfg.falco.fused_modconv is False and cfg.falco.channels_last is True and cfg.falco.compile == "inductor"
    assert cfg.falco.loss_resolution == 128 and cfg.format == "jpeg" and cfg.quality == 80 and cfg.save_crops is True
    assert cfg.method_options == {"preset": "heavy", "blocks": 8, "ciagan_id": 3}
    assert cfg.sidecar is True and cfg.export_detections == "coco" and cfg.max_pixels == 1000
    assert cfg.progress is False and cfg.keep_identity == (keep,) and cfg.falco.layers == (2, 6)
    assert _anonymize_cfg(monkeypatch, tmp_path, "--amp", "fp16").falco.amp == "fp16"
    assert _anonymize_cfg(monkeypatch, tmp_path, "--amp", "off").falco.amp is None


def test_version_flag_prints_the_version(capsys):
    from falco import __version__
    from falco.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"falco {__version__}"


def _run_main(monkeypatch, tmp_path, capsys, raises):
    """`falco anonymize` whose run raises ``raises``: (exit status, stdout, stderr)."""
    import falco.run.anonymize as cmd
    from falco.cli import main

    def boom(cfg, echo=None):
        raise raises

    monkeypatch.setattr(cmd, "run_anonymize", boom)
    (tmp_path / "in").mkdir(exist_ok=True)
    with pytest.raises(SystemExit) as exc:
        main(["anonymize", str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_cli_exit_statuses_are_the_documented_ones(monkeypatch, tmp_path, capsys):
    # module docstring: a FalcoError is one line and exit 2; Ctrl-C one line and exit 130
    from stylegan2_ops.errors import OpsError

    code, out, err = _run_main(monkeypatch, tmp_path, capsys, InputError("bad input"))
    assert (code, out, err) == (2, "", "error: bad input\n")
    code, out, err = _run_main(monkeypatch, tmp_path, capsys, OpsError("no compiler"))
    assert (code, out, err) == (2, "", "error: no compiler\n")
    code, out, err = _run_main(monkeypatch, tmp_path, capsys, KeyboardInterrupt())
    assert code == 130 and out == "" and err.strip().endswith("interrupted; re-run the same command to resume")
    with pytest.raises(ZeroDivisionError):  # a bug is not dressed up as a user error
        _run_main(monkeypatch, tmp_path, capsys, ZeroDivisionError("bug"))


def test_cli_ctrl_c_outside_a_command_is_one_line_and_exit_130(monkeypatch, capsys):
    import falco.cli.root

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(falco.cli.root, "app", interrupted)
    with pytest.raises(SystemExit) as exc:
        falco.cli.root.main(["env"])
    assert exc.value.code == 130
    out = capsys.readouterr()
    assert out.out == "" and out.err == "interrupted; re-run the same command to resume\n"


def test_cli_usage_names_the_program_falco(capsys):
    from falco.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["anonymize", "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.lstrip().startswith("Usage: falco anonymize")


@pytest.mark.parametrize("failed, unsafe, code", [([], 0, 0), (["a.jpg"], 0, 1), ([], 2, 1)])
def test_cli_finish_prints_the_summary_and_exits_1_on_failures_or_unsafe_faces(failed, unsafe, code, capsys):
    import typer

    from falco.cli.options import report_summary as _finish

    class S:
        def line(self):
            return "3 photos, 5 faces"

    s = S()
    s.failed, s.unsafe = failed, unsafe
    if code:
        with pytest.raises(typer.Exit) as exc:
            _finish(s)
        assert exc.value.exit_code == code
    else:
        _finish(s)
    out = capsys.readouterr()
    assert out.out == "3 photos, 5 faces\n"
    if failed:  # the manifest's own query for the failed inputs (status 'failed' in table inputs)
        assert out.err.startswith("1 input(s) failed")
        assert "SELECT source, reason FROM inputs WHERE status = 'failed'" in out.err
    else:
        assert out.err == ""


def test_finish_of_a_summary_without_an_unsafe_count_exits_0(capsys):
    from falco.cli.options import report_summary as _finish

    class S:
        failed: list = []

        def line(self):
            return "ok"

    _finish(S())
    assert capsys.readouterr().out == "ok\n"


def test_config_as_dict_turns_paths_into_strings_and_keeps_the_rest():
    from pathlib import Path

    from falco.config import AnonymizeConfig, as_dict

    d = as_dict(AnonymizeConfig(input=Path("in/photos"), out=Path("out")))
    assert d["input"] == "in/photos" and d["out"] == "out" and d["models"] is None
    assert d["falco"]["steps"] == 50 and d["falco"]["m"] == 0.0 and d["falco"]["layers"] == [3, 8]
    assert d["reuse"] is True and d["keep_identity"] == []


# --- mixing: what a run records ------------------------------------------------------------

def test_optim_result_final_is_the_last_steps_losses_of_that_face():
    import math

    from falco.latent.optimise import OptimResult

    losses = {"id": torch.tensor([[0.9, 0.8], [0.5, 0.4], [0.3, 0.2]]), "attr": torch.tensor([[1.0, 2.0]] * 3)}
    r = OptimResult(ws=torch.zeros(2, 4, 3), losses=losses)
    assert r.final(0) == {"id": pytest.approx(0.3), "attr": 1.0}
    assert r.final(1) == {"id": pytest.approx(0.2), "attr": 2.0}
    empty = OptimResult(ws=torch.zeros(2, 4, 3), losses={"id": torch.empty(0, 2)}).final(1)
    assert list(empty) == ["id"] and math.isnan(empty["id"])  # 0 steps: no loss, NaN


def test_falco_params_as_dict_is_json_ready_with_the_papers_values():
    import json

    from falco.latent.optimise import FalcoParams

    d = FalcoParams().as_dict()
    assert d["layers"] == [3, 8] and d["lr_milestones"] == [0.75, 0.9]
    assert (d["m"], d["steps"], d["lr"], d["lr_gamma"], d["lambda_id"], d["lambda_attr"]) == \
        (0.0, 50, 0.01, 0.8, 10.0, 0.1)
    assert json.loads(json.dumps(d)) == d
    assert FalcoParams(layers=(2, 6)).as_dict()["layers"] == [2, 6]


@pytest.mark.parametrize("kwargs", [dict(num_fp16_res=0), dict(m=1.0), dict(m=0.0), dict(layers=(0, 1)),
                                    dict(loss_resolution=4), dict(loss_resolution=8), dict(loss_resolution=256)])
def test_falco_params_accept_the_documented_bounds(kwargs):
    # FalcoParams docstring / DESIGN.md: num_fp16_res 0 keeps fp32; m in [0, 1]; 0 <= start < end;
    # loss_resolution a power of two >= 4
    from falco.latent.optimise import FalcoParams

    FalcoParams(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(num_fp16_res=-1), dict(m=1.01), dict(layers=(3, 3)), dict(layers=(-1, 4)),
                                    dict(loss_resolution=2), dict(loss_resolution=3), dict(loss_resolution=12),
                                    dict(loss_resolution=6)])
def test_falco_params_refuse_values_past_the_bounds(kwargs):
    from falco.latent.optimise import FalcoParams

    with pytest.raises(InputError):
        FalcoParams(**kwargs)


def test_falco_params_compile_flag_true_means_inductor():
    from falco.latent.optimise import FalcoParams

    assert FalcoParams(compile=True).compile == "inductor"
    assert FalcoParams(compile=False).compile is None
    assert FalcoParams(compile="eager").compile == "eager"
    assert FalcoParams().compile is None


def test_mix_codes_may_take_the_fake_up_to_the_last_layer():
    from falco.latent.optimise import mix_codes

    real, fake = torch.zeros(1, 6, 2), torch.ones(1, 6, 2)
    mixed = mix_codes(real, fake, (3, 6))  # end == num_ws is allowed
    assert mixed[0, :3].eq(0).all() and mixed[0, 3:].eq(1).all()
    with pytest.raises(InputError):
        mix_codes(real, fake, (3, 7))


def test_optimise_refuses_crops_of_another_batch_size():
    from falco.latent.optimise import optimise

    ws = torch.zeros(2, 18, 4)  # valid codes for the default layers (3, 8)
    with pytest.raises(InputError, match="x_real"):
        optimise(ws, ws, torch.zeros(3, 3, 8, 8), None, None, None)
    with pytest.raises(InputError, match="x_real"):
        optimise(ws, ws, torch.zeros(2, 3, 8), None, None, None)
