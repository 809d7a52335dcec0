"""Video decode, segment encode and remux (falco.video.io): frames, timestamps, audio, metadata."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from falco.errors import InputError
from falco.run.inputs import VIDEO_SUFFIXES, discover_inputs
from falco.video.io import CONTAINERS, SegmentWriter, is_video, iter_frames, mux_output, probe
from falco.video.synth import make_clip

GPS = {"location": "+48.8577+002.2950/", "make": "PhoneCo", "model": "X1", "creation_time": "2024-05-01T10:00:00Z"}


def _frames(n: int = 16, size=(64, 48)) -> list[np.ndarray]:
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    base = np.stack([xx * 255 // size[0], yy * 255 // size[1], (xx + yy) * 127 // sum(size)], axis=-1)
    return [np.roll(base, 2 * i, axis=1).astype(np.uint8) for i in range(n)]


def _times(path: Path) -> list[float]:
    with av.open(str(path)) as c:
        return [float(f.time) for f in c.decode(video=0)]


def _audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(audio=0) if p.size]


def _reencode(src: Path, out: Path, work: Path, seg: int, keep_metadata: bool = False) -> list[Path]:
    info = probe(src)
    segments, writer = [], None
    for t, rgb, pts in iter_frames(src):
        if t % seg == 0:
            if writer:
                writer.close()
            segments.append(work / f"seg{t}.nut")
            writer = SegmentWriter(segments[-1], info)
        writer.add(255 - rgb, pts)
    writer.close()
    mux_output(out, src, segments, keep_metadata=keep_metadata)
    return segments


@pytest.mark.parametrize("suffix", [".mp4", ".mov"])
def test_segments_remux_to_the_same_frames_times_and_audio(tmp_path, suffix):
    # variable frame rate: one frame lasts three times as long as the others
    pts = [i * 100 + (200 if i >= 8 else 0) for i in range(16)]
    src = make_clip(tmp_path / f"in{suffix}", _frames(), fps=24, pts=pts, metadata=GPS)
    out = tmp_path / f"out{suffix}"
    _reencode(src, out, tmp_path, seg=5)
    info_in, info_out = probe(src), probe(out)
    assert info_out.frames == info_in.frames == 16
    assert (info_out.width, info_out.height) == (info_in.width, info_in.height) == (64, 48)
    assert info_out.audio == 1
    assert _times(out) == pytest.approx(_times(src), abs=1e-6)
    assert np.diff(_times(out))[7] == pytest.approx(3 / 24, abs=1e-6)
    assert _audio_packets(out) == _audio_packets(src)  # copied packet for packet, not re-encoded
    decoded = [rgb for _, rgb, _ in iter_frames(out)]
    expected = [255 - rgb for _, rgb, _ in iter_frames(src)]
    assert np.abs(np.stack(decoded).astype(int) - np.stack(expected)).mean() < 4  # the new pixels, at CRF 18


def test_metadata_is_stripped_unless_kept(tmp_path):
    src = make_clip(tmp_path / "in.mp4", _frames(6), metadata=GPS)
    with av.open(str(src)) as c:
        assert c.metadata.get("location") == GPS["location"] and "creation_time" in c.metadata
    stripped, kept = tmp_path / "a" / "out.mp4", tmp_path / "b" / "out.mp4"
    for out, keep in ((stripped, False), (kept, True)):
        out.parent.mkdir()
        _reencode(src, out, out.parent, seg=4, keep_metadata=keep)
    with av.open(str(stripped)) as c:
        tags = {**c.metadata, **c.streams.video[0].metadata, **c.streams.audio[0].metadata}
    assert not {"location", "make", "model", "creation_time"} & set(tags), tags
    with av.open(str(kept)) as c:
        assert c.metadata.get("location") == GPS["location"] and c.metadata.get("creation_time", "").startswith("2024-05-01")


def test_odd_sizes_and_mkv(tmp_path):
    src = make_clip(tmp_path / "in.mkv", [f[:, :62] for f in _frames(6)], audio=False)
    out = tmp_path / "out.mkv"
    _reencode(src, out, tmp_path, seg=4)
    assert probe(out).frames == 6 and (probe(out).width, probe(out).height) == (62, 48) and probe(out).audio == 0
    assert _times(out) == pytest.approx(_times(src), abs=1e-3)


def test_bad_videos_raise_one_line_input_errors(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    with pytest.raises(InputError, match="broken.mp4"):
        probe(bad)
    audio_only = tmp_path / "sound.mp4"
    with av.open(str(audio_only), "w") as out:
        s = out.add_stream("aac", rate=22050)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 22050, 0
        for p in [*s.encode(frame), *s.encode()]:
            out.mux(p)
    with pytest.raises(InputError, match="sound.mp4: no video stream"):
        probe(audio_only)


def test_videos_are_discovered_beside_photos_only_when_asked(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.MP4").write_bytes(b"")
    (tmp_path / "c.webm").write_bytes(b"")
    assert [i.key for i in discover_inputs(tmp_path)] == ["a.jpg"]
    assert [i.key for i in discover_inputs(tmp_path, videos=True)] == ["a.jpg", "b.MP4", "c.webm"]
    assert set(CONTAINERS) == VIDEO_SUFFIXES and is_video("x.MKV") and not is_video("x.jpg")


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_subtitle_streams_are_copied_untouched(tmp_path, suffix):
    cues = [(0.0, 0.2, "first line"), (0.3, 0.5, "second line")]
    src = make_clip(tmp_path / f"in{suffix}", _frames(12), fps=24, subtitles=cues)
    out = tmp_path / f"out{suffix}"
    _reencode(src, out, tmp_path, seg=5)
    info = probe(out)
    assert info.subtitles == probe(src).subtitles == 1 and info.frames == 12 and info.audio == 1

    def cue_packets(path: Path) -> list[tuple[bytes, float]]:
        # the MP4 muxer fills the gaps between mov_text cues with empty samples (2 zero bytes): cues only
        with av.open(str(path)) as c:
            return [(bytes(p), float(p.pts * p.time_base)) for p in c.demux(subtitles=0) if bytes(p).strip(b"\0")]

    found = cue_packets(out)
    assert found == cue_packets(src) and len(found) == 2
    assert [t for _, t in found] == pytest.approx([0.0, 0.3], abs=1e-3)
    assert b"second line" in found[1][0]


def test_data_streams_such_as_telemetry_are_dropped_unless_metadata_is_kept():
    """Camera telemetry (GoPro's GPMF carries GPS) travels in data streams: metadata, dropped by default."""
    from types import SimpleNamespace

    from falco.video.io import _copied_streams

    audio, subs, data = object(), object(), object()
    src = SimpleNamespace(streams=SimpleNamespace(audio=[audio], subtitles=[subs], data=[data]))
    assert _copied_streams(src, keep_metadata=False) == [audio, subs]
    assert _copied_streams(src, keep_metadata=True) == [audio, subs, data]
