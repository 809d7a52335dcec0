"""A resumable batch run over photos: load, detect and align, process faces in batches, write.

Commands such as ``falco invert`` and ``falco anonymize`` supply two functions:

* ``process(faces) -> results``: one result per aligned face, called on batches of up to
  ``batch_size`` faces gathered across photos;
* ``finish(photo, results) -> (outputs, face_rows)``: writes the outputs of one photo
  (atomically) and returns what the manifest records.

The runner records each photo in the manifest only after its outputs are written, skips
photos a previous run finished, and keeps going when one photo fails (the reason is
recorded). Killing a run loses at most the photos in flight.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from falco.errors import FalcoError, ImageLoadError, RunAbortedError
from falco.faces import AlignedFace, detect_and_align, get_detector
from falco.faces.detect import DEFAULT_DETECTOR
from falco.run.image_files import DEFAULT_MAX_PIXELS, load_image
from falco.run.sharding import (barrier, current_shard, finish, init, launched_by_torchrun, merge_summaries,
                               shard_items)
from falco.run.inputs import InputItem, atomic_path, display_path, lock_output_dir, remove_stale_temps
from falco.run.manifest import RunManifest

log = logging.getLogger(__name__)


@dataclass
class Photo:
    """A loaded photo and its aligned faces, waiting for its batch to be processed."""

    item: InputItem
    image: np.ndarray
    faces: list[AlignedFace]
    kept: list[AlignedFace] = field(default_factory=list)  # left as they are (``select`` said so)


@dataclass
class RunSummary:
    """Counts of one run; ``failed`` lists ``(input key, reason)``."""

    total: int = 0
    skipped: int = 0
    done: int = 0
    no_face: int = 0
    faces: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    unsafe: int = 0  # faces the privacy guard could not certify (exit status 1 under --guard enforce)

    def as_dict(self) -> dict:
        return dict(total=self.total, skipped=self.skipped, done=self.done, no_face=self.no_face,
                    faces=self.faces, failed=[list(f) for f in self.failed], unsafe=self.unsafe)

    def line(self) -> str:
        """One-line human summary."""
        text = (f"{self.total} inputs: {self.done} done, {self.no_face} without a face, "
                f"{len(self.failed)} failed, {self.skipped} already done; {self.faces} faces processed")
        if self.unsafe:
            text += f"; {self.unsafe} faces not anonymized by the method (privacy guard)"
        return text


def face_row(face: AlignedFace, **extra: Any) -> dict:
    """The geometry every face row of a manifest carries."""
    return dict(box=list(face.box), score=face.score, quad=face.quad.tolist(),
                quad_size=round(face.quad_size, 3), landmarks=face.landmarks.round(3).tolist(), **extra)


class FaceRun:
    """Drive a resumable run over photos (see the module docstring).

    Args:
        items: Inputs to process.
        manifest: The output directory's manifest.
        detector: ``'hog'``, ``'cnn'``, ``'yunet'``, ... or a detector object.
        models: The model set (``--models``) a named detector's weights come from (None: the default).
        upsample: dlib upsampling for detection.
        align_size: Side of the aligned crops.
        batch_size: Faces per ``process`` call.
        progress: Show progress bars with ETA (on stderr): photos, with the faces found and
            processed so far in its postfix, and, while an optimisation runs (see :meth:`on_step`),
            a second bar with the current batch's steps. False: no bar at all.
    """

    def __init__(self, items: Sequence[InputItem], manifest: RunManifest, *, detector: Any = DEFAULT_DETECTOR,
                 upsample: int = 1, align_size: int = 256, batch_size: int = 8, progress: bool = True,
                 select: Callable[[np.ndarray, list[AlignedFace]], list[bool]] | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, models: Any = None) -> None:
        if isinstance(detector, str):  # fails fast: an unknown name, a missing model or package
            detector = get_detector(detector, upsample, models=models)
        self.items = list(items)
        self.manifest = manifest
        self.detector = detector
        self.upsample = upsample
        self.align_size = align_size
        self.batch_size = max(1, int(batch_size))
        self.progress = progress
        self.select = select
        self.max_pixels = max_pixels
        self._paths = {item.key: item.path for item in self.items}
        self._bar: Any = None        # the photo bar of the run in progress
        self._step_bar: Any = None   # the optimisation-step bar, made at the first step
        self._step_desc = ""         # what it shows: the batch it counts the steps of
        self._batch: tuple[int, int] | None = None  # (i, n): process() is on batch i of n of this group
        self._found = 0              # faces detected so far
        self._processed = 0          # faces through process() so far

    def on_step(self, step: int, steps: int) -> None:
        """Advance the step bar to ``step`` of ``steps`` of the current batch's optimisation (no-op without progress)."""
        if not self.progress:
            return
        desc = f"batch {self._batch[0]}/{self._batch[1]}" if self._batch else "optimising"
        if self._step_bar is None:
            self._step_bar = tqdm(total=steps, desc=desc, unit="step", position=1, leave=False, dynamic_ncols=True)
        bar = self._step_bar
        if step < bar.n or bar.total != steps or self._step_desc != desc:  # a new optimisation
            bar.reset(total=steps)
            bar.set_description(desc, refresh=False)
        self._step_desc = desc
        bar.update(step - bar.n)
        if step == steps:  # show the end of each batch, however fast it went (tqdm skips updates < 0.1 s apart)
            bar.refresh()

    def _postfix(self, summary: RunSummary) -> None:
        if self._bar is not None:
            self._bar.set_postfix(faces=f"{self._processed}/{self._found}", failed=len(summary.failed))

    def run(self, process: Callable[[list[AlignedFace]], list[Any]],
            finish: Callable[[Photo, list[Any]], tuple[dict, list[dict]]]) -> RunSummary:
        """Process every unfinished input; returns the summary (also logged in the manifest)."""
        summary = RunSummary(total=len(self.items))
        finished = self.manifest.finished_inputs()
        todo = [item for item in self.items if item.key not in finished]
        summary.skipped = len(self.items) - len(todo)
        bar = tqdm(total=len(self.items), initial=summary.skipped, unit="photo", disable=not self.progress,
                   dynamic_ncols=True)
        self._bar, self._found, self._processed = bar, 0, 0
        pending: list[Photo] = []
        try:
            for item in todo:
                photo = self._load(item, summary)
                if photo is None:
                    bar.update(1)
                    continue
                self._found += len(photo.faces)
                self._postfix(summary)
                pending.append(photo)
                if sum(len(p.faces) for p in pending) >= self.batch_size:
                    self._flush(pending, process, finish, summary, bar)
                    pending = []
            self._flush(pending, process, finish, summary, bar)
        finally:
            if self._step_bar is not None:
                self._step_bar.close()
            bar.close()
            self._bar = self._step_bar = None
        return summary

    def _fail(self, key: str, reason: str, summary: RunSummary) -> None:
        """Record one failed input (the manifest's reason names the file) and say so on one line,
        with the path as the user would type it."""
        path = self._paths.get(key)
        log.error("failed: %s: %s", display_path(path) if path else key, reason)
        summary.failed.append((key, reason))
        recorded = f"{path.name}: {reason}" if path is not None and path.name not in reason else reason
        self.manifest.record_input(key, "failed", reason=recorded)

    def _load(self, item: InputItem, summary: RunSummary) -> Photo | None:
        try:
            image = load_image(item.path, max_pixels=self.max_pixels)
            faces = detect_and_align(image, size=self.align_size, detector=self.detector, upsample=self.upsample)
        except ImageLoadError as exc:  # its message starts with the path: say the path once
            self._fail(item.key, exc.reason, summary)
            return None
        except FalcoError as exc:
            self._fail(item.key, str(exc), summary)
            return None
        except Exception as exc:  # an unexpected failure must not stop the other photos
            self._fail(item.key, f"{type(exc).__name__}: {exc}", summary)
            log.debug("%s", traceback.format_exc())
            return None
        if self.select is None or not faces:
            return Photo(item, image, faces)
        try:
            keep = self.select(image, faces)
        except Exception as exc:
            self._fail(item.key, f"selecting faces failed: {type(exc).__name__}: {exc}", summary)
            return None
        return Photo(item, image, [f for f, k in zip(faces, keep) if not k], [f for f, k in zip(faces, keep) if k])

    def _flush(self, pending: list[Photo], process, finish, summary: RunSummary, bar) -> None:
        if not pending:
            return
        faces = [face for photo in pending for face in photo.faces]
        results: list[Any] = []
        processed = self._processed
        starts = range(0, len(faces), self.batch_size)
        try:
            for i, start in enumerate(starts):
                self._batch = (i + 1, len(starts))
                batch = faces[start:start + self.batch_size]
                results.extend(process(batch))
                self._processed += len(batch)
                self._postfix(summary)
        except RunAbortedError:
            raise
        except Exception as exc:
            self._processed = processed
            if len(pending) > 1:  # retry photo by photo so one bad face fails only its photo
                for photo in pending:
                    self._flush([photo], process, finish, summary, bar)
                return
            self._fail(pending[0].item.key, f"processing failed: {type(exc).__name__}: {exc}", summary)
            bar.update(1)
            return
        finally:
            self._batch = None
        assert len(results) == len(faces), "process() must return one result per face"
        offset = 0
        for photo in pending:
            mine = results[offset:offset + len(photo.faces)]
            offset += len(photo.faces)
            try:
                outputs, rows = finish(photo, mine)
            except RunAbortedError:
                raise
            except Exception as exc:
                self._fail(photo.item.key, f"writing outputs failed: {type(exc).__name__}: {exc}", summary)
                bar.update(1)
                continue
            status = "done" if photo.faces or photo.kept else "no_face"
            self.manifest.record_input(photo.item.key, status,
                                       reason=None if status == "done" else "no face found",
                                       faces=rows, outputs=outputs)
            if status == "done":
                summary.done += 1
                summary.faces += len(photo.faces)
            else:
                summary.no_face += 1
            bar.update(1)
            self._postfix(summary)


