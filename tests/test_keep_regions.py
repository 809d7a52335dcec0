"""Region control (`falco anonymize --keep/--change`): blending, the guard's last word, the per-part evaluation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from falco.config import AnonymizeConfig
from falco.errors import InputError, ModelNotFoundError
from falco.faces.blend import blend, change_regions, keep_regions, regions_weights
from falco.faces.ffhq import AlignedFace
from falco.faces.paste import photo_mask
from falco.faces.regions import DEFAULT_FEATHER, region_mask
from falco.latent.optimise import FalcoParams
from falco.run.anonymize import run_anonymize
from falco.run.image_files import load_image
from falco.run.manifest import RunManifest
from falco.run.regions import RegionControl
from tests.conftest import ScriptedRecognizers, photo_with_faces, shared_path

PHOTO = "2008_001009.jpg"  # 360 x 480, two faces
QUIET = dict(progress=False, device="cpu", format="png")


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("photos")
    shutil.copy(shared_path("data", "faces", PHOTO), d / PHOTO)
    return d


@pytest.fixture(scope="module")
def empty_models(tmp_path_factory) -> Path:
    """A model set with nothing in it (no face parser)."""
    return tmp_path_factory.mktemp("no-models")


def _run(photo_dir: Path, out: Path, models: Path, **kwargs) -> tuple[np.ndarray, list[dict], list[str]]:
    """Anonymize the photo; returns the output photo, the manifest's face rows and the printed lines."""
    lines: list[str] = []
    summary = run_anonymize(AnonymizeConfig(input=photo_dir, out=out, models=models, **{**QUIET, **kwargs}),
                            echo=lines.append)
    assert not summary.failed and summary.faces == 2
    with RunManifest(out) as m:
        rows = m.faces()
    return load_image(out / Path(PHOTO).with_suffix(".png")), rows, lines


def _faces(rows: list[dict]) -> list[AlignedFace]:
    return [AlignedFace(box=tuple(r["box"]), landmarks=np.array(r["landmarks"]), quad=np.array(r["quad"]),
                        image=np.zeros((256, 256, 3), np.uint8)) for r in rows]


def _assert_kept_and_changed(original: np.ndarray, out: np.ndarray, faces: list[AlignedFace], parts: str) -> None:
    """Every face: the pixels of ``parts`` (beyond the feather) equal the input; the rest of the face changed."""
    for face in faces:
        kept = regions_weights([face], original.shape, parts) == 1.0
        assert kept.sum() > 20, "the parts must have pixels"
        np.testing.assert_array_equal(out[kept], original[kept])
        rest = (photo_mask(face, original.shape) == 1.0) & (regions_weights([face], original.shape, parts) == 0)
        changed = np.abs(out[rest].astype(int) - original[rest]).max(axis=-1) > 0
        assert changed.mean() > 0.8, changed.mean()


# ----------------------------------------------------------------------------- the blend alone
@pytest.fixture(scope="module")
def pair():
    photo, faces = photo_with_faces(PHOTO, 2)
    other = np.random.default_rng(0).integers(0, 256, photo.shape, dtype=np.uint8)
    return photo, other, faces


def test_keep_regions_takes_the_parts_from_the_original_and_the_rest_from_the_output(pair):
    photo, anon, faces = pair
    out = keep_regions(photo, anon, faces, "eyes-brows")
    w = regions_weights(faces, photo.shape, ("eyes", "brows"))
    np.testing.assert_array_equal(out[w == 1], photo[w == 1])
    np.testing.assert_array_equal(out[w == 0], anon[w == 0])
    seam = (w > 0) & (w < 1)
    assert seam.any() and not np.array_equal(out[seam], photo[seam])  # a soft seam, not a cut
    # the part itself is kept with a margin: its own mask (no growth, no feather) lies where w == 1
    for face in faces:
        part = region_mask(face, photo.shape, "eyes", feather=0.0, dilate=0.0) > 0.5
        assert part.any() and (w[part] == 1).all()


def test_keep_nothing_and_change_everything_return_the_output_unchanged(pair):
    photo, anon, faces = pair
    np.testing.assert_array_equal(keep_regions(photo, anon, faces, "nothing"), anon)
    np.testing.assert_array_equal(change_regions(photo, anon, faces, "everything"), anon)
    np.testing.assert_array_equal(change_regions(photo, anon, faces, "nothing"), photo)


