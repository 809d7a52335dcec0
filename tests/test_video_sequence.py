"""``falco anonymize --sequence``: folders of numbered frames anonymized as videos (tracked, one identity per
track, resumable by segments), written with the same names, formats and sizes. Sequences are made here from a
shared photo (a slow pan over two faces), the frames numbered without padding (natural order != name order)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from falco.config import AnonymizeConfig
from falco.errors import InputError
from falco.faces.pipeline import detect_and_align
from falco.run.anonymize import run_anonymize
from falco.run.image_files import load_image
from falco.run.inputs import discover_inputs
from falco.run.manifest import RunManifest
from falco.video.sources import ImageSequence, sequence_frames
from falco.video.synth import pan_frames
from tests.conftest import blind_detection, shared_path

FRAMES = 12
JPEG_FRAMES = (4, 9)  # these frames are JPEG files, the others PNG


def frame_name(i: int) -> str:
    return f"shot_{i + 1}{'.jpg' if i in JPEG_FRAMES else '.png'}"


def make_sequence(folder: Path, frames: int = FRAMES, size=(200, 240)) -> Path:
    """``folder`` with ``frames`` numbered frames panning over the two faces of 2008_001009.jpg."""
    photo = load_image(shared_path("data", "faces", "2008_001009.jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    for i, view in enumerate(pan_frames(photo, frames, size, window=(80, 70, 280, 310), pan=(1.5, 0.5), zoom=0.004)):
        Image.fromarray(view).save(folder / frame_name(i), quality=95)
    return folder


def ordered(folder: Path) -> list[Path]:
    """The frames of ``folder`` in the order they were made (by number, not by name)."""
    return sorted((p for p in folder.iterdir() if p.suffix in (".png", ".jpg")),
                  key=lambda p: int(p.stem.split("_")[1]))


@pytest.fixture(scope="module")
def sequence(tmp_path_factory) -> Path:
    return make_sequence(tmp_path_factory.mktemp("seq-in") / "walk")


@pytest.fixture(scope="module")
def input_boxes(sequence) -> list[list[tuple]]:
    """Per input frame (in order), the boxes of the faces a detector finds there."""
    return [[f.box for f in detect_and_align(load_image(p), size=64)] for p in ordered(sequence)]


def run(src: Path, out: Path, method: str, models: Path, **kw):
    cfg = AnonymizeConfig(input=src, out=out, method=method, models=models, device="cpu", progress=False,
                          guard=kw.pop("guard", "off"), video_segment=kw.pop("video_segment", 5),
                          sequence=kw.pop("sequence", True), **kw)
    return run_anonymize(cfg, echo=lambda *_: None)


def check_sequence(src: Path, out: Path, boxes: list[list[tuple]], *, min_change: float = 2.0,
                   skip_tracks: tuple = ()) -> None:
    """Same names, formats and sizes, nothing else in the folder; every face the detector finds changed."""
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in src.iterdir())
    assert sum(len(b) for b in boxes) >= 2 * len(boxes) - 2  # two faces almost everywhere
    for t, real_path in enumerate(ordered(src)):
        with Image.open(real_path) as a, Image.open(out / real_path.name) as b:
            assert (b.format, b.size) == (a.format, a.size)
        real, anon = load_image(real_path), load_image(out / real_path.name)
        for x0, y0, x1, y1 in boxes[t]:
            x0, y0 = max(x0, 0), max(y0, 0)
            diff = np.abs(real[y0:y1, x0:x1].astype(int) - anon[y0:y1, x0:x1]).mean()
            assert diff > min_change, f"frame {real_path.name}: face {(x0, y0, x1, y1)} unchanged ({diff:.2f})"


def rows(out: Path, key: str = "walk") -> tuple[dict, list[dict]]:
    """The manifest's row of input ``key`` and its face (track) rows."""
    with RunManifest(out) as m:
        row = next(r for r in m.inputs() if r["source"] == key)
        return row, [f for f in m.faces() if f["source"] == key]


