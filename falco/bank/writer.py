"""Writing a fake bank's files: claiming the folder, chunks and contact sheets, index and manifest.

Shared by :func:`falco.bank.build_bank` (fakes sampled from z) and
:func:`falco.bank.importer.import_bank` (w codes given): both write the same directory.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from falco.bank.index import FeatureIndex
from falco.bank.layout import (
    _IGNORED,
    _META_KEY,
    BUILD_NAME,
    CHUNK_DIR,
    FORMAT,
    INDEX_NAME,
    MANIFEST_NAME,
    NOISE_MODE,
    THUMB_DIR,
    _chunk_meta,
    _chunk_name,
    _now,
    _write_json,
    _write_png,
)
from falco.errors import InputError
from falco.latent.images import quantize_uint8
from falco.run.inputs import publish_mode, read_json_object, save_tensors

__all__ = [
    "check_extractor",
    "check_index_kind",
    "check_on_device",
    "chunk_layout",
    "claim_bank_dir",
    "drop_extra_chunks",
    "embed",
    "finish_bank",
    "pending_chunks",
    "render_quantized",
    "save_chunk",
    "settings_diff",
    "settings_key",
    "sheet",
    "thumbs",
    "write_chunk",
]


def render_quantized(G: torch.nn.Module, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w rendered at 256 px with noise 'const': (uint8 image, the float image a PNG of it reads back as)."""
    from falco.latent.invert import render_256

    return quantize_uint8(render_256(G, w, noise_mode=NOISE_MODE))


def thumbs(x: torch.Tensor, size: int) -> np.ndarray:
    """[B, 3, 256, 256] in [-1, 1] -> uint8 [B, size, size, 3] (area-averaged)."""
    t = torch.nn.functional.interpolate(x, size=(size, size), mode="area")
    u8, _ = quantize_uint8(t)
    return u8.permute(0, 2, 3, 1).cpu().numpy()


def sheet(tiles: np.ndarray, cols: int) -> np.ndarray:
    """Tiles ``[N, s, s, 3]`` laid out row by row, ``cols`` a row: a contact sheet."""
    n, s = tiles.shape[0], tiles.shape[1]
    rows = math.ceil(n / cols)
    out = np.zeros((rows * s, cols * s, 3), np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * s:(r + 1) * s, c * s:(c + 1) * s] = tiles[i]
    return out


def check_extractor(extractor: Any) -> None:
    """Refuse an extractor without the FeatureExtractor attributes a bank records."""
    for attr in ("name", "dim"):
        if not hasattr(extractor, attr):
            raise InputError(f"extractor: expected a FeatureExtractor with .{attr}, got {type(extractor).__name__}")


def embed(extractor: Any, x: torch.Tensor) -> torch.Tensor:
    """The extractor's features of the images ``x``, float32 on the CPU. Shape: ``[B, extractor.dim]``."""
    f = extractor(x)
    if f.ndim != 2 or f.shape[1] != int(extractor.dim):
        raise InputError(f"extractor {extractor.name!r} returned shape {tuple(f.shape)}, "
                         f"expected [B, {extractor.dim}]")
    return f.float().cpu()


def write_chunk(path: Path, ws: torch.Tensor, features: torch.Tensor, metadata: dict[str, str]) -> None:
    """One chunk file, atomically (a hook point for tests that simulate a crash).

    The metadata goes in as one JSON string: safetensors writes a metadata dict in a random
    key order, which would make identical chunks differ byte-wise.
    """
    save_tensors(path, {"ws": ws, "features": features},
                 metadata={_META_KEY: json.dumps(metadata, sort_keys=True)})


def save_chunk(out: Path, c: int, *, key: str, start: int, ws: torch.Tensor, features: torch.Tensor,
               tiles: list[np.ndarray] | None, cols: int, batch_size: int, device: torch.device) -> None:
    """Chunk ``c`` (fakes ``start..start + len(ws) - 1``): its contact sheet of ``tiles`` (unless None), then its file."""
    if tiles is not None:
        _write_png(out / THUMB_DIR / f"{_chunk_name(c)}.png", sheet(np.concatenate(tiles), cols))
    write_chunk(out / CHUNK_DIR / f"{_chunk_name(c)}.safetensors", ws, features,
                {"key": key, "chunk": str(c), "start": str(start), "count": str(len(ws)),
                 "batch_size": str(batch_size), "device": str(device)})


