"""``scripts/bench_video.py`` runs and reports frames/s and the video-frame / photo cost ratio."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_script, shared_path


@pytest.mark.slow  # 20 s on a busy 2-core machine: a photo warm-up, a photo run, a video run, the metrics
def test_bench_video_reports_every_figure(tiny_models, tmp_path, one_thread):
    bench = load_script("bench_video")
    out = tmp_path / "bench.json"
    photo = shared_path("data", "faces", "2008_001009.jpg")
    assert bench.main(["--methods", "mask", "--frames", "6", "--photo-repeats", "1", "--models", str(tiny_models),
                       "--photo", str(photo), "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["method"] == "mask" and row["frames"] == 6 and row["frames_per_s"] > 0
    assert row["ratio_frame_vs_photo"] > 0 and row["pairs"] == 5 and row["tOF"] > 0
    assert isinstance(row["tLP"], float) or row["tLP"].startswith("not computed")
    assert row["id_same_person"] is not None