def run_in_out_dir(out: Path, items: Sequence[InputItem], device: Any,
                   body: Callable[[list[InputItem]], RunSummary], *,
                   prepare: Callable[[], None] | None = None) -> RunSummary:
    """Run ``body`` over this process's share of ``items`` with ``out`` locked.

    Single process: lock ``out``, remove temp files a killed run left, ``prepare()``, run
    ``body(items)``, write ``summary.json``. Under torchrun each rank does the same on its
    shard (rank 0 alone prepares while the others wait), writes ``summary.rank<R>.json``,
    and rank 0 merges them into ``summary.json`` at the end.
    """
    shard = current_shard()
    init(shard, device)
    lock_name = ".falco.lock" if shard.rank == 0 else f".falco.rank{shard.rank}.lock"
    with lock_output_dir(out, lock_name):
        # Alone, every temp file is stale; beside other ranks, only those older than this process.
        remove_stale_temps(out, older_than=None if shard.distributed else time.time())
        if shard.is_main and prepare is not None:
            prepare()
        barrier(shard)
        summary = body(shard_items(items, shard))
        name = f"summary.rank{shard.rank}.json" if shard.distributed else "summary.json"
        with atomic_path(out / name) as tmp:
            tmp.write_text(json.dumps(summary.as_dict(), indent=2))
        barrier(shard)
        if shard.distributed and shard.is_main and launched_by_torchrun():
            parts = [json.loads((out / f"summary.rank{r}.json").read_text()) for r in range(shard.world_size)]
            with atomic_path(out / "summary.json") as tmp:
                tmp.write_text(json.dumps(merge_summaries(parts), indent=2))
    finish(shard)
    return summary
