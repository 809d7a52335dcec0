"""The ``ciagan`` protocol: CIAGAN's (Maximov et al., CVPR 2020) CelebA evaluation, as far as
its code and paper state it.

What dvl-tum/ciagan's code states, and this module follows:

* **Crops.** ``source/process_data.py`` (commit 38d0eac) lines 38-71 cut a 178 x 218 "clr" crop around the eyes
  of the first face dlib's HOG detector finds (``detector(img, 1)``; centre between landmarks
  39 and 42, ``h_r = 5 d``, ``w_r = h_r * 178 / 218``, edge padding, bicubic resize);
  ``source/util_data.py`` (commit 8299540) lines 64-92 (``load_img``, ``flag_augment=False``, ``img_size=128``)
  resize it to 144 x 144 (Lanczos) and keep the central 128 x 128: the images the generator
  and the evaluation see. Photos of 178 x 218 are taken to be "clr" crops already (the shared
  CelebA identities are); 128 x 128 anonymized photos to be test crops already (what
  ``source/test.py`` lines 29-38 writes; line 49 loads without augmentation); any other photo is cropped by the ``process_data.py``
  rule, the anonymized photo at its real photo's window.
* **Identities.** ``util_data.py`` lines 47-58: one folder per identity (``clr/<id>/*.jpg``).

What only the paper states (Sec. 4, Table 1), with our reading of it:

* **Detection**: the share of anonymized crops in which the detector finds a face. dlib's
  detector here is the HOG one with one upsampling, the detector of ``process_data.py``;
  SSH is not available (reported as not computed).
* **Identification**: the share of anonymized crops a recogniser assigns to the original
  identity. CIAGAN trained PNCA and FaceNet classifiers on the real images of 1200
  identities; we have neither, so each recogniser we have (named in the report) assigns a
  crop the identity of its nearest real crop among the other photos (leave-one-out). With few
  identities the chance level (1 / identities) is high; the report states it.
* Where no face is found on a crop, its landmarks are those of its real crop, else the mean
  landmarks of the real crops (all crops are aligned alike), so every crop is identified.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from pathlib import Path
from typing import Any, Callable

import numpy as np

from falco import __version__
from falco.errors import ImageLoadError, InputError
from falco.evaluation.common import LANDMARKS_SPEC, recognizer_spec
from falco.evaluation.common import FeatureCache, image_digest, landmarks_key, progress_bar
from falco.evaluation.detection import get_eval_detector
from falco.evaluation.pairing import list_photo_pairs
from falco.evaluation.protocols import published_for, published_notes
from falco.evaluation.reid import pair_scores, same_person, _scores
from falco.faces.detect import get_detector
from falco.methods.classic import ciagan_test_crop
from falco.run.image_files import load_image

__all__ = ["DETECTOR", "ciagan_crop", "clr_window", "evaluate_ciagan"]

#: dlib's HOG detector with one upsampling, as ``process_data.py`` line 42 runs it.
DETECTOR = "hog:1"
CLR_SHAPE = (218, 178)
CROP = 128


def clr_window(landmarks: np.ndarray) -> tuple[int, int, int, int]:
    """``process_data.py``'s "clr" window ``(x0, y0, x1, y1)`` of a face (lines 49-54)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    c_x, c_y = int((lm[42, 0] + lm[39, 0]) / 2), int((lm[42, 1] + lm[39, 1]) / 2)
    h_r = int((lm[42, 0] - lm[39, 0]) * 5)
    w_r = int(h_r / 218 * 178)
    if h_r < 4 or w_r < 4:
        raise InputError("face too small for CIAGAN's crop")
    return c_x - w_r, c_y - h_r, c_x + w_r, c_y + h_r


