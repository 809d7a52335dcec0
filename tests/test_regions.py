"""Region masks: landmark parts on real photos, the parsing-only parts, and the crop -> photo mapping."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage

from falco.errors import InputError
from falco.faces import regions
from falco.faces.ffhq import apply_transform
from falco.faces.paste import photo_mask
from falco.faces.regions import (
    GROUPS,
    PARSING_CLASSES,
    PARTS,
    crop_region_mask,
    needs_parsing,
    parse_aligned,
    region_mask,
    resolve_regions,
)
from tests.conftest import photo_with_faces

EYES_BROWS = list(range(17, 27)) + list(range(36, 48))
MOUTH = list(range(48, 68))


@pytest.fixture(scope="module", params=[("2008_001009.jpg", 2), ("2008_002470.jpg", 6)], ids=["large", "small"])
def photo_faces(request):
    """Faces of 142/114 px and of 54-84 px in the photo."""
    return photo_with_faces(*request.param)


def _at(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear mask values at photo points ``(x, y)``."""
    return scipy.ndimage.map_coordinates(mask, [points[:, 1], points[:, 0]], order=1)


def _crop_coords(face, shape, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop column ``u`` and row ``v`` (side-``size`` crop) of every photo pixel. Shape: two ``[H, W]``."""
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    crop = apply_transform(face.transform(size), np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64))
    return crop[:, 0].reshape(xs.shape), crop[:, 1].reshape(xs.shape)


# ----------------------------------------------------------------------------- from the landmarks
def test_eyes_brows_cover_eye_and_brow_landmarks_not_the_mouth(photo_faces):
    photo, faces = photo_faces
    for face in faces:
        mask = region_mask(face, photo.shape, "eyes-brows")
        assert mask.shape == photo.shape[:2] and mask.dtype == np.float32
        assert _at(mask, face.landmarks[EYES_BROWS]).min() > 0.9
        assert _at(mask, face.landmarks[MOUTH]).max() == 0


def test_mouth_lips_cover_mouth_landmarks_not_the_eyes(photo_faces):
    photo, faces = photo_faces
    for face in faces:
        mask = region_mask(face, photo.shape, "mouth-lips")
        assert _at(mask, face.landmarks[MOUTH]).min() > 0.9
        assert _at(mask, face.landmarks[EYES_BROWS]).max() == 0


def test_nothing_is_empty_and_everything_is_the_pasted_face_region(photo_faces):
    photo, faces = photo_faces
    for face in faces:
        assert not region_mask(face, photo.shape, "nothing").any()
        assert not region_mask(face, photo.shape, []).any()
        for feather in (0.0, 0.05):
            assert np.array_equal(region_mask(face, photo.shape, "everything", feather=feather),
                                  photo_mask(face, photo.shape, feather=feather))


def test_landmark_parts_stay_inside_the_face_region(photo_faces):
    photo, faces = photo_faces
    face = faces[0]
    face_region = photo_mask(face, photo.shape, feather=0.0) > 0
    for part in ("skin", "brows", "eyes", "nose", "mouth", "lips"):
        mask = region_mask(face, photo.shape, part)
        assert mask.max() > 0.99, part
        assert 0 <= mask.min() and mask.max() <= 1
        assert not (mask > 0.5)[~scipy.ndimage.binary_dilation(face_region, iterations=3)].any(), part
    skin = region_mask(face, photo.shape, "skin")
    assert _at(skin, face.landmarks[36:48]).max() < 0.05 and _at(skin, face.landmarks[48:60]).max() < 0.05
    # a union is the pixel-wise maximum of its parts (in the crop, before the warp)
    eyes, brows = crop_region_mask(face, "eyes"), crop_region_mask(face, "brows")
    assert np.array_equal(crop_region_mask(face, ["eyes", "brows"]), np.maximum(eyes, brows))


def test_feather_softens_and_dilate_grows(photo_faces):
    photo, faces = photo_faces
    face = faces[0]
    hard = crop_region_mask(face, "eyes", feather=0.0)
    assert set(np.unique(hard)) <= {0.0, 1.0}
    soft = crop_region_mask(face, "eyes", feather=0.05)
    assert ((soft > 0) & (soft < 1)).sum() > ((hard > 0) & (hard < 1)).sum()
    assert crop_region_mask(face, "eyes", feather=0.0, dilate=0.05).sum() > hard.sum()


# ----------------------------------------------------------------------------- parsing-only parts
@pytest.mark.parametrize("region", ["hair", "hair-neck", "ears", "glasses", "hat", "cloth", "eyes,neck"])
def test_parsing_only_regions_without_parser_name_the_model(photo_faces, region):
    photo, faces = photo_faces
    with pytest.raises(InputError, match="falco models download bisenet-face-parsing") as info:
        region_mask(faces[0], photo.shape, region)
    assert "'bisenet-face-parsing'" in str(info.value)
    assert needs_parsing(region)


def test_region_names():
    assert resolve_regions("eyes-brows") == ("eyes", "brows")
    assert resolve_regions("mouth-lips, Hair") == ("mouth", "lips", "hair")
    assert resolve_regions(["hair-neck", "hair"]) == ("hair", "neck")
    assert resolve_regions("nothing") == () and resolve_regions("everything") == ("everything",)
    assert not needs_parsing("everything") and not needs_parsing("eyes-brows")
    assert set(PARSING_CLASSES) == set(PARTS)
    assert sorted(c for part in PARSING_CLASSES.values() for c in part) == list(range(1, 19))
    assert set(GROUPS) == {"hair-neck", "mouth-lips", "eyes-brows", "everything", "nothing"}
    with pytest.raises(InputError, match="unknown region 'beard'.*eyes-brows"):
        resolve_regions("eyes,beard")


def test_registry_name_agrees_with_the_parsing_module():
    from falco.models import parsing

    assert regions.PARSING_MODEL == parsing.PARSING_MODEL


# ----------------------------------------------------------------------------- parsing maps -> photo
@pytest.fixture(scope="module")
def large_face():
    photo, faces = photo_with_faces("2008_001009.jpg", 2)
    face = max(faces, key=lambda f: f.quad_size)
    assert 2 * face.quad_size >= face.size  # the mask is warped at crop resolution (no pre-shrink)
    return photo, face


def test_synthetic_parsing_map_lands_on_the_right_photo_pixels(large_face):
    photo, face = large_face
    size = face.size
    labels = np.zeros((size, size), np.uint8)
    labels[40:100, 90:170] = 17  # hair in crop rows 40..99, columns 90..169
    labels[150:200, 20:60] = 1  # skin elsewhere: must not appear in the hair mask
    mask = region_mask(face, photo.shape, "hair", parsing=labels, feather=0.0)

    u, v = _crop_coords(face, photo.shape, size)
    inside = (u > 90 + 1) & (u < 169 - 1) & (v > 40 + 1) & (v < 99 - 1)
    outside = (u < 90 - 2) | (u > 169 + 2) | (v < 40 - 2) | (v > 99 + 2)
    assert inside.sum() > 1000
    assert np.all(mask[inside] == 1) and np.all(mask[outside] == 0)

    centre = apply_transform(np.linalg.inv(face.transform(size)), np.array([[129.5, 69.5]]))[0]
    assert mask[int(round(centre[1])), int(round(centre[0]))] == 1
    skin = region_mask(face, photo.shape, "skin", parsing=labels, feather=0.0)
    assert np.all(skin[inside] == 0) and skin.max() == 1


def test_parsing_map_of_another_size_covers_the_same_crop(large_face):
    photo, face = large_face
    small = np.zeros((64, 64), np.uint8)
    small[10:25, 22:42] = 17
    big = np.kron(small, np.ones((8, 8), np.uint8))  # the same map at 512 px
    a = crop_region_mask(face, "hair", parsing=small, size=512, feather=0.0)
    b = crop_region_mask(face, "hair", parsing=big, feather=0.0)
    assert a.shape == b.shape == (512, 512) and np.array_equal(a, b)
    assert np.abs(region_mask(face, photo.shape, "hair", parsing=small, feather=0.0)
                  - region_mask(face, photo.shape, "hair", parsing=big, feather=0.0)).mean() < 0.01


@pytest.mark.parametrize("bad", [np.zeros((16, 8), np.uint8), np.full((16, 16), 19, np.uint8),
                                 np.zeros((16, 16), np.float32)])
def test_bad_parsing_maps_are_input_errors(large_face, bad):
    photo, face = large_face
    with pytest.raises(InputError, match="parsing must"):
        region_mask(face, photo.shape, "hair", parsing=bad)


@pytest.mark.parametrize("kwargs", [{"feather": -0.1}, {"feather": 0.7}, {"dilate": 1.0}, {"feather": True}])
def test_bad_parameters_are_input_errors(large_face, kwargs):
    photo, face = large_face
    with pytest.raises(InputError, match="fraction of the face's size"):
        region_mask(face, photo.shape, "eyes", **kwargs)


def test_parser_on_aligned_crops_feeds_region_masks(large_face):
    from falco.models.parsing import load_bisenet, tiny_bisenet_state_dict

    photo, face = large_face
    net = load_bisenet(tiny_bisenet_state_dict())
    (labels,) = parse_aligned(net, [face])
    assert labels.shape == (face.size, face.size) and labels.dtype == np.uint8 and labels.max() < 19
    mask = region_mask(face, photo.shape, "hair-neck", parsing=labels)
    assert mask.shape == photo.shape[:2] and 0 <= mask.min() and mask.max() <= 1
    u, v = _crop_coords(face, photo.shape, face.size)
    outside = (u < -1) | (u > face.size) | (v < -1) | (v > face.size)
    assert outside.any() and not mask[outside].any()  # nothing outside the face's crop
