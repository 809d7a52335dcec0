"""The face-region promise, checked against landmarks falco's code did not produce.

The expectation comes from outside the code under test: dlib's HOG detector and 68-point
shape predictor are run here directly (the ``.dat`` file located by ``dlib_model_path``, the photo
decoded with Pillow), not through :mod:`falco.faces`. Every landmark, pulled a little toward
the face centre (it sits *on* the face's outline), must be changed in the output of
``falco anonymize`` — painted black by ``--method mask``, altered by blur, pixelate and FALCO —
and so must the forehead just above the brows. Far from every face (outside the landmarks'
box grown by a generous margin) the PNG output must equal the input bit for bit: that region
is computed from the dlib landmarks, not from falco's mask code.

Faces dlib finds that falco did not report: on the shared photos there are none (falco runs
the same HOG detector at the same upsampling; at two upsamplings dlib finds no extra face
either, checked once by hand: 66 vs 67 boxes, 8 s on ``bald_guys.jpg``, too slow to repeat
here). :func:`test_every_dlib_face_is_reported_by_falco` pins that, so a pipeline that
starts dropping faces fails here instead of shrinking the set the other tests check; the
guard's second detection pass (which covers misses) is tested in ``test_guard.py``.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from falco.cli import app
from falco.faces.detect import dlib_model_path
from tests.conftest import shared_path

PHOTOS = (
    "2007_007763.jpg", "2008_001009.jpg", "2008_001322.jpg", "2008_002079.jpg", "2008_002470.jpg",
    "2008_002506.jpg", "2008_004176.jpg", "2008_007676.jpg", "2009_004587.jpg", "bald_guys.jpg", "dogs.jpg",
)
FEW = ("2008_001322.jpg", "2008_002470.jpg")  # 9 faces, 40-110 px: for the slower methods
PULL = 0.05  # landmarks move this fraction of the face size toward the face centre
FOREHEAD = 0.08  # forehead probes: the pulled brow points raised by this fraction of the face size
MARGIN = 0.5  # "far from the face": outside the landmarks' box grown by this fraction of its larger side
REGIONS = {"jaw": range(0, 17), "brows": range(17, 27), "nose": range(27, 36), "eyes": range(36, 48),
           "mouth": range(48, 68)}


# ----------------------------------------------------------------------------- independent landmarks
def _predictor_file() -> Path:
    # dlib's predictor runs here directly; only the file is located by falco (a dependency, never skipped)
    return dlib_model_path("shape_predictor_68_face_landmarks.dat")


@pytest.fixture(scope="module")
def faces_dir() -> Path:
    return shared_path("data", "faces")


@pytest.fixture(scope="module")
def dlib_faces(faces_dir) -> dict[str, list[tuple[tuple[int, int, int, int], np.ndarray]]]:
    """Per photo: (box x0, y0, x1, y1 half-open, landmarks [68, 2] x/y) from dlib, called directly."""
    dlib = pytest.importorskip("dlib")
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(_predictor_file()))
    found = {}
    for name in PHOTOS:
        with Image.open(shared_path("data", "faces", name)) as im:
            rgb = np.asarray(im.convert("RGB"))
        faces = []
        for rect in detector(rgb, 1):
            shape = predictor(rgb, rect)
            lm = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], dtype=np.float64)
            faces.append(((rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1), lm))
        found[name] = faces
    assert sum(len(f) for f in found.values()) == 67, "the shared photos hold 67 faces dlib finds at one upsampling"
    return found


def probes(lm: np.ndarray) -> dict[str, np.ndarray]:
    """Integer (x, y) pixels to check, per region: landmarks pulled toward the centre, and the forehead."""
    size = float(np.sqrt(np.prod(lm.max(0) - lm.min(0))))
    centre = lm.mean(axis=0)
    towards = centre - lm
    dist = np.linalg.norm(towards, axis=1, keepdims=True)
    step = np.minimum(PULL * size, dist)
    pulled = lm + towards / np.maximum(dist, 1e-9) * step
    up = lm[36:48].mean(axis=0) - lm[48:68].mean(axis=0)
    up /= np.linalg.norm(up)
    out = {name: pulled[list(idx)] for name, idx in REGIONS.items()}
    out["forehead"] = pulled[17:27] + FOREHEAD * size * up
    return {name: np.rint(p).astype(int) for name, p in out.items()}


def far_from_faces(shape: tuple[int, ...], faces) -> np.ndarray:
    """True where a pixel lies outside every face's landmark box grown by MARGIN of its larger side."""
    far = np.ones(shape[:2], bool)
    for _, lm in faces:
        (x0, y0), (x1, y1) = lm.min(0), lm.max(0)
        m = MARGIN * max(x1 - x0, y1 - y0)
        ya, yb = max(int(np.floor(y0 - m)), 0), int(np.ceil(y1 + m)) + 1
        xa, xb = max(int(np.floor(x0 - m)), 0), int(np.ceil(x1 + m)) + 1
        far[ya:yb, xa:xb] = False
    return far


