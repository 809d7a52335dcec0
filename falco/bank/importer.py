"""Writing a fake bank from w codes made elsewhere (e.g. the reference FALCO's fakes).

:func:`import_bank` writes the same directory as :func:`falco.bank.build_bank` (chunks of ``ws``
and ``features``, contact sheets, FAISS index, ``manifest.json`` written last), with the
build's own writers, but the codes are given instead of sampled: nothing records a seed, and
the manifest's ``source`` says where the codes came from. Features are computed the way
``build_bank`` computes them (``render_256`` with noise 'const', uint8, the extractor) unless
given; thumbnails are rendered unless a reader of existing images is given. Chunks are the unit
of resuming, as in a build: re-run the same import to finish an interrupted one.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from falco.bank.build import (
    _device_of,
    _diff,
    _key,
    _render_quantized,
    _sheet,
    _thumbs,
    _write_chunk,
    generator_fingerprint,
)
from falco.bank.features import extractor_fingerprint
from falco.bank.index import FeatureIndex
from falco.bank.layout import (
    _IGNORED,
    BUILD_NAME,
    CHUNK_DIR,
    FORMAT,
    INDEX_NAME,
    MANIFEST_NAME,
    NOISE_MODE,
    THUMB_DIR,
    _check_int,
    _chunk_meta,
    _chunk_name,
    _now,
    _read_json,
    _write_json,
    _write_png,
)
from falco.errors import InputError
from falco.run.inputs import lock_output_dir, publish_mode, remove_stale_temps

__all__ = ["ThumbnailReader", "import_bank"]

#: ``reader(start, stop, size)`` -> uint8 ``[stop - start, size, size, 3]``: thumbnails of rows start..stop-1.
ThumbnailReader = Callable[[int, int, int], np.ndarray]

PIPELINE_COMPUTED = "w imported; x = render_256(G, w, noise 'const'); uint8; features = extractor(x)"
PIPELINE_IMPORTED = "w imported; features imported (L2-normalised)"


def import_bank(
    out: str | os.PathLike,
    ws: torch.Tensor,
    G: torch.nn.Module,
    extractor: Any,
    *,
    source: Mapping[str, Any],
    truncation: float | None = None,
    features: torch.Tensor | None = None,
    thumbnail_reader: ThumbnailReader | None = None,
    thumbnails: bool = True,
    thumbnail_size: int = 64,
    batch_size: int = 32,
    chunk_size: int = 1000,
    device: str | torch.device = "cpu",
    progress: bool = True,
    index: str = "auto",
    generator_sha256: str | None = None,
    generator_name: str | None = None,
    extra: Mapping[str, Any] | None = None,
    echo: Callable[[str], Any] | None = None,
) -> Path:
    """Write (or finish) a bank in ``out`` holding the fakes ``ws``.

    Args:
        out: bank directory (as :func:`falco.bank.build_bank`: resumed, or returned as is when
            it holds this finished bank; anything else there is refused).
        ws: the fakes' w codes, bank order. Shape: ``[N, w_dim]``.
        G: the generator the codes belong to (fingerprinted; renders features and thumbnails).
        extractor: a :class:`falco.bank.features.FeatureExtractor` (recorded; computes features
            unless ``features`` is given).
        source: where the codes come from (JSON data), recorded as the manifest's ``source``.
        truncation: the truncation the codes were sampled with, recorded (None: unknown).
        features: features to import instead of computing them (L2-normalised here). Shape:
            ``[N, extractor.dim]``. They must be the extractor's features of these fakes.
        thumbnail_reader: reads thumbnails from existing images; None renders them.
        thumbnails, thumbnail_size, batch_size, chunk_size, device, progress, index,
        generator_sha256, generator_name, extra, echo: as for :func:`falco.bank.build_bank`.

    Returns:
        ``out`` as a Path.

    Raises:
        InputError: a bad argument, ``out`` in use or holding something else.
    """
    note = echo or (lambda _msg: None)
    batch_size = _check_int(batch_size, "batch_size", 1)
    chunk_size = _check_int(chunk_size, "chunk_size", 1)
    thumbnail_size = _check_int(thumbnail_size, "thumbnail_size", 8, 256)
    if index not in ("auto", "flat", "ivf", "hnsw"):
        raise InputError(f"index must be 'auto', 'flat', 'ivf' or 'hnsw', got {index!r}")
    if not isinstance(ws, torch.Tensor) or ws.ndim != 2 or ws.shape[0] < 1 or ws.shape[1] != int(G.w_dim):
        got = list(ws.shape) if isinstance(ws, torch.Tensor) else type(ws).__name__
        raise InputError(f"ws: expected w codes [N, {G.w_dim}] (the generator's w_dim), got {got}")
    ws = ws.detach().to("cpu", torch.float32).contiguous()
    if not torch.isfinite(ws).all():
        raise InputError("ws: the codes hold non-finite values")
    for attr in ("name", "dim"):
        if not hasattr(extractor, attr):
            raise InputError(f"extractor: expected a FeatureExtractor with .{attr}, got {type(extractor).__name__}")
    if features is not None:
        features = _check_features(features, len(ws), int(extractor.dim))
    device = torch.device(device)
    for what, module in (("G", G), ("extractor", getattr(extractor, "net", None))):
        if isinstance(module, torch.nn.Module) and _device_of(module).type != device.type:
            raise InputError(f"{what} is on {_device_of(module)} but device={str(device)!r}; move it first")
    settings = {
        "generator_fingerprint": generator_fingerprint(G),
        "w_dim": int(G.w_dim),
        "num_ws": int(G.num_ws),
        "z_dim": int(getattr(G, "z_dim", G.w_dim)),
        "features_name": str(extractor.name),
        "features_dim": int(extractor.dim),
        "features_fingerprint": extractor_fingerprint(extractor),
        "features_preprocessing": getattr(extractor, "preprocessing", None),
        "truncation": None if truncation is None else float(truncation),
        "chunk_size": chunk_size,
        "noise_mode": NOISE_MODE,
        "pipeline": PIPELINE_COMPUTED if features is None else PIPELINE_IMPORTED,
        "thumbnail_size": thumbnail_size if thumbnails else None,
        "thumbnails_from": None if not thumbnails else ("rendered" if thumbnail_reader is None else "source"),
        "codes_sha256": _sha256(ws),
        "features_sha256": None if features is None else _sha256(features),
        "source": dict(source),
    }
    out = Path(out)
    with lock_output_dir(out):
        remove_stale_temps(out, older_than=time.time())
        return _import_locked(out, ws, G, extractor, features, thumbnail_reader, settings, batch_size=batch_size,
                              device=device, progress=progress, index=index, generator_sha256=generator_sha256,
                              generator_name=generator_name, extra=dict(extra or {}), note=note)


def _check_features(features: Any, n: int, dim: int) -> torch.Tensor:
    if not isinstance(features, torch.Tensor) or features.ndim != 2 or tuple(features.shape) != (n, dim):
        got = list(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise InputError(f"features: expected [{n}, {dim}] (one row per code, the extractor's width), got {got}")
    f = features.detach().to("cpu", torch.float32)
    if not torch.isfinite(f).all() or bool((f.norm(dim=1) == 0).any()):
        raise InputError("features: non-finite values or all-zero rows")
    return F.normalize(f, dim=1).contiguous()


def _sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def _import_locked(out: Path, ws, G, extractor, features, reader, settings: dict, *, batch_size, device, progress,
                   index, generator_sha256, generator_name, extra, note) -> Path:
    from tqdm import tqdm

    t_start = time.perf_counter()
    key, num, chunk_size = _key(settings), len(ws), settings["chunk_size"]
    thumbnails, size = settings["thumbnail_size"] is not None, settings["thumbnail_size"]
    if (out / MANIFEST_NAME).exists():
        old = _read_json(out / MANIFEST_NAME)
        if old.get("key") == key and old.get("count") == num:
            note(f"{out}: already a complete bank of these {num} fakes; nothing to do")
            return out
        diff = _diff(old.get("settings", {}), settings) or f"count {old.get('count')} -> {num}"
        raise InputError(f"--out {str(out)!r} already holds a finished bank made with other settings ({diff}); "
                         "choose another folder")
    if (out / BUILD_NAME).exists():
        old = _read_json(out / BUILD_NAME)
        if old.get("key") != key:
            raise InputError(f"--out {str(out)!r} holds an unfinished bank made with other settings "
                             f"({_diff(old.get('settings', {}), settings)}); re-run with its settings or "
                             "choose another folder")
    else:
        foreign = [p.name for p in out.iterdir() if p.name not in _IGNORED]
        if foreign:
            raise InputError(f"--out {str(out)!r} is not empty and not a bank (holds "
                             f"{', '.join(sorted(foreign)[:5])}); choose a new folder")
    _write_json(out / BUILD_NAME, {"format": FORMAT, "key": key, "num": num, "settings": settings, "started": _now()})

    n_chunks = math.ceil(num / chunk_size)
    counts = [min(chunk_size, num - c * chunk_size) for c in range(n_chunks)]
    cols = math.ceil(math.sqrt(chunk_size))
    chunk_dir, thumb_dir = out / CHUNK_DIR, out / THUMB_DIR
    chunk_dir.mkdir(exist_ok=True)
    if thumbnails:
        thumb_dir.mkdir(exist_ok=True)

    def done(c: int) -> bool:
        meta = _chunk_meta(chunk_dir / f"{_chunk_name(c)}.safetensors")
        ok = meta is not None and meta.get("key") == key and meta.get("count") == str(counts[c])
        return ok and (not thumbnails or (thumb_dir / f"{_chunk_name(c)}.png").is_file())

    todo = [c for c in range(n_chunks) if not done(c)]
    if len(todo) < n_chunks:
        note(f"resuming: {n_chunks - len(todo)} of {n_chunks} chunks already written")
    render = features is None or (thumbnails and reader is None)
    bar = tqdm(total=num, initial=num - sum(counts[c] for c in todo), unit="fake", desc="bank import",
               disable=not progress, dynamic_ncols=True)
    try:
        for c in todo:
            start, stop = c * chunk_size, c * chunk_size + counts[c]
            feats, tiles = [], []
            for s in range(start, stop, batch_size):
                e = min(s + batch_size, stop)
                if render:
                    with torch.no_grad():
                        _, x = _render_quantized(G, ws[s:e].to(device))
                    if features is None:
                        f = extractor(x)
                        if f.ndim != 2 or f.shape[1] != int(extractor.dim):
                            raise InputError(f"extractor {extractor.name!r} returned shape {tuple(f.shape)}, "
                                             f"expected [B, {extractor.dim}]")
                        feats.append(f.float().cpu())
                    if thumbnails and reader is None:
                        tiles.append(_thumbs(x, size))
                if thumbnails and reader is not None:
                    tiles.append(_tiles(reader(s, e, size), e - s, size))
                bar.update(e - s)
            if thumbnails:
                _write_png(thumb_dir / f"{_chunk_name(c)}.png", _sheet(np.concatenate(tiles), cols))
            f = torch.cat(feats) if features is None else features[start:stop]
            _write_chunk(chunk_dir / f"{_chunk_name(c)}.safetensors", ws[start:stop].clone(), f,
                         {"key": key, "chunk": str(c), "start": str(start), "count": str(counts[c]),
                          "batch_size": str(batch_size), "device": str(device)})
    finally:
        bar.close()
    for p in list(chunk_dir.glob("chunk_*.safetensors")) + list(thumb_dir.glob("chunk_*.png")):
        stem = p.name.split(".")[0]
        if stem[6:].isdigit() and int(stem[6:]) >= n_chunks:
            p.unlink()
    return _finish(out, G, extractor, settings, key=key, counts=counts, cols=cols, index=index,
                   generator_sha256=generator_sha256, generator_name=generator_name, extra=extra,
                   run={"batch_size": batch_size, "device": str(device),
                        "seconds_this_run": round(time.perf_counter() - t_start, 3)}, note=note)


def _tiles(tiles: Any, n: int, size: int) -> np.ndarray:
    tiles = np.asarray(tiles)
    if tiles.dtype != np.uint8 or tiles.shape != (n, size, size, 3):
        raise InputError(f"thumbnail_reader returned {tiles.dtype} {list(tiles.shape)}, expected uint8 "
                         f"[{n}, {size}, {size}, 3]")
    return tiles


def _finish(out: Path, G, extractor, settings: dict, *, key, counts, cols, index, generator_sha256, generator_name,
            extra, run, note) -> Path:
    """Index and manifest, as :func:`falco.bank.build_bank` writes them after its last chunk."""
    from safetensors.torch import load as _load

    chunk_size, thumbnails = settings["chunk_size"], settings["thumbnail_size"] is not None
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
        fi = FeatureIndex.build(np.concatenate(features), "cosine", index, seed=0)
    index_notes = [str(w.message) for w in caught]
    for msg in index_notes:
        note(f"index: {msg}")
    fi.save(out / INDEX_NAME)
    publish_mode(out / INDEX_NAME)
    note(f"index: {fi.kind} {fi.params or ''}".rstrip())
    manifest = {
        "format": FORMAT,
        "created": _now(),
        "key": key,
        "count": sum(counts),
        "w_dim": settings["w_dim"],
        "num_ws": settings["num_ws"],
        "z_dim": settings["z_dim"],
        "truncation": settings["truncation"],
        "seed": None,
        "chunk_size": chunk_size,
        "noise_mode": NOISE_MODE,
        "pipeline": settings["pipeline"],
        "z": None,
        "source": settings["source"],
        "generator": {
            "fingerprint": settings["generator_fingerprint"],
            "sha256": generator_sha256,
            "name": generator_name,
            "source_layout": getattr(G, "source_layout", None),
            "img_resolution": getattr(G, "img_resolution", None),
            "w_dim": settings["w_dim"],
            "num_ws": settings["num_ws"],
        },
        "features": {
            "name": settings["features_name"],
            "dim": settings["features_dim"],
            "fingerprint": settings["features_fingerprint"],
            "source": getattr(extractor, "source", None),
            "preprocessing": settings["features_preprocessing"],
            "metric": "cosine",
            "normalized": True,
            "imported": settings["features_sha256"] is not None,
        },
        "index": {"file": INDEX_NAME, "kind": fi.kind, "metric": fi.metric, "params": fi.params,
                  "notes": index_notes},
        "thumbnails": {"size": settings["thumbnail_size"], "cols": cols, "from": settings["thumbnails_from"]}
        if thumbnails else None,
        "chunks": chunks,
        "settings": settings,
        "build": run,
    }
    for k, v in extra.items():
        manifest.setdefault(k, v)
    _write_json(out / MANIFEST_NAME, manifest)
    return out
