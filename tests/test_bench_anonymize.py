"""scripts/bench_anonymize.py: its reference loop computes what falco computes, and its FLOP count is right."""

from __future__ import annotations

import sys

import pytest
import torch

from falco.anonymize import FalcoParams, optimise
from falco.models.zoo import load_role
from tests.conftest import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_anonymize")


@pytest.fixture(scope="module")
def tiny(tiny_models):
    return load_role("generator", tiny_models), load_role("identity", tiny_models), load_role("attributes", tiny_models)


def test_reference_loop_is_the_same_optimisation_as_falco(bench, tiny):
    """The speed-up is only meaningful if both loops compute the same codes."""
    G = tiny[0]
    ws_real, ws_fake, x_real = bench.codes(G, 3, torch.device("cpu"))
    params = FalcoParams(steps=4)
    ref = bench.reference_loop(ws_real, ws_fake, x_real, *tiny, params)
    out = optimise(ws_real, ws_fake, x_real, *tiny, params=params)
    assert not torch.allclose(ref[:, 3:8], ws_fake[:, 3:8])
    torch.testing.assert_close(ref, out.ws, atol=2e-5, rtol=1e-4)


def test_flops_are_linear_in_the_batch_and_smaller_with_loss_at_256(bench):
    one, two = bench.step_flops(256, 1, None), bench.step_flops(256, 2, None)
    assert two == pytest.approx(2 * one, rel=1e-3)  # grouped convs would be over-counted here
    assert 2.0e11 < one < 4.0e11  # StyleGAN2-256 + ArcFace IR-SE50 + FaRL ViT-B/16, forward and backward
    assert bench.step_flops(512, 1, 256) == pytest.approx(one, rel=1e-6)
    assert bench.step_flops(512, 1, None) > 1.1 * one


def test_unknown_variant_is_refused(bench, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_anonymize.py", "--variants", "fp32,warp-speed"])
    with pytest.raises(SystemExit) as exc:
        bench.main()
    assert exc.value.code == 2 and "warp-speed" in capsys.readouterr().err
