"""Videos in ``falco eval-attributes``: temporal, quality, privacy and identity figures per video.

Inputs: a pair of files (``--real clip.mp4 --anon out/clip.mp4``; ``--anon`` may also be the run's
output folder holding ``clip.mp4``), or folders, where each video under ``--real`` pairs with the
video at the same relative path under ``--anon`` (or the same stem with another video suffix);
photos in the same folders go through the photo metrics as before.

One streaming pass decodes both videos frame by frame (memory: two frame pairs, whatever the
length) and measures on every ``every``-th frame ``t`` (``--video-every``, default 2):

* ``tOF`` and ``tLP`` on the consecutive pair ``(t-1, t)`` (:mod:`falco.evaluation.temporal`:
  TecoGAN's definitions and units, flow difference in pixels, LPIPS difference x 100); with
  ``--video-every 1`` they are TecoGAN's figures over every frame;
* ``psnr`` (dB, luma, TecoGAN's) and ``lpips`` (AlexNet v0.1) between the real and anonymized frame;
* ``reid_rate.<recognizer>``: share of the real faces the reference detector finds in frame ``t``
  whose anonymized face, read at the real landmarks (an attacker who knows where the faces were),
  the recognizer still calls the same person, with its threshold;
* ``detection_rate.<detector>``: share of the faces a detector finds in the real frame that it
  finds again in the anonymized frame (IoU >= ``detection_iou``, one-to-one);
* ``identity.<recognizer>``: the sampled real faces are linked into tracks
  (:func:`falco.video.tracking.link_tracks`); per track with two samples or more, ``spread`` is
  the mean distance of its embeddings to their mean (Euclidean for dlib, on the scale of its
  0.6 threshold; ``1 - cosine`` to the mean direction for cosine recognizers), for the anonymized
  faces (``spread_anon``, low: one stable new identity) beside the real ones (``spread_real``);
  ``consistency_anon`` / ``consistency_real`` is the share of consecutive samples of a track the
  recognizer calls one person (in [0, 1]; 1: the identity holds through the track).

A run's ``overall`` figures pool its videos: tOF, tLP, PSNR and LPIPS are means over all measured
frames (TecoGAN's "total avg"), rates are over all faces, identity figures means over all tracks.
A value that cannot be computed is ``null`` with its reason under ``not_computed``. A pair that
cannot be compared (no anonymized video, another frame count or size, an unreadable file) gives
a one-line problem naming the file, and the other videos go on.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from falco.errors import InputError
from falco.evaluation.detection import DetectionCount, count_detected
from falco.evaluation.temporal import choose_flow, crop_8x8, flow, flow_difference, lpips_pairs, psnr_y
from falco.faces.recognizers import pair_scores, same_person
from falco.run.inputs import IMAGE_SUFFIXES
from falco.video.io import VIDEO_SUFFIXES, is_video, iter_frames, probe

__all__ = ["DEFAULT_EVERY", "VideoPair", "check_every", "evaluate_videos", "has_photos", "list_video_pairs"]

#: ``--video-every`` default: every other frame (half the cost; tOF/tLP still on consecutive frames).
DEFAULT_EVERY = 2


@dataclass(frozen=True)
class VideoPair:
    """A real video and its anonymized counterpart (None when there is none)."""

    source: str
    real: Path
    anon: Path | None


def has_photos(path: str | Path) -> bool:
    """Whether ``path`` is a photo, or a folder holding one (at any depth)."""
    p = Path(path)
    if p.is_file():
        return p.suffix.lower() in IMAGE_SUFFIXES
    return p.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() for f in p.rglob("*"))


def _find_anon_video(anon_root: Path, source: str) -> Path | None:
    path = anon_root / source
    if path.is_file():
        return path
    for suffix in sorted(VIDEO_SUFFIXES):
        alt = path.with_suffix(suffix)
        if alt.is_file():
            return alt
    return None


def list_video_pairs(real: str | Path, anon: str | Path) -> list[VideoPair]:
    """The videos to compare: a pair of files, or the videos of two folders paired by relative path.

    Returns:
        One pair per real video (``anon`` None where the anonymized one is missing); empty
        when ``real`` is neither a video nor a folder holding one.

    Raises:
        InputError: ``real`` is a folder of videos and ``anon`` a file.
    """
    real, anon = Path(real), Path(anon)
    if real.is_file():
        if not is_video(real):
            return []
        target = anon if anon.is_file() else (_find_anon_video(anon, real.name) if anon.is_dir() else None)
        return [VideoPair(real.name, real, target)]
    if not real.is_dir():
        return []
    keys = sorted(p.relative_to(real).as_posix() for p in real.rglob("*") if p.is_file() and is_video(p))
    if keys and anon.is_file():
        raise InputError(f"--anon {str(anon)!r} is a file but --real {str(real)!r} is a folder: "
                         "give two videos or two folders")
    return [VideoPair(k, real / k, _find_anon_video(anon, k) if anon.is_dir() else None) for k in keys]


# ----------------------------------------------------------------------------- measuring
@dataclass
class _Acc:
    """What the sampled frames of one video (or of a run's videos, merged) measured."""

    frames: int = 0
    sampled: int = 0
    tof: list[float] = field(default_factory=list)
    tlp: list[float] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    lpips: list[float] = field(default_factory=list)
    faces: int = 0
    reid: dict[str, int] = field(default_factory=dict)  # recognizer -> faces still the same person
    detection: dict[str, DetectionCount] = field(default_factory=dict)
    tracks: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # recognizer -> per-track figures

    def merge(self, other: _Acc) -> None:
        self.frames += other.frames
        self.sampled += other.sampled
        for name in ("tof", "tlp", "psnr", "lpips"):
            getattr(self, name).extend(getattr(other, name))
        self.faces += other.faces
        for k, v in other.reid.items():
            self.reid[k] = self.reid.get(k, 0) + v
        for k, v in other.detection.items():
            self.detection[k] = self.detection.get(k, DetectionCount()) + v
        for k, v in other.tracks.items():
            self.tracks.setdefault(k, []).extend(v)


def _spread(recognizer: Any, emb: np.ndarray) -> float:
    """Mean distance of a track's embeddings to their mean (see the module docstring). Shape: ``[N, D]``."""
    if recognizer.metric == "euclidean":
        return float(np.linalg.norm(emb - emb.mean(axis=0), axis=1).mean())
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    mean = unit.mean(axis=0)
    mean = mean / max(float(np.linalg.norm(mean)), 1e-12)
    return float((1.0 - unit @ mean).mean())


def _consistency(recognizer: Any, emb: np.ndarray) -> float:
    """Share of consecutive samples the recognizer calls one person. Shape: ``[N, D]``, N >= 2."""
    return float(same_person(recognizer, pair_scores(recognizer, emb[:-1], emb[1:])).mean())


def _lockstep(pair: VideoPair):
    """Both videos' frames side by side; InputError naming the file when one ends first."""
    done = object()
    real, anon = iter_frames(pair.real), iter_frames(pair.anon)
    while True:
        r, a = next(real, done), next(anon, done)
        if r is done and a is done:
            return
        if r is done or a is done:
            t = a[0] if r is done else r[0]
            longer = "anonymized" if r is done else "real"
            raise InputError(f"{pair.source}: {pair.anon} and the real video {pair.real} differ in frame count "
                             f"(the {longer} one goes on at frame {t}); not evaluated")
        yield r[0], r[1], a[1]


def _check_pair(pair: VideoPair) -> int:
    """The frame count of a comparable pair; InputError (one line, naming the file) otherwise."""
    if pair.anon is None:
        raise InputError(f"{pair.source}: no anonymized video for {pair.real}; not evaluated")
    a, b = probe(pair.real), probe(pair.anon)
    if (a.width, a.height, a.frames) != (b.width, b.height, b.frames):
        raise InputError(f"{pair.source}: {pair.anon} has {b.frames} frames of {b.width}x{b.height}, the real video "
                         f"{pair.real} {a.frames} frames of {a.width}x{a.height}; not evaluated")
    return a.frames


def _measure(pair: VideoPair, tools: Any, *, every: int, reference_detector: str, upsample: int,
             detection_iou: float, lpips: Any, bar: Any, flow_of: Callable = flow) -> _Acc:
    from falco.faces.pipeline import detect_and_align
    from falco.video.tracking import Detection, link_tracks

    acc = _Acc(reid={n: 0 for n in tools.recognizers},
               detection={n: DetectionCount() for n in tools.detectors})
    detections: list[list[Detection] | None] = []
    embeddings: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {}  # id(detection) -> rec -> (real, anon)
    prev: tuple[np.ndarray, np.ndarray] | None = None
    for t, real, anon in _lockstep(pair):
        acc.frames += 1
        bar.update(1)
        if t % every:
            detections.append(None)
            prev = (real, anon)
            continue
        acc.sampled += 1
        if prev is not None:
            acc.tof.append(flow_difference(flow_of(prev[0], real), flow_of(prev[1], anon)))
        psnr = psnr_y(real, anon)
        acc.psnr.append(psnr)
        if lpips is not None:
            cr, ca = crop_8x8(real), crop_8x8(anon)
            if prev is not None:
                pr, pa = crop_8x8(prev[0]), crop_8x8(prev[1])
                d = lpips_pairs(lpips, [pr, pa, cr], [cr, ca, ca])
                acc.tlp.append(100.0 * abs(d[0] - d[1]))
                acc.lpips.append(d[2])
            else:
                acc.lpips.append(lpips_pairs(lpips, [cr], [ca])[0])
        faces = detect_and_align(real, size=64, detector=reference_detector, upsample=upsample)
        dets = [Detection(tuple(int(v) for v in f.box), np.asarray(f.landmarks, dtype=np.float64), f.score)
                for f in faces]
        detections.append(dets)
        acc.faces += len(dets)
        if dets:
            lms = [d.landmarks for d in dets]
            for name, rec in tools.recognizers.items():
                er, ea = np.asarray(rec.embed(real, lms)), np.asarray(rec.embed(anon, lms))
                acc.reid[name] += int(same_person(rec, pair_scores(rec, er, ea)).sum())
                for d, x, y in zip(dets, er, ea, strict=True):
                    embeddings.setdefault(id(d), {})[name] = (x, y)
        for name, det in tools.detectors.items():
            acc.detection[name] = acc.detection[name] + count_detected(det.boxes(real), det.boxes(anon), detection_iou)
        prev = (real, anon)
    for track in link_tracks(detections, max_gap=2 * every):
        if len(track.detections) < 2:
            continue
        for name, rec in tools.recognizers.items():
            real_emb = np.stack([embeddings[id(d)][name][0] for d in track.detections])
            anon_emb = np.stack([embeddings[id(d)][name][1] for d in track.detections])
            acc.tracks.setdefault(name, []).append({
                "samples": len(track.detections), "spread_anon": _spread(rec, anon_emb),
                "spread_real": _spread(rec, real_emb), "consistency_anon": _consistency(rec, anon_emb),
                "consistency_real": _consistency(rec, real_emb)})
    return acc


def _summary(acc: _Acc, tools: Any, lpips_reason: str | None, missing: dict[str, str]) -> dict[str, Any]:
    """The JSON figures of an accumulator; every ``None`` gets its reason in ``not_computed``."""
    out: dict[str, Any] = {"frames": acc.frames, "sampled_frames": acc.sampled, "frame_pairs": len(acc.tof)}
    why: dict[str, str] = dict(missing)
    out["tOF"] = float(np.mean(acc.tof)) if acc.tof else None
    if not acc.tof:
        why["tOF"] = "fewer than two frames: no consecutive pair was measured"
    if lpips_reason is not None:
        out["tLP"] = out["lpips"] = None
        why["tLP"] = why["lpips"] = lpips_reason
    else:
        out["tLP"] = float(np.mean(acc.tlp)) if acc.tlp else None
        out["lpips"] = float(np.mean(acc.lpips)) if acc.lpips else None
        if not acc.tlp:
            why["tLP"] = why["tOF"] if "tOF" in why else "no consecutive pair was measured"
    identical = sum(1 for v in acc.psnr if math.isinf(v))
    if acc.psnr and not identical:
        out["psnr"] = float(np.mean(acc.psnr))
    else:
        out["psnr"] = None
        why["psnr"] = (f"infinite: {identical} of {len(acc.psnr)} measured frames are identical to the real ones "
                       "(PSNR is a mean over frames)" if identical else "no frame measured")
    out["identical_frames"] = identical
    out["faces"] = acc.faces
    out["reid_rate"] = {}
    for name in tools.recognizers:
        out["reid_rate"][name] = acc.reid[name] / acc.faces if acc.faces else None
        if not acc.faces:
            why[f"reid_rate.{name}"] = "the reference detector found no face in the sampled real frames"
    out["detection_rate"] = {}
    out["detection_counts"] = {}
    for name, count in acc.detection.items():
        out["detection_rate"][name] = count.rate
        out["detection_counts"][name] = {"real": count.real, "detected": count.detected, "anon": count.anon}
        if count.rate is None:
            why[f"detection_rate.{name}"] = f"{name} found no face in the sampled real frames"
    out["identity"] = {}
    for name in tools.recognizers:
        rows = acc.tracks.get(name, [])
        if not rows:
            why[f"identity.{name}"] = "no face was tracked over two sampled frames"
            continue
        out["identity"][name] = {"tracks": len(rows), "samples": int(sum(r["samples"] for r in rows)),
                                 **{k: float(np.mean([r[k] for r in rows]))
                                    for k in ("spread_anon", "spread_real", "consistency_anon", "consistency_real")}}
    out["not_computed"] = why
    return out


def _lpips_reason(tools: Any) -> tuple[str | None, bool]:
    """Why LPIPS (and so tLP) is not computed, and whether only because it is not installed."""
    from falco.evaluation.regions import LPIPS_REASON

    if tools.lpips is not None:
        return None, False
    if tools.lpips_problem == LPIPS_REASON:
        return "LPIPS is not installed (`falco models download lpips-alexnet lpips-alex-lin`)", True
    return tools.lpips_problem or "LPIPS is not available", False


def published_video() -> dict[str, Any]:
    """The published temporal figures (``published.json``'s ``video`` entry)."""
    from falco.evaluation.protocols import load_published

    return load_published().get("video", {})


def check_every(every: object) -> int:
    """Validate ``--video-every`` (an integer >= 1). Raises InputError."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise InputError(f"--video-every must be an integer >= 1, got {every!r}")
    return every


def evaluate_videos(runs: dict[str, list[VideoPair]], tools: Any, *, every: int = DEFAULT_EVERY,
                    reference_detector: str = "hog", upsample: int = 1, detection_iou: float = 0.5,
                    progress: bool = True, echo: Callable[[str], None] = print,
                    flow_of: tuple[Callable, str] | None = None) -> dict[str, Any]:
    """The report's ``video`` section: per run, per video and overall (see the module docstring).

    Args:
        runs: Per run name, its video pairs (:func:`list_video_pairs`).
        tools: The evaluation's :class:`~falco.evaluation.tools.Tools` (recognizers, detectors, LPIPS).
        every: Measure every ``every``-th frame (``--video-every``).
        flow_of: The optical flow of tOF and its description (:func:`~falco.evaluation.temporal.choose_flow`;
            None: Farneback).
        echo: Where the one-line problems go as they happen (they are also in the section).

    Raises:
        InputError: ``every`` is not an integer >= 1.
    """
    from tqdm.auto import tqdm

    check_every(every)
    flow_fn, flow_name = flow_of or choose_flow("farneback")
    lpips_reason, not_installed = _lpips_reason(tools)
    lpips = tools.lpips.eval() if tools.lpips is not None else None
    missing = {k: v for k, v in tools.unavailable.items() if k.startswith(("reid_rate.", "detection_rate."))}
    missing.update({f"identity.{k[len('reid_rate.'):]}": v for k, v in missing.items() if k.startswith("reid_rate.")})
    section: dict[str, Any] = {
        "settings": {
            "every": every,
            "tOF": "TecoGAN: mean over pixels of the length of the difference of the real and anonymized videos' "
                   "optical flows between frames t-1 and t, on TecoGAN's crop (sides cut to a multiple of 32 at "
                   "least 16 px shorter); pixels, lower is steadier",
            "flow": flow_name,
            "tLP": "TecoGAN: 100 x |LPIPS(real t-1, real t) - LPIPS(anon t-1, anon t)| on the crop; lower is steadier",
            "psnr": "TecoGAN: dB on the BT.601 luma of the crop, mean over frames",
            "lpips": "LPIPS AlexNet v0.1 between the real and anonymized frame (crop), mean over frames",
            "frames": f"one frame in {every} is measured, t = 0, {every}, {2 * every}, ... (tOF/tLP on the "
                      "consecutive pair t-1, t; every frame is decoded)",
            "reference_detector": f"{reference_detector}:{upsample}",
            "detection_iou": detection_iou,
            "recognizers": {n: r.describe() for n, r in tools.recognizers.items()},
            "detectors": {n: getattr(d, "spec", n) for n, d in tools.detectors.items()},
            "tracks": f"falco.video.tracking.link_tracks over the sampled frames (max gap {2 * every} frames)",
        },
        "published": published_video(),
        "not_installed": {"video lpips": ["video.lpips", "video.tLP"]} if not_installed else {},
        "runs": {},
    }
    for name, pairs in runs.items():
        problems: list[str] = []
        good: list[tuple[VideoPair, int]] = []
        for pair in pairs:
            try:
                good.append((pair, _check_pair(pair)))
            except InputError as exc:
                problems.append(str(exc))
                echo(f"{name}: {exc}")
        total, videos = _Acc(), {}
        with tqdm(total=sum(n for _, n in good), desc=f"{name}: videos", unit="frame", disable=not progress,
                  file=sys.stderr, dynamic_ncols=True) as bar:
            for pair, _ in good:
                try:
                    acc = _measure(pair, tools, every=every, reference_detector=reference_detector, upsample=upsample,
                                   detection_iou=detection_iou, lpips=lpips, bar=bar, flow_of=flow_fn)
                except InputError as exc:
                    problems.append(str(exc))
                    echo(f"{name}: {exc}")
                    continue
                videos[pair.source] = {"real": str(pair.real), "anon": str(pair.anon),
                                       **_summary(acc, tools, lpips_reason, missing)}
                total.merge(acc)
        overall = _summary(total, tools, lpips_reason, missing) if videos else None
        section["runs"][name] = {"videos": videos, "overall": overall,
                                 "counts": {"videos": len(pairs), "evaluated": len(videos)}, "problems": problems}
    return section
