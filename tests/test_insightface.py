"""insightface 2.1 (``--detector scrfd``, the ``insightface`` recogniser) on tiny ONNX models exported here.

The models have the signatures insightface's ``model_zoo.get_model`` routes by (SCRFD: 9 outputs,
strides 8/16/32, 2 anchors, 5 points; ArcFace: one 112x112 input, one embedding output), so the
real loading and decoding path of insightface runs. The tiny SCRFD fires on red patches (stride
32 only, boxes 3 strides from the anchor on each side, 5 fixed points), which makes its boxes
predictable. The real buffalo_l weights are not used (not available offline).

Without insightface every test skips and says so; under ``CI=true`` that is a failure.
"""

from __future__ import annotations

import importlib.util
import json
import warnings

import numpy as np
import pytest

from tests.conftest import FACES, require_insightface
from falco.errors import InputError, ModelNotFoundError

pytestmark = pytest.mark.usefixtures("insightface_installed")

STRIDES = (8, 16, 32)
#: The tiny SCRFD's 5 points in stride units around its anchor: eyes, nose tip, mouth corners.
KPS = (-1.0, -0.8, 1.0, -0.8, 0.0, 0.0, -0.8, 1.0, 0.8, 1.0)


def _export(det_path, rec_path) -> None:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class TinyScrfd(nn.Module):
        def forward(self, x):
            d = x[:, 0:1] - x[:, 1:2]  # R - G of insightface's normalised RGB input, in [-2, 2]
            scores, boxes, kps = [], [], []
            for s in STRIDES:
                p = F.avg_pool2d(d, s)
                logit = 20 * (p - 1.5) if s == 32 else p * 0 - 20
                scores.append(torch.sigmoid(logit).repeat(1, 2, 1, 1).permute(0, 2, 3, 1).reshape(-1, 1))
                boxes.append((p * 0 + 3.0).repeat(1, 8, 1, 1).permute(0, 2, 3, 1).reshape(-1, 4))
                k = p * 0 + torch.tensor(KPS).repeat(2).view(1, 20, 1, 1)
                kps.append(k.permute(0, 2, 3, 1).reshape(-1, 10))
            return (*scores, *boxes, *kps)

    class TinyArcface(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 8, stride=8)
            self.fc = nn.Linear(8 * 14 * 14, 64)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).flatten(1))

    names = [f"{k}_{s}" for k in ("score", "bbox", "kps") for s in STRIDES]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TinyScrfd(), torch.zeros(1, 3, 64, 96), str(det_path), input_names=["input.1"],
                          output_names=names, opset_version=17, dynamo=False,
                          dynamic_axes={"input.1": {2: "height", 3: "width"}, **{n: {0: f"n_{n}"} for n in names}})
        torch.manual_seed(0)
        torch.onnx.export(TinyArcface().eval(), torch.zeros(1, 3, 112, 112), str(rec_path), input_names=["input.1"],
                          output_names=["embedding"], opset_version=17, dynamo=False,
                          dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}})


@pytest.fixture(scope="session")
def tiny_insightface(tmp_path_factory):
    """A tiny model set (manifest kind tiny-random) with the two buffalo_l files, exported once per session."""
    require_insightface()
    from falco.faces.insightface_zoo import SCRFD, W600K
    from falco.pretrained.modelset import KIND_TINY, write_manifest
    from falco.pretrained.registry import REGISTRY

    d = tmp_path_factory.mktemp("insightface-home") / "models"  # a $FALCO_HOME/models too
    d.mkdir()
    det, rec = d / REGISTRY[SCRFD].filename, d / REGISTRY[W600K].filename
    _export(det, rec)
    write_manifest(d, kind=KIND_TINY, files={SCRFD: det, W600K: rec}, note="tiny random insightface stand-ins")
    return d


def _red_squares(h: int, w: int, squares) -> np.ndarray:
    img = np.full((h, w, 3), 90, np.uint8)
    for x0, y0, side in squares:
        img[y0:y0 + side, x0:x0 + side] = (255, 0, 0)
    return img


