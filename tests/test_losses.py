"""FALCO's identity and attribute losses (the two ``optimise`` calls): definitions, gradients, reductions, validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from falco.errors import InputError
from falco.latent.losses import identity_margin_loss, token_l1_loss
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


def test_identity_margin_loss_of_one_face_embedded_twice_is_zero_at_m1_and_one_at_m0(id_encoder):
    x = _images(3)
    e_anon, e_real = id_encoder(x), id_encoder(x.clone())
    assert identity_margin_loss(e_anon, e_real, m=1.0).item() == pytest.approx(0.0, abs=1e-6)
    per = identity_margin_loss(e_anon, e_real, m=0.0, reduction="none")
    torch.testing.assert_close(per, torch.ones(3))  # |cos - 0| = 1


def test_identity_margin_loss_of_arcface_like_embeddings_is_the_dot_product_and_grads_reach_anon_only(id_encoder):
    x_anon = _images(4, seed=1).requires_grad_(True)
    x_real = _images(4, seed=2).requires_grad_(True)
    e_real = id_encoder(x_real)  # still attached to x_real: the loss must cut it
    loss = identity_margin_loss(id_encoder(x_anon), e_real, m=0.3, reduction="none")
    with torch.no_grad():
        dot = (id_encoder(x_anon) * id_encoder(x_real)).sum(-1)  # upstream: L2-normalised, so a dot product
    torch.testing.assert_close(loss, (dot - 0.3).abs(), atol=1e-6, rtol=0)
    loss.mean().backward()
    assert x_real.grad is None
    assert x_anon.grad is not None and torch.isfinite(x_anon.grad).all() and x_anon.grad.abs().sum() > 0


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


def test_token_l1_loss_detaches_real():
    t_anon = torch.randn(2, 5, 4).requires_grad_(True)
    t_real = torch.randn(2, 5, 4).requires_grad_(True)
    token_l1_loss(t_anon, t_real).backward()
    assert t_real.grad is None and t_anon.grad is not None


def test_token_l1_loss_of_farl_tokens_is_zero_for_identical_faces_positive_otherwise(farl):
    x = _images(2, size=48)
    assert token_l1_loss(farl.tokens(x), farl.tokens(x.clone())).item() == pytest.approx(0.0, abs=1e-6)
    per = token_l1_loss(farl.tokens(x), farl.tokens(_images(2, size=48, seed=9)), reduction="none")
    assert per.shape == (2,) and (per > 0).all()


def test_token_l1_loss_of_farl_tokens_sends_gradients_to_the_anonymized_faces_only(farl):
    x_anon = _images(2, size=64, seed=5).requires_grad_(True)
    x_real = _images(2, size=64, seed=6).requires_grad_(True)
    t_real = farl.tokens(x_real)  # still attached to x_real: the loss must cut it
    token_l1_loss(farl.tokens(x_anon), t_real).backward()
    assert x_real.grad is None
    assert x_anon.grad is not None and torch.isfinite(x_anon.grad).all() and x_anon.grad.abs().sum() > 0
    assert all(p.grad is None for p in farl.parameters())


def test_token_l1_loss_of_farl_tokens_per_sample_is_batch_independent(farl):
    x_anon, x_real = _images(3, seed=7), _images(3, seed=8)
    with torch.no_grad():
        t_anon, t_real = farl.tokens(x_anon), farl.tokens(x_real)
        per = token_l1_loss(t_anon, t_real, reduction="none")
        single = torch.stack([token_l1_loss(farl.tokens(x_anon[i : i + 1]), farl.tokens(x_real[i : i + 1]))
                              for i in range(3)])
    torch.testing.assert_close(per, single, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(token_l1_loss(t_anon, t_real), per.mean())
    torch.testing.assert_close(token_l1_loss(t_anon, t_real, reduction="sum"), per.sum())
    torch.testing.assert_close(per, (t_anon - t_real).abs().mean(-1).sum(-1))


# ---------------------------------------------------------------------------- both


@pytest.mark.parametrize("loss, shape", [(identity_margin_loss, (3, 8)), (token_l1_loss, (3, 5, 4))])
def test_sum_gives_each_sample_the_gradient_it_has_alone_and_mean_a_third_of_it(loss, shape):
    g = torch.Generator().manual_seed(12)
    anon, real = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
    alone = []
    for i in range(shape[0]):
        a = anon[i : i + 1].clone().requires_grad_(True)
        loss(a, real[i : i + 1], reduction="sum").backward()
        alone.append(a.grad[0])
    for reduction, scale in (("sum", 1.0), ("mean", 1.0 / shape[0])):
        a = anon.clone().requires_grad_(True)
        loss(a, real, reduction=reduction).backward()
        torch.testing.assert_close(a.grad, torch.stack(alone) * scale)


# ---------------------------------------------------------------------------- validation


def test_loss_input_validation():
    e, t = torch.ones(2, 4), torch.ones(2, 3, 4)
    with pytest.raises(InputError, match="reduction.*'avg'"):
        token_l1_loss(t, t, reduction="avg")
    with pytest.raises(InputError, match="reduction"):
        identity_margin_loss(e, e, 0.0, reduction="max")
    with pytest.raises(InputError, match=r"e_real: expected shape \(2, 4\) \(like e_anon\), got \(1, 4\)"):
        identity_margin_loss(e, torch.ones(1, 4))
    with pytest.raises(InputError, match="e_real: expected shape"):
        identity_margin_loss(torch.ones(2, 4), torch.ones(2, 5))
    with pytest.raises(InputError, match=r"e_anon: expected shape \[B, D\], got \(4,\)"):
        identity_margin_loss(e[0], e)
    with pytest.raises(InputError, match="t_real: expected shape"):
        token_l1_loss(torch.ones(2, 3, 4), torch.ones(2, 3, 5))
    with pytest.raises(InputError, match=r"t_anon: expected shape \[B, N, C\], got \(3, 4\)"):
        token_l1_loss(t[0], t)
    with pytest.raises(InputError, match="m: expected a number in \\[-1, 1\\].*1.5"):
        identity_margin_loss(e, e, m=1.5)
    with pytest.raises(InputError, match="e_anon: expected a floating point tensor"):
        identity_margin_loss(e.long(), e)
    with pytest.raises(InputError, match="t_real: expected a torch.Tensor"):
        token_l1_loss(t, t.numpy())
