"""Building a fake bank: sample z per chunk, map, render, embed, write chunks, index, manifest."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from falco.bank.layout import (
    _IGNORED,
    _META_KEY,
    BUILD_NAME,
    CHUNK_DIR,
    FORMAT,
    INDEX_NAME,
    MANIFEST_NAME,
    NOISE_MODE,
    PIPELINE,
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
from falco.bank.features import extractor_fingerprint, module_fingerprint
from falco.latent.images import quantize_uint8
from falco.run.inputs import (
    lock_output_dir,
    publish_mode,
    remove_stale_temps,
    save_tensors,
)
from falco.bank.index import (
    FeatureIndex,
)


def generator_fingerprint(G: torch.nn.Module) -> str:
    """sha256 of a generator's weights and buffers (``w_avg`` and noise buffers included).

    Two generators with the same fingerprint render the same faces from the same w.
    """
    return module_fingerprint(G, "stylegan2", int(G.w_dim), int(G.num_ws))


def chunk_z(seed: int, chunk: int, chunk_size: int, z_dim: int) -> torch.Tensor:
    """The z vectors of chunk ``chunk`` (CPU, float32), from ``SeedSequence([seed, chunk])``.

    Shape:
        returns ``[chunk_size, z_dim]``.
    """
    state = np.random.SeedSequence([int(seed), int(chunk)]).generate_state(2, np.uint32)
    gen = torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))
    return torch.randn(chunk_size, z_dim, generator=gen)


def _render_quantized(G: torch.nn.Module, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from falco.latent.invert import render_256

    return quantize_uint8(render_256(G, w, noise_mode=NOISE_MODE))


def render_fakes(G: torch.nn.Module, ws: torch.Tensor, *, batch_size: int = 16) -> np.ndarray:
    """Render bank w codes as the bank saw them: 256 px, noise 'const', uint8 RGB.

    Shape:
        ws ``[N, w_dim]`` (or W+ ``[N, num_ws, w_dim]``) -> ``[N, 256, 256, 3]`` uint8.
    """
    dev = next(G.parameters()).device
    out = []
    with torch.no_grad():
        for s in range(0, len(ws), batch_size):
            u8, _ = _render_quantized(G, ws[s:s + batch_size].to(dev))
            out.append(u8.permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


def _thumbs(x: torch.Tensor, size: int) -> np.ndarray:
    """[B, 3, 256, 256] in [-1, 1] -> uint8 [B, size, size, 3] (area-averaged)."""
    t = torch.nn.functional.interpolate(x, size=(size, size), mode="area")
    u8, _ = quantize_uint8(t)
    return u8.permute(0, 2, 3, 1).cpu().numpy()


def _sheet(tiles: np.ndarray, cols: int) -> np.ndarray:
    n, s = tiles.shape[0], tiles.shape[1]
    rows = math.ceil(n / cols)
    sheet = np.zeros((rows * s, cols * s, 3), np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        sheet[r * s:(r + 1) * s, c * s:(c + 1) * s] = tiles[i]
    return sheet


def _device_of(module: torch.nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def build_bank(
    out: str | os.PathLike,
    G: torch.nn.Module,
    extractor: Any,
    *,
    num: int,
    truncation: float = 0.7,
    seed: int = 0,
    batch_size: int = 32,
    chunk_size: int = 1000,
    device: str | torch.device = "cpu",
    progress: bool = True,
    thumbnails: bool = True,
    thumbnail_size: int = 64,
    index: str = "auto",
    generator_sha256: str | None = None,
    generator_name: str | None = None,
    extra: Mapping[str, Any] | None = None,
    echo: Callable[[str], Any] | None = None,
) -> Path:
    """Build (or finish) a fake bank in ``out``.

    Args:
        out: bank directory (created; resumed when it holds an unfinished bank with the same
            settings; returned as is when it holds the same finished bank).
        G: StyleGAN2 generator (``mapping``, ``synthesis``, ``w_avg``), on ``device``.
        extractor: a :class:`falco.bank.features.FeatureExtractor`, on ``device``; its
            ``preprocessing`` id is recorded (``features.preprocessing``) and the bank's queries
            are embedded with it.
        num: number of fakes.
        truncation: psi toward ``w_avg``, in [0, 1] (the paper: 0.7).
        seed: z seed (>= 0).
        batch_size: fakes per render/embed pass.
        chunk_size: fakes per chunk file (the unit of resuming).
        device: where rendering runs (G and the extractor must already be there).
        progress: show a progress bar with ETA (stderr).
        thumbnails: write a contact sheet per chunk.
        thumbnail_size: thumbnail side in px (8..256).
        index: FeatureIndex kind: 'auto' (exact up to 250,000 fakes, else calibrated IVF when it
            reaches recall@1 0.95), 'flat', 'ivf' or 'hnsw'.
        generator_sha256, generator_name: the model file's sha256 and name, recorded.
        extra: more top-level manifest keys (e.g. the command's config).
        echo: receives one-line notes (resuming, index choice); default silent.

    Returns:
        ``out`` as a Path.

    Raises:
        InputError: a bad argument, ``out`` in use or holding something else (another bank,
            other files), G or the extractor not on ``device``.
    """
    note = echo or (lambda _msg: None)
    num = _check_int(num, "num", 1)
    seed = _check_int(seed, "seed", 0)
    batch_size = _check_int(batch_size, "batch_size", 1)
    chunk_size = _check_int(chunk_size, "chunk_size", 1)
    thumbnail_size = _check_int(thumbnail_size, "thumbnail_size", 8, 256)
    try:
        truncation = float(truncation)
    except (TypeError, ValueError):
        raise InputError(f"truncation must be a number in [0, 1], got {truncation!r}") from None
    if not 0.0 <= truncation <= 1.0:
        raise InputError(f"truncation must be in [0, 1], got {truncation}")
    if index not in ("auto", "flat", "ivf", "hnsw"):
        raise InputError(f"index must be 'auto', 'flat', 'ivf' or 'hnsw', got {index!r}")
    for attr in ("name", "dim"):
        if not hasattr(extractor, attr):
            raise InputError(f"extractor: expected a FeatureExtractor with .{attr}, got {type(extractor).__name__}")
    device = torch.device(device)
    for what, module in (("G", G), ("extractor", getattr(extractor, "net", None))):
        if isinstance(module, torch.nn.Module) and _device_of(module).type != device.type:
            raise InputError(f"{what} is on {_device_of(module)} but device={str(device)!r}; move it first")

    out = Path(out)
    with lock_output_dir(out):
        remove_stale_temps(out, older_than=time.time())  # the lock is ours: every temp file is stale
        return _build_locked(out, G, extractor, num=num, truncation=truncation, seed=seed,
                             batch_size=batch_size, chunk_size=chunk_size, device=device,
                             progress=progress, thumbnails=thumbnails, thumbnail_size=thumbnail_size,
                             index=index, generator_sha256=generator_sha256,
                             generator_name=generator_name, extra=dict(extra or {}), note=note)


def _settings(G, extractor, *, truncation, seed, chunk_size, thumbnails, thumbnail_size) -> dict:
    """Everything the bank's content depends on (apart from num, batch size and device)."""
    return {
        "generator_fingerprint": generator_fingerprint(G),
        "w_dim": int(G.w_dim),
        "num_ws": int(G.num_ws),
        "z_dim": int(getattr(G, "z_dim", G.w_dim)),
        "features_name": str(extractor.name),
        "features_dim": int(extractor.dim),
        "features_fingerprint": extractor_fingerprint(extractor),
        "truncation": truncation,
        "seed": seed,
        "chunk_size": chunk_size,
        "noise_mode": NOISE_MODE,
        "pipeline": PIPELINE,
        "thumbnail_size": thumbnail_size if thumbnails else None,
    }


def _key(settings: Mapping) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]


