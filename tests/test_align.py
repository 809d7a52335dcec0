"""Unit tests of falco.align on synthetic faces: quad geometry, the crop transform, masks,
paste-back, injected detectors and argument validation. No shared data needed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from falco.align import (
    AlignedFace,
    HogDetector,
    align_face,
    apply_transform,
    detect_and_align,
    dlib_model_path,
    face_mask,
    ffhq_quad,
    get_detector,
    paste_back,
    photo_mask,
    quad_transform,
)
from falco.errors import InputError, ModelNotFoundError


def synthetic_landmarks(center=(300.0, 300.0), scale=1.0, angle=0.0) -> np.ndarray:
    """A plausible 68-point iBUG face (eye distance 60 px at scale 1), rotated by ``angle`` rad."""
    t = np.linspace(-0.9 * np.pi, -0.1 * np.pi, 17)
    jaw = np.stack([80 * np.cos(t), -95 * np.sin(t) - 10], 1)  # 0..16, left ear to right ear
    brows = np.concatenate(
        [
            np.stack([np.linspace(-55, -12, 5), [-42, -48, -50, -48, -44]], 1),
            np.stack([np.linspace(12, 55, 5), [-44, -48, -50, -48, -42]], 1),
        ]
    )  # 17..26
    nose = np.concatenate(
        [
            np.stack([np.zeros(4), np.linspace(-30, 10, 4)], 1),
            np.stack([np.linspace(-14, 14, 5), [18, 20, 21, 20, 18]], 1),
        ]
    )  # 27..35
    hexagon = np.stack([[-12, -6, 6, 12, 6, -6], [0, -5, -5, 0, 5, 5]], 1)
    eyes = np.concatenate([hexagon + (-30, -20), hexagon + (30, -20)])  # 36..47
    t = np.linspace(np.pi, -np.pi, 13)[:12]
    mouth_outer = np.stack([28 * np.cos(t), 45 - 12 * np.sin(t)], 1)  # 48..59; 48 left, 54 right
    t = np.linspace(np.pi, -np.pi, 9)[:8]
    mouth_inner = np.stack([18 * np.cos(t), 45 - 5 * np.sin(t)], 1)  # 60..67
    lm = np.concatenate([jaw, brows, nose, eyes, mouth_outer, mouth_inner]) * scale
    assert lm.shape == (68, 2)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return lm @ rot.T + np.asarray(center)


def inside_hull(points: np.ndarray, shape: tuple[int, ...], inset: float = 0.0) -> np.ndarray:
    """Pixels (centres at integer coordinates) inside the convex hull of ``points`` moved ``inset`` px
    toward their mean (a region computed without falco's mask code). Shape: ``shape[:2]`` bool."""
    from scipy.spatial import Delaunay

    centre = points.mean(axis=0)
    d = points - centre
    n = np.linalg.norm(d, axis=1, keepdims=True)
    pts = centre + d * np.maximum(n - inset, 0.0) / n
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (Delaunay(pts).find_simplex(np.stack([xx.ravel(), yy.ravel()], 1)) >= 0).reshape(shape[:2])


def far_from(points: np.ndarray, shape: tuple[int, ...], margin: float) -> np.ndarray:
    """Pixels outside the points' bounding box grown by ``margin`` times its larger side. Shape: ``shape[:2]``."""
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    m = margin * max(x1 - x0, y1 - y0)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (xx < x0 - m) | (xx > x1 + m) | (yy < y0 - m) | (yy > y1 + m)


def sinusoid_image(height: int, width: int, period: float) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 127.5 + 100 * np.sin(2 * np.pi * xx / period)
    g = 127.5 + 100 * np.sin(2 * np.pi * yy / period)
    b = np.full_like(r, 60.0)
    return np.clip(np.rint(np.stack([r, g, b], 2)), 0, 255).astype(np.uint8)


def sinusoid_at(points: np.ndarray, period: float) -> np.ndarray:
    return np.stack(
        [
            127.5 + 100 * np.sin(2 * np.pi * points[..., 0] / period),
            127.5 + 100 * np.sin(2 * np.pi * points[..., 1] / period),
        ],
        -1,
    )


# ----------------------------------------------------------------------------- quad


def test_quad_is_the_ffhq_square():
    lm = synthetic_landmarks()
    quad = ffhq_quad(lm)
    sides = np.linalg.norm(np.roll(quad, -1, axis=0) - quad, axis=1)
    np.testing.assert_allclose(sides, sides[0], rtol=1e-12)
    # eye_to_eye = 60, eye_to_mouth = 65: x = max(120, 117) -> side 240.
    assert sides[0] == pytest.approx(240.0)
    # Upright face: corners top-left, bottom-left, bottom-right, top-right around c.
    c = np.array([300.0, 300.0 - 20 + 0.1 * 65])
    np.testing.assert_allclose(quad, c + np.array([[-120, -120], [-120, 120], [120, 120], [120, -120]]), atol=1e-9)


@pytest.mark.parametrize("angle,scale,shift", [(0.3, 1.0, (0, 0)), (-1.2, 0.4, (17.3, -5.1)), (2.5, 3.0, (100, 50))])
def test_quad_is_similarity_equivariant(angle, scale, shift):
    lm = synthetic_landmarks()
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = lm @ rot.T + shift
    np.testing.assert_allclose(ffhq_quad(moved), ffhq_quad(lm) @ rot.T + shift, atol=1e-9)


def test_quad_transform_maps_quad_corners_to_crop_corners():
    quad = ffhq_quad(synthetic_landmarks(angle=0.4, scale=0.7))
    for size in (64, 256, 1024):
        corners = apply_transform(quad_transform(quad, size), quad)
        expected = np.array([[0, 0], [0, size], [size, size], [size, 0]]) - 0.5
        np.testing.assert_allclose(corners, expected, atol=1e-9)
    m = quad_transform(quad, 256)
    pts = np.random.default_rng(0).uniform(0, 500, (10, 2))
    np.testing.assert_allclose(apply_transform(np.linalg.inv(m), apply_transform(m, pts)), pts, atol=1e-9)


# ----------------------------------------------------------------------------- crop


@pytest.mark.parametrize(
    "shape,center,scale,angle",
    [
        ((600, 600), (300.0, 310.0), 0.6, 0.25),  # face smaller than the crop: upsampled
        ((700, 650), (330.0, 340.0), 1.5, -0.6),  # larger than the crop, no shrink
        ((2200, 2200), (1100.0, 1090.0), 5.5, 0.35),  # quad over 1024 px: the recipe shrinks first
    ],
)
def test_crop_samples_the_source_where_the_transform_says(shape, center, scale, angle):
    period = 160.0
    image = sinusoid_image(*shape, period)
    face = align_face(image, synthetic_landmarks(center, scale, angle), size=256)
    assert (face.quad_size > 4 * 256) == (shape[0] > 2000)  # the last case exercises the shrink
    grid = np.stack(np.meshgrid(np.arange(256), np.arange(256)), -1).reshape(-1, 2)
    src = apply_transform(np.linalg.inv(face.transform()), grid)
    expected = sinusoid_at(src, period).reshape(256, 256, 2)
    err = (face.image[:, :, :2].astype(float) - expected)[8:-8, 8:-8]
    # Pillow's 8-bit bilinear warp truncates (a bias of about -0.45); beyond that the crop
    # follows the transform: a quarter-pixel misregistration would give about 0.7.
    assert -0.6 < err.mean() < 0.0, err.mean()
    assert np.abs(err - err.mean()).mean() < 0.45
    assert np.abs(face.image[:, :, 2].astype(int) - 60).max() <= 1


def test_transform_size_supersamples_like_ffhq():
    image = sinusoid_image(600, 600, 160.0)
    lm = synthetic_landmarks((300.0, 300.0), 1.2, 0.1)
    plain = align_face(image, lm, size=128)
    super_ = align_face(image, lm, size=128, transform_size=512)
    np.testing.assert_array_equal(plain.quad, super_.quad)
    assert super_.image.shape == (128, 128, 3)
    assert np.abs(plain.image.astype(float) - super_.image).mean() < 3.0


def test_face_near_the_border_is_padded_not_black():
    image = np.full((300, 300, 3), 200, np.uint8)
    face = align_face(image, synthetic_landmarks((60.0, 60.0), 0.8), size=128)
    # Padding reflects the photo and fades to its median colour: no black corners.
    assert face.image.min() > 150


def test_aligned_face_is_frozen():
    lm = synthetic_landmarks((200.0, 200.0))
    face = align_face(np.zeros((400, 400, 3), np.uint8), lm, box=(1, 2, 3, 4), score=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        face.score = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        face.landmarks[0, 0] = 5.0
    with pytest.raises(ValueError):
        face.quad[0, 0] = 5.0
    assert face.box == (1, 2, 3, 4) and face.score == 0.5 and face.size == 256


def test_default_box_is_the_landmarks_bounds():
    lm = synthetic_landmarks((200.0, 200.0))
    face = align_face(np.zeros((400, 400, 3), np.uint8), lm)
    x0, y0, x1, y1 = face.box
    assert x0 <= lm[:, 0].min() < x0 + 1 and x1 - 1 <= lm[:, 0].max() < x1
    assert y0 <= lm[:, 1].min() < y0 + 1 and y1 - 1 <= lm[:, 1].max() < y1
    assert face.score is None


# ----------------------------------------------------------------------------- masks and paste-back


@pytest.fixture()
def scene():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (400, 500, 3), dtype=np.uint8)
    face = align_face(photo, synthetic_landmarks((250.0, 200.0), 0.8, 0.2))
    return photo, face


def test_face_mask_shape_and_values(scene):
    _, face = scene
    mask = face_mask(face)
    assert mask.shape == (256, 256) and mask.dtype == np.float32
    assert mask.min() == 0.0 and mask.max() == 1.0
    assert mask[0, 0] == mask[0, -1] == mask[-1, 0] == mask[-1, -1] == 0.0
    nose = np.rint(apply_transform(face.transform(), face.landmarks[30:31])[0]).astype(int)
    assert mask[nose[1], nose[0]] == 1.0
    hard = face_mask(face, feather=0.0)
    assert set(np.unique(hard)) == {0.0, 1.0}
    assert np.abs(hard - mask).mean() < 0.05  # the ramp is centred on the hull edge
    assert face_mask(face, forehead=1.0).sum() > mask.sum() > face_mask(face, forehead=0.0).sum()
    assert face_mask(face, 64).shape == (64, 64)


def test_paste_back_touches_only_the_mask(scene):
    photo, face = scene
    before = photo.copy()
    new = np.zeros((256, 256, 3), np.uint8)
    out = paste_back(photo, face, new)
    np.testing.assert_array_equal(photo, before)
    weights = photo_mask(face, photo.shape)
    changed = (out != photo).any(axis=2)
    assert not (changed & (weights == 0)).any()
    assert (out[weights == 1.0] == 0).all()
    # The region, from the scene's landmarks rather than the mask code: every pixel inside their
    # outline is blended toward black (at least half way, so each changes: the photo is random),
    # and 5 % of the crop side inside it (past the soft edge) it is black.
    lm = synthetic_landmarks((250.0, 200.0), 0.8, 0.2)
    outline = inside_hull(lm, photo.shape)
    deep = inside_hull(lm, photo.shape, inset=0.05 * face.quad_size)
    assert outline.sum() > 9000 and deep.sum() > 0.6 * outline.sum()
    assert changed[outline].all()
    assert (out[deep] == 0).all()
    # the forehead: the band from the brows to 15 px above them
    up = lm[36:48].mean(0) - lm[48:68].mean(0)
    brows = lm[17:27]
    forehead = inside_hull(np.concatenate([brows, brows + 15 * up / np.linalg.norm(up)]), photo.shape, inset=1.0)
    assert forehead.sum() > 500 and changed[forehead].all()
    # far from the face (its landmarks' box grown by half its size) nothing changes
    far = far_from(lm, photo.shape, 0.5)
    assert far.mean() > 0.3 and not changed[far].any()
    # A wider feather spreads the same region over more partly blended pixels.
    soft = photo_mask(face, photo.shape, feather=0.2)
    partial = lambda w: ((w > 0) & (w < 1)).sum()  # noqa: E731
    assert partial(soft) > partial(weights) > partial(photo_mask(face, photo.shape, feather=0.0))


def test_paste_back_with_custom_mask(scene):
    photo, face = scene
    out = paste_back(photo, face, np.zeros((256, 256, 3), np.uint8), mask=np.zeros((256, 256)))
    np.testing.assert_array_equal(out, photo)
    full = paste_back(photo, face, np.zeros((256, 256, 3), np.uint8), mask=np.ones((512, 512)))
    default = paste_back(photo, face, np.zeros((256, 256, 3), np.uint8))
    assert (full == 0).all(axis=2).sum() > (default == 0).all(axis=2).sum()
    with pytest.raises(InputError, match="mask"):
        paste_back(photo, face, face.image, mask=np.full((256, 256), 2.0))
    with pytest.raises(InputError, match="mask"):
        paste_back(photo, face, face.image, mask=np.ones((256, 100)))


def test_paste_back_of_a_face_leaving_the_photo():
    photo = np.full((200, 200, 3), 90, np.uint8)
    face = align_face(photo, synthetic_landmarks((20.0, 180.0), 0.7, 0.5))
    out = paste_back(photo, face, np.full((256, 256, 3), 10, np.uint8))
    assert out.shape == photo.shape and out.min() >= 10 and out.max() <= 90
    # the part of the face inside the photo is replaced: the landmarks' outline, 2 px in, is all 10
    lm = synthetic_landmarks((20.0, 180.0), 0.7, 0.5)
    inner = inside_hull(lm, photo.shape, inset=2.0)
    assert inner.sum() > 2500 and (out[inner] == 10).all()
    far = far_from(lm, photo.shape, 0.5)
    assert far.mean() > 0.3 and (out[far] == 90).all()


def test_paste_back_validates(scene):
    photo, face = scene
    with pytest.raises(InputError, match="new_crop"):
        paste_back(photo, face, np.zeros((256, 200, 3), np.uint8))
    with pytest.raises(InputError, match="new_crop"):
        paste_back(photo, face, np.zeros((256, 256, 3), np.float32))
    with pytest.raises(InputError, match="photo"):
        paste_back(photo[:, :, 0], face, face.image)
    with pytest.raises(InputError, match="feather"):
        paste_back(photo, face, face.image, feather=-0.1)


# ----------------------------------------------------------------------------- detectors


class FakeDetector:
    """Returns fixed boxes (deliberately unsorted) and synthetic landmarks centred in each box."""

    def __init__(self, boxes, landmark_shape=(68, 2)):
        self.boxes = boxes
        self.landmark_shape = landmark_shape
        self.calls = []

    def detect(self, image):
        return [(box, 0.1 * i) for i, box in enumerate(self.boxes)]

    def landmarks(self, image, box):
        self.calls.append(box)
        if self.landmark_shape != (68, 2):
            return np.zeros(self.landmark_shape)
        x0, y0, x1, y1 = box
        return synthetic_landmarks(((x0 + x1) / 2, (y0 + y1) / 2), (x1 - x0) / 200)


def test_injected_detector_and_ordering():
    image = np.full((400, 600, 3), 128, np.uint8)
    boxes = [(400, 100, 500, 200), (50, 250, 150, 350), (50, 50, 150, 150), (250, 120, 350, 220)]
    det = FakeDetector(boxes)
    faces = detect_and_align(image, size=64, detector=det)
    assert [f.box for f in faces] == sorted(boxes)
    assert sorted(det.calls) == sorted(boxes)
    assert [f.score for f in faces] == pytest.approx([0.2, 0.1, 0.3, 0.0])
    assert all(f.image.shape == (64, 64, 3) for f in faces)
    assert detect_and_align(image, detector=FakeDetector([])) == []


def test_broken_detectors_are_reported():
    image = np.zeros((100, 100, 3), np.uint8)
    with pytest.raises(InputError, match=r"\[68, 2\]"):
        detect_and_align(image, detector=FakeDetector([(10, 10, 60, 60)], landmark_shape=(5, 2)))
    with pytest.raises(InputError, match="empty box"):
        detect_and_align(image, detector=FakeDetector([(10, 10, 10, 60)]))
    with pytest.raises(InputError, match="detector"):
        detect_and_align(image, detector=object())  # type: ignore[arg-type]


def test_get_detector():
    assert isinstance(get_detector("HOG", upsample=0), HogDetector)
    assert get_detector("cnn", 2).upsample == 2
    fake = FakeDetector([])
    assert get_detector(fake) is fake
    with pytest.raises(InputError, match="'retinaface'"):
        get_detector("retinaface")
    for bad in (-1, 1.5, True, 9):
        with pytest.raises(InputError, match="upsample"):
            get_detector("hog", bad)


def test_hog_on_a_blank_image_finds_nothing():
    assert detect_and_align(np.full((120, 160, 3), 77, np.uint8)) == []


def test_dlib_model_path(tmp_path, monkeypatch):
    assert dlib_model_path("shape_predictor_68_face_landmarks.dat").stat().st_size > 50_000_000
    assert dlib_model_path("mmod_human_face_detector.dat").is_file()
    with pytest.raises(ModelNotFoundError, match=r"nope\.dat"):
        dlib_model_path("nope.dat")
    (tmp_path / "nope.dat").write_bytes(b"x")
    monkeypatch.setenv("FALCO_DLIB_MODELS", str(tmp_path))
    assert dlib_model_path("nope.dat") == tmp_path / "nope.dat"


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "image,match",
    [
        (np.zeros((50, 50), np.uint8), r"\[50, 50\]"),
        (np.zeros((50, 50, 4), np.uint8), r"\[50, 50, 4\]"),
        (np.zeros((50, 50, 3), np.float32), "float32"),
        ([[0, 0, 0]], "list"),
        (np.zeros((0, 50, 3), np.uint8), "image"),
    ],
)
def test_bad_images_are_refused(image, match):
    with pytest.raises(InputError, match=match):
        detect_and_align(image)
    with pytest.raises(InputError, match=match):
        align_face(image, synthetic_landmarks())


