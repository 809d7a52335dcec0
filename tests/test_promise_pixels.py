"""Pixel normalisation: uint8 faces enter the encoders in [-1, 1] (x / 127.5 - 1), and back exactly;
the 256-px renders, the e4e codes and their refinement (``falco.latent.invert``).

Expectations are pixel arithmetic written in the test; the end-to-end check recomputes the
encoder's input from the aligned crop ``falco invert`` wrote (PNG, lossless); the refinement is
checked against Adam's update rule stepped by hand on the loss its docstring states.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from falco.errors import InputError
from falco.latent.images import dequantize, quantize, quantize_uint8, to_tensor, to_uint8
from tests.conftest import shared_path


def test_known_pixel_values_map_to_known_tensor_values():
    values = np.array([0, 1, 127, 128, 254, 255], dtype=np.uint8)
    img = np.ascontiguousarray(np.broadcast_to(values[:, None, None, None], (6, 2, 2, 3)))  # one grey level per face
    x = to_tensor(img, size=2)
    assert x.shape == (6, 3, 2, 2) and x.dtype == torch.float32
    expected = [-1.0, 1 / 127.5 - 1, 127 / 127.5 - 1, 128 / 127.5 - 1, 254 / 127.5 - 1, 1.0]  # v / 127.5 - 1
    for i, e in enumerate(expected):
        assert torch.allclose(x[i], torch.full_like(x[i], e), atol=1e-7, rtol=0), (values[i], x[i].flatten()[:3], e)
    assert x[0].eq(-1).all() and x[5].eq(1).all()  # exact ends
    assert float(x[2].flatten()[0]) == pytest.approx(-0.5 / 127.5, abs=1e-7)  # 127 sits just under 0
    assert float(x[3].flatten()[0]) == pytest.approx(0.5 / 127.5, abs=1e-7)   # 128 just over


def test_channels_keep_their_order_and_layout():
    img = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 0, 255, 51  # R, G, B
    img[0, 1, 0] = (255, 0, 0)  # one pixel: row 1, column 0
    x = to_tensor(img, size=2)
    x_by_hand = torch.tensor([[[-1.0, -1.0], [1.0, -1.0]],                  # red: only row 1, column 0
                              [[1.0, 1.0], [-1.0, 1.0]],                    # green: all but that pixel
                              [[51 / 127.5 - 1] * 2, [-1.0, 51 / 127.5 - 1]]])  # blue
    torch.testing.assert_close(x[0], x_by_hand, atol=1e-7, rtol=0)


def test_resizing_to_the_encoder_size_is_an_antialiased_bilinear_resize_like_pillows():
    """A face of another size is resized as Pillow's BILINEAR resize does it (a triangle filter widened
    when shrinking); Pillow rounds to uint8, so the two agree to within one grey level."""
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (2, 512, 384, 3), dtype=np.uint8)  # shrunk, not square
    small = rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)  # one face, enlarged
    for batch, got in ((faces, to_tensor(faces)), (small[None], to_tensor(small, size=256))):
        assert got.shape == (len(batch), 3, 256, 256) and got.dtype == torch.float32
        pil = np.stack([np.asarray(Image.fromarray(f).resize((256, 256), Image.Resampling.BILINEAR)) for f in batch])
        expected = torch.from_numpy(pil).permute(0, 3, 1, 2).double() / 127.5 - 1
        err = (got.double() - expected).abs()
        assert err.max() <= 1.0 / 127.5 + 1e-6, err.max() * 127.5  # measured 0.99 levels at most
        assert err.mean() < 0.4 / 127.5  # measured 0.28 levels (rounding)
    assert to_tensor(faces, size=64).shape == (2, 3, 64, 64)


def test_the_quantiser_inverts_the_normalisation_exactly():
    levels = np.arange(256, dtype=np.uint8)
    img = np.ascontiguousarray(np.broadcast_to(levels.reshape(16, 16)[None, :, :, None], (1, 16, 16, 3)))
    x = to_tensor(img, size=16)
    assert np.array_equal(to_uint8(x), img)
    # and the quantiser's own points: -1 -> 0, 1 -> 255, 0 -> 128 (127.5 rounds half to even), clamped outside
    y = torch.tensor([-1.0, 1.0, 0.0, -3.0, 3.0, 1 / 127.5 - 1]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    assert to_uint8(y)[0, 0, :, 0].tolist() == [0, 255, 128, 0, 255, 1]


def test_dequantize_is_v_over_127_5_minus_1_and_quantize_reads_every_level_back():
    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    x = dequantize(levels)
    assert x.dtype == torch.float32
    expected = torch.arange(256, dtype=torch.float64).view(16, 16) / 127.5 - 1  # by hand, in float64
    torch.testing.assert_close(x[0, 0].double(), expected, atol=1e-7, rtol=0)
    u8 = quantize(x)
    assert u8.dtype == torch.uint8 and u8.shape == (1, 3, 16, 16) and torch.equal(u8, levels)
    # to_uint8 is the same quantiser, channels last, on the CPU, and takes tensors that need gradients
    assert np.array_equal(to_uint8(x.clone().requires_grad_(True)), levels.permute(0, 2, 3, 1).numpy())


def test_a_quantised_fake_reads_back_like_its_png(tmp_path):
    """The bank's fakes are embedded from ``quantize_uint8``'s float: it must equal the saved PNG read back."""
    g = torch.Generator().manual_seed(5)
    render = torch.randn(2, 3, 8, 8, generator=g) * 0.8  # some values beyond [-1, 1]: clamped
    u8, readback = quantize_uint8(render)
    assert u8.shape == (2, 3, 8, 8) and u8.dtype == torch.uint8 and readback.dtype == torch.float32
    rgb = to_uint8(render)
    assert np.array_equal(u8.permute(0, 2, 3, 1).numpy(), rgb)
    by_hand = np.clip(np.round((render.double().numpy() + 1) * 127.5), 0, 255).astype(np.uint8)
    assert np.array_equal(u8.numpy(), by_hand)
    for i in range(2):
        Image.fromarray(rgb[i]).save(tmp_path / f"{i}.png")
    png = np.stack([np.asarray(Image.open(tmp_path / f"{i}.png").convert("RGB")) for i in range(2)])
    assert torch.equal(readback, to_tensor(png, size=8))  # bit for bit


def test_invert_feeds_the_encoder_the_written_crop_over_127_5_minus_1(tiny_models, tmp_path, monkeypatch):
    """``falco invert`` on a shared photo: the tensor the e4e encoder receives equals the aligned crop
    it wrote (PNG, lossless), read back here, / 127.5 - 1."""
    import falco.run.invert as invert_module
    from falco.cli import main
    from falco.run.manifest import RunManifest

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(shared_path("data", "faces", "2008_001322.jpg"), src / "a.jpg")
    seen: list[torch.Tensor] = []
    real_load_role = invert_module.load_role

    def load_role(role, models, device):
        out = real_load_role(role, models, device)
        if role == "encoder":
            out[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
        return out

    monkeypatch.setattr(invert_module, "load_role", load_role)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["invert", str(src), "--out", str(out), "--models", str(tiny_models), "--device", "cpu", "--no-progress"])
    assert exit_info.value.code == 0
    with RunManifest(out) as m:
        rows = sorted(m.faces(), key=lambda r: r["face_index"])
    assert len(rows) >= 2
    received = torch.cat(seen)
    assert received.shape == (len(rows), 3, 256, 256)
    for i, row in enumerate(rows):
        crop = np.asarray(Image.open(out / row["aligned"]).convert("RGB"), dtype=np.float64)
        assert crop.shape == (256, 256, 3)
        expected = torch.from_numpy(crop / 127.5 - 1.0).permute(2, 0, 1)
        assert float(received[i].min()) >= -1.0 and float(received[i].max()) <= 1.0
        assert float(received[i].min()) < -0.5  # a photo has dark pixels: [0, 1] inputs would not reach here
        torch.testing.assert_close(received[i].double(), expected, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- rendering and refinement (falco.latent.invert)
# Expectations are written out here: the 256-px view of a render smaller than 256 px is a bilinear
# resize (e4e's face pool, ``to_256``'s docstring), the refinement loss is the per-face pixel MSE
# (+ id_weight * (1 - cos) of the identity embeddings), and its optimiser is Adam (Kingma & Ba,
# beta 0.9 / 0.999, eps 1e-8), stepped by hand below.
def _upsample_256(img: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.interpolate(img, size=(256, 256), mode="bilinear", align_corners=False)


def _codes(G, latent_avg, n: int, spread: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return latent_avg.expand(n, G.num_ws, G.w_dim) + spread * torch.randn(n, G.num_ws, G.w_dim, generator=g)


def _noisy_copy(G):
    import copy

    from falco.models.stylegan2 import NoiseInjection

    G2 = copy.deepcopy(G)
    noises = [m for m in G2.modules() if isinstance(m, NoiseInjection)]
    assert noises, "the generator has noise inputs"
    with torch.no_grad():
        for m in noises:
            m.weight.fill_(0.5)  # the tiny set's strengths are 0 (StyleGAN2's initial value): give the noise a say
    return G2


def test_render_256_is_the_render_resized_to_256_and_keeps_its_noise_mode(tiny_nets):
    from falco.latent.invert import render_256

    G = _noisy_copy(tiny_nets["G"])
    ws = _codes(G, tiny_nets["latent_avg"], 2, 0.3, seed=3)
    with torch.no_grad():
        const = render_256(G, ws)
        assert const.shape == (2, 3, 256, 256)
        torch.testing.assert_close(const, _upsample_256(G.synthesis(ws, noise_mode="const")), rtol=0, atol=1e-6)
        assert torch.equal(render_256(G, ws, "const"), const)  # const noise: the same image every time
        r1, r2 = render_256(G, ws, "random"), render_256(G, ws, noise_mode="random")
        assert (r1 - r2).abs().mean() > 1e-3 and (r1 - const).abs().mean() > 1e-3  # fresh noise at each call
        none = render_256(G, ws, "none")
        torch.testing.assert_close(none, _upsample_256(tiny_nets["G"].synthesis(ws)), rtol=0, atol=1e-6)  # no noise at all
        assert (none - const).abs().mean() > 1e-3


def test_render_256_at_a_max_resolution_reads_the_rgb_skip_there(tiny_nets):
    from falco.latent.invert import render_256

    G = tiny_nets["G"]
    ws = _codes(G, tiny_nets["latent_avg"], 2, 0.3, seed=4)
    with torch.no_grad():
        full = render_256(G, ws)
        for res in (16, 32):
            part = render_256(G, ws, max_resolution=res)
            skip = G.synthesis(ws, max_resolution=res)
            assert skip.shape[-1] == res and part.shape == (2, 3, 256, 256)
            torch.testing.assert_close(part, _upsample_256(skip), rtol=0, atol=1e-6)
            assert (part - full).abs().mean() > 1e-3  # not the full render
        torch.testing.assert_close(render_256(G, ws, max_resolution=G.img_resolution), full, rtol=0, atol=0)
        # both arguments at once: the 16-px skip output with fresh noise
        Gn = _noisy_copy(G)
        a, b = render_256(Gn, ws, "random", max_resolution=16), render_256(Gn, ws, "random", max_resolution=16)
        assert (a - b).abs().mean() > 1e-4
        torch.testing.assert_close(render_256(Gn, ws, "none", max_resolution=16),
                                   _upsample_256(G.synthesis(ws, max_resolution=16)), rtol=0, atol=1e-6)


def _refine_loss(G, ws, x, id_encoder=None, id_weight=0.1) -> torch.Tensor:
    img = _upsample_256(G.synthesis(ws, noise_mode="const"))
    loss = (img - x).pow(2).mean(dim=(1, 2, 3))
    if id_encoder is not None:
        loss = loss + id_weight * (1 - torch.nn.functional.cosine_similarity(id_encoder(img), id_encoder(x), dim=1))
    return loss


def _adam_by_hand(G, ws, x, steps, lr, id_encoder=None, id_weight=0.1) -> torch.Tensor:
    w, m, v = ws.clone(), torch.zeros_like(ws), torch.zeros_like(ws)
    for t in range(1, steps + 1):
        p = w.detach().clone().requires_grad_(True)
        _refine_loss(G, p, x, id_encoder, id_weight).sum().backward()
        g = p.grad
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w = w - lr * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
    return w


@pytest.fixture()
def refine_case(tiny_nets):
    """Two target faces rendered from codes of their own, and starting codes elsewhere."""
    G, avg = tiny_nets["G"], tiny_nets["latent_avg"]
    with torch.no_grad():
        x = _upsample_256(G.synthesis(_codes(G, avg, 2, 0.5, seed=11)))
    return G, x, _codes(G, avg, 2, 0.3, seed=12)


@pytest.mark.parametrize("steps", [1, 2])
def test_refine_takes_adam_steps_on_the_pixel_loss_and_lowers_it(refine_case, steps):
    from falco.latent.invert import refine

    G, x, ws0 = refine_case
    before = ws0.clone()
    out = refine(x, ws0, G, steps=steps, lr=0.02)
    assert out.shape == ws0.shape and out.dtype == ws0.dtype and not out.requires_grad
    assert torch.equal(ws0, before)  # the caller's codes are not modified
    torch.testing.assert_close(out, _adam_by_hand(G, ws0, x, steps, 0.02), rtol=0, atol=1e-5)  # measured 2e-7
    if steps == 1:  # Adam's first step moves every component by the learning rate
        torch.testing.assert_close((out - ws0).abs(), torch.full_like(ws0, 0.02), rtol=0, atol=1e-5)
    with torch.no_grad():
        assert (_refine_loss(G, out, x) < 0.9 * _refine_loss(G, ws0, x)).all()  # each face, measured 0.54x / 0.45x


def test_refine_with_the_identity_term_follows_its_weight(refine_case, tiny_nets):
    from falco.latent.invert import refine

    G, x, ws0 = refine_case
    idE = tiny_nets["id_encoder"]
    out = refine(x, ws0, G, steps=1, lr=0.02, id_encoder=idE, id_weight=1.0)
    torch.testing.assert_close(out, _adam_by_hand(G, ws0, x, 1, 0.02, idE, 1.0), rtol=0, atol=1e-5)
    # the term and its weight matter: the hand steps at weight 0.1 and without the term differ from this one
    assert (out - _adam_by_hand(G, ws0, x, 1, 0.02, idE, 0.1)).abs().max() > 1e-2
    assert (out - _adam_by_hand(G, ws0, x, 1, 0.02)).abs().max() > 1e-2


def test_refine_of_zero_steps_returns_the_codes(refine_case):
    from falco.latent.invert import refine

    G, x, ws0 = refine_case
    out = refine(x, ws0, G, steps=0)
    assert torch.equal(out, ws0) and not out.requires_grad


def test_encode_adds_latent_avg_of_either_shape(tiny_nets):
    from falco.latent.invert import encode

    E, avg = tiny_nets["E"], tiny_nets["latent_avg"]
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        codes = E(x)
        assert avg.ndim == 2 and codes.shape[1:] == avg.shape  # [num_ws, w_dim]
        torch.testing.assert_close(encode(E, x, avg), codes + avg[None], rtol=0, atol=0)
        one = avg[0]  # a single w_dim vector: the same for every layer
        torch.testing.assert_close(encode(E, x, one), codes + one[None, None], rtol=0, atol=0)
        torch.testing.assert_close(encode(E, x, avg[None]), codes + avg[None], rtol=0, atol=0)  # already [1, num_ws, w_dim]


def test_invert_is_encode_then_adam_refinement_in_batches(tiny_nets):
    from falco.latent.invert import invert

    G, E, avg, idE = tiny_nets["G"], tiny_nets["E"], tiny_nets["latent_avg"], tiny_nets["id_encoder"]
    with torch.no_grad():
        x = _upsample_256(G.synthesis(_codes(G, avg, 3, 0.5, seed=21)))
        encoded = E(x) + avg[None]
    plain = invert(x, E, G, latent_avg=avg)
    torch.testing.assert_close(plain, encoded, rtol=0, atol=1e-5)
    torch.testing.assert_close(invert(x, E, G, latent_avg=avg, batch_size=1), plain, rtol=0, atol=1e-5)  # one at a time
    refined = invert(x, E, G, latent_avg=avg, refine_steps=1, refine_lr=0.03, id_encoder=idE, id_weight=0.5, batch_size=2)
    assert refined.shape == (3, G.num_ws, G.w_dim) and not refined.requires_grad
    by_hand = _adam_by_hand(G, encoded, x, 1, 0.03, idE, 0.5)  # per-face losses: batches do not mix
    torch.testing.assert_close(refined, by_hand, rtol=0, atol=1e-5)
    for kwargs in ({"refine_steps": -1}, {"batch_size": 0}):
        with pytest.raises(InputError):
            invert(x, E, G, latent_avg=avg, **kwargs)
    with pytest.raises(InputError, match="images"):
        invert(x[:, :2], E, G, latent_avg=avg)
    with pytest.raises(InputError, match="images"):
        invert(x[0], E, G, latent_avg=avg)


# ----------------------------------------------------------------------------- to_tensor's input checks
def test_to_tensor_resizes_faces_with_one_side_already_at_size():
    rng = np.random.default_rng(1)
    for shape in ((1, 256, 300, 3), (1, 300, 256, 3)):
        faces = rng.integers(0, 256, shape, dtype=np.uint8)
        got = to_tensor(faces)
        assert got.shape == (1, 3, 256, 256)
        pil = np.array(Image.fromarray(faces[0]).resize((256, 256), Image.Resampling.BILINEAR))
        expected = torch.from_numpy(pil).permute(2, 0, 1).double() / 127.5 - 1
        assert (got[0].double() - expected).abs().max() <= 1.0 / 127.5 + 1e-6


@pytest.mark.parametrize("bad", [np.zeros((1, 8, 8, 3), np.float32), np.zeros((1, 8, 8, 4), np.uint8),
                                 np.zeros((1, 1, 8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)])
def test_to_tensor_refuses_anything_but_uint8_rgb(bad):
    with pytest.raises(InputError, match="uint8"):
        to_tensor(bad, size=8)


def test_to_tensor_puts_the_faces_on_the_device_it_is_given():
    faces = np.zeros((2, 8, 8, 3), np.uint8)
    assert to_tensor(faces, size=8, device="meta").device.type == "meta"  # a device without data: no copy back
    assert to_tensor(faces, size=8).device.type == "cpu"


# ----------------------------------------------------------------------------- more of falco.latent.invert
def test_encode_returns_the_encoders_dtype_whatever_latent_avg_is(tiny_nets):
    from falco.latent.invert import encode

    E, avg = tiny_nets["E"], tiny_nets["latent_avg"]
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        ws = encode(E, x, avg.double())
        assert ws.dtype == torch.float32
        torch.testing.assert_close(ws, E(x) + avg[None], rtol=0, atol=1e-6)


class _RecordingEncoder(torch.nn.Module):
    """Stands in for e4e: codes of zeros, and the batch size of every call."""

    def __init__(self, num_ws: int, w_dim: int):
        super().__init__()
        self.num_ws, self.w_dim, self.batches = num_ws, w_dim, []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return torch.zeros(x.shape[0], self.num_ws, self.w_dim) + x.mean(dim=(1, 2, 3))[:, None, None]


def test_invert_runs_the_encoder_8_faces_at_a_time_by_default(tiny_nets):
    from falco.latent.invert import invert

    G, avg = tiny_nets["G"], tiny_nets["latent_avg"]
    x = torch.linspace(-1, 1, 11)[:, None, None, None].expand(11, 3, 4, 4)  # 11 faces, each one grey level
    E = _RecordingEncoder(G.num_ws, G.w_dim)
    ws = invert(x, E, G, latent_avg=avg)
    assert E.batches == [8, 3]
    torch.testing.assert_close(ws, torch.linspace(-1, 1, 11)[:, None, None] + avg[None], rtol=0, atol=1e-6)  # in order
    E.batches.clear()
    invert(x, E, G, latent_avg=avg, batch_size=4)
    assert E.batches == [4, 4, 3]


def test_refinement_defaults_are_lr_0_01_and_id_weight_0_1(refine_case, tiny_nets):
    """The documented defaults of ``refine`` and ``invert`` (lr 0.01; identity weight 0.1)."""
    from falco.latent.invert import invert, refine

    G, x, ws0 = refine_case
    idE = tiny_nets["id_encoder"]
    out = refine(x, ws0, G, steps=1, id_encoder=idE)
    torch.testing.assert_close(out, _adam_by_hand(G, ws0, x, 1, 0.01, idE, 0.1), rtol=0, atol=1e-5)
    torch.testing.assert_close((out - ws0).abs(), torch.full_like(ws0, 0.01), rtol=0, atol=1e-5)
    E = _RecordingEncoder(G.num_ws, G.w_dim)
    with torch.no_grad():
        start = E(x) + tiny_nets["latent_avg"][None]
    refined = invert(x, E, G, latent_avg=tiny_nets["latent_avg"], refine_steps=1, id_encoder=idE)
    torch.testing.assert_close(refined, _adam_by_hand(G, start, x, 1, 0.01, idE, 0.1), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- decoding and writing photos
def _tiff(tmp_path, name: str, array: np.ndarray, mode: str):
    path = tmp_path / name
    Image.fromarray(array, mode).save(path)
    with Image.open(path) as im:
        assert im.mode == mode  # the file really holds that kind of pixels
    return path


def _grey_rgb(out: np.ndarray, expected) -> None:
    assert out.dtype == np.uint8 and out.shape == np.shape(expected) + (3,)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], np.asarray(expected, dtype=np.uint8))


def test_32_bit_integer_images_are_read_as_8_bit_when_they_fit_else_scaled_by_257(tmp_path):
    from falco.run.image_files import load_image

    # max <= 255: 8-bit data stored in 32 bits, used as it is (negatives clip to 0)
    small = np.array([[0, 100, 255], [-7, 3, 200]], np.int32)
    _grey_rgb(load_image(_tiff(tmp_path, "small.tif", small, "I")), [[0, 100, 255], [0, 3, 200]])
    # max above 255: 16-bit-like data, round(v / 257), clipped to 255
    big = np.array([[0, 256, 257 * 100], [65535, 1_000_000, 514]], np.int32)
    _grey_rgb(load_image(_tiff(tmp_path, "big.tif", big, "I")), [[0, 1, 100], [255, 255, 2]])


def test_16_bit_images_are_always_scaled_by_257(tmp_path):
    from falco.run.image_files import load_image

    dim = np.array([[0, 100, 255], [128, 129, 200]], np.uint16)  # 16-bit data that happens to be dark
    path = tmp_path / "dim.png"
    Image.fromarray(dim).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16"
    _grey_rgb(load_image(path), [[0, 0, 1], [0, 1, 1]])  # round(v / 257), not v


def test_float_images_in_0_1_are_scaled_by_255_others_used_as_they_are(tmp_path):
    from falco.run.image_files import load_image

    unit = np.array([[0.0, 0.5, 1.0], [np.nan, 0.2, 0.6]], np.float32)  # max exactly 1: scaled; NaN reads as 0
    _grey_rgb(load_image(_tiff(tmp_path, "unit.tif", unit, "F")), [[0, 128, 255], [0, 51, 153]])
    wide = np.array([[0.0, 100.4, 300.0], [-5.0, np.nan, 2.0]], np.float32)
    _grey_rgb(load_image(_tiff(tmp_path, "wide.tif", wide, "F")), [[0, 100, 255], [0, 0, 2]])
    two = np.array([[0.0, 2.0], [1.5, 0.5]], np.float32)  # max 2: already 0..255 data, not scaled
    _grey_rgb(load_image(_tiff(tmp_path, "two.tif", two, "F")), [[0, 2], [2, 0]])


def test_one_pixel_wide_images_load_and_save(tmp_path):
    from falco.run.image_files import load_image, save_image

    for shape in ((1, 5, 3), (5, 1, 3), (1, 1, 3)):
        img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        path = save_image(tmp_path / f"{shape[0]}x{shape[1]}.png", img)
        np.testing.assert_array_equal(load_image(path), img)
    np.testing.assert_array_equal(load_image(tmp_path / "1x1.png", max_pixels=1).shape, (1, 1, 3))  # the bound is inclusive


def test_a_one_byte_file_is_not_an_image_rather_than_empty(tmp_path):
    from falco.errors import ImageLoadError
    from falco.run.image_files import load_image

    (tmp_path / "one.png").write_bytes(b"\x89")
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(tmp_path / "one.png")


def _pillow_bytes(img: np.ndarray, fmt: str, **kwargs) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def test_jpeg_and_webp_are_written_with_the_documented_settings(tmp_path):
    """save_image's docstring: quality 95 by default, JPEG 4:4:4 chroma at quality >= 90 (Pillow's
    subsampling 0) and 4:2:0 below (2), nothing else in the file: the bytes equal Pillow's own."""
    from falco.run.image_files import save_image

    img = np.random.default_rng(4).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    assert save_image(tmp_path / "d.jpg", img).read_bytes() == _pillow_bytes(img, "JPEG", quality=95, subsampling=0)
    for q, ss in ((100, 0), (90, 0), (89, 2), (1, 2)):
        got = save_image(tmp_path / f"q{q}.jpg", img, quality=q).read_bytes()
        assert got == _pillow_bytes(img, "JPEG", quality=q, subsampling=ss), q
    assert _pillow_bytes(img, "JPEG", quality=90, subsampling=0) != _pillow_bytes(img, "JPEG", quality=90, subsampling=2)
    for q in (95, 40, 1, 100):
        got = save_image(tmp_path / f"q{q}.webp", img, quality=q).read_bytes()
        assert got == _pillow_bytes(img, "WEBP", quality=q), q
    assert save_image(tmp_path / "d.webp", img).read_bytes() == _pillow_bytes(img, "WEBP", quality=95)
    assert _pillow_bytes(img, "WEBP", quality=95) != _pillow_bytes(img, "WEBP")  # Pillow's own default is not 95
    # lossless formats ignore quality: a PNG is Pillow's PNG
    assert save_image(tmp_path / "p.png", img, quality=1).read_bytes() == _pillow_bytes(img, "PNG")