def test_change_regions_changes_only_the_parts(pair):
    photo, anon, faces = pair
    out = change_regions(photo, anon, faces, "mouth-lips")
    w = regions_weights(faces, photo.shape, "mouth-lips")
    np.testing.assert_array_equal(out[w == 0], photo[w == 0])
    np.testing.assert_array_equal(out[w == 1], anon[w == 1])
    assert (w == 1).sum() > 50


def test_blend_is_exact_at_weights_0_and_1():
    base = np.full((2, 2, 3), 10, np.uint8)
    new = np.full((2, 2, 3), 250, np.uint8)
    w = np.array([[0.0, 1.0], [0.5, 0.25]], np.float32)
    out = blend(base, new, w)
    assert out[0, 0, 0] == 10 and out[0, 1, 0] == 250 and out[1, 0, 0] == 130 and out[1, 1, 0] == 70


def test_blend_arguments_are_checked(pair):
    photo, anon, faces = pair
    with pytest.raises(InputError, match="same shape"):
        keep_regions(photo, anon[:-1], faces, "eyes")
    with pytest.raises(InputError, match="one entry per face"):
        keep_regions(photo, anon, faces, "eyes", parsing_maps=[None])
    with pytest.raises(InputError, match="bisenet-face-parsing"):
        keep_regions(photo, anon, faces, "hair")


# ----------------------------------------------------------------------------- settings
@pytest.mark.parametrize("kwargs, match", [
    (dict(keep="eyes,nosee"), "--keep: unknown region 'nosee'"),
    (dict(change="teeth"), "--change: unknown region 'teeth'"),
    (dict(keep="eyes", change="mouth"), "exclude each other"),
    (dict(keep=""), "comma-separated region names"),
    (dict(keep="hair", region_masks="landmarks"), "need the face parser"),
    (dict(region_masks="dlib"), "--region-masks must be one of auto, landmarks, parsing"),
    (dict(keep="eyes", region_feather=0.8), "--region-feather must be a number in \\[0, 0.5\\]"),
])
def test_bad_region_settings_are_one_line_input_errors(kwargs, match):
    with pytest.raises(InputError, match=match) as exc:
        AnonymizeConfig(input=Path("in"), out=Path("out"), **kwargs)
    assert "\n" not in str(exc.value)


def test_region_settings_are_normalised_and_default_to_none():
    cfg = AnonymizeConfig(input=Path("in"), out=Path("out"), keep=" Eyes-Brows,hair")
    assert cfg.keep == ("eyes-brows", "hair") and cfg.change is None
    plain = AnonymizeConfig(input=Path("in"), out=Path("out"))
    assert (plain.keep, plain.change, plain.region_feather, plain.region_masks) == (None, None, DEFAULT_FEATHER, "auto")