def test_frames_are_ordered_by_their_number(tmp_path):
    folder = make_sequence(tmp_path / "s", frames=12)
    names = [p.name for p in sequence_frames(folder)]
    assert names == [frame_name(i) for i in range(12)]  # shot_2 before shot_10, whatever the suffix
    assert sorted(names) != names


def test_cli_anonymizes_a_sequence_folder(sequence, input_boxes, tiny_models, tmp_path, monkeypatch, one_thread):
    """The real CLI, with relative paths as a user types them: ``falco anonymize walk --sequence --out anon``."""
    import shutil

    from typer.testing import CliRunner

    from falco.cli import app

    shutil.copytree(sequence, tmp_path / "walk")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["anonymize", "walk", "--sequence", "--out", "anon", "--method", "pixelate",
                                   "--models", str(tiny_models), "--device", "cpu", "--no-progress", "--guard", "off",
                                   "--video-segment", "5", "--sequence-fps", "30"])
    assert res.exit_code == 0, res.output
    check_sequence(sequence, tmp_path / "anon" / "walk", input_boxes)
    with RunManifest(tmp_path / "anon") as m:
        assert m.input_status("walk") == "done"
        faces = [f for f in m.faces() if f["source"] == "walk"]
        assert m.runs()[-1]["config"]["sequence_fps"] == 30
    assert len(faces) == 2
    for row in faces:
        assert row["status"] == "done" and row["method"] == "pixelate" and row["frames"] == FRAMES
        assert len(row["identity_keys"]) == 1
    assert not list((tmp_path / "anon").rglob("*.tmp")) and not list((tmp_path / "anon").rglob("seg_*"))


def test_the_manifest_records_the_frame_rate(sequence, tiny_models, tmp_path, one_thread):
    out = tmp_path / "out"
    summary = run(sequence, out, "mask", tiny_models, sequence_fps=12.5, video_segment=20)
    assert not summary.failed and summary.done == 1
    row, _ = rows(out)
    assert row["status"] == "done"
    assert row["outputs"]["fps"] == 12.5 and row["outputs"]["sequence"] == "walk"
    assert row["outputs"]["frames"] == FRAMES and row["outputs"]["size"] == [240, 200]
    assert row["outputs"]["first_frame"] == "shot_1.png" and row["outputs"]["last_frame"] == f"shot_{FRAMES}.png"


