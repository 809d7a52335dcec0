"""The privacy guard's verdict, recomputed on the photo ``falco anonymize`` wrote.

The README promises: each anonymized face is compared with its original by dlib's
face-recognition ResNet, and a distance below 0.6 means "same person". Here dlib is called
directly (its model file from the ``face_recognition_models`` package) on the input photo and
on the written output, at the landmarks the manifest recorded; the guard's own reported
distance is only compared with ours, never trusted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from falco.faces.detect import dlib_model_path
from falco.run.manifest import RunManifest
from tests.conftest import shared_path

dlib = pytest.importorskip("dlib")

THRESHOLD = 0.6  # README: "distance < 0.6 means 'same person'"
PHOTOS = ("2008_001322.jpg", "2008_001009.jpg")


def _recognition_model():
    # dlib's own network, called directly here; only the file is located by falco (a dependency, never skipped)
    return dlib.face_recognition_model_v1(str(dlib_model_path("dlib_face_recognition_resnet_model_v1.dat")))


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def _descriptors(model, image: np.ndarray, rows: list[dict]) -> np.ndarray:
    shapes = dlib.full_object_detections()
    for row in rows:
        lm = np.asarray(row["landmarks"], dtype=np.float64)
        assert lm.shape == (68, 2)
        x0, y0, x1, y1 = (int(v) for v in row["box"])
        shapes.append(dlib.full_object_detection(dlib.rectangle(x0, y0, x1, y1),
                                                 [dlib.point(int(round(x)), int(round(y))) for x, y in lm]))
    return np.array([np.array(d) for d in model.compute_face_descriptor(np.ascontiguousarray(image), shapes)])


# pixelate (16 blocks) leaves some of these faces recognisable: the guard must cover them
@pytest.mark.parametrize("method", ["blur", "pixelate", "falco"])
def test_faces_the_guard_passed_are_not_the_same_person_on_the_written_file(method, tiny_models, tmp_path):
    from falco.cli import main

    src = tmp_path / "in"
    src.mkdir()
    for name in PHOTOS:
        shutil.copy(shared_path("data", "faces", name), src / name)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["anonymize", str(src), "--out", str(out), "--method", method, "--models", str(tiny_models),
              "--device", "cpu", "--steps", "2", "--bank-size", "16", "--guard", "enforce", "--no-progress"])
    assert exit_info.value.code in (0, 1)  # 1: some face needed the fallback (the rows say which)
    with RunManifest(out) as m:
        rows = [r for r in m.faces() if r.get("landmarks") is not None]
        outputs = {r["source"]: r["outputs"] for r in m.inputs()}
    assert len(rows) >= 4
    model = _recognition_model()
    checked = 0
    for source in PHOTOS:
        mine = sorted((r for r in rows if r["source"] == source), key=lambda r: r["face_index"])
        assert mine, source
        written = out / source  # the output mirrors the input's name (same format by default)
        assert written.exists(), (source, outputs.get(source))
        original, result = _read(src / source), _read(written)
        assert original.shape == result.shape
        d = np.linalg.norm(_descriptors(model, original, mine) - _descriptors(model, result, mine), axis=1)
        for row, dist in zip(mine, d):
            guard = row.get("guard") or {}
            assert guard.get("verdict") in ("safe", "redone", "fallback", "unsafe"), row
            reported = guard["identity"]["dlib"]
            # the guard checked the photo before it was encoded (JPEG, quality 95): close, not equal
            assert abs(reported - dist) < 0.03, (source, row["face_index"], reported, dist)
            if guard["verdict"] != "unsafe":  # the manifest says this face passed
                assert dist >= THRESHOLD, (source, row["face_index"], guard["verdict"], dist)
                checked += 1
    assert checked >= 4
