"""Temporal metrics of an anonymized video against its real one.

``tOF`` and ``tLP`` as TecoGAN defines them (Chu et al., "Learning temporal coherence via
self-supervision for GAN-based video generation", 2020): for each pair of consecutive frames,
the difference between the real video's and the anonymized video's

* optical flow (OpenCV Farneback): ``tOF = mean_t ‖OF(r_{t-1}, r_t) − OF(a_{t-1}, a_t)‖₁``, the L1
  norm averaged over pixels (flow in pixels);
* LPIPS distance between the two frames: ``tLP = mean_t |LP(r_{t-1}, r_t) − LP(a_{t-1}, a_t)|``
  (falco's LPIPS, whose two files come from the model set; else ``"not computed: <reason>"``).

Lower is better: 0 when the anonymized video changes from frame to frame exactly as the real one.
``identity_consistency`` measures flicker of identity: the real video's faces are tracked, and
within each track the anonymized faces' dlib descriptors (read at the real landmarks) should
stay one person.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from falco.errors import InputError
from falco.video.io import iter_frames, probe

__all__ = ["identity_consistency", "temporal_metrics"]


def _flow(prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
    import cv2

    a = cv2.cvtColor(prev, cv2.COLOR_RGB2GRAY)
    b = cv2.cvtColor(cur, cv2.COLOR_RGB2GRAY)
    return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def _lpips(models: str | Path | None) -> tuple[Any, str | None]:
    """falco's LPIPS (AlexNet v0.1, :mod:`falco.models.lpips`) on two uint8 frames, or (None, why not)."""
    import torch

    from falco.latent.images import dequantize
    from falco.models.lpips import load_lpips

    try:
        net = load_lpips(models).eval()
    except Exception as exc:  # its two files are not installed (offline machines)
        return None, f"not computed: LPIPS could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0]})"

    def distance(x: np.ndarray, y: np.ndarray) -> float:
        t = [dequantize(torch.from_numpy(np.ascontiguousarray(v)).permute(2, 0, 1)[None]) for v in (x, y)]
        with torch.no_grad():
            return float(net(*t)[0])

    return distance, None


def temporal_metrics(real: str | Path, anon: str | Path, *, max_frames: int | None = None,
                     models: str | Path | None = None) -> dict:
    """``tOF`` and ``tLP`` (see the module docstring) of ``anon`` against ``real``, with the frame count.

    Raises:
        InputError: Unreadable videos, or videos of different sizes or frame counts.
    """
    a, b = probe(real), probe(anon)
    if (a.width, a.height, a.frames) != (b.width, b.height, b.frames):
        raise InputError(f"{Path(anon).name}: {b.width}x{b.height}, {b.frames} frames; the real video "
                         f"{Path(real).name} has {a.width}x{a.height}, {a.frames} frames")
    lp, why = _lpips(models)
    tof, tlp = [], []
    prev = None
    for (t, r, _), (_, g, _) in zip(iter_frames(real), iter_frames(anon)):
        if max_frames is not None and t >= max_frames:
            break
        if prev is not None:
            fr, fg = _flow(prev[0], r), _flow(prev[1], g)
            tof.append(float(np.abs(fr - fg).sum(axis=-1).mean()))
            if lp is not None:
                tlp.append(abs(lp(prev[0], r) - lp(prev[1], g)))
        prev = (r, g)
    return {"frames": a.frames, "pairs": len(tof), "tOF": float(np.mean(tof)) if tof else None,
            "tLP": (float(np.mean(tlp)) if tlp else None) if lp is not None else why}


def identity_consistency(real: str | Path, anon: str | Path, *, every: int = 2, detector: str = "hog") -> dict:
    """How stable the anonymized identity is within each track of the real video.

    Faces are detected in every ``every``-th real frame and linked into tracks; the anonymized
    frames are embedded with dlib at the real landmarks. Per track: the mean distance of its
    descriptors to their mean, and the share of consecutive samples dlib calls the same person
    (distance < 0.6). Returns the means over tracks, and the per-track figures.
    """
    from falco.faces.pipeline import detect_and_align
    from falco.faces.recognizers import DlibRecognizer
    from falco.video.tracking import Detection, link_tracks

    rec = DlibRecognizer()
    detections: list = []
    descriptors: dict[tuple[int, int], np.ndarray] = {}
    for (t, r, _), (_, g, _) in zip(iter_frames(real), iter_frames(anon)):
        if t % every:
            detections.append(None)
            continue
        faces = detect_and_align(r, size=64, detector=detector)
        detections.append([Detection(f.box, np.asarray(f.landmarks), f.score) for f in faces])
        if faces:
            for i, d in enumerate(rec.embed(g, [f.landmarks for f in faces])):
                descriptors[(t, i)] = np.asarray(d)
    tracks = link_tracks(detections, max_gap=2 * every)
    per_track = []
    for tr in tracks:
        desc = []
        for t, det in zip(tr.frames, tr.detections):
            i = next(i for i, d in enumerate(detections[t]) if d is det)
            desc.append(descriptors[(t, i)])
        if len(desc) < 2:
            continue
        arr = np.stack(desc)
        spread = float(np.linalg.norm(arr - arr.mean(axis=0), axis=1).mean())
        steps = np.linalg.norm(np.diff(arr, axis=0), axis=1)
        per_track.append({"track": tr.id, "samples": len(desc), "spread": spread,
                          "same_person": float((steps < rec.threshold).mean())})
    if not per_track:
        return {"tracks": 0, "spread": "not computed: no face tracked over two samples", "same_person": None}
    return {"tracks": len(per_track), "spread": float(np.mean([p["spread"] for p in per_track])),
            "same_person": float(np.mean([p["same_person"] for p in per_track])), "per_track": per_track}
