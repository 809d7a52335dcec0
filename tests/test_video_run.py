"""``falco anonymize`` on videos, end to end with the tiny model set: clips made here from a shared photo
(a slow pan and zoom over two faces, 24 fps, 1 s, with an AAC track)."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from falco.config import AnonymizeConfig
from falco.faces.pipeline import detect_and_align
from falco.latent.optimise import FalcoParams
from falco.run.anonymize import run_anonymize
from falco.run.image_files import load_image
from falco.run.manifest import RunManifest
from falco.video.io import iter_frames, probe
from falco.video.synth import make_clip, pan_frames
from tests.conftest import blind_detection, shared_path
from tests.test_video_io import _audio_packets as _audio, _times

FRAMES = 24


def clip(folder: Path, name: str = "clip.mp4", frames: int = FRAMES) -> Path:
    """A clip of ``frames`` frames panning over the two faces of 2008_001009.jpg."""
    photo = load_image(shared_path("data", "faces", "2008_001009.jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    views = pan_frames(photo, frames, (200, 240), window=(80, 70, 280, 310), pan=(1.5, 0.5), zoom=0.004)
    return make_clip(folder / name, views, fps=24, metadata={"location": "+48.8577+002.2950/"})


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return clip(tmp_path_factory.mktemp("video-in"))


@pytest.fixture(scope="module")
def input_boxes(source) -> list[list[tuple]]:
    """Per input frame, the boxes of the faces a detector finds there."""
    return [[f.box for f in detect_and_align(rgb, size=64)] for _, rgb, _ in iter_frames(source)]


def run(src: Path, out: Path, method: str, models: Path, **kw):
    cfg = AnonymizeConfig(input=src, out=out, method=method, models=models, device="cpu", progress=False,
                          guard=kw.pop("guard", "off"), video_segment=kw.pop("video_segment", 10), **kw)
    return run_anonymize(cfg, echo=lambda *_: None)


def tracks(out: Path, source: str = "clip.mp4") -> list[dict]:
    with RunManifest(out) as m:
        return [f for f in m.faces() if f["source"] == source]


def check_video(src: Path, out: Path, boxes: list[list[tuple]], *, min_change: float = 2.0) -> None:
    """Same frames, timestamps, size and audio; every face the detector finds in an input frame changed there."""
    a, b = probe(src), probe(out)
    assert (b.frames, b.width, b.height) == (a.frames, a.width, a.height)
    assert _times(out) == pytest.approx(_times(src), abs=1e-6)
    assert _audio(out) == _audio(src) and len(_audio(src)) > 5
    with av.open(str(out)) as c:
        assert "location" not in c.metadata
    assert sum(len(f) for f in boxes) >= 2 * a.frames - 2  # the clip shows two faces almost everywhere
    for (t, real, _), (_, anon, _) in zip(iter_frames(src), iter_frames(out)):
        for x0, y0, x1, y1 in boxes[t]:
            x0, y0 = max(x0, 0), max(y0, 0)  # a face leaving the frame
            diff = np.abs(real[y0:y1, x0:x1].astype(int) - anon[y0:y1, x0:x1]).mean()
            assert diff > min_change, f"frame {t}: face {(x0, y0, x1, y1)} unchanged ({diff:.2f})"


@pytest.mark.parametrize("method", ["blur", "pixelate", "mask", "ciagan", "deepprivacy",
                                    pytest.param("anonygan", marks=pytest.mark.slow)])
def test_every_face_of_every_frame_is_anonymized(method, source, input_boxes, tiny_models, tmp_path, one_thread):
    out = tmp_path / "out"
    summary = run(source.parent, out, method, tiny_models)
    assert not summary.failed and summary.done == 1 and summary.faces == 2
    check_video(source, out / "clip.mp4", input_boxes)
    rows = tracks(out)
    assert len(rows) == 2
    for row in rows:
        assert row["status"] == "done" and row["method"] == method and row["frames"] == FRAMES
        assert len(row["identity_keys"]) == 1  # one identity per track...
        assert len(row["draws"]) <= 1  # ...and one draw (CIAGAN's identity, AnonyGAN's condition) in every frame
    assert rows[0]["identity_keys"] != rows[1]["identity_keys"]
    assert not (out / ".video").exists() or not any((out / ".video").rglob("*.nut"))


def test_a_frame_where_detection_misses_is_still_covered(source, input_boxes, tiny_models, tmp_path, monkeypatch,
                                                         one_thread):
    calls = blind_detection(monkeypatch, misses={9}, crashes={14})  # both faces missed on 9, a failed call on 14
    out = tmp_path / "out"
    summary = run(source.parent, out, "pixelate", tiny_models)
    assert not summary.failed and calls["n"] == FRAMES
    check_video(source, out / "clip.mp4", input_boxes)
    for row in tracks(out):
        assert row["frames"] == FRAMES and row["interpolated"] == 2 and row["detected"] == FRAMES - 2


@pytest.mark.slow  # three runs of a 15-frame clip (12 s on a busy 2-core machine)
def test_an_interrupted_run_resumes_and_writes_the_same_file(tiny_models, tmp_path, monkeypatch, one_thread):
    import falco.run.video as video

    source = clip(tmp_path / "in", frames=15)
    reference = tmp_path / "reference"
    run(source.parent, reference, "ciagan", tiny_models, video_segment=5)
    seen: list[int] = []

    def stop_after_first(done: int, total: int) -> None:
        seen.append(done)
        if done == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(video, "after_segment", stop_after_first)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(source.parent, out, "ciagan", tiny_models, video_segment=5)
    assert not (out / "clip.mp4").exists()
    with RunManifest(out) as m:
        assert m.input_status("clip.mp4") == "partial"
    resumed = run(source.parent, out, "ciagan", tiny_models, video_segment=5)
    assert not resumed.failed and resumed.done == 1
    assert seen == [1, 2, 3]  # the second run started at the second segment
    assert (out / "clip.mp4").read_bytes() == (reference / "clip.mp4").read_bytes()
    again = run(source.parent, out, "ciagan", tiny_models, video_segment=5)
    assert again.skipped == 1 and again.done == 0


@pytest.mark.slow  # FALCO on two 12-frame clips, resumed once
def test_falco_keeps_one_fake_per_track_and_another_per_video(tiny_models, tiny_bank, tmp_path, monkeypatch,
                                                               one_thread):
    import falco.run.video as video

    src = tmp_path / "in"
    first = clip(src, "a.mp4", frames=12)
    shutil.copy(first, src / "b.mp4")  # the same people in another video
    boxes = [[f.box for f in detect_and_align(rgb, size=64)] for _, rgb, _ in iter_frames(first)]
    kw = dict(falco=FalcoParams(steps=3), bank=tiny_bank, video_steps=1, video_segment=5)

    def stop(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(video, "after_segment", stop)
    with pytest.raises(KeyboardInterrupt):
        run(src, tmp_path / "out", "falco", tiny_models, **kw)
    monkeypatch.undo()
    summary = run(src, tmp_path / "out", "falco", tiny_models, **kw)  # resumes a.mp4 from its 2nd segment's state
    assert not summary.failed and summary.done == 2
    check_video(first, tmp_path / "out" / "a.mp4", boxes)
    fakes = {}
    for name in ("a.mp4", "b.mp4"):
        rows = tracks(tmp_path / "out", name)
        assert len(rows) == 2
        for row in rows:
            assert row["method"] == "falco" and row["frames"] == 12
            assert row["draws"] == [row["neighbour"]]  # the same fake in every frame of the track
        fakes[name] = [row["neighbour"] for row in rows]
        assert fakes[name][0] != fakes[name][1]  # two people of one video, two fakes
    assert fakes["a.mp4"] != fakes["b.mp4"]
    reference = tmp_path / "reference"
    run(first.parent, reference, "falco", tiny_models, **kw)
    assert (reference / "a.mp4").read_bytes() == (tmp_path / "out" / "a.mp4").read_bytes()


def test_guard_runs_on_every_frame(tiny_models, tmp_path, one_thread):
    src = clip(tmp_path / "in", frames=6)
    out = tmp_path / "out"
    summary = run(src.parent, out, "blur", tiny_models, guard="enforce")
    assert not summary.failed
    for row in tracks(out):
        assert sum(row["guard_verdicts"].values()) == row["frames"] == 6
        assert row["guard"]["verdict"] in ("safe", "redone", "fallback")


def test_a_corrupt_video_fails_alone(tiny_models, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "broken.mkv").write_bytes(b"\x1aE\xdf\xa3" + b"\x00" * 300)
    shutil.copy(shared_path("data", "faces", "2009_004587.jpg"), src / "photo.jpg")
    summary = run(src, tmp_path / "out", "mask", tiny_models)
    assert summary.done == 1 and summary.total == 2
    assert [key for key, _ in summary.failed] == ["broken.mkv"]
    reason = summary.failed[0][1]
    assert "broken.mkv" in reason and "\n" not in reason


def test_cli_takes_the_video_options(tiny_models, tmp_path, one_thread):
    from typer.testing import CliRunner

    from falco.cli import app

    src = clip(tmp_path / "in", frames=8)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["anonymize", str(src), "--out", str(out), "--method", "mask", "--models",
                                   str(tiny_models), "--device", "cpu", "--no-progress", "--guard", "off",
                                   "--detect-every", "3", "--crf", "30", "--keep-metadata", "--video-segment", "4"])
    assert res.exit_code == 0, res.output
    assert probe(out / "clip.mp4").frames == 8
    with av.open(str(out / "clip.mp4")) as c:
        assert c.metadata.get("location") == "+48.8577+002.2950/"
    with RunManifest(out) as m:
        rows = m.faces()
        assert m.runs()[-1]["config"]["detect_every"] == 3
    assert len(rows) == 2 and all(r["frames"] == 8 and r["detected"] == 3 for r in rows)


def test_segments_of_other_settings_are_not_reused(tmp_path):
    from falco.methods.registry import get_anonymizer
    from falco.run.inputs import InputItem
    from falco.run.video import VideoJob

    def job(method: str, seg: int) -> VideoJob:
        cfg = AnonymizeConfig(input=tmp_path, out=tmp_path / "out", method=method, video_segment=seg, device="cpu")
        return VideoJob(cfg, InputItem(tmp_path / "clip.mp4", "clip.mp4"), get_anonymizer(method), None, None)

    first = job("blur", 5)
    first._check_work()
    (first.work / "seg_000000.nut").write_bytes(b"segment")
    job("blur", 5)._check_work()
    assert (first.work / "seg_000000.nut").exists()  # same settings: kept for the resume
    job("pixelate", 5)._check_work()
    assert not (first.work / "seg_000000.nut").exists() and (first.work / "settings.json").exists()


def test_a_phone_video_stored_sideways_is_anonymized_upright_and_keeps_its_rotation(tiny_models, tmp_path,
                                                                                    one_thread):
    """Portrait phone video: frames stored turned by 90 degrees with a display matrix. Detected as stored,
    the faces lie on their side and go unseen; falco finds them upright and writes the same orientation."""
    from falco.faces.pipeline import detect_and_align
    from falco.video.orientation import stored

    photo = load_image(shared_path("data", "faces", "2008_001009.jpg"))
    views = pan_frames(photo, 8, (200, 240), window=(80, 70, 280, 310), pan=(1.5, 0.5), zoom=0.004)
    (tmp_path / "in").mkdir()
    src = make_clip(tmp_path / "in" / "phone.mp4", views, fps=24, rotation=90)
    info = probe(src)
    assert info.rotation == 90 and (info.width, info.height) == (240, 200) and info.upright_size == (200, 240)
    with av.open(str(src)) as c:
        sideways = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert all(not detect_and_align(f, size=64) for f in sideways[:3])  # as stored, no face is found
    upright_frames = [rgb for _, rgb, _ in iter_frames(src)]
    assert [np.array_equal(stored(u, 90), s) for u, s in zip(upright_frames, sideways)] == [True] * 8
    boxes = [[f.box for f in detect_and_align(rgb, size=64)] for rgb in upright_frames]
    assert sum(map(len, boxes)) >= 14

    out = tmp_path / "out"
    summary = run(src.parent, out, "pixelate", tiny_models)
    assert not summary.failed and summary.faces == 2
    result = probe(out / "phone.mp4")
    assert result.rotation == 90 and (result.width, result.height) == (240, 200) and result.frames == 8
    for t, ((_, real, _), (_, anon, _)) in enumerate(zip(iter_frames(src), iter_frames(out / "phone.mp4"))):
        for x0, y0, x1, y1 in boxes[t]:
            x0, y0 = max(x0, 0), max(y0, 0)
            diff = np.abs(real[y0:y1, x0:x1].astype(int) - anon[y0:y1, x0:x1]).mean()
            assert diff > 2.0, f"frame {t}: face {(x0, y0, x1, y1)} unchanged ({diff:.2f})"


def test_the_guard_redoes_a_falco_face_from_its_tracks_own_fake(tiny_models, tiny_bank, tmp_path, monkeypatch,
                                                                 one_thread):
    """A face the guard still recognises is re-done from its track's fake (not paired again with another
    fake), with the identity weight tripled, so the track keeps one new identity."""
    from falco.guard import IdentityCheck, PrivacyGuard, Recognizers
    from falco.methods.falco import FalcoAnonymizer

    monkeypatch.setattr(Recognizers, "check_many",  # the method's output: "still the same person", every face
                        lambda self, original, output, faces: [[IdentityCheck("dlib", 0.1, True)] for _ in faces])
    monkeypatch.setattr(PrivacyGuard, "_matches", lambda self, original, output, face: (False, []))
    calls = []
    real = FalcoAnonymizer.process_tracked

    def spy(self, faces, neighbours, starts=None, steps=None):
        calls.append((list(neighbours), self.params.lambda_id, starts is None))
        return real(self, faces, neighbours, starts=starts, steps=steps)

    monkeypatch.setattr(FalcoAnonymizer, "process_tracked", spy)
    src = clip(tmp_path / "in", frames=4)
    summary = run(src.parent, tmp_path / "out", "falco", tiny_models, guard="enforce", bank=tiny_bank,
                  falco=FalcoParams(steps=1), video_steps=1)
    assert not summary.failed
    rows = tracks(tmp_path / "out")
    assert len(rows) == 2
    fakes = {row["neighbour"] for row in rows}
    assert len(fakes) == 2
    for row in rows:
        assert row["draws"] == [row["neighbour"]] and row["guard_verdicts"] == {"redone": 4}
    redos = [c for c in calls if c[1] == 30.0]  # lambda_id 10 x 3
    assert len(redos) == 8  # 2 faces x 4 frames, one at a time, each from its own track's fake
    assert all(len(n) == 1 and n[0] in fakes and cold for n, _, cold in redos)
    assert sorted(n[0] for n, _, _ in redos) == sorted(list(fakes) * 4)


def test_no_reuse_gives_every_track_and_photo_of_the_run_its_own_fake(tiny_models, tiny_bank, tmp_path, monkeypatch,
                                                                      one_thread):
    from falco.video.identity import TrackedMethod

    init = TrackedMethod.__init__  # each track takes its nearest fake: the same people in b.mp4 would take a.mp4's
    monkeypatch.setattr(TrackedMethod, "__init__", lambda self, *a, **kw: init(self, *a, **{**kw, "choices": 1}))
    src = tmp_path / "in"
    first = clip(src, "a.mp4", frames=3)
    shutil.copy(first, src / "b.mp4")  # the same two people in a second video
    shutil.copy(shared_path("data", "faces", "2008_001322.jpg"), src / "photo.jpg")
    out = tmp_path / "out"
    summary = run(src, out, "falco", tiny_models, bank=tiny_bank, falco=FalcoParams(steps=1), video_steps=1,
                  reuse=False)
    assert not summary.failed
    with RunManifest(out) as m:
        rows = list(m.faces())
    fakes = [row["neighbour"] for row in rows]
    assert len(rows) == 2 + 2 + 3 and None not in fakes  # two tracks per video, three faces in the photo
    assert len(set(fakes)) == len(fakes), fakes
