"""The paper's hyperparameters reach the optimiser, and ``--m`` pulls the identity the way the loss says.

Every expectation here is written from the paper / DESIGN.md ("Defaults that reproduce the
paper: m = 0.0, 50 Adam steps, lr 0.01, lr decays x0.8 at steps int(0.75 * steps) and
int(0.9 * steps) (37 and 45, the reference's rule), lambda_id = 10, lambda_attr = 0.1,
trainable W+ layers 3..7") or computed by hand in the test, never read back from the code
under test.
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

import falco.methods.falco
from falco.latent.optimise import FalcoParams, OptimResult, optimise
from falco.latent.invert import encode
from tests.conftest import shared_path

# The paper's defaults, written out (DESIGN.md), not imported from falco.
PAPER = dict(m=0.0, steps=50, lr=0.01, lr_milestones=(0.75, 0.9), lr_gamma=0.8, lambda_id=10.0,
             lambda_attr=0.1, layers=(3, 8))


def _paper_fields(params: FalcoParams) -> dict:
    return {k: getattr(params, k) for k in PAPER}


def test_falco_params_and_anonymize_config_defaults_are_the_papers(tmp_path):
    from falco.config import AnonymizeConfig

    assert _paper_fields(FalcoParams()) == PAPER
    cfg = AnonymizeConfig(input=tmp_path, out=tmp_path / "o")
    assert cfg.falco == FalcoParams()


# -- from the command line / the config to the optimiser ------------------------------------

@pytest.fixture()
def spy_optimise(monkeypatch):
    """Replace the ``optimise`` FALCO's anonymizer calls: record its params, return the start codes."""
    seen: list[FalcoParams] = []

    def spy(ws_real, ws_fake, x_real, G, id_encoder, farl, *, params, **kwargs):
        seen.append(params)
        start, end = 3, 8  # any valid code will do; the spy only has to return quickly
        ws = torch.cat([ws_real[:, :start], ws_fake[:, start:end], ws_real[:, end:]], dim=1)
        return OptimResult(ws=ws, losses={})

    monkeypatch.setattr(falco.methods.falco, "optimise", spy)
    return seen