# -------------------------------------------------------------------- registry
def test_registry_entries_say_non_commercial():
    from falco.pretrained.registry import DEFAULTS, REGISTRY

    for name, role, fname in (("scrfd-10g-buffalo-l", "detector-scrfd", "det_10g.onnx"),
                              ("arcface-w600k-r50-buffalo-l", "recognizer-insightface", "w600k_r50.onnx")):
        e = REGISTRY[name]
        assert (e.role, e.filename, e.layout) == (role, fname, "onnx")
        assert "non-commercial" in e.licence and "non-commercial" in e.licence_tag
        assert len(e.sha256) == 64 and e.size and all(u.startswith("https://huggingface.co/") for u in e.urls)
        assert "not verified" in e.checksum_source and "buffalo_l.zip" in e.notes
        assert role not in DEFAULTS  # optional, never a default


# ------------------------------------------------------------------------ SCRFD
def test_get_model_routes_the_tiny_files_to_insightface_classes(tiny_insightface):
    from insightface.model_zoo import SCRFD as InsightScrfd

    from falco.faces.insightface_zoo import InsightfaceRecognizer, ScrfdDetector

    model = ScrfdDetector(models=tiny_insightface).model()
    assert isinstance(model, InsightScrfd) and model.use_kps and model.fmc == 3 and model._num_anchors == 2
    rec = InsightfaceRecognizer.from_models(tiny_insightface)
    assert rec.tiny and "TINY RANDOM" in rec.describe() and "0.28" in rec.describe()
    assert rec.model().input_size == (112, 112)
    assert rec.providers == ["CPUExecutionProvider"]


@pytest.mark.parametrize("upsample", [0, 1, 2])
def test_scrfd_boxes_and_points_land_on_the_red_square(tiny_insightface, upsample):
    """Boxes and 5 points come back in source pixels whatever the input size (letterbox, upsampling)."""
    from falco.faces.detect import get_detector

    image = _red_squares(300, 420, [(260, 120, 110)])
    det = get_detector("scrfd", upsample, models=tiny_insightface)
    faces = det.faces(image)
    assert faces, "the tiny SCRFD found nothing on its red square"
    iw, ih = det.input_size(300, 420)
    scale = min(iw / 420, ih / 300)
    for f in faces:
        x0, y0, x1, y1 = f.box
        assert abs((x1 - x0) - 192 / scale) < 2 and abs((y1 - y0) - 192 / scale) < 2  # 3 strides each side
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        assert 260 <= cx <= 370 and 120 <= cy <= 230, (f.box, scale)  # anchored on a cell inside the square
        assert f.score > 0.99
        np.testing.assert_allclose(f.points, np.array(KPS).reshape(5, 2) * 32 / scale + [cx, cy], atol=1.0)
    assert get_detector("scrfd", upsample, models=tiny_insightface).detect(_red_squares(300, 420, [])) == []


def test_scrfd_input_size_follows_upsample(tiny_insightface):
    from falco.faces.insightface_zoo import ScrfdDetector

    assert ScrfdDetector(0).input_size(300, 420) == (640, 640)
    assert ScrfdDetector(1).input_size(300, 420) == (640, 480)  # long side brought to 640
    assert ScrfdDetector(1).input_size(1500, 2000) == (2016, 1504)  # own size, multiples of 32
    assert ScrfdDetector(2).input_size(1500, 2000) == (4000, 3008)
    assert ScrfdDetector(3, max_pixels=1_000_000).input_size(1500, 2000) == (1184, 896)


def test_scrfd_landmarks_are_dlib_68_points_inside_the_box(tiny_insightface):
    from falco.faces.detect import get_detector
    from falco.run.image_files import load_image

    image = load_image(FACES / "2008_002470.jpg")
    det = get_detector("scrfd", models=tiny_insightface)
    box = (200, 60, 290, 150)
    lm = det.landmarks(image, box)
    assert lm.shape == (68, 2)
    from falco.faces.checks import hog_like_box

    x0, y0, x1, y1 = hog_like_box(box)
    assert (lm[:, 0].mean() > x0 - 20) and (lm[:, 0].mean() < x1 + 20) and (lm[:, 1].mean() > y0 - 20)


