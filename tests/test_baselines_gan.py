"""CIAGAN and DeepPrivacy v1: upstream parity (fixtures), preprocessing, loading, anonymizing photos."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import torch
from PIL import Image, ImageDraw

from falco.align import align_face
from falco.methods import get_anonymizer
from falco.methods.ciagan import (
    CiaganCrop,
    ciagan_crop,
    landmark_image,
    mask_image,
    network_inputs,
)
from falco.models.ciagan_net import load_generator as load_ciagan
from falco.models.ciagan_net import tiny_ciagan_state_dict
from falco.methods.deepprivacy import expand_bbox, keypoints_from_landmarks
from falco.methods.deepprivacy import network_inputs as dp_inputs
from falco.models.deepprivacy_net import (
    CONFIG_GLOBALS,
    pose_channel_images,
    tiny_deepprivacy_state_dict,
)
from falco.models.deepprivacy_net import load_generator as load_deepprivacy
from falco.errors import CheckpointError, InputError
from falco.faces.detect import HogDetector
from falco.run.image_files import load_image
from falco.pretrained.registry import REGISTRY
from falco.run.runner import face_row
from tests.conftest import apply_method, load_fixture, shared_path, synth_module


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> Path:
    """A model directory with tiny CIAGAN and DeepPrivacy checkpoints in upstream formats (as in the tiny set)."""
    d = tmp_path_factory.mktemp("tiny-baselines")
    torch.save(tiny_ciagan_state_dict(seed=0), d / REGISTRY["ciagan"].filename)
    torch.save({"running_average_generator": tiny_deepprivacy_state_dict(seed=0), "global_step": 0},
               d / REGISTRY["deepprivacy"].filename)
    return d


# --------------------------------------------------------------------- parity
def test_ciagan_generator_reproduces_upstream():
    fx = load_fixture("ciagan_generator_synth.pt")
    synth = synth_module()
    state = {k: torch.from_numpy(synth.synth_tensor(k, tuple(s))) for k, s in fx["keys_and_shapes"].items()}
    G = load_ciagan(state)  # keys carry the fixture's 'ciagan.' prefix: stripped by the loader
    assert (G.num_classes, G.img_size, G.in_dim) == (1200, 128, 6)
    with torch.no_grad():
        out = G(fx["input"], fx["onehot"])
    expected = fx["expected_output"]
    err = (out - expected).abs().max().item()
    assert err <= 1e-4 * max(1.0, expected.abs().max().item()), err


def test_deepprivacy_generator_reproduces_upstream():
    with torch.serialization.safe_globals(CONFIG_GLOBALS):  # the fixture pickles upstream's ConfigDict
        fx = load_fixture("deepprivacy_v1_generator_synth.pt")
    synth = synth_module()
    state = {k: torch.from_numpy(synth.synth_tensor(k, tuple(s))) for k, s in fx["keys_and_shapes"].items()}
    G = load_deepprivacy(state)
    assert G.z_shape == tuple(fx["config"]["generator"]["z_shape"]) and G.channels[64] == 256
    with torch.no_grad():
        out = G(fx["condition"], fx["mask"], fx["landmarks"], z=fx["z"])
    expected = fx["expected_output"]
    err = (out - expected).abs().max().item()
    assert err <= 1e-4 * expected.abs().max().item(), err


# ------------------------------------------------------------ CIAGAN preprocessing
def test_ciagan_landmark_image_and_mask_match_upstream_prepared_data():
    """Our landmark drawing and face mask against upstream's ``lndm/`` and ``msk/`` images.

    The prepared CelebA data in ../shared/data/celeba-ids was drawn in the frame of the
    178 x 218 ``clr/`` image itself (the crop is the identity, ``CiaganCrop.whole()``),
    so landmarks detected on ``clr/`` are drawn with that crop. Measured over all 150 photos
    (upstream's files are JPEGs; a pixel counts as line where its darkest channel is < 200,
    as mask where it is < 128):

    - landmark image: the line pixels are exactly upstream's in all 150 photos (IoU 1.0; our
      landmarks and OpenCV's 8-connected line rasteriser both reproduce upstream's), mean
      absolute difference 0.56 grey levels (JPEG noise);
    - mask: 99.4 % of the pixels agree (IoU 0.965 mean, 0.958 worst, 233 of 38,804 pixels
      differ on average), mean absolute difference 1.57 grey levels. The difference is
      systematic: upstream's top edge starts 5 px higher at the side of the higher brow point
      (19 or 24); with that change the masks agree to IoU 0.998 (0.994 worst). The published
      ``process_data.py`` does not do it, and we follow the published script.

    This test checks 10 photos (two per person).
    """
    root = shared_path("data", "celeba-ids")
    files = [p for d in sorted((root / "clr").iterdir()) for p in sorted(d.glob("*.jpg"))[:2]]
    assert len(files) == 10
    det, whole = HogDetector(1), CiaganCrop.whole()
    assert (whole.t_x, whole.t_y, whole.ratio_w, whole.ratio_h) == (0, 0, 1.0, 1.0)
    ious = []
    for path in files:
        rel = path.relative_to(root / "clr")
        img = load_image(path)
        (box, _), *_ = sorted(det.detect(img), key=lambda d: d[0][0] - d[0][2])
        lm = det.landmarks(img, box)
        ours_l, ours_m = landmark_image(lm, whole), mask_image(lm, whole)
        assert ours_l.shape == (218, 178, 3) and ours_m.shape == (218, 178)
        up_l = np.asarray(Image.open(root / "lndm" / rel).convert("RGB"))
        up_m = np.asarray(Image.open(root / "msk" / rel).convert("L"))
        a, b = ours_l.min(-1) < 200, up_l.min(-1) < 200
        assert a.sum() > 150 and (ours_l[a] == (0, 0, 255)).all()
        assert np.array_equal(a, b), (rel, int((a != b).sum()))
        assert np.abs(ours_l.astype(int) - up_l).mean() < 1.5
        ma, mb = ours_m < 128, up_m < 128
        ious.append((ma & mb).sum() / (ma | mb).sum())
        assert ious[-1] > 0.93 and (ma != mb).mean() < 0.015, (rel, ious[-1])
    assert np.mean(ious) > 0.955


def test_ciagan_crop_and_inputs(pair):
    photo, faces = pair
    face = faces[0]
    crop = ciagan_crop(face.landmarks)
    lm = face.landmarks
    assert crop.h_r == int((lm[42, 0] - lm[39, 0]) * 5) and crop.w_r == int(crop.h_r / 218 * 178)
    inp = network_inputs(photo, lm)
    assert inp["face"].shape == inp["lndm"].shape == (3, 128, 128) and inp["mask"].shape == (1, 128, 128)
    assert set(inp["mask"].unique().tolist()) == {0.0, 1.0}
    assert 0.15 < inp["mask"].mean() < 0.6  # the face, not the whole crop
    assert float(inp["face"].min()) >= 0 and float(inp["face"].max()) <= 1
    # the frame maps the eye centre to the middle of the 128 grid
    uv = crop.frame().to_frame(np.array([[crop.c_x + 0.0, crop.c_y + 0.0]]))[0]
    assert np.allclose(uv, 63.5, atol=1.0)
    bad = lm.copy()
    bad[[39, 42]] = bad[[42, 39]]
    with pytest.raises(InputError, match="CIAGAN cannot crop"):
        ciagan_crop(bad)


# ----------------------------------------------------------- DeepPrivacy preprocessing
def test_deepprivacy_keypoints_follow_coco_order(pair):
    _, faces = pair
    lm = faces[0].landmarks
    kp = keypoints_from_landmarks(lm)
    nose, leye, reye, lear, rear, lsh, rsh = kp
    assert np.allclose(nose, lm[30])
    assert leye[0] > nose[0] > reye[0]  # the person's left is the image's right
    assert lear[0] > leye[0] and rear[0] < reye[0]
    assert min(lsh[1], rsh[1]) > lm[8, 1] and lsh[0] > rsh[0]
    assert np.isnan(keypoints_from_landmarks(lm, "omit")[5:]).all()
    with pytest.raises(InputError, match="shoulders"):
        keypoints_from_landmarks(lm, "guess")


def test_deepprivacy_inputs_and_expansion(pair):
    photo, faces = pair
    inp = dp_inputs(photo, faces[0])
    box, exp = inp["box"], inp["expanded"]
    assert exp[2] - exp[0] == exp[3] - exp[1]  # square
    assert (exp[:2] <= box[:2]).all() and (exp[2:] >= box[2:]).all()
    assert (box[:2] <= np.array(faces[0].box[:2]).clip(0)).all()  # widened, never narrowed
    side = exp[2] - exp[0]
    assert abs(side - (max(box[2] - box[0], box[3] - box[1]) + 2 * int(max(box[2] - box[0], box[3] - box[1]) * 0.35))) <= 2
    mask = inp["mask"][0]
    assert inp["condition"].shape == (3, 128, 128) and (inp["condition"][:, mask == 0] == 0).all()
    assert 0.2 < 1 - mask.mean() < 0.7
    lmk = inp["landmarks"]
    assert lmk.shape == (14,) and float(lmk.min()) >= 0 and float(lmk.max()) <= 1
    # upstream's rules: squared inside the photo, growth limited by the room left ...
    assert expand_bbox(np.array([0, 0, 40, 60]), (60, 80, 3)).tolist() == [0, 0, 60, 60]
    # ... and a box that cannot be squared inside the photo gets the simple 70 % expansion, zero padded
    assert expand_bbox(np.array([0, 0, 70, 50]), (60, 80, 3)).tolist() == [-24, -34, 94, 84]


def test_pose_channels_drop_keypoints_outside():
    lm = torch.tensor([[0.5, 0.5, 0.99, 0.0, 1.0, 0.5, -0.1, 0.2, 0.25, 0.75, 0.0, 1.0, 0.1, 0.1]])
    imgs = pose_channel_images(lm, (4, 8))
    assert imgs[4].shape == (1, 7, 4, 4)
    assert imgs[8][0].sum((1, 2)).tolist() == [1, 1, 0, 0, 1, 0, 1]
    assert imgs[4][0, 0, 2, 2] == 1 and imgs[8][0, 1, 0, 7] == 1 and imgs[8][0, 4, 6, 2] == 1


# ------------------------------------------------------------------- loading
def test_ciagan_loader_errors(tmp_path):
    state = tiny_ciagan_state_dict(ngf=4, num_classes=8)
    G = load_ciagan(state)
    assert (G.ngf, G.num_classes) == (4, 8) and not G.training
    path = tmp_path / "modelG.pth"
    torch.save(state, path)
    assert torch.equal(load_ciagan(path).conv_end[0].weight, G.conv_end[0].weight)
    missing = {k: v for k, v in state.items() if k != "res2.in1.weight"}
    with pytest.raises(CheckpointError, match="res2.in1.weight"):
        load_ciagan(missing)
    wrong = dict(state)
    wrong["res1.conv1.conv2d.bias"] = torch.zeros(5)
    torch.save(wrong, path)
    with pytest.raises(CheckpointError, match=r"modelG\.pth.*res1\.conv1\.conv2d\.bias.*\[5\]"):
        load_ciagan(path)
    with pytest.raises(CheckpointError, match="missing.pth.*not found"):
        load_ciagan(tmp_path / "missing.pth")


def test_deepprivacy_loads_upstream_trainer_checkpoints(tmp_path, monkeypatch):
    """A trainer checkpoint with a pickled ConfigDict (as upstream writes it) loads with weights_only."""
    state = tiny_deepprivacy_state_dict(width=4, z_channels=4)
    mod = types.ModuleType("deep_privacy.config.base")

    class ConfigDict(dict):
        def __getstate__(self):
            return self

    ConfigDict.__module__, ConfigDict.__qualname__ = "deep_privacy.config.base", "ConfigDict"
    mod.ConfigDict = ConfigDict
    for name in ("deep_privacy", "deep_privacy.config", "deep_privacy.config.base"):
        monkeypatch.setitem(sys.modules, name, mod if name.endswith("base") else types.ModuleType(name))
    cfg = ConfigDict(models=ConfigDict(max_imsize=128))
    path = tmp_path / "step_42000000.ckpt"
    torch.save({"running_average_generator": state, "G": state, "global_step": 42, "cfg": cfg}, path)
    for name in ("deep_privacy", "deep_privacy.config", "deep_privacy.config.base"):
        monkeypatch.delitem(sys.modules, name)
    G = load_deepprivacy(path)
    assert G.z_shape == (4, 4, 4) and G.channels[128] == 4
    with pytest.raises(CheckpointError, match="decoder.basic_block0.layers.3.weight"):
        load_deepprivacy({k: v for k, v in state.items() if "basic_block0" not in k})
    wrong = dict(state, **{"to_rgb.bias": torch.zeros(4)})
    with pytest.raises(CheckpointError, match=r"to_rgb\.bias.*\[4\]"):
        load_deepprivacy(wrong)


# ------------------------------------------------------------ anonymizing photos
def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a != b).any(-1)


@pytest.mark.parametrize("method", ["ciagan", "deepprivacy"])
def test_gan_methods_on_a_photo(tiny_models, pair, one_thread, method):
    photo, faces = pair
    options = {"truncation": 3.0} if method == "deepprivacy" else {}
    anon = get_anonymizer(method, models=tiny_models, seed=7, device="cpu", **options)
    out, records = apply_method(anon, photo, faces)
    allowed = np.zeros(photo.shape[:2], bool)
    for face, rec in zip(faces, records):
        assert rec["method"] == method and rec["status"] == "done"
        face_row(face, **rec)  # records merge into the run manifest's face rows without clashing
        if method == "deepprivacy":
            x0, y0, x1, y1 = rec["region_box"]
            allowed[y0:y1, x0:x1] = True
            assert _changed(out[y0:y1, x0:x1], photo[y0:y1, x0:x1]).mean() > 0.9
        else:  # upstream's mask polygon (jaw line closed at the brows' height), drawn in the photo, +3 px
            lm = face.landmarks
            poly = [(lm[0, 0], lm[19, 1]), *map(tuple, lm[:17]), (lm[16, 0], lm[24, 1])]
            canvas = Image.new("L", photo.shape[1::-1], 0)
            ImageDraw.Draw(canvas).polygon(poly, fill=1)
            allowed |= scipy.ndimage.binary_dilation(np.asarray(canvas, bool), iterations=3)
            assert 0 <= rec["ciagan_id"] < 16
            lm = face.landmarks  # the jaw line's inside is CIAGAN's mask: it must be regenerated
            cx, cy = int(lm[27:31, 0].mean()), int((lm[30, 1] + lm[8, 1]) / 2)
            assert _changed(out[cy - 3 : cy + 3, cx - 3 : cx + 3], photo[cy - 3 : cy + 3, cx - 3 : cx + 3]).all()
    assert not _changed(out, photo)[~allowed].any(), "pixels outside the generated regions changed"


@pytest.mark.parametrize("method", ["ciagan", "deepprivacy"])
def test_gan_results_do_not_depend_on_batch_composition(tiny_models, pair, one_thread, method):
    photo, faces = pair
    options = {"truncation": 3.0} if method == "deepprivacy" else {}
    anon = get_anonymizer(method, models=tiny_models, seed=11, **options)
    together, records = anon.apply(photo, faces, [None] * 2)
    alone = []
    for i, face in enumerate(faces):
        out, rec = anon.apply(photo, [face], [None])
        assert rec[0] == records[i]
        ch = _changed(out, photo)
        assert ch.sum() > 500 and np.array_equal(out[ch], together[ch]), f"face {i} differs"
        alone.append(out)
    other, _ = get_anonymizer(method, models=tiny_models, seed=12, **options).apply(photo, faces[:1], [None])
    assert not np.array_equal(other, alone[0])  # the seed matters (random identity / z)


def test_ciagan_fixed_identity_and_bad_options(tiny_models, pair, one_thread):
    photo, faces = pair
    anon = get_anonymizer("ciagan", models=tiny_models, ciagan_id=3)
    _, records = anon.apply(photo, faces, [None, None])
    assert [r["ciagan_id"] for r in records] == [3, 3] and anon.settings()["ciagan_id"] == 3
    for bad in (16, -1, "3", True):
        with pytest.raises(InputError, match="ciagan_id"):
            get_anonymizer("ciagan", models=tiny_models, ciagan_id=bad)
    with pytest.raises(InputError, match="truncation"):
        get_anonymizer("deepprivacy", models=tiny_models, truncation=-1)
    with pytest.raises(InputError, match="'deepprivacy'.*'ciagan_id'"):
        get_anonymizer("deepprivacy", models=tiny_models, ciagan_id=3)


def test_ciagan_covers_a_face_it_cannot_crop(tiny_models, pair, one_thread):
    photo, faces = pair
    lm = faces[0].landmarks.copy()
    lm[[39, 42]] = lm[[42, 39]]  # inner eye corners swapped: no CIAGAN crop
    odd = align_face(photo, lm, 256, box=faces[0].box)
    _, records = get_anonymizer("ciagan", models=tiny_models).apply(photo, [odd, faces[1]], [None, None])
    assert records[0]["status"] == "fallback" and records[0]["method"] == "blur" and "CIAGAN" in records[0]["reason"]
    assert records[1]["status"] == "done"
    skipped, rec = get_anonymizer("ciagan", models=tiny_models, on_fail="skip").apply(photo, [odd], [None])
    assert rec[0]["status"] == "failed" and np.array_equal(skipped, photo)


def test_deepprivacy_zero_z_by_default(tiny_models, pair, one_thread):
    photo, faces = pair
    a = get_anonymizer("deepprivacy", models=tiny_models, seed=1).apply(photo, faces, [None, None])[0]
    b = get_anonymizer("deepprivacy", models=tiny_models, seed=2).apply(photo, faces, [None, None])[0]
    assert np.array_equal(a, b)  # upstream's truncation 0: z = 0, the seed does not matter
