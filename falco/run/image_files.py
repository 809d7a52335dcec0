"""Reading and writing photographs: one decoder (Pillow) everywhere, typed errors, atomic writes.

``load_image`` turns whatever a user hands over (JPEG, PNG, WebP, BMP, TIFF; grayscale,
palette, RGBA, CMYK, 16-bit; EXIF-rotated phone pictures) into an upright RGB ``uint8``
array, and raises :class:`~falco.errors.ImageLoadError` naming the file for anything it
cannot decode. ``save_image`` writes through a temporary file in the destination folder and
``os.replace``, and never writes metadata (no EXIF, no GPS, no ICC profile).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from falco.run.atomic import atomic_path
from falco.errors import ImageLoadError, InputError

__all__ = ["DEFAULT_MAX_PIXELS", "SUPPORTED_FORMATS", "load_image", "save_image"]

#: Largest image (width * height) ``load_image`` decodes by default: 150 megapixels.
DEFAULT_MAX_PIXELS = 150_000_000

#: Pillow format names ``load_image`` accepts (MPO is the JPEG flavour many phones write).
SUPPORTED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF")

_EXTENSIONS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


#: ``--format`` choices of the anonymized photos -> their file extension.
OUTPUT_FORMATS = {"png": ".png", "jpeg": ".jpg", "jpg": ".jpg", "webp": ".webp"}


def check_output_format(fmt: object) -> str | None:
    """Validate a ``--format`` choice: None (the input's own format) or a key of :data:`OUTPUT_FORMATS`."""
    if fmt is not None and fmt not in OUTPUT_FORMATS:
        raise InputError(f"--format must be one of {', '.join(sorted(OUTPUT_FORMATS))}, got {fmt!r}")
    return fmt  # type: ignore[return-value]


def load_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file into an upright RGB ``uint8`` array.

    EXIF orientation is applied. Grayscale, palette and 1-bit images are expanded to RGB;
    16-bit images are scaled to 8 bits (``round(v / 257)``); CMYK is converted by Pillow;
    images with transparency (RGBA, LA, PA, palette with a transparent index) are composited
    over white. Only the first frame of a multi-frame file is read.

    Args:
        path: The image file.
        max_pixels: Refuse images with more than this many pixels (width * height) before
            decoding them; ``None`` lifts falco's limit (Pillow's own decompression-bomb
            limit, about 179 megapixels, still applies).

    Returns:
        The image. Shape: ``[H, W, 3]``, dtype ``uint8``.

    Raises:
        ImageLoadError: The file is missing, empty, not an image, of an unsupported format,
            corrupt or truncated, or larger than ``max_pixels``.
        InputError: ``max_pixels`` is not a positive integer or ``None``.
    """
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0):
        raise InputError(f"max_pixels must be a positive int or None, got {max_pixels!r}")
    path = _check_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=_open_formats()) as im:
                _check_size(path, im.size, max_pixels)
                im.seek(0)
                im.load()
                im = ImageOps.exif_transpose(im)
                return _to_rgb(im)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(path, f"image too large (decompression bomb?): {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(path, f"not an image, or not a supported format ({', '.join(SUPPORTED_FORMATS)})") from exc
    except PermissionError as exc:
        raise ImageLoadError(path, "permission denied") from exc
    except MemoryError as exc:
        raise ImageLoadError(path, "not enough memory to decode the image") from exc
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError) as exc:
        raise ImageLoadError(path, f"corrupt or truncated image: {exc}") from exc


def save_image(
    path: str | os.PathLike,
    array: np.ndarray,
    *,
    format: str | None = None,
    quality: int = 95,
) -> Path:
    """Write an image atomically, without any metadata.

    The image goes to a temporary file in the destination folder, which then replaces
    ``path`` in one step (``os.replace``): readers see the old file or the new one, never
    half of one. JPEG is written with 4:4:4 chroma at ``quality >= 90``.

    Args:
        path: The destination; its folder must exist.
        array: The image. Shape: ``[H, W, 3]`` (RGB) or ``[H, W]`` (grayscale), dtype ``uint8``.
        format: A Pillow format name (``"JPEG"``, ``"PNG"``, ``"WEBP"``, ``"BMP"``, ``"TIFF"``);
            by default taken from the file extension.
        quality: JPEG / WebP quality, 1..100 (ignored by lossless formats).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: A bad array, format, extension or quality.
        OSError: The folder is missing or not writable (the temporary file is removed).
    """
    path = Path(os.fspath(path))
    fmt = _save_format(path, format)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise InputError(f"quality must be an int in 1..100, got {quality!r}")
    im = Image.fromarray(_check_save_array(array))
    kwargs: dict = {}
    if fmt == "JPEG":
        kwargs = {"quality": quality, "subsampling": 0 if quality >= 90 else 2}
    elif fmt == "WEBP":
        kwargs = {"quality": quality}
    if not path.parent.is_dir():
        raise FileNotFoundError(2, "No such directory", str(path.parent))
    with atomic_path(path, fsync=True) as tmp:
        im.save(tmp, format=fmt, **kwargs)
    return path


# --------------------------------------------------------------------------------------
# helpers


def _open_formats() -> tuple[str, ...]:
    """The supported formats Pillow has plugins for (registering them all on first use)."""
    Image.init()
    return tuple(fmt for fmt in SUPPORTED_FORMATS if fmt in Image.OPEN)


def _check_path(path: str | os.PathLike) -> Path:
    try:
        path = Path(os.fspath(path))
    except TypeError as exc:
        raise InputError(f"path must be a str or os.PathLike, got {type(path).__name__}") from exc
    if not path.exists():
        raise ImageLoadError(path, "no such file")
    if not path.is_file():
        raise ImageLoadError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise ImageLoadError(path, "empty file")
    return path


def _check_size(path: Path, size: tuple[int, int], max_pixels: int | None) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageLoadError(path, f"image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            path,
            f"image too large: {width}x{height} = {width * height:,} pixels exceeds "
            f"max_pixels={max_pixels:,} (pass --max-pixels N if the file is genuine)",
        )


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Convert a decoded Pillow image of any mode to RGB uint8 ``[H, W, 3]``."""
    mode = im.mode
    if mode == "RGB":
        return np.array(im, dtype=np.uint8)
    if mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(im).astype(np.float64)
        eight_bit_in_int32 = mode == "I" and grey.max(initial=0) <= 255
        if not eight_bit_in_int32:
            grey = grey / 257.0
        grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        grey = np.asarray(im, dtype=np.float64)
        if np.nanmax(grey, initial=0.0) <= 1.0:
            grey = grey * 255.0
        grey = np.clip(np.rint(np.nan_to_num(grey)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if (mode == "P" and "transparency" in im.info) or mode == "PA":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "RGBa", "La"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return np.array(im.convert("RGB"), dtype=np.uint8)


def _save_format(path: Path, format: str | None) -> str:
    if format is None:
        fmt = _EXTENSIONS.get(path.suffix.lower())
        if fmt is None:
            raise InputError(
                f"cannot tell the image format from the extension of {str(path)!r}; "
                f"use one of {sorted(_EXTENSIONS)} or pass format="
            )
        return fmt
    fmt = str(format).upper()
    fmt = {"JPG": "JPEG", "TIF": "TIFF"}.get(fmt, fmt)
    if fmt not in set(_EXTENSIONS.values()):
        raise InputError(f"format must be one of JPEG, PNG, WEBP, BMP, TIFF, got {format!r}")
    return fmt


def _check_save_array(array: np.ndarray) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise InputError(f"array must be a numpy array, got {type(array).__name__}")
    if array.dtype != np.uint8:
        raise InputError(f"array must have dtype uint8, got {array.dtype}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)) or 0 in array.shape:
        raise InputError(f"array must have shape [H, W, 3] or [H, W], got {list(array.shape)}")
    return np.ascontiguousarray(array)
