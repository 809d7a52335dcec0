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


# ------------------------------------------------------------------ the papers' presets
@pytest.fixture(scope="module")
def celeba_face():
    """A CIAGAN clr crop (178 x 218) of the shared CelebA identities and its face."""
    from falco.align import detect_and_align
    from falco.run.image_files import load_image
    from tests.conftest import shared_path

    photo = load_image(sorted(shared_path("data", "celeba-ids", "clr", "0").glob("*.jpg"))[0])
    faces = detect_and_align(photo, size=256)
    assert len(faces) == 1
    return photo, faces[0]


@pytest.mark.parametrize("preset", ["ciagan-9x9", "ciagan-17x17"])
def test_ciagan_blur_filters_the_whole_crop(celeba_face, preset):
    import cv2

    from falco.methods.classic import ciagan_test_crop, ciagan_window

    photo, face = celeba_face
    out, records = get_anonymizer("blur", preset=preset).apply(photo, [face], [None])
    x0, y0, x1, y1 = records[0]["region"]
    assert (x0, y0, x1, y1) == tuple(int(round(v)) for v in ciagan_window(face.landmarks))
    outside = np.ones(photo.shape[:2], bool)
    outside[max(0, y0):y1, max(0, x0):x1] = False
    assert np.array_equal(out[outside], photo[outside])
    k = int(preset.split("-")[1].split("x")[0])
    # what the evaluation sees: CIAGAN's test crop of the output ~ the paper's blur of the real test crop
    crop = ciagan_test_crop(photo).astype(float)
    want = cv2.GaussianBlur(ciagan_test_crop(photo), (k, k), 0).astype(float)
    got = ciagan_test_crop(out).astype(float)[8:-8, 8:-8]
    assert np.abs(got - want[8:-8, 8:-8]).mean() < 0.35 * np.abs(crop[8:-8, 8:-8] - want[8:-8, 8:-8]).mean()
    settings = get_anonymizer("blur", preset=preset).settings()
    assert settings["region"] == "ciagan-crop" and settings["size"] == k and "CIAGAN" in settings["source"]


def test_ciagan_pixelate_uses_block_size_in_crop_pixels(celeba_face):
    from falco.methods.classic import ciagan_test_crop

    photo, face = celeba_face
    for preset, side in (("ciagan-16x16", 16), ("ciagan-8x8", 8)):
        out, _ = get_anonymizer("pixelate", preset=preset).apply(photo, [face], [None])
        crop = ciagan_test_crop(out).astype(float)
        # flat blocks of `side` px: the change between rows sits on 128 / side - 1 block edges
        for axis in (0, 1):
            rows = np.sort(np.abs(np.diff(crop, axis=axis)).mean(axis=(1 - axis, 2)))[::-1]
            edges = 128 // side - 1
            # (each edge spreads over about two rows after CIAGAN's Lanczos resampling)
            assert rows[:2 * edges].sum() > 0.7 * rows.sum(), (preset, axis)
            assert rows[edges - 1] > 5 * rows[3 * edges], (preset, axis)


def test_deepprivacy_presets_filter_the_box(celeba_face):
    import cv2

    photo, face = celeba_face
    x0, y0, x1, y1 = (max(0, int(face.box[0])), max(0, int(face.box[1])), min(photo.shape[1], int(face.box[2])),
                      min(photo.shape[0], int(face.box[3])))
    box = np.ascontiguousarray(photo[y0:y1, x0:x1])
    want = {"deepprivacy-8x8": cv2.resize(cv2.resize(box, (8, 8)), (x1 - x0, y1 - y0)),
            "deepprivacy-16x16": cv2.resize(cv2.resize(box, (16, 16)), (x1 - x0, y1 - y0)),
            "deepprivacy-heavy": cv2.blur(box, (max(1, int(0.3 * (x1 - x0))),) * 2),
            "deepprivacy-gaussian": cv2.GaussianBlur(box, (9, 9), sigmaX=3, sigmaY=3)}
    for preset, expected in want.items():
        method = "pixelate" if preset.endswith("x8") or preset.endswith("x16") else "blur"
        out, records = get_anonymizer(method, preset=preset).apply(photo, [face], [None])
        assert records[0]["region"] == [x0, y0, x1, y1]
        assert np.array_equal(out[y0:y1, x0:x1], expected), preset
        rest = np.ones(photo.shape[:2], bool)
        rest[y0:y1, x0:x1] = False
        assert np.array_equal(out[rest], photo[rest])


def test_pixelate_block_size(group):
    photo, faces = group
    out, records = get_anonymizer("pixelate", block_size=6).apply(photo, faces[:1], [None])
    (y0, y1, x0, x1), alpha = region(photo.shape, faces[0])
    assert records[0]["block_size"] == 6 and records[0]["blocks"] == [-(-(x1 - x0) // 6), -(-(y1 - y0) // 6)]
    inner = out[y0:y1, x0:x1][alpha >= 0.99]
    assert 1 < len(np.unique(inner.reshape(-1, 3), axis=0)) <= records[0]["blocks"][0] * records[0]["blocks"][1]
    assert np.array_equal(out[y0:y1, x0:x1][alpha == 0], photo[y0:y1, x0:x1][alpha == 0])
    assert get_anonymizer("pixelate").settings()["blocks"] == 16  # the default is unchanged


def test_paper_preset_errors():
    with pytest.raises(InputError, match="one of blocks, block_size or preset"):
        get_anonymizer("pixelate", blocks=8, block_size=4)
    with pytest.raises(InputError, match="block_size .* 2..256, got 1"):
        get_anonymizer("pixelate", block_size=1)
    with pytest.raises(InputError, match="pixelate preset must be one of ciagan-16x16.*got 'ciagan-9x9'"):
        get_anonymizer("pixelate", preset="ciagan-9x9")
    with pytest.raises(InputError, match="blur preset.*ciagan-9x9.*'ciagan-16x16'"):
        get_anonymizer("blur", preset="ciagan-16x16")


def test_anonymize_cli_takes_the_presets(tmp_path):
    from typer.testing import CliRunner

    from falco.cli import app

    result = CliRunner().invoke(app, ["anonymize", str(tmp_path), "--out", str(tmp_path / "o"), "--method", "blur",
                                      "--blur-preset", "ciagan-9x9", "--pixelate-preset", "ciagan-8x8"])
    assert result.exit_code != 0 and "not both" in (result.output + str(result.exception))
