"""Generator parity with the reference implementations, and checkpoint loading."""

from __future__ import annotations

import collections
import pickle
import sys
import types

import pytest
import torch

from falco.errors import CheckpointError, InputError
from falco.models import Generator, load_generator
from tests.conftest import parity_fixture, shared_path

ATOL = 1e-4


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


rosinality = parity_fixture("rosinality_g32.pt")


nvlabs = parity_fixture("nvlabs_ada_g32.pt")


def test_rosinality_fixture_file_reproduces_every_image(rosinality):
    G = load_generator(shared_path("fixtures", "rosinality_g32.pt"))
    cfg = rosinality["config"]
    assert (G.img_resolution, G.w_dim, G.num_mapping_layers, G.num_ws) == (cfg["size"], cfg["style_dim"], cfg["n_mlp"], rosinality["n_latent"])
    assert G.channels == {r: c for r, c in cfg["channels"].items() if r <= cfg["size"]}
    assert torch.equal(G.w_avg, rosinality["latent_avg"].reshape(-1))
    with torch.no_grad():
        assert _close(G.mapping(rosinality["z"]), rosinality["w"]) < ATOL
        assert _close(G(rosinality["z"], noise_mode="const"), rosinality["img_from_z"]) < ATOL
        assert _close(G.synthesis(rosinality["wplus"]), rosinality["img_from_wplus"]) < ATOL
        img = G(rosinality["z"], truncation_psi=rosinality["truncation"])
        assert _close(img, rosinality["img_truncated"]) < ATOL


def test_nvlabs_state_dict_reproduces_every_image(nvlabs):
    G = load_generator(nvlabs["G_ema_state_dict"])
    kw = nvlabs["init_kwargs"]
    assert (G.img_resolution, G.z_dim, G.w_dim, G.num_mapping_layers) == (
        kw["img_resolution"], kw["z_dim"], kw["w_dim"], kw["mapping_kwargs"]["num_layers"])
    with torch.no_grad():
        w = G.mapping(nvlabs["z"])
        assert _close(w[:, None].expand_as(nvlabs["ws"]), nvlabs["ws"]) < ATOL
        wt = G.mapping(nvlabs["z"], truncation_psi=nvlabs["truncation_psi"])
        assert _close(wt[:, None].expand_as(nvlabs["ws_truncated"]), nvlabs["ws_truncated"]) < ATOL
        assert _close(G.synthesis(nvlabs["ws"]), nvlabs["img_from_z"]) < ATOL
        assert _close(G(nvlabs["z"]), nvlabs["img_from_z"]) < ATOL
        assert _close(G.synthesis(nvlabs["ws_truncated"]), nvlabs["img_truncated"]) < ATOL
        assert _close(G.synthesis(nvlabs["ws_plus"]), nvlabs["img_from_ws_plus"]) < ATOL


def test_e4e_layout_loads_decoder_and_latent_avg(rosinality):
    ckpt = {
        "state_dict": {**{f"decoder.{k}": v for k, v in rosinality["g_ema"].items()},
                       "encoder.input_layer.0.weight": torch.zeros(4, 3, 3, 3)},
        "latent_avg": rosinality["latent_avg"].reshape(1, -1).repeat(rosinality["n_latent"], 1),
        "opts": {"stylegan_size": 32},
    }
    G = load_generator(ckpt)
    assert G.source_layout == "e4e"
    assert torch.equal(G.w_avg, rosinality["latent_avg"].reshape(-1))
    with torch.no_grad():
        assert _close(G.synthesis(rosinality["wplus"]), rosinality["img_from_wplus"]) < ATOL


def test_noise_modes_and_shapes(rosinality):
    G = load_generator({"g_ema": rosinality["g_ema"], "latent_avg": rosinality["latent_avg"]})
    ws = rosinality["wplus"]
    with torch.no_grad():
        const = G.synthesis(ws, noise_mode="const")
        none = G.synthesis(ws, noise_mode="none")
        r1, r2 = G.synthesis(ws, noise_mode="random"), G.synthesis(ws, noise_mode="random")
    assert const.shape == (2, 3, 32, 32)
    assert not torch.allclose(const, none) and not torch.allclose(r1, r2)
    with torch.no_grad():  # a [B, w_dim] code is broadcast to every layer
        assert torch.allclose(G.synthesis(ws[:, 0]), G.synthesis(ws[:, :1].expand_as(ws)))
    with pytest.raises(InputError, match="ws must have shape"):
        G.synthesis(torch.zeros(2, 5, G.w_dim))
    with pytest.raises(InputError, match="noise_mode"):
        G.synthesis(ws, noise_mode="loud")


