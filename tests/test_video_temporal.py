"""Temporal metrics (falco.evaluation.temporal): tOF, tLP and identity consistency within tracks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from falco.errors import InputError
from falco.evaluation.temporal import identity_consistency, temporal_metrics
from falco.run.image_files import load_image
from falco.video.synth import make_clip, pan_frames
from tests.conftest import shared_path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """The real clip, a copy with a square that stays put over the faces, and a copy whose square flickers."""
    d = tmp_path_factory.mktemp("temporal")
    photo = load_image(shared_path("data", "faces", "2008_001009.jpg"))
    frames = pan_frames(photo, 10, (200, 240), window=(80, 70, 280, 310))
    steady, flicker = [], []
    for t, f in enumerate(frames):
        a, b = f.copy(), f.copy()
        a[60:160, 40:140] = 128
        b[60:160, 40:140] = 60 if t % 2 else 200
        steady.append(a)
        flicker.append(b)
    return {"real": make_clip(d / "real.mp4", frames), "steady": make_clip(d / "steady.mp4", steady),
            "flicker": make_clip(d / "flicker.mp4", flicker),
            "short": make_clip(d / "short.mp4", frames[:6])}


def test_tof_is_zero_for_the_same_video_and_grows_with_flicker(clips, monkeypatch, one_thread):
    import falco.models.lpips as lpips_module

    monkeypatch.setattr(lpips_module, "load_lpips", lambda models=None, **_: lpips_module.LPIPS())  # random weights
    same = temporal_metrics(clips["real"], clips["real"])
    steady = temporal_metrics(clips["real"], clips["steady"])
    flicker = temporal_metrics(clips["real"], clips["flicker"])
    assert same["pairs"] == 9 and same["tOF"] == 0.0 and same["tLP"] == 0.0
    assert 0 < steady["tOF"] and steady["tOF"] < flicker["tOF"]
    assert 0 < steady["tLP"] < flicker["tLP"]


def test_tlp_says_why_it_is_missing(clips, tmp_path):
    res = temporal_metrics(clips["real"], clips["steady"], models=tmp_path)  # an empty model set
    assert isinstance(res["tOF"], float)
    assert res["tLP"].startswith("not computed: LPIPS could not be loaded")


def test_videos_of_different_lengths_are_refused(clips):
    with pytest.raises(InputError, match="short.mp4"):
        temporal_metrics(clips["real"], clips["short"])


def test_identity_consistency_of_the_real_video_is_one_person_per_track(clips, one_thread):
    res = identity_consistency(clips["real"], clips["real"], every=4)
    assert res["tracks"] == 2 and res["same_person"] == 1.0 and res["spread"] < 0.2
    covered = identity_consistency(clips["real"], clips["flicker"], every=4)
    assert covered["tracks"] == 2 and np.isfinite(covered["spread"]) and covered["spread"] > res["spread"]
