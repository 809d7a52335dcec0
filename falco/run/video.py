"""``falco anonymize`` on videos: detect, track, anonymize with one identity per track, encode.

A video goes through two streaming passes (memory holds one frame plus per-frame face
geometry, whatever the video's length):

1. detection (every ``--detect-every`` frames), saved per segment of ``--video-segment`` frames;
   then the detections are linked into tracks, gaps filled, ends extended and the motion
   smoothed (:mod:`falco.video.tracking`, :mod:`falco.video.tracks`);
2. per frame: the tracks' faces aligned, the method run with per-track state
   (:class:`falco.video.identity.TrackedMethod`), the privacy guard as for photos, and the
   frame encoded into its segment's file (with the method's state at the segment's end).

Both passes record every finished segment (files under ``OUT/.video/<key>.work/`` and the
input's manifest row, status ``partial``), so an interrupted run continues from the last
finished segment. At the end the segments' packets and the input's audio streams are remuxed
into the output (same container and key as the input), written atomically; the work folder is
removed and the manifest gets one row per track (its provenance) and one for faces the guard
found on its own.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from falco.config import AnonymizeConfig
from falco.errors import FalcoError, InputError, RunAbortedError
from falco.methods.base import Anonymizer, face_key
from falco.run.atomic import atomic_write_text
from falco.run.inputs import InputItem
from falco.run.manifest import RunManifest
from falco.run.runner import RunSummary
from falco.video.identity import TrackedMethod, video_seed
from falco.video.io import SegmentWriter, VideoInfo, default_codec, iter_frames, mux_output, probe
from falco.video.tracking import Detection, link_tracks
from falco.video.tracks import TrackFace, frame_faces

log = logging.getLogger(__name__)

__all__ = ["run_videos", "VideoJob", "EXTEND", "SIGMA"]

#: Frames a track is extended before its first and after its last detection.
EXTEND = 3
#: Temporal smoothing of the landmarks (Gaussian sigma, frames).
SIGMA = 1.0


def run_videos(cfg: AnonymizeConfig, items: list[InputItem], anonymizer: Anonymizer, guard: Any,
               manifest: RunManifest, provenance: dict, summary: RunSummary) -> RunSummary:
    """Anonymize every unfinished video of ``items``; a failing video is recorded and the others go on."""
    finished = manifest.finished_inputs()
    if cfg.keep_identity or cfg.keep is not None or cfg.change is not None:
        log.warning("--keep-identity, --keep and --change apply to photos only: every face of a video is anonymized whole")
    for item in items:
        if item.key in finished:
            summary.skipped += 1
            continue
        try:
            rows, outputs = VideoJob(cfg, item, anonymizer, guard, manifest).run()
        except (RunAbortedError, KeyboardInterrupt):
            raise
        except FalcoError as exc:
            _fail(manifest, summary, item, str(exc))
            continue
        except Exception as exc:  # one broken video must not stop the others
            _fail(manifest, summary, item, f"{type(exc).__name__}: {exc}")
            continue
        tracks = [r for r in rows if r.get("track") is not None]
        status = "done" if tracks else "no_face"
        if cfg.sidecar:
            atomic_write_text(cfg.out / f"{item.key}.json",
                              json.dumps({"source": item.key, "tracks": rows, "provenance": provenance}, indent=1))
        manifest.record_input(item.key, status, reason=None if tracks else "no face found", faces=rows,
                              outputs=outputs)
        if tracks:
            summary.done += 1
            summary.faces += len(tracks)
        else:
            summary.no_face += 1
    return summary


def _fail(manifest: RunManifest, summary: RunSummary, item: InputItem, reason: str) -> None:
    reason = reason if item.path.name in reason else f"{item.path.name}: {reason}"
    log.error("failed: %s", reason)
    summary.failed.append((item.key, reason))
    manifest.record_input(item.key, "failed", reason=reason)


class VideoJob:
    """One video through both passes (see the module docstring)."""

    def __init__(self, cfg: AnonymizeConfig, item: InputItem, anonymizer: Anonymizer, guard: Any,
                 manifest: RunManifest) -> None:
        self.cfg, self.item, self.anonymizer, self.guard, self.manifest = cfg, item, anonymizer, guard, manifest
        self.work = cfg.out / ".video" / f"{item.key}.work"
        self.seg = cfg.video_segment
        self.seed = video_seed(cfg.seed, item.key)

    # -- the whole video --------------------------------------------------------------------
    def run(self) -> tuple[list[dict], dict]:
        info = probe(self.item.path)
        self._check_work()
        detections = self.detect_pass(info)
        n = len(detections)
        tracks = link_tracks(detections, max_gap=max(8, 2 * self.cfg.detect_every))
        per_frame = frame_faces(tracks, n, extend=EXTEND, extend_after=EXTEND + self.cfg.detect_every - 1,
                                sigma=SIGMA)
        segments = self.anonymize_pass(info, per_frame)
        final = self.cfg.out / self.item.key
        mux_output(final, self.item.path, segments, keep_metadata=self.cfg.keep_metadata)
        rows = self.track_rows(n)
        shutil.rmtree(self.work, ignore_errors=True)
        for folder in self.work.parents:  # the empty .video/ folders it lived in
            if folder == self.cfg.out:
                break
            try:
                folder.rmdir()
            except OSError:
                break
        return rows, {"video": self.item.key, "frames": n, "size": [info.height, info.width],
                      "audio_streams": info.audio, "codec": self._codec()}

    def _check_work(self) -> None:
        """Keep an interrupted run's segments only if they were made with the same settings."""
        cfg = self.cfg
        settings = {"method": cfg.method, "settings": self.anonymizer.settings(), "seed": cfg.seed,
                    "segment": cfg.video_segment, "detect_every": cfg.detect_every, "detector": str(cfg.detector),
                    "upsample": cfg.upsample, "codec": self._codec(), "crf": cfg.crf, "video_steps": cfg.video_steps,
                    "guard": cfg.guard, "on_fail": cfg.on_fail}
        text = json.dumps(settings, sort_keys=True, default=str)
        marker = self.work / "settings.json"
        if marker.exists() and marker.read_text() != text:
            log.warning("%s: the unfinished segments were made with other settings: starting over", self.item.path.name)
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True, exist_ok=True)
        if not marker.exists():
            atomic_write_text(marker, text)

    def _codec(self) -> str:
        return self.cfg.codec or default_codec(self.item.path)

    def _record(self, stage: str, done: int, total: int) -> None:
        """The manifest's row of this video while it is in progress: which segments are finished."""
        self.manifest.record_input(self.item.key, "partial", reason=f"{stage}: {done} of {total} segments done",
                                   outputs={"stage": stage, "segments_done": done, "segments": total})

    def _bar(self, total: int, initial: int, what: str):
        return tqdm(total=total, initial=initial, unit="frame", desc=f"{self.item.path.name}: {what}",
                    disable=not self.cfg.progress, dynamic_ncols=True)

    # -- pass 1 -----------------------------------------------------------------------------
    def detect_pass(self, info: VideoInfo) -> list[list[Detection] | None]:
        """Per frame, its detections (None where detection did not run or failed)."""
        from falco.faces.pipeline import detect_and_align

        done = self._load_detections()
        if done is not None and done[1]:  # every segment was finished by an earlier run
            return done[0]
        known = done[0] if done is not None else []
        out: list[list[Detection] | None] = list(known)
        total_segments = -(-info.frames // self.seg)
        bar = self._bar(info.frames, len(known), "detect")
        chunk: list[list[Detection] | None] = []
        try:
            for t, rgb, _ in iter_frames(self.item.path):
                if t < len(known):
                    continue
                dets: list[Detection] | None = None
                if t % self.cfg.detect_every == 0:
                    try:
                        faces = detect_and_align(rgb, size=64, detector=self.cfg.detector, upsample=self.cfg.upsample)
                        dets = [Detection(f.box, np.asarray(f.landmarks), f.score) for f in faces]
                    except Exception as exc:  # a failed call: the tracks cover the frame from its neighbours
                        log.warning("%s: frame %d: detection failed (%s: %s)", self.item.path.name, t,
                                    type(exc).__name__, exc)
                chunk.append(dets)
                out.append(dets)
                bar.update(1)
                if len(chunk) == self.seg:
                    self._save_detections(len(out) // self.seg - 1, chunk, last=False)
                    self._record("detect", len(out) // self.seg, total_segments)
                    chunk = []
        finally:
            bar.close()
        if not out:
            raise InputError(f"{self.item.path.name}: the video has no frame")
        last = (len(out) - 1) // self.seg
        self._save_detections(last, out[last * self.seg:], last=True)  # the last segment, marked as such
        return out

    def _det_path(self, index: int) -> Path:
        return self.work / f"det_{index:06d}.json"

    def _save_detections(self, index: int, chunk: list, *, last: bool) -> None:
        data = {"last": last, "frames": [None if d is None else [x.as_json() for x in d] for d in chunk]}
        atomic_write_text(self._det_path(index), json.dumps(data))

    def _load_detections(self) -> tuple[list, bool] | None:
        out: list = []
        index = 0
        while self._det_path(index).exists():
            data = json.loads(self._det_path(index).read_text())
            out += [None if d is None else [Detection.from_json(x) for x in d] for d in data["frames"]]
            if data["last"]:
                return out, True
            index += 1
        return (out, False) if out else None

    # -- pass 2 -----------------------------------------------------------------------------
    def _seg_path(self, index: int) -> Path:
        return self.work / f"seg_{index:06d}.nut"

    def _state_path(self, index: int) -> Path:
        return self.work / f"state_{index:06d}.safetensors"

    def _stats_path(self, index: int) -> Path:
        return self.work / f"stats_{index:06d}.json"

    def anonymize_pass(self, info: VideoInfo, per_frame: list[list[TrackFace]]) -> list[Path]:
        """Anonymize and encode every unfinished segment; returns all segment files in order."""
        n = len(per_frame)
        count = -(-n // self.seg)
        done = 0
        while done < count and all(p(done).exists() for p in (self._seg_path, self._state_path, self._stats_path)):
            done += 1
        method = TrackedMethod(self.anonymizer, self.seed, video_steps=self.cfg.video_steps)
        if done:
            method.load(self._state_path(done - 1))
        self.method = method
        if done < count:
            self._encode(info, per_frame, method, done, count)
        return [self._seg_path(i) for i in range(count)]

    def _encode(self, info: VideoInfo, per_frame: list[list[TrackFace]], method: TrackedMethod, first: int,
                count: int) -> None:
        n = len(per_frame)
        bar = self._bar(n, first * self.seg, "anonymize")
        writer: SegmentWriter | None = None
        stats: dict = {}
        index = first
        try:
            for t, rgb, pts in iter_frames(self.item.path):
                if t < first * self.seg or t >= n:
                    continue
                if writer is None:
                    writer = SegmentWriter(self._seg_path(index), info, codec=self._codec(), crf=self.cfg.crf)
                    stats = {"tracks": {}, "missed": 0}
                out = self._frame(rgb, per_frame[t], method, stats)
                writer.add(out, pts)
                bar.update(1)
                if (t + 1) % self.seg == 0 or t + 1 == n:
                    writer.close()
                    writer = None
                    method.save(self._state_path(index))
                    atomic_write_text(self._stats_path(index), json.dumps(stats))
                    index += 1
                    self._record("anonymize", index, count)
                    after_segment(index, count)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        finally:
            bar.close()
        if index < count:
            raise InputError(f"{self.item.path.name}: decoded {index * self.seg} frames, {n} were expected")

    def _frame(self, rgb: np.ndarray, tfs: list[TrackFace], method: TrackedMethod, stats: dict) -> np.ndarray:
        """One frame anonymized and checked; ``stats`` gathers each track's provenance."""
        from falco.methods.cover import fallback

        faces, tracks, kinds = [], [], []
        out = rgb
        for tf in tfs:
            try:
                faces.append(method.face(rgb, tf))
            except InputError:  # degenerate landmarks (a face leaving the frame): cover the box
                out = fallback(out, _box_face(rgb, tf), self.cfg.on_fail if self.cfg.on_fail != "skip" else "blur")
                continue
            tracks.append(tf.track)
            kinds.append(tf.kind)
        results = method.process(faces, tracks) if faces else []
        records: list[dict] = []
        if faces:
            out, records = self.anonymizer.apply(out, faces, results)
        redo = (lambda img, i: self.anonymizer.redo(img, faces[i])) if self.anonymizer.can_redo else None
        checked = self.guard.review(rgb, out, faces, redo=redo)
        stats["missed"] += len(checked.missed)
        for i, (face, track, kind) in enumerate(zip(faces, tracks, kinds)):
            row = stats["tracks"].setdefault(str(track), {"first": tfs[0].frame, "count": 0, "kinds": {}, "status": {},
                                                          "guard": {}, "draws": [], "keys": [], "box": list(face.box)})
            row["last"] = tfs[0].frame
            row["count"] += 1
            row["kinds"][kind] = row["kinds"].get(kind, 0) + 1
            status = records[i].get("status", "done")
            verdict = checked.verdicts[i]["verdict"] if checked.verdicts else None
            if verdict in ("fallback", "unsafe"):
                status = verdict
            row["status"][status] = row["status"].get(status, 0) + 1
            if verdict:
                row["guard"][verdict] = row["guard"].get(verdict, 0) + 1
            row["method"] = records[i].get("method")
            for value, name in ((_draw(records[i], results[i]), "draws"), (face_key(face), "keys")):
                if value is not None and value not in row[name]:
                    row[name].append(value)
        return checked.photo

    # -- provenance -------------------------------------------------------------------------
    def track_rows(self, n: int) -> list[dict]:
        """One manifest row per track (merged over the segments), then one for the guard's own finds."""
        merged: dict[int, dict] = {}
        missed = 0
        for i in range(-(-n // self.seg)):
            stats = json.loads(self._stats_path(i).read_text())
            missed += stats["missed"]
            for key, row in stats["tracks"].items():
                m = merged.setdefault(int(key), {"first": row["first"], "count": 0, "kinds": Counter(),
                                                 "status": Counter(), "guard": Counter(), "draws": [], "keys": [],
                                                 "box": row["box"]})
                m["last"] = row["last"]
                m["count"] += row["count"]
                for name in ("kinds", "status", "guard"):
                    m[name].update(row[name])
                for name in ("draws", "keys"):
                    m[name] += [v for v in row[name] if v not in m[name]]
                m["method"] = row.get("method")
        rows = []
        for track in sorted(merged):
            m = merged[track]
            worst = next((s for s in ("unsafe", "failed", "fallback") if m["status"].get(s)), "done")
            row = {"track": track, "status": worst, "method": m["method"], "box": m["box"],
                   "first_frame": m["first"], "last_frame": m["last"], "frames": m["count"],
                   "detected": m["kinds"].get("detected", 0), "interpolated": m["kinds"].get("interpolated", 0),
                   "extended": m["kinds"].get("extended", 0), "frame_status": dict(m["status"]),
                   "guard_verdicts": dict(m["guard"]), "identity_keys": m["keys"], "draws": m["draws"],
                   "video_seed": self.seed}
            if m["guard"]:  # the privacy guard's worst verdict over the track's frames (its summary line reads it)
                verdict = next(v for v in ("unsafe", "fallback", "redone", "safe", *m["guard"]) if m["guard"].get(v))
                row["guard"] = {"verdict": verdict}
            if self.method.falco and m["draws"]:
                row["neighbour"] = m["draws"][0]
            if worst != "done":
                row["reason"] = f"{sum(m['status'].get(s, 0) for s in ('unsafe', 'failed', 'fallback'))} frame(s) " \
                                f"not anonymized by {self.cfg.method} (covered by the fallback where possible)"
            row["guard_failing"] = self.guard.mode == "enforce" and worst in ("fallback", "unsafe", "failed")
            rows.append(row)
        if missed:
            rows.append({"track": None, "status": "missed", "frames": missed, "method": "guard-fallback",
                         "reason": "faces found only by the privacy guard, covered in their frames"})
        return rows


def _draw(record: dict, result: Any) -> int | None:
    """What a face drew at random, when the method says: FALCO's fake, CIAGAN's identity, AnonyGAN's condition."""
    if getattr(result, "ok", False) and getattr(result, "neighbour", None) is not None:
        return int(result.neighbour)
    if record.get("ciagan_id") is not None:
        return int(record["ciagan_id"])
    index = (record.get("condition") or {}).get("index")
    return None if index is None else int(index)


def after_segment(done: int, total: int) -> None:
    """Called after each finished segment of the anonymize pass (a test hook: an interruption point)."""


def _box_face(rgb: np.ndarray, tf: TrackFace):
    """A stand-in face over ``tf``'s box, for the fallback cover when the landmarks cannot be aligned."""
    from falco.faces.ffhq import AlignedFace

    x0, y0, x1, y1 = tf.box
    quad = np.array([[x0, y0], [x0, y1], [x1, y1], [x1, y0]], dtype=np.float64)
    return AlignedFace(box=tf.box, landmarks=np.asarray(tf.landmarks, dtype=np.float64), quad=quad,
                       image=np.zeros((8, 8, 3), np.uint8))