def test_scrfd_errors(tmp_path, tiny_insightface, monkeypatch):
    from falco.faces.detect import get_detector
    from falco.faces.insightface_zoo import ScrfdDetector

    with pytest.raises(ModelNotFoundError, match="det_10g.onnx"):
        get_detector("scrfd", models=tmp_path / "empty")
    with pytest.raises(InputError, match="routed .* to ArcFaceONNX, not SCRFD"):
        ScrfdDetector(path=tiny_insightface / "w600k_r50.onnx").model()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(InputError, match="insightface could not load .*bad.onnx"):
        ScrfdDetector(path=bad).model()
    with pytest.raises(InputError, match="upsample"):
        ScrfdDetector(5)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps insightface==2.1"):
        get_detector("scrfd", models=tiny_insightface)


def test_cuda_provider_asked_when_onnxruntime_has_it(monkeypatch):
    import onnxruntime as ort

    from falco.faces import insightface_zoo

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert insightface_zoo.onnx_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert insightface_zoo.onnx_providers("cpu") == ["CPUExecutionProvider"]

    class Session:
        def get_providers(self):
            return ["CPUExecutionProvider"]

    with pytest.warns(RuntimeWarning, match="did not start on it; running on CPUExecutionProvider"):
        insightface_zoo._check_session("x", "f.onnx", Session(), ["CUDAExecutionProvider", "CPUExecutionProvider"])


# -------------------------------------------------------------- ArcFace (ONNX)
def test_insightface_recognizer_embeds_through_norm_crop(tiny_insightface):
    from insightface.utils.face_align import norm_crop

    from falco.faces.insightface_zoo import InsightfaceRecognizer
    from falco.faces.opencv_zoo import five_points
    from falco.faces.pipeline import detect_and_align
    from falco.run.image_files import load_image

    image = load_image(FACES / "2008_002506.jpg")
    faces = detect_and_align(image, size=64)
    rec = InsightfaceRecognizer.from_models(tiny_insightface)
    emb = rec.embed(image, [f.landmarks for f in faces])
    assert emb.shape == (len(faces), 64)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    with warnings.catch_warnings():  # insightface 2.1 calls scikit-image's deprecated SimilarityTransform.estimate
        warnings.simplefilter("ignore", FutureWarning)
        crop = norm_crop(np.ascontiguousarray(image[:, :, ::-1]), five_points(faces[0].landmarks).astype(np.float32))
    raw = rec.model().get_feat([crop])[0]
    np.testing.assert_allclose(emb[0], raw / np.linalg.norm(raw), atol=1e-5)
    assert rec.embed(image, []).shape == (0, 64)


def test_guard_takes_insightface_as_a_second_opinion(tiny_insightface):
    from falco.faces.insightface_zoo import InsightfaceRecognizer
    from falco.faces.pipeline import detect_and_align
    from falco.guard import PrivacyGuard, Recognizers
    from falco.run.image_files import load_image

    image = load_image(FACES / "2008_002506.jpg")
    faces = detect_and_align(image, size=64)
    recs = Recognizers(insightface=InsightfaceRecognizer.from_models(tiny_insightface))
    checks = recs.check_many(image, image, faces)
    assert [[c.name for c in cs] for cs in checks] == [["dlib", "insightface"]] * len(faces)
    assert all(c.same and c.score > 0.999 for cs in checks for c in cs if c.name == "insightface")
    guard = PrivacyGuard("warn", recs, lambda img, f: img, lambda img: [])
    assert guard.settings()["insightface"] is True
    assert "at or above 0.28" in guard._rule("insightface")


