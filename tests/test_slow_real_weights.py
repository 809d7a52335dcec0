"""The real-weights tier: FALCO and the guard with the real pretrained weights.

Opt-in: ``pytest -m weights`` (marked ``slow`` too, so the fast tier ``-m "not slow"`` leaves it
out). Every test here skips, with the reason below, unless the real (not tiny random) models are
installed (``falco models download``); the FaRL CelebA attribute head is optional (its test
skips alone). Expectations come from outside falco's code: dlib's published threshold (0.6,
99.38 % on LFW), ArcFace's inference threshold (cosine 0.25 here, as the guard), dlib's 68
landmarks found independently on the input and the output.

Stated bounds (per face, on the shared photos ../shared/data/faces):
- identity changed: dlib distance >= 0.6 and ArcFace cosine < 0.25 between real and anonymized;
- landmarks kept: mean point error / inter-ocular distance (outer eye corners) <= 0.10 per face,
  <= 0.06 averaged over the faces;
- attributes kept (FaRL CelebA head): mean agreement over the 40 attributes >= 0.80.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import shared_path

pytestmark = [pytest.mark.weights, pytest.mark.slow]

SKIP_REASON = "needs the real pretrained weights: run `falco models download`"
# what FALCO needs (generator, e4e encoder, ArcFace, FaRL)
ROLES = ("generator", "encoder", "identity", "attributes")

DLIB_MIN_DISTANCE = 0.6
ARCFACE_MAX_COSINE = 0.25
LANDMARK_NME_PER_FACE = 0.10
LANDMARK_NME_MEAN = 0.06
ATTRIBUTE_MIN_AGREEMENT = 0.80


def real_weights_missing() -> str | None:
    """None when the real model set is installed; else the skip reason."""
    from falco.errors import FalcoError
    from falco.pretrained.modelset import is_tiny, resolve_model

    try:
        if is_tiny(None):
            return SKIP_REASON
        for role in ROLES:
            resolve_model(role, None)
    except (FalcoError, OSError):
        return SKIP_REASON
    return None


@pytest.fixture(scope="module")
def real_weights() -> None:
    reason = real_weights_missing()
    if reason:
        pytest.skip(reason)


def _photos() -> list[Path]:
    folder = shared_path("data", "faces")
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    assert photos, f"no photos in {folder}"
    return photos


def _faces(image: np.ndarray, upsample: int = 1):
    from falco.align import detect_and_align

    return detect_and_align(image, size=256, upsample=upsample)


def _centre(landmarks: np.ndarray) -> np.ndarray:
    return np.asarray(landmarks, dtype=np.float64).mean(axis=0)


def _match(face, candidates):
    """The candidate whose landmark centre is nearest ``face``'s, within half an eye distance."""
    if not candidates:
        return None
    lm = np.asarray(face.landmarks, dtype=np.float64)
    iod = np.linalg.norm(lm[36] - lm[45])
    best = min(candidates, key=lambda c: np.linalg.norm(_centre(c.landmarks) - _centre(lm)))
    return best if np.linalg.norm(_centre(best.landmarks) - _centre(lm)) < 0.5 * iod else None


