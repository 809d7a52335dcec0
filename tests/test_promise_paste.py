"""Paste-back promises, each checked against arithmetic written here (issue #25, mutants of ``paste``).

* The new face lands where the face's quad says and nowhere else: a crop of one colour pasted
  with an all-ones mask gives exactly that colour inside the quad and leaves every pixel outside
  it untouched; every output pixel lies between the photo and the crop (a blend, never darker).
* A face smaller in the photo than its crop is shrunk without aliasing: the pasted face agrees
  with Pillow's Lanczos resize of the crop straight onto the photo's pixel grid (computed here
  from the quad), while point-sampling the crop (what pasting without the pre-shrink does)
  is off by tens of grey levels.
* A custom mask is honoured by ``paste_back`` and ``photo_mask`` alike.
* The helpers: bilinear sampling against values worked out by hand on a 3x4 grid, the
  smoothstep ramp against ``3t^2 - 2t^3``, the working resolution against "the crop's, capped at
  twice the face's size in the photo".

Geometry used by the expectations: the quad's corners are the crop's top-left, bottom-left,
bottom-right and top-right (``falco.faces.ffhq``), and a photo pixel centre ``p`` sits at the
fraction ``(p - q0) . (q3 - q0) / s^2`` of the crop's width (``s`` the quad side), likewise for
the height with ``q1``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.ndimage
from PIL import Image

from falco.align import align_face, face_mask, paste_back, photo_mask
from falco.errors import InputError
from falco.faces.ffhq import AlignedFace
from falco.faces.paste import _sample, _smoothstep, _work_size
from tests.test_align import synthetic_landmarks


def crop_fractions(face, shape) -> tuple[np.ndarray, np.ndarray]:
    """For every photo pixel centre: its position across (rx) and down (ry) the crop, as fractions."""
    q = face.quad
    s = float(np.hypot(*(q[3] - q[0])))
    ex, ey = (q[3] - q[0]) / s, (q[1] - q[0]) / s
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    dx, dy = xx - q[0, 0], yy - q[0, 1]
    return (dx * ex[0] + dy * ex[1]) / s, (dx * ey[0] + dy * ey[1]) / s


def stripes_crop(size: int = 256, period: float = 4.0) -> np.ndarray:
    """A smooth gradient plus diagonal stripes ``period`` crop pixels apart (far above a small face's Nyquist)."""
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    low = 128 + 60 * np.sin(2 * np.pi * u / size) * np.cos(2 * np.pi * v / size)
    high = 50 * np.sin(2 * np.pi * (u + 0.5 * v) / period)
    rgb = np.stack([low + high, low - high, 128 + high], axis=2)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- paste_back, end to end
def test_a_small_face_is_pasted_like_a_lanczos_resize_of_the_crop():
    """Face 48 px wide in the photo, 256-px crop (the pre-shrink path: 256 -> 96 px, then warped)."""
    photo = np.full((200, 200, 3), 40, np.uint8)
    face = align_face(photo, synthetic_landmarks((100.0, 100.0), 0.2, 0.0))  # upright: the quad is axis-aligned
    s = face.quad_size
    assert s == pytest.approx(48.0) and face.size == 256  # 240 px * 0.2, see synthetic_landmarks
    crop = stripes_crop()
    out = paste_back(photo, face, crop, mask=np.ones((256, 256)))
    # expectation: Pillow's Lanczos resize of the crop region seen by photo pixels xa..xb, ya..yb
    # (pixel edges; a photo edge at x maps to the crop edge (x + 0.5 - (q0 + 0.5)) / s * 256)
    q0 = face.quad[0]
    xa, ya = int(np.ceil(q0[0] + 0.5)) + 2, int(np.ceil(q0[1] + 0.5)) + 2
    xb, yb = int(np.floor(q0[0] + 0.5 + s)) - 2, int(np.floor(q0[1] + 0.5 + s)) - 2
    box = ((xa - q0[0] - 0.5) / s * 256, (ya - q0[1] - 0.5) / s * 256,
           (xb - q0[0] - 0.5) / s * 256, (yb - q0[1] - 0.5) / s * 256)
    expected = np.asarray(Image.fromarray(crop).resize((xb - xa, yb - ya), Image.Resampling.LANCZOS, box=box))
    got = out[ya:yb, xa:xb].astype(np.float64)
    err = np.abs(got - expected)
    assert got.shape[0] > 35 and got.shape[1] > 35
    # measured: mean 0.6, max 2 grey levels
    assert err.mean() < 1.5 and err.max() <= 4, (err.mean(), err.max())
    # the same region point-sampled from the full crop (no pre-shrink) aliases the stripes
    ys, xs = np.mgrid[ya:yb, xa:xb].astype(np.float64)
    u, v = (xs - q0[0]) / s * 256 - 0.5, (ys - q0[1]) / s * 256 - 0.5
    naive = np.stack([scipy.ndimage.map_coordinates(crop[:, :, c].astype(np.float64), [v, u], order=1, mode="nearest")
                      for c in range(3)], axis=2)
    assert np.abs(naive - expected).mean() > 10 * 1.5  # measured 25: the tolerance above does tell the two apart
    # outside the quad (and its 1-px rim) the photo is untouched
    rx, ry = crop_fractions(face, photo.shape)
    outside = (rx < -1 / s) | (rx > 1 + 1 / s) | (ry < -1 / s) | (ry > 1 + 1 / s)
    assert outside.mean() > 0.9 and (out[outside] == 40).all()


def test_a_1024_crop_of_a_small_face_gives_what_its_256_version_gives():
    """The crop's side is free (a generator's 1024 px works): a small face shrinks both to the same ~96 px."""
    photo = np.full((200, 200, 3), 40, np.uint8)
    face = align_face(photo, synthetic_landmarks((100.0, 100.0), 0.2, 0.1))
    v, u = np.mgrid[0:1024, 0:1024].astype(np.float64)
    big = np.clip(np.rint(np.stack([128 + 100 * np.sin(2 * np.pi * u / 1024), 128 + 100 * np.cos(2 * np.pi * v / 512),
                                    60 + 0 * u], 2)), 0, 255).astype(np.uint8)
    small = np.asarray(Image.fromarray(big).resize((256, 256), Image.Resampling.LANCZOS))
    a = paste_back(photo, face, big).astype(int)
    b = paste_back(photo, face, small).astype(int)
    assert (a != 40).any(axis=2).sum() > 800  # the face was pasted
    assert np.abs(a - b).max() <= 3


def test_a_crop_of_one_colour_fills_the_quad_exactly_and_nothing_outside():
    """Large, rotated face (quad 600 px), all-ones 1024-px mask, 256-px crop of 200 over a photo of 50."""
    photo = np.full((900, 900, 3), 50, np.uint8)
    face = align_face(photo, synthetic_landmarks((450.0, 450.0), 2.5, 0.3))
    s = face.quad_size
    assert s == pytest.approx(600.0)
    out = paste_back(photo, face, np.full((256, 256, 3), 200, np.uint8), mask=np.ones((1024, 1024)))
    rx, ry = crop_fractions(face, photo.shape)
    inside = (rx > 1 / s) & (rx < 1 - 1 / s) & (ry > 1 / s) & (ry < 1 - 1 / s)
    outside = (rx < -0.5 / s) | (rx > 1 + 0.5 / s) | (ry < -0.5 / s) | (ry > 1 + 0.5 / s)
    assert inside.sum() > 350_000 and outside.sum() > 400_000
    assert (out[inside] == 200).all()  # the crop's colour up to its edge, not faded toward black there
    assert (out[outside] == 50).all()  # the mask ends with the crop
    assert out.min() == 50 and out.max() == 200  # every pixel is a blend of the two colours


def test_a_custom_mask_is_what_paste_back_and_photo_mask_use():
    """Left half of the crop masked in, right half out; face 120 px (the mask is resized to 240 px)."""
    photo = np.zeros((220, 220, 3), np.uint8)
    face = align_face(photo, synthetic_landmarks((110.0, 110.0), 0.5, 0.0))
    s = face.quad_size
    assert s == pytest.approx(120.0)
    mask = np.zeros((256, 256))
    mask[:, :128] = 1.0
    out = paste_back(photo, face, np.full((256, 256, 3), 255, np.uint8), mask=mask)
    weights = photo_mask(face, photo.shape, mask=mask)
    assert weights.dtype == np.float32 and weights.shape == (220, 220)
    rx, ry = crop_fractions(face, photo.shape)
    rows = (ry > 2 / s) & (ry < 1 - 2 / s)
    left = rows & (rx > 2 / s) & (rx < 0.5 - 2 / s)
    right = rows & (rx > 0.5 + 2 / s) & (rx < 1 - 2 / s)
    assert left.sum() > 4000 and right.sum() > 4000
    assert (weights[left] == 1).all() and (weights[right] == 0).all()
    assert (out[left] == 255).all() and (out[right] == 0).all()
    # paste_back blends by exactly these weights: white over black is 255 * weight, rounded
    np.testing.assert_array_equal(out[:, :, 0], np.rint(255.0 * weights.astype(np.float64)).astype(np.uint8))
    # and a different mask gives different weights (the default: the face region, not a half)
    assert not np.array_equal(weights, photo_mask(face, photo.shape))


def test_photo_mask_is_float32_zero_off_the_face():
    photo = np.zeros((200, 260, 3), np.uint8)
    face = align_face(photo, synthetic_landmarks((130.0, 100.0), 0.4, 0.2))
    w = photo_mask(face, photo.shape)
    assert w.dtype == np.float32 and w.shape == (200, 260)
    assert w.max() == 1.0 and w.min() == 0.0
    rx, ry = crop_fractions(face, photo.shape)
    assert (w[(rx < 0) | (rx > 1) | (ry < 0) | (ry > 1)] == 0).all()


def test_bad_images_are_named_in_the_error():
    photo = np.zeros((200, 200, 3), np.uint8)
    face = align_face(photo, synthetic_landmarks((100.0, 100.0), 0.4, 0.0))
    with pytest.raises(InputError, match=r"^photo must"):
        paste_back(photo.astype(np.float32), face, face.image)
    with pytest.raises(InputError, match=r"^new_crop must"):
        paste_back(photo, face, face.image.astype(np.float32))


# ----------------------------------------------------------------------------- the helpers
GRID = np.array([[5.0, 10.0, 20.0, 30.0],
                 [40.0, 50.0, 60.0, 70.0],
                 [80.0, 90.0, 100.0, 200.0]], dtype=np.float32)  # not a plane: the 200 corner


@pytest.mark.parametrize("cval", [None, 0.0])
def test_sample_is_bilinear_inside_the_grid(cval):
    rows = np.array([0.0, 0.5, 1.5, 1.25, 2.0, 1.0, 0.0])
    cols = np.array([0.0, 0.5, 2.5, 2.75, 3.0, 1.5, 2.5])
    by_hand = [
        5.0,                                   # a grid point
        (5 + 10 + 40 + 50) / 4,                # the centre of four: 26.25
        (60 + 70 + 100 + 200) / 4,             # 107.5
        0.75 * (0.25 * 60 + 0.75 * 70) + 0.25 * (0.25 * 100 + 0.75 * 200),  # 94.375
        200.0,
        (50 + 60) / 2,                         # halfway along a row: 55
        (20 + 30) / 2,                         # 25
    ]
    got = _sample(GRID, np.stack([rows, cols]), cval=cval)
    np.testing.assert_allclose(got, by_hand, rtol=0, atol=1e-4)


def test_sample_clamps_at_the_edges_without_cval_and_is_cval_outside_with_it():
    rows = np.array([-1.0, 5.0, 0.5, -0.3, 2.4])
    cols = np.array([-1.0, 1.5, 9.0, 2.0, 3.2])
    clamped = [5.0, (90 + 100) / 2, (30 + 70) / 2, 20.0, 200.0]  # the nearest edge row / column, interpolated along it
    np.testing.assert_allclose(_sample(GRID, np.stack([rows, cols])), clamped, rtol=0, atol=1e-4)
    np.testing.assert_allclose(_sample(GRID, np.stack([rows, cols]), cval=0.0), [0.0] * 5, rtol=0, atol=0)


@pytest.mark.parametrize("t", [0.0, 0.1, 0.25, 0.5, 0.6, 0.75, 0.9, 1.0])
def test_smoothstep_is_3t2_minus_2t3_on_0_1(t):
    got = _smoothstep(np.array([t]))[0]
    assert got == pytest.approx(3 * t**2 - 2 * t**3, abs=1e-12)


def test_smoothstep_is_clamped_outside_0_1():
    t = np.array([-5.0, -1.0, -0.01, 1.01, 2.0, 7.5])
    np.testing.assert_array_equal(_smoothstep(t), [0, 0, 0, 1, 1, 1])


def _face_with_quad(side: float, size: int = 256) -> AlignedFace:
    """An AlignedFace whose quad is an axis-aligned square of ``side`` px (any quad, even below align_face's 4 px)."""
    quad = np.array([[10.0, 10.0], [10.0, 10.0 + side], [10.0 + side, 10.0 + side], [10.0 + side, 10.0]])
    return AlignedFace(box=(0, 0, 1, 1), landmarks=np.zeros((68, 2)), quad=quad,
                       image=np.zeros((size, size, 3), np.uint8))


@pytest.mark.parametrize("side, crop, expected", [
    (48.0, 256, 96),      # twice the face: the crop is shrunk
    (47.3, 256, 95),      # ceil(94.6)
    (128.0, 256, 256),    # exactly twice: the crop's own side
    (200.0, 256, 256),    # a large face: never enlarged
    (200.0, 1024, 400),
    (600.0, 1024, 1024),
    (3.0, 256, 8),        # never below 8 px
    (4.2, 256, 9),        # ceil(8.4)
    (3.0, 6, 6),          # and never above the crop
])
def test_work_size_is_the_crop_capped_at_twice_the_face(side, crop, expected):
    assert _work_size(_face_with_quad(side), crop) == expected


# ----------------------------------------------------------------------------- the face region
@pytest.mark.parametrize("nose_above_brows", [False, True])
def test_a_hard_edged_mask_is_the_hull_of_the_landmarks_and_the_raised_brows(nose_above_brows):
    """face_mask's docstring, computed here with scipy: the convex hull of the 68 landmarks and of the
    brows (17-26) raised by ``forehead`` times the eye-to-mouth vector (eyes 36-47, mouth corners 48 and
    54). Upright face, 1024-px mask so that a unit of the synthetic face is 4.3 px. The second case
    moves the top of the nose (27) above the brows: it is a landmark, but only the brows are raised."""
    from scipy.spatial import ConvexHull

    photo = np.zeros((400, 400, 3), np.uint8)
    lm = synthetic_landmarks((200.0, 200.0), 1.0, 0.0)
    if nose_above_brows:
        lm[27, 1] -= 30.0  # 10 units above the highest brow point
    face = align_face(photo, lm)
    size, forehead = 1024, 1.0
    up = lm[36:48].mean(axis=0) - (lm[48] + lm[54]) / 2
    assert np.allclose(up, [0.0, -65.0])  # eyes 65 units above the mouth
    pts = np.concatenate([lm, lm[17:27] + forehead * up])
    # photo -> crop pixel centres (col, row): the quad's corner q0 is the crop's top-left corner
    q = face.quad
    s = face.quad_size
    ex, ey = (q[3] - q[0]) / s, (q[1] - q[0]) / s
    crop_pts = np.stack([(pts - q[0]) @ ex, (pts - q[0]) @ ey], axis=1) / s * size - 0.5
    hull = ConvexHull(crop_pts)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    xy = np.stack([cols.ravel(), rows.ravel()], axis=1)
    # signed distance to the hull's edge lines; inside a convex hull every one is negative
    dist = (xy @ hull.equations[:, :2].T + hull.equations[:, 2]).max(axis=1).reshape(size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a hard edge is drawn, not a ramp of zero width (no division by zero)
        mask = face_mask(face, size, feather=0.0, forehead=forehead)
    assert set(np.unique(mask)) == {0.0, 1.0}
    inside, outside = dist < -1.0, dist > 1.0
    assert inside.sum() > 0.4 * size * size
    assert (mask[inside] == 1).all() and (mask[outside] == 0).all()
    assert ((mask == 1) & ~inside).sum() < 4 * size  # only the 2-px band along the edge is left open
    # the forehead is in: the top of the region is the raised brows, far above the brows themselves
    top = np.nonzero(mask.any(axis=1))[0][0]
    assert top == pytest.approx(crop_pts[68:, 1].min(), abs=1.5)
    assert crop_pts[17:27, 1].min() - top > 200


@pytest.mark.parametrize("kwargs, name", [
    ({"feather": 0.51}, "feather"), ({"feather": -0.01}, "feather"), ({"feather": True}, "feather"),
    ({"feather": "0.1"}, "feather"), ({"forehead": 3.01}, "forehead"), ({"forehead": -1.0}, "forehead"),
    ({"forehead": True}, "forehead"),
    ({"size": 0}, "size"), ({"size": 64.0}, "size"), ({"size": True}, "size"),
])
def test_mask_parameters_out_of_range_are_refused_by_name(kwargs, name):
    face = align_face(np.zeros((200, 200, 3), np.uint8), synthetic_landmarks((100.0, 100.0), 0.4, 0.0))
    with pytest.raises(InputError, match=rf"^{name} must"):
        face_mask(face, **kwargs)


def test_mask_parameters_at_their_documented_bounds_are_accepted():
    face = align_face(np.zeros((200, 200, 3), np.uint8), synthetic_landmarks((100.0, 100.0), 0.4, 0.0))
    for kwargs in ({"feather": 0.5}, {"feather": 0}, {"forehead": 3.0}, {"forehead": 0}, {"size": 8}):
        m = face_mask(face, **kwargs)
        assert m.dtype == np.float32 and 0 <= m.min() <= m.max() <= 1


def test_a_face_leaving_the_top_left_corner_is_pasted_up_to_the_photos_edge():
    """Upright face whose quad sticks out above and left of the photo: row 0 and column 0 are pasted
    where they lie inside the quad, and the quad's far edges are reached too."""
    photo = np.full((160, 200, 3), 90, np.uint8)
    face = align_face(photo, synthetic_landmarks((30.0, 25.0), 0.5, 0.0))
    s = face.quad_size
    assert face.quad[:, 0].min() < 0 and face.quad[:, 1].min() < 0
    out = paste_back(photo, face, np.full((256, 256, 3), 10, np.uint8), mask=np.ones((256, 256)))
    rx, ry = crop_fractions(face, photo.shape)
    inside = (rx > 1 / s) & (rx < 1 - 1 / s) & (ry > 1 / s) & (ry < 1 - 1 / s)
    outside = (rx < -0.5 / s) | (rx > 1 + 0.5 / s) | (ry < -0.5 / s) | (ry > 1 + 0.5 / s)
    assert inside[0].sum() > 50 and inside[:, 0].sum() > 50  # the photo's first row and column
    assert (out[inside] == 10).all() and (out[outside] == 90).all()
    # and up to its right and bottom edges: the columns and rows 2 px short of them hold inside pixels
    assert inside[:, int(np.ceil(face.quad[:, 0].max())) - 2].any()
    assert inside[int(np.ceil(face.quad[:, 1].max())) - 2].any()


def test_forehead_raises_the_top_of_the_pasted_region():
    """Hard-edged region of an upright face: its top is the brows raised by forehead x the eye-to-mouth
    length (65 units of the synthetic face), in photo pixels."""
    photo = np.zeros((300, 300, 3), np.uint8)
    scale = 1.0
    lm = synthetic_landmarks((150.0, 170.0), scale, 0.0)
    face = align_face(photo, lm)
    brow_top = lm[17:27, 1].min()
    for forehead in (0.0, 0.6, 1.0):
        w = photo_mask(face, photo.shape, feather=0.0, forehead=forehead)
        top = np.nonzero((w > 0.5).any(axis=1))[0][0]
        assert top == pytest.approx(brow_top - forehead * 65 * scale, abs=1.5), forehead
        pasted = paste_back(photo, face, np.full((256, 256, 3), 255, np.uint8), feather=0.0, forehead=forehead)
        assert np.nonzero((pasted[:, :, 0] > 127).any(axis=1))[0][0] == top


@pytest.mark.parametrize("bad", [np.ones((0, 0)), np.full((64, 64), np.nan), np.full((64, 64), -0.1),
                                 np.full((64, 64), 1.5), np.ones((64, 32)), np.ones((4, 4, 4))])
def test_a_custom_mask_that_is_not_square_or_not_in_0_1_is_refused(bad):
    photo = np.zeros((200, 200, 3), np.uint8)
    face = align_face(photo, synthetic_landmarks((100.0, 100.0), 0.4, 0.0))
    with pytest.raises(InputError, match="mask"):
        paste_back(photo, face, face.image, mask=bad)
    with pytest.raises(InputError, match="mask"):
        photo_mask(face, photo.shape, mask=bad)


def test_the_mask_fades_to_zero_across_feather_at_every_crop_border():
    """Where the region itself is solid (its hull edge more than half a feather away), the mask is the
    crop-border fade alone: smoothstep(e / w) across rows times the same across columns, ``e`` the
    distance of a pixel centre to the nearest crop edge and ``w = feather * size``. A face whose jaw,
    brows and nose (0-35) are stretched 2x about its centre spills over every border of the crop (the
    crop's quad depends only on the eyes and the mouth), so all four borders are checked."""
    from scipy.spatial import ConvexHull

    c = np.array([200.0, 200.0])
    lm = synthetic_landmarks(tuple(c), 1.0, 0.0)
    lm[:36] = c + 2.0 * (lm[:36] - c)
    face = align_face(np.zeros((400, 400, 3), np.uint8), lm)
    size, feather, forehead = 256, 0.1, 1.0
    w = feather * size
    mask = face_mask(face, size, feather=feather, forehead=forehead)
    # the region's hull in crop pixel centres, and each pixel's distance inside it
    up = lm[36:48].mean(axis=0) - (lm[48] + lm[54]) / 2
    pts = np.concatenate([lm, lm[17:27] + forehead * up])
    q, s = face.quad, face.quad_size
    ex, ey = (q[3] - q[0]) / s, (q[1] - q[0]) / s
    hull = ConvexHull(np.stack([(pts - q[0]) @ ex, (pts - q[0]) @ ey], axis=1) / s * size - 0.5)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    depth = -(np.stack([cols.ravel(), rows.ravel()], 1) @ hull.equations[:, :2].T + hull.equations[:, 2]).max(1)
    solid = depth.reshape(size, size) > w / 2 + 2
    # the fade, by hand
    idx = np.arange(size, dtype=np.float64)
    t = np.clip(np.minimum(idx + 0.5, size - 0.5 - idx) / w, 0.0, 1.0)
    fade = 3 * t**2 - 2 * t**3
    expected = fade[:, None] * fade[None, :]
    for name, band in (("top", solid[:20]), ("bottom", solid[-20:]), ("left", solid[:, :20]), ("right", solid[:, -20:])):
        assert band.sum() > 1000, name  # each border is checked over a long stretch
    assert solid.mean() > 0.5
    np.testing.assert_allclose(mask[solid], expected[solid], rtol=0, atol=1e-6)
    # and nowhere does the outermost ring of pixels get more than the fade's first step
    t0 = 0.5 / w
    ring = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    assert ring.max() <= 3 * t0**2 - 2 * t0**3 + 1e-7
