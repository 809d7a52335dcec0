"""Tracks from detections (falco.video.tracking) and the faces covered per frame (falco.video.tracks)."""

from __future__ import annotations

import numpy as np
import pytest

from falco.video.tracking import Detection, box_iou, link_tracks
from falco.video.tracks import frame_faces

rng = np.random.default_rng(0)
SHAPE = rng.normal(0, 12, (68, 2))  # one face's landmark layout around its centre


def _det(cx: float, cy: float, jitter: float = 0.0) -> Detection:
    lm = SHAPE + [cx, cy] + rng.normal(0, jitter, (68, 2))
    return Detection((int(cx - 30), int(cy - 30), int(cx + 30), int(cy + 30)), lm, 1.0)


def _two_faces(n: int, miss: dict[int, set[int]] | None = None) -> list[list[Detection]]:
    """Face A moves right along y=60, face B moves left along y=200; ``miss``: frame -> faces dropped."""
    miss = miss or {}
    frames = []
    for t in range(n):
        dets = [_det(50 + 3 * t, 60), _det(300 - 3 * t, 200)]
        frames.append([d for i, d in enumerate(dets) if i not in miss.get(t, set())])
    return frames


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def test_faces_are_linked_into_one_track_each_even_when_listed_in_another_order():
    frames = _two_faces(20)
    frames = [dets[::-1] if t % 2 else dets for t, dets in enumerate(frames)]
    tracks = link_tracks(frames)
    assert len(tracks) == 2
    for tr in tracks:
        assert tr.frames == list(range(20))
        ys = {round(float(d.landmarks[:, 1].mean() - SHAPE[:, 1].mean())) for d in tr.detections}
        assert len(ys) == 1  # never swapped to the other face


def test_a_missed_frame_is_covered_by_interpolation():
    frames = _two_faces(12, miss={5: {0}, 6: {0}})
    tracks = link_tracks(frames, max_gap=4)
    assert len(tracks) == 2
    per_frame = frame_faces(tracks, 12, extend=0, sigma=0)
    for t in (5, 6):
        faces = {f.track: f for f in per_frame[t]}
        assert len(faces) == 2
        a = faces[0]
        assert a.kind == "interpolated"
        expected = SHAPE + [50 + 3 * t, 60]
        assert np.abs(a.landmarks - expected).max() < 1e-6  # linear motion: interpolation is exact
    assert all(f.kind == "detected" for f in per_frame[4])


def test_a_failed_detector_call_and_skipped_frames_are_covered():
    frames: list = _two_faces(13)
    frames[4] = None  # the call failed
    for t in range(13):
        if t % 3 and frames[t] is not None:
            frames[t] = None  # --detect-every 3
    tracks = link_tracks(frames, max_gap=8)
    per_frame = frame_faces(tracks, 13, extend=1, extend_after=1 + 2, sigma=0)
    assert len(tracks) == 2
    assert all(len(faces) == 2 for faces in per_frame), [len(f) for f in per_frame]


def test_a_gap_longer_than_max_gap_starts_a_new_track():
    frames = _two_faces(30, miss={t: {0} for t in range(10, 25)})
    tracks = link_tracks(frames, max_gap=8)
    assert len(tracks) == 3


def test_tracks_are_extended_at_both_ends():
    frames = [[] for _ in range(5)] + [[_det(100, 100)] for _ in range(5)] + [[] for _ in range(5)]
    per_frame = frame_faces(link_tracks(frames), 15, extend=2, sigma=0)
    covered = [t for t, faces in enumerate(per_frame) if faces]
    assert covered == list(range(3, 12))
    assert [per_frame[t][0].kind for t in (3, 4, 5, 9, 10, 11)] == ["extended"] * 2 + ["detected"] + \
        ["detected"] + ["extended"] * 2


def test_smoothing_reduces_jitter_without_lagging_a_still_face():
    frames = [[_det(100, 100, jitter=2.0)] for _ in range(30)]
    raw = np.stack([f[0].landmarks for f in frames])
    smooth = np.stack([f[0].landmarks for f in frame_faces(link_tracks(frames), 30, sigma=1.5)])
    step_raw = np.abs(np.diff(raw, axis=0)).mean()
    step_smooth = np.abs(np.diff(smooth, axis=0)).mean()
    assert step_smooth < 0.5 * step_raw
    assert np.abs(smooth.mean(axis=0) - (SHAPE + 100)).max() < 1.5
