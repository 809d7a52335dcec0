"""Run every metric on one real folder and one or more anonymized folders.

Typical use::

    from falco.evaluation import EvalConfig, evaluate, write_report

    report = evaluate(EvalConfig(real=Path("photos"), anon=(Path("out/falco"), Path("out/blur"))))
    report.runs["falco"]["reid_rate"]["dlib"]
    write_report(report, Path("report"))

Optional parts are used when available and otherwise reported under ``not_computed`` with
the reason: MTCNN (``facenet-pytorch``), ArcFace, the FaRL CelebA head, the FID Inception.
``report.json``'s ``not_installed`` names those missing only because their package or weights
are not installed (``{"arcface re-id": ["reid_rate.arcface", ...]}``), so that the command can
say so in one line.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from falco import __version__
from falco.errors import InputError
from falco.evaluation.attributes import load_labels_csv
from falco.evaluation.collect import collect_run
from falco.evaluation.common import LANDMARKS_SPEC, FeatureCache, image_digest
from falco.evaluation.detection import CNN_MAX_PIXELS, get_eval_detector
from falco.evaluation.pairing import list_photo_pairs, manifest_path, read_manifest_faces, read_manifest_sources
from falco.evaluation.summary import summarise_run
from falco.evaluation.temporal import check_flow
from falco.evaluation.tools import Tools, build_tools
from falco.evaluation.video import check_every
from falco.video.io import is_video

log = logging.getLogger(__name__)

__all__ = ["EvalConfig", "EvaluationReport", "evaluate"]

REPORT_FORMAT = "falco-eval/1"


@dataclass(frozen=True)
class EvalConfig:
    """Settings of ``falco eval-attributes`` (recorded in ``report.json``).

    Attributes:
        real: Folder of the original photos.
        anon: Folders of anonymized photos (same relative paths), one per compared run.
        names: Run names, one per ``anon`` (default: the folder names).
        pairs: Run manifests to pair faces by: none, one per ``anon``, or one for all.
        labels: CSV of user attribute labels (see :func:`~falco.evaluation.attributes.load_labels_csv`).
        detectors: Detection-rate detectors (``hog``, ``cnn``, ``cnn:0``, ``mtcnn``). The default
            runs the CNN without upsampling (``cnn:0``): the MMOD CNN finds faces from about
            80 px on its own, and each upsampling quadruples its time and memory on a CPU (``cnn``
            alone takes ``upsample``).
        recognizers: ``dlib``, ``arcface``, ``sface`` and/or ``insightface`` (insightface's ArcFace ONNX).
        classifiers: ``landmarks`` and/or ``farl-celeba``.
        reference_detector: Detector that finds the real faces when there is no manifest.
        upsample: dlib upsampling for the reference detector and bare dlib detector names.
        detection_iou: IoU at which a detection on the anonymized photo counts as the same face.
        pair_iou: IoU at which an anonymized detection is paired with a real face.
        fid: Compute FID/KID when the Inception weights are installed.
        examples: Face pairs per run in the HTML example grid (0: none).
        models: Model set directory (``--models``), for ArcFace, FaRL head and Inception.
        device: ``cpu`` or ``cuda[:N]`` for the torch networks.
        progress: Progress bars on stderr (per run: one step per photo pair, then one per metric).
        protocol: ``falco`` (this module's metrics), ``ciagan`` or ``deepprivacy`` (the papers'
            setups, :mod:`falco.evaluation.protocols`).
        disk_cache: Folder of the on-disk cache of the real photos' detections, landmarks and
            embeddings (:mod:`falco.evaluation.disk_cache`); None: memory only.
        workers: Processes that run the dlib detectors ahead of the metrics (1: none).
        eval_batch_size: Crops per call of the torch networks in the batched pass over many photos
            (:mod:`falco.evaluation.batched`). None: 64 on CUDA, 16 on the CPU; 0: each network
            once per photo (the per-photo path).
        video_every: For videos (``real`` a video file, or videos in the folders; see
            :mod:`falco.evaluation.video`): measure every ``video_every``-th frame.
        video_flow: tOF's optical flow (:func:`falco.evaluation.temporal.choose_flow`).
    """

    real: Path
    anon: tuple[Path, ...]
    names: tuple[str, ...] = ()
    pairs: tuple[Path, ...] = ()
    labels: Path | None = None
    detectors: tuple[str, ...] = ("hog", "cnn:0", "mtcnn")
    recognizers: tuple[str, ...] = ("dlib", "arcface")
    classifiers: tuple[str, ...] = ("landmarks", "farl-celeba")
    reference_detector: str = "hog"
    upsample: int = 1
    detection_iou: float = 0.5
    pair_iou: float = 0.3
    fid: bool = True
    examples: int = 8
    models: Path | None = None
    device: str = "cpu"
    progress: bool = True
    protocol: str = "falco"
    disk_cache: Path | None = None
    workers: int = 1
    eval_batch_size: int | None = None  # batched network pass (falco.evaluation.batched); None: by device
    video_every: int = 2  # videos (falco.evaluation.video): measure every N-th frame
    video_flow: str = "auto"  # videos: tOF's optical flow, auto (RAFT when installed), farneback or raft


@dataclass
class EvaluationReport:
    """What :func:`evaluate` returns: ``data`` is ``report.json``; ``examples`` the crops to show."""

    data: dict[str, Any]
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    faces: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def runs(self) -> dict[str, dict[str, Any]]:
        return self.data["runs"]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def _run_names(cfg: EvalConfig) -> list[str]:
    if cfg.names and len(cfg.names) != len(cfg.anon):
        raise InputError(f"--name given {len(cfg.names)} times for {len(cfg.anon)} --anon folders")
    names = list(cfg.names) if cfg.names else [Path(a).resolve().name or "anon" for a in cfg.anon]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    if len(set(out)) != len(out):
        raise InputError(f"run names must be unique, got {out}")
    return out


def _run_pairs(cfg: EvalConfig) -> list[Path | None]:
    if not cfg.pairs:
        return [None] * len(cfg.anon)
    if len(cfg.pairs) == 1:
        return [cfg.pairs[0]] * len(cfg.anon)
    if len(cfg.pairs) != len(cfg.anon):
        raise InputError(f"--pairs given {len(cfg.pairs)} times for {len(cfg.anon)} --anon folders "
                         "(give it once for all, or once per --anon)")
    return list(cfg.pairs)


def evaluate(cfg: EvalConfig, *, cache: FeatureCache | None = None,
             echo: Callable[[str], None] | None = None) -> EvaluationReport:
    """Measure privacy (detection, re-identification) and utility (attributes, pose, quality).

    Args:
        cfg: What to compare and how.
        cache: Share one between calls to reuse the analysis of identical photos.
        echo: Progress messages (default: the ``falco.evaluation`` logger).

    Raises:
        InputError: Bad folders, options, manifest or labels file.
    """
    from falco.models.zoo import resolve_device

    from falco.evaluation.protocols import check_protocol

    say = echo or log.info
    check_protocol(cfg.protocol)
    if isinstance(cfg.workers, bool) or not isinstance(cfg.workers, int) or cfg.workers < 1:
        raise InputError(f"--workers must be an integer >= 1, got {cfg.workers!r}")
    if not cfg.anon:
        raise InputError("at least one --anon folder is needed")
    real_root = Path(cfg.real)
    from falco.evaluation.video import has_photos, list_video_pairs

    if not real_root.is_dir() and not (real_root.is_file() and is_video(real_root)):
        raise InputError(f"--real {str(real_root)!r} is not a folder or a video")
    check_every(cfg.video_every)
    check_flow(cfg.video_flow)
    cfg = dataclasses.replace(cfg, device=str(resolve_device(cfg.device)))
    from falco.evaluation.batched import batch_plan

    batched, batch_size = batch_plan(cfg.device, cfg.eval_batch_size)
    names, pairs = _run_names(cfg), _run_pairs(cfg)
    if cfg.protocol != "falco" and (cfg.labels is not None or cfg.pairs):
        raise InputError(f"--labels and --pairs belong to the falco protocol, not to --protocol {cfg.protocol}")
    cache = _with_disk(cache, cfg.disk_cache)
    video_runs = {n: list_video_pairs(real_root, a) for n, a in zip(names, cfg.anon)}
    video_runs = {n: v for n, v in video_runs.items() if v}
    if video_runs and cfg.protocol == "ciagan":
        raise InputError("--protocol ciagan evaluates photos only; evaluate videos with --protocol falco")
    photos = not video_runs or has_photos(real_root)  # a folder without photo or video fails as before
    if cfg.protocol == "ciagan":
        return _ciagan(cfg, cache, say, names)
    if cfg.protocol == "deepprivacy":
        cfg = dataclasses.replace(cfg, recognizers=(), classifiers=(), fid=False, detection_iou=0.5)
    labels = load_labels_csv(cfg.labels) if cfg.labels else None
    tools = build_tools(detectors=cfg.detectors, recognizers=cfg.recognizers, classifiers=cfg.classifiers,
                        fid=cfg.fid, upsample=cfg.upsample, models=cfg.models, device=cfg.device)
    report = EvaluationReport({
        "format": REPORT_FORMAT,
        "falco": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "real": str(real_root),
        "settings": _settings(cfg, tools),
        "notes": list(tools.notes),
        "not_installed": {label: list(keys) for label, keys in tools.not_installed.items()},
        "runs": {},
    })
    run_pairs = [_pairs(real_root, Path(anon_root), manifest) for anon_root, manifest in zip(cfg.anon, pairs)] \
        if photos else []
    if cfg.workers > 1:
        _prefetch_detections(cache, tools, [pp for p, _, _ in run_pairs for pp in p], workers=cfg.workers,
                            reference=cfg.reference_detector, upsample=cfg.upsample, with_landmarks=True,
                            progress=cfg.progress)
    photo_runs = zip(names, cfg.anon, pairs, run_pairs, strict=True) if photos else ()
    for name, anon_root, manifest, (photo_pairs, manifest_faces, extra) in photo_runs:
        say(f"evaluating {name}: {anon_root}")
        data = collect_run(tools, cache, photo_pairs, manifest_faces, reference_detector=cfg.reference_detector,
                           upsample=cfg.upsample, detection_iou=cfg.detection_iou, pair_iou=cfg.pair_iou,
                           examples=cfg.examples, device=cfg.device, progress=cfg.progress, desc=f"{name}: photos",
                           batch_size=batch_size if batched else 0)
        data.counts.update(extra)
        run, examples, faces = summarise_run(data, tools, cache, labels=labels, device=cfg.device,
                                             examples=cfg.examples, progress=cfg.progress, desc=f"{name}: metrics")
        pairing = (f"manifest:{manifest_path(manifest)}" if manifest is not None else
                   f"box-iou:{cfg.reference_detector}:{cfg.upsample}>={cfg.pair_iou}")
        report.data["runs"][name] = {"anon": str(anon_root), "pairing": pairing, **run}
        report.examples[name] = examples
        report.faces[name] = faces
    if video_runs:
        from falco.evaluation.temporal import choose_flow
        from falco.evaluation.video import evaluate_videos

        say(f"evaluating videos: {sum(len(v) for v in video_runs.values())} pair(s)")
        video = evaluate_videos(video_runs, tools, every=cfg.video_every, reference_detector=cfg.reference_detector,
                                upsample=cfg.upsample, detection_iou=cfg.detection_iou, progress=cfg.progress,
                                echo=say, flow_of=choose_flow(cfg.video_flow, cfg.models, cfg.device))
        report.data["not_installed"].update(video.pop("not_installed"))
        report.data["video"] = video
    if cfg.protocol == "deepprivacy":
        _deepprivacy_notes(report)
    return report


def _with_disk(cache: FeatureCache | None, folder: Path | None) -> FeatureCache:
    """The feature cache to use, backed by ``folder`` on disk when one is given."""
    from falco.evaluation.disk_cache import DiskCache

    cache = cache if cache is not None else FeatureCache()
    if folder is not None and cache.disk is None:
        cache.disk = DiskCache(folder)
    return cache


def _ciagan(cfg: EvalConfig, cache: FeatureCache, say, names: list[str]) -> EvaluationReport:
    from falco.evaluation.protocols.ciagan import DETECTOR, evaluate_ciagan

    if tuple(cfg.detectors) != EvalConfig.detectors:
        raise InputError(f"--detectors {','.join(cfg.detectors)}: --protocol ciagan detects with dlib's HOG "
                         f"({DETECTOR}) on the 128-px crops, as CIAGAN's code does; leave --detectors out")
    if cfg.workers > 1:
        log.warning("--workers %d: not used by --protocol ciagan (its HOG runs on 128-px crops, in this process)",
                    cfg.workers)
    tools = build_tools(detectors=(), recognizers=cfg.recognizers, classifiers=(), fid=False, upsample=cfg.upsample,
                        models=cfg.models, device=cfg.device)
    for key in ("fid", "kid"):  # not part of the protocol, rather than "disabled"
        tools.unavailable.pop(key, None)
    data, faces = evaluate_ciagan(cfg, cache=cache, tools=tools, echo=say, names=names,
                                  settings_extra={"models": str(cfg.models) if cfg.models else None,
                                                  "device": cfg.device})
    return EvaluationReport(data, examples={}, faces=faces)


def _deepprivacy_notes(report: EvaluationReport) -> None:
    from falco.evaluation.protocols import published_for, published_notes

    report.data["protocol"] = "deepprivacy"
    report.data["notes"] = [
        "Protocol deepprivacy: whole photos; detection only (DeepPrivacy defines no identification or attribute "
        "metric); a real face counts as found again when the same detector returns a box at IoU >= 0.5 (WIDER "
        "FACE's criterion, hukkelas/DeepPrivacy deep_privacy/inference/anonymize_wider.py lines 9-61 read the "
        "WIDER boxes it is scored against). Baselines: `--blur-preset deepprivacy-heavy|deepprivacy-gaussian`, "
        "`--pixelate-preset deepprivacy-8x8|deepprivacy-16x16` (deep_privacy/inference/blur.py lines 16-73).",
        *published_notes("deepprivacy", {}), *report.data.get("notes", [])]
    for name, run in report.runs.items():
        method, published = published_for("deepprivacy", name)
        if published:
            run["published"] = published


def _pairs(real_root: Path, anon_root: Path, manifest: Path | None):
    """Photo pairs, manifest faces by source (None without a manifest) and extra counts."""
    if manifest is None:
        return list_photo_pairs(real_root, anon_root), None, {}
    rows, skipped = read_manifest_faces(manifest)
    by_source: dict[str, list] = {}
    for f in rows:
        by_source.setdefault(f.source, []).append(f)
    inputs = read_manifest_sources(manifest)
    sources = sorted(s for s in set(by_source) | set(inputs) if not is_video(s))  # videos: falco.evaluation.video
    photo_pairs = list_photo_pairs(real_root, anon_root, sources, {k: v for k, v in inputs.items() if v})
    return photo_pairs, by_source, {"manifest_faces_without_geometry": skipped}


def _settings(cfg: EvalConfig, tools: Tools) -> dict[str, Any]:
    return {
        "detectors": {n: getattr(d, "spec", n) for n, d in tools.detectors.items()},
        "cnn_scan": (f"photos over {CNN_MAX_PIXELS / 1e6:g} megapixels after upsampling are scanned in overlapping "
                     "tiles plus a half-scale pass, merged by non-maximum suppression"),
        "reference_detector": f"{cfg.reference_detector}:{cfg.upsample}",
        "detection_iou": cfg.detection_iou,
        "pair_iou": cfg.pair_iou,
        "recognizers": {n: r.describe() for n, r in tools.recognizers.items()},
        "classifiers": [c.name for c in tools.classifiers],
        "landmark_nme": "mean 68-point distance / real outer inter-ocular distance (points 36-45)",
        "attribute_labels": {"landmarks": "yaw/pitch |angle| > 15 deg, roll > 10 deg, eye aspect ratio >= 0.2 "
                                          "open, inner-lip gap / mouth width >= 0.1 open"},
        "fid": "pytorch-fid Inception pool3 on 256-px FFHQ-aligned crops (aligned with the real landmarks)",
        "labels": str(cfg.labels) if cfg.labels else None,
        "models": str(cfg.models) if cfg.models else None,
        "device": cfg.device,
        **_batch_settings(cfg),
    }


def _batch_settings(cfg: EvalConfig) -> dict[str, Any]:
    """How the torch networks were fed: batched across photos (and how many crops a call), or per photo."""
    from falco.evaluation.batched import batch_plan

    batched, size = batch_plan(cfg.device, cfg.eval_batch_size)
    return {"batched": batched, "eval_batch_size": size if batched else None}


def _prefetch_one(path: str, specs: tuple[str, ...], ref_spec: str | None, real: bool,
                  disk_root: str | None) -> tuple[str, dict[str, list], dict[tuple, np.ndarray]]:
    """Worker: one photo's dlib detections (and, for a real photo, the reference boxes' landmarks).

    Real photos' results are looked up in, and written to, the disk cache here, in the worker.
    """
    from falco.evaluation.disk_cache import MISSING, DiskCache
    from falco.faces.detect import get_detector
    from falco.run.image_files import load_image

    image = load_image(path)
    digest = image_digest(image)
    disk = DiskCache(disk_root) if (real and disk_root) else None
    boxes: dict[str, list] = {}
    for spec in specs:
        key = ("det", digest, spec)
        value = disk.load(key, f"det:{spec}") if disk else MISSING
        if value is MISSING:
            value = get_eval_detector(spec).boxes(image)
            if disk:
                disk.store(key, f"det:{spec}", value)
        boxes[spec] = value
    lms: dict[tuple, np.ndarray] = {}
    if real and ref_spec is not None:
        for box in boxes[ref_spec]:
            box = tuple(int(v) for v in box)
            key = ("lm", digest, box)
            value = disk.load(key, LANDMARKS_SPEC) if disk else MISSING
            if value is MISSING:
                value = get_detector("hog").landmarks(image, box)
                if disk:
                    disk.store(key, LANDMARKS_SPEC, value)
            lms[key] = value
    return digest, boxes, lms


def _prefetch_detections(cache: Any, tools: Any, photo_pairs: list, *, workers: int, reference: str, upsample: int,
                        with_landmarks: bool = True, progress: bool = False) -> None:
    """Run the dlib detectors (and the real faces' landmarks) of every photo in ``workers``
    processes, into ``cache`` (a :class:`~falco.evaluation.common.FeatureCache`).

    The metrics then find them there; results are identical to computing them in turn. MTCNN
    and the torch networks stay in this process.
    """
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from falco.errors import ImageLoadError
    from falco.evaluation.common import progress_bar
    from falco.evaluation.detection import DlibEvalDetector

    specs = [d.spec for d in tools.detectors.values() if isinstance(d, DlibEvalDetector)]
    ref = get_eval_detector(reference, upsample)
    ref_spec = ref.spec if isinstance(ref, DlibEvalDetector) else None
    if ref_spec is not None and ref_spec not in specs:
        specs.append(ref_spec)
    if not specs:
        return
    jobs: dict[str, bool] = {}
    for pp in photo_pairs:
        jobs[str(pp.real)] = True
        if pp.anon is not None:
            jobs.setdefault(str(pp.anon), False)
    disk_root = str(cache.disk.root) if getattr(cache, "disk", None) is not None else None
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_prefetch_one, path, tuple(specs), ref_spec if with_landmarks else None, real,
                               disk_root) for path, real in jobs.items()]
        with progress_bar(futures, desc=f"detections ({workers} workers)", unit="photo", enabled=progress) as bar:
            for fut in bar:
                try:
                    digest, boxes, lms = fut.result()
                except ImageLoadError:  # an unreadable photo: the metrics report it in their own words
                    continue
                for spec, value in boxes.items():
                    cache.put(("det", digest, spec), value)
                for key, value in lms.items():
                    cache.put(key, value)
