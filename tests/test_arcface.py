"""ArcFace IR-SE50 identity encoder: parity with TreB1eN's Backbone, crop rule, loading, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from falco.errors import CheckpointError, InputError
from falco.models.arcface import (
    Backbone,
    IdentityEncoder,
    IResNet,
    load_arcface,
    resize_to_face,
    tiny_arcface,
)
from falco.models.irse import TINY_UNITS, TINY_WIDTHS
from tests.conftest import load_fixture, parity_fixture, synth_module

PREFIX = "arcface."


fixture = parity_fixture("arcface_irse50_synth.pt")


@pytest.fixture(scope="module")
def synth_state(fixture) -> dict[str, torch.Tensor]:
    """The fixture network's synthetic weights, under TreB1eN key names (no prefix)."""
    sw = synth_module()
    out = {}
    for key, shape in fixture["keys_and_shapes"].items():
        assert key.startswith(PREFIX)
        out[key[len(PREFIX):]] = torch.from_numpy(sw.synth_tensor(key, list(shape)))
    return out


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    net = Backbone(TINY_UNITS, "ir_se", widths=TINY_WIDTHS)
    with torch.no_grad():  # non-trivial BN statistics so eval mode matters
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.state_dict()


def _faces(n: int = 2, size: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_fixture_parity_irse50(fixture, synth_state) -> None:
    assert "35:223, 32:220" in fixture["crop"] and "112" in fixture["crop"]
    E = load_arcface(synth_state)
    assert isinstance(E.facenet, Backbone)
    assert (E.facenet.num_layers, E.facenet.mode, E.facenet.widths) == (50, "ir_se", (64, 128, 256, 512))
    assert set(E.facenet.state_dict()) == {k[len(PREFIX):] for k in fixture["keys_and_shapes"]}
    with torch.no_grad():
        emb = E(fixture["input_256"])
    ref = fixture["expected_embedding"]
    assert emb.shape == ref.shape == (2, 512)
    err = float((emb - ref).abs().max())
    assert err < 1e-4, f"max abs error {err:.3g}"
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    # The same network reached through embed_112 on the explicit crop.
    crop = fixture["input_256"][:, :, 35:223, 32:220]
    pooled = torch.nn.functional.adaptive_avg_pool2d(crop, (112, 112))
    with torch.no_grad():
        assert float((E.embed_112(pooled) - ref).abs().max()) < 1e-4
    # DataParallel-prefixed checkpoints load too.
    E2 = load_arcface({"module." + k: v for k, v in synth_state.items()})
    assert torch.equal(E2.facenet.output_layer[3].weight, E.facenet.output_layer[3].weight)


def test_identity_encoder_is_frozen_and_differentiable(tiny_state) -> None:
    E = load_arcface(tiny_state)
    assert not E.training and not E.facenet.training
    assert all(not p.requires_grad for p in E.parameters())
    E.train()  # a loss network keeps its BatchNorm statistics
    assert not E.facenet.training
    x = _faces(2).requires_grad_(True)
    emb = E(x)
    assert emb.shape == (2, 512)
    (emb[0] @ emb[1]).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # Only the crop region influences the embedding.
    assert x.grad[:, :, :35].abs().max() == 0 and x.grad[:, :, :, 220:].abs().max() == 0
    assert all(p.grad is None for p in E.parameters())


def test_unfrozen_encoder_trains() -> None:
    E = load_arcface(tiny_arcface().facenet.state_dict(), frozen=False)
    assert all(p.requires_grad for p in E.parameters())
    E.train()
    assert E.facenet.training


def test_load_from_path_matches_state_dict(tmp_path: Path, tiny_state) -> None:
    path = tmp_path / "model_ir_se50.pth"
    torch.save(tiny_state, path)
    x = _faces(2)
    with torch.no_grad():
        a = load_arcface(path)(x)
        b = load_arcface(str(path))(x)
        c = load_arcface(tiny_state)(x)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_non_256_inputs_are_resized_then_cropped(tiny_state) -> None:
    E = load_arcface(tiny_state)
    x512 = _faces(1, 512)
    with torch.no_grad():
        direct = E(x512)
        resized = E(torch.nn.functional.interpolate(x512, size=(256, 256), mode="bilinear",
                                                    align_corners=False, antialias=True))
    assert torch.allclose(direct, resized, atol=1e-6)
    # Non-square: shorter side to 256, centre crop (FALCO's Resize(256) + CenterCrop(256)).
    wide = _faces(1, 256).repeat(1, 1, 1, 2)[..., :300]
    assert resize_to_face(wide).shape[-2:] == (256, 256)
    assert torch.equal(resize_to_face(wide), wide[..., 22:278])
    x256 = _faces(1)
    assert resize_to_face(x256) is x256


def test_bad_inputs_raise_input_error(tiny_state) -> None:
    E = load_arcface(tiny_state)
    with pytest.raises(InputError, match=r"\[B, 3, H, W\]"):
        E(torch.zeros(3, 256, 256))
    with pytest.raises(InputError, match="112"):
        E.embed_112(torch.zeros(1, 3, 128, 128))


def test_tiny_arcface_factory_roundtrip(tmp_path: Path) -> None:
    E = tiny_arcface()
    assert isinstance(E, IdentityEncoder) and E.facenet.units == (1, 1, 1, 1)
    path = tmp_path / "model_ir_se50.pth"
    torch.save(E.facenet.state_dict(), path)
    x = _faces(1)
    with torch.no_grad():
        assert torch.equal(load_arcface(path)(x), E(x))
    assert torch.equal(tiny_arcface().facenet.input_layer[0].weight, E.facenet.input_layer[0].weight)


def test_iresnet_key_layout_and_roundtrip() -> None:
    torch.manual_seed(2)
    net = IResNet((1, 2, 1, 1), widths=(16, 32, 64, 128), embedding_dim=64)
    keys = set(net.state_dict())
    for k in ["conv1.weight", "bn1.running_var", "prelu.weight", "layer1.0.bn1.weight", "layer1.0.conv1.weight",
              "layer1.0.bn2.weight", "layer1.0.prelu.weight", "layer1.0.conv2.weight", "layer1.0.bn3.weight",
              "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_mean", "layer2.1.conv2.weight",
              "layer4.0.conv1.weight", "bn2.weight", "fc.weight", "fc.bias", "features.weight",
              "features.running_mean"]:
        assert k in keys, k
    assert "layer2.1.downsample.0.weight" not in keys
    assert net.fc.weight.shape == (64, 128 * 7 * 7)
    E = load_arcface({"module." + k: v for k, v in net.state_dict().items()})
    assert isinstance(E.facenet, IResNet) and E.facenet.layers_spec == (1, 2, 1, 1)
    x = _faces(2)
    with torch.no_grad():
        emb = E(x)
        ref = IdentityEncoder(net.eval())(x)
    assert emb.shape == (2, 64) and torch.equal(emb, ref)


def test_wrong_checkpoints_raise_checkpoint_error(tmp_path: Path, tiny_state) -> None:
    g = load_fixture("rosinality_g32.pt")["g_ema"]
    path = tmp_path / "generator.pt"
    torch.save(g, path)
    with pytest.raises(CheckpointError, match="not an ArcFace checkpoint") as info:
        load_arcface(path)
    assert str(path) in str(info.value)

    trunc = tmp_path / "truncated.pth"
    full = tmp_path / "full.pth"
    torch.save(tiny_state, full)
    trunc.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_arcface(trunc)

    bad = dict(tiny_state)
    bad["body.2.res_layer.1.weight"] = torch.zeros(64, 32, 5, 5)
    with pytest.raises(CheckpointError) as info:
        load_arcface(bad)
    msg = str(info.value)
    assert "body.2.res_layer.1.weight" in msg and "[64, 32, 5, 5]" in msg and "[64, 32, 3, 3]" in msg

    missing = {k: v for k, v in tiny_state.items() if k != "output_layer.4.running_var"}
    with pytest.raises(CheckpointError, match="output_layer.4.running_var"):
        load_arcface(missing)

    odd = dict(tiny_state)
    odd["output_layer.3.weight"] = torch.zeros(512, 1000)
    with pytest.raises(CheckpointError, match=r"output_layer\.3\.weight has shape \[512, 1000\]"):
        load_arcface(odd)
