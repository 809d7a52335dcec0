"""Display rotation of phone videos: faces are found and anonymized upright, the file keeps its orientation.

Phones store portrait video sideways and add a display matrix (``rotation``: 90, 180 or 270 degrees,
counter-clockwise, as PyAV's :attr:`av.VideoFrame.rotation` reads it) that players apply. Decoded
as stored, every face of such a video lies on its side, and face detectors trained on upright
faces miss them: the video would leave the tool with its faces untouched. So frames are turned
upright before detection and anonymization (:func:`upright`), turned back before encoding
(:func:`stored`), and the output stream gets the same display matrix: its stored frames, size and
the way players show it are the input's.
"""

from __future__ import annotations

import numpy as np

from falco.errors import InputError

__all__ = ["check_rotation", "stored", "upright", "upright_size"]

ROTATIONS = (0, 90, 180, 270)


def check_rotation(degrees: float | int | None) -> int:
    """The display rotation as 0, 90, 180 or 270 (None: 0). Raises InputError on any other angle."""
    if degrees is None:
        return 0
    value = int(round(float(degrees))) % 360
    if value not in ROTATIONS or abs(float(degrees) - round(float(degrees))) > 1e-6:
        raise InputError(f"display rotation {degrees!r} degrees: only multiples of 90 are supported")
    return value


def upright(frame: np.ndarray, rotation: int) -> np.ndarray:
    """The frame as players show it: turned ``rotation`` degrees counter-clockwise. Shape: ``[H, W, C]``."""
    k = check_rotation(rotation) // 90
    return np.ascontiguousarray(np.rot90(frame, k)) if k else frame


def stored(frame: np.ndarray, rotation: int) -> np.ndarray:
    """The inverse of :func:`upright`: an upright frame back in the file's stored orientation."""
    k = check_rotation(rotation) // 90
    return np.ascontiguousarray(np.rot90(frame, -k)) if k else frame


def upright_size(width: int, height: int, rotation: int) -> tuple[int, int]:
    """``(width, height)`` of the upright frames of a stream stored at ``width`` x ``height``."""
    return (height, width) if check_rotation(rotation) in (90, 270) else (width, height)
