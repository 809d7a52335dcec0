"""AnonyGAN: upstream parity (fixture), Lightning checkpoints, variants, inputs, the method and the command."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import types

import numpy as np
import pytest
import scipy.ndimage
import torch
from PIL import Image, ImageDraw

from falco.errors import CheckpointError, InputError
from falco.faces.ffhq import align_face, apply_transform
from falco.methods import get_anonymizer, method_class
from falco.methods.anonygan import CELEBA_POINTS, celeba_transform, warp_to_frame
from falco.models._checkpoint import InertObject
from falco.models.anonygan import (FRAME_SIZE, LEGAL_29, Generator, encode_landmarks, face_mask, fill_poly,
                                   load_generator, mask_polygon, tiny_anonygan_state_dict)
from falco.pretrained.registry import REGISTRY
from falco.run.image_files import load_image
from falco.run.runner import face_row
from tests.conftest import apply_method, parity_fixture, shared_path, synth_module, torch_threads


fixture = parity_fixture("anonygan_generator_synth.pt")


@pytest.fixture(scope="module")
def tiny_state() -> dict:
    return tiny_anonygan_state_dict()


def _fake_module(monkeypatch, name: str, **attrs) -> list[str]:
    """A stand-in for a module the checkpoint's writer had (Lightning), present only while saving.

    Returns:
        The module names registered (``name`` and its missing parent packages).
    """
    added = []
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        full = ".".join(parts[:i])
        if full not in sys.modules:
            monkeypatch.setitem(sys.modules, full, types.ModuleType(full))
            added.append(full)
    module = sys.modules[name]
    for key, value in attrs.items():
        value.__module__, value.__qualname__ = name, key
        setattr(module, key, value)
    return added


def _forget(monkeypatch, names: list[str]) -> None:
    for name in names:
        monkeypatch.delitem(sys.modules, name)


def lightning_checkpoint(state: dict, monkeypatch, path) -> list:
    """Save ``state`` (generator keys) as PyTorch Lightning saves AnonyGAN: ``state_dict`` with ``G.*``
    beside the discriminators, plus pickled Lightning objects; then forget Lightning again."""
    calls = []

    class AttributeDict(dict):
        pass

    class ModelCheckpoint:
        pass

    def boom(*args):  # would run if the loader executed the reduce
        calls.append(args)
        return "ran"

    class Trap:
        def __reduce__(self):
            return (boom, ("rm -rf",))

    added = _fake_module(monkeypatch, "pytorch_lightning.utilities.parsing", AttributeDict=AttributeDict)
    added += _fake_module(monkeypatch, "pytorch_lightning.callbacks.model_checkpoint", ModelCheckpoint=ModelCheckpoint)
    added += _fake_module(monkeypatch, "pytorch_lightning.trap", boom=boom)
    ckpt = {
        "epoch": 199, "global_step": 12345, "pytorch-lightning_version": "1.5.10",
        "state_dict": {**{f"G.{k}": v for k, v in state.items()},
                       "D_gan.model.0.weight": torch.zeros(8, 6, 4, 4), "D_pose.model.0.weight": torch.zeros(8, 71, 4, 4)},
        "callbacks": {ModelCheckpoint: {"best_model_path": "", "kth_value": torch.tensor(float("inf"))}},
        "hyper_parameters": AttributeDict(opt=argparse.Namespace(ch_input=6, name="anonygan")),
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 2e-4, "params": [0, 1]}]}],
        "lr_schedulers": [{"base_lrs": [2e-4], "last_epoch": 199, "lr_lambdas": [{}]}],
        "trap": Trap(),
    }
    torch.save(ckpt, path)
    _forget(monkeypatch, added)
    return calls


# --------------------------------------------------------------------- parity
def test_generator_reproduces_upstream_from_a_lightning_checkpoint(fixture, monkeypatch, tmp_path):
    synth = synth_module()
    prefix = "anonygan."  # the fixture's prefix in front of the real checkpoint key ('G.' + generator key)
    state = {}
    for key, shape in fixture["keys_and_shapes"].items():
        value = fixture["buffers_override"].get(key)
        state[key[len(prefix + "G."):]] = value if value is not None else torch.from_numpy(
            synth.synth_tensor(key, tuple(shape)))
    path = tmp_path / "anonygan.ckpt"
    calls = lightning_checkpoint(state, monkeypatch, path)
    G = load_generator(path)
    assert calls == []  # nothing of the file was executed
    upstream = dict(fixture["init_kwargs"])
    assert upstream.pop("n_downsampling") == 2  # the only value upstream's attention decoder fits
    assert G.init_kwargs == upstream == dict(ngf=64, n_blocks=6, ch_input=6, use_ch_att=True, reduced_landmarks=False)
    with torch.no_grad():
        parts = G.parts(fixture["image_input"], fixture["landmark_input"].to_dense())
    for name, key in (("output", "expected_output"), ("raw", "expected_raw"), ("att", "expected_att")):
        err = (parts[name] - fixture[key]).abs().max().item()
        assert err <= 1e-4, (name, err)


def test_encode_landmarks_reproduces_upstream(fixture):
    dense = fixture["landmark_input"].to_dense()
    got = encode_landmarks(fixture["landmarks_condition"], fixture["landmarks_source"])
    assert got.shape == (2, 136, *FRAME_SIZE) and got.dtype == torch.float32
    assert torch.equal(got, dense)
    reduced = encode_landmarks(fixture["landmarks_condition"], fixture["landmarks_source"], reduced=True)
    keep = list(LEGAL_29) + [68 + i for i in LEGAL_29]
    assert reduced.shape[1] == 58 and torch.equal(reduced, dense[:, keep])
    one = encode_landmarks(fixture["landmarks_condition"][0].float() + 0.3, fixture["landmarks_source"][0].numpy())
    assert torch.equal(one, dense[:1])  # one face, floats rounded to the pixel
    with pytest.raises(InputError, match="landmarks_source"):
        encode_landmarks(fixture["landmarks_condition"], fixture["landmarks_source"][:, :5])
    with pytest.raises(InputError, match="batch"):
        encode_landmarks(fixture["landmarks_condition"], fixture["landmarks_source"][:1])


def test_face_mask_reproduces_upstream(fixture):
    got, ref = face_mask(fixture["landmarks_source"]), fixture["mask"]
    assert got.shape == ref.shape == (2, 1, *FRAME_SIZE)
    iou = ((got > 0) & (ref > 0)).sum() / ((got > 0) | (ref > 0)).sum()
    assert iou >= 0.99
    assert torch.equal(got, ref)  # pixel for pixel: OpenCV 4.10's fillPoly


def test_fill_poly_matches_opencv_4_10_when_installed():
    cv2 = pytest.importorskip("cv2", reason="OpenCV is not a dependency; the fixture's masks check fill_poly without it")
    if cv2.__version__.split(".")[:2] != ["4", "10"]:
        pytest.skip(f"OpenCV {cv2.__version__}: fill_poly follows 4.10 (later versions differ on some right edges)")
    rng = np.random.default_rng(3)
    for _ in range(300):
        n, height, width = int(rng.integers(3, 20)), int(rng.integers(10, 120)), int(rng.integers(10, 120))
        pts = np.stack([rng.integers(0, width, n), rng.integers(0, height, n)], 1)
        ref = np.zeros((height, width), np.uint8)
        cv2.fillPoly(ref, pts=[pts], color=255)
        assert np.array_equal(fill_poly(pts, height, width), ref > 0)


def test_fill_poly_fills_the_inside_and_its_outline():
    square = fill_poly([(2, 2), (7, 2), (7, 6), (2, 6)], 10, 10)
    assert square.sum() == 6 * 5 and square[2:7, 2:8].all()
    tri = fill_poly([(0, 0), (9, 0), (0, 9)], 10, 10)
    assert tri[0].all() and tri[:, 0].all() and not tri[9, 9] and tri.sum() == 55


# ------------------------------------------------------------------ variants
@pytest.mark.parametrize("kwargs", [dict(ch_input=3), dict(reduced_landmarks=True), dict(use_ch_att=False),
                                    dict(ngf=8, n_blocks=3, ch_input=3, reduced_landmarks=True, use_ch_att=False)])
def test_variants_are_read_from_the_shapes(kwargs):
    full = {**dict(ngf=4, n_blocks=2, ch_input=6, use_ch_att=True, reduced_landmarks=False), **kwargs}
    state = Generator(**full).state_dict()
    G = load_generator({"state_dict": {f"G.{k}": v for k, v in state.items()}, "epoch": 1})
    assert G.init_kwargs == full
    assert load_generator(state).init_kwargs == full  # a bare generator state dict too
    image = torch.rand(1, full["ch_input"], 8, 12) * 2 - 1
    out = G(image, torch.zeros(1, G.landmark_channels, 8, 12))
    assert out.shape == (1, 3, 8, 12) and out.abs().max() <= 1


def test_bad_checkpoints_are_refused(tiny_state):
    state = tiny_state
    with pytest.raises(CheckpointError, match="stream2_down.1.weight"):
        load_generator({k: v for k, v in state.items() if not k.startswith("stream2_down.1")})
    wrong = dict(state, **{"stream2_down.1.weight": torch.zeros(4, 100, 7, 7)})
    with pytest.raises(CheckpointError, match="100 landmark channels"):
        load_generator(wrong)
    with pytest.raises(CheckpointError, match="missing 1 keys"):
        load_generator({k: v for k, v in state.items() if k != "conv_att3.weight"})


def test_only_lightning_globals_become_stand_ins(tmp_path, monkeypatch, tiny_state):
    class Payload:
        pass

    added = _fake_module(monkeypatch, "evil", Payload=Payload)
    torch.save({"state_dict": {f"G.{k}": v for k, v in tiny_state.items()}, "x": Payload()},
               tmp_path / "evil.ckpt")
    _forget(monkeypatch, added)
    with pytest.raises(CheckpointError, match="evil.Payload"):
        load_generator(tmp_path / "evil.ckpt")


def test_lightning_objects_are_kept_inert(tmp_path, monkeypatch, tiny_state):
    from falco.models._checkpoint import load_checkpoint
    from falco.models.anonygan import LIGHTNING_GLOBALS

    path = tmp_path / "small.ckpt"
    calls = lightning_checkpoint(tiny_state, monkeypatch, path)
    ckpt = load_checkpoint(path, inert_globals=LIGHTNING_GLOBALS)
    assert calls == [] and isinstance(ckpt["trap"], InertObject) and ckpt["trap"].args == ("rm -rf",)
    assert type(ckpt["hyper_parameters"]) is dict and isinstance(ckpt["hyper_parameters"]["opt"], InertObject)
    assert ckpt["hyper_parameters"]["opt"].state == {"ch_input": 6, "name": "anonygan"}
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint(path)  # without the stand-ins: refused as before


# ------------------------------------------------------------------ alignment
def test_celeba_alignment_puts_eyes_and_mouth_where_celeba_does(pair):
    _, faces = pair
    lm = faces[0].landmarks
    M = celeba_transform(lm)
    got = apply_transform(M, np.stack([lm[36:42].mean(0), lm[42:48].mean(0), (lm[48] + lm[54]) / 2]))
    target = (CELEBA_POINTS + 0.5) * [180 / 178, 220 / 218] - 0.5
    assert np.abs(got - target).max() < 3.0  # a least-squares similarity of three points
    # a face that is exactly a similarity of CelebA's points lands on them
    sim = np.array([[0.8, -0.3, 40.0], [0.3, 0.8, 25.0], [0, 0, 1]])
    moved = apply_transform(sim, lm)
    assert np.allclose(apply_transform(celeba_transform(moved), moved), apply_transform(M, lm), atol=1e-6)
    with pytest.raises(InputError, match="degenerate"):
        celeba_transform(np.zeros((68, 2)))


def test_warp_to_frame_samples_the_photo_at_the_frame(pair):
    photo, faces = pair
    M = celeba_transform(faces[0].landmarks)
    frame = warp_to_frame(photo, M)
    assert frame.shape == (*FRAME_SIZE, 3) and frame.dtype == np.uint8
    smooth = scipy.ndimage.gaussian_filter(photo.astype(np.float32), (4, 4, 0))
    inv = np.linalg.inv(M)
    v, u = np.mgrid[60:160, 40:140]
    xy = apply_transform(inv, np.stack([u.ravel(), v.ravel()], 1))
    ref = np.stack([scipy.ndimage.map_coordinates(smooth[..., c], [xy[:, 1], xy[:, 0]], order=1) for c in range(3)], 1)
    warped = warp_to_frame(smooth.round().astype(np.uint8), M)[60:160, 40:140].reshape(-1, 3).astype(np.float32)
    assert np.abs(warped - ref).mean() < 1.5  # a half-pixel shift would cost several grey levels


# ------------------------------------------------------------------ the method
def _allowed(shape, face, record, dilate: int = 3) -> np.ndarray:
    """Upstream's mask polygon of a face, drawn in the photo through the record's frame, dilated."""
    M = np.vstack([np.asarray(record["anonygan_frame"]), [0, 0, 1]])
    poly = apply_transform(np.linalg.inv(M), mask_polygon(np.rint(apply_transform(M, face.landmarks))))
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p + 0.5) for p in poly], fill=1)
    return scipy.ndimage.binary_dilation(np.asarray(canvas, bool), iterations=dilate)


def test_the_method_declares_its_models():
    cls = method_class("anonygan")
    assert cls.roles == ("anonygan", "generator") and not cls.can_redo
    assert REGISTRY["anonygan"].role == "anonygan" and REGISTRY["anonygan"].filename == "anonygan.ckpt"
    assert "1FWMaBIQfm1-1fLy0ZG7eu--VD91OipJP" in REGISTRY["anonygan"].urls[0]


def test_anonygan_on_a_photo(tiny_models, pair, one_thread):
    photo, faces = pair
    anon = get_anonymizer("anonygan", models=tiny_models, seed=5)
    out, records = apply_method(anon, photo, faces)
    allowed = np.zeros(photo.shape[:2], bool)
    for face, rec in zip(faces, records):
        assert rec["method"] == "anonygan" and rec["status"] == "done"
        cond = rec["condition"]
        assert cond["source"] == "stylegan2" and 0 <= cond["index"] < 64 and cond["seed"] == 5
        assert cond["landmarks"] in ("dlib", "mean-shape")  # the tiny set's fakes are noise: mean shape
        face_row(face, **rec)
        region = _allowed(photo.shape, face, rec)
        allowed |= region
        core = scipy.ndimage.binary_erosion(region, iterations=8)
        assert (out != photo).any(-1)[core].mean() > 0.9  # the face is regenerated
    assert not (out != photo).any(-1)[~allowed].any(), "pixels outside the face regions changed"
    again, records2 = get_anonymizer("anonygan", models=tiny_models, seed=5).apply(photo, faces, [None, None])
    assert np.array_equal(again, out) and records2 == records
    alone, _ = anon.apply(photo, faces[:1], [None])
    changed = (alone != photo).any(-1)
    assert np.array_equal(alone[changed], out[changed])  # a face's result does not depend on the others
    other = get_anonymizer("anonygan", models=tiny_models, seed=6).apply(photo, faces[:1], [None])[1][0]
    assert other["condition"]["index"] != records[0]["condition"]["index"]  # the seed picks the fake


def test_anonygan_with_a_given_condition(tiny_models, pair, one_thread, tmp_path):
    photo, faces = pair
    path = tmp_path / "nobody.png"
    Image.fromarray(load_image(shared_path("data", "faces", "2008_001322.jpg"))).save(path)
    anon = get_anonymizer("anonygan", models=tiny_models, condition=str(path))
    _, records = anon.apply(photo, faces, [None, None])
    assert [r["condition"]["source"] for r in records] == ["file", "file"]
    assert records[0]["condition"]["path"] == str(path) and len(records[0]["condition"]["sha256"]) == 64
    assert anon.settings()["condition"]["source"] == "file"
    blank = tmp_path / "blank.png"
    Image.new("RGB", (64, 64), (128, 128, 128)).save(blank)
    with pytest.raises(InputError, match="no face"):
        get_anonymizer("anonygan", models=tiny_models, condition=str(blank))
    for bad in (dict(conditions=0), dict(truncation=2.0), dict(condition=3), dict(ciagan_id=1)):
        with pytest.raises(InputError):
            get_anonymizer("anonygan", models=tiny_models, **bad)


def test_anonygan_conditions_come_from_the_bank_when_given(tiny_models, tiny_bank, pair, one_thread, tmp_path):
    """With --bank the pool is the bank's fakes: fake i is rendered from the bank's stored code."""
    import torch

    from falco.bank import Bank
    from falco.config import AnonymizeConfig
    from falco.methods import method_class
    from falco.models.zoo import load_role

    cfg = AnonymizeConfig(input=tmp_path, out=tmp_path / "o", method="anonygan", models=tiny_models, bank=tiny_bank)
    anon = method_class("anonygan").from_config(cfg, device=torch.device("cpu"), echo=print)
    bank = Bank.open(tiny_bank)
    assert anon.conditions == len(bank) and anon.settings()["condition"]["bank"] == str(bank.path)
    G = load_role("generator", tiny_models)
    with torch.no_grad():
        want = G.synthesis(bank.ws[5][None, None].repeat(1, G.num_ws, 1), noise_mode="const")
    want = ((want.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(anon._render(5, 0), want)
    _, records = anon.apply(*pair[:1], pair[1], [None] * len(pair[1]))
    assert all(0 <= r["condition"]["index"] < len(bank) for r in records)


def test_anonygan_covers_a_face_it_cannot_align(tiny_models, pair, one_thread):
    photo, faces = pair
    lm = faces[0].landmarks.copy()
    lm[36:48] = lm[48:60].mean(0)  # eyes on the mouth: no similarity
    lm[48:60] = lm[36:48]
    odd = align_face(photo, faces[0].landmarks, 256, box=faces[0].box)
    object.__setattr__(odd, "landmarks", lm)
    _, records = get_anonymizer("anonygan", models=tiny_models).apply(photo, [odd, faces[1]], [None, None])
    assert records[0]["status"] == "fallback" and records[0]["method"] == "blur" and "degenerate" in records[0]["reason"]
    assert records[1]["status"] == "done"


def test_falco_anonymize_with_anonygan(tiny_models, tmp_path):
    from falco.cli import main
    from falco.faces.paste import photo_mask
    from falco.run.manifest import RunManifest

    src = tmp_path / "in"
    src.mkdir()
    names = ("2008_001009.jpg", "2008_001322.jpg")
    for name in names:
        shutil.copy(shared_path("data", "faces", name), src / name)
    out = tmp_path / "out"
    with torch_threads(1), pytest.raises(SystemExit) as exit_info:
        main(["anonymize", str(src), "--out", str(out), "--method", "anonygan", "--models", str(tiny_models),
              "--device", "cpu", "--format", "png", "--no-progress", "--method-option", "conditions=8"])
    assert exit_info.value.code in (0, 1)  # 1 only if the guard had to cover a face
    with RunManifest(out) as m:
        rows = m.faces()
        runs = m.runs()
    faces = [r for r in rows if r["status"] != "missed"]
    assert len(faces) == 5
    for name in names:
        photo = load_image(src / name)
        result = load_image(out / name.replace(".jpg", ".png"))
        allowed = np.zeros(photo.shape[:2], bool)
        for row in (r for r in rows if r["source"] == name):
            face = align_face(photo, np.asarray(row["landmarks"]), 64, box=tuple(row["box"]))
            allowed |= scipy.ndimage.binary_dilation(photo_mask(face, photo.shape, feather=0) > 0, iterations=2)
            if "anonygan_frame" in row:
                allowed |= _allowed(photo.shape, face, row)
        assert (result != photo).any(-1).sum() > 1000
        assert not (result != photo).any(-1)[~allowed].any(), f"{name}: pixels outside the face regions changed"
    for row in faces:
        assert row["method"] == "anonygan" and row["status"] in ("done", "fallback")
        assert row["guard"]["verdict"] in ("safe", "fallback")  # the guard checked every face
        assert row["condition"]["source"] == "stylegan2" and 0 <= row["condition"]["index"] < 8
    assert sum(r["status"] == "done" for r in faces) >= 3
    assert json.dumps(runs[-1]).count('"anonygan"') >= 1
