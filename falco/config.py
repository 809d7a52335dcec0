"""Settings of each command as dataclasses: built by the CLI, recorded in every run manifest."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from falco.errors import InputError
from falco.faces.detect import DEFAULT_DETECTOR
from falco.faces.regions import DEFAULT_FEATHER
from falco.latent.optimise import FalcoParams
from falco.run.image_files import DEFAULT_MAX_PIXELS

#: ``--region-masks``: the face parser when installed (auto), or always landmarks / the parser.
REGION_MASKS = ("auto", "landmarks", "parsing")


def as_dict(config: Any) -> dict:
    """A config as JSON-ready data (paths become strings, tuples lists, nested configs dicts)."""
    return _jsonable(dataclasses.asdict(config))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value


@dataclass(frozen=True)
class InvertConfig:
    """``falco invert``: photos in, aligned crops + W+ codes + manifest out."""

    input: Path
    out: Path
    models: Path | None = None
    batch_size: int = 8
    device: str = "auto"
    refine_steps: int = 0
    detector: str = DEFAULT_DETECTOR
    upsample: int = 1
    align_size: int = 256
    seed: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    progress: bool = True


@dataclass(frozen=True)
class AnonymizeConfig:
    """``falco anonymize``: photos in, the same photos with every face anonymized out.

    Every choice is checked on construction by the code that interprets it: the method by the
    registry, ``falco`` by :class:`FalcoParams`, ``on_fail`` by :mod:`falco.methods.cover`,
    ``guard`` by :mod:`falco.guard`, ``format`` by :mod:`falco.run.image_files`,
    ``export_detections`` by :mod:`falco.export`, ``keep``/``change`` by :mod:`falco.faces.regions`
    (stored as a tuple of lower-case names; a comma-separated string is accepted).
    """

    input: Path
    out: Path
    method: str = "falco"
    models: Path | None = None
    device: str = "auto"
    seed: int = 0
    batch_size: int = 8
    # FALCO: the optimisation, and the bank its starting fakes come from
    falco: FalcoParams = FalcoParams()
    bank: Path | None = None
    bank_size: int = 2000
    reuse: bool = True
    # the other methods' own options (``--blur-preset`` -> ``preset``, ...)
    method_options: dict = dataclasses.field(default_factory=dict)
    # detection
    detector: str = DEFAULT_DETECTOR
    upsample: int = 1
    max_pixels: int = DEFAULT_MAX_PIXELS
    # output
    format: str | None = None
    quality: int = 95
    save_crops: bool = False
    sidecar: bool = False
    export_detections: str | None = None
    # privacy
    on_fail: str = "blur"
    guard: str = "enforce"
    keep_identity: tuple[Path, ...] = ()
    # region control: parts of each face kept from the photo (``--keep``) or the only ones changed (``--change``)
    keep: tuple[str, ...] | None = None
    change: tuple[str, ...] | None = None
    region_feather: float = DEFAULT_FEATHER
    region_masks: str = "auto"
    progress: bool = True
    # videos (see falco.run.video): encoding, tracking, per-track identity, resumable segments
    codec: str | None = None
    crf: int = 18
    keep_metadata: bool = False
    detect_every: int = 1
    video_steps: int = 10
    video_segment: int = 120
    # videos: identity policy (falco.video.policy); across videos implies merging within one
    merge_tracks: bool = False
    same_identity_across_videos: bool = False
    # image sequences (``--sequence``): folders of numbered frames anonymized as videos; their frame rate
    sequence: bool = False
    sequence_fps: float = 25.0

    def __post_init__(self) -> None:
        from falco.export import check_export
        from falco.guard import check_mode
        from falco.methods.cover import check_on_fail
        from falco.methods.registry import available_methods
        from falco.run.image_files import check_output_format

        if self.method not in available_methods():
            raise InputError(f"--method must be one of {', '.join(available_methods())}, got {self.method!r}")
        check_on_fail(self.on_fail)
        check_mode(self.guard)
        check_output_format(self.format)
        check_export(self.export_detections)
        if not isinstance(self.falco, FalcoParams):
            raise InputError(f"falco must be FalcoParams, got {type(self.falco).__name__}")
        self._check_regions()
        for name, low in (("crf", 0), ("detect_every", 1), ("video_steps", 0), ("video_segment", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")
        fps = self.sequence_fps
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 1000:
            raise InputError(f"--sequence-fps must be a number in (0, 1000], got {fps!r}")

    def _check_regions(self) -> None:
        """``keep``/``change``: names (or a comma-separated string) of parts and groups, not both."""
        from falco.faces.regions import needs_parsing, resolve_regions

        for name in ("keep", "change"):
            value = getattr(self, name)
            if value is None:
                continue
            names = value.split(",") if isinstance(value, str) else list(value)
            names = [n.strip().lower() if isinstance(n, str) else n for n in names]
            if not names or any(not isinstance(n, str) or not n for n in names):
                raise InputError(f"--{name} must be comma-separated region names, got {value!r}")
            try:
                resolve_regions(names)
            except InputError as exc:
                raise InputError(f"--{name}: {exc}") from None
            object.__setattr__(self, name, tuple(names))
        if self.keep is not None and self.change is not None:
            raise InputError("--keep and --change exclude each other: give one of them")
        feather = self.region_feather
        if isinstance(feather, bool) or not isinstance(feather, (int, float)) or not 0 <= feather <= 0.5:
            raise InputError(f"--region-feather must be a number in [0, 0.5] (a fraction of the face's size), "
                             f"got {feather!r}")
        if self.region_masks not in REGION_MASKS:
            raise InputError(f"--region-masks must be one of {', '.join(REGION_MASKS)}, got {self.region_masks!r}")
        chosen = self.keep if self.keep is not None else self.change
        if self.region_masks == "landmarks" and chosen is not None and needs_parsing(chosen):
            raise InputError(f"--region-masks landmarks cannot draw {', '.join(chosen)}: hair, neck, ears, glasses, "
                             "hat and cloth need the face parser (--region-masks auto or parsing)")


#: ``FalcoParams`` fields that manifests written before the nesting kept at the top level.
_FLAT_FALCO_KEYS = ("m", "steps", "lr", "lambda_id", "lambda_attr", "layers", "amp", "num_fp16_res",
                    "fused_modconv", "channels_last", "compile", "loss_resolution")


def anonymize_config_from_dict(data: dict) -> AnonymizeConfig:
    """The :class:`AnonymizeConfig` of a run manifest's ``config`` (any falco version).

    Reads both the nested form (``{"falco": {...}}``) and the flat one of manifests written
    before ``FalcoParams`` was nested; keys that are not settings (``method_settings``,
    ``guard_settings``) are ignored.
    """
    fields = {f.name for f in dataclasses.fields(AnonymizeConfig)}
    values = {k: v for k, v in data.items() if k in fields}
    falco = dict(data.get("falco") or {k: data[k] for k in _FLAT_FALCO_KEYS if k in data})
    for key in ("layers", "lr_milestones"):
        if key in falco:
            falco[key] = tuple(falco[key])
    values["falco"] = FalcoParams(**falco)
    for key in ("input", "out", "models", "bank"):
        if values.get(key) is not None:
            values[key] = Path(values[key])
    values["keep_identity"] = tuple(Path(p) for p in values.get("keep_identity") or ())
    for key in ("keep", "change"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    return AnonymizeConfig(**values)


@dataclass(frozen=True)
class BankConfig:
    """``falco bank build``: sample, render and embed fakes into a bank directory (resumable)."""

    out: Path
    num: int
    truncation: float = 0.7
    features: str = "farl"
    batch_size: int = 32
    chunk_size: int = 1000
    device: str = "auto"
    models: Path | None = None
    seed: int = 0
    index: str = "auto"
    thumbnails: bool = True
    thumbnail_size: int = 64
    progress: bool = True