def ciagan_crop(image: np.ndarray, window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The 128 x 128 test crop of a photo (see the module docstring for which rule applies).

    Args:
        window: ``clr_window`` of the face, needed for photos that are neither 178 x 218 nor 128 x 128.
    """
    import cv2

    if image.shape[:2] == (CROP, CROP):
        return image
    if image.shape[:2] == CLR_SHAPE:
        return ciagan_test_crop(image)
    if window is None:
        raise InputError("a photo other than a CIAGAN crop needs its face window")
    x0, y0, x1, y1 = window
    h, w = image.shape[:2]
    ys, xs = np.clip(np.arange(y0, y1), 0, h - 1), np.clip(np.arange(x0, x1), 0, w - 1)
    clr = cv2.resize(np.ascontiguousarray(image[ys[:, None], xs[None, :]]), (178, 218), interpolation=cv2.INTER_CUBIC)
    return ciagan_test_crop(clr)


@dataclasses.dataclass
class _Real:
    identity: str | None
    window: tuple[int, int, int, int] | None
    digest: str
    found: bool
    landmarks: np.ndarray | None
    emb: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def _window_of(image: np.ndarray) -> tuple[int, int, int, int] | None:
    """Window of the first face HOG finds on a full photo (``process_data.py``: ``dets[0]``)."""
    if image.shape[:2] in (CLR_SHAPE, (CROP, CROP)):
        return None
    boxes = get_eval_detector(DETECTOR).boxes(image)
    if not boxes:
        raise InputError("no face found to crop as CIAGAN does")
    return clr_window(get_detector("hog").landmarks(image, boxes[0]))


def _analyse(cache: FeatureCache, det, crop: np.ndarray, persist: bool) -> tuple[str, list, np.ndarray | None]:
    digest = image_digest(crop)
    boxes = cache.get(("det", digest, det.spec), lambda: det.boxes(crop), persist=f"det:{det.spec}" if persist else None)
    lm = None
    if boxes:
        box = tuple(int(v) for v in boxes[0])
        lm = cache.get(("lm", digest, box), lambda: get_detector("hog").landmarks(crop, box),
                       persist=LANDMARKS_SPEC if persist else None)
    return digest, boxes, lm


def _embed(cache: FeatureCache, rec, digest: str, crop: np.ndarray, lm: np.ndarray, persist: bool) -> np.ndarray:
    spec = recognizer_spec(rec) if persist else None
    return cache.get(("emb", rec.name, digest, landmarks_key(lm)), lambda: rec.embed(crop, [lm])[0], persist=spec)


def _identity(source: str) -> str | None:
    parts = Path(source).parts
    return parts[0] if len(parts) > 1 else None


def _reals(real_root: Path, sources, tools, cache, det, progress: bool) -> tuple[dict[str, _Real], list[str]]:
    reals: dict[str, _Real] = {}
    problems: list[str] = []
    crops: dict[str, np.ndarray] = {}
    with progress_bar(sources, desc="real crops", unit="photo", enabled=progress) as bar:
        for source in bar:
            try:
                image = load_image(real_root / source)
                window = _window_of(image)
            except (ImageLoadError, InputError) as exc:
                problems.append(f"{source}: {exc}")
                continue
            crop = ciagan_crop(image, window)
            digest, boxes, lm = _analyse(cache, det, crop, True)
            reals[source] = _Real(_identity(source), window, digest, bool(boxes), lm)
            if lm is None:
                crops[source] = crop
            else:
                for name, rec in tools.recognizers.items():
                    reals[source].emb[name] = _embed(cache, rec, digest, crop, lm, True)
    found = [r.landmarks for r in reals.values() if r.landmarks is not None]
    mean_lm = np.mean(found, axis=0) if found else None
    for source, crop in crops.items():  # no face on the real crop: the mean landmarks
        if mean_lm is None:
            continue
        reals[source].landmarks = mean_lm
        for name, rec in tools.recognizers.items():
            reals[source].emb[name] = _embed(cache, rec, reals[source].digest, crop, mean_lm, True)
    return reals, problems


def _identification(rec, probes: list[np.ndarray], sources: list[str], reals: dict[str, _Real],
                    name: str) -> tuple[float | None, int]:
    """Leave-one-out nearest-real-crop identification; ``(rate, identities)``."""
    gallery = [(s, r.identity, r.emb[name]) for s, r in reals.items() if name in r.emb and r.identity is not None]
    ids = sorted({g[1] for g in gallery})
    if len(ids) < 2 or not probes:
        return None, len(ids)
    g_emb = np.stack([g[2] for g in gallery])
    scores = _scores(rec, np.stack(probes), g_emb)
    hits = []
    for i, source in enumerate(sources):
        row = scores[i].copy()
        row[[j for j, g in enumerate(gallery) if g[0] == source]] = -np.inf
        hits.append(gallery[int(np.argmax(row))][1] == reals[source].identity)
    return float(np.mean(hits)), len(ids)


def _run(name: str, anon_root: Path, real_root: Path, reals: dict[str, _Real], tools, cache, det,
         progress: bool) -> tuple[dict[str, Any], list[dict]]:
    pairs = [p for p in list_photo_pairs(real_root, anon_root) if p.source in reals]
    problems: list[str] = []
    mean_lm = np.mean([r.landmarks for r in reals.values() if r.landmarks is not None], axis=0) \
        if any(r.landmarks is not None for r in reals.values()) else None
    found, real_found, rows = 0, 0, []
    probes: dict[str, list[np.ndarray]] = {n: [] for n in tools.recognizers}
    owners: dict[str, list[str]] = {n: [] for n in tools.recognizers}
    with progress_bar(pairs, desc=f"{name}: crops", unit="photo", enabled=progress) as bar:
        for pp in bar:
            real = reals[pp.source]
            if pp.anon is None:
                problems.append(f"{pp.source}: no anonymized photo")
                continue
            try:
                image = load_image(pp.anon)
            except ImageLoadError as exc:
                problems.append(str(exc))
                continue
            if real.window is None and image.shape[:2] not in (CLR_SHAPE, (CROP, CROP)):
                problems.append(f"{pp.source}: anonymized photo is {image.shape[1]}x{image.shape[0]}, expected "
                                "178x218 (a CIAGAN clr crop) or 128x128 (a test crop)")
                continue
            crop = ciagan_crop(image, real.window)
            digest, boxes, lm = _analyse(cache, det, crop, False)
            found += bool(boxes)
            real_found += real.found
            row = {"source": pp.source, "identity": real.identity, "real_face_found": real.found,
                   "anon_face_found": bool(boxes)}
            lm = lm if lm is not None else (real.landmarks if real.landmarks is not None else mean_lm)
            if lm is not None:
                for n, rec in tools.recognizers.items():
                    if n in real.emb:
                        probes[n].append(_embed(cache, rec, digest, crop, lm, False))
                        owners[n].append(pp.source)
            rows.append(row)
    n = len(rows)
    run: dict[str, Any] = {"anon": str(anon_root), "pairing": "ciagan-crop:same relative path"}
    missing = dict(tools.unavailable)
    missing["detection_rate.ssh"] = "SSH detector not available in falco (CIAGAN's second detector)"
    run["detection_rate"] = {"dlib": found / n if n else None}
    if not n:
        missing["detection_rate.dlib"] = "no photo pair"
    run["reid_rate"], run["rank1_identification"] = {}, {}
    details: dict[str, Any] = {"detection": {"dlib": {"crops": n, "faces_found": found,
                                                      "real_crops_with_face": real_found}},
                               "identification": {}}
    for rn, rec in tools.recognizers.items():
        if not probes[rn]:
            run["reid_rate"][rn] = run["rank1_identification"][rn] = None
            missing[f"reid_rate.{rn}"] = missing[f"rank1_identification.{rn}"] = "no crop to compare"
            continue
        reals_emb = np.stack([reals[s].emb[rn] for s in owners[rn]])
        scores = pair_scores(rec, reals_emb, np.stack(probes[rn]))
        run["reid_rate"][rn] = float(same_person(rec, scores).mean())
        rate, ids = _identification(rec, probes[rn], owners[rn], reals, rn)
        run["rank1_identification"][rn] = rate
        details["identification"][rn] = {"identities": ids, "chance": (1.0 / ids) if ids else None,
                                         "crops": len(probes[rn])}
        if rate is None:
            missing[f"rank1_identification.{rn}"] = ("needs at least 2 identity folders (clr/<id>/...) in --real, "
                                                    f"found {ids}")
    run.update(counts={"faces": n, "photos": len(pairs)}, details=details, not_computed=missing, problems=problems)
    method, published = published_for("ciagan", name)
    if published:
        run["published"] = published
    run["published_method"] = method
    return run, rows


def evaluate_ciagan(cfg, *, cache: FeatureCache, tools, echo: Callable[[str], None], names, settings_extra: dict):
    """Evaluate every ``cfg.anon`` folder against ``cfg.real`` under the ciagan protocol.

    Returns the ``report.json`` data and the per-crop rows (``faces.jsonl``).
    """
    real_root = Path(cfg.real)
    det = get_eval_detector(DETECTOR)
    sources = [p.source for p in list_photo_pairs(real_root, real_root)]
    reals, problems = _reals(real_root, sources, tools, cache, det, cfg.progress)
    data: dict[str, Any] = {
        "format": "falco-eval/1", "falco": __version__, "protocol": "ciagan",
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "real": str(real_root), "notes": list(tools.notes),
        "not_installed": {label: list(keys) for label, keys in tools.not_installed.items()}, "runs": {},
    }
    faces: dict[str, list[dict]] = {}
    for name, anon_root in zip(names, cfg.anon, strict=True):
        echo(f"evaluating {name} (ciagan protocol): {anon_root}")
        run, rows = _run(name, Path(anon_root), real_root, reals, tools, cache, det, cfg.progress)
        run["problems"] = problems + run["problems"]
        data["runs"][name] = run
        faces[name] = rows
    methods = {n: r.get("published_method") for n, r in data["runs"].items()}
    data["settings"] = {
        "protocol": "ciagan",
        "detectors": {"dlib": DETECTOR},
        "recognizers": {n: r.describe() for n, r in tools.recognizers.items()},
        **settings_extra,
        "protocol_notes": [
            "Protocol ciagan: each photo becomes CIAGAN's 128 x 128 test crop (dvl-tum/ciagan process_data.py "
            "lines 38-71 and util_data.py lines 64-92); the anonymized photo is cropped like its real photo.",
            f"Detection rate (dlib): share of anonymized crops on which dlib's HOG detector ({DETECTOR}, as "
            "process_data.py runs it) finds at least one face, over all crops (CIAGAN Table 1). SSH: not available.",
            "rank-1 (identification): share of anonymized crops whose nearest real crop among the other photos "
            "(leave-one-out) belongs to the same identity folder; CIAGAN's PNCA/FaceNet classifiers over 1200 "
            "identities are replaced by the recognisers named here, so chance level is 1 / identities "
            "(details.identification). re-ID: share the recogniser calls the same person as their own real crop.",
        ] + [f"Recogniser `{k}`: {r.describe()}." for k, r in tools.recognizers.items()]
        + published_notes("ciagan", methods),
    }
    return data, faces