def test_missing_latent_avg_is_computed_with_warning(rosinality, caplog):
    G = load_generator({"g_ema": rosinality["g_ema"]})
    assert "no latent_avg" in caplog.text
    # The fixture's latent_avg is the mean of 4096 mapped z: ours (10,000 samples) is close to it.
    assert _close(G.w_avg, rosinality["latent_avg"].reshape(-1)) < 0.1 * float(rosinality["latent_avg"].abs().max())


def test_constructor_validates_and_default_table():
    G = Generator(64, 16, 2, channels={4: 8, 8: 8, 16: 8, 32: 4, 64: 4})
    assert G.num_ws == 10 and G.init_kwargs["channels"][64] == 4
    assert Generator(1024, 512, 8).channels[1024] == 32  # config-f
    with pytest.raises(InputError, match="power of two"):
        Generator(48, 16, 2)
    with pytest.raises(InputError, match="no entry"):
        Generator(32, 16, 2, channels={4: 8})


def test_bad_checkpoints_raise_typed_errors(tmp_path, rosinality):
    with pytest.raises(CheckpointError, match="not a StyleGAN2 generator"):
        load_generator({"foo": torch.zeros(1)})
    bad = dict(rosinality["g_ema"])
    bad["convs.1.conv.weight"] = torch.zeros(1, 32, 32, 1, 1)
    with pytest.raises(CheckpointError, match=r"convs\.1\.conv\.weight"):
        load_generator({"g_ema": bad})
    missing = {k: v for k, v in rosinality["g_ema"].items() if k != "to_rgb1.bias"}
    with pytest.raises(CheckpointError, match="to_rgb1.bias"):
        load_generator({"g_ema": missing})
    path = tmp_path / "g.pt"
    torch.save({"g_ema": rosinality["g_ema"]}, path)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_generator(truncated)
    with pytest.raises(CheckpointError, match="nope.pt"):
        load_generator(tmp_path / "nope.pt")
    pkl = tmp_path / "junk.pkl"
    pkl.write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(CheckpointError, match="junk.pkl"):
        load_generator(pkl)


# -- NVIDIA pickles ------------------------------------------------------------------------

EMBEDDED_SOURCE = "raise RuntimeError('the embedded network source was executed')\n"


class _FakeNetwork:
    """Pickles exactly like an NVlabs persistent nn.Module (meta with module_src + state)."""

    def __init__(self, class_name: str, state: dict) -> None:
        self.class_name, self.state = class_name, state

    def __reduce__(self):
        from torch_utils import persistence  # the fake module installed by the test

        meta = dict(type="class", version=6, module_src=EMBEDDED_SOURCE, class_name=self.class_name, state=self.state)
        return persistence._reconstruct_persistent_obj, (meta,)


def _module_tree(sd: dict[str, torch.Tensor], easydict: type) -> _FakeNetwork:
    """Nest a flat state dict into persistent modules with _parameters/_buffers/_modules."""
    root: dict = {}
    for key, value in sd.items():
        *path, leaf = key.split(".")
        node = root
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value

    def build(name: str, node: dict) -> _FakeNetwork:
        params, buffers, modules = collections.OrderedDict(), collections.OrderedDict(), collections.OrderedDict()
        for k, v in node.items():
            if isinstance(v, dict):
                modules[k] = build(k, v)
            elif k in ("w_avg", "resample_filter", "noise_const"):
                buffers[k] = v
            else:
                params[k] = torch.nn.Parameter(v, requires_grad=False)
        state = {"training": False, "_parameters": params, "_buffers": buffers, "_modules": modules,
                 "_non_persistent_buffers_set": set(), "_init_kwargs": easydict(z_dim=64)}
        return _FakeNetwork(name, state)

    return build("Generator", root)


