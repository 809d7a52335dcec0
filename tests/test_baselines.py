"""The Anonymizer interface and the classic baselines (blur, pixelate, mask) on real photos."""

from __future__ import annotations

import numpy as np
import pytest

from falco.align import photo_mask
from falco.methods import (
    Anonymizer,
    available_methods,
    face_seed,
    fallback,
    get_anonymizer,
    register_method,
)
from falco.methods import registry as registry_mod
from falco.methods.cover import gaussian_sigma, heavy_kernel, region
from falco.errors import InputError
from falco.run.runner import face_row
from tests.conftest import apply_method, photo_with_faces

CLASSIC = [("blur", {"preset": "9"}), ("blur", {"preset": 17}), ("blur", {"preset": "heavy"}),
           ("pixelate", {"blocks": 8}), ("pixelate", {"blocks": 16}), ("mask", {})]


@pytest.fixture(scope="module")
def group():
    """A photo with six faces of 54-84 px, and its faces."""
    return photo_with_faces("2008_002470.jpg", 6)


def _regions(photo, faces) -> np.ndarray:
    """Union of the faces' hard-edged regions (photo_mask with feather 0)."""
    return np.maximum.reduce([photo_mask(f, photo.shape, feather=0.0) for f in faces])


@pytest.mark.parametrize(("method", "options"), CLASSIC, ids=lambda v: str(v))
def test_classic_changes_faces_only(group, method, options):
    photo, faces = group
    anon = get_anonymizer(method, **options)
    out, records = apply_method(anon, photo, faces)
    assert out is not photo
    alpha = _regions(photo, faces)
    assert np.array_equal(out[alpha == 0], photo[alpha == 0]), "pixels outside the face regions changed"
    inside = alpha >= 0.99
    changed = (out[inside] != photo[inside]).any(axis=-1).mean()
    assert changed > 0.95, f"only {changed:.1%} of face pixels changed"
    for face in faces:  # every face, not just most pixels overall
        m = photo_mask(face, photo.shape, feather=0.0) >= 0.99
        assert np.abs(out[m].astype(int) - photo[m]).mean() > 2.0
    assert len(records) == len(faces) and all(r["method"] == method and r["status"] == "done" for r in records)
    for face, record in zip(faces, records):
        face_row(face, **record)  # records merge into the run manifest's face rows without clashing
    assert anon.settings()["method"] == method


def test_blur_presets_follow_the_papers(group):
    photo, faces = group
    assert gaussian_sigma(9) == pytest.approx(1.7) and gaussian_sigma(17) == pytest.approx(2.9)
    face = faces[0]
    width = min(face.box[2], photo.shape[1]) - max(face.box[0], 0)
    assert heavy_kernel(face, photo.shape) == max(1, int(0.3 * width))
    records = {p: get_anonymizer("blur", preset=p).apply(photo, faces[:1], [None])[1][0] for p in ("9", "17", "heavy")}
    assert records["9"]["kernel"] == 9 and records["17"]["kernel"] == 17
    assert records["heavy"]["kernel"] == heavy_kernel(face, photo.shape) and records["heavy"]["filter"] == "box"
    # a stronger preset removes more detail: less variance left inside the face
    m = photo_mask(face, photo.shape, feather=0.0) >= 0.99
    spread = {p: get_anonymizer("blur", preset=p).apply(photo, faces[:1], [None])[0][m].astype(float).std(0).mean()
              for p in ("9", "17")}
    assert spread["17"] < spread["9"] < photo[m].astype(float).std(0).mean()


def test_pixelate_makes_blocks(group):
    photo, faces = group
    out, _ = get_anonymizer("pixelate", blocks=8).apply(photo, faces[:1], [None])
    (y0, y1, x0, x1), alpha = region(photo.shape, faces[0])
    inner = out[y0:y1, x0:x1][alpha >= 0.99]
    assert len(np.unique(inner.reshape(-1, 3), axis=0)) <= 64


def test_mask_is_black(group):
    photo, faces = group
    out, records = get_anonymizer("mask").apply(photo, faces, [None] * len(faces))
    assert (out[_regions(photo, faces) >= 0.999] == 0).all()
    assert records[0]["colour"] == [0, 0, 0]


