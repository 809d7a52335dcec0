"""Temporal metrics of an anonymized video against its real one.

``tOF`` and ``tLP`` as TecoGAN defines them (Chu et al., "Learning temporal coherence via
self-supervision for GAN-based video generation", 2020; thunil/TecoGAN ``metrics.py``): for each
pair of consecutive frames ``(t-1, t)``, the difference between the real video's and the
anonymized video's

* optical flow (OpenCV Farneback on grey frames, TecoGAN's parameters ``0.5, 3, 15, 3, 5, 1.2, 0``):
  ``tOF = mean_t mean_px ‖OF(r_{t-1}, r_t) − OF(a_{t-1}, a_t)‖₂`` (the per-pixel length of the
  flow difference, in pixels; TecoGAN's code says "l1" but takes this Euclidean norm), over the
  flow cropped by :func:`crop_8x8`;
* LPIPS distance between the two frames: ``tLP = 100 · mean_t |LP(r_{t-1}, r_t) − LP(a_{t-1}, a_t)|``
  (TecoGAN's ×100, on :func:`crop_8x8` frames; falco's LPIPS, whose two files come from the model
  set; else ``"not computed: <reason>"``).

Lower is better: 0 when the anonymized video changes from frame to frame exactly as the real one.
Per frame, TecoGAN also reports PSNR on the luma (:func:`psnr_y`, BT.601 Y of the cropped frames)
and LPIPS between the real and anonymized frames. TecoGAN skips the first and last two frames of
each clip (``cutfr = 2``, a super-resolution boundary effect); falco keeps every frame.
``identity_consistency`` measures flicker of identity: the real video's faces are tracked, and
within each track the anonymized faces' dlib descriptors (read at the real landmarks) should
stay one person. ``falco eval-attributes`` runs all of these on videos (:mod:`falco.evaluation.video`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from falco.errors import InputError
from falco.video.io import iter_frames, probe

__all__ = ["FARNEBACK", "FLOWS", "check_flow", "choose_flow", "crop_8x8", "flow", "flow_difference", "identity_consistency",
           "lpips_pairs", "psnr_y", "temporal_metrics"]

#: TecoGAN's Farneback parameters: pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags.
FARNEBACK = (0.5, 3, 15, 3, 5, 1.2, 0)


def crop_8x8(image: np.ndarray) -> np.ndarray:
    """TecoGAN's centre crop: each side cut to a multiple of 32 at least 16 px shorter (``metrics.py``).

    Shape: ``[H, W, ...]`` -> ``[h, w, ...]``; an image under 48 px a side is kept whole.
    """
    def span(n: int) -> slice:
        m = (n // 32) * 32
        while m > n - 16:
            m -= 32
        return slice((n - m) // 2, (n - m) // 2 + m) if m > 0 else slice(0, n)

    return image[span(image.shape[0]), span(image.shape[1])]


def flow(prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Farneback optical flow from ``prev`` to ``cur`` (RGB uint8). Shape: ``[H, W, 3]`` -> ``[H, W, 2]``."""
    import cv2

    a = cv2.cvtColor(prev, cv2.COLOR_RGB2GRAY)
    b = cv2.cvtColor(cur, cv2.COLOR_RGB2GRAY)
    return cv2.calcOpticalFlowFarneback(a, b, None, *FARNEBACK)


#: ``--flow`` choices: RAFT when its weights are installed (``auto``), or one of the two.
FLOWS = ("auto", "farneback", "raft")


def check_flow(choice: object) -> str:
    """Validate a ``--flow`` choice (one of :data:`FLOWS`). Raises InputError naming the choices."""
    if choice not in FLOWS:
        raise InputError(f"--flow must be one of {', '.join(FLOWS)}, got {choice!r}")
    return str(choice)


def choose_flow(choice: str = "auto", models: Any = None, device: str = "cpu") -> tuple[Any, str]:
    """The optical flow of tOF: ``(flow function, description)``.

    ``raft``: RAFT-small from the model set (:func:`falco.models.raft.load_raft`); ``farneback``:
    :func:`flow`; ``auto``: RAFT when ``raft-small`` is installed, else Farneback (the description
    says so, with the command that installs RAFT).

    Raises:
        InputError: An unknown choice.
        ModelNotFoundError, ChecksumError, CheckpointError: ``raft`` without usable weights.
    """
    from falco.errors import ModelNotFoundError

    check_flow(choice)
    farneback = f"OpenCV Farneback {FARNEBACK} on grey frames"
    if choice == "farneback":
        return flow, farneback
    from falco.models.raft import load_raft

    try:
        raft = load_raft(models, device=device)
    except ModelNotFoundError:
        if choice == "raft":
            raise
        return flow, f"{farneback} (RAFT is not installed: falco models download raft-small)"
    return raft, f"RAFT-small (torchvision, {raft.updates} refinements) on RGB frames"


def flow_difference(real_flow: np.ndarray, anon_flow: np.ndarray) -> float:
    """One frame's tOF term: mean over the :func:`crop_8x8` pixels of ``‖real_flow − anon_flow‖₂``."""
    d = crop_8x8(real_flow) - crop_8x8(anon_flow)
    return float(np.sqrt((d * d).sum(axis=-1)).mean())


def psnr_y(real: np.ndarray, anon: np.ndarray) -> float:
    """TecoGAN's PSNR: on the BT.601 luma (16-235) of the :func:`crop_8x8` frames, peak 255; ``inf`` when equal."""
    weights = np.array([0.256788235294118, 0.504129411764706, 0.097905882352941])
    y = [crop_8x8(v).astype(np.float64) @ weights + 16.0 for v in (real, anon)]
    mse = float(np.mean((y[0] - y[1]) ** 2))
    return float("inf") if mse == 0.0 else float(20.0 * np.log10(255.0 / np.sqrt(mse)))


def lpips_pairs(net: Any, first: list[np.ndarray], second: list[np.ndarray]) -> list[float]:
    """LPIPS distance of each ``(first[i], second[i])``: uint8 RGB frames of one size, one batch on ``net``'s device."""
    import torch

    from falco.latent.images import dequantize

    device = next(net.parameters()).device
    t = [dequantize(torch.from_numpy(np.stack(v)).permute(0, 3, 1, 2)).to(device) for v in (first, second)]
    with torch.no_grad():
        return [float(d) for d in net(*t).reshape(-1).cpu()]


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
            tof.append(flow_difference(flow(prev[0], r), flow(prev[1], g)))
            if lp is not None:
                tlp.append(100.0 * abs(lp(crop_8x8(prev[0]), crop_8x8(r)) - lp(crop_8x8(prev[1]), crop_8x8(g))))
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