@pytest.fixture
def nvidia_pickle_file(tmp_path, nvlabs, monkeypatch):
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # what NVlabs does: exec the embedded source
        exec(meta["module_src"], {})

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    torch_utils = types.ModuleType("torch_utils")
    torch_utils.persistence = persistence
    dnnlib = types.ModuleType("dnnlib")
    util = types.ModuleType("dnnlib.util")

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    util.EasyDict = EasyDict
    dnnlib.util = util
    mods = {"torch_utils": torch_utils, "torch_utils.persistence": persistence, "dnnlib": dnnlib, "dnnlib.util": util}
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    G_ema = _module_tree(nvlabs["G_ema_state_dict"], EasyDict)
    path = tmp_path / "network-snapshot.pkl"
    with open(path, "wb") as f:
        pickle.dump({"G": G_ema, "D": None, "G_ema": G_ema, "training_set_kwargs": EasyDict(resolution=32)}, f)
    # A plain unpickler runs the embedded source: proof that the file would execute code.
    with pytest.raises(RuntimeError, match="embedded network source was executed"):
        with open(path, "rb") as f:
            pickle.load(f)
    for name in mods:  # falco must not need NVIDIA's modules at all
        monkeypatch.delitem(sys.modules, name)
    return path


def test_nvidia_pickle_loads_without_executing_embedded_source(nvidia_pickle_file, nvlabs):
    G = load_generator(nvidia_pickle_file)
    assert G.source_layout == "nvidia"
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules
    assert torch.allclose(G.w_avg, nvlabs["G_ema_state_dict"]["mapping.w_avg"])
    with torch.no_grad():
        assert _close(G(nvlabs["z"]), nvlabs["img_from_z"]) < ATOL
        assert _close(G.synthesis(nvlabs["ws_plus"]), nvlabs["img_from_ws_plus"]) < ATOL


def test_nvidia_pickle_reader_refuses_unknown_callables(tmp_path):
    class Evil:
        def __reduce__(self):
            import os

            return os.system, ("echo pwned > /dev/null",)

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": Evil()}))
    with pytest.raises(CheckpointError):
        load_generator(path)  # os.system becomes an inert placeholder: no generator in it


def test_conv_clamp_is_read_from_nvidia_kwargs_and_clamps_every_layer(nvlabs):
    import copy

    assert load_generator(nvlabs).conv_clamp is None  # the fixture was made with conv_clamp=None
    ckpt = copy.deepcopy({k: nvlabs[k] for k in ("G_ema_state_dict", "init_kwargs")})
    ckpt["init_kwargs"]["synthesis_kwargs"]["conv_clamp"] = 256
    G = load_generator(ckpt)
    assert G.conv_clamp == 256.0 and G.init_kwargs["conv_clamp"] == 256.0
    with torch.no_grad():  # fp32 activations stay far below 256: parity is kept
        assert _close(G.synthesis(nvlabs["ws_plus"]), nvlabs["img_from_ws_plus"]) < ATOL
    ckpt["init_kwargs"]["synthesis_kwargs"]["conv_clamp"] = 0.05
    tight = load_generator(ckpt)
    seen = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(float(out.abs().max())))
             for m in tight.modules() if m.__class__.__name__ == "FusedLeakyReLU"]
    with torch.no_grad():
        img = tight.synthesis(nvlabs["ws_plus"])
    for h in hooks:
        h.remove()
    assert seen and max(seen) <= 0.05 + 1e-6
    assert _close(img, nvlabs["img_from_ws_plus"]) > 1e-3


# -- speed switches: each is the same function as the reference rendering ---------------------

def test_split_modconv_and_channels_last_reproduce_the_fixture(rosinality):
    G = load_generator(shared_path("fixtures", "rosinality_g32.pt"))
    ws = rosinality["wplus"]
    with torch.no_grad():
        split = G.synthesis(ws, fused_modconv=False)
        cl = G.synthesis(ws, channels_last=True)
    assert _close(split, rosinality["img_from_wplus"]) < ATOL
    assert _close(cl, rosinality["img_from_wplus"]) < ATOL
    assert cl.is_contiguous(memory_format=torch.channels_last)


