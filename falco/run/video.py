"""``falco anonymize`` on videos and image sequences: detect, track, anonymize with one identity per track, encode.

A job reads its frames and writes its output through a :class:`falco.video.sources.FrameSource`: a video file
(segments encoded, then remuxed) or, with ``--sequence``, a folder of numbered frames (each frame written
into the output folder as it is made; a segment's file lists its frames). Nothing else here differs.

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

As for photos, ``--keep``/``--change`` blend each frame after the method and before the guard
(:class:`falco.run.regions.RegionControl`), and ``--keep-identity`` leaves alone the tracks whose face
matches a reference on most of its described frames (:meth:`VideoJob.keep_identity`). A method that raises
(a :class:`~falco.errors.FalcoError`) on one frame's faces costs that frame only: they get the ``--on-fail``
cover and the video's row lists the frame (``failed_frames``); reading or writing errors fail the video.

Under an identity policy that merges tracks (``--merge-tracks``, ``--same-identity-across-videos``;
:mod:`falco.video.policy`), a pass between the two describes each track's face on a few of its
frames (dlib's recogniser) and the tracks are grouped by person before the second pass; each
track's row says which identity it got. The policy of an output folder cannot change once a video
was finished in it (the run stops with an error instead of mixing policies).
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
from falco.faces.recognizers import reference_descriptors
from falco.run.atomic import atomic_write_text
from falco.run.inputs import InputItem
from falco.run.manifest import RunManifest
from falco.run.runner import RunSummary
from falco.run.regions import RegionControl
from falco.run.video_policy import check_policy, open_identity_map
from falco.video.identity import TrackedMethod, video_seed
from falco.video.io import VideoInfo
from falco.video.policy import IdentityMap, bank_fingerprint, cluster_tracks, identity_policy, sample_frames
from falco.video.sources import FrameSource, frame_source
from falco.video.tracking import Detection, Track, link_tracks
from falco.video.tracks import TrackFace, frame_faces

log = logging.getLogger(__name__)

__all__ = ["run_videos", "VideoJob", "EXTEND", "SIGMA"]

#: Frames a track is extended before its first and after its last detection.
EXTEND = 3
#: Temporal smoothing of the landmarks (Gaussian sigma, frames).
SIGMA = 1.0


def run_videos(cfg: AnonymizeConfig, items: list[InputItem], anonymizer: Anonymizer, guard: Any,
               manifest: RunManifest, provenance: dict, summary: RunSummary, *,
               regions: RegionControl | None = None) -> RunSummary:
    """Anonymize every unfinished video (or image sequence: a folder) of ``items``; a failing video is recorded
    and the others go on. ``regions`` (``--keep``/``--change``) blends every frame after the method."""
    if cfg.save_crops:
        log.warning("--save-crops: written for photos only; a video's faces are recorded per track (manifest rows)")
    policy = check_policy(cfg, manifest)
    identity_map = open_identity_map(cfg) if policy == "across-videos" else None
    provenance = {**provenance, "identity_policy": policy}
    finished = manifest.finished_inputs()
    references = reference_descriptors(cfg.keep_identity) if cfg.keep_identity else None
    for item in items:
        if item.key in finished:
            summary.skipped += 1
            continue
        try:
            rows, outputs = VideoJob(cfg, item, anonymizer, guard, manifest, identity_map=identity_map,
                                     regions=regions, references=references).run()
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
            summary.faces += sum(1 for r in tracks if r["status"] != "kept")
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
                 manifest: RunManifest, *, identity_map: IdentityMap | None = None,
                 regions: RegionControl | None = None, references: np.ndarray | None = None) -> None:
        self.cfg, self.item, self.anonymizer, self.guard, self.manifest = cfg, item, anonymizer, guard, manifest
        self.source: FrameSource = frame_source(item.path, cfg.out / item.key, codec=cfg.codec, crf=cfg.crf,
                                                fps=cfg.sequence_fps, quality=cfg.quality, format=cfg.format,
                                                max_pixels=cfg.max_pixels)
        self.regions = regions
        self.references = references
        if cfg.keep_identity and references is None:
            self.references = reference_descriptors(cfg.keep_identity)
        self.kept: dict[int, dict] = {}        # track -> its --keep-identity match (tracks left as they are)
        self.work = cfg.out / ".video" / f"{item.key}.work"
        self.seg = cfg.video_segment
        self.seed = video_seed(cfg.seed, item.key)
        self.policy = identity_policy(cfg.merge_tracks, cfg.same_identity_across_videos)
        self.identity_map = identity_map
        if self.policy == "across-videos" and identity_map is None:
            self.identity_map = open_identity_map(cfg)
        self.keys: dict[int, str] = {}         # track -> identity key (merging policies)
        self.identities: dict[int, dict] = {}  # track -> its identity fields in the manifest row

    # -- the whole video --------------------------------------------------------------------
    def run(self) -> tuple[list[dict], dict]:
        info = self.source.probe()
        self._check_work()
        detections = self.detect_pass(info)
        n = len(detections)
        tracks = link_tracks(detections, max_gap=max(8, 2 * self.cfg.detect_every))
        self.kept = self.keep_identity(info, tracks)
        self.assign_identities(info, [t for t in tracks if t.id not in self.kept])
        per_frame = frame_faces(tracks, n, extend=EXTEND, extend_after=EXTEND + self.cfg.detect_every - 1,
                                sigma=SIGMA)
        segments = self.anonymize_pass(info, per_frame)
        self.source.finish(segments, keep_metadata=self.cfg.keep_metadata)
        rows = self.track_rows(n)
        failed = self.failed_frames(n)
        shutil.rmtree(self.work, ignore_errors=True)
        for folder in self.work.parents:  # the empty .video/ folders it lived in
            if folder == self.cfg.out:
                break
            try:
                folder.rmdir()
            except OSError:
                break
        outputs = {self.source.kind: self.item.key, **self.source.outputs(info)}
        if failed:
            outputs["failed_frames"] = failed
        return rows, outputs

    def _check_work(self) -> None:
        """Keep an interrupted run's segments only if they were made with the same settings."""
        cfg = self.cfg
        settings = {"method": cfg.method, "settings": self.anonymizer.settings(), "seed": cfg.seed,
                    "segment": cfg.video_segment, "detect_every": cfg.detect_every, "detector": str(cfg.detector),
                    "upsample": cfg.upsample, **self.source.settings(), "video_steps": cfg.video_steps,
                    "guard": cfg.guard, "on_fail": cfg.on_fail}
        if self.policy != "track":
            settings["identity_policy"] = self.policy
        if self.regions is not None:
            settings["regions"] = self.regions.record()
        if self.references is not None:
            settings["keep_identity"] = np.round(self.references, 6).tolist()
        text = json.dumps(settings, sort_keys=True, default=str)
        marker = self.work / "settings.json"
        if marker.exists() and marker.read_text() != text:
            log.warning("%s: the unfinished segments were made with other settings: starting over", self.item.path.name)
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True, exist_ok=True)
        if not marker.exists():
            atomic_write_text(marker, text)

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
            for t, rgb, _ in self.source.frames():
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
        return self.work / f"seg_{index:06d}{self.source.segment_suffix}"

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
        known = self.identity_map.fakes(self._bank()) if self.identity_map is not None and self._bank() else {}
        method = TrackedMethod(self.anonymizer, self.seed, video_steps=self.cfg.video_steps, keys=self.keys,
                               fakes=known)
        if done:
            method.load(self._state_path(done - 1))
        self.method = method
        if done < count:
            self._encode(info, per_frame, method, done, count)
        if self.identity_map is not None and self._bank():  # FALCO: the fakes the new identities got
            self.identity_map.record_fakes(self._bank(), method.key_fakes())
            self.identity_map.save()
        return [self._seg_path(i) for i in range(count)]

    def _encode(self, info: VideoInfo, per_frame: list[list[TrackFace]], method: TrackedMethod, first: int,
                count: int) -> None:
        n = len(per_frame)
        bar = self._bar(n, first * self.seg, "anonymize")
        writer = None
        stats: dict = {}
        index = first
        try:
            for t, rgb, pts in self.source.frames():
                if t < first * self.seg or t >= n:
                    continue
                if writer is None:
                    writer = self.source.open_segment(self._seg_path(index), info, t)
                    stats = {"tracks": {}, "missed": 0, "failed": []}
                out = self._frame(rgb, per_frame[t], method, stats, t)
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

    def _bank(self) -> str | None:
        """FALCO: the bank's fingerprint in the identity mapping (None for the other methods)."""
        if not hasattr(self.anonymizer, "process_tracked"):
            return None
        return bank_fingerprint(self.anonymizer.bank)

    # -- identity policy --------------------------------------------------------------------
    def assign_identities(self, info: VideoInfo, tracks: list[Track]) -> None:
        """Each track's identity key and manifest fields under the identity policy (:mod:`falco.video.policy`)."""
        from falco.faces.recognizers import DLIB_THRESHOLD

        self.keys, self.identities = {}, {t.id: {"identity_policy": self.policy} for t in tracks}
        if self.policy == "track" or not tracks:
            return
        descriptors = self.describe_pass(info, tracks)
        clusters = cluster_tracks(tracks, descriptors, DLIB_THRESHOLD)
        if self.policy == "merge-tracks":
            matched = [({"key": f"{self.seed}:p{c.index}"}, None) for c in clusters]
        else:
            matched = self.identity_map.assign(self.item.key, clusters, lambda i: f"{self.seed}:person:{i}")
            self.identity_map.save()  # before any frame is written: a resumed run finds the same identities
        for cluster, (ident, distance) in zip(clusters, matched):
            for track in cluster.tracks:
                self.keys[track] = ident["key"]
                row = self.identities[track]
                row.update(identity_cluster=cluster.index, identity_tracks=list(cluster.tracks),
                           identity_distance=cluster.distances.get(track))
                if "id" in ident:
                    row.update(identity_id=ident["id"], identity_match_distance=distance)

    def describe_pass(self, info: VideoInfo, tracks: list[Track]) -> dict[int, np.ndarray]:
        """dlib descriptors of each track's face on up to ``SAMPLES`` of its detected frames (saved in the work
        folder for a resumed run, removed with it: biometric data)."""
        from falco.faces.recognizers import DlibRecognizer

        path = self.work / "descriptors.json"
        if path.exists():
            return {int(k): np.asarray(v, dtype=np.float64) for k, v in json.loads(path.read_text()).items()}
        wanted: dict[int, list[tuple[int, np.ndarray]]] = {}
        for track in tracks:
            for j in sample_frames(track):
                wanted.setdefault(track.frames[j], []).append((track.id, track.detections[j].landmarks))
        recognizer = DlibRecognizer()
        out: dict[int, list] = {t.id: [] for t in tracks}
        last = max(wanted)
        bar = self._bar(last + 1, 0, "recognise")
        try:
            for t, rgb, _ in self.source.frames():
                if t in wanted:
                    desc = recognizer.embed(rgb, [lm for _, lm in wanted[t]])
                    for (track, _), d in zip(wanted[t], desc):
                        out[track].append(d)
                bar.update(1)
                if t >= last:
                    break
        finally:
            bar.close()
        missing = [t for t, d in out.items() if not d]
        if missing:
            raise InputError(f"{self.item.path.name}: frames of tracks {missing} could not be decoded again to "
                             "recognise their faces")
        rounded = {t: np.round(np.stack(d), 6) for t, d in out.items()}  # what a resumed run reads back
        atomic_write_text(path, json.dumps({str(t): d.tolist() for t, d in rounded.items()}))
        return rounded

    def _frame(self, rgb: np.ndarray, tfs: list[TrackFace], method: TrackedMethod, stats: dict,
               t: int) -> np.ndarray:
        """One frame anonymized, blended (``--keep``/``--change``) and checked; ``stats`` gathers each track's
        provenance.

        Faces of tracks kept by ``--keep-identity`` are left as they are (and the guard leaves them too). If
        the method raises (a :class:`~falco.errors.FalcoError`) on the frame's faces, they get the
        ``--on-fail`` cover (blur when that is ``skip``: a video fails closed), the frame is recorded in
        ``stats['failed']``, and the video goes on.
        """
        from falco.methods.cover import cover_failed, fallback

        cover = self._cover()
        faces, tracks, kinds, kept = [], [], [], []
        out = rgb
        for tf in tfs:
            if tf.track in self.kept:
                row = self._count(stats, tf, tf.kind, tf.box)
                row["status"]["kept"] = row["status"].get("kept", 0) + 1
                try:
                    kept.append(method.face(rgb, tf))
                except InputError:
                    kept.append(_box_face(rgb, tf))
                continue
            try:
                faces.append(method.face(rgb, tf))
            except InputError:  # degenerate landmarks (a face leaving the frame): cover the box
                out = fallback(out, _box_face(rgb, tf), cover)
                continue
            tracks.append(tf.track)
            kinds.append(tf.kind)
        results: list[Any] = []
        records: list[dict] = []
        if faces:
            try:
                results = method.process(faces, tracks)
                out, records = self.anonymizer.apply(out, faces, results)
            except RunAbortedError:
                raise
            except FalcoError as exc:  # this frame's faces only: cover them and go on
                reason = f"{self.cfg.method} failed on frame {t}: {type(exc).__name__}: {exc}"
                log.warning("%s: %s; its %d face(s) covered by %s", self.source.name, reason, len(faces), cover)
                results = [None] * len(faces)
                for face in faces:
                    out, record = cover_failed(out, face, reason, cover)
                    records.append(record)
                stats["failed"].append({"frame": t, "tracks": list(tracks), "reason": reason, "cover": cover})
        redo = (lambda img, i: method.redo(img, faces[i], tracks[i])) if self.anonymizer.can_redo else None
        blended = None
        if self.regions is not None and faces:  # before the guard: it has the last word (as for photos)
            out, blended = self.regions.apply(rgb, out, faces, records)
            redo = self.regions.wrap_redo(redo, rgb, faces, blended) if redo is not None else None
        checked = self.guard.review(rgb, out, faces, redo=redo, kept=kept)
        stats["missed"] += len(checked.missed)
        for i, (face, track, kind) in enumerate(zip(faces, tracks, kinds)):
            row = self._count(stats, tfs[0], kind, face.box, track=track)
            status = records[i].get("status", "done")
            verdict = checked.verdicts[i]["verdict"] if checked.verdicts else None
            if verdict in ("fallback", "unsafe"):
                status = verdict
            row["status"][status] = row["status"].get(status, 0) + 1
            if verdict:
                row["guard"][verdict] = row["guard"].get(verdict, 0) + 1
            if blended is not None and i in blended.applied:
                row["regions"] = row.get("regions", 0) + 1
            if records[i].get("status") == "done" or row.get("method") is None:
                row["method"] = records[i].get("method")
            for value, name in ((_draw(records[i], results[i]), "draws"), (face_key(face), "keys")):
                if value is not None and value not in row[name]:
                    row[name].append(value)
        return checked.photo

    def _cover(self) -> str:
        """The cover of a face the method could not anonymize: ``--on-fail``, or blur for ``skip``."""
        return self.cfg.on_fail if self.cfg.on_fail != "skip" else "blur"

    @staticmethod
    def _count(stats: dict, tf: TrackFace, kind: str, box, *, track: int | None = None) -> dict:
        """The segment's row of ``track`` (default ``tf.track``), with this frame counted."""
        track = tf.track if track is None else track
        row = stats["tracks"].setdefault(str(track), {"first": tf.frame, "count": 0, "kinds": {}, "status": {},
                                                      "guard": {}, "draws": [], "keys": [], "box": list(box)})
        row["last"] = tf.frame
        row["count"] += 1
        row["kinds"][kind] = row["kinds"].get(kind, 0) + 1
        return row

    # -- --keep-identity ----------------------------------------------------------------------
    def keep_identity(self, info: VideoInfo, tracks: list[Track]) -> dict[int, dict]:
        """``--keep-identity``: the tracks whose face matches a reference (dlib, distance < 0.6) on a majority of
        its described frames (:func:`~falco.video.policy.sample_frames`); they are left as they are."""
        from falco.faces.recognizers import DLIB_THRESHOLD

        if self.references is None or not tracks:
            return {}
        descriptors = self.describe_pass(info, tracks)
        kept = {}
        for track in tracks:
            desc = descriptors[track.id]
            dist = np.linalg.norm(desc[:, None] - self.references[None], axis=-1).min(axis=1)
            matched = int((dist < DLIB_THRESHOLD).sum())
            if 2 * matched > len(desc):
                kept[track.id] = {"matched": matched, "described": len(desc),
                                  "distance": round(float(np.median(dist)), 4)}
        return kept

    # -- provenance -------------------------------------------------------------------------
    def failed_frames(self, n: int) -> list[dict]:
        """The frames where the method raised (their faces got the cover), over every segment."""
        return [f for i in range(-(-n // self.seg)) for f in json.loads(self._stats_path(i).read_text()).get("failed", [])]

    def track_rows(self, n: int) -> list[dict]:
        """One manifest row per track (merged over the segments), then one for the guard's own finds."""
        merged: dict[int, dict] = {}
        missed = 0
        failed: dict[int, list[int]] = {}
        for i in range(-(-n // self.seg)):
            stats = json.loads(self._stats_path(i).read_text())
            missed += stats["missed"]
            for f in stats.get("failed", []):
                for track in f["tracks"]:
                    failed.setdefault(track, []).append(f["frame"])
            for key, row in stats["tracks"].items():
                m = merged.setdefault(int(key), {"first": row["first"], "count": 0, "kinds": Counter(),
                                                 "status": Counter(), "guard": Counter(), "draws": [], "keys": [],
                                                 "box": row["box"], "regions": 0, "method": None})
                m["last"] = row["last"]
                m["count"] += row["count"]
                m["regions"] += row.get("regions", 0)
                for name in ("kinds", "status", "guard"):
                    m[name].update(row[name])
                for name in ("draws", "keys"):
                    m[name] += [v for v in row[name] if v not in m[name]]
                m["method"] = row.get("method") or m["method"]
        rows = []
        for track in sorted(merged):
            m = merged[track]
            if track in self.kept:  # --keep-identity: left as it is in every frame
                k = self.kept[track]
                rows.append({"track": track, "status": "kept", "method": "none", "box": m["box"],
                             "first_frame": m["first"], "last_frame": m["last"], "frames": m["count"],
                             "detected": m["kinds"].get("detected", 0),
                             "interpolated": m["kinds"].get("interpolated", 0),
                             "extended": m["kinds"].get("extended", 0), "keep_identity": k,
                             "reason": f"matches --keep-identity on {k['matched']} of {k['described']} described "
                                       "frames", "video_seed": self.seed, "identity_policy": self.policy,
                             "guard_failing": False})
                continue
            worst = next((s for s in ("unsafe", "failed", "fallback") if m["status"].get(s)), "done")
            row = {"track": track, "status": worst, "method": m["method"], "box": m["box"],
                   "first_frame": m["first"], "last_frame": m["last"], "frames": m["count"],
                   "detected": m["kinds"].get("detected", 0), "interpolated": m["kinds"].get("interpolated", 0),
                   "extended": m["kinds"].get("extended", 0), "frame_status": dict(m["status"]),
                   "guard_verdicts": dict(m["guard"]), "identity_keys": m["keys"], "draws": m["draws"],
                   "video_seed": self.seed, **self.identities.get(track, {"identity_policy": self.policy})}
            if m["guard"]:  # the privacy guard's worst verdict over the track's frames (its summary line reads it)
                verdict = next(v for v in ("unsafe", "fallback", "redone", "safe", *m["guard"]) if m["guard"].get(v))
                row["guard"] = {"verdict": verdict}
            if self.method.falco and m["draws"]:
                row["neighbour"] = m["draws"][0]
            if m["regions"]:
                row["regions"] = {**self.regions.record(), "frames": m["regions"]}
            if track in failed:
                row["failed_frames"] = failed[track]
            if worst != "done":
                row["reason"] = f"{sum(m['status'].get(s, 0) for s in ('unsafe', 'failed', 'fallback'))} frame(s) " \
                                f"not anonymized by {self.cfg.method} (covered by the fallback where possible)"
                if track in failed:
                    row["reason"] += f"; {self.cfg.method} raised on frame(s) {failed[track]}"
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
