"""FaRL visual tower: parity with the OpenAI-CLIP fixture, checkpoint loading, preprocessing."""

from __future__ import annotations

import logging

import pytest
import torch

from falco.errors import CheckpointError, InputError
from falco.models.farl import (
    CLIP_MEAN,
    CLIP_STD,
    FaRLConfig,
    FaRLEncoder,
    build_visual,
    infer_config,
    load_farl,
    tiny_farl_state_dict,
)
from tests.conftest import parity_fixture, synth_module

FIXTURE = "farl_clip_vitb16_synth.pt"


fixture = parity_fixture(FIXTURE)


@pytest.fixture(scope="module")
def synth_clip(fixture) -> dict[str, torch.Tensor]:
    """The whole CLIP under OpenAI key names: synthetic visual weights, zero text tower.

    (The loader must ignore the text tower, so its values do not matter; zeros keep this fast.)
    """
    sw = synth_module()
    sd = {}
    for key, shape in fixture["keys_and_shapes"].items():
        if not key.startswith("visual."):
            sd[key] = torch.zeros(()).expand(list(shape))
            continue
        t = torch.from_numpy(sw.synth_tensor("farl." + key, list(shape)))
        if key.endswith("class_embedding") and t.ndim == 1:
            t = t * 0.1
        sd[key] = t
    return sd


@pytest.fixture(scope="module")
def farl_vitb16(synth_clip) -> FaRLEncoder:
    """Loaded once from a full FaRL-format checkpoint dict (state_dict with the text tower)."""
    return load_farl({"state_dict": synth_clip, "epoch": 16})


@pytest.fixture(scope="module")
def vitb16_outputs(farl_vitb16, fixture):
    with torch.no_grad():
        tokens = farl_vitb16.tokens(fixture["input_224"])
        return tokens, farl_vitb16.pool(tokens)


def _tiny_encoder(**kwargs) -> FaRLEncoder:
    return load_farl({"state_dict": tiny_farl_state_dict(**kwargs)})


# ---------------------------------------------------------------------------- fixture parity


def test_vitb16_tokens_match_fixture(vitb16_outputs, fixture):
    tokens, _ = vitb16_outputs
    expected = fixture["expected_tokens"]
    assert tokens.shape == expected.shape == (2, 197, 768)
    err = (tokens - expected).abs().max().item()
    print(f"tokens max abs err {err:.3g} (scale {expected.abs().max().item():.3g})")
    assert err < 1e-4 * max(1.0, expected.abs().max().item())


def test_vitb16_pooled_matches_fixture(farl_vitb16, vitb16_outputs, fixture):
    _, pooled = vitb16_outputs
    expected = fixture["expected_pooled"]
    assert pooled.shape == expected.shape == (2, 512)
    err = (pooled - expected).abs().max().item()
    print(f"pooled max abs err {err:.3g}")
    assert err < 1e-4 * max(1.0, expected.abs().max().item())
    # features(x) = normalize(pooled(x)), end to end from the image.
    with torch.no_grad():
        f = farl_vitb16.features(fixture["input_224"][:1])
    torch.testing.assert_close(f, torch.nn.functional.normalize(expected[:1], dim=-1), atol=1e-5, rtol=0)


def test_vitb16_loader_config_and_ignored_text_tower(farl_vitb16, synth_clip):
    assert farl_vitb16.config == FaRLConfig()  # 768 wide, 12 layers, 12 heads, /16, 224 px, 512 out
    assert farl_vitb16.num_tokens == 197
    assert not farl_vitb16.normalize
    text_keys = {k for k in synth_clip if not k.startswith("visual.")}
    assert set(farl_vitb16.ignored_keys) == text_keys
    assert not any(k.startswith(("transformer.", "token_embedding")) for k in farl_vitb16.state_dict())
    assert not farl_vitb16.training
    assert not any(p.requires_grad for p in farl_vitb16.parameters())


def test_fixture_input_is_unnormalised(farl_vitb16, vitb16_outputs, fixture):
    """The fixture fed [-1, 1] straight in; normalize=True is a different, documented input."""
    x = fixture["input_224"][:1]
    normed = FaRLEncoder(farl_vitb16.visual, normalize=True, config=farl_vitb16.config)
    expected_pre = ((x + 1) / 2 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(normed.preprocess(x), expected_pre)
    torch.testing.assert_close(farl_vitb16.preprocess(x), x, atol=0, rtol=0)  # 224 px: untouched


def test_generic_vision_transformer_matches_fixture(synth_clip, fixture):
    """The builder used for non-ViT-B/16 sizes is the same network (QuickGELU, fp32)."""
    visual = build_visual(FaRLConfig(), use_named_model=False, init_weights=False)
    visual.load_state_dict({k[7:]: v for k, v in synth_clip.items() if k.startswith("visual.")})
    enc = FaRLEncoder(visual)
    with torch.no_grad():
        tokens = enc.tokens(fixture["input_224"][:1])
    assert (tokens - fixture["expected_tokens"][:1]).abs().max().item() < 1e-4 * 16


def test_named_and_generic_builders_are_the_same_architecture():
    from open_clip.transformer import QuickGELU

    named = build_visual(FaRLConfig(), init_weights=False)
    generic = build_visual(FaRLConfig(), use_named_model=False, init_weights=False)

    def shapes(m: torch.nn.Module) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in m.state_dict().items()}

    assert shapes(named) == shapes(generic)
    for m in (named, generic):
        assert isinstance(m.transformer.resblocks[0].mlp.gelu, QuickGELU)
        assert all(p.dtype == torch.float32 for p in m.parameters())
    with pytest.raises(InputError, match="not the ViT-B-16-quickgelu"):
        build_visual(FaRLConfig(width=64, heads=1), use_named_model=True)