def test_split_modconv_gradients_match_the_fused_ones(rosinality):
    G = load_generator(shared_path("fixtures", "rosinality_g32.pt"))
    grads = []
    for fused in (True, False):
        ws = rosinality["wplus"].clone().requires_grad_(True)
        G.synthesis(ws, fused_modconv=fused).square().mean().backward()
        grads.append(ws.grad)
    assert grads[0].abs().max() > 0
    assert _close(grads[0], grads[1]) < 1e-5 * float(grads[0].abs().max()) + 1e-7


@pytest.mark.parametrize("num_frozen", [1, 2, 3, 5])
def test_frozen_prefix_resumes_synthesis_exactly(rosinality, num_frozen):
    G = load_generator(shared_path("fixtures", "rosinality_g32.pt"))
    ws = rosinality["wplus"]
    with torch.no_grad():
        prefix = G.frozen_prefix(ws, num_frozen)
        assert prefix.num_frozen_ws <= num_frozen and prefix.pos > 0
        assert torch.equal(G.synthesis(ws, prefix=prefix), G.synthesis(ws))
        # only ws[:, :num_frozen] was read: changing the other layers changes nothing in the prefix
        other = ws.clone()
        other[:, num_frozen:] += 1.0
        again = G.frozen_prefix(other, num_frozen)
        assert torch.equal(again.x, prefix.x)
        assert torch.equal(G.synthesis(other, prefix=prefix), G.synthesis(other))
        assert not torch.equal(G.synthesis(other), G.synthesis(ws))


def test_frozen_prefix_refuses_random_noise_and_wrong_batch(rosinality):
    G = load_generator(shared_path("fixtures", "rosinality_g32.pt"))
    ws = rosinality["wplus"]
    with pytest.raises(InputError, match="random"):
        G.frozen_prefix(ws, 3, noise_mode="random")
    with pytest.raises(InputError, match="prefix"):
        G.synthesis(ws[:1], prefix=G.frozen_prefix(ws, 3))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_num_fp16_res_runs_only_the_top_resolutions_in_low_precision(rosinality, dtype):
    G = load_generator(shared_path("fixtures", "rosinality_g32.pt"))
    ws = rosinality["wplus"]
    seen: dict[int, torch.dtype] = {}
    hooks = [m.register_forward_hook(lambda m, _i, out: seen.__setitem__(out.shape[-1], out.dtype))
             for m in G.modules() if m.__class__.__name__ == "FusedLeakyReLU"]
    with torch.no_grad():
        img = G.synthesis(ws, num_fp16_res=2, fp16_dtype=dtype)
    for h in hooks:
        h.remove()
    assert seen == {4: torch.float32, 8: torch.float32, 16: dtype, 32: dtype}
    assert img.dtype == torch.float32  # the RGB skip stays fp32
    err = _close(img, rosinality["img_from_wplus"])
    assert 0 < err < 0.1 * float(rosinality["img_from_wplus"].abs().max())


def test_fp16_layers_clamp_activations_even_without_conv_clamp(rosinality):
    G = load_generator(shared_path("fixtures", "rosinality_g32.pt"))
    assert G.conv_clamp is None
    acts = [m for m in G.modules() if m.__class__.__name__ == "FusedLeakyReLU"]
    for m in acts:  # large activations in the fp16 layers: only a clamp keeps them below 256
        if m.bias.shape[0] != G.channels[4]:
            m.bias.data.fill_(3e4)
    seen: list[tuple[torch.dtype, float]] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append((out.dtype, float(out.abs().max()))))
             for m in acts]
    with torch.no_grad():
        G.synthesis(rosinality["wplus"], num_fp16_res=2, fp16_dtype=torch.float16)
        low = [v for dt, v in seen if dt == torch.float16]
        seen.clear()
        G.synthesis(rosinality["wplus"])
        full = [v for _dt, v in seen]
    for h in hooks:
        h.remove()
    assert len(low) == 4 and max(low) <= 256.0
    assert max(full) > 1e4