def test_tif_is_an_alias_of_tiff_and_jpg_of_jpeg(tmp_path):
    from falco.run.image_files import save_image

    img = np.zeros((4, 4, 3), np.uint8)
    for fmt, expected in (("tif", "TIFF"), ("TIF", "TIFF"), ("jpg", "JPEG"), ("tiff", "TIFF")):
        path = save_image(tmp_path / f"out-{fmt}", img, format=fmt)
        with Image.open(path) as im:
            assert im.format == expected, fmt


def test_save_image_flushes_the_file_to_disk_before_renaming(tmp_path, monkeypatch):
    """"Readers see the old file or the new one": the new bytes are fsynced before os.replace."""
    import os

    import falco.run.atomic as atomic
    from falco.run.image_files import save_image

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    save_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8))
    assert events[:1] == ["fsync"] and "replace" in events and events.index("fsync") < events.index("replace")


# ----------------------------------------------------------------------------- decoding and encoding files
def test_sixteen_bit_grey_is_scaled_by_257_even_when_its_maximum_is_256(tmp_path):
    from falco.run.image_files import load_image

    def read(values: list[int]) -> list[int]:
        Image.fromarray(np.array([values], dtype=np.int32), "I").save(tmp_path / "i.tif")  # TIFF keeps mode I
        assert Image.open(tmp_path / "i.tif").mode == "I"
        return load_image(tmp_path / "i.tif")[0, :, 0].tolist()

    assert read([0, 257 * 100, 65535]) == [0, 100, 255]
    assert read([0, 200, 256]) == [0, 1, 1]  # 256 / 257 rounds to 1: not 8-bit grey, although small
    assert read([0, 200, 255]) == [0, 200, 255]  # at most 255: 8-bit grey stored in 32-bit ints, read as is


@pytest.mark.parametrize("quality, sampling", [(95, 0), (90, 0), (80, 2)])
def test_jpeg_chroma_subsampling_is_444_at_quality_90_and_above_and_420_below(tmp_path, quality, sampling):
    from PIL import JpegImagePlugin

    from falco.run.image_files import save_image

    rng = np.random.default_rng(0)
    save_image(tmp_path / "a.jpg", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), quality=quality)
    assert JpegImagePlugin.get_sampling(Image.open(tmp_path / "a.jpg")) == sampling