@pytest.fixture()
def one_photo(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(shared_path("data", "faces", "2008_001009.jpg"), src / "a.jpg")
    return src


def _cli(args: list[str]) -> int:
    from falco.cli import main

    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_defaults_reach_the_optimiser(tiny_models, one_photo, tmp_path, spy_optimise):
    # only flags that do not touch FALCO's hyperparameters: where things are, and a small bank
    code = _cli(["anonymize", str(one_photo), "--out", str(tmp_path / "out"), "--models", str(tiny_models),
                 "--device", "cpu", "--bank-size", "16", "--no-progress"])
    assert code in (0, 1)
    assert spy_optimise, "the FALCO method never called optimise"
    for params in spy_optimise:
        assert _paper_fields(params) == PAPER


def test_config_defaults_reach_the_optimiser(tiny_models, one_photo, tmp_path, spy_optimise):
    from falco.run.anonymize import run_anonymize
    from falco.config import AnonymizeConfig

    run_anonymize(AnonymizeConfig(input=one_photo, out=tmp_path / "out", models=tiny_models, device="cpu",
                                  bank_size=16, progress=False), echo=lambda *_: None)
    assert spy_optimise, "the FALCO method never called optimise"
    for params in spy_optimise:
        assert _paper_fields(params) == PAPER


def test_cli_flags_reach_the_optimiser(tiny_models, one_photo, tmp_path, spy_optimise):
    code = _cli(["anonymize", str(one_photo), "--out", str(tmp_path / "out"), "--models", str(tiny_models),
                 "--device", "cpu", "--bank-size", "16", "--no-progress", "--m", "0.5", "--lambda-attr", "0",
                 "--lambda-id", "3", "--layers", "2:6", "--steps", "7", "--lr", "0.02"])
    assert code in (0, 1)
    assert spy_optimise
    for params in spy_optimise:
        assert (params.m, params.lambda_attr, params.layers, params.steps, params.lr) == (0.5, 0.0, (2, 6), 7, 0.02)
        assert params.lambda_id in (3.0, 9.0)  # 9: the guard's re-do triples the identity weight


# -- the real optimiser's learning-rate schedule ----------------------------------------------

def _observe_lrs(monkeypatch, params: FalcoParams) -> list[float]:
    """Run the real ``optimise`` (its Adam and scheduler) on a cheap loss; the lr Adam used at each step."""
    import falco.latent.optimise as anonymize_module

    lrs: list[float] = []

    class RecordingAdam(torch.optim.Adam):
        def step(self, *args, **kwargs):
            lrs.append(self.param_groups[0]["lr"])
            return super().step(*args, **kwargs)

    def cheap_losses(G, id_encoder, farl, ws, prefix, e_real, t_real, params):
        l = ws.pow(2).flatten(1).mean(1)
        return l, l

    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    monkeypatch.setattr(anonymize_module, "_loss_fn", lambda params: cheap_losses)
    ident = torch.nn.Identity()
    ident.tokens = lambda x: x.flatten(2)  # what optimise reads of FaRL: tokens(x)
    g = torch.Generator().manual_seed(0)
    ws_real, ws_fake = torch.randn(1, 10, 4, generator=g), torch.randn(1, 10, 4, generator=g)
    optimise(ws_real, ws_fake, torch.zeros(1, 3, 8, 8), torch.nn.Identity(), ident, ident, params=params)
    return lrs


@pytest.mark.parametrize("steps, first, second", [(50, 37, 45), (10, 7, 9), (20, 15, 18)])
def test_lr_decays_by_0_8_at_int_75_and_90_percent_of_the_steps(monkeypatch, steps, first, second):
    """The reference: ``MultiStepLR(milestones=[int(0.75 * epochs), int(0.9 * epochs)], gamma=0.8)``;
    the first ``first`` steps use lr, the next ``second - first`` lr * 0.8, the rest lr * 0.64."""
    lrs = _observe_lrs(monkeypatch, FalcoParams(steps=steps) if steps != 50 else FalcoParams())
    expected = [0.01] * first + [0.008] * (second - first) + [0.0064] * (steps - second)
    assert len(lrs) == steps
    assert lrs == pytest.approx(expected, rel=1e-9, abs=0)


# -- the margin m: direction of the optimisation and the loss value ---------------------------

@pytest.fixture(scope="module")
def nets(tiny_nets):
    return tiny_nets


def _by_hand_cos(nets, ws: torch.Tensor, x_real: torch.Tensor) -> torch.Tensor:
    """ArcFace cosine of ``ws``'s render with the real faces, computed here (no falco helper)."""
    G, idn = nets["G"], nets["id_encoder"]
    with torch.no_grad():
        img = G.synthesis(ws, noise_mode="const")
        img = F.interpolate(img, size=(256, 256), mode="bilinear", align_corners=False)  # tiny G: 64 px -> 256
        a, b = idn(img).double(), idn(x_real).double()
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


@pytest.fixture(scope="module")
def margin_runs(nets):
    G = nets["G"]
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        w_real = G.mapping(torch.randn(3, G.z_dim, generator=g), truncation_psi=0.7)
        x_real = F.interpolate(G.synthesis(w_real[:, None].repeat(1, G.num_ws, 1), noise_mode="const"),
                               size=(256, 256), mode="bilinear", align_corners=False).clamp(-1, 1)
        ws_real = encode(nets["E"], x_real, nets["latent_avg"])
        w_fake = G.mapping(torch.randn(3, G.z_dim, generator=g), truncation_psi=0.7)
    ws_fake = w_fake[:, None].repeat(1, G.num_ws, 1)
    runs = {m: optimise(ws_real, ws_fake, x_real, G, nets["id_encoder"], nets["farl"],
                        params=FalcoParams(m=m, steps=5, lambda_attr=0.0))
            for m in (0.0, 0.5)}
    start = torch.cat([ws_real[:, :3], ws_fake[:, 3:8], ws_real[:, 8:]], dim=1)  # paper: layers 3..7 from the fake
    return dict(x_real=x_real, start=start, runs=runs)


def test_identity_loss_at_step_1_is_abs_cos_minus_m_by_hand(nets, margin_runs):
    cos0 = _by_hand_cos(nets, margin_runs["start"], margin_runs["x_real"])
    for m, res in margin_runs["runs"].items():
        expected = (cos0 - m).abs().float()
        torch.testing.assert_close(res.losses["id"][0], expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(res.losses["total"][0], 10.0 * expected, atol=1e-3, rtol=1e-4)


def test_margin_pulls_the_cosine_towards_m(nets, margin_runs):
    """``|cos - m|``: with m = 0.5 the anonymized face ends nearer cos 0.5, with m = 0 nearer 0."""
    x_real = margin_runs["x_real"]
    cos = {m: _by_hand_cos(nets, res.ws, x_real) for m, res in margin_runs["runs"].items()}
    for i in range(len(x_real)):
        assert abs(cos[0.5][i] - 0.5) < abs(cos[0.0][i] - 0.5), (i, cos)
        assert abs(cos[0.0][i]) < abs(cos[0.5][i]), (i, cos)
    # and each run reduced its own |cos - m|, recomputed here, where it started far from m
    # (Adam's first steps move every code element by about lr: a face that starts near m may overshoot)
    cos0 = _by_hand_cos(nets, margin_runs["start"], x_real)
    for m in (0.0, 0.5):
        far = (cos0 - m).abs() > 0.1
        assert far.any() and ((cos[m] - m).abs() < (cos0 - m).abs())[far].all(), (m, cos0, cos[m])