@pytest.fixture(scope="module")
def falco_outputs(real_weights, tmp_path_factory) -> list[tuple[np.ndarray, np.ndarray]]:
    """(real photo, FALCO's output) for every shared photo, through the real CLI."""
    from falco.run.image_files import load_image

    photos = _photos()
    src = tmp_path_factory.mktemp("slow-in")
    for p in photos:
        (src / p.name).write_bytes(p.read_bytes())
    out = tmp_path_factory.mktemp("slow-out")
    proc = subprocess.run([sys.executable, "-m", "falco", "anonymize", str(src), "--out", str(out),
                           "--method", "falco", "--format", "png"],
                          capture_output=True, text=True, env={**os.environ, "CI": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    pairs = []
    for p in photos:
        written = [q for q in out.rglob(f"{p.stem}.*") if q.suffix.lower() in (".png", ".jpg", ".jpeg")]
        assert written, f"no output for {p.name} in {out}"
        pairs.append((load_image(p), load_image(written[0])))
    return pairs


def _real_faces(pairs):
    faces = [(real, anon, face) for real, anon in pairs for face in _faces(real)]
    assert faces, "dlib found no face in the shared photos"
    return faces


def test_falco_changes_every_identity_dlib(falco_outputs):
    from falco.evaluation.reid import DlibRecognizer, pair_scores

    dlib = DlibRecognizer()
    for real, anon, face in _real_faces(falco_outputs):
        d = pair_scores(dlib, dlib.embed(real, [face.landmarks]), dlib.embed(anon, [face.landmarks]))[0]
        assert d >= DLIB_MIN_DISTANCE, f"dlib distance {d:.3f} < {DLIB_MIN_DISTANCE}: same person"


def test_falco_changes_every_identity_arcface(falco_outputs):
    from falco.evaluation.reid import ArcFaceRecognizer, pair_scores

    arcface = ArcFaceRecognizer.from_models(None)
    for real, anon, face in _real_faces(falco_outputs):
        c = pair_scores(arcface, arcface.embed(real, [face.landmarks]), arcface.embed(anon, [face.landmarks]))[0]
        assert c < ARCFACE_MAX_COSINE, f"ArcFace cosine {c:.3f} >= {ARCFACE_MAX_COSINE}: same person"


def test_falco_keeps_the_landmarks(falco_outputs):
    errors = []
    for real, anon, face in _real_faces(falco_outputs):
        found = _match(face, _faces(anon))
        assert found is not None, "dlib lost a face in FALCO's output"
        a = np.asarray(face.landmarks, dtype=np.float64)
        b = np.asarray(found.landmarks, dtype=np.float64)
        nme = float(np.linalg.norm(a - b, axis=1).mean() / np.linalg.norm(a[36] - a[45]))
        assert nme <= LANDMARK_NME_PER_FACE, f"landmark error {nme:.3f} > {LANDMARK_NME_PER_FACE}"
        errors.append(nme)
    assert float(np.mean(errors)) <= LANDMARK_NME_MEAN


def test_falco_keeps_the_attributes(falco_outputs):
    from falco.errors import FalcoError
    from falco.evaluation.attributes import agreement
    from falco.evaluation.farl_attributes import FaRLCelebAClassifier
    from falco.pretrained.modelset import resolve_model

    try:
        classifier = FaRLCelebAClassifier.from_file(resolve_model("attribute-classifier", None))
    except FalcoError:
        pytest.skip("needs the FaRL CelebA attribute head: run `falco models download`")
    real_labels, anon_labels = [], []
    for real, anon, face in _real_faces(falco_outputs):
        real_labels += classifier.predict_faces(real, [face.landmarks])
        anon_labels += classifier.predict_faces(anon, [face.landmarks])
    scores = agreement(real_labels, anon_labels)
    mean = float(np.mean(list(scores.values())))
    assert mean >= ATTRIBUTE_MIN_AGREEMENT, f"attribute agreement {mean:.2f}: {scores}"


def test_guard_arcface_branch_with_real_weights(real_weights):
    """A face compared with itself matches; a different person's face does not (both recognisers)."""
    from falco.evaluation.reid import ArcFaceRecognizer
    from falco.guard import Recognizers
    from falco.run.image_files import load_image

    root = shared_path("data", "celeba-ids", "clr")
    people = []
    for person in sorted(p for p in root.iterdir() if p.is_dir()):
        for photo in sorted(person.glob("*.jpg")):
            image = load_image(photo)
            faces = _faces(image, upsample=2)
            if len(faces) == 1:
                people.append((image, faces[0]))
                break
    assert len(people) >= 2, f"dlib found a face for fewer than two people in {root}"
    recognizers = Recognizers(ArcFaceRecognizer.from_models(None))
    for i, (image, face) in enumerate(people):
        same = {c.name: c for c in recognizers.check(image, image, face)}
        assert set(same) == {"dlib", "arcface"}
        assert same["arcface"].same and same["arcface"].score > 0.9, same
        other = people[(i + 1) % len(people)][0]
        if other.shape != image.shape:
            continue
        diff = {c.name: c for c in recognizers.check(image, other, face)}
        assert not diff["arcface"].same, f"ArcFace matched two different people: {diff['arcface']}"
        assert diff["arcface"].score < ARCFACE_MAX_COSINE


def test_skip_reason_names_the_download_command():
    """Runs without weights: the skip path itself (and the module's imports) work."""
    reason = real_weights_missing()
    if reason is None:
        return
    assert reason == SKIP_REASON
    assert "falco models download" in reason