def settings_key(settings: Mapping) -> str:
    """The bank's key: a hash of everything its content depends on."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]


def settings_diff(old: Mapping, new: Mapping) -> str:
    """The settings that differ, for a message (fingerprints only by name)."""
    names = [k for k in new if old.get(k) != new.get(k)]
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" if "fingerprint" not in k else f"{k} differs"
                     for k in names)


def check_index_kind(index: str) -> None:
    """Refuse an unknown FeatureIndex kind."""
    if index not in ("auto", "flat", "ivf", "hnsw"):
        raise InputError(f"index must be 'auto', 'flat', 'ivf' or 'hnsw', got {index!r}")


def _device_of(module: torch.nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def check_on_device(G: torch.nn.Module, extractor: Any, device: torch.device) -> None:
    """Refuse a generator or extractor network that is not on ``device``."""
    for what, module in (("G", G), ("extractor", getattr(extractor, "net", None))):
        if isinstance(module, torch.nn.Module) and _device_of(module).type != device.type:
            raise InputError(f"{what} is on {_device_of(module)} but device={str(device)!r}; move it first")


def claim_bank_dir(out: Path, settings: Mapping, key: str, num: int, *, made: str = "built") -> bool:
    """True when ``out`` already holds this finished bank; else record that it is being written (build.json).

    Raises:
        InputError: ``out`` holds a finished or unfinished bank ``made`` with other settings, or
            other files.
    """
    if (out / MANIFEST_NAME).exists():
        old = read_json_object(out / MANIFEST_NAME)
        if old.get("key") == key and old.get("count") == num:
            return True
        diff = settings_diff(old.get("settings", {}), settings) or f"count {old.get('count')} -> {num}"
        raise InputError(f"--out {str(out)!r} already holds a finished bank {made} with other settings "
                         f"({diff}); choose another folder")
    if (out / BUILD_NAME).exists():
        old = read_json_object(out / BUILD_NAME)
        if old.get("key") != key:
            raise InputError(f"--out {str(out)!r} holds an unfinished bank {made} with other settings "
                             f"({settings_diff(old.get('settings', {}), settings)}); re-run with its settings or "
                             "choose another folder")
    else:
        foreign = [p.name for p in out.iterdir() if p.name not in _IGNORED]
        if foreign:
            raise InputError(f"--out {str(out)!r} is not empty and not a bank (holds "
                             f"{', '.join(sorted(foreign)[:5])}); choose a new folder")
    _write_json(out / BUILD_NAME, {"format": FORMAT, "key": key, "num": num, "settings": settings,
                                   "started": _now()})
    return False


def chunk_layout(num: int, chunk_size: int) -> tuple[list[int], int]:
    """Fakes per chunk, and the contact sheets' columns."""
    n_chunks = math.ceil(num / chunk_size)
    return [min(chunk_size, num - c * chunk_size) for c in range(n_chunks)], math.ceil(math.sqrt(chunk_size))


def pending_chunks(out: Path, key: str, counts: list[int], thumbnails: bool,
                   note: Callable[[str], Any]) -> list[int]:
    """The chunks (of ``counts[c]`` fakes each) still to write; makes the chunk and thumbnail folders.

    A chunk is done when its file carries this ``key`` and count and, with ``thumbnails``, its
    contact sheet exists.
    """
    chunk_dir, thumb_dir = out / CHUNK_DIR, out / THUMB_DIR
    chunk_dir.mkdir(exist_ok=True)
    if thumbnails:
        thumb_dir.mkdir(exist_ok=True)

    def done(c: int) -> bool:
        meta = _chunk_meta(chunk_dir / f"{_chunk_name(c)}.safetensors")
        ok = meta is not None and meta.get("key") == key and meta.get("count") == str(counts[c])
        return ok and (not thumbnails or (thumb_dir / f"{_chunk_name(c)}.png").is_file())

    todo = [c for c in range(len(counts)) if not done(c)]
    if len(todo) < len(counts):
        note(f"resuming: {len(counts) - len(todo)} of {len(counts)} chunks already written")
    return todo


def drop_extra_chunks(out: Path, n_chunks: int) -> None:
    """Delete chunk files and sheets numbered ``n_chunks`` or more (left by an earlier, larger bank)."""
    for p in list((out / CHUNK_DIR).glob("chunk_*.safetensors")) + list((out / THUMB_DIR).glob("chunk_*.png")):
        stem = p.name.split(".")[0]
        if stem.startswith("chunk_") and stem[6:].isdigit() and int(stem[6:]) >= n_chunks:
            p.unlink()


