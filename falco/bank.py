"""The fake bank: generated faces' w codes and features, with a FAISS index for pairing.

FALCO starts each optimisation from the fake whose features are nearest the real face's
(paper: 60,000 fakes at truncation 0.7, FaRL features, cosine). :func:`build_bank` samples
z with a recorded seed, maps it to w (truncated toward ``w_avg``), renders, embeds, and
writes a bank directory; :class:`Bank` opens it, searches it and pairs real faces with fakes.

What a fake's features are computed from: ``render_256(G, w)`` (the generator's image pooled
to 256 px, noise 'const'), quantised to uint8 (:func:`falco.features.quantize_uint8`), then
the extractor, i.e. exactly what :func:`falco.features.embed_faces` computes for a 256-px
aligned real crop. :func:`render_fakes` renders bank entries the same way.

Bank directory::

    manifest.json                 written last: a bank without it is unfinished
    build.json                    the build's settings, written first (for resuming)
    chunks/chunk_NNNNN.safetensors  ``ws`` [n, w_dim] float32, ``features`` [n, dim] float32
    thumbs/chunk_NNNNN.png        contact sheet of the chunk's fakes (``thumbnail_size`` px each,
                                  row-major, ``thumbnail_cols`` per row); see :meth:`Bank.thumbnail`
    index.faiss                   FeatureIndex over the features (cosine)

Reproducibility and resuming. Fakes are made in chunks of ``chunk_size``; chunk ``c`` draws
``chunk_size`` z vectors on the CPU from a generator seeded with ``SeedSequence([seed, c])``
and keeps the first ones it needs, so fake ``i``'s z depends only on (seed, chunk_size, i),
not on ``num``, the batch size or the device. Each chunk file (and its contact sheet, written
before it) is written atomically; a killed build re-run with the same settings keeps the
finished chunks and makes the rest, and the result equals an uninterrupted build bit for bit
(same device and batch size; the batch size and device of each chunk are recorded in its
metadata). The index and ``manifest.json`` are written after the last chunk.

Compatibility. The manifest records the generator's weight fingerprint (sha256 of its state
dict, :func:`generator_fingerprint`; the model file's sha256 too when the caller passes it)
and the extractor's name, width and fingerprint; :meth:`Bank.check_compatible` refuses a
generator or extractor that differs, since a bank's w codes only mean something to the
generator that made them and its features only to the extractor that made them.
"""

from __future__ import annotations

import datetime as _dt
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

from falco.errors import InputError
from falco.features import extractor_fingerprint, module_fingerprint, quantize_uint8
from falco.io import (
    atomic_path,
    atomic_write_bytes,
    load_tensors,
    lock_output_dir,
    remove_stale_temps,
    save_tensors,
)
from falco.search import (
    FeatureIndex,
    as_features,
    check_metric,
    exact_search,
    pair_without_reuse,
)

__all__ = [
    "FORMAT",
    "Bank",
    "bank_status",
    "build_bank",
    "chunk_z",
    "exact_search",
    "generator_fingerprint",
    "render_fakes",
]

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


# ----------------------------------------------------------------------------- pieces