def test_no_faces_returns_a_copy(group):
    photo, _ = group
    for method, options in CLASSIC:
        out, records = get_anonymizer(method, **options).apply(photo, [], [])
        assert records == [] and out is not photo and np.array_equal(out, photo)


def test_get_anonymizer_errors():
    with pytest.raises(InputError, match="'nope'.*blur.*ciagan.*deepprivacy.*mask.*pixelate"):
        get_anonymizer("nope")
    with pytest.raises(InputError, match="'blur'.*'blocks'.*preset"):
        get_anonymizer("blur", blocks=8)
    with pytest.raises(InputError, match="blur preset.*'5'"):
        get_anonymizer("blur", preset="5")
    with pytest.raises(InputError, match="pixelate blocks.*12"):
        get_anonymizer("pixelate", blocks=12)
    with pytest.raises(InputError, match="'mask'.*'colour'"):
        get_anonymizer("mask", colour=1)
    with pytest.raises(InputError, match="feather"):
        get_anonymizer("mask", feather=2)


def test_apply_checks_its_arguments(group):
    photo, faces = group
    anon = get_anonymizer("mask")
    with pytest.raises(InputError, match="results"):
        anon.apply(photo, faces, [None])
    with pytest.raises(InputError, match="photo"):
        anon.apply(photo.astype(np.float32), faces, [None] * len(faces))
    with pytest.raises(InputError, match=r"faces\[0\]"):
        anon.apply(photo, ["face"], [None])


def test_register_method(monkeypatch, group):
    monkeypatch.setattr(registry_mod, "_REGISTERED", {})

    class Identity(Anonymizer):
        name = "identity"

        def __init__(self, tag: str = "x") -> None:
            self.tag = tag

        def apply(self, photo, faces, results):
            return photo.copy(), [{"method": "identity", "status": "done", "tag": self.tag}] * len(faces)

    register_method("identity", Identity)
    assert "identity" in available_methods()
    anon = get_anonymizer("identity", tag="y")
    photo, faces = group
    assert anon.process(faces) == [None] * len(faces)
    assert anon.apply(photo, faces[:1], [None])[1] == [{"method": "identity", "status": "done", "tag": "y"}]
    with pytest.raises(InputError, match="'identity'.*'size'"):
        get_anonymizer("identity", size=3)
    for bad in ("", "Two Words", "UPPER"):
        with pytest.raises(InputError, match="method name"):
            register_method(bad, Identity)
    with pytest.raises(InputError, match="callable"):
        register_method("thing", 3)


@pytest.mark.parametrize("how", ["blur", "pixelate", "mask"])
def test_fallback_covers_one_face(group, how):
    photo, faces = group
    before = photo.copy()
    face = faces[2]
    out = fallback(photo, face, how)
    assert np.array_equal(photo, before)
    alpha = photo_mask(face, photo.shape, feather=0.0)
    assert np.array_equal(out[alpha == 0], photo[alpha == 0])
    m = alpha >= 0.99
    assert (out[m] != photo[m]).any(-1).mean() > 0.95


def test_fallback_blur_is_heavier_than_the_heavy_preset(group):
    photo, faces = group
    face = faces[2]
    m = photo_mask(face, photo.shape, feather=0.0) >= 0.99
    heavy = get_anonymizer("blur", preset="heavy").apply(photo, [face], [None])[0]
    strong = fallback(photo, face, "blur")
    detail = [np.abs(np.diff(img.astype(float), axis=1))[m[:, 1:]].mean() for img in (photo, heavy, strong)]
    assert detail[2] < detail[1] < detail[0]
    with pytest.raises(InputError, match="fallback.*'smudge'"):
        fallback(photo, face, "smudge")


def test_face_seed_depends_on_seed_and_face(group):
    _, faces = group
    assert face_seed(0, faces[0]) == face_seed(0, faces[0])
    assert face_seed(0, faces[0]) != face_seed(1, faces[0])
    assert len({face_seed(0, f) for f in faces}) == len(faces)
