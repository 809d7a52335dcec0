"""FALCO's identity and attribute losses: definitions, gradients, reductions, validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from falco.errors import InputError
from falco.losses import attribute_loss, identity_loss, identity_margin_loss, token_l1_loss
from falco.models.farl import FaRLEncoder, load_farl, tiny_farl_state_dict


class DummyIdEncoder(nn.Module):
    """Stand-in for the ArcFace wrapper: images (any size) -> L2-normalised embeddings, frozen."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.fc = nn.Linear(8 * 4 * 4, dim)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.adaptive_avg_pool2d(torch.tanh(self.conv(x)), 4).flatten(1)
        return F.normalize(self.fc(h), dim=-1)


@pytest.fixture(scope="module")
def farl() -> FaRLEncoder:
    return load_farl({"state_dict": tiny_farl_state_dict(seed=1)})


@pytest.fixture
def id_encoder() -> DummyIdEncoder:
    return DummyIdEncoder()


def _images(b: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1


# ---------------------------------------------------------------------------- identity


def test_identity_margin_loss_hand_made_vectors():
    s = math.sqrt(0.5)
    e_anon = torch.tensor([[1.0, 0.0], [1.0, 0.0], [s, s], [2.0, 0.0]])
    e_real = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-3.0, 0.0]])
    cos = torch.tensor([1.0, 0.0, s, -1.0])
    for m in (0.0, 0.5, 1.0, -0.25):
        per = identity_margin_loss(e_anon, e_real, m, reduction="none")
        torch.testing.assert_close(per, (cos - m).abs())
        torch.testing.assert_close(identity_margin_loss(e_anon, e_real, m), (cos - m).abs().mean())
        torch.testing.assert_close(identity_margin_loss(e_anon, e_real, m, reduction="sum"), (cos - m).abs().sum())
    assert identity_margin_loss(e_anon[:1], e_real[:1], 1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_identity_margin_loss_detaches_real():
    e_anon = F.normalize(torch.randn(3, 8), dim=-1).requires_grad_(True)
    e_real = F.normalize(torch.randn(3, 8), dim=-1).requires_grad_(True)
    identity_margin_loss(e_anon, e_real, 0.0).backward()
    assert e_real.grad is None and e_anon.grad is not None


def test_identity_loss_zero_at_m1_for_identical_images(id_encoder):
    x = _images(3)
    assert identity_loss(id_encoder, x, x.clone(), m=1.0).item() == pytest.approx(0.0, abs=1e-6)
    per = identity_loss(id_encoder, x, x.clone(), m=0.0, reduction="none")
    torch.testing.assert_close(per, torch.ones(3))  # |cos - 0| = 1


def test_identity_loss_equals_margin_formula_and_grads(id_encoder):
    x_anon = _images(4, seed=1).requires_grad_(True)
    x_real = _images(4, seed=2).requires_grad_(True)
    loss = identity_loss(id_encoder, x_anon, x_real, m=0.3, reduction="none")
    with torch.no_grad():
        cos = (id_encoder(x_anon) * id_encoder(x_real)).sum(-1)
    torch.testing.assert_close(loss, (cos - 0.3).abs(), atol=1e-6, rtol=0)
    loss.mean().backward()
    assert x_real.grad is None  # the real features are detached
    assert x_anon.grad is not None and torch.isfinite(x_anon.grad).all() and x_anon.grad.abs().sum() > 0


def test_identity_loss_with_cached_real_features(id_encoder):
    x_anon, x_real = _images(2, seed=3).requires_grad_(True), _images(2, seed=4)
    feats = id_encoder(x_real).requires_grad_(True)
    a = identity_loss(id_encoder, x_anon, x_real, m=0.0)
    b = identity_loss(id_encoder, x_anon, real_features=feats, m=0.0)
    torch.testing.assert_close(a, b)
    b.backward()
    assert feats.grad is None


# ---------------------------------------------------------------------------- attribute


def test_token_l1_loss_definition():
    t_anon = torch.zeros(2, 3, 4)
    t_real = torch.zeros(2, 3, 4)
    t_real[0, 0] = 4.0  # token 0: mean |diff| over 4 channels = 4
    t_real[0, 2, :2] = 2.0  # token 2: mean = 1
    t_real[1, 1, 0] = 8.0  # sample 1, token 1: mean = 2
    per = token_l1_loss(t_anon, t_real, reduction="none")
    torch.testing.assert_close(per, torch.tensor([5.0, 2.0]))
    torch.testing.assert_close(token_l1_loss(t_anon, t_real), torch.tensor(3.5))
    torch.testing.assert_close(token_l1_loss(t_anon, t_real, reduction="sum"), torch.tensor(7.0))


def test_token_l1_loss_matches_upstream_loop():
    """chi0tzp/FALCO: sum over tokens of nn.L1Loss()(y_fts[:, ix], y_hat_fts[:, ix])."""
    a, b = torch.randn(3, 7, 5), torch.randn(3, 7, 5)
    upstream = sum(nn.L1Loss()(b[:, ix], a[:, ix]) for ix in range(a.shape[1]))
    torch.testing.assert_close(token_l1_loss(a, b), upstream)


def test_attribute_loss_zero_for_identical_positive_otherwise(farl):
    x = _images(2, size=48)
    assert attribute_loss(farl, x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    per = attribute_loss(farl, x, _images(2, size=48, seed=9), reduction="none")
    assert per.shape == (2,) and (per > 0).all()


def test_attribute_loss_gradient_reaches_anon_only(farl):
    x_anon = _images(2, size=64, seed=5).requires_grad_(True)
    x_real = _images(2, size=64, seed=6).requires_grad_(True)
    attribute_loss(farl, x_anon, x_real).backward()
    assert x_real.grad is None
    assert x_anon.grad is not None and torch.isfinite(x_anon.grad).all() and x_anon.grad.abs().sum() > 0
    assert all(p.grad is None for p in farl.parameters())


def test_attribute_loss_per_sample_is_batch_independent(farl):
    x_anon, x_real = _images(3, seed=7), _images(3, seed=8)
    per = attribute_loss(farl, x_anon, x_real, reduction="none")
    single = torch.stack([attribute_loss(farl, x_anon[i : i + 1], x_real[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(per, single, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attribute_loss(farl, x_anon, x_real), per.mean())
    torch.testing.assert_close(attribute_loss(farl, x_anon, x_real, reduction="sum"), per.sum())
    with torch.no_grad():
        expected = (farl.tokens(x_anon) - farl.tokens(x_real)).abs().mean(-1).sum(-1)
    torch.testing.assert_close(per, expected)


def test_attribute_loss_with_cached_real_tokens(farl):
    x_anon, x_real = _images(2, seed=10), _images(2, seed=11)
    tokens = farl.tokens(x_real)
    torch.testing.assert_close(attribute_loss(farl, x_anon, x_real), attribute_loss(farl, x_anon, real_tokens=tokens))


# ---------------------------------------------------------------------------- validation


def test_loss_input_validation(farl, id_encoder):
    x = _images(2)
    with pytest.raises(InputError, match="reduction.*'avg'"):
        attribute_loss(farl, x, x, reduction="avg")
    with pytest.raises(InputError, match="reduction"):
        identity_margin_loss(torch.ones(1, 2), torch.ones(1, 2), 0.0, reduction="max")
    with pytest.raises(InputError, match="x_real: batch size 3"):
        attribute_loss(farl, x, _images(3))
    with pytest.raises(InputError, match="x_real: batch size 1"):
        identity_loss(id_encoder, x, _images(1))
    with pytest.raises(InputError, match=r"x_anon: expected shape \[B, 3, H, W\], got \(3, 32, 32\)"):
        identity_loss(id_encoder, x[0], x)
    with pytest.raises(InputError, match="exactly one.*both"):
        attribute_loss(farl, x, x, real_tokens=farl.tokens(x))
    with pytest.raises(InputError, match="exactly one.*neither"):
        identity_loss(id_encoder, x)
    with pytest.raises(InputError, match="real_features: batch size 1"):
        identity_loss(id_encoder, x, real_features=torch.ones(1, 16))
    with pytest.raises(InputError, match="real_tokens: expected shape"):
        attribute_loss(farl, x, real_tokens=torch.ones(2, 17))
    with pytest.raises(InputError, match="m: expected a number in \\[-1, 1\\].*1.5"):
        identity_loss(id_encoder, x, x, m=1.5)
    with pytest.raises(InputError, match="e_real: expected shape"):
        identity_margin_loss(torch.ones(2, 4), torch.ones(2, 5))
    with pytest.raises(InputError, match="t_real: expected shape"):
        token_l1_loss(torch.ones(2, 3, 4), torch.ones(2, 3, 5))
    with pytest.raises(InputError, match="farl: expected"):
        attribute_loss(id_encoder, x, x)
