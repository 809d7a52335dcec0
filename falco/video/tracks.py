"""From tracks to the faces covered in every frame: gaps filled, ends extended, motion smoothed.

No blink: a track seen before and after a frame where its face was missed (a failed detector
call, an occlusion, frames skipped by ``--detect-every``) is covered there with landmarks and
box interpolated linearly; every track is also extended ``extend`` frames before its first and
after its last detection (holding its first/last position), so a face is covered while it
enters or leaves, before the detector picks it up. Landmarks are then smoothed over time
(Gaussian, ``sigma`` frames) so that the alignment quads, and the crops made from them, do not
jitter from frame to frame (crop jitter is flicker).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from falco.video.tracking import Track

__all__ = ["TrackFace", "frame_faces", "fill_track"]


@dataclass(frozen=True)
class TrackFace:
    """A face to cover in one frame: its track, landmarks (``[68, 2]``), box and how it is known."""

    track: int
    frame: int
    landmarks: np.ndarray
    box: tuple[int, int, int, int]
    score: float | None
    kind: str  # 'detected', 'interpolated' or 'extended'


def _gaussian_smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """Smooth ``values`` (``[T, ...]``) along time; the window is cut (and renormalised) at the ends."""
    if sigma <= 0 or len(values) < 2:
        return values
    radius = int(np.ceil(2 * sigma))
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    out = np.empty_like(values)
    n = len(values)
    for t in range(n):
        lo, hi = max(0, t - radius), min(n, t + radius + 1)
        w = weights[lo - t + radius:hi - t + radius]
        out[t] = np.tensordot(w / w.sum(), values[lo:hi], axes=1)
    return out


def fill_track(track: Track, num_frames: int, *, extend: int = 3, extend_after: int | None = None,
               sigma: float = 1.0) -> list[TrackFace]:
    """Every frame ``track`` covers, from ``extend`` frames before its first detection to
    ``extend_after`` (default ``extend``) after its last, within ``[0, num_frames)``."""
    after = extend if extend_after is None else extend_after
    first, last = track.frames[0], track.frames[-1]
    start, stop = max(0, first - extend), min(num_frames - 1, last + after)
    frames = np.arange(start, stop + 1)
    known = np.asarray(track.frames, dtype=np.float64)
    lms = np.stack([d.landmarks for d in track.detections])
    boxes = np.asarray([d.box for d in track.detections], dtype=np.float64)
    lm_t = np.stack([np.stack([np.interp(frames, known, lms[:, p, k]) for k in range(2)], axis=-1)
                     for p in range(68)], axis=1)  # [T, 68, 2]; np.interp holds the end values outside
    box_t = np.stack([np.interp(frames, known, boxes[:, k]) for k in range(4)], axis=-1)
    lm_t = _gaussian_smooth(lm_t, sigma)
    box_t = _gaussian_smooth(box_t, sigma)
    detected = {f: d for f, d in zip(track.frames, track.detections)}
    out = []
    for i, f in enumerate(frames.tolist()):
        det = detected.get(f)
        kind = "detected" if det is not None else ("interpolated" if first < f < last else "extended")
        x0, y0, x1, y1 = (int(round(v)) for v in box_t[i])
        out.append(TrackFace(track.id, f, lm_t[i], (x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)),
                             None if det is None else det.score, kind))
    return out


def frame_faces(tracks: Sequence[Track], num_frames: int, *, extend: int = 3, extend_after: int | None = None,
                sigma: float = 1.0) -> list[list[TrackFace]]:
    """Per frame, the faces of every track to cover there (ordered by track)."""
    per_frame: list[list[TrackFace]] = [[] for _ in range(num_frames)]
    for track in tracks:
        for face in fill_track(track, num_frames, extend=extend, extend_after=extend_after, sigma=sigma):
            per_frame[face.frame].append(face)
    return per_frame
