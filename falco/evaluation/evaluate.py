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

from falco import __version__
from falco.errors import InputError
from falco.evaluation.attributes import load_labels_csv
from falco.evaluation.collect import collect_run
from falco.evaluation.common import FeatureCache
from falco.evaluation.detection import CNN_MAX_PIXELS
from falco.evaluation.pairing import list_photo_pairs, manifest_path, read_manifest_faces, read_manifest_sources
from falco.evaluation.summary import summarise_run
from falco.evaluation.tools import Tools, build_tools

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
        recognizers: ``dlib``, ``arcface`` and/or ``sface``.
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

    say = echo or log.info
    if not cfg.anon:
        raise InputError("at least one --anon folder is needed")
    real_root = Path(cfg.real)
    if not real_root.is_dir():
        raise InputError(f"--real {str(real_root)!r} is not a folder")
    cfg = dataclasses.replace(cfg, device=str(resolve_device(cfg.device)))
    names, pairs = _run_names(cfg), _run_pairs(cfg)
    labels = load_labels_csv(cfg.labels) if cfg.labels else None
    tools = build_tools(detectors=cfg.detectors, recognizers=cfg.recognizers, classifiers=cfg.classifiers,
                        fid=cfg.fid, upsample=cfg.upsample, models=cfg.models, device=cfg.device)
    cache = cache if cache is not None else FeatureCache()
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
    for name, anon_root, manifest in zip(names, cfg.anon, pairs, strict=True):
        say(f"evaluating {name}: {anon_root}")
        photo_pairs, manifest_faces, extra = _pairs(real_root, Path(anon_root), manifest)
        data = collect_run(tools, cache, photo_pairs, manifest_faces, reference_detector=cfg.reference_detector,
                           upsample=cfg.upsample, detection_iou=cfg.detection_iou, pair_iou=cfg.pair_iou,
                           examples=cfg.examples, device=cfg.device, progress=cfg.progress, desc=f"{name}: photos")
        data.counts.update(extra)
        run, examples, faces = summarise_run(data, tools, cache, labels=labels, device=cfg.device,
                                             examples=cfg.examples, progress=cfg.progress, desc=f"{name}: metrics")
        pairing = (f"manifest:{manifest_path(manifest)}" if manifest is not None else
                   f"box-iou:{cfg.reference_detector}:{cfg.upsample}>={cfg.pair_iou}")
        report.data["runs"][name] = {"anon": str(anon_root), "pairing": pairing, **run}
        report.examples[name] = examples
        report.faces[name] = faces
    return report


def _pairs(real_root: Path, anon_root: Path, manifest: Path | None):
    """Photo pairs, manifest faces by source (None without a manifest) and extra counts."""
    if manifest is None:
        return list_photo_pairs(real_root, anon_root), None, {}
    rows, skipped = read_manifest_faces(manifest)
    by_source: dict[str, list] = {}
    for f in rows:
        by_source.setdefault(f.source, []).append(f)
    inputs = read_manifest_sources(manifest)
    sources = sorted(set(by_source) | set(inputs))
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
    }
