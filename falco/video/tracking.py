"""Link a video's per-frame face detections into tracks.

Each frame where detection ran, every live track (seen within ``max_gap`` frames) is matched
to at most one detection by optimal assignment (:func:`scipy.optimize.linear_sum_assignment`)
on a cost mixing box overlap and landmark distance; pairs too far apart are not linked, and an
unmatched detection starts a new track. A track missed for up to ``max_gap`` frames (an
occlusion, a failed detector call) continues when the face is found again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["Detection", "Track", "box_iou", "link_tracks"]

#: A link costs at most this much (1 - IoU + landmark distance in face sizes).
MAX_COST = 1.5


@dataclass(frozen=True)
class Detection:
    """One face found in one frame: detector box, 68 landmarks (``[68, 2]``), score."""

    box: tuple[int, int, int, int]
    landmarks: np.ndarray
    score: float | None = None

    def as_json(self) -> list:
        return [list(self.box), None if self.score is None else float(self.score),
                np.round(self.landmarks, 3).tolist()]

    @classmethod
    def from_json(cls, data: list) -> Detection:
        box, score, landmarks = data
        return cls(tuple(int(v) for v in box), np.asarray(landmarks, dtype=np.float64), score)


@dataclass
class Track:
    """One face followed through a video: the frames it was detected in and its detections there."""

    id: int
    frames: list[int] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)

    @property
    def last(self) -> Detection:
        return self.detections[-1]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def link_cost(track: Detection, det: Detection) -> float:
    """1 - IoU plus the mean landmark distance in units of the face's size (inf when too far)."""
    size = max(np.sqrt((track.box[2] - track.box[0]) * (track.box[3] - track.box[1])), 1.0)
    dist = float(np.linalg.norm(track.landmarks - det.landmarks, axis=1).mean()) / size
    iou = box_iou(track.box, det.box)
    cost = (1.0 - iou) + dist
    return cost if (iou > 0.05 or dist < 0.5) and cost <= MAX_COST else np.inf


def link_tracks(detections: Sequence[list[Detection] | None], *, max_gap: int = 8) -> list[Track]:
    """Tracks of a video's detections.

    Args:
        detections: Per frame, its detections, or None where detection did not run
            (``--detect-every``); an empty list is a frame where it ran and found nothing.
        max_gap: Frames a track may go unseen and still be continued.

    Returns:
        The tracks, numbered in order of first appearance.
    """
    tracks: list[Track] = []
    for t, dets in enumerate(detections):
        if not dets:
            continue
        live = [tr for tr in tracks if t - tr.frames[-1] <= max_gap]
        cost = np.array([[link_cost(tr.last, d) for d in dets] for tr in live]).reshape(len(live), len(dets))
        matched: set[int] = set()
        if live:
            finite = np.where(np.isfinite(cost), cost, 1e6)
            for r, c in zip(*linear_sum_assignment(finite)):
                if np.isfinite(cost[r, c]):
                    live[r].frames.append(t)
                    live[r].detections.append(dets[c])
                    matched.add(int(c))
        for c, det in enumerate(dets):
            if c not in matched:
                tracks.append(Track(len(tracks), [t], [det]))
    return tracks