def _diff(old: Mapping, new: Mapping) -> str:
    names = [k for k in new if old.get(k) != new.get(k)]
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" if "fingerprint" not in k else f"{k} differs"
                     for k in names)


def _build_locked(out: Path, G, extractor, *, num, truncation, seed, batch_size, chunk_size, device,
                  progress, thumbnails, thumbnail_size, index, generator_sha256, generator_name,
                  extra, note) -> Path:
    from tqdm import tqdm

    t_start = time.perf_counter()
    settings = _settings(G, extractor, truncation=truncation, seed=seed, chunk_size=chunk_size,
                         thumbnails=thumbnails, thumbnail_size=thumbnail_size)
    key = _key(settings)
    manifest_path, build_path = out / MANIFEST_NAME, out / BUILD_NAME

    if manifest_path.exists():
        old = _read_json(manifest_path)
        if old.get("key") == key and old.get("count") == num:
            note(f"{out}: already a complete bank of {num} fakes with these settings; nothing to do")
            return out
        diff = _diff(old.get("settings", {}), settings) or f"count {old.get('count')} -> {num}"
        raise InputError(f"--out {str(out)!r} already holds a finished bank built with other settings "
                         f"({diff}); choose another folder")
    if build_path.exists():
        old = _read_json(build_path)
        if old.get("key") != key:
            raise InputError(f"--out {str(out)!r} holds an unfinished bank built with other settings "
                             f"({_diff(old.get('settings', {}), settings)}); re-run with its settings or "
                             "choose another folder")
    else:
        foreign = [p.name for p in out.iterdir() if p.name not in _IGNORED]
        if foreign:
            raise InputError(f"--out {str(out)!r} is not empty and not a bank (holds {', '.join(sorted(foreign)[:5])}); "
                             "choose a new folder")
    _write_json(build_path, {"format": FORMAT, "key": key, "num": num, "settings": settings,
                             "started": _now()})

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
        made = {(m.get("batch_size"), m.get("device")) for c in range(n_chunks) if c not in todo
                for m in [_chunk_meta(chunk_dir / f"{_chunk_name(c)}.safetensors") or {}]}
        if made != {(str(batch_size), str(device))}:
            note(f"note: earlier chunks were made with (batch size, device) {sorted(made)}, this run uses "
                 f"({batch_size}, {device}); the bank is valid but not bit-identical to a single run")
    bar = tqdm(total=num, initial=num - sum(counts[c] for c in todo), unit="fake", desc="bank",
               disable=not progress, dynamic_ncols=True)
    z_dim = settings["z_dim"]
    try:
        for c in todo:
            z = chunk_z(seed, c, chunk_size, z_dim)[: counts[c]]
            ws, feats, tiles = [], [], []
            with torch.no_grad():
                for s in range(0, len(z), batch_size):
                    w = G.mapping(z[s:s + batch_size].to(device), truncation_psi=truncation)
                    _, x = _render_quantized(G, w)
                    f = extractor(x)
                    if f.ndim != 2 or f.shape[1] != int(extractor.dim):
                        raise InputError(f"extractor {extractor.name!r} returned shape {tuple(f.shape)}, "
                                         f"expected [B, {extractor.dim}]")
                    ws.append(w.float().cpu())
                    feats.append(f.float().cpu())
                    if thumbnails:
                        tiles.append(_thumbs(x, thumbnail_size))
                    bar.update(len(w))
            if thumbnails:
                _write_png(thumb_dir / f"{_chunk_name(c)}.png", _sheet(np.concatenate(tiles), cols))
            _write_chunk(chunk_dir / f"{_chunk_name(c)}.safetensors", torch.cat(ws), torch.cat(feats),
                         {"key": key, "chunk": str(c), "start": str(c * chunk_size), "count": str(counts[c]),
                          "batch_size": str(batch_size), "device": str(device)})
    finally:
        bar.close()

    # Chunks of an earlier, larger num are not part of this bank.
    for p in list(chunk_dir.glob("chunk_*.safetensors")) + list(thumb_dir.glob("chunk_*.png")):
        stem = p.name.split(".")[0]
        if stem.startswith("chunk_") and stem[6:].isdigit() and int(stem[6:]) >= n_chunks:
            p.unlink()

    chunks, features = [], []
    for c in range(n_chunks):
        rel = f"{CHUNK_DIR}/{_chunk_name(c)}.safetensors"
        blob = (out / rel).read_bytes()
        from safetensors.torch import load as _load

        features.append(_load(blob)["features"].numpy())
        chunks.append({"file": rel, "start": c * chunk_size, "count": counts[c],
                       "sha256": hashlib.sha256(blob).hexdigest(),
                       "thumbnails": f"{THUMB_DIR}/{_chunk_name(c)}.png" if thumbnails else None})
    features = np.concatenate(features)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fi = FeatureIndex.build(features, "cosine", index, seed=seed)
    index_notes = [str(w.message) for w in caught]
    for msg in index_notes:
        note(f"index: {msg}")
    fi.save(out / INDEX_NAME)
    publish_mode(out / INDEX_NAME)  # faiss writes through a private temp file
    note(f"index: {fi.kind} {fi.params or ''}".rstrip())

    manifest = {
        "format": FORMAT,
        "created": _now(),
        "key": key,
        "count": num,
        "w_dim": settings["w_dim"],
        "num_ws": settings["num_ws"],
        "z_dim": z_dim,
        "truncation": truncation,
        "seed": seed,
        "chunk_size": chunk_size,
        "noise_mode": NOISE_MODE,
        "pipeline": PIPELINE,
        "z": "chunk c: torch.randn(chunk_size, z_dim, generator=manual_seed(SeedSequence([seed, c]))), first count rows",
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
            # what the extractor did to each fake before its network; the queries do the same
            "preprocessing": getattr(extractor, "preprocessing", None),
            "metric": "cosine",
            "normalized": True,
        },
        "index": {"file": INDEX_NAME, "kind": fi.kind, "metric": fi.metric, "params": fi.params,
                  "notes": index_notes},
        "thumbnails": {"size": thumbnail_size, "cols": cols} if thumbnails else None,
        "chunks": chunks,
        "settings": settings,
        "build": {"batch_size": batch_size, "device": str(device), "seconds_this_run": round(time.perf_counter() - t_start, 3)},
    }
    for k, v in extra.items():
        manifest.setdefault(k, v)
    _write_json(out / MANIFEST_NAME, manifest)
    return out


def _write_chunk(path: Path, ws: torch.Tensor, features: torch.Tensor, metadata: dict[str, str]) -> None:
    """One chunk file, atomically (a hook point for tests that simulate a crash).

    The metadata goes in as one JSON string: safetensors writes a metadata dict in a random
    key order, which would make identical chunks differ byte-wise.
    """
    save_tensors(path, {"ws": ws, "features": features},
                 metadata={_META_KEY: json.dumps(metadata, sort_keys=True)})
