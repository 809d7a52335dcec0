"""Analyse the photo pairs of one run: detections, paired faces, landmarks, embeddings, labels, features.

Photos are streamed: one real/anonymized pair is decoded at a time and dropped once analysed.
What the metrics need is kept per face and is small (boxes, landmarks, embeddings, labels,
Inception features); aligned crops are kept only for the few faces the HTML example grid can
show (see :func:`example_candidates`).

Everything per image is memoised in a :class:`~falco.evaluation.common.FeatureCache` under the
image's content digest, so the real photos are analysed once for all runs and an anonymized
photo identical to its real photo costs nothing.

With ``batch_size`` (the default on CUDA, ``--eval-batch-size``), photos go in chunks: the CPU part
of each photo first (boxes, landmarks, pairing), then the torch networks over all the chunk's faces
in batches (:mod:`falco.evaluation.batched`, into the same cache), then the per-photo assembly,
which finds the networks' outputs there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from falco.errors import ImageLoadError, InputError
from falco.evaluation.batched import CHUNK_BYTES, CHUNK_FACES, PhotoFaces, run_networks
from falco.evaluation.common import (LANDMARKS_SPEC, FeatureCache, image_digest, landmarks_key, progress_bar,
                                     recognizer_spec)
from falco.evaluation.detection import DetectionCount, count_detected, get_eval_detector, match_boxes
from falco.evaluation.pairing import FacePair, ManifestFace, PhotoPair
from falco.evaluation.regions import part_changes
from falco.evaluation.tools import Tools
from falco.faces.detect import get_detector
from falco.faces.ffhq import align_face
from falco.run.image_files import load_image

__all__ = ["RunData", "collect_run"]


@dataclass
class RunData:
    """What the metrics of one run are computed from (lists are aligned with ``faces``).

    Attributes:
        crop_ok: Whether both 256-px aligned crops of a face exist (a face too small to align
            has none); FID/KID use the faces where it is true.
        real_feats, anon_feats: Inception pool3 features of those crops (None when there is
            no crop or no Inception).
        example_crops: ``face position -> (real crop, anon crop)``, only for the faces the
            example grid may pick.
    """

    faces: list[FacePair] = field(default_factory=list)
    detections: dict[str, DetectionCount] = field(default_factory=dict)
    real_emb: dict[str, list[np.ndarray]] = field(default_factory=dict)
    anon_emb: dict[str, list[np.ndarray]] = field(default_factory=dict)
    real_labels: list[dict[str, str]] = field(default_factory=list)
    anon_labels: list[dict[str, str]] = field(default_factory=list)
    crop_ok: list[bool] = field(default_factory=list)
    real_feats: list[np.ndarray | None] = field(default_factory=list)
    anon_feats: list[np.ndarray | None] = field(default_factory=list)
    example_crops: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    part_change: list[dict[str, float | None]] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _landmarks(cache: FeatureCache, digest: str, image: np.ndarray, box, persist: bool = False) -> np.ndarray:
    box = tuple(int(v) for v in box)
    return cache.get(("lm", digest, box), lambda: get_detector("hog").landmarks(image, box),
                     persist=LANDMARKS_SPEC if persist else None)


def _embed(cache: FeatureCache, rec, digest: str, image: np.ndarray,
           landmarks: Sequence[np.ndarray], persist: bool = False) -> list[np.ndarray]:
    spec = recognizer_spec(rec) if persist else None
    keys = [("emb", rec.name, digest, landmarks_key(lm)) for lm in landmarks]
    todo = [i for i, k in enumerate(keys) if not cache.has(k, persist=spec)]
    if todo:  # one batched call per photo for the faces not seen before
        for i, e in zip(todo, rec.embed(image, [landmarks[i] for i in todo]), strict=True):
            cache.put(keys[i], e, persist=spec)
    return [cache.get(k, lambda: None) for k in keys]


def _crop(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray | None:
    """The 256-px FFHQ-aligned crop (not cached: cheap, and 192 KiB a face)."""
    try:
        return align_face(image, landmarks, 256).image
    except InputError:  # a face too small to align
        return None


def _labels(cache: FeatureCache, clf, digest: str, image: np.ndarray, lms: list[np.ndarray]) -> list[dict]:
    key = ("attr", clf.name, digest, tuple(map(landmarks_key, lms)))
    return cache.get(key, lambda: clf.predict_faces(image, lms))


class _Examples:
    """Which faces the example grid of :func:`~falco.evaluation.summary.pick_examples` can pick.

    The grid takes, photo after photo, the first face with both crops, then the second, ...
    until it has ``k``; so only the first ``k`` such faces of the first ``k`` photos that
    have one can ever be shown. Their crops are the only ones kept.
    """

    def __init__(self, k: int) -> None:
        self.k = max(0, int(k))
        self.photos = 0

    def candidates(self, ok: Sequence[bool]) -> list[int]:
        """Positions (in the photo's face list) whose crops to keep."""
        if self.photos >= self.k or not any(ok):
            return []
        self.photos += 1
        return [i for i, good in enumerate(ok) if good][: self.k]


def collect_run(tools: Tools, cache: FeatureCache, photo_pairs: Sequence[PhotoPair],
                manifest_faces: dict[str, list[ManifestFace]] | None, *, reference_detector: str = "hog",
                upsample: int = 1, detection_iou: float = 0.5, pair_iou: float = 0.3, examples: int = 8,
                device: str = "cpu", progress: bool = False, desc: str = "photos", batch_size: int = 0,
                chunk_faces: int = CHUNK_FACES, chunk_bytes: int = CHUNK_BYTES,
                batch_stats: dict[str, list[int]] | None = None) -> RunData:
    """Analyse every photo pair of a run (see :mod:`falco.evaluation.pairing` for how faces pair).

    Args:
        examples: Faces the example grid shows (their crops are kept; 0: none).
        progress: Show a progress bar on stderr (one step per photo pair).
        desc: The bar's label.
        batch_size: 0: each network once per photo; N: the batched pass
            (:mod:`falco.evaluation.batched`), N crops per network call.
        chunk_faces, chunk_bytes: The batched pass holds the decoded photos of up to this many
            faces (and bytes) at a time.
        batch_stats: Filled with what the batched pass ran (``{network: [calls, items]}``).
    """
    data = RunData(detections={n: DetectionCount() for n in tools.detectors},
                   real_emb={n: [] for n in tools.recognizers}, anon_emb={n: [] for n in tools.recognizers},
                   counts={"photos": len(photo_pairs), "photos_missing": 0, "photos_unreadable": 0})
    ref = get_eval_detector(reference_detector, upsample)
    picker = _Examples(examples)
    chunk: list[PhotoFaces] = []
    held = [0, 0]  # the chunk's faces and decoded bytes

    def flush() -> None:
        stats = run_networks(tools, cache, chunk, batch_size=batch_size, device=device)
        if batch_stats is not None:
            for name, (calls, items) in stats.items():
                total = batch_stats.setdefault(name, [0, 0])
                total[0] += calls
                total[1] += items
        for ph in chunk:
            _assemble_photo(data, tools, cache, ph, picker, detection_iou=detection_iou, device=device)
        chunk.clear()
        held[:] = [0, 0]

    with progress_bar(photo_pairs, desc=desc, unit="photo", enabled=progress) as bar:
        for pp in bar:
            bar.set_postfix_str(f"{pp.source}, {len(data.faces)} faces")
            if pp.anon is None:
                data.counts["photos_missing"] += 1
                data.problems.append(f"{pp.source}: no anonymized photo")
                continue
            try:
                real_img, anon_img = load_image(pp.real), load_image(pp.anon)
            except ImageLoadError as exc:
                data.counts["photos_unreadable"] += 1
                data.problems.append(str(exc))
                continue
            if real_img.shape != anon_img.shape:
                data.counts["photos_unreadable"] += 1
                data.problems.append(f"{pp.source}: anonymized photo is {anon_img.shape[1]}x{anon_img.shape[0]}, "
                                     f"real is {real_img.shape[1]}x{real_img.shape[0]}")
                continue
            ph = _photo_faces(tools, cache, ref, pp.source, real_img, anon_img, manifest_faces, pair_iou=pair_iou)
            del real_img, anon_img
            if batch_size <= 0:  # one decoded pair at a time
                _assemble_photo(data, tools, cache, ph, picker, detection_iou=detection_iou, device=device)
                continue
            chunk.append(ph)  # the chunk's decoded pairs, until its networks have run
            held[0] += len(ph.faces)
            held[1] += ph.nbytes
            if held[0] >= chunk_faces or held[1] >= chunk_bytes:
                flush()
        if chunk:
            flush()
        bar.set_postfix_str(f"{len(data.faces)} faces")
    return data


def _boxes(cache: FeatureCache, det, digest: str, image: np.ndarray, persist: bool = False) -> list:
    return cache.get(("det", digest, det.spec), lambda: det.boxes(image),
                     persist=f"det:{det.spec}" if persist else None)


def _inception(cache: FeatureCache, model, digest: str, image: np.ndarray, crops: list[np.ndarray | None],
               lms: list[np.ndarray], ok: list[bool], device: str) -> list[np.ndarray | None]:
    """Inception features of one photo's crops where ``ok`` (batched, cached by image and landmarks).

    A crop left None where ``ok`` is aligned here, if its features are not in the cache yet.
    """
    from falco.evaluation.quality import inception_features

    keys = [("inception", digest, landmarks_key(lm)) for lm in lms]
    todo = [i for i, (k, o) in enumerate(zip(keys, ok, strict=True)) if o and k not in cache]
    if todo:
        batch = [crops[i] if crops[i] is not None else _crop(image, lms[i]) for i in todo]
        for i, f in zip(todo, inception_features(model, batch, device=device), strict=True):
            cache.put(keys[i], f)
    return [cache.get(k, lambda: None) if o else None for k, o in zip(keys, ok, strict=True)]


def _photo_faces(tools: Tools, cache: FeatureCache, ref, source: str, real_img: np.ndarray, anon_img: np.ndarray,
                 manifest_faces, *, pair_iou: float) -> PhotoFaces:
    """The CPU part of one photo pair: digests, the real faces and their landmarks, the paired anonymized faces."""
    rd, ad = image_digest(real_img), image_digest(anon_img)
    ph = PhotoFaces(source, real_img, anon_img, rd, ad)
    if manifest_faces is not None:
        faces = [FacePair(source, f.face_index, f.box, f.landmarks, status=f.status, regions=f.regions)
                 for f in manifest_faces.get(source, [])]
    else:
        faces = [FacePair(source, i, b, _landmarks(cache, rd, real_img, b, True))
                 for i, b in enumerate(_boxes(cache, ref, rd, real_img, True))]
    if not faces:
        return ph
    anon_boxes = _boxes(cache, ref, ad, anon_img)
    matched = {i: j for i, j, _ in match_boxes([f.real_box for f in faces], anon_boxes, pair_iou)}
    for i, face in enumerate(faces):
        face.anon_box = anon_boxes[matched[i]] if i in matched else None
        # an undetected face is still looked at where the real one was (worst case for privacy)
        face.anon_landmarks = _landmarks(cache, ad, anon_img, face.anon_box or face.real_box)
        if manifest_faces is None:
            face.status = "paired" if face.anon_box is not None else "unmatched"
    ph.faces = faces
    return ph


def _assemble_photo(data: RunData, tools: Tools, cache: FeatureCache, ph: PhotoFaces, picker: _Examples, *,
                    detection_iou: float, device: str) -> None:
    """Everything else of one photo pair into ``data`` (the networks' outputs from the cache when batched)."""
    rd, ad, real_img, anon_img, faces = ph.rd, ph.ad, ph.real_img, ph.anon_img, ph.faces
    for name, det in tools.detectors.items():
        data.detections[name] += count_detected(_boxes(cache, det, rd, real_img, True),
                                                _boxes(cache, det, ad, anon_img), detection_iou)
    if not faces:
        return
    real_lms = [f.real_landmarks for f in faces]
    anon_lms = [f.anon_landmarks for f in faces]
    for name, rec in tools.recognizers.items():
        data.real_emb[name] += _embed(cache, rec, rd, real_img, real_lms, True)
        data.anon_emb[name] += _embed(cache, rec, ad, anon_img, anon_lms)
    real_labels: list[dict[str, str]] = [{} for _ in faces]
    anon_labels: list[dict[str, str]] = [{} for _ in faces]
    for clf in tools.classifiers:
        for merged, labels in ((real_labels, _labels(cache, clf, rd, real_img, real_lms)),
                               (anon_labels, _labels(cache, clf, ad, anon_img, anon_lms))):
            for target, lab in zip(merged, labels, strict=True):
                target.update(lab)
    data.real_labels += real_labels
    data.anon_labels += anon_labels
    key = ("parts", rd, ad, tools.parser is not None, tools.lpips is not None, tuple(map(landmarks_key, real_lms)))
    data.part_change += cache.get(key, lambda: part_changes(real_img, anon_img, real_lms, parser=tools.parser,
                                                            lpips=tools.lpips))
    # FID crops and the example grid: the same region of both photos (the real face's alignment)
    if ph.crop_ok is None:
        real_crops: list[np.ndarray | None] = [_crop(real_img, lm) for lm in real_lms]
        anon_crops: list[np.ndarray | None] = [_crop(anon_img, lm) for lm in real_lms]
        ok = [r is not None and a is not None for r, a in zip(real_crops, anon_crops, strict=True)]
    else:  # the batched pass aligned them (and ran the Inception): align again only the examples
        ok = list(ph.crop_ok)
        real_crops, anon_crops = [None] * len(faces), [None] * len(faces)
    shown = picker.candidates(ok)
    for i in shown:
        if real_crops[i] is None:
            real_crops[i], anon_crops[i] = _crop(real_img, real_lms[i]), _crop(anon_img, real_lms[i])
    if tools.inception is not None:  # only the faces FID/KID use: both crops exist
        data.real_feats += _inception(cache, tools.inception, rd, real_img, real_crops, real_lms, ok, device)
        data.anon_feats += _inception(cache, tools.inception, ad, anon_img, anon_crops, real_lms, ok, device)
    else:
        data.real_feats += [None] * len(faces)
        data.anon_feats += [None] * len(faces)
    start = len(data.faces)
    for i in shown:
        data.example_crops[start + i] = (real_crops[i], anon_crops[i])
    data.crop_ok += ok
    data.faces += faces