def finish_bank(out: Path, G: torch.nn.Module, extractor: Any, settings: Mapping, *, key: str, counts: list[int],
                cols: int, index: str, z: str | None, generator_sha256: str | None, generator_name: str | None,
                extra: Mapping[str, Any], batch_size: int, device: torch.device, started: float,
                note: Callable[[str], Any]) -> Path:
    """Index and manifest, written after the last chunk; the manifest last.

    The manifest's ``seed`` is ``settings['seed']`` (None without one; the index is seeded with
    0 then); ``source``, ``features.imported`` (from ``features_sha256``) and ``thumbnails.from``
    are recorded when ``settings`` has them.

    Args:
        settings: the bank's settings (as hashed into ``key``).
        counts: fakes per chunk; ``cols``: contact sheet columns.
        index: the FeatureIndex kind.
        z: how the fakes' z were drawn (None: not drawn here).
        extra: more top-level manifest keys.
        batch_size, device, started: this run's, for the manifest's ``build`` record
            (``started``: its ``time.perf_counter()`` at the start).
    """
    from safetensors.torch import load as _load

    chunk_size, thumbnails = settings["chunk_size"], settings["thumbnail_size"] is not None
    seed = settings.get("seed")
    chunks, features = [], []
    for c, count in enumerate(counts):
        rel = f"{CHUNK_DIR}/{_chunk_name(c)}.safetensors"
        blob = (out / rel).read_bytes()
        features.append(_load(blob)["features"].numpy())
        chunks.append({"file": rel, "start": c * chunk_size, "count": count,
                       "sha256": hashlib.sha256(blob).hexdigest(),
                       "thumbnails": f"{THUMB_DIR}/{_chunk_name(c)}.png" if thumbnails else None})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fi = FeatureIndex.build(np.concatenate(features), "cosine", index, seed=0 if seed is None else seed)
    index_notes = [str(w.message) for w in caught]
    for msg in index_notes:
        note(f"index: {msg}")
    fi.save(out / INDEX_NAME)
    publish_mode(out / INDEX_NAME)  # faiss writes through a private temp file
    note(f"index: {fi.kind} {fi.params or ''}".rstrip())

    manifest: dict[str, Any] = {
        "format": FORMAT,
        "created": _now(),
        "key": key,
        "count": sum(counts),
        "w_dim": settings["w_dim"],
        "num_ws": settings["num_ws"],
        "z_dim": settings["z_dim"],
        "truncation": settings["truncation"],
        "seed": seed,
        "chunk_size": chunk_size,
        "noise_mode": NOISE_MODE,
        "pipeline": settings["pipeline"],
        "z": z,
    }
    if "source" in settings:
        manifest["source"] = settings["source"]
    feats = {
        "name": settings["features_name"],
        "dim": settings["features_dim"],
        "fingerprint": settings["features_fingerprint"],
        "source": getattr(extractor, "source", None),
        # what the extractor did to each fake before its network; the queries do the same
        "preprocessing": getattr(extractor, "preprocessing", None),
        "metric": "cosine",
        "normalized": True,
    }
    if "features_sha256" in settings:
        feats["imported"] = settings["features_sha256"] is not None
    thumbs_record = {"size": settings["thumbnail_size"], "cols": cols}
    if "thumbnails_from" in settings:
        thumbs_record["from"] = settings["thumbnails_from"]
    manifest.update({
        "generator": {
            "fingerprint": settings["generator_fingerprint"],
            "sha256": generator_sha256,
            "name": generator_name,
            "source_layout": getattr(G, "source_layout", None),
            "img_resolution": getattr(G, "img_resolution", None),
            "w_dim": settings["w_dim"],
            "num_ws": settings["num_ws"],
        },
        "features": feats,
        "index": {"file": INDEX_NAME, "kind": fi.kind, "metric": fi.metric, "params": fi.params,
                  "notes": index_notes},
        "thumbnails": thumbs_record if thumbnails else None,
        "chunks": chunks,
        "settings": dict(settings),
        "build": {"batch_size": batch_size, "device": str(device),
                  "seconds_this_run": round(time.perf_counter() - started, 3)},
    })
    for k, v in extra.items():
        manifest.setdefault(k, v)
    _write_json(out / MANIFEST_NAME, manifest)
    return out
