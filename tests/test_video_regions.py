"""Videos and image sequences under ``--keep``/``--change`` (per frame, after the method), ``--keep-identity``
(per track), and a method failing on one frame (its faces covered, the video goes on). PNG sequences keep the
comparisons exact; one test runs on an H.264 clip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from falco.faces.pipeline import detect_and_align
from falco.run.image_files import load_image, save_image
from falco.run.manifest import RunManifest
from tests.conftest import shared_path
from tests.test_video_sequence import FRAMES, check_sequence, make_sequence, ordered, rows, run


@pytest.fixture(scope="module")
def sequence(tmp_path_factory) -> Path:
    return make_sequence(tmp_path_factory.mktemp("regions-in") / "walk")


@pytest.fixture(scope="module")
def input_faces(sequence) -> list[list]:
    """Per input frame (in order), the faces a detector finds there (box, landmarks)."""
    return [detect_and_align(load_image(p), size=64) for p in ordered(sequence)]


def _diff(a: np.ndarray, b: np.ndarray, box) -> float:
    x0, y0, x1, y1 = (max(int(v), 0) for v in box)
    return float(np.abs(a[y0:y1, x0:x1].astype(int) - b[y0:y1, x0:x1]).mean())


def _eye_boxes(face) -> list[tuple[int, int, int, int]]:
    """Small boxes at the centre of each eye (inside the eye whatever the smoothing of the track)."""
    out = []
    for pts in (face.landmarks[36:42], face.landmarks[42:48]):
        cx, cy = np.asarray(pts).mean(axis=0)
        out.append((int(cx) - 1, int(cy) - 1, int(cx) + 2, int(cy) + 2))
    return out


def test_keep_eyes_on_every_frame(sequence, input_faces, tiny_models, tmp_path, one_thread):
    out = tmp_path / "out"
    summary = run(sequence.parent, out, "pixelate", tiny_models, keep=("eyes",), region_masks="landmarks")
    assert not summary.failed and summary.done == 1
    check_sequence(sequence, out / "walk", [[f.box for f in faces] for faces in input_faces])  # faces changed
    plain = tmp_path / "plain"
    run(sequence.parent, plain, "pixelate", tiny_models)
    for path, faces in zip(ordered(sequence), input_faces):
        real, kept, changed = (load_image(d / path.name) for d in (sequence, out / "walk", plain / "walk"))
        exact = path.suffix == ".png"  # JPEG frames are encoded again (quality 95)
        for face in faces:
            for box in _eye_boxes(face):
                assert _diff(real, kept, box) < (0.5 if exact else 4.0), path.name  # the eyes come from the frame...
                if exact:
                    assert _diff(real, changed, box) > 0.5, path.name  # ...where the method alone changed them
    _, faces = rows(out)
    assert len(faces) == 2
    for row in faces:
        assert row["status"] == "done"
        assert row["regions"]["keep"] == ["eyes"] and row["regions"]["masks"] == "landmarks"
        assert row["regions"]["frames"] == FRAMES


def test_change_only_the_mouth(sequence, input_faces, tiny_models, tmp_path, one_thread):
    out = tmp_path / "out"
    summary = run(sequence.parent, out, "mask", tiny_models, change=("mouth",), region_masks="landmarks")
    assert not summary.failed
    for path, faces in zip(ordered(sequence), input_faces):
        real, anon = load_image(path), load_image(out / "walk" / path.name)
        for face in faces:
            for box in _eye_boxes(face):
                assert _diff(real, anon, box) < (0.5 if path.suffix == ".png" else 4.0), path.name  # only the mouth...
            mx, my = np.asarray(face.landmarks[60:68]).mean(axis=0)
            assert _diff(real, anon, (mx - 1, my - 1, mx + 2, my + 2)) > 10, path.name  # ...masked black
    assert all(r["regions"] == {"change": ["mouth"], "masks": "landmarks", "feather": 0.02, "frames": FRAMES}
               for r in rows(out)[1])


CELEBA = ("1", "003039.jpg"), ("3", "005346.jpg")  # two people (dlib distance about 0.88)
CONSENT = ("1", "004568.jpg")  # another photo of the first (distance about 0.28)


def two_people(frames: int = 8) -> list[np.ndarray]:
    """A slow pan over two CelebA people side by side: the first (left) consents, the second does not."""
    from falco.video.synth import pan_frames

    canvas = np.full((230, 380, 3), 90, np.uint8)
    for i, (person, name) in enumerate(CELEBA):
        canvas[6:224, 6 + 190 * i:184 + 190 * i] = load_image(shared_path("data", "celeba-ids", "clr", person, name))
    return pan_frames(canvas, frames, (352, 212), window=(10, 6, 362, 218), pan=(1.0, 0.3), zoom=0.002)


def _reference(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "consent.jpg"
    save_image(path, load_image(shared_path("data", "celeba-ids", "clr", *CONSENT)))
    return path


def test_keep_identity_leaves_the_consenting_persons_track_untouched(tiny_models, tmp_path, one_thread):
    src = tmp_path / "in" / "walk"
    src.mkdir(parents=True)
    for i, view in enumerate(two_people(5)):
        save_image(src / f"f{i}.png", view)
    out = tmp_path / "out"
    summary = run(src.parent, out, "pixelate", tiny_models, keep_identity=(_reference(tmp_path / "ref"),),
                  guard="enforce")
    assert not summary.failed and summary.done == 1
    _, faces = rows(out)
    kept = [r for r in faces if r["status"] == "kept"]
    other = [r for r in faces if r["status"] != "kept"]
    assert len(kept) == 1 and len(other) == 1, faces
    assert kept[0]["method"] == "none" and kept[0]["frames"] == 5 and kept[0]["box"][0] < other[0]["box"][0]
    k = kept[0]["keep_identity"]
    assert 2 * k["matched"] > k["described"] and "--keep-identity" in kept[0]["reason"]
    assert other[0]["method"] == "pixelate" and other[0]["frames"] == 5  # (the guard may have covered it more)
    assert not [r for r in faces if r.get("track") is None]  # the guard did not take the kept face for a miss
    for i in range(5):
        real, anon = load_image(src / f"f{i}.png"), load_image(out / "walk" / f"f{i}.png")
        left, right = sorted(detect_and_align(real, size=64), key=lambda f: f.box[0])
        assert _diff(real, anon, left.box) == 0.0, i  # untouched, in every frame
        assert _diff(real, anon, right.box) > 2.0, i


def test_keep_identity_on_a_video(tiny_models, tmp_path, one_thread):
    from falco.video.io import iter_frames
    from falco.video.synth import make_clip
    from tests.test_video_run import tracks

    (tmp_path / "in").mkdir()
    src = make_clip(tmp_path / "in" / "clip.mp4", two_people(), fps=24)
    out = tmp_path / "out"
    summary = run(src.parent, out, "mask", tiny_models, keep_identity=(_reference(tmp_path / "ref"),),
                  sequence=False)
    assert not summary.failed and summary.done == 1
    assert sorted(r["status"] for r in tracks(out)) == ["done", "kept"]
    for (_, real, _), (_, anon, _) in zip(iter_frames(src), iter_frames(out / "clip.mp4")):
        left, right = sorted(detect_and_align(real, size=64), key=lambda f: f.box[0])
        assert _diff(real, anon, left.box) < 3.0  # H.264 both ways, nothing else
        assert _diff(real, anon, right.box) > 20.0  # masked black


def test_a_frame_the_method_fails_on_is_covered_and_the_video_goes_on(sequence, input_faces, tiny_models, tmp_path,
                                                                      monkeypatch, one_thread):
    from falco.errors import InputError
    from falco.methods.registry import method_class

    cls = method_class("pixelate")
    real_process = cls.process
    calls = {"n": 0}

    def fails_on_frame_5(self, faces):
        calls["n"] += 1
        if calls["n"] == 6:  # one call per frame (every frame shows both faces)
            raise InputError("pixelate: broken on purpose")
        return real_process(self, faces)

    monkeypatch.setattr(cls, "process", fails_on_frame_5)
    out = tmp_path / "out"
    summary = run(sequence.parent, out, "pixelate", tiny_models, on_fail="mask")
    assert not summary.failed and summary.done == 1 and calls["n"] == FRAMES
    check_sequence(sequence, out / "walk", [[f.box for f in faces] for faces in input_faces])
    row, faces = rows(out)
    assert [(f["frame"], f["cover"]) for f in row["outputs"]["failed_frames"]] == [(5, "mask")]
    assert "broken on purpose" in row["outputs"]["failed_frames"][0]["reason"]
    assert len(faces) == 2
    for face in faces:
        assert face["status"] == "fallback" and face["failed_frames"] == [5]
        assert face["frame_status"] == {"done": FRAMES - 1, "fallback": 1}
        assert "frame(s) [5]" in face["reason"]
    for t, path in enumerate(ordered(sequence)):
        anon = load_image(out / "walk" / path.name)
        for face in input_faces[t]:
            x0, y0, x1, y1 = (max(v, 0) for v in face.box)
            black = float((anon[y0:y1, x0:x1].max(axis=-1) == 0).mean())
            assert (black > 0.3) == (t == 5), (path.name, black)  # the mask cover on frame 5 only


def test_an_io_error_fails_the_sequence(sequence, tiny_models, tmp_path, monkeypatch, one_thread):
    import falco.run.image_files as image_files

    real_save = image_files.save_image
    calls = {"n": 0}

    def disk_full_at_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(image_files, "save_image", disk_full_at_third)
    summary = run(sequence.parent, tmp_path / "out", "pixelate", tiny_models)
    assert summary.done == 0 and [k for k, _ in summary.failed] == ["walk"]
    assert "No space left on device" in summary.failed[0][1] and "\n" not in summary.failed[0][1]
    with RunManifest(tmp_path / "out") as m:
        assert m.input_status("walk") == "failed"
