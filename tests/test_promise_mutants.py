"""Tests written to kill the mutants that survived ``scripts/mutants.sh`` (issue #25).

Each expectation comes from outside the code under test: the paper's defaults (DESIGN.md),
the definition of cosine similarity, or the documented contract of the function. Fast (no
networks, no shared data); ``scripts/mutants.sh`` runs this file for every module.
"""

from __future__ import annotations

import pytest
import torch

from falco.errors import InputError
from falco.losses import identity_loss, identity_margin_loss, token_l1_loss


def _pair(batch: int = 3, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, dim, generator=g), torch.randn(batch, dim, generator=g)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity by its definition, in float64."""
    a, b = a.double(), b.double()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


# --- losses: the margin m ----------------------------------------------------------------

def test_identity_margin_loss_default_margin_is_the_papers_zero():
    # DESIGN.md: m = 0.0 by default, so the default loss is |cos|
    a, b = _pair()
    expected = _cos(a, b).abs().mean()
    assert identity_margin_loss(a, b).item() == pytest.approx(expected.item(), abs=1e-6)


def test_identity_loss_default_margin_is_the_papers_zero():
    enc = torch.nn.Flatten()
    x_anon = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    x_real = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    expected = _cos(enc(x_anon), enc(x_real)).abs().mean()
    assert identity_loss(enc, x_anon, x_real).item() == pytest.approx(expected.item(), abs=1e-6)


def test_identity_margin_loss_is_cosine_for_embeddings_of_small_norm():
    # cosine similarity does not depend on the norm: a face embedding scaled by 1e-3 is the
    # same direction (cos = 1 with itself, loss |1 - m|)
    a, b = _pair()
    a, b = a * 1e-3, b * 1e-3
    expected = (_cos(a, b) - 0.25).abs().mean()
    assert identity_margin_loss(a, b, m=0.25).item() == pytest.approx(expected.item(), abs=1e-5)
    assert identity_margin_loss(a, a.clone(), m=0.0).item() == pytest.approx(1.0, abs=1e-5)


def test_identity_margin_loss_follows_the_dtype_of_the_optimised_side():
    # under autocast the anonymized embeddings are bf16 while the real ones were computed in fp32
    a, b = _pair()
    out = identity_margin_loss(a.to(torch.bfloat16), b.double(), reduction="none")
    assert out.dtype == torch.bfloat16


def test_token_l1_loss_follows_the_dtype_of_the_optimised_side():
    g = torch.Generator().manual_seed(3)
    t_anon, t_real = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    out = token_l1_loss(t_anon.to(torch.bfloat16), t_real.double(), reduction="none")
    assert out.dtype == torch.bfloat16


def test_margin_given_as_a_one_element_tensor_is_the_same_margin():
    a, b = _pair()
    ref = identity_margin_loss(a, b, m=0.5)
    assert torch.allclose(identity_margin_loss(a, b, m=torch.tensor(0.5)), ref)


@pytest.mark.parametrize("m", [-1.0, 1.0, 0])
def test_margin_bounds_are_inclusive(m):
    a, b = _pair()
    expected = (_cos(a, b) - m).abs().mean()
    assert identity_margin_loss(a, b, m=m).item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("m", [-1.5, 1.01, True, "0.5", float("nan"), float("inf")])
def test_margin_outside_minus_one_one_or_not_a_number_is_an_input_error(m):
    a, b = _pair()
    with pytest.raises(InputError):
        identity_margin_loss(a, b, m=m)


def test_empty_batch_is_an_input_error():
    e = torch.zeros(0, 8)
    with pytest.raises(InputError):
        identity_margin_loss(e, e)


# --- pixels: rendering pooled to 256 px ---------------------------------------------------

def test_to_256_of_a_1024_render_is_the_mean_of_each_4x4_block():
    # e4e's face_pool: AdaptiveAvgPool2d((256, 256)); at 1024 px that is the 4x4 block mean
    from falco.inversion import to_256

    img = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(4))
    expected = img.reshape(1, 3, 256, 4, 256, 4).mean(dim=(3, 5))
    out = to_256(img)
    assert out.shape == (1, 3, 256, 256)
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.equal(to_256(expected), expected)  # already 256: unchanged
