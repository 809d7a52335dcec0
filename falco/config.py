"""Settings of each command as dataclasses: built by the CLI, recorded in every run manifest."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
    progress: bool = True
