"""Progress of a run: photos, faces and optimisation steps on stderr; nothing at all without progress."""

from __future__ import annotations

import re
import shutil
import time

from falco.run.inputs import discover_inputs
from falco.run.manifest import RunManifest
from falco.run.runner import FaceRun
from tests.conftest import shared_path


def _run(tmp_path, progress: bool, steps: int = 3) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(shared_path("data", "faces", "2008_001322.jpg"), src / "three.jpg")
    with RunManifest(tmp_path / "out") as manifest:
        runner = FaceRun(discover_inputs(src), manifest, batch_size=2, progress=progress)

        on_step = runner.on_step if progress else None  # the command hands it to the method's set_step_callback

        def process(faces):  # what FALCO's optimisation reports through that callback
            for step in range(1, steps + 1):
                time.sleep(0.15)  # a step takes a while (tqdm redraws at most every 0.1 s)
                if on_step is not None:
                    on_step(step, steps)
            return [None] * len(faces)

        summary = runner.run(process, lambda photo, results: ({}, [{} for _ in photo.faces]))
    assert summary.faces == 3


def test_progress_shows_faces_and_the_steps_of_each_batch(tmp_path, capsys):
    _run(tmp_path, progress=True)
    err = capsys.readouterr().err.replace("\r", "\n")
    assert "photo" in err and "faces=3/3" in err
    for batch in ("1/2", "2/2"):  # e.g. "batch 1/2:  67%|######7   | 2/3 [00:00<00:00, 6.6step/s]"
        assert re.search(rf"batch {batch}: .* [0-3]/3 \[.*step/s", err), err


def test_no_progress_prints_no_bar(tmp_path, capfd):
    _run(tmp_path, progress=False)
    out, err = capfd.readouterr()
    assert "step" not in err and "photo" not in err and "%|" not in err and "%|" not in out
