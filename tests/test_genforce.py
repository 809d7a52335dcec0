"""genforce StyleGAN2 checkpoints (FALCO's ``stylegan2_ffhq1024.pth``) against the genforce parity fixture."""

from __future__ import annotations

import math

import pytest
import torch

from falco.errors import CheckpointError, InputError
from falco.models import load_generator
from falco.models.genforce import genforce_truncation_layers
from tests.conftest import parity_fixture, shared_path

ATOL = 1e-4
PSI = 0.7  # the fixture's truncation_psi, on its first trunc_layers = 8 (= all) layers


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


fx = parity_fixture("genforce_g32.pt")


@pytest.fixture(scope="module")
def G():
    return load_generator(shared_path("fixtures", "genforce_g32.pt"))


def _outputs(G, fx: dict) -> dict[str, float]:
    """Max absolute difference to every fixture output, by name."""
    z = fx["z"]
    with torch.no_grad():
        return {
            "wp": _close(G.mapping_ws(z), fx["wp"]),
            "wp (mapping, broadcast)": _close(G.mapping(z)[:, None].expand_as(fx["wp"]), fx["wp"]),
            "img_from_z": _close(G(z), fx["img_from_z"]),
            "img_from_wplus": _close(G.synthesis(fx["wplus"]), fx["img_from_wplus"]),
            "img_from_wplus (fused_modconv=False)": _close(G.synthesis(fx["wplus"], fused_modconv=False),
                                                           fx["img_from_wplus"]),
            "wp_truncated": _close(G.mapping_ws(z, PSI), fx["wp_truncated"]),
            "wp_truncated (mapping, broadcast)": _close(G.mapping(z, PSI)[:, None].expand_as(fx["wp"]),
                                                        fx["wp_truncated"]),
            "img_truncated": _close(G(z, truncation_psi=PSI), fx["img_truncated"]),
            "img_truncated (from wp_truncated)": _close(G.synthesis(fx["wp_truncated"]), fx["img_truncated"]),
        }


def test_architecture_and_w_avg_come_from_the_file(G, fx):
    kw = fx["init_kwargs"]
    assert (fx["truncation_psi"], fx["trunc_layers"]) == (PSI, G.num_ws)
    assert G.source_layout == "genforce"
    assert (G.img_resolution, G.z_dim, G.w_dim, G.num_mapping_layers) == (
        kw["resolution"], kw["z_space_dim"], kw["w_space_dim"], kw["mapping_layers"])
    assert G.num_ws == fx["wp"].shape[1] == 8
    assert G.channels == {r: min(kw["fmaps_base"] // r, kw["fmaps_max"]) for r in G.channels}
    assert torch.equal(G.w_avg, fx["generator_smooth"]["truncation.w_avg"])
    assert G.truncation_layers is None  # get_w's trunc_layers=18 covers all 8 layers


def test_fixture_file_reproduces_every_output(G, fx):
    diffs = _outputs(G, fx)
    assert max(diffs.values()) < ATOL, diffs
    assert float(fx["img_from_z"].abs().max()) > 0.1  # the images are not trivially small


def test_truncation_of_the_first_layers_only(fx):
    G = load_generator(fx["generator_smooth"])  # a bare genforce state dict loads too
    z = fx["z"]
    G.truncation_layers = 3
    with torch.no_grad():
        ws, full = G.mapping_ws(z, PSI), G.mapping_ws(z)
        assert _close(ws[:, :3], fx["wp_truncated"][:, :3]) < ATOL
        assert torch.equal(ws[:, 3:], full[:, 3:])
        assert _close(full, fx["wp"]) < ATOL
        with pytest.raises(InputError, match="mapping_ws"):
            G.mapping(z, truncation_psi=PSI)
        assert torch.equal(G.mapping(z), full[:, 0])  # psi 1 is unaffected
        G.truncation_layers = 0  # genforce: no truncation at all
        assert torch.equal(G.mapping_ws(z, PSI), full)
    assert genforce_truncation_layers(18) is None and genforce_truncation_layers(8) is None
    assert genforce_truncation_layers(20) == 18


def _perturbed(sd: dict, delta: float) -> dict:
    """Other weights (what ``generator`` holds beside ``generator_smooth``); the resampling filters stay."""
    return {k: v if k.endswith("kernel") else v + delta for k, v in sd.items()}


def test_generator_smooth_is_loaded_not_generator(tmp_path, fx):
    smooth = fx["generator_smooth"]
    raw = _perturbed(smooth, 0.05)
    path = tmp_path / "stylegan2_ffhq1024.pth"
    torch.save({"generator": raw, "discriminator": {"layer0.weight": torch.zeros(2, 3, 1, 1)},
                "generator_smooth": smooth}, path)
    G = load_generator(path)
    assert G.source_layout == "genforce"
    with torch.no_grad():
        assert _close(G(fx["z"]), fx["img_from_z"]) < ATOL
        # The two generators really differ: the raw weights would render another image.
        assert _close(load_generator({"generator_smooth": raw})(fx["z"]), fx["img_from_z"]) > 1e-2


def test_genforce_file_without_generator_smooth_is_a_clear_error(tmp_path, fx):
    path = tmp_path / "only_generator.pth"
    torch.save({"generator": fx["generator_smooth"], "discriminator": {"w": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match=r"only_generator\.pth.*generator_smooth.*generator, discriminator"):
        load_generator(path)
    with pytest.raises(CheckpointError, match="'generator_smooth' is not a genforce"):
        load_generator({"generator_smooth": {"weight": torch.zeros(1)}})


def _fan_in(t: torch.Tensor) -> int:
    return math.prod(t.shape[1:])


@pytest.mark.parametrize("variant", ["mapping_lr_mul", "use_wscale"])
def test_weight_scaling_conventions_are_folded_exactly(fx, variant):
    """The same network stored under another ``mapping_lr_mul`` / without ``use_wscale`` renders the same."""
    sd = dict(fx["generator_smooth"])
    kwargs = dict(fx["init_kwargs"])
    if variant == "mapping_lr_mul":  # run time w * lr_mul / sqrt(in), b * lr_mul: store them halved at lr_mul 0.02
        kwargs["mapping_lr_mul"] = 2 * kwargs.get("mapping_lr_mul", 0.01)
        sd = {k: v / 2 if k.startswith("mapping.dense") else v for k, v in sd.items()}
    else:  # use_wscale=False: weights stored already multiplied by 1 / sqrt(fan_in)
        kwargs["use_wscale"] = False
        sd = {k: v / math.sqrt(_fan_in(v)) if k.endswith("weight") and v.ndim >= 2 else v for k, v in sd.items()}
    G = load_generator({"generator_smooth": sd, "init_kwargs": kwargs})
    diffs = _outputs(G, fx)
    assert max(diffs.values()) < ATOL, diffs


@pytest.mark.parametrize("name, value", [("architecture", "resnet"), ("final_tanh", True), ("label_size", 10)])
def test_unsupported_settings_are_refused_by_name(fx, name, value):
    kwargs = {**fx["init_kwargs"], name: value}
    with pytest.raises(CheckpointError, match=f"{name}={value!r}"):
        load_generator({"generator_smooth": fx["generator_smooth"], "init_kwargs": kwargs})


def test_other_resampling_filters_are_refused(fx):
    sd = dict(fx["generator_smooth"])
    key = next(k for k in sd if k.endswith("filter.kernel") or k == "synthesis.upsample.kernel")
    sd[key] = torch.ones_like(sd[key])
    with pytest.raises(CheckpointError, match="resampling filter"):
        load_generator({"generator_smooth": sd})
