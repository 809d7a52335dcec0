"""Region control inside FALCO: the attribute loss favours the parts taken from the photo
(``--keep``/``--change``), and ``--change-shape`` frees the coarse W+ layers.

Expectations are computed here by hand (token grids, weighted sums), not read back from the code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import falco.methods.falco
from falco.errors import InputError
from falco.faces.regions import crop_region_mask
from falco.latent.invert import to_256
from falco.latent.losses import region_token_weights, token_l1_loss
from falco.latent.optimise import FalcoParams, OptimResult, optimise
from tests.test_promise_params import _cli, one_photo  # noqa: F401 (a fixture)


# ----------------------------------------------------------------------------- the token weights
def test_token_weights_follow_the_mask_on_the_patch_grid():
    masks = torch.zeros(2, 56, 56)
    masks[0, :28, :28] = 1.0  # face 0: the top-left quarter of a 2x2 patch grid
    w = region_token_weights(masks, num_tokens=5, focus=0.75)
    assert w.shape == (2, 5)
    # face 0: shares (1, 0, 0, 0), mean 1/4 -> relative (4, 0, 0, 0) -> 0.25 + 0.75 * relative
    torch.testing.assert_close(w[0], torch.tensor([1.0, 0.25 + 3.0, 0.25, 0.25, 0.25]))
    torch.testing.assert_close(w[1], torch.ones(5))  # an empty mask: the paper's uniform weights
    assert float(w[0, 1:].mean()) == pytest.approx(1.0)  # patch weights keep the loss's scale
    torch.testing.assert_close(region_token_weights(masks, 5, 0.0), torch.ones(2, 5))


def test_token_weights_average_a_soft_mask_per_patch():
    masks = torch.zeros(1, 4, 4)
    masks[0, 0, 0] = 1.0  # a quarter of patch (0, 0) on a 2x2 grid of 2x2-pixel patches
    masks[0, 3, 3] = 0.5
    w = region_token_weights(masks, num_tokens=5, focus=1.0)
    shares = torch.tensor([0.25, 0.0, 0.0, 0.125])
    torch.testing.assert_close(w[0, 1:], shares / shares.mean())


def test_token_weights_clamp_the_mask_and_take_a_single_patch():
    masks = torch.zeros(1, 4, 4)
    masks[0, :2, :2] = 3.0  # out of range: counts as 1
    masks[0, 2:, 2:] = -2.0  # counts as 0
    clean = masks.clamp(0, 1)
    torch.testing.assert_close(region_token_weights(masks, 5, 0.5), region_token_weights(clean, 5, 0.5))
    torch.testing.assert_close(region_token_weights(masks, 5, 0.5)[0], torch.tensor([1.0, 0.5 + 2.0, 0.5, 0.5, 0.5]))
    torch.testing.assert_close(region_token_weights(masks, 2, 0.5), torch.ones(1, 2))  # one patch: weight 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(masks=torch.zeros(2, 8), num_tokens=5, focus=0.5), "masks"),
    (dict(masks=torch.zeros(1, 8, 8), num_tokens=6, focus=0.5), "num_tokens"),
    (dict(masks=torch.zeros(1, 8, 8), num_tokens=5, focus=1.5), "focus"),
    (dict(masks=torch.zeros(1, 8, 8), num_tokens=5, focus="0.5"), "focus"),
    (dict(masks=torch.zeros(1, 8, 8), num_tokens=5, focus=True), "focus"),
])
def test_token_weight_arguments_are_checked(kwargs, match):
    with pytest.raises(InputError, match=match):
        region_token_weights(**kwargs)


def test_weighted_token_loss_is_the_weighted_sum_of_the_token_terms():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, 7, generator=g), torch.randn(3, 5, 7, generator=g)
    w = torch.rand(3, 5, generator=g)
    expected = ((a - b).abs().mean(-1) * w).sum(-1)
    torch.testing.assert_close(token_l1_loss(a, b, reduction="none", weights=w), expected)
    torch.testing.assert_close(token_l1_loss(a, b, reduction="none", weights=torch.ones(3, 5)),
                               token_l1_loss(a, b, reduction="none"))
    with pytest.raises(InputError, match="weights"):
        token_l1_loss(a, b, weights=torch.ones(3, 4))


# ----------------------------------------------------------------------------- in the optimiser
def _batch(tiny_nets, n=2):
    G, E, avg = tiny_nets["G"], tiny_nets["E"], tiny_nets["latent_avg"]
    g = torch.Generator().manual_seed(3)
    x = torch.rand(n, 3, 256, 256, generator=g) * 2 - 1
    with torch.no_grad():
        ws_real = E(x) + avg[None]
        ws_fake = G.mapping(torch.randn(n, G.z_dim, generator=g))[:, None].repeat(1, G.num_ws, 1)
    return ws_real, ws_fake, x


def test_the_masks_weigh_the_attribute_loss_and_focus_0_is_the_papers_loss(tiny_nets):
    ws_real, ws_fake, x = _batch(tiny_nets)
    nets = (tiny_nets["G"], tiny_nets["id_encoder"], tiny_nets["farl"])
    masks = torch.zeros(2, 256, 256)
    masks[:, 80:140, 40:216] = 1.0  # a band across the eyes
    params = FalcoParams(steps=2)
    plain = optimise(ws_real, ws_fake, x, *nets, params=params)
    off = optimise(ws_real, ws_fake, x, *nets, params=FalcoParams(steps=2, region_focus=0.0), attr_masks=masks)
    torch.testing.assert_close(off.ws, plain.ws, rtol=0, atol=0)
    focused = optimise(ws_real, ws_fake, x, *nets, params=params, attr_masks=masks)
    # the first step's attribute loss is the weighted sum, recomputed here from FaRL's tokens
    farl = tiny_nets["farl"]
    with torch.no_grad():
        t_real = farl.tokens(x)
        img = tiny_nets["G"].synthesis(torch.cat([ws_real[:, :3], ws_fake[:, 3:8], ws_real[:, 8:]], 1),
                                       noise_mode="const")
        img = to_256(img)
        t_anon = farl.tokens(img)
    weights = region_token_weights(masks, t_real.shape[1], 0.75)
    expected = ((t_anon - t_real).abs().mean(-1) * weights).sum(-1)
    torch.testing.assert_close(focused.losses["attr"][0], expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(focused.losses["attr"][0], plain.losses["attr"][0])
    with pytest.raises(InputError, match="attr_masks"):
        optimise(ws_real, ws_fake, x, *nets, params=params, attr_masks=masks[:1])


# ----------------------------------------------------------------------------- through the command
@pytest.fixture()
def spy(monkeypatch):
    """FALCO's optimise, recorded: its params and attr_masks; returns the start codes at once."""
    seen: list[dict] = []

    def fake(ws_real, ws_fake, x_real, G, id_encoder, farl, *, params, attr_masks=None, **kwargs):
        seen.append({"params": params, "masks": attr_masks})
        start, end = params.layers
        return OptimResult(ws=torch.cat([ws_real[:, :start], ws_fake[:, start:end], ws_real[:, end:]], 1), losses={},
                           skipped=torch.zeros(len(ws_real), dtype=torch.int64))

    monkeypatch.setattr(falco.methods.falco, "optimise", fake)
    return seen