def iou(a, b) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# ----------------------------------------------------------------------------- running falco
def anonymize(src: Path, out: Path, method: str, *extra: str) -> Path:
    res = CliRunner().invoke(app, ["anonymize", str(src), "--out", str(out), "--method", method, "--format", "png",
                                   "--device", "cpu", "--no-progress", *extra])
    assert res.exit_code == 0, res.output
    return out


def falco_boxes(out: Path) -> dict[str, list[tuple[int, ...]]]:
    with sqlite3.connect(out / "manifest.sqlite") as con:
        rows = con.execute("SELECT source, data FROM faces").fetchall()
    boxes: dict[str, list] = {}
    for source, data in rows:
        boxes.setdefault(source, []).append(tuple(json.loads(data)["box"]))
    return boxes


def matched(dlib_faces, reported, name):
    """The dlib faces of ``name`` that falco also reported (box IoU >= 0.5)."""
    return [f for f in dlib_faces[name] if any(iou(f[0], b) >= 0.5 for b in reported.get(name, []))]


def subset(faces_dir: Path, tmp_path: Path, names) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    for name in names:
        shutil.copy(faces_dir / name, src / name)
    return src


def load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


def unchanged_probes(before: np.ndarray, after: np.ndarray, faces, *, patch: int = 0) -> list[str]:
    """'region landmark-index (x, y)' for every probe where no pixel of its (2*patch+1)^2 patch changed."""
    changed = (before != after).any(axis=2)
    h, w = changed.shape
    bad = []
    for k, (_, lm) in enumerate(faces):
        for region, pts in probes(lm).items():
            for i, (x, y) in enumerate(pts):
                window = changed[max(y - patch, 0) : min(y + patch + 1, h), max(x - patch, 0) : min(x + patch + 1, w)]
                if 0 <= x < w and 0 <= y < h and not window.any():
                    bad.append(f"face {k} {region}[{i}] at ({x}, {y})")
    return bad


def unpainted_probes(after: np.ndarray, faces) -> list[str]:
    """Probes inside the photo whose output pixel is not black (what --method mask paints)."""
    h, w = after.shape[:2]
    bad = []
    for k, (_, lm) in enumerate(faces):
        for region, pts in probes(lm).items():
            for i, (x, y) in enumerate(pts):
                if 0 <= x < w and 0 <= y < h and after[y, x].any():
                    bad.append(f"face {k} {region}[{i}] at ({x}, {y}) = {after[y, x].tolist()}")
    return bad


# ----------------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def masked(faces_dir, tmp_path_factory) -> Path:
    """--method mask on every shared photo, guard off (its fallback would blur what the mask missed)."""
    return anonymize(faces_dir, tmp_path_factory.mktemp("mask") / "out", "mask", "--guard", "off")


