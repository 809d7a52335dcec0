"""The batched network pass of ``eval-attributes``: the torch networks over the faces of many photos at once.

The per-photo analysis (:func:`falco.evaluation.collect.collect_run`) calls each network once per
photo with that photo's one to three faces, which leaves a GPU idle. With batching on (the default:
64 crops per call on CUDA, 16 on the CPU, ``--eval-batch-size N``), photos are analysed in chunks:

1. the CPU part of each photo: decoding, the reference boxes, dlib landmarks, pairing;
2. :func:`run_networks`, over every face of the chunk, in batches of ``batch_size`` crops:

   * the recognisers that embed 256-px FFHQ-aligned crops (ArcFace's ``embed_crops``),
   * the FID Inception on the real and anonymized crops (aligned with the real landmarks),
   * the classifiers with a crops-level API (``face_crop`` + ``predict_crops``: FaRL CelebA),
   * MTCNN (the detection rate) over photos of equal size, when it runs on CUDA;

3. the per-photo assembly, unchanged, which finds every one of those values in the cache.

Every value is stored in the :class:`~falco.evaluation.common.FeatureCache` under the key the
per-photo code looks up, with the same ``persist`` spec and the same "first seen" rule (a real
photo's embeddings go to the disk cache, an anonymized photo's stay in memory), so the report is
the one the per-photo path writes, up to the floating-point effect of the batch size on the
networks' outputs. What this pass cannot compute exactly as the per-photo code does (a face too
small to align, a recogniser without a crops API: dlib, SFace, insightface's ONNX) is left out,
and the per-photo code computes it, or fails on it, as before.

Memory is bounded: a chunk holds the decoded photos of at most :data:`CHUNK_FACES` faces (and
:data:`CHUNK_BYTES` of pixels), and a network's crops exist only while its batch fills, at most
``batch_size`` of them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator, Sequence

import numpy as np

from falco.errors import InputError
from falco.evaluation.common import FeatureCache, landmarks_key, recognizer_spec

__all__ = ["CHUNK_BYTES", "CHUNK_FACES", "DEFAULT_BATCH_SIZE", "PhotoFaces", "batch_plan", "mtcnn_batch_boxes",
           "run_networks"]

#: ``--eval-batch-size`` when not given: crops per network call, by device type.
DEFAULT_BATCH_SIZE = {"cuda": 64, "cpu": 16}
#: Faces whose photos a chunk holds (decoded) before the networks run over them.
CHUNK_FACES = 256
#: Decoded bytes (real and anonymized photos) a chunk holds at most, whatever its faces.
CHUNK_BYTES = 512 << 20
#: Pixels MTCNN scans in one batch (its image pyramid lives on the device).
MTCNN_BATCH_PIXELS = 16_000_000


def batch_plan(device: str, batch_size: int | None) -> tuple[bool, int]:
    """Whether to run the batched pass, and its batch size, for ``--device`` and ``--eval-batch-size``.

    ``None`` (the default): batches of 64 on CUDA (the point: per-photo calls of one to three faces
    leave a GPU idle), of 16 on the CPU, where it measured at least as fast as the per-photo path
    (``scripts/bench_eval.py --only-networks``, full-size networks, 1 thread: ArcFace 1.3-1.5x,
    Inception 1.1x, FaRL 0.92-1.05x, all three together 1.07-1.17x in CPU seconds). MTCNN is
    batched on CUDA only. ``0``: the per-photo path on any device. ``N >= 1``: batches of ``N``.

    Raises:
        InputError: A negative or non-integer batch size.
    """
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 0):
        raise InputError(f"--eval-batch-size must be an integer >= 0, got {batch_size!r}")
    cuda = str(device).startswith("cuda")
    if batch_size is None:
        return True, DEFAULT_BATCH_SIZE["cuda" if cuda else "cpu"]
    if batch_size == 0:
        return False, DEFAULT_BATCH_SIZE["cuda" if cuda else "cpu"]
    return True, batch_size


@dataclass
class PhotoFaces:
    """One photo pair after the CPU pass of :func:`~falco.evaluation.collect.collect_run`.

    Attributes:
        rd, ad: Content digests of the real and anonymized photos.
        faces: The paired faces (real and anonymized landmarks set).
        crop_ok: Whether both FID crops of each face exist, when :func:`run_networks` aligned
            them (None: it did not; the assembly aligns them itself).
    """

    source: str
    real_img: np.ndarray
    anon_img: np.ndarray
    rd: str
    ad: str
    faces: list[Any] = field(default_factory=list)
    crop_ok: list[bool] | None = None

    @property
    def nbytes(self) -> int:
        return int(self.real_img.nbytes + self.anon_img.nbytes)


@contextlib.contextmanager
def _batch_size(obj: Any, n: int) -> Iterator[None]:
    """Let a network wrapper with its own ``batch_size`` (ArcFace, FaRL) take ``n`` crops per call."""
    old = getattr(obj, "batch_size", None)
    if not isinstance(old, int) or isinstance(old, bool):
        yield
        return
    try:
        obj.batch_size = max(old, n)
        yield
    finally:
        obj.batch_size = old


class _Batcher:
    """Crops waiting for one network; runs it every ``batch_size`` crops and stores each output."""

    def __init__(self, run: Callable[[list[np.ndarray]], Sequence[Any]], batch_size: int,
                 store: Callable[[Any, Any], None]) -> None:
        self.run, self.batch_size, self.store = run, max(1, int(batch_size)), store
        self.tags: list[Any] = []
        self.crops: list[np.ndarray] = []
        self.batches = 0
        self.count = 0

    def add(self, tag: Any, crop: np.ndarray) -> None:
        self.tags.append(tag)
        self.crops.append(crop)
        if len(self.crops) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.crops:
            return
        out = self.run(self.crops)
        for tag, value in zip(self.tags, out, strict=True):
            self.store(tag, value)
        self.batches += 1
        self.count += len(self.crops)
        self.tags, self.crops = [], []


def _ffhq_crop(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray | None:
    from falco.faces.ffhq import align_face

    try:
        return align_face(image, landmarks, 256).image
    except InputError:  # a face too small to align: left to the per-photo code
        return None


def _ffhq_embedder(rec: Any) -> bool:
    """Whether ``rec.embed(image, lms)`` is ``embed_crops`` of 256-px FFHQ crops (ArcFace)."""
    from falco.faces.recognizers import ArcFaceRecognizer

    return isinstance(rec, ArcFaceRecognizer) and callable(getattr(rec, "embed_crops", None))


def _crop_classifier(clf: Any) -> bool:
    return callable(getattr(clf, "face_crop", None)) and callable(getattr(clf, "predict_crops", None))


def mtcnn_batch_boxes(device: str, images: Sequence[np.ndarray]) -> list[list[tuple[int, int, int, int]]]:
    """MTCNN boxes of photos of one size in one call, as :class:`~falco.evaluation.detection.MtcnnEvalDetector`
    rounds and sorts them. Shape: ``images`` ``N x [H, W, 3]`` uint8, all equal."""
    import torch

    from falco.faces.mtcnn import mtcnn_model

    with torch.no_grad():
        found, _ = mtcnn_model(device).detect(np.stack([np.asarray(i, dtype=np.uint8) for i in images]))
    out = []
    for f in found:
        if f is None:
            out.append([])
            continue
        boxes = [tuple(int(round(float(v))) for v in b) for b in np.asarray(f).reshape(-1, 4)]
        out.append(sorted((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)) for x0, y0, x1, y1 in boxes))
    return out


def _mtcnn_pass(cache: FeatureCache, det: Any, photos: Sequence[PhotoFaces], batch_size: int,
                stats: dict[str, list[int]]) -> None:
    """MTCNN over the chunk's photos, equal sizes together, into the cache (real photos persisted)."""
    groups: dict[tuple[int, ...], list[tuple[Hashable, np.ndarray, str | None]]] = {}
    seen: set[Hashable] = set()
    for ph in photos:
        for digest, image, persist in ((ph.rd, ph.real_img, f"det:{det.spec}"), (ph.ad, ph.anon_img, None)):
            key = ("det", digest, det.spec)
            if key in seen or cache.has(key, persist=persist):
                continue
            seen.add(key)
            groups.setdefault(tuple(image.shape), []).append((key, image, persist))
    for shape, items in groups.items():
        per = max(1, min(batch_size, MTCNN_BATCH_PIXELS // max(1, shape[0] * shape[1])))
        for i in range(0, len(items), per):
            group = items[i:i + per]
            boxes = [det.boxes(group[0][1])] if len(group) == 1 else \
                mtcnn_batch_boxes(det.device, [image for _, image, _ in group])
            for (key, _, persist), value in zip(group, boxes, strict=True):
                cache.put(key, value, persist=persist)
            stats.setdefault("mtcnn", [0, 0])
            stats["mtcnn"][0] += 1
            stats["mtcnn"][1] += len(group)


def run_networks(tools: Any, cache: FeatureCache, photos: Sequence[PhotoFaces], *, batch_size: int,
                 device: str = "cpu", mtcnn: bool | None = None) -> dict[str, list[int]]:
    """Run the torch networks over every face of ``photos`` in batches, into ``cache`` (see the module docstring).

    Args:
        tools: The evaluation's :class:`~falco.evaluation.tools.Tools`.
        photos: A chunk of photo pairs after their CPU pass; ``crop_ok`` is set on those whose
            FID crops were aligned here.
        batch_size: Crops per network call.
        device: Where the Inception runs (the other networks carry their own device).
        mtcnn: Batch MTCNN over equal-size photos (None: when it runs on CUDA).

    Returns:
        ``{network: [calls, crops or photos]}``: what ran (the benchmark and tests read it).
    """
    stats: dict[str, list[int]] = {}
    det = tools.detectors.get("mtcnn")
    if det is not None and (mtcnn if mtcnn is not None else str(getattr(det, "device", "cpu")).startswith("cuda")):
        _mtcnn_pass(cache, det, photos, batch_size, stats)

    queued: set[Hashable] = set()  # keys this pass computes: "in the cache" for the first-seen rule

    def put(tag: tuple[Hashable, str | None], value: Any) -> None:
        cache.put(tag[0], value, persist=tag[1])

    batchers: dict[str, _Batcher] = {}
    recs = {name: rec for name, rec in tools.recognizers.items() if _ffhq_embedder(rec)}
    specs = {name: recognizer_spec(rec) for name, rec in recs.items()}
    for name, rec in recs.items():
        def embed(crops, rec=rec):
            with _batch_size(rec, len(crops)):
                return rec.embed_crops(crops)
        batchers[f"emb:{name}"] = _Batcher(embed, batch_size, put)
    if tools.inception is not None:
        from falco.evaluation.quality import inception_features

        batchers["inception"] = _Batcher(
            lambda crops: inception_features(tools.inception, crops, batch_size=len(crops), device=device),
            batch_size, put)
    clfs = [c for c in tools.classifiers if _crop_classifier(c)]
    # a classifier's labels are cached per photo (one list for its faces): gathered face by face
    labels: dict[Hashable, dict[int, Any]] = {}  # photo key -> face -> labels
    pending: dict[Hashable, int] = {}  # photo key -> faces still to come

    def store_label(tag: tuple[Hashable, int], value: Any) -> None:
        key, fi = tag
        labels.setdefault(key, {})[fi] = value
        pending[key] -= 1
        if pending[key] == 0:  # every face of this photo side: the per-photo value
            got = labels.pop(key)
            del pending[key]
            cache.put(key, [got[i] for i in range(len(got))])

    for clf in clfs:
        def predict(crops, clf=clf):
            with _batch_size(clf, len(crops)):
                return clf.predict_crops(crops)
        batchers[f"attr:{clf.name}"] = _Batcher(predict, batch_size, store_label)

    for ph in photos:
        if not ph.faces:
            continue
        real_lms = [f.real_landmarks for f in ph.faces]
        anon_lms = [f.anon_landmarks for f in ph.faces]
        crops: dict[tuple[str, bytes], np.ndarray | None] = {}  # this photo's FFHQ crops, each aligned once

        def ffhq(side: str, lm: np.ndarray, ph: PhotoFaces = ph,
                 crops: dict[tuple[str, bytes], np.ndarray | None] = crops) -> np.ndarray | None:
            k = (side, landmarks_key(lm))
            if k not in crops:
                crops[k] = _ffhq_crop(ph.real_img if side == "real" else ph.anon_img, lm)
            return crops[k]

        for name, rec in recs.items():
            for side, digest, lms, persist in (("real", ph.rd, real_lms, specs[name]),
                                               ("anon", ph.ad, anon_lms, None)):
                for lm in lms:
                    key = ("emb", rec.name, digest, landmarks_key(lm))
                    if key in queued or cache.has(key, persist=persist):
                        continue
                    crop = ffhq(side, lm)
                    if crop is not None:
                        queued.add(key)
                        batchers[f"emb:{name}"].add((key, persist), crop)
        if tools.inception is not None:  # the faces FID/KID use: both crops, with the real landmarks
            ph.crop_ok = [ffhq("real", lm) is not None and ffhq("anon", lm) is not None for lm in real_lms]
            for side, digest in (("real", ph.rd), ("anon", ph.ad)):
                for lm, ok in zip(real_lms, ph.crop_ok, strict=True):
                    key = ("inception", digest, landmarks_key(lm))
                    if ok and key not in queued and key not in cache:
                        queued.add(key)
                        batchers["inception"].add((key, None), ffhq(side, lm))
        for clf in clfs:
            for digest, image, lms in ((ph.rd, ph.real_img, real_lms), (ph.ad, ph.anon_img, anon_lms)):
                key = ("attr", clf.name, digest, tuple(map(landmarks_key, lms)))
                if key in queued or key in cache:
                    continue
                try:
                    face_crops = [clf.face_crop(image, lm) for lm in lms]
                except (InputError, ValueError, np.linalg.LinAlgError):  # left to the per-photo code
                    continue
                queued.add(key)
                pending[key] = len(face_crops)
                for fi, crop in enumerate(face_crops):
                    batchers[f"attr:{clf.name}"].add((key, fi), crop)
    for name, b in batchers.items():
        b.flush()
        if b.batches:
            stats[name] = [b.batches, b.count]
    return stats