# ---------------------------------------------------------------------------- loading


def test_infer_config_from_shapes():
    sd = tiny_farl_state_dict(width=128, layers=3, patch_size=4, image_resolution=24, output_dim=16)
    cfg = infer_config(sd)
    assert cfg == FaRLConfig(width=128, layers=3, heads=2, patch_size=4, image_resolution=24, output_dim=16)
    assert cfg.num_tokens == 37
    assert infer_config(sd, heads=4).heads == 4


def test_load_from_path_bare_dict_and_full_checkpoint_agree(tmp_path):
    sd = tiny_farl_state_dict(seed=3)
    path = tmp_path / "FaRL-tiny.pth"
    torch.save({"state_dict": sd}, path)
    a = load_farl(path)
    b = load_farl(str(path))
    c = load_farl(sd)  # bare OpenAI-CLIP state dict
    assert a.config == FaRLConfig(width=64, layers=2, heads=1, patch_size=8, image_resolution=32, output_dim=32)
    assert "text_projection" in a.ignored_keys and "logit_scale" in c.ignored_keys
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ta, tb, tc = a.tokens(x), b.tokens(x), c.tokens(x)
    assert ta.shape == (2, 17, 64)
    torch.testing.assert_close(ta, tb, atol=0, rtol=0)
    torch.testing.assert_close(ta, tc, atol=0, rtol=0)
    assert a.pooled(x).shape == (2, 32)


def test_fp16_checkpoint_loads_as_fp32():
    sd = {k: v.half() for k, v in tiny_farl_state_dict().items()}
    enc = load_farl({"state_dict": sd})
    assert all(p.dtype == torch.float32 for p in enc.parameters())


def test_missing_visual_key_is_an_error():
    sd = tiny_farl_state_dict()
    del sd["visual.transformer.resblocks.1.mlp.c_proj.bias"]
    del sd["visual.ln_post.weight"]
    with pytest.raises(CheckpointError, match=r"missing 2 visual key\(s\).*ln_post\.weight"):
        load_farl({"state_dict": sd})


def test_wrong_shape_and_non_clip_are_errors(tmp_path):
    wrong_shape = tiny_farl_state_dict()
    wrong_shape["visual.ln_pre.bias"] = torch.zeros(65)
    no_positions = tiny_farl_state_dict()
    del no_positions["visual.positional_embedding"]
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    refused = [
        (wrong_shape, "ln_pre.bias has shape"),
        ({"state_dict": {"encoder.weight": torch.zeros(3)}}, "no 'visual"),
        (no_positions, "positional_embedding"),
        (tmp_path / "nope.pth", "file not found"),
        (garbage, "garbage.pth"),
    ]
    for source, message in refused:
        with pytest.raises(CheckpointError, match=message):
            load_farl(source)


class _Executable:
    """Pickled by reference: a weights-only loader must refuse it."""


def test_refuses_non_weights_only_pickles(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": tiny_farl_state_dict(), "obj": _Executable()}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_farl(path)


def test_unexpected_visual_key_is_ignored_and_reported(caplog):
    sd = tiny_farl_state_dict()
    sd["visual.mask_token"] = torch.zeros(64)
    with caplog.at_level(logging.WARNING, logger="falco.models.farl"):
        enc = load_farl(sd)
    assert "visual.mask_token" in enc.ignored_keys
    assert "visual.mask_token" in caplog.text


def test_heads_override_and_validation():
    sd = tiny_farl_state_dict()
    assert load_farl(sd, heads=4).config.heads == 4
    with pytest.raises(CheckpointError, match="heads"):
        load_farl(sd, heads=3)
    with pytest.raises(InputError, match="heads"):
        tiny_farl_state_dict(width=64, heads=2)
    assert infer_config(tiny_farl_state_dict(width=32)).heads == 1


# ---------------------------------------------------------------------------- forward


@pytest.mark.parametrize("hw", [(32, 32), (64, 64), (70, 50), (45, 77), (33, 32)])
def test_preprocess_mirrors_torchvision_resize_centercrop(hw):
    tvf = pytest.importorskip("torchvision.transforms.functional")
    enc = _tiny_encoder()
    x = torch.rand(2, 3, *hw) * 2 - 1
    ref = tvf.center_crop(tvf.resize(x, 32, antialias=True), 32)
    out = enc.preprocess(x)
    assert out.shape == (2, 3, 32, 32)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


def test_tokens_differentiable_and_model_frozen():
    enc = _tiny_encoder()
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    x = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    tokens = enc.tokens(x)
    assert tokens.shape == (2, enc.num_tokens, enc.width)
    tokens.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.parameters())


def test_tokens_are_per_sample():
    enc = _tiny_encoder()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        batched = enc.tokens(x)
        single = torch.cat([enc.tokens(x[i : i + 1]) for i in range(3)])
        feats = enc.features(x)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(3))
    assert torch.equal(enc(x), batched)


@pytest.mark.parametrize(
    "bad",
    [torch.zeros(3, 32, 32), torch.zeros(1, 1, 32, 32), torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "img"],
)
def test_bad_image_input(bad):
    enc = _tiny_encoder()
    with pytest.raises(InputError, match="x: expected"):
        enc.tokens(bad)