def test_a_killed_run_resumes_and_writes_the_same_frames(sequence, input_boxes, tiny_models, tmp_path, monkeypatch,
                                                        one_thread):
    """The CLI in a real process, killed (SIGKILL) while it writes the 7th frame (the 2nd segment of 4 frames);
    the next run resumes at the 2nd segment and every frame comes out as in an uninterrupted run."""
    import os
    import shutil
    import subprocess
    import sys
    import textwrap

    import falco.run.video as video

    reference = tmp_path / "reference"
    assert not run(sequence.parent, reference, "ciagan", tiny_models, video_segment=4).failed
    shutil.copytree(sequence, tmp_path / "walk")
    script = textwrap.dedent(f"""
        import os, signal
        import falco.run.image_files as F
        from falco.cli import app
        from falco.run.atomic import atomic_path
        real, n = F.save_image, [0]
        def save(path, *a, **k):
            n[0] += 1
            if n[0] == 7:
                with atomic_path(path) as tmp:
                    tmp.write_bytes(b"half a frame")
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(path, *a, **k)
        F.save_image = save
        app(["anonymize", "walk", "--sequence", "--out", "anon", "--method", "ciagan", "--models",
             {str(tiny_models)!r}, "--device", "cpu", "--no-progress", "--guard", "off", "--video-segment", "4"])
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])})
    assert res.returncode == -9, res.stderr[-2000:]
    out = tmp_path / "anon"
    with RunManifest(out) as m:
        assert m.input_status("walk") == "partial"
    assert len(list(out.rglob(".*.tmp"))) == 1  # the frame being written when the process died
    written = sorted(p.name for p in (out / "walk").iterdir() if not p.name.startswith("."))
    assert written == sorted(p.name for p in ordered(sequence)[:6])
    seen: list[int] = []
    monkeypatch.setattr(video, "after_segment", lambda done, total: seen.append(done))
    monkeypatch.chdir(tmp_path)
    resumed = run(Path("walk"), Path("anon"), "ciagan", tiny_models, video_segment=4)
    assert not resumed.failed and resumed.done == 1
    assert seen == [2, 3]  # the first segment was not made again
    assert not list(out.rglob(".*.tmp"))
    for p in ordered(sequence):
        assert (out / "walk" / p.name).read_bytes() == (reference / "walk" / p.name).read_bytes(), p.name
    check_sequence(sequence, out / "walk", input_boxes)
    again = run(Path("walk"), Path("anon"), "ciagan", tiny_models, video_segment=4)
    assert again.skipped == 1 and again.done == 0


def test_a_frame_where_detection_misses_is_still_covered(sequence, input_boxes, tiny_models, tmp_path, monkeypatch,
                                                         one_thread):
    calls = blind_detection(monkeypatch, misses={6})
    out = tmp_path / "out"
    summary = run(sequence.parent, out, "blur", tiny_models)
    assert not summary.failed and calls["n"] == FRAMES
    check_sequence(sequence, out / "walk", input_boxes)
    _, faces = rows(out)
    assert len(faces) == 2
    for row in faces:
        assert row["frames"] == FRAMES and row["interpolated"] == 1 and row["detected"] == FRAMES - 1


def test_every_sub_folder_is_a_sequence_and_input_itself_too(tmp_path):
    root = tmp_path / "shots"
    for name in ("a", "b/c"):
        (root / name).mkdir(parents=True)
        (root / name / "f1.png").write_bytes(b"")
    (root / "b" / "notes.txt").write_text("not a frame")
    assert [(i.key, i.path.name) for i in discover_inputs(root, videos=True, sequences=True)] == \
        [("a", "a"), ("b/c", "c")]
    assert [i.key for i in discover_inputs(root / "a", videos=True, sequences=True)] == ["a"]
    assert [i.key for i in discover_inputs(root / "a", videos=True)] == ["f1.png"]  # without --sequence: photos
    with pytest.raises(InputError, match="--sequence"):
        discover_inputs(root / "a" / "f1.png", videos=True, sequences=True)


@pytest.mark.parametrize("problem", ["size", "unreadable", "unnumbered", "same number"])
def test_a_bad_frame_fails_its_sequence_with_one_line_naming_it(problem, sequence, tiny_models, tmp_path):
    import shutil

    src = tmp_path / "in"
    shutil.copytree(sequence, src / "walk")
    shutil.copytree(sequence, src / "good")
    bad = {"size": "shot_7.png", "unreadable": "shot_8.png", "unnumbered": "cover.png", "same number": "shot_07.png"}
    path = src / "walk" / bad[problem]
    if problem == "size":
        Image.fromarray(np.zeros((100, 120, 3), np.uint8)).save(path)
    elif problem == "unreadable":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)
    else:
        shutil.copy(src / "walk" / "shot_7.png", path)
    out = tmp_path / "out"
    summary = run(src, out, "mask", tiny_models)
    assert summary.done == 1 and [key for key, _ in summary.failed] == ["walk"]
    reason = summary.failed[0][1]
    assert bad[problem] in reason and "\n" not in reason, reason
    assert (out / "good").is_dir()


def test_image_sequence_source_reads_frames_in_order(sequence, tmp_path):
    source = ImageSequence(sequence, tmp_path / "o", fps=24)
    info = source.probe()
    assert (info.frames, info.width, info.height, info.audio) == (FRAMES, 200, 240, 0)
    assert float(info.rate) == 24
    for (t, rgb, pts), p in zip(source.frames(), ordered(sequence)):
        assert pts == t and np.array_equal(rgb, load_image(p))
