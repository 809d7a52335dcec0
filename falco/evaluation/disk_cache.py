"""On-disk memo of the evaluation's per-image analysis of the real photos.

Detections, landmarks and embeddings of a real photo do not depend on the anonymized run
it is compared with, so ``falco eval-attributes`` computes them once per real set and keeps
them here, reused by later runs and invocations. An entry is keyed by the SHA-256 of the
decoded image's pixels (:func:`~falco.evaluation.common.image_digest`) plus the spec of the
tool that produced it (detector and its upsampling, landmark predictor, recogniser and its
weights), plus :data:`CACHE_FORMAT`; change any and the entry is simply not found.

Entries are small JSON files (arrays as base64 of their raw bytes, never pickles: nothing
read back is executed), written to a temporary file then renamed, so concurrent writers and
interrupted runs never leave a torn entry. Layout: ``<root>/<format>/<key[:2]>/<key>.json``.

Default root: ``$FALCO_EVAL_CACHE``, else ``$XDG_CACHE_HOME/falco/eval`` (``~/.cache/falco/eval``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Hashable

import numpy as np

from falco.errors import InputError

__all__ = ["CACHE_FORMAT", "MISSING", "DiskCache", "default_cache_dir"]

#: Bumped whenever what an entry holds, or how a tool computes it, changes.
CACHE_FORMAT = "eval-cache-v1"


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: What :meth:`DiskCache.load` returns for an absent (or unreadable) entry.
MISSING: Any = _Missing()


def default_cache_dir() -> Path:
    """``$FALCO_EVAL_CACHE``, else ``$XDG_CACHE_HOME/falco/eval``, else ``~/.cache/falco/eval``."""
    env = os.environ.get("FALCO_EVAL_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "falco" / "eval"


def _encode(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        return {"ndarray": base64.b64encode(arr.tobytes()).decode("ascii"), "dtype": arr.dtype.str,
                "shape": list(arr.shape)}
    if isinstance(value, (list, tuple)):
        return {"seq": [_encode(v) for v in value], "tuple": isinstance(value, tuple)}
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: _encode(v) for k, v in value.items()}}
    raise TypeError(f"cannot store a {type(value).__name__} in the evaluation cache")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "ndarray" in value:
            arr = np.frombuffer(base64.b64decode(value["ndarray"]), dtype=np.dtype(value["dtype"]))
            return arr.reshape(value["shape"]).copy()
        if "seq" in value:
            items = [_decode(v) for v in value["seq"]]
            return tuple(items) if value["tuple"] else items
        if "dict" in value:
            return {k: _decode(v) for k, v in value["dict"].items()}
    return value


class DiskCache:
    """A folder of cached values (see the module docstring).

    Args:
        root: The cache folder (created on first write).

    Attributes:
        hits, misses, writes: Counters since construction.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"--cache {str(self.root)!r} is not a folder")
        self.hits = self.misses = self.writes = 0

    @staticmethod
    def key(key: Hashable, spec: str) -> str:
        """The entry name of an in-memory cache key computed by the tool ``spec``."""
        h = hashlib.sha256()
        h.update(CACHE_FORMAT.encode())
        h.update(b"\0" + spec.encode() + b"\0")
        h.update(repr(key).encode())
        return h.hexdigest()

    def _path(self, name: str) -> Path:
        return self.root / CACHE_FORMAT / name[:2] / f"{name}.json"

    def load(self, key: Hashable, spec: str, default: Any = MISSING) -> Any:
        """The stored value, or ``default`` (:data:`MISSING`) when absent or unreadable (then
        recomputed and rewritten by the caller)."""
        path = self._path(self.key(key, spec))
        try:
            with open(path, encoding="utf-8") as f:
                value = _decode(json.load(f)["value"])
        except (OSError, ValueError, KeyError, TypeError):
            self.misses += 1
            return default
        self.hits += 1
        return value

    def store(self, key: Hashable, spec: str, value: Any) -> None:
        """Write an entry atomically (a temporary file renamed into place)."""
        path = self._path(self.key(key, spec))
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"spec": spec, "value": _encode(value)})
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(payload)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.writes += 1

    def __len__(self) -> int:
        folder = self.root / CACHE_FORMAT
        return sum(1 for _ in folder.glob("*/*.json")) if folder.is_dir() else 0
