"""The on-disk layout of a fake bank: file names, JSON and chunk metadata helpers."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from falco.errors import InputError
from falco.run.inputs import (
    atomic_path,
    atomic_write_bytes,
)

FORMAT = "falco-bank-1"
MANIFEST_NAME = "manifest.json"
BUILD_NAME = "build.json"
INDEX_NAME = "index.faiss"
CHUNK_DIR = "chunks"
THUMB_DIR = "thumbs"
NOISE_MODE = "const"
PIPELINE = "w = mapping(z, psi); x = render_256(G, w, noise 'const'); uint8; features = extractor(x)"
_IGNORED = {".falco.lock"}
_META_KEY = "falco_bank_chunk"


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def _chunk_name(c: int) -> str:
    return f"chunk_{c:05d}"


def _write_json(path: Path, data: Mapping) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def _chunk_meta(path: Path) -> dict | None:
    """A chunk file's metadata, or None if it is missing or unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[_META_KEY])
        return meta if isinstance(meta, dict) else None
    except Exception:  # noqa: BLE001 - any unreadable chunk (SafetensorError, no metadata, bad JSON) is redone
        return None


# ----------------------------------------------------------------------------- building


def _check_int(value: Any, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (
        high is not None and value > high
    ):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise InputError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


