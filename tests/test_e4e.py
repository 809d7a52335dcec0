"""e4e encoder: parity with omertov/encoder4editing, checkpoint loading, errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from falco.errors import CheckpointError, InputError
from falco.models import _checkpoint as ckpt_io
from falco.models.e4e import Encoder4Editing, infer_e4e_kwargs, load_e4e, n_styles_for, tiny_e4e
from falco.models.irse import stage_ends
from tests.conftest import load_fixture, parity_fixture, synth_module


fixture = parity_fixture("e4e_encoder_synth.pt")


@pytest.fixture(scope="module")
def tiny() -> Encoder4Editing:
    E = tiny_e4e(n_styles=8, w_dim=64, seed=3)
    with torch.no_grad():  # non-zero biases and BN statistics so every tensor matters
        for name, t in E.state_dict().items():
            if t.is_floating_point() and ("bias" in name or "running_mean" in name):
                t.uniform_(-0.1, 0.1)
    return E


def _e4e_checkpoint(E: Encoder4Editing, latent_avg: torch.Tensor, *, nested: bool = True) -> dict:
    """A checkpoint in e4e's own format (state_dict with encoder.* and decoder.*, latent_avg, opts)."""
    sd = {"encoder." + k: v.clone() for k, v in E.state_dict().items()}
    sd["decoder.style.1.weight"] = torch.randn(64, 64)  # stands for the generator; ignored by load_e4e
    opts = {"stylegan_size": 32, "encoder_type": "Encoder4Editing", "start_from_latent_avg": True}
    if nested:
        return {"state_dict": sd, "latent_avg": latent_avg, "opts": opts}
    return {**sd, "latent_avg": latent_avg, "opts": opts}


