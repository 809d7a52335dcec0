"""The detectors, recognisers, classifiers and Inception an evaluation uses, and why any is missing.

Optional parts never fail an evaluation: each one that cannot be built leaves its reason
under the dotted key of the metric it would have produced (``detection_rate.mtcnn``,
``reid_rate.arcface``, ``attribute_agreement.farl-celeba``, ``fid``...). Those missing only
because their package or weights are not installed are also listed in ``Tools.not_installed``
under a short label (``"arcface re-id"``), which the command prints in one line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from falco.errors import FalcoError, InputError, ModelNotFoundError
from falco.evaluation.common import MetricUnavailable
from falco.evaluation import detection as _detection
from falco.evaluation.detection import get_eval_detector
from falco.evaluation.landmarks import LandmarkAttributes
from falco.evaluation.reid import ArcFaceRecognizer, DlibRecognizer
from falco.faces.insightface_zoo import InsightfaceRecognizer
from falco.faces.opencv_zoo import SFaceRecognizer

__all__ = ["CLASSIFIERS", "RECOGNIZERS", "Tools", "build_tools"]

RECOGNIZERS = ("dlib", "arcface", "sface", "insightface")
CLASSIFIERS = ("landmarks", "farl-celeba")


@dataclass
class Tools:
    """Everything the metrics need, built once for all compared runs."""

    detectors: dict[str, Any] = field(default_factory=dict)
    recognizers: dict[str, Any] = field(default_factory=dict)
    classifiers: list[Any] = field(default_factory=list)
    inception: Any = None
    parser: Any = None  # the face parser for region_change (None: landmark masks, and why in parser_problem)
    parser_problem: str | None = None
    lpips: Any = None  # LPIPS for region_lpips (None: not installed, and why in lpips_problem)
    lpips_problem: str | None = None
    unavailable: dict[str, str] = field(default_factory=dict)
    not_installed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def _missing(self, label: str, keys: tuple[str, ...], reason: str, installed: bool = True) -> None:
        for key in keys:
            self.unavailable[key] = reason
        if not installed:
            self.not_installed[label] = keys


def build_tools(*, detectors: Sequence[str], recognizers: Sequence[str], classifiers: Sequence[str],
                fid: bool, upsample: int = 1, models: str | os.PathLike | None = None,
                device: str = "cpu") -> Tools:
    """Build what is asked for; record the reason for each optional part that is unavailable.

    Raises:
        InputError: An unknown detector, recogniser or classifier name.
    """
    tools = Tools()
    for spec in detectors:
        name = str(spec).split(":")[0].lower()
        try:
            tools.detectors[name] = get_eval_detector(spec, upsample, device, models)
        except MetricUnavailable as exc:
            installed = (_detection.mtcnn_installed() if name == "mtcnn"
                         else not isinstance(exc.__cause__, ModelNotFoundError))
            tools._missing(f"{name} detection", (f"detection_rate.{name}",), str(exc), installed=installed)

    for name in recognizers:
        if name == "dlib":
            tools.recognizers["dlib"] = DlibRecognizer()
        elif name == "arcface":
            _add_recognizer(tools, name, "ArcFace weights", "ArcFace",
                            lambda: ArcFaceRecognizer.from_models(models, device=device))
        elif name == "sface":
            _add_recognizer(tools, name, "SFace", "SFace", lambda: SFaceRecognizer.from_models(models))
        elif name == "insightface":
            _add_recognizer(tools, name, "insightface ArcFace", "insightface's ArcFace",
                            lambda: InsightfaceRecognizer.from_models(models, device=device))
        else:
            raise InputError(f"recognizers: unknown {name!r}; choose from {', '.join(RECOGNIZERS)}")

    for name in classifiers:
        if name == "landmarks":
            tools.classifiers.append(LandmarkAttributes())
        elif name == "farl-celeba":
            try:
                tools.classifiers.append(_farl_head(models, device))
            except FalcoError as exc:
                tools._missing("farl-celeba attributes", ("attribute_agreement.farl-celeba",),
                               f"FaRL CelebA attribute head not available: {exc}",
                               not isinstance(exc, ModelNotFoundError))
        else:
            raise InputError(f"classifiers: unknown {name!r}; choose from {', '.join(CLASSIFIERS)}")

    _region_parser(tools, models, device)
    _region_lpips(tools, models, device)
    if not fid:
        tools.unavailable["fid"] = tools.unavailable["kid"] = "disabled (--no-fid)"
    else:
        try:
            tools.inception = _inception(models, device)
        except FalcoError as exc:
            tools._missing("fid/kid", ("fid", "kid"), f"FID Inception weights not available: {exc}",
                           not isinstance(exc, ModelNotFoundError))
    return tools


def _add_recognizer(tools: Tools, name: str, missing: str, subject: str, load) -> None:
    """Load one optional recognizer into ``tools.recognizers[name]``, or record why it is not there."""
    try:
        rec = load()
    except FalcoError as exc:
        tools._missing(f"{name} re-id", (f"reid_rate.{name}", f"rank1_identification.{name}"),
                       f"{missing} not available: {exc}", not isinstance(exc, ModelNotFoundError))
        return
    if getattr(rec, "tiny", False):
        tools.notes.append(f"{subject} comes from a tiny random model set: its re-identification numbers "
                           "are not meaningful")
    tools.recognizers[name] = rec


def _region_parser(tools: Tools, models, device: str) -> None:
    """The face parser for the per-part change (:mod:`falco.evaluation.regions`), when installed."""
    from falco.evaluation.regions import PARSER_REASON
    from falco.models.parsing import load_parser
    from falco.pretrained.modelset import is_tiny

    try:
        tools.parser = load_parser(models, device=device)
    except FalcoError as exc:
        tools.parser_problem = (PARSER_REASON if isinstance(exc, ModelNotFoundError)
                                else f"they need the face parser, which could not be loaded: {exc}")
        return
    if is_tiny(models):
        tools.notes.append("the face parser comes from a tiny random model set: its region masks are not meaningful")


def _region_lpips(tools: Tools, models, device: str) -> None:
    """LPIPS for the per-part perceptual change (``region_lpips``), when its two files are installed."""
    from falco.evaluation.regions import LPIPS_REASON
    from falco.models.lpips import load_lpips

    try:
        tools.lpips = load_lpips(models, device=device)
    except FalcoError as exc:
        tools.lpips_problem = LPIPS_REASON if isinstance(exc, ModelNotFoundError) else f"LPIPS could not be loaded: {exc}"


def _farl_head(models, device: str):
    from falco.evaluation.farl_attributes import FaRLCelebAClassifier
    from falco.pretrained.modelset import resolve_model

    return FaRLCelebAClassifier.from_file(resolve_model("farl-celeba-attributes", models), device=device)


def _inception(models, device: str):
    from falco.evaluation.quality import fid_inception
    from falco.pretrained.modelset import resolve_model

    return fid_inception(resolve_model("inception-fid", models), device=device)