def _anonymize(one_photo, out, tiny_models, *flags) -> int:
    return _cli(["anonymize", str(one_photo), "--out", str(out), "--models", str(tiny_models), "--device", "cpu",
                 "--bank-size", "16", "--no-progress", "--guard", "off", *flags])


def test_keep_gives_falco_the_kept_parts_as_masks(one_photo, tiny_models, tmp_path, spy):
    from falco.faces.pipeline import detect_and_align
    from falco.run.image_files import load_image

    seen_faces = detect_and_align(load_image(one_photo / "a.jpg"), size=256)
    assert _anonymize(one_photo, tmp_path / "plain", tiny_models) in (0, 1)
    assert spy and all(call["masks"] is None for call in spy)  # no --keep: the paper's loss
    spy.clear()
    assert _anonymize(one_photo, tmp_path / "keep", tiny_models, "--keep", "eyes-brows",
                      "--region-masks", "landmarks") in (0, 1)
    masks = torch.cat([c["masks"] for c in spy])
    assert masks.shape[1:] == (256, 256) and len(masks) >= 2
    face = max(seen_faces, key=lambda f: f.quad_size)
    expected = crop_region_mask(face, ("eyes", "brows"), size=256)
    # the biggest face's mask is one of those given, and it is the eyes and brows only
    assert any(np.abs(m.numpy() - expected).max() < 1e-6 for m in masks)
    assert 0.01 < float(masks.mean()) < 0.3
    spy.clear()
    assert _anonymize(one_photo, tmp_path / "change", tiny_models, "--change", "mouth",
                      "--region-masks", "landmarks") in (0, 1)
    changed = torch.cat([c["masks"] for c in spy])
    mouth = crop_region_mask(face, ("mouth",), size=256)
    assert any(np.abs(m.numpy() - (1.0 - mouth)).max() < 1e-6 for m in changed)  # everything but the mouth


def test_change_shape_frees_the_coarse_layers(one_photo, tiny_models, tmp_path, spy):
    assert _anonymize(one_photo, tmp_path / "shape", tiny_models, "--change-shape") in (0, 1)
    assert spy and all(c["params"].layers == (0, 8) for c in spy)
    spy.clear()
    assert _anonymize(one_photo, tmp_path / "shape2", tiny_models, "--change-shape", "--layers", "4:6",
                      "--region-focus", "0.5") in (0, 1)
    assert all(c["params"].layers == (0, 6) and c["params"].region_focus == 0.5 for c in spy)


def test_region_focus_is_checked():
    with pytest.raises(InputError, match="region_focus"):
        FalcoParams(region_focus=1.5)
