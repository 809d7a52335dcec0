"""Shared by the detectors and recognisers (no model, no dlib): ``Box``, :func:`check_image`, :func:`hog_like_box`."""

from __future__ import annotations

import importlib
import importlib.util

import numpy as np

from falco.errors import InputError

__all__ = ["Box", "check_image", "hog_like_box", "package_unavailable"]

#: ``(x0, y0, x1, y1)`` integer pixel bounds, half-open.
Box = tuple[int, int, int, int]


def check_image(image: object, name: str = "image") -> np.ndarray:
    """Validate an RGB uint8 image and return it C-contiguous.

    Shape: ``[H, W, 3]``, dtype ``uint8``.

    Raises:
        InputError: Not a numpy array, wrong dtype, wrong shape or empty.
    """
    if not isinstance(image, np.ndarray):
        raise InputError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"{name} must have dtype uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"{name} must have shape [H, W, 3] (RGB), got {list(image.shape)}")
    return np.ascontiguousarray(image)


def hog_like_box(box: Box) -> Box:
    """The square box dlib's HOG detector would draw around a face YuNet or MTCNN boxed (``x0, y0, x1, y1``).

    dlib's 68-point predictor was trained on HOG boxes: square, from the brows to the chin.
    YuNet's are taller (w/h about 0.76) and reach the forehead. On the 67 faces of the shared
    photos that both find, the HOG box's side is 1.11 x YuNet's width (0.83 x its height) and
    its centre 0.04 x the height lower (medians); fed YuNet's own box, the predictor's error
    was four times larger (0.11 vs 0.027 of the inter-ocular distance). MTCNN's boxes are
    alike (66 faces: side 1.14 x width, 0.83 x height, centre 0.04 x height lower).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    side = 0.5 * (1.114 * w + 0.828 * h)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 + 0.04 * h
    return (int(round(cx - side / 2)), int(round(cy - side / 2)), int(round(cx + side / 2)), int(round(cy + side / 2)))


def package_unavailable(module: str, name: str, install: str) -> str | None:
    """None when the optional package ``module`` imports, else why not (``name``: its PyPI name;
    ``install``: the command that installs it)."""
    if importlib.util.find_spec(module.split(".")[0]) is None:
        return f"{name} is not installed; install it with: {install}"
    try:
        importlib.import_module(module)
    except Exception as exc:  # a broken install must not break the caller
        return f"{name} is installed but does not import ({type(exc).__name__}: {exc})"
    return None
