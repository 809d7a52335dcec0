"""falco.run.image_files: decoding every kind of photo users hand over, typed errors, atomic writes."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from falco.errors import ImageLoadError, InputError
from falco.run.image_files import load_image, save_image


def quadrants(height: int = 40, width: int = 60) -> np.ndarray:
    """Four flat colours, so orientation is unambiguous and JPEG barely touches it."""
    img = np.zeros((height, width, 3), np.uint8)
    img[: height // 2, : width // 2] = (230, 20, 20)
    img[: height // 2, width // 2 :] = (20, 230, 20)
    img[height // 2 :, : width // 2] = (20, 20, 230)
    img[height // 2 :, width // 2 :] = (230, 230, 20)
    return img


def assert_lossy_close(out: np.ndarray, img: np.ndarray) -> None:
    """JPEG / WebP: chroma subsampling smears colour edges; flat interiors must survive."""
    assert out.shape == img.shape
    assert np.abs(out.astype(int) - img).mean() < 4.0
    h, w = img.shape[:2]
    for y in (h // 4, 3 * h // 4):
        for x in (w // 4, 3 * w // 4):
            assert np.abs(out[y, x].astype(int) - img[y, x]).max() <= 6


def exif_with_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


# ----------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("ext", ["png", "jpg", "webp", "bmp", "tiff"])
def test_rgb_formats(tmp_path, ext):
    img = quadrants()
    path = tmp_path / f"photo.{ext}"
    lossy = {"jpg": {"quality": 100, "subsampling": 0}, "webp": {"quality": 100}}
    Image.fromarray(img).save(path, **lossy.get(ext, {}))
    out = load_image(path)
    assert out.shape == img.shape and out.dtype == np.uint8 and out.flags.writeable
    if ext in lossy:
        assert_lossy_close(out, img)
    else:
        np.testing.assert_array_equal(out, img)
    assert np.array_equal(load_image(str(path)), out)  # str works as well as PathLike


@pytest.mark.parametrize(
    "orientation,expected",
    [
        (1, lambda a: a),
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),  # stored rotated: turn 90 degrees clockwise to view
        (8, lambda a: np.rot90(a, 1)),
        (2, lambda a: a[:, ::-1]),
    ],
)
@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_exif_orientation_is_applied(tmp_path, orientation, expected, ext):
    stored = quadrants()
    path = tmp_path / f"phone.{ext}"
    Image.fromarray(stored).save(path, exif=exif_with_orientation(orientation), quality=100, subsampling=0)
    out = load_image(path)
    want = expected(stored)
    assert out.shape == want.shape
    assert np.abs(out.astype(int) - want).mean() < 2.0


def test_grayscale_and_one_bit(tmp_path):
    grey = np.arange(48 * 32, dtype=np.uint32).reshape(48, 32) % 256
    Image.fromarray(grey.astype(np.uint8), "L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (48, 32, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)
    Image.fromarray(grey.astype(np.uint8)).save(tmp_path / "g.jpg", quality=95)
    assert load_image(tmp_path / "g.jpg").shape == (48, 32, 3)
    Image.fromarray(grey.astype(np.uint8) > 127).save(tmp_path / "b.png")
    assert set(np.unique(load_image(tmp_path / "b.png"))) == {0, 255}


def test_sixteen_bit_png_is_scaled(tmp_path):
    values = np.array([[0, 257, 32896], [65535, 1000, 40000]], np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    out = load_image(tmp_path / "deep.png")
    np.testing.assert_array_equal(out[:, :, 1], np.rint(values / 257.0).astype(np.uint8))


def test_alpha_is_composited_over_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (10, 100, 200)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # transparent
    rgba[1, 1, 3] = 128  # half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert tuple(out[2, 2]) == (10, 100, 200)
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert np.abs(out[1, 1].astype(int) - [133, 178, 228]).max() <= 1
    la = Image.fromarray(rgba[..., [1, 3]], "LA")
    la.save(tmp_path / "la.png")
    out = load_image(tmp_path / "la.png")
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[2, 2]) == (100, 100, 100)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.webp", lossless=True)
    assert tuple(load_image(tmp_path / "a.webp")[0, 0]) == (255, 255, 255)


def test_palette_images(tmp_path):
    img = quadrants()
    pal = Image.fromarray(img).quantize(colors=4)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_image(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))
    pal.save(tmp_path / "pt.png", transparency=0)
    out = load_image(tmp_path / "pt.png")
    index = np.asarray(pal)
    assert (out[index == 0] == 255).all()
    assert (out[index != 0] != 255).any()


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 8), (255, 0, 0, 0)).save(tmp_path / "c.jpg", quality=100)
    out = load_image(tmp_path / "c.jpg")
    assert out.shape == (8, 16, 3)
    assert np.abs(out.astype(int) - [0, 255, 255]).max() <= 3  # cyan


def test_fixture_photo_decodes_like_pillow():
    from tests.conftest import shared_path

    path = shared_path("data", "faces", "2008_002506.jpg")
    out = load_image(path)
    np.testing.assert_array_equal(out, np.asarray(Image.open(path).convert("RGB")))


# ----------------------------------------------------------------------------- errors


def check_error(path: Path, match: str | None, **kwargs) -> ImageLoadError:
    with pytest.raises(ImageLoadError, match=match) as info:
        load_image(path, **kwargs)
    assert info.value.path == str(path) and str(path) in str(info.value)
    return info.value


def test_missing_empty_directory(tmp_path):
    check_error(tmp_path / "nope.jpg", "no such file")
    (tmp_path / "empty.jpg").write_bytes(b"")
    check_error(tmp_path / "empty.jpg", "empty")
    (tmp_path / "dir.png").mkdir()
    check_error(tmp_path / "dir.png", "not a regular file")


def test_not_an_image(tmp_path):
    (tmp_path / "notes.jpg").write_text("these are not pixels\n" * 20)
    check_error(tmp_path / "notes.jpg", "not an image")
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    check_error(tmp_path / "noise.png", "not an image")


def test_unsupported_format(tmp_path):
    Image.fromarray(quadrants()).save(tmp_path / "anim.gif")
    check_error(tmp_path / "anim.gif", "supported format")


@pytest.mark.parametrize(
    "ext,keep", [("jpg", 0.5), ("jpg", 0.9), ("jpg", 0.02), ("png", 0.5), ("webp", 0.5), ("bmp", 0.5), ("tiff", 0.5)]
)
def test_truncated_files(tmp_path, ext, keep):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    full = tmp_path / f"full.{ext}"
    Image.fromarray(img).save(full)
    data = full.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[: max(int(len(data) * keep), 4)])
    err = check_error(cut, None)
    assert any(word in err.reason for word in ("truncated", "corrupt", "not an image"))


def test_corrupt_jpeg_header(tmp_path):
    path = tmp_path / "bad.jpg"
    Image.fromarray(quadrants()).save(path)
    data = bytearray(path.read_bytes())
    data[2:60] = b"\x00" * 58  # wipe the first segments after SOI
    path.write_bytes(bytes(data))
    check_error(path, None)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size and holds almost nothing (a decompression-bomb stand-in)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def test_absurd_sizes_are_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(50_000, 50_000))
    check_error(bomb, "too large")
    medium = tmp_path / "medium.png"
    medium.write_bytes(png_header_only(12_000, 11_000))  # 132 MP: under Pillow's hard limit
    check_error(medium, "too large", max_pixels=100_000_000)
    Image.fromarray(quadrants(100, 100)).save(tmp_path / "ok.png")
    check_error(tmp_path / "ok.png", r"max_pixels=9,999", max_pixels=9_999)
    assert load_image(tmp_path / "ok.png", max_pixels=10_000).shape == (100, 100, 3)
    assert load_image(tmp_path / "ok.png", max_pixels=None).shape == (100, 100, 3)


def test_bad_arguments(tmp_path):
    Image.fromarray(quadrants()).save(tmp_path / "ok.png")
    for bad in (0, -5, 1.5, True, "100"):
        with pytest.raises(InputError, match="max_pixels"):
            load_image(tmp_path / "ok.png", max_pixels=bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="path"):
        load_image(42)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- saving


@pytest.mark.parametrize("ext", ["png", "bmp", "tif", "tiff"])
def test_save_lossless_round_trip(tmp_path, ext):
    img = np.random.default_rng(2).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    path = save_image(tmp_path / f"x.{ext}", img)
    assert path == tmp_path / f"x.{ext}"
    np.testing.assert_array_equal(load_image(path), img)
    assert [p.name for p in tmp_path.iterdir()] == [f"x.{ext}"]  # no temp file left behind


def test_save_jpeg_and_webp_quality(tmp_path):
    img = quadrants(64, 64)
    for name in ("q.jpg", "q.jpeg", "q.webp"):
        assert_lossy_close(load_image(save_image(tmp_path / name, img, quality=95)), img)
    noise = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    small = save_image(tmp_path / "low.jpg", noise, quality=10)
    high = save_image(tmp_path / "high.jpg", noise, quality=95)
    assert small.stat().st_size < high.stat().st_size
    save_image(tmp_path / "noext", img, format="jpg")
    assert Image.open(tmp_path / "noext").format == "JPEG"
    save_image(tmp_path / "grey.png", img[:, :, 0])
    assert Image.open(tmp_path / "grey.png").mode == "L"


def test_save_writes_no_metadata(tmp_path):
    src = tmp_path / "phone.jpg"
    exif = exif_with_orientation(6)
    exif[0x8825] = {1: "N"}  # a GPS IFD
    Image.fromarray(quadrants()).save(src, exif=exif)
    assert Image.open(src).getexif()
    out = save_image(tmp_path / "clean.jpg", load_image(src))
    with Image.open(out) as im:
        assert not im.getexif()
        assert "exif" not in im.info and "icc_profile" not in im.info


def test_save_replaces_atomically_and_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "x.png"
    save_image(path, quadrants())
    before = path.read_bytes()

    def boom(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_image(path, np.zeros((8, 8, 3), np.uint8))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_save_file_mode_follows_umask(tmp_path):
    import os

    path = save_image(tmp_path / "m.png", quadrants())
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_save_validates(tmp_path):
    img = quadrants()
    with pytest.raises(InputError, match="extension"):
        save_image(tmp_path / "x.xyz", img)
    with pytest.raises(InputError, match="format"):
        save_image(tmp_path / "x.png", img, format="GIF")
    with pytest.raises(InputError, match="float32"):
        save_image(tmp_path / "x.png", img.astype(np.float32))
    with pytest.raises(InputError, match=r"\[40, 60, 4\]"):
        save_image(tmp_path / "x.png", np.zeros((40, 60, 4), np.uint8))
    for q in (0, 101, 9.5, True):
        with pytest.raises(InputError, match="quality"):
            save_image(tmp_path / "x.jpg", img, quality=q)  # type: ignore[arg-type]
    with pytest.raises(OSError):
        save_image(tmp_path / "missing" / "x.png", img)
    assert list(tmp_path.iterdir()) == []


def test_saved_tensors_are_the_same_bytes_in_every_process(tmp_path):
    """safetensors writes its metadata from a hash map whose order changes per process: falco sorts it."""
    import subprocess
    import sys

    code = ("import sys, torch; from falco.run.inputs import save_tensors; "
            "save_tensors(sys.argv[1], {'ws': torch.arange(6.).view(2, 3), 'ok': torch.tensor([True, False])}, "
            "metadata={'source': 'a.jpg', 'format': 'falco-anonymize-1', 'note': 'x'})")
    blobs = []
    for i in range(3):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / f"{i}.safetensors")], check=True)
        blobs.append((tmp_path / f"{i}.safetensors").read_bytes())
    assert blobs[0] == blobs[1] == blobs[2]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "0.safetensors"), "pt") as f:
        assert f.metadata() == {"source": "a.jpg", "format": "falco-anonymize-1", "note": "x"}
        assert f.get_tensor("ws").tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