def test_region_flags_reach_the_config(monkeypatch, tmp_path, capsys):
    import falco.run.anonymize as cmd
    from falco.cli import main

    seen = []

    class Summary:
        failed: list = []
        unsafe = 0

        def line(self):
            return "done"

    monkeypatch.setattr(cmd, "run_anonymize", lambda cfg, echo=None: seen.append(cfg) or Summary())
    (tmp_path / "in").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["anonymize", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--change", "mouth-lips,nose",
              "--region-feather", "0.05", "--region-masks", "landmarks"])
    assert exc.value.code == 0
    assert (seen[0].change, seen[0].keep, seen[0].region_feather, seen[0].region_masks) == \
        (("mouth-lips", "nose"), None, 0.05, "landmarks")
    with pytest.raises(SystemExit) as exc:
        main(["anonymize", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--keep", "eyes", "--change", "nose"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.strip().count("\n") == 0 and "exclude each other" in err


# ----------------------------------------------------------------------------- the command
def test_mask_keep_eyes_brows_keeps_them_and_changes_the_rest(photo_dir, tiny_models, tmp_path):
    original = load_image(photo_dir / PHOTO)
    out, rows, _ = _run(photo_dir, tmp_path / "keep", tiny_models, method="mask", keep="eyes-brows",
                        region_masks="landmarks", guard="off")
    _assert_kept_and_changed(original, out, _faces(rows), "eyes-brows")
    assert all(r["regions"] == {"keep": ["eyes", "brows"], "masks": "landmarks", "feather": DEFAULT_FEATHER}
               for r in rows)
    with RunManifest(tmp_path / "keep") as m:
        config = m.runs()[-1]["config"]
    assert config["keep"] == ["eyes-brows"] and config["change"] is None
    assert config["region_settings"]["masks"] == "landmarks"


def test_keep_nothing_is_byte_identical_to_no_flag(photo_dir, tiny_models, tmp_path):
    _run(photo_dir, tmp_path / "plain", tiny_models, method="mask")
    _, rows, _ = _run(photo_dir, tmp_path / "nothing", tiny_models, method="mask", keep="nothing")
    name = Path(PHOTO).with_suffix(".png")
    assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "nothing" / name).read_bytes()
    assert rows[0]["regions"]["keep"] == []


def test_change_mouth_lips_changes_only_the_mouth(photo_dir, tiny_models, tmp_path):
    original = load_image(photo_dir / PHOTO)
    out, rows, _ = _run(photo_dir, tmp_path / "change", tiny_models, method="mask", change="mouth-lips",
                        region_masks="landmarks", guard="off")
    faces = _faces(rows)
    w = regions_weights(faces, original.shape, "mouth-lips")
    np.testing.assert_array_equal(out[w == 0], original[w == 0])  # everything else, in and out of the faces
    for face in faces:
        mouth = regions_weights([face], original.shape, "mouth-lips") == 1
        assert mouth.sum() > 20 and (out[mouth] == 0).all()  # the mask method paints them black
    assert rows[0]["regions"]["change"] == ["mouth", "lips"]


@pytest.mark.slow  # four FALCO runs (about 40 s on 2 CPU cores)
def test_falco_keep_eyes_brows(photo_dir, tiny_models, tiny_bank, tmp_path):
    original = load_image(photo_dir / PHOTO)
    common = dict(bank=tiny_bank, falco=FalcoParams(steps=1), guard="off")
    plain, _, _ = _run(photo_dir, tmp_path / "plain", tiny_models, **common)
    # --region-focus 0: the paper's loss, so elsewhere the photo is exactly FALCO's own output
    out, rows, _ = _run(photo_dir, tmp_path / "keep", tiny_models, keep="eyes-brows", region_masks="landmarks",
                        **{**common, "falco": FalcoParams(steps=1, region_focus=0.0)})
    faces = _faces(rows)
    _assert_kept_and_changed(original, out, faces, "eyes-brows")
    w = regions_weights(faces, original.shape, "eyes-brows")
    np.testing.assert_array_equal(out[w == 0], plain[w == 0])
    # the default focus: the attribute loss favours the kept parts, so the optimised faces differ
    focused, rows, _ = _run(photo_dir, tmp_path / "focus", tiny_models, keep="eyes-brows", region_masks="landmarks",
                            **common)
    _assert_kept_and_changed(original, focused, _faces(rows), "eyes-brows")
    assert not np.array_equal(focused[w == 0], plain[w == 0])
    _run(photo_dir, tmp_path / "nothing", tiny_models, keep="nothing", **common)
    name = Path(PHOTO).with_suffix(".png")
    assert (tmp_path / "nothing" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()


# ----------------------------------------------------------------------------- masks: parser or landmarks
def test_parsing_only_part_without_the_parser_fails_before_any_photo(photo_dir, tiny_models, tmp_path, monkeypatch,
                                                                       capsys):
    import falco.models.parsing as parsing
    from falco.cli import main

    def missing(models=None, *, device="cpu"):
        raise ModelNotFoundError("bisenet-face-parsing is not installed")

    monkeypatch.setattr(parsing, "load_parser", missing)
    with pytest.raises(InputError, match="--keep hair-neck needs the face-parsing model 'bisenet-face-parsing'"):
        run_anonymize(AnonymizeConfig(input=photo_dir, out=tmp_path / "out", models=tiny_models, method="mask",
                                      keep="hair-neck", **QUIET))
    assert not (tmp_path / "out").exists()  # nothing was processed, not even the output folder made
    with pytest.raises(InputError, match="--region-masks parsing needs"):
        run_anonymize(AnonymizeConfig(input=photo_dir, out=tmp_path / "out", models=tiny_models, method="mask",
                                      keep="eyes", region_masks="parsing", **QUIET))
    with pytest.raises(SystemExit) as exc:
        main(["anonymize", str(photo_dir), "--out", str(tmp_path / "cli"), "--method", "mask", "--keep", "hair",
              "--models", str(tiny_models), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and err.startswith("error: --keep hair needs")
    # landmark parts work without it: masks from the landmarks
    _, rows, _ = _run(photo_dir, tmp_path / "eyes", tiny_models, method="mask", keep="eyes", guard="off")
    assert rows[0]["regions"]["masks"] == "landmarks"


def test_the_parser_is_loaded_once_and_its_masks_are_used(photo_dir, tiny_models, tmp_path, monkeypatch):
    import falco.models.parsing as parsing
    from falco.faces.regions import parse_aligned

    loads = []
    real_load = parsing.load_parser
    monkeypatch.setattr(parsing, "load_parser", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.jpg", "b.jpg"):
        shutil.copy(photo_dir / PHOTO, two / name)
    # the tiny parser's random maps label much of a face 'hat' (a part only parsing can draw)
    summary = run_anonymize(AnonymizeConfig(input=two, out=tmp_path / "out", models=tiny_models, method="mask",
                                            keep="hat", guard="off", **QUIET), echo=lambda *_: None)
    assert summary.faces == 4 and len(loads) == 1
    with RunManifest(tmp_path / "out") as m:
        rows = [r for r in m.faces() if r["source"] == "a.jpg"]
        env = m.runs()[-1]
    assert all(r["regions"]["masks"] == "parsing" for r in rows)
    original = load_image(two / "a.jpg")
    out = load_image(tmp_path / "out" / "a.png")
    _, faces = photo_with_faces(PHOTO, 2)
    net = real_load(tiny_models)
    w = regions_weights(faces, original.shape, "hat", parsing_maps=parse_aligned(net, faces))
    assert (w == 1).sum() > 100
    np.testing.assert_array_equal(out[w == 1], original[w == 1])
    rest = (np.maximum(*[photo_mask(f, original.shape, feather=0.0) for f in faces]) == 1) & (w == 0)
    assert rest.sum() > 100 and (out[rest] == 0).all()  # the rest of the faces is the black mask
    assert "region_settings" in env["config"]


# ----------------------------------------------------------------------------- the guard's last word
class _AlwaysSame(ScriptedRecognizers):
    def same(self, original, output, face) -> bool:
        return True


def test_a_face_still_recognised_with_its_kept_parts_is_covered(photo_dir, tiny_models, tmp_path, monkeypatch):
    import falco.guard

    monkeypatch.setattr(falco.guard, "Recognizers", lambda arcface=None, sface=None: _AlwaysSame())
    original = load_image(photo_dir / PHOTO)
    out, rows, lines = _run(photo_dir, tmp_path / "out", tiny_models, method="mask", keep="eyes-brows",
                            region_masks="landmarks")
    assert [r["status"] for r in rows] == ["fallback", "fallback"]
    for row, face in zip(rows, _faces(rows)):
        assert row["reason"].startswith("privacy guard: still recognised with eyes, brows kept; ")
        kept = regions_weights([face], original.shape, "eyes-brows") == 1
        assert not np.array_equal(out[kept], original[kept])  # the cover has the last word
    assert any("region control (eyes, brows kept): 2 faces, 2 still recognised and covered" in x for x in lines)


class _SameAsTheFirstOutput(ScriptedRecognizers):
    """'Same person' while the face box shows what the method first made; the re-do passes."""

    def __init__(self, first: np.ndarray) -> None:
        self.first = first

    def same(self, original, output, face) -> bool:
        x0, y0, x1, y1 = face.box
        return bool(np.array_equal(self.first[y0:y1, x0:x1], output[y0:y1, x0:x1]))


@pytest.mark.parametrize("mode", ["keep", "change"])
def test_the_guards_redo_is_blended_like_the_first_output(pair, mode):
    from falco.guard import PrivacyGuard
    from falco.methods.cover import fallback

    photo, _, faces = pair
    control = RegionControl(mode, ("eyes-brows",), ("eyes", "brows"), DEFAULT_FEATHER)
    first = photo.copy()
    for face in faces:
        first = fallback(first, face, "mask")
    records = [{"status": "done"}] * len(faces)
    blended, done = control.apply(photo, first, faces, records)

    def redo(img, i):  # a "stronger" method: face i white
        m = photo_mask(faces[i], img.shape, feather=0.0) > 0
        out = img.copy()
        out[m] = 255
        return out

    guard = PrivacyGuard("enforce", _SameAsTheFirstOutput(blended), lambda img, f: fallback(img, f, "blur"),
                         lambda img: [])
    result = guard.review(photo, blended, faces, redo=control.wrap_redo(redo, photo, faces, done))
    assert [v["verdict"] for v in result.verdicts] == ["redone", "redone"]
    for face in faces:
        w = regions_weights([face], photo.shape, "eyes-brows")
        region = (photo_mask(face, photo.shape, feather=0.0) > 0)
        if mode == "keep":  # kept parts original, the rest of the face re-done (white)
            np.testing.assert_array_equal(result.photo[w == 1], photo[w == 1])
            assert (result.photo[region & (w == 0)] == 255).all()
        else:  # only the parts re-done, the rest of the face original
            parts = (w == 1) & region
            assert parts.sum() > 20 and (result.photo[parts] == 255).all()
            np.testing.assert_array_equal(result.photo[region & (w == 0)], photo[region & (w == 0)])


def test_a_face_the_method_could_not_anonymize_keeps_its_cover(pair):
    photo, anon, faces = pair
    control = RegionControl("change", ("mouth",), ("mouth",), DEFAULT_FEATHER)
    out, done = control.apply(photo, anon, faces, [{"status": "done"}, {"status": "fallback"}])
    assert done.applied == frozenset({0})
    second = photo_mask(faces[1], photo.shape) > 0
    np.testing.assert_array_equal(out[second], anon[second])  # not reverted to the original face
    keep = RegionControl("keep", ("eyes",), ("eyes",), DEFAULT_FEATHER)
    out, _ = keep.apply(photo, anon, faces, [{"status": "fallback"}, {"status": "fallback"}])
    assert out is anon


# ----------------------------------------------------------------------------- evaluation per part
def test_eval_reports_about_zero_for_kept_parts_and_more_for_changed_ones(photo_dir, tiny_models, empty_models,
                                                                          tmp_path):
    from falco.evaluation import EvalConfig, evaluate, write_report

    _run(photo_dir, tmp_path / "keep", tiny_models, method="mask", keep="eyes-brows", region_masks="landmarks",
         guard="off")
    _run(photo_dir, tmp_path / "change", tiny_models, method="mask", change="mouth-lips", region_masks="landmarks",
         guard="off")
    cfg = EvalConfig(real=photo_dir, anon=(tmp_path / "keep", tmp_path / "change"), names=("keep", "change"),
                     pairs=(tmp_path / "keep", tmp_path / "change"), detectors=("hog",), recognizers=("dlib",),
                     classifiers=("landmarks",), fid=False, examples=0, models=empty_models, progress=False)
    report = evaluate(cfg)
    keep, change = report.runs["keep"]["region_change"], report.runs["change"]["region_change"]
    assert keep["eyes"] < 0.5 and keep["brows"] < 0.5
    assert min(keep["nose"], keep["mouth"], keep["lips"], keep["skin"]) > 20
    assert change["mouth"] > 20 and change["lips"] > 20
    assert max(change["eyes"], change["brows"], change["nose"]) < 0.5
    assert report.runs["keep"]["counts"]["region_change"]["eyes"] == 2
    details = report.runs["keep"]["details"]["region_change"]
    assert details["masks"] == "landmarks" and "LPIPS" in details["not_computed"]["lpips"]
    assert "bisenet-face-parsing" in details["not_computed"]["hair"] and "hair" not in keep
    assert not [k for k in report.runs["keep"]["not_computed"] if k.startswith("region")]  # no failure lines
    assert report.faces["keep"][0]["region_change"]["eyes"] < 0.5
    paths = write_report(report, tmp_path / "report")
    md = paths["md"].read_text()
    assert "## Change per face part" in md and "| eyes | 0.00 | 0.00 |" in md
    assert '"region_change"' in paths["json"].read_text()
    # the choice is read back from each run's manifest and checked: parts from the photo ~0, the rest changed
    for name in ("keep", "change"):
        check = report.runs[name]["region_check"]
        assert check["from_photo"] < 0.5 and check["from_method"] > 20
        assert report.runs[name]["counts"]["region_check"]["from_photo"] == 2
    assert report.runs["keep"]["details"]["region_check"]["choice"] == ["keep brows, eyes (landmarks masks)"]
    assert report.runs["change"]["details"]["region_check"]["choice"] == ["change lips, mouth (landmarks masks)"]
    assert "## Region control read from the manifests" in md and "| from_photo | 0.00 | 0.00 |" in md
