"""Axis-aligned photo rectangles resampled to a network's grid, and pasting a result back.

Both GAN baselines cut an axis-aligned rectangle out of the photo (padding outside it),
resize it to the network's input size (possibly with different x and y scales) and, after
generation, put the result back. :class:`Frame` is that rectangle: a pixel ``(u, v)`` of the
``width x height`` grid samples the photo at
``x = x0 + (u + 0.5) * w / width - 0.5`` (pixel centres at integers, as every resize does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage
from PIL import Image

__all__ = ["Frame", "blend_sampled", "crop_padded", "paste_frame", "resize_float"]


@dataclass(frozen=True)
class Frame:
    """A photo rectangle ``[x0, x0 + w) x [y0, y0 + h)`` (pixel-edge coordinates) seen as a grid.

    Attributes:
        x0, y0, w, h: The rectangle in photo pixels (floats allowed).
        width, height: Size of the grid it is resampled to.
    """

    x0: float
    y0: float
    w: float
    h: float
    width: int
    height: int

    def to_frame(self, xy: np.ndarray) -> np.ndarray:
        """Photo pixel coordinates to grid coordinates. Shape: ``[N, 2]`` -> ``[N, 2]``."""
        xy = np.asarray(xy, dtype=np.float64)
        u = (xy[:, 0] + 0.5 - self.x0) * self.width / self.w - 0.5
        v = (xy[:, 1] + 0.5 - self.y0) * self.height / self.h - 0.5
        return np.stack([u, v], axis=1)

    def window(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        """Photo pixels ``(y0, y1, x0, x1)`` the rectangle touches, clipped; None if it misses the photo."""
        x0, y0 = max(int(np.floor(self.x0)), 0), max(int(np.floor(self.y0)), 0)
        x1, y1 = min(int(np.ceil(self.x0 + self.w)), width), min(int(np.ceil(self.y0 + self.h)), height)
        if x1 <= x0 or y1 <= y0:
            return None
        return y0, y1, x0, x1


def crop_padded(photo: np.ndarray, x0: int, y0: int, x1: int, y1: int, mode: str = "edge") -> np.ndarray:
    """``photo[y0:y1, x0:x1]`` where the box may leave the photo; outside is ``'edge'`` or ``'zero'`` padded.

    Shape: ``photo`` ``[H, W, C]``; returns ``[y1 - y0, x1 - x0, C]``.
    """
    height, width = photo.shape[:2]
    pad = (max(-y0, 0), max(y1 - height, 0), max(-x0, 0), max(x1 - width, 0))
    inner = photo[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)]
    if not any(pad):
        return inner.copy()
    if inner.size == 0:
        fill = photo[min(max(y0, 0), height - 1), min(max(x0, 0), width - 1)] if mode == "edge" else 0
        return np.broadcast_to(np.asarray(fill, photo.dtype), (y1 - y0, x1 - x0, photo.shape[2])).copy()
    widths = ((pad[0], pad[1]), (pad[2], pad[3]), (0, 0))
    return np.pad(inner, widths, mode="edge" if mode == "edge" else "constant")


def paste_frame(photo: np.ndarray, frame: Frame, image: np.ndarray, alpha: np.ndarray | None = None, *,
                box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Blend a grid image back into the photo through its frame.

    ``image`` (and ``alpha``) are sampled bilinearly at every photo pixel of the frame's window
    (after a Lanczos / box pre-shrink when the rectangle is smaller in the photo than the grid,
    against aliasing). Pixels where the weight is 0 are not written.

    Args:
        photo: Shape: ``[H, W, 3]`` uint8; not modified.
        frame: Where the grid lies in the photo.
        image: The new content. Shape: ``[frame.height, frame.width, 3]`` float in [0, 255].
        alpha: Blending weights in grid space. Shape: ``[frame.height, frame.width]`` in [0, 1].
        box: Instead of ``alpha``: replace exactly the photo pixels of ``(x0, y0, x1, y1)``.

    Returns:
        A new photo. Shape: ``[H, W, 3]`` uint8.
    """
    out = photo.copy()
    win = frame.window(*photo.shape[:2])
    if win is None:
        return out
    image = np.asarray(image, dtype=np.float32)
    if (alpha is None) == (box is None):
        raise ValueError("give exactly one of alpha and box")
    if box is not None:
        bx0, by0, bx1, by1 = box
        y0, y1, x0, x1 = win
        win = (max(y0, by0), min(y1, by1), max(x0, bx0), min(x1, bx1))
        if win[1] <= win[0] or win[3] <= win[2]:
            return out
        alpha = np.ones((frame.height, frame.width), np.float32)
    alpha = np.asarray(alpha, dtype=np.float32)
    gw = min(frame.width, max(int(np.ceil(frame.w)), 1))
    gh = min(frame.height, max(int(np.ceil(frame.h)), 1))
    if (gw, gh) != (frame.width, frame.height):  # the face is small in the photo: shrink first
        image = np.stack([resize_float(image[..., c], gw, gh, Image.Resampling.LANCZOS) for c in range(3)], -1)
        alpha = np.clip(resize_float(alpha, gw, gh, Image.Resampling.BOX), 0.0, 1.0)
        frame = Frame(frame.x0, frame.y0, frame.w, frame.h, gw, gh)
    y0, y1, x0, x1 = win
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    uv = frame.to_frame(np.stack([xs.ravel(), ys.ravel()], axis=1))
    coords = np.stack([uv[:, 1], uv[:, 0]])
    if box is not None:
        a = np.ones((y1 - y0, x1 - x0), np.float32)
    else:
        a = scipy.ndimage.map_coordinates(alpha, coords, order=1, mode="constant", cval=0.0, prefilter=False)
        a = a.reshape(y1 - y0, x1 - x0)
    return blend_sampled(out, y0, x0, image, coords, a)


def blend_sampled(out: np.ndarray, y0: int, x0: int, image: np.ndarray, coords: np.ndarray,
                  a: np.ndarray) -> np.ndarray:
    """Blend ``image``, sampled bilinearly at ``coords``, into ``out[y0:y0 + h, x0:x0 + w]`` by ``a``, in place.

    Pixels where the weight is 0 are not written.

    Shape: ``out`` ``[H, W, 3]`` uint8; ``a`` ``[h, w]`` in [0, 1]; ``coords`` ``[2, h * w]``, the
    (row, column) in ``image`` of each of those pixels, row-major; ``image`` ``[rows, cols, 3]`` float
    in [0, 255]. Returns ``out``.
    """
    hit = a > 0
    if not hit.any():
        return out
    sel = coords[:, hit.ravel()]
    new = np.stack([scipy.ndimage.map_coordinates(image[..., c], sel, order=1, mode="nearest", prefilter=False)
                    for c in range(3)], axis=1)
    view = out[y0:y0 + a.shape[0], x0:x0 + a.shape[1]]
    old = view[hit].astype(np.float32)
    view[hit] = np.clip(np.rint(old + (new - old) * a[hit][:, None]), 0, 255).astype(np.uint8)
    return out


def resize_float(array: np.ndarray, width: int, height: int, method: Image.Resampling) -> np.ndarray:
    """A 2-D float array resized to ``width x height`` with PIL's ``method`` (in float32)."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(array, dtype=np.float32), "F").resize((width, height), method))