def _faces(n: int = 2, size: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


@pytest.mark.slow  # the full-size encoder
def test_fixture_parity_encoder4editing(fixture) -> None:
    sw = synth_module()
    keys = fixture["keys_and_shapes"]
    assert all(k.startswith("encoder.") for k in keys)
    state = {k: torch.from_numpy(sw.synth_tensor(k, list(s))) for k, s in keys.items()}
    E, latent_avg = load_e4e({"state_dict": state, "latent_avg": torch.zeros(512), "opts": {"stylegan_size": 1024}})
    assert (E.num_layers, E.mode, E.n_styles, E.w_dim) == (50, "ir_se", 18, 512)
    assert E.n_styles == fixture["style_count"] == n_styles_for(1024)
    assert latent_avg.shape == (18, 512)
    with torch.no_grad():
        codes = E(fixture["input"])
    ref = fixture["expected_codes"]
    assert codes.shape == ref.shape == (2, 18, 512)
    err = float((codes - ref).abs().max())
    assert err < 1e-4, f"max abs error {err:.3g}"


def test_structure_matches_upstream() -> None:
    assert stage_ends(50) == (2, 6, 20, 23)  # upstream's c1/c2/c3 taps are body[6], body[20], body[23]
    assert [n_styles_for(s) for s in (1024, 512, 256, 32)] == [18, 16, 14, 8]
    E = ckpt_io.build_empty(lambda: Encoder4Editing(50))
    sd = E.state_dict()
    assert sd["styles.0.convs.6.weight"].shape == (512, 512, 3, 3) and "styles.0.convs.8.weight" not in sd
    assert "styles.3.convs.8.weight" in sd and "styles.3.convs.10.weight" not in sd
    assert "styles.7.convs.10.weight" in sd
    assert sd["latlayer1.weight"].shape == (512, 256, 1, 1) and sd["latlayer2.weight"].shape == (512, 128, 1, 1)
    assert "latent_avg" not in sd
    for depth, units in [(100, (3, 13, 30, 3)), (152, (3, 8, 36, 3))]:
        big = ckpt_io.build_empty(lambda d=depth: Encoder4Editing(d, n_styles=16))
        kw = infer_e4e_kwargs(big.state_dict(), "x")
        assert kw["num_layers"] == units and kw["n_styles"] == 16 and kw["mode"] == "ir_se"


def test_progressive_stage(tiny) -> None:
    x = _faces(1)
    with torch.no_grad():
        full = tiny(x)
        try:
            tiny.progressive_stage = 0
            base = tiny(x)
            tiny.progressive_stage = 4
            partial = tiny(x)
        finally:
            tiny.progressive_stage = tiny.n_styles
    assert torch.equal(base, base[:, :1].expand_as(base))  # w0 repeated
    assert torch.equal(base[:, 0], full[:, 0])
    assert torch.equal(partial[:, :5], full[:, :5]) and torch.equal(partial[:, 5:], base[:, 5:])
    assert not torch.allclose(full[:, 1], full[:, 0])


def test_differentiable(tiny) -> None:
    x = _faces(2).requires_grad_(True)
    codes = tiny(x)
    assert codes.shape == (2, 8, 64)
    codes.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert tiny.styles[7].linear.weight.grad is not None
    tiny.zero_grad(set_to_none=True)


def test_load_from_path_in_e4e_format(tmp_path: Path, tiny) -> None:
    avg = torch.randn(8, 64)
    path = tmp_path / "e4e_ffhq_encode.pt"
    torch.save(_e4e_checkpoint(tiny, avg), path)
    E, latent_avg = load_e4e(path)
    assert not E.training and torch.equal(latent_avg, avg) and torch.equal(E.latent_avg, avg)
    assert (E.num_layers, E.n_styles, E.w_dim, E.widths) == ((1, 1, 1, 1), 8, 64, (16, 32, 64, 128))
    x = _faces(2)
    with torch.no_grad():
        ref = tiny.eval()(x)
        codes = E(x)
        assert torch.equal(codes, ref)
        assert torch.equal(E.encode(x), ref + avg)  # ws = E(x) + latent_avg
        assert torch.equal(E.encode(x, torch.zeros(64)), ref)
        # Other sizes are resized to 256 first.
        big = torch.nn.functional.interpolate(x, size=(512, 512), mode="bilinear", align_corners=False)
        assert E.encode(big).shape == (2, 8, 64)


def test_load_from_state_dict_variants(tiny) -> None:
    x = _faces(1)
    with torch.no_grad():
        ref = tiny.eval()(x)
    # Flat layout (encoder.* at the top level) and a [w_dim] / [1, w_dim] latent_avg.
    for avg in (torch.ones(64), torch.ones(1, 64)):
        E, latent_avg = load_e4e(_e4e_checkpoint(tiny, avg, nested=False))
        assert latent_avg.shape == (8, 64) and torch.equal(latent_avg, torch.ones(8, 64))
        with torch.no_grad():
            assert torch.equal(E(x), ref)


def test_input_size_is_validated(tiny) -> None:
    with pytest.raises(InputError, match=r"\[B, 3, 256, 256\]"):
        tiny(torch.zeros(1, 3, 128, 128))
    with pytest.raises(InputError):
        tiny.encode(torch.zeros(1, 3, 256, 256), torch.zeros(3, 64))


def test_wrong_checkpoints_raise_checkpoint_error(tmp_path: Path, tiny) -> None:
    # A generator checkpoint: no encoder.* keys.
    gen = tmp_path / "stylegan2.pt"
    torch.save({"g_ema": load_fixture("rosinality_g32.pt")["g_ema"], "latent_avg": torch.zeros(64)}, gen)
    with pytest.raises(CheckpointError, match=r"encoder\.\*") as info:
        load_e4e(gen)
    assert str(gen) in str(info.value)

    # Truncated file.
    full = tmp_path / "full.pt"
    torch.save(_e4e_checkpoint(tiny, torch.zeros(8, 64)), full)
    trunc = tmp_path / "truncated.pt"
    trunc.write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_e4e(trunc)

    # Wrong shape: the error names the key as stored, with both shapes.
    ckpt = _e4e_checkpoint(tiny, torch.zeros(8, 64))
    ckpt["state_dict"]["encoder.styles.5.convs.0.bias"] = torch.zeros(32)
    path = tmp_path / "wrong_shape.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as info:
        load_e4e(path)
    msg = str(info.value)
    assert str(path) in msg and "encoder.styles.5.convs.0.bias" in msg and "[32]" in msg and "[64]" in msg

    # Missing key / no latent_avg / a latent_avg of the wrong width.
    ckpt = _e4e_checkpoint(tiny, torch.zeros(8, 64))
    del ckpt["state_dict"]["encoder.latlayer2.bias"]
    with pytest.raises(CheckpointError, match=r"encoder\.latlayer2\.bias"):
        load_e4e(ckpt)
    ckpt = _e4e_checkpoint(tiny, torch.zeros(8, 64))
    del ckpt["latent_avg"]
    with pytest.raises(CheckpointError, match="latent_avg"):
        load_e4e(ckpt)
    with pytest.raises(CheckpointError, match=r"latent_avg has shape \[8, 32\]"):
        load_e4e(_e4e_checkpoint(tiny, torch.zeros(8, 32)))


def test_psp_encoder_checkpoint_is_refused(tiny) -> None:
    ckpt = _e4e_checkpoint(tiny, torch.zeros(8, 64))
    ckpt["opts"]["encoder_type"] = "GradualStyleEncoder"
    with pytest.raises(CheckpointError, match="GradualStyleEncoder"):
        load_e4e(ckpt)


def test_namespace_opts_is_refused_with_a_clear_message(tmp_path: Path, tiny) -> None:
    ckpt = _e4e_checkpoint(tiny, torch.zeros(8, 64))
    ckpt["opts"] = argparse.Namespace(**ckpt["opts"])
    path = tmp_path / "e4e_namespace.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as info:
        load_e4e(path)
    msg = str(info.value)
    assert str(path) in msg and "argparse.Namespace" in msg and "vars(ckpt['opts'])" in msg
