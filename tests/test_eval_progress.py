"""falco eval-attributes: progress bars, the one-line "model not installed" notice, the CNN's memory bound."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from falco.evaluation import EvalConfig, evaluate
from falco.evaluation import detection as detection_mod
from tests.conftest import shared_path

PHOTO = "2008_001009.jpg"  # 360 x 480, two faces
FAST = dict(detectors=("hog",), recognizers=("dlib",), classifiers=("landmarks",), fid=False, examples=0)


@pytest.fixture(scope="module")
def one_photo(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("one-photo")
    (d / PHOTO).symlink_to(shared_path("data", "faces", PHOTO))
    return d


def test_progress_bars_go_to_stderr_and_can_be_turned_off(one_photo, capsys):
    evaluate(EvalConfig(real=one_photo, anon=(one_photo,), names=("copy",), progress=True, **FAST))
    err = capsys.readouterr().err
    assert "copy: photos" in err and "1/1" in err
    assert "copy: metrics" in err and "metric" in err
    report = evaluate(EvalConfig(real=one_photo, anon=(one_photo,), names=("copy",), progress=False, **FAST))
    err = capsys.readouterr().err
    assert "copy: photos" not in err and "copy: metrics" not in err and "%|" not in err
    assert report.runs["copy"]["counts"]["faces"] == 2  # the same work was done


def test_not_installed_models_are_named_once(one_photo, tiny_models, tmp_path, capsys, monkeypatch):
    """MTCNN, the FaRL head and the FID Inception missing: one short line for two runs; full reasons in the report."""
    from falco.cli import main

    monkeypatch.setattr(detection_mod, "mtcnn_available", lambda: "facenet-pytorch is not installed; install it")
    monkeypatch.setattr(detection_mod, "mtcnn_installed", lambda: False)
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as exit_info:
        main(["eval-attributes", "--real", str(one_photo), "--anon", str(one_photo), "--anon", str(one_photo),
              "--name", "a", "--name", "b", "--out", str(out), "--detectors", "hog,mtcnn", "--device", "cpu",
              "--recognizers", "dlib,arcface", "--classifiers", "landmarks,farl-celeba", "--examples", "0",
              "--upsample", "0", "--models", str(tiny_models)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 0, err
    line = ("not computed (model not installed): mtcnn detection, farl-celeba attributes, fid/kid "
            "— see report.md for how to install")
    assert err.count("not computed") == 1 and err.count(line) == 1, err
    assert "looked in" not in err  # the long reasons stay in the report
    md = (out / "report.md").read_text()
    assert "falco models download farl-celeba-attributes" in md and "falco models download inception-fid" in md
    assert md.count("facenet-pytorch is not installed") == 2  # once per run
    data = json.loads((out / "report.json").read_text())
    assert data["not_installed"] == {"mtcnn detection": ["detection_rate.mtcnn"],
                                     "farl-celeba attributes": ["attribute_agreement.farl-celeba"],
                                     "fid/kid": ["fid", "kid"]}
    assert data["runs"]["a"]["reid_rate"]["arcface"] == 1.0  # the tiny set has ArcFace: computed
    assert "install" in data["runs"]["b"]["not_computed"]["detection_rate.mtcnn"]


def test_other_reasons_are_grouped_not_repeated():
    from falco.evaluation.run import not_computed_lines

    reason = "FID Inception weights not available: checksum mismatch"
    data = {"not_installed": {"arcface re-id": ["reid_rate.arcface", "rank1_identification.arcface"]},
            "runs": {name: {"not_computed": {"reid_rate.arcface": "not found", "rank1_identification.arcface": "x",
                                             "fid": reason, "kid": reason}} for name in ("a", "b")}}
    data["runs"]["b"]["not_computed"]["landmark_nme"] = "no face to compare"
    assert not_computed_lines(data) == [
        "not computed (model not installed): arcface re-id — see report.md for how to install",
        f"a, b: fid, kid not computed: {reason}",
        "b: landmark_nme not computed: no face to compare",
    ]
    assert not_computed_lines({"runs": {"a": {"not_computed": {}}}}) == []


def test_cnn_tiles_cover_the_photo_with_overlap():
    for length, tile, overlap in ((1986, 1000, 208), (1545, 500, 104), (900, 1000, 208), (417, 416, 208)):
        tiles = detection_mod._tiles(length, tile, overlap)
        assert tiles[0][0] == 0 and tiles[-1][1] == length
        assert all(0 < b - a <= tile for a, b in tiles)
        assert all(a2 <= b1 - overlap for (_, b1), (a2, _) in zip(tiles, tiles[1:]))  # neighbours overlap


def test_cnn_within_a_pixel_budget_finds_the_same_faces(monkeypatch):
    """A photo over the budget is scanned in tiles plus a half-scale pass; the faces stay the same."""
    from falco.run.image_files import load_image

    image = load_image(shared_path("data", "faces", PHOTO))
    whole = detection_mod.cnn_boxes(image, 0)  # 0.17 MP: under the default budget, one dlib call
    calls = []
    real_get = detection_mod.get_detector

    def spy(name, upsample=1):
        det = real_get(name, upsample)

        class Spy:
            def detect(self, img):
                calls.append(img.shape[0] * img.shape[1])
                return det.detect(img)

        return Spy()

    monkeypatch.setattr(detection_mod, "get_detector", spy)
    tiled = detection_mod.cnn_boxes(image, 0, max_pixels=100_000)
    assert len(calls) >= 3 and max(calls) < image.shape[0] * image.shape[1]  # never the whole photo at once
    matched = detection_mod.match_boxes([b for b, _ in whole], [b for b, _ in tiled], 0.5)
    assert len(whole) == 2 and len(matched) == len(whole) == len(tiled)