def test_probes_are_inside_the_faces_and_off_the_outline(dlib_faces):
    """The probes themselves: strictly inside the landmarks' hull, and every region present."""
    from scipy.spatial import Delaunay

    for name, faces in dlib_faces.items():
        for _, lm in faces:
            p = probes(lm)
            assert set(p) == {"jaw", "brows", "nose", "eyes", "mouth", "forehead"}
            hull = Delaunay(lm)
            inner = np.concatenate([p[r] for r in REGIONS])
            # pulled inward: inside the dlib outline (brow/jaw points would sit on it otherwise)
            assert (hull.find_simplex(inner) >= 0).mean() > 0.9, name
            # the forehead probes are above the brows (image y grows downward)
            assert (p["forehead"][:, 1] < lm[17:27, 1]).all(), name


def test_every_dlib_face_is_reported_by_falco(masked, dlib_faces):
    reported = falco_boxes(masked)
    for name in PHOTOS:
        assert len(matched(dlib_faces, reported, name)) == len(dlib_faces[name]), f"{name}: falco missed a face"


def test_mask_paints_every_independent_landmark_black(masked, dlib_faces):
    """Acceptance: with --method mask every landmark of every face (found by dlib) is changed."""
    reported = falco_boxes(masked)
    checked, bad = 0, []
    for name in PHOTOS:
        faces = matched(dlib_faces, reported, name)
        after = load(masked / Path(name).with_suffix(".png"))
        bad += [f"{name} {b}" for b in unpainted_probes(after, faces)]
        checked += len(faces)
    assert checked == 67
    assert not bad, f"{len(bad)} probes not masked, e.g. {bad[:8]}"


def test_mask_leaves_pixels_far_from_the_faces_bit_identical(masked, dlib_faces, faces_dir):
    for name in PHOTOS:
        before = load(faces_dir / name)
        after = load(masked / Path(name).with_suffix(".png"))
        far = far_from_faces(before.shape, dlib_faces[name])
        assert far.mean() > 0.15, f"{name}: the far region is too small to say anything"
        assert np.array_equal(before[far], after[far]), f"{name}: pixels far from every face changed"


@pytest.fixture(scope="module")
def bank(tiny_bank) -> Path:
    return tiny_bank


@pytest.mark.parametrize("method", ["blur", "pixelate", "falco"])
def test_other_methods_change_every_independent_landmark(method, faces_dir, dlib_faces, tmp_path, request):
    extra = ["--guard", "off"]
    if method == "falco":
        extra += ["--models", str(request.getfixturevalue("tiny_models")), "--bank",
                  str(request.getfixturevalue("bank")), "--steps", "1"]
    out = anonymize(subset(faces_dir, tmp_path, FEW), tmp_path / "out", method, *extra)
    reported = falco_boxes(out)
    checked, bad = 0, []
    for name in FEW:
        faces = matched(dlib_faces, reported, name)
        checked += len(faces)
        before = load(faces_dir / name)
        after = load(out / Path(name).with_suffix(".png"))
        # a 3x3 patch: a blurred or pixelated pixel may equal its original by chance, nine rarely do
        bad += [f"{name} {b}" for b in unchanged_probes(before, after, faces, patch=1)]
        far = far_from_faces(before.shape, dlib_faces[name])
        assert far.mean() > 0.15 and np.array_equal(before[far], after[far]), f"{name}: far pixels changed"
    assert checked == sum(len(dlib_faces[n]) for n in FEW) == 9
    assert not bad, f"{method}: {len(bad)} probes unchanged, e.g. {bad[:8]}"


def test_mask_with_the_default_guard_still_covers_every_landmark(faces_dir, dlib_faces, tmp_path):
    """The default guard (enforce) on top of --method mask: nothing it does uncovers a landmark."""
    out = anonymize(subset(faces_dir, tmp_path, FEW), tmp_path / "out", "mask")
    reported = falco_boxes(out)
    bad = []
    for name in FEW:
        faces = matched(dlib_faces, reported, name)
        assert len(faces) == len(dlib_faces[name])
        before = load(faces_dir / name)
        after = load(out / Path(name).with_suffix(".png"))
        bad += [f"{name} {b}" for b in unchanged_probes(before, after, faces)]
        far = far_from_faces(before.shape, dlib_faces[name])
        assert np.array_equal(before[far], after[far]), f"{name}: far pixels changed"
    assert not bad, f"{len(bad)} probes unchanged, e.g. {bad[:8]}"