def generator_fingerprint(G: torch.nn.Module) -> str:
    """sha256 of a generator's weights and buffers (``w_avg`` and noise buffers included).

    Two generators with the same fingerprint render the same faces from the same w.
    About 0.3 s for the 1024-px FFHQ generator.
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
    from falco.inversion import render_256

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


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    _publish(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def _publish(path: Path) -> None:
    """Give a file written through a private temp file (mode 0600) the usual mode (0666 & ~umask)."""
    os.chmod(path, 0o666 & ~_UMASK)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def _chunk_name(c: int) -> str:
    return f"chunk_{c:05d}"


def _write_json(path: Path, data: Mapping) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())
    _publish(path)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


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
        extractor: a :class:`falco.features.FeatureExtractor`, on ``device``.
        num: number of fakes.
        truncation: psi toward ``w_avg``, in [0, 1] (the paper: 0.7).
        seed: z seed (>= 0).
        batch_size: fakes per render/embed pass.
        chunk_size: fakes per chunk file (the unit of resuming).
        device: where rendering runs (G and the extractor must already be there).
        progress: show a progress bar with ETA (stderr).
        thumbnails: write a contact sheet per chunk.
        thumbnail_size: thumbnail side in px (8..256).
        index: FeatureIndex kind: 'auto' (exact below 50,000 fakes, else calibrated IVF when it
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
    _publish(out / INDEX_NAME)
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
    _publish(path)


# ----------------------------------------------------------------------------- reading


def bank_status(path: str | os.PathLike) -> dict:
    """What a bank directory holds, without loading it.

    Returns:
        ``{"state": "complete" | "unfinished" | "absent" | "not a bank", "count", "chunks_done",
        "chunks_total", "manifest" | "build"}``.
    """
    path = Path(path)
    if not path.is_dir():
        return {"state": "absent"}
    if (path / MANIFEST_NAME).is_file():
        m = _read_json(path / MANIFEST_NAME)
        return {"state": "complete", "count": m.get("count"), "chunks_done": len(m.get("chunks", [])),
                "chunks_total": len(m.get("chunks", [])), "manifest": m}
    if (path / BUILD_NAME).is_file():
        b = _read_json(path / BUILD_NAME)
        num, size, key = int(b.get("num", 0)), int(b.get("settings", {}).get("chunk_size", 1)), b.get("key")
        total = math.ceil(num / size) if num else 0
        done = sum(1 for c in range(total)
                   if (_chunk_meta(path / CHUNK_DIR / f"{_chunk_name(c)}.safetensors") or {}).get("key") == key)
        return {"state": "unfinished", "count": num, "chunks_done": done, "chunks_total": total, "build": b}
    return {"state": "not a bank"}


class Bank:
    """A finished fake bank (open with :meth:`open`).

    Attributes:
        path: the bank directory.
        manifest: its ``manifest.json`` (generator and extractor identity, truncation, seed,
            count, w_dim, num_ws, index, chunks...).

    ``ws``, ``features`` and ``index`` load on first use.
    """

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self._ws: torch.Tensor | None = None
        self._features: np.ndarray | None = None
        self._index: FeatureIndex | None = None
        self._sheet: tuple[int, np.ndarray] | None = None

    # -- opening
    @classmethod
    def open(cls, path: str | os.PathLike) -> Bank:
        """Open a finished bank.

        Raises:
            InputError: no such folder, not a bank, an unfinished bank (re-run the build), a
                format this falco does not read, or missing chunk files.
        """
        path = Path(path)
        st = bank_status(path)
        if st["state"] == "absent":
            raise InputError(f"bank {str(path)!r} does not exist")
        if st["state"] == "not a bank":
            raise InputError(f"{str(path)!r} is not a fake bank (no {MANIFEST_NAME}); build one with "
                             f"`falco bank build --out {path} --num N`")
        if st["state"] == "unfinished":
            raise InputError(f"bank {str(path)!r} is unfinished ({st['chunks_done']} of {st['chunks_total']} chunks "
                             f"written): re-run the same `falco bank build --out {path} ...` to finish it")
        m = st["manifest"]
        if m.get("format") != FORMAT:
            raise InputError(f"bank {str(path)!r}: format {m.get('format')!r}, expected {FORMAT!r}")
        missing = [c["file"] for c in m["chunks"] if not (path / c["file"]).is_file()]
        if not (path / m["index"]["file"]).is_file():
            missing.append(m["index"]["file"])
        if missing:
            raise InputError(f"bank {str(path)!r} is damaged: missing {', '.join(missing[:5])}; rebuild it")
        return cls(path, m)

    # -- contents
    def __len__(self) -> int:
        return int(self.manifest["count"])

    def __repr__(self) -> str:
        m = self.manifest
        return (f"Bank({str(self.path)!r}, count={len(self)}, features={m['features']['name']!r} "
                f"dim {m['features']['dim']}, truncation={m['truncation']}, seed={m['seed']}, "
                f"index={m['index']['kind']!r})")

    @property
    def w_dim(self) -> int:
        return int(self.manifest["w_dim"])

    @property
    def num_ws(self) -> int:
        return int(self.manifest["num_ws"])

    @property
    def dim(self) -> int:
        """Feature width."""
        return int(self.manifest["features"]["dim"])

    def _load(self) -> None:
        ws, feats = [], []
        for c in self.manifest["chunks"]:
            t = load_tensors(self.path / c["file"])
            if t["ws"].shape[0] != c["count"] or t["features"].shape[0] != c["count"]:
                raise InputError(f"bank {str(self.path)!r}: {c['file']} holds {t['ws'].shape[0]} fakes, "
                                 f"the manifest says {c['count']}; rebuild the bank")
            ws.append(t["ws"])
            feats.append(t["features"].numpy())
        self._ws = torch.cat(ws)
        self._features = np.ascontiguousarray(np.concatenate(feats))

    @property
    def ws(self) -> torch.Tensor:
        """The fakes' w codes (not W+). Shape: ``[N, w_dim]`` float32 (CPU)."""
        if self._ws is None:
            self._load()
        return self._ws

    @property
    def features(self) -> np.ndarray:
        """The fakes' features, L2-normalised. Shape: ``[N, dim]`` float32."""
        if self._features is None:
            self._load()
        return self._features

    @property
    def index(self) -> FeatureIndex:
        """The FAISS index (exact below 50,000 fakes by default; see the manifest's ``index``)."""
        if self._index is None:
            self._index = FeatureIndex.load(self.path / self.manifest["index"]["file"])
        return self._index

    def w_plus(self, indices: Any) -> torch.Tensor:
        """W+ codes of bank entries (w repeated over the layers).

        Shape:
            indices ``[Q]`` -> ``[Q, num_ws, w_dim]``.
        """
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64).reshape(-1))
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise InputError(f"indices: expected values in [0, {len(self)}), got {idx.min().item()}..{idx.max().item()}")
        return self.ws[idx][:, None].repeat(1, self.num_ws, 1)

    def thumbnail(self, i: int) -> np.ndarray:
        """Fake ``i``'s thumbnail, cut from its chunk's contact sheet.

        Shape:
            returns ``[size, size, 3]`` uint8.
        """
        from PIL import Image

        th = self.manifest.get("thumbnails")
        if not th:
            raise InputError(f"bank {str(self.path)!r} was built without thumbnails")
        i = _check_int(i, "i", 0, len(self) - 1)
        c, j = divmod(i, int(self.manifest["chunk_size"]))
        if self._sheet is None or self._sheet[0] != c:
            with Image.open(self.path / self.manifest["chunks"][c]["thumbnails"]) as im:
                self._sheet = (c, np.asarray(im.convert("RGB")))
        s, cols = int(th["size"]), int(th["cols"])
        r, k = divmod(j, cols)
        return self._sheet[1][r * s:(r + 1) * s, k * s:(k + 1) * s].copy()

    # -- search
    def search(self, features: Any, k: int = 1, metric: str = "cosine", *,
               exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """k nearest fakes of each query.

        Cosine searches use the bank's index (exact unless the manifest's index kind is
        'ivf'/'hnsw'; ``exact=True`` forces brute force); 'l2' is always exact.

        Shape:
            features ``[Q, dim]`` -> indices int64 ``[Q, k]``, distances float32 ``[Q, k]``.
        """
        metric = check_metric(metric)
        q = as_features(features, "features", dim=self.dim)
        if metric == "cosine" and not exact:
            idx, dist = self.index.search(q, k)
            short = (idx < 0).any(axis=1)  # an approximate index found fewer than k: search exactly
            if short.any():
                idx[short], dist[short] = exact_search(self.features, q[short], k=k, metric=metric)
            return idx, dist
        return exact_search(self.features, q, k=k, metric=metric)

    def pair(self, features: Any, *, reuse: bool = True, k: int = 8) -> np.ndarray:
        """One bank index per query (cosine): the nearest fake, or with ``reuse=False`` a
        different fake for every query (global greedy, :func:`falco.search.pair_without_reuse`;
        needs Q <= N; ``k`` is its initial candidate list length).

        Shape:
            features ``[Q, dim]`` -> ``[Q]`` int64.
        """
        q = as_features(features, "features", dim=self.dim)
        if reuse:
            return self.search(q, k=1)[0][:, 0]
        return pair_without_reuse(self.index, q, k=min(int(k), len(self)))

    # -- checks
    def check_compatible(self, G: torch.nn.Module | None = None, extractor: Any = None) -> None:
        """Refuse a generator or extractor other than the ones this bank was built with.

        Either may be None (not checked).

        Raises:
            InputError: naming what differs (w_dim, num_ws, weights; extractor name, width,
                weights).
        """
        m, where = self.manifest, f"bank {str(self.path)!r}"
        if G is not None:
            g = m["generator"]
            if int(G.w_dim) != self.w_dim or int(G.num_ws) != self.num_ws:
                raise InputError(f"generator: {where} was built with a generator of w_dim {self.w_dim} and "
                                 f"{self.num_ws} ws, got w_dim {G.w_dim} and {G.num_ws} ws")
            if generator_fingerprint(G) != g["fingerprint"]:
                made = g.get("name") or "another generator"
                sha = f" (file sha256 {g['sha256'][:12]}...)" if g.get("sha256") else ""
                raise InputError(f"generator: {where} was built with {made}{sha}; this generator's weights "
                                 "differ, so the bank's w codes do not render the same faces: rebuild the bank")
        if extractor is not None:
            f = m["features"]
            if str(extractor.name) != f["name"] or int(extractor.dim) != int(f["dim"]):
                raise InputError(f"extractor: {where} holds {f['name']!r} features of width {f['dim']}, "
                                 f"got {extractor.name!r} of width {extractor.dim}")
            fp = extractor_fingerprint(extractor)
            if fp is not None and f.get("fingerprint") and fp != f["fingerprint"]:
                raise InputError(f"extractor: {where} was embedded by another {f['name']!r} network "
                                 f"(weights {f.get('source') or 'unknown'}); features would not be comparable")

    def verify(self) -> list[str]:
        """Re-hash every chunk file against the manifest; returns the files that differ."""
        return [c["file"] for c in self.manifest["chunks"]
                if hashlib.sha256((self.path / c["file"]).read_bytes()).hexdigest() != c["sha256"]]
