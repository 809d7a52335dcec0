"""BiSeNet face parsing: parity with the zllrunning/face-parsing.PyTorch fixture, loading, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from falco.errors import CheckpointError, InputError, ModelNotFoundError
from falco.models.parsing import (
    CLASS_NAMES,
    PARSING_MODEL,
    BiSeNetConfig,
    infer_config,
    load_bisenet,
    load_parser,
    normalize,
    parse_faces,
    tiny_bisenet_state_dict,
)
from falco.pretrained.registry import REGISTRY
from tests.conftest import parity_fixture, synth_module

FIXTURE = "bisenet_faceparsing_synth.pt"
PREFIX = "bisenet."


fixture = parity_fixture(FIXTURE)


@pytest.fixture(scope="module")
def synth_state(fixture) -> dict[str, torch.Tensor]:
    """The fixture's checkpoint: synthetic tensors under the real key names, calibrated BN buffers."""
    sw = synth_module()
    override = fixture["buffers_override"]
    state = {}
    for key, shape in fixture["keys_and_shapes"].items():
        value = override[key] if key in override else torch.from_numpy(sw.synth_tensor(key, list(shape)))
        state[key[len(PREFIX):]] = value
    return state


@pytest.fixture(scope="module")
def net(synth_state):
    return load_bisenet(synth_state)


@pytest.fixture(scope="module")
def outputs(net, fixture):
    with torch.no_grad():
        return net.forward_all(normalize(fixture["image01"]))


def _grid(t: torch.Tensor, index) -> torch.Tensor:
    return t[:, :, index][:, :, :, index]


def _outside_ties(diff: torch.Tensor, ties: torch.Tensor) -> torch.Tensor:
    keep = torch.ones_like(diff, dtype=torch.bool)
    keep[ties[:, 0], ties[:, 1], ties[:, 2]] = False
    return diff & keep


# ----------------------------------------------------------------------------- fixture parity
def test_checkpoint_layout_is_upstreams(fixture, synth_state, net):
    assert fixture["checkpoint_key_prefix"] == ""
    assert len(synth_state) == 191
    assert set(net.state_dict()) == set(synth_state)
    assert net.config == BiSeNetConfig()  # inferred from the shapes: upstream's widths
    assert list(CLASS_NAMES) == fixture["class_names"]


def test_main_logits_match_fixture(outputs, fixture):
    out = outputs[0]
    assert out.shape == (2, 19, 512, 512)
    y0, x0, y1, x1 = fixture["crop_box"]
    crop_err = (out[:, :, y0:y1, x0:x1] - fixture["expected_logits_crop"]).abs().max().item()
    grid_err = (_grid(out, fixture["grid_index"]) - fixture["expected_logits_grid"]).abs().max().item()
    print(f"main logits max abs err: crop {crop_err:.3g}, grid {grid_err:.3g}")
    assert crop_err < 1e-4 and grid_err < 1e-4
    sums = (out.double().sum((2, 3)) - fixture["expected_class_sums"]) / (512 * 512)
    assert sums.abs().max().item() < 1e-5


def test_argmax_matches_fixture_except_near_ties(outputs, fixture):
    argmax = outputs[0].argmax(1).to(torch.uint8)
    diff = argmax != fixture["expected_argmax"]
    assert _outside_ties(diff, fixture["argmax_near_ties"]).sum().item() == 0
    print(f"argmax differs at {diff.sum().item()} of {len(fixture['argmax_near_ties'])} near-tie pixels")


def test_auxiliary_heads_match_fixture(outputs, fixture):
    aux = fixture["expected_aux"]
    for out, name in ((outputs[1], "out16"), (outputs[2], "out32")):
        assert (_grid(out, aux["grid_index"]) - aux[f"{name}_grid"]).abs().max().item() < 1e-4
        sums = (out.double().sum((2, 3)) - aux[f"{name}_class_sums"]) / (512 * 512)
        assert sums.abs().max().item() < 1e-5


def test_forward_is_the_main_head(net, outputs, fixture):
    with torch.no_grad():
        main = net(normalize(fixture["image01"][:1, :, :64, :64]))
        full = net.forward_all(normalize(fixture["image01"][:1, :, :64, :64]))[0]
    assert torch.equal(main, full)