def test_bad_landmarks_and_sizes_are_refused():
    image = np.zeros((100, 100, 3), np.uint8)
    lm = synthetic_landmarks((50.0, 50.0), 0.3)
    with pytest.raises(InputError, match=r"\[5, 2\]"):
        align_face(image, lm[:5])
    bad = lm.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InputError, match="finite"):
        align_face(image, bad)
    with pytest.raises(InputError, match="degenerate"):
        ffhq_quad(np.zeros((68, 2)))
    with pytest.raises(InputError, match="at least"):
        align_face(image, synthetic_landmarks((50.0, 50.0), 0.01))
    for size in (0, 4, True, "256", 256.0):
        with pytest.raises(InputError, match="size"):
            align_face(image, lm, size=size)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="transform_size"):
        align_face(image, lm, size=256, transform_size=128)
    with pytest.raises(InputError, match="size"):  # refused even when there is no face
        detect_and_align(image, size=3)
    with pytest.raises(InputError, match="transform_size"):
        detect_and_align(image, size=256, transform_size=128)
    with pytest.raises(InputError, match="quad"):
        quad_transform(np.zeros((3, 2)), 256)
    with pytest.raises(InputError, match="degenerate"):
        quad_transform(np.zeros((4, 2)), 256)


def test_aligned_face_type_is_exported():
    assert dataclasses.is_dataclass(AlignedFace)
