"""falco.evaluation building blocks on synthetic data (fast; no photos)."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from falco.errors import CheckpointError, InputError
from falco.evaluation import detection, landmarks, reid
from falco.evaluation.attributes import agreement, label_accuracy, load_labels_csv, lookup_labels, normalize_label
from falco.evaluation.common import FeatureCache, MetricUnavailable, image_digest
from falco.evaluation.quality import (fid_inception, frechet_distance, kernel_inception_distance,
                                     random_fid_inception_state)


# ------------------------------------------------------------------------- detection
def test_box_iou_and_hungarian_matching():
    assert detection.box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert detection.box_iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0
    assert detection.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    real = [(0, 0, 10, 10), (20, 0, 30, 10), (100, 100, 110, 110)]
    anon = [(21, 0, 31, 10), (1, 0, 11, 10), (50, 50, 60, 60)]
    assert [(r, a) for r, a, _ in detection.match_boxes(real, anon, 0.5)] == [(0, 1), (1, 0)]
    c = detection.count_detected(real, anon, 0.5)
    assert (c.real, c.detected, c.anon, round(c.rate, 4)) == (3, 2, 3, round(2 / 3, 4))
    assert (c + c).rate == c.rate and detection.DetectionCount().rate is None
    with pytest.raises(InputError, match="min_iou"):
        detection.match_boxes(real, anon, 0.0)


def test_detector_specs():
    assert detection.parse_detector_spec("cnn:0") == ("cnn", 0)
    assert detection.parse_detector_spec("HOG", 2) == ("hog", 2)
    for bad in ("yolo", "mtcnn:1", "cnn:x", "hog:9"):
        with pytest.raises(InputError):
            detection.parse_detector_spec(bad)


@pytest.mark.parametrize("state", ["missing", "broken", "importable"])
def test_mtcnn_missing_is_reported_not_raised(monkeypatch, state):
    """The availability check's message for each state of facenet-pytorch, whether or not it is
    installed here: its package lookup and its import are faked."""
    import sys
    import types

    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        if name == "facenet_pytorch":
            return None if state == "missing" else object()
        return real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    fake = None if state == "broken" else types.ModuleType("facenet_pytorch")  # None: its import fails
    monkeypatch.setitem(sys.modules, "facenet_pytorch", fake)
    reason = detection.mtcnn_available()
    assert detection.mtcnn_installed() is (state != "missing")
    if state == "importable":
        assert reason is None
        return
    expected = {"missing": "facenet-pytorch is not installed; install it with: " + detection.MTCNN_INSTALL,
                "broken": "facenet-pytorch is installed but does not import (ModuleNotFoundError"}[state]
    assert reason.startswith(expected), reason
    hint = "--no-deps facenet-pytorch" if state == "missing" else "does not import"
    with pytest.raises(MetricUnavailable, match=hint):
        detection.get_eval_detector("mtcnn")


# ------------------------------------------------------------------------- landmarks
def _face68() -> np.ndarray:
    """A plausible frontal 68-point face (mean-shape-like), 100 px between the outer eye corners."""
    lm = np.zeros((68, 2))
    lm[0:17] = [(-70 + 140 * i / 16, -10 + 70 * math.sin(math.pi * i / 16)) for i in range(17)]  # jaw
    lm[8] = (0, 90)
    lm[17:22] = [(-60 + 10 * i, -45) for i in range(5)]
    lm[22:27] = [(20 + 10 * i, -45) for i in range(5)]
    lm[27:31] = [(0, -30 + 12 * i) for i in range(4)]  # nose bridge, tip at 30 -> (0, 6)
    lm[31:36] = [(-16 + 8 * i, 16) for i in range(5)]
    lm[36:42] = [(-50, -25), (-42, -30), (-32, -30), (-24, -25), (-32, -21), (-42, -21)]
    lm[42:48] = [(24, -25), (32, -30), (42, -30), (50, -25), (42, -21), (32, -21)]
    lm[48:60] = [(-25, 45), (-15, 40), (-5, 38), (0, 39), (5, 38), (15, 40), (25, 45), (15, 52), (5, 54),
                 (0, 54), (-5, 54), (-15, 52)]
    lm[60:68] = [(-20, 45), (-5, 44), (0, 44), (5, 44), (20, 45), (5, 46), (0, 46), (-5, 46)]
    return lm + (200.0, 200.0)


def test_landmark_nme_is_zero_for_identical_and_scale_free():
    lm = _face68()
    assert landmarks.landmark_nme(lm, lm) == 0.0
    iod = np.hypot(*(lm[45] - lm[36]))
    assert landmarks.landmark_nme(lm, lm + (iod * 0.1, 0)) == pytest.approx(0.1)
    big = (lm - 200) * 3 + 500
    assert landmarks.landmark_nme(big, big + (iod * 0.3, 0)) == pytest.approx(0.1)
    with pytest.raises(InputError, match=r"\[68, 2\]"):
        landmarks.landmark_nme(lm[:5], lm[:5])


def test_head_pose_follows_in_plane_rotation_and_mirroring():
    lm = _face68()
    yaw0, pitch0, roll0 = landmarks.head_pose(lm)
    assert abs(yaw0) < 3 and abs(roll0) < 1
    c = lm.mean(0)
    for deg in (-20, 12):
        t = math.radians(deg)
        # counter-clockwise on screen (image y points down)
        rot = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
        y, p, r = landmarks.head_pose((lm - c) @ rot.T + c)
        assert r == pytest.approx(roll0 + deg, abs=0.5)
        assert y == pytest.approx(yaw0, abs=1) and p == pytest.approx(pitch0, abs=1)
    # turning the head to the image's right moves the nose tip right of the face centre
    turned = lm.copy()
    turned[27:36, 0] += 12
    turned[0:8, 0] += 10
    assert landmarks.head_pose(turned)[0] > yaw0 + 5


def test_eye_and_mouth_openness_labels():
    lm = _face68()
    attrs = landmarks.LandmarkAttributes()
    assert attrs.predict(lm)["eyes_open"] == "open"
    closed = lm.copy()
    closed[[37, 38, 40, 41], 1] = lm[36, 1]
    closed[[43, 44, 46, 47], 1] = lm[42, 1]
    assert landmarks.eye_openness(closed) == pytest.approx(0.0)
    assert attrs.predict(closed)["eyes_open"] == "closed"
    assert attrs.predict(lm)["mouth_open"] == "closed"
    opened = lm.copy()
    opened[65:68, 1] += 20
    assert attrs.predict(opened)["mouth_open"] == "open"
    assert set(attrs.predict(lm)) == set(landmarks.LANDMARK_ATTRIBUTES)


# --------------------------------------------------------------------------- re-id
def test_reid_rate_and_rank1_on_synthetic_embeddings():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(6, 128)) * 0.2
    dlib_rec = reid.DlibRecognizer()
    assert reid.reid_rate(dlib_rec, real, real) == 1.0
    assert reid.rank1_identification(dlib_rec, real, real, range(6)) == 1.0
    far = real + 5.0 * rng.normal(size=real.shape)
    assert reid.reid_rate(dlib_rec, real, far) == 0.0
    swapped = real[[1, 0, 2, 3, 4, 5]]
    assert reid.rank1_identification(dlib_rec, swapped, real, range(6)) == pytest.approx(4 / 6)
    assert reid.reid_rate(dlib_rec, real[:0], real[:0]) is None

    unit = real / np.linalg.norm(real, axis=1, keepdims=True)
    arc = reid.ArcFaceRecognizer(encoder=None, threshold=0.25)
    assert reid.reid_rate(arc, unit, unit) == 1.0
    assert reid.reid_rate(arc, unit, -unit) == 0.0
    assert "0.25" in arc.describe() and "0.6" in dlib_rec.describe()
    with pytest.raises(InputError, match="gallery indices"):
        reid.rank1_identification(dlib_rec, real, real, [0, 1])


# ---------------------------------------------------------------------- attributes
def test_agreement_and_labels(tmp_path):
    real = [{"yaw": "frontal", "mouth_open": "open"}, {"yaw": "left", "mouth_open": "closed"}]
    anon = [{"yaw": "frontal", "mouth_open": "closed"}, {"yaw": "left", "mouth_open": "closed"}]
    assert agreement(real, anon) == {"yaw": 1.0, "mouth_open": 0.5}
    assert agreement(real, real) == {"yaw": 1.0, "mouth_open": 1.0}
    assert normalize_label("-1") == normalize_label("No") == normalize_label("closed") == "0"
    assert normalize_label(" Yes ") == normalize_label("open") == "1" and normalize_label("Frontal") == "frontal"

    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("image_id,face_index,mouth_open,Smiling\nsub/a.jpg,0,1,-1\nb.jpg,1,0,\n")
    labels = load_labels_csv(csv_path)
    assert labels[("sub/a.jpg", 0)] == {"mouth_open": "1", "Smiling": "-1"}
    assert lookup_labels(labels, "x/b.jpg", 1) == {"mouth_open": "0"}  # by file name
    assert lookup_labels(labels, "b.jpg", 0) is None
    acc, n = label_accuracy([labels[("sub/a.jpg", 0)]], [{"mouth_open": "open", "yaw": "left"}])
    assert acc == {"mouth_open": 1.0} and n == {"mouth_open": 1}
    bad = tmp_path / "bad.csv"
    bad.write_text("foo,bar\n1,2\n")
    with pytest.raises(InputError, match="column naming the photo"):
        load_labels_csv(bad)


# ------------------------------------------------------------------------- quality
def test_frechet_distance_and_kid():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 4))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = a + np.array([2.0, 0, 0, 0])
    assert frechet_distance(a, shifted) == pytest.approx(4.0, abs=1e-6)  # |mu1 - mu2|^2, same covariance
    assert abs(kernel_inception_distance(a, a, subsets=5, subset_size=100)) < 0.05
    assert kernel_inception_distance(a, shifted, subsets=5, subset_size=100) > 0.5
    with pytest.raises(InputError):
        frechet_distance(a[:1], a)
    import scipy.linalg

    for n, m in ((50, 60), (5, 7), (5, 60)):  # full-rank and rank-deficient covariances
        x, y = rng.normal(size=(n, 8)), rng.normal(size=(m, 8)) * 1.5 + 0.3
        s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
        covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
        ref = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(s1 + s2) - 2 * np.trace(covmean)
        assert frechet_distance(x, y) == pytest.approx(ref, rel=1e-6, abs=1e-6)


def test_fid_inception_loads_a_pytorch_fid_state_dict(tmp_path):
    sd = random_fid_inception_state(seed=1)
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}  # as in the 2019 file
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(sd, path)
    model = fid_inception(path)
    loaded = model.net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items() if not k.startswith("fc."))
    assert type(model.net.Mixed_7c).__name__ == "FIDInceptionEMax"  # TF's max pool in the last block
    with torch.no_grad():
        feats = model(torch.rand(1, 3, 64, 64))
    assert feats.shape == (1, 2048) and torch.isfinite(feats).all()
    torch.save({"nope": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="not the FID Inception"):
        fid_inception(tmp_path / "bad.pth")


# ------------------------------------------------------------------------ FaRL head
def tiny_facer_checkpoint(seed: int = 0) -> dict[str, torch.Tensor]:
    """A facer ``FACTransformer`` state dict with a tiny ViT backbone and a random 40-way head."""
    from falco.models.farl import tiny_farl_state_dict

    sd = tiny_farl_state_dict(seed=seed)
    out = {"backbone." + k[len("visual."):]: v for k, v in sd.items()
           if k.startswith("visual.") and not k.startswith(("visual.proj", "visual.ln_post"))}
    g = torch.Generator().manual_seed(seed)
    width = sd["visual.conv1.weight"].shape[0]
    out["head.weights"] = torch.randn(1, 3, 1, generator=g)
    out["head.final_fc.weight"] = torch.randn(40, width, generator=g) * 0.5
    out["head.final_fc.bias"] = torch.zeros(40)
    for i in range(3):
        out[f"head.norm_{i}.weight"], out[f"head.norm_{i}.bias"] = torch.ones(width), torch.zeros(width)
    return out


def test_farl_celeba_head_loads_facer_layout(tmp_path):
    from falco.evaluation.farl_attributes import CELEBA_ATTRIBUTES, FaRLCelebAClassifier, warp_to_template

    path = tmp_path / "face_attribute.farl.celeba.pt"
    torch.save(tiny_facer_checkpoint(), path)
    clf = FaRLCelebAClassifier.from_file(path)
    assert clf.attributes == CELEBA_ATTRIBUTES and len(CELEBA_ATTRIBUTES) == 40
    image = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    lm = _face68()
    crop = warp_to_template(image, lm)
    assert crop.shape == (224, 224, 3)
    labels = clf.predict_faces(image, [lm, lm])
    assert len(labels) == 2 and labels[0] == labels[1] and set(labels[0]) == set(CELEBA_ATTRIBUTES)
    assert set(labels[0].values()) <= {"0", "1"}
    torch.save({"backbone.conv1.weight": torch.zeros(8, 3, 8, 8)}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="missing head.final_fc.weight"):
        FaRLCelebAClassifier.from_file(tmp_path / "bad.pt")


def test_farl_template_warp_puts_the_eyes_on_the_template():
    from falco.evaluation.farl_attributes import _similarity, facer_template, five_points

    lm = _face68()
    M = _similarity(five_points(lm), facer_template())
    moved = (np.c_[five_points(lm), np.ones(5)] @ M.T)[:, :2]
    assert np.abs(moved - facer_template()).max() < 25  # a similarity fit of a synthetic face


# ---------------------------------------------------------------------------- cache
def test_feature_cache_and_digest():
    cache = FeatureCache()
    calls = []
    assert cache.get(("k",), lambda: calls.append(1) or 5) == 5
    assert cache.get(("k",), lambda: calls.append(1) or 6) == 5
    assert calls == [1] and cache.hits == 1 and ("k",) in cache
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    assert image_digest(a) == image_digest(b)
    b[0, 0, 0] = 1
    assert image_digest(a) != image_digest(b)