def test_parse_faces_reproduces_test_py_on_uint8_images(net, fixture):
    k = torch.round(fixture["image01"] * 255).to(torch.uint8)
    assert torch.equal(k.float().div(255), fixture["image01"])  # the fixture's images are exactly 8-bit
    labels = parse_faces(net, k.permute(0, 2, 3, 1).numpy())
    assert labels.shape == (2, 512, 512) and labels.dtype == np.uint8
    diff = torch.from_numpy(labels) != fixture["expected_argmax"]
    assert _outside_ties(diff, fixture["argmax_near_ties"]).sum().item() == 0


# ----------------------------------------------------------------------------- loading
def test_load_from_a_file_with_module_prefix(tmp_path):
    sd = tiny_bisenet_state_dict(seed=1)
    path = tmp_path / "79999_iter.pth"
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    net = load_bisenet(path)
    assert net.config == BiSeNetConfig(19, (8, 16, 24, 32), 16, 32, 32, 8)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    for key, value in net.state_dict().items():
        assert torch.equal(value, sd[key])


def test_wrong_shapes_and_missing_keys_are_checkpoint_errors():
    sd = tiny_bisenet_state_dict()
    bad = dict(sd)
    bad["ffm.conv1.weight"] = torch.zeros(3, 32, 1, 1)
    with pytest.raises(CheckpointError, match="ffm.conv1.weight"):
        load_bisenet(bad)
    missing = {k: v for k, v in sd.items() if not k.startswith("conv_out32.")}
    with pytest.raises(CheckpointError, match="missing"):
        load_bisenet(missing)
    with pytest.raises(CheckpointError, match="cp.arm16.conv.conv.weight"):
        infer_config({k: v for k, v in sd.items() if not k.startswith("cp.arm16.")})


def test_tiny_seeded_and_small():
    a, b = tiny_bisenet_state_dict(seed=3), tiny_bisenet_state_dict(seed=3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sum(v.numel() for v in a.values()) < 100_000


# ----------------------------------------------------------------------------- preprocessing
def test_parse_faces_resizes_like_test_py_and_back():
    net = load_bisenet(tiny_bisenet_state_dict())
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    labels = parse_faces(net, images, batch_size=2)
    assert labels.shape == (3, 96, 96) and labels.dtype == np.uint8 and labels.max() < 19
    assert np.array_equal(parse_faces(net, images[1]), labels[1:2])  # one [H, W, 3] image is a batch of one

    from PIL import Image
    import torch.nn.functional as F

    up = np.stack([np.asarray(Image.fromarray(im).resize((512, 512), Image.BILINEAR)) for im in images])
    with torch.no_grad():
        logits = net(normalize(torch.from_numpy(up).permute(0, 3, 1, 2).float().div(255)))
        logits = F.interpolate(logits, (96, 96), mode="bilinear", align_corners=False, antialias=True)
    assert np.array_equal(logits.argmax(1).numpy().astype(np.uint8), labels)


@pytest.mark.parametrize("bad", [np.zeros((2, 8, 8, 3), np.float32), np.zeros((8, 8), np.uint8),
                                 np.zeros((1, 8, 8, 4), np.uint8)])
def test_parse_faces_rejects_bad_images(bad):
    net = load_bisenet(tiny_bisenet_state_dict())
    with pytest.raises(InputError, match="images must be uint8 RGB"):
        parse_faces(net, bad)


# ----------------------------------------------------------------------------- registry and model sets
def test_registry_entry():
    entry = REGISTRY[PARSING_MODEL]
    assert entry.role == "parsing" and entry.filename == "79999_iter.pth" and not entry.default
    assert any("154JgKpzCPW82qINcVieuPH3fZ2e0P812" in url for url in entry.urls)
    assert entry.sha256 is None and entry.checksum_source.startswith("none published upstream")
    assert "MIT" in entry.licence and "research" in entry.licence
    assert entry.homepage == "https://github.com/zllrunning/face-parsing.PyTorch"


def test_tiny_model_set_has_a_parser(tiny_models):
    net = load_parser(tiny_models)
    assert net.config.n_classes == 19 and net.config.widths == (8, 16, 24, 32)


def test_missing_parser_says_how_to_download(tmp_path):
    with pytest.raises(ModelNotFoundError, match=f"falco models download {PARSING_MODEL}"):
        load_parser(tmp_path / "empty")