def test_evaluation_builds_insightface_or_says_why(tiny_insightface, tmp_path):
    from falco.evaluation.tools import build_tools

    tools = build_tools(detectors=[], recognizers=["insightface"], classifiers=[], fid=False, models=tiny_insightface)
    assert tools.recognizers["insightface"].tiny and any("insightface" in n for n in tools.notes)
    tools = build_tools(detectors=[], recognizers=["insightface"], classifiers=[], fid=False, models=tmp_path)
    assert "insightface" not in tools.recognizers
    assert "w600k_r50.onnx" in tools.unavailable["reid_rate.insightface"]
    assert tools.not_installed["insightface re-id"] == ("reid_rate.insightface", "rank1_identification.insightface")


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_anonymize_with_scrfd_end_to_end(tmp_path, tiny_insightface, monkeypatch):
    """Through the CLI, with $FALCO_HOME elsewhere: ``--models`` reaches the first pass and the guard;
    the guard's re-detection (dlib HOG: another family) is recorded."""
    from typer.testing import CliRunner

    from falco.cli import app
    from falco.run.image_files import load_image, save_image

    photo = tmp_path / "in" / "squares.png"
    photo.parent.mkdir()
    save_image(photo, _red_squares(360, 480, [(60, 80, 120), (300, 150, 120)]))
    out = tmp_path / "out"
    monkeypatch.setenv("FALCO_HOME", str(tmp_path / "empty-home"))
    res = CliRunner().invoke(app, ["anonymize", str(photo.parent), "--out", str(out), "--method", "mask",
                                   "--detector", "scrfd", "--models", str(tiny_insightface), "--guard", "warn",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["faces"] >= 2 and summary["done"] == 1, summary
    import sqlite3

    with sqlite3.connect(out / "manifest.sqlite") as con:
        config = json.loads(con.execute("SELECT config FROM runs").fetchone()[0])
    assert config["guard_settings"]["redetect"] == {"detector": "hog", "upsample": 2, "family": "dlib",
                                                    "first_pass": "scrfd", "other_family": True}
    result, original = load_image(out / photo.name), load_image(photo)
    for x0, y0, side in [(60, 80, 120), (300, 150, 120)]:  # both squares were masked
        changed = np.abs(result[y0:y0 + side, x0:x0 + side].astype(int) - original[y0:y0 + side, x0:x0 + side])
        assert (changed.max(axis=2) > 0).mean() > 0.3, f"square at {(x0, y0)} left untouched"


@pytest.mark.slow
def test_eval_attributes_with_the_insightface_recognizer(tmp_path, tiny_insightface):
    from falco.cli import main

    real = tmp_path / "real"
    real.mkdir()
    (real / "a.jpg").write_bytes((FACES / "2008_002506.jpg").read_bytes())
    report = tmp_path / "report"
    with pytest.raises(SystemExit) as exit_info:
        main(["eval-attributes", "--real", str(real), "--anon", str(real), "--out", str(report), "--detectors", "hog",
              "--recognizers", "dlib,insightface", "--classifiers", "landmarks", "--no-fid", "--device", "cpu",
              "--examples", "0", "--models", str(tiny_insightface), "--no-progress"])
    assert exit_info.value.code == 0
    data = json.loads((report / "report.json").read_text())
    run = next(iter(data["runs"].values()))
    assert run["reid_rate"]["insightface"] == 1.0  # the photo against itself
    assert run["rank1_identification"]["insightface"] == 1.0
    assert "insightface" in (report / "report.md").read_text()


def test_detection_rate_with_scrfd_and_why_not(tiny_insightface, tmp_path):
    from falco.evaluation.detection import ZooEvalDetector
    from falco.evaluation.tools import build_tools

    tools = build_tools(detectors=["scrfd:0"], recognizers=[], classifiers=[], fid=False, models=tiny_insightface)
    det = tools.detectors["scrfd"]
    assert isinstance(det, ZooEvalDetector) and det.spec == "scrfd:0"
    assert len(det.boxes(_red_squares(300, 420, [(260, 120, 110)]))) >= 1
    tools = build_tools(detectors=["scrfd"], recognizers=[], classifiers=[], fid=False, models=tmp_path)
    assert "det_10g.onnx" in tools.unavailable["detection_rate.scrfd"]
    assert tools.not_installed["scrfd detection"] == ("detection_rate.scrfd",)


def test_bench_detection_runs_scrfd_from_a_model_set(tiny_insightface, tmp_path):
    from tests.conftest import load_script, shared_path

    bench = load_script("bench_detection")
    shared = shared_path("data").parent
    assert bench.main(["--detectors", "scrfd", "--upsample", "0", "--limit", "1", "--sets", "faces", "--shared",
                       str(shared), "--models", str(tiny_insightface), "--out", str(tmp_path / "b.json")]) == 0
    row = json.loads((tmp_path / "b.json").read_text())["rows"][0]
    assert row["error"] is None and row["photos"] == 1  # figures of the tiny stand-in: meaningless, but measured
