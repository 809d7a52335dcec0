"""Settings of each command as dataclasses: built by the CLI, recorded in every run manifest."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from falco.imageio import DEFAULT_MAX_PIXELS


def as_dict(config: Any) -> dict:
    """A config as JSON-ready data (paths become strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()}


@dataclass(frozen=True)
class InvertConfig:
    """``falco invert``: photos in, aligned crops + W+ codes + manifest out."""

    input: Path
    out: Path
    models: Path | None = None
    batch_size: int = 8
    device: str = "auto"
    refine_steps: int = 0
    detector: str = "hog"
    upsample: int = 1
    align_size: int = 256
    seed: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    progress: bool = True


@dataclass(frozen=True)
class AnonymizeConfig:
    """``falco anonymize``: photos in, the same photos with every face anonymized out."""

    input: Path
    out: Path
    method: str = "falco"
    models: Path | None = None
    bank: Path | None = None
    bank_size: int = 2000
    reuse: bool = True
    m: float = 0.0
    steps: int = 50
    lr: float = 0.01
    lambda_id: float = 10.0
    lambda_attr: float = 0.1
    layers: tuple[int, int] = (3, 8)
    amp: str | None = None
    num_fp16_res: int = 4
    fused_modconv: bool = True
    channels_last: bool = False
    compile: bool = False
    loss_resolution: int | None = None
    batch_size: int = 8
    device: str = "auto"
    seed: int = 0
    format: str | None = None
    quality: int = 95
    on_fail: str = "blur"
    save_crops: bool = False
    detector: str = "hog"
    upsample: int = 1
    method_options: dict = dataclasses.field(default_factory=dict)
    guard: str = "enforce"
    keep_identity: tuple[Path, ...] = ()
    sidecar: bool = False
    export_detections: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    progress: bool = True


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
