"""Pixel normalisation: uint8 faces enter the encoders in [-1, 1] (x / 127.5 - 1), and back exactly.

Expectations are pixel arithmetic written in the test; the end-to-end check recomputes the
encoder's input from the aligned crop ``falco invert`` wrote (PNG, lossless).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

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
