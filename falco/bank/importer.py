"""Writing a fake bank from w codes made elsewhere (e.g. the reference FALCO's fakes).

:func:`import_bank` writes the same directory as :func:`falco.bank.build_bank` (chunks of ``ws``
and ``features``, contact sheets, FAISS index, ``manifest.json`` written last), with the
build's own writers (:mod:`falco.bank.writer`), but the codes are given instead of sampled:
nothing records a seed, and the manifest's ``source`` says where the codes came from. Features
are computed the way ``build_bank`` computes them (``render_256`` with noise 'const', uint8,
the extractor) unless given; thumbnails are rendered unless a reader of existing images is
given. Chunks are the unit of resuming, as in a build: re-run the same import to finish an
interrupted one.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from falco.bank.build import model_settings
from falco.bank.layout import NOISE_MODE, _check_int
from falco.bank.writer import (check_extractor, check_index_kind, check_on_device, chunk_layout, claim_bank_dir,
                               drop_extra_chunks, embed, finish_bank, pending_chunks, render_quantized, save_chunk,
                               settings_key, thumbs)
from falco.errors import InputError
from falco.run.inputs import lock_output_dir, remove_stale_temps

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
    check_index_kind(index)
    if not isinstance(ws, torch.Tensor) or ws.ndim != 2 or ws.shape[0] < 1 or ws.shape[1] != int(G.w_dim):
        got = list(ws.shape) if isinstance(ws, torch.Tensor) else type(ws).__name__
        raise InputError(f"ws: expected w codes [N, {G.w_dim}] (the generator's w_dim), got {got}")
    ws = ws.detach().to("cpu", torch.float32).contiguous()
    if not torch.isfinite(ws).all():
        raise InputError("ws: the codes hold non-finite values")
    check_extractor(extractor)
    if features is not None:
        features = _check_features(features, len(ws), int(extractor.dim))
    device = torch.device(device)
    check_on_device(G, extractor, device)
    settings = {
        **model_settings(G, extractor),
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
    key, num, chunk_size = settings_key(settings), len(ws), settings["chunk_size"]
    thumbnails, size = settings["thumbnail_size"] is not None, settings["thumbnail_size"]
    if claim_bank_dir(out, settings, key, num, made="made"):
        note(f"{out}: already a complete bank of these {num} fakes; nothing to do")
        return out

    counts, cols = chunk_layout(num, chunk_size)
    todo = pending_chunks(out, key, counts, thumbnails, note)
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
                        _, x = render_quantized(G, ws[s:e].to(device))
                    if features is None:
                        feats.append(embed(extractor, x))
                    if thumbnails and reader is None:
                        tiles.append(thumbs(x, size))
                if thumbnails and reader is not None:
                    tiles.append(_tiles(reader(s, e, size), e - s, size))
                bar.update(e - s)
            f = torch.cat(feats) if features is None else features[start:stop]
            save_chunk(out, c, key=key, start=start, ws=ws[start:stop].clone(), features=f,
                       tiles=tiles if thumbnails else None, cols=cols, batch_size=batch_size, device=device)
    finally:
        bar.close()
    drop_extra_chunks(out, len(counts))
    return finish_bank(out, G, extractor, settings, key=key, counts=counts, cols=cols, index=index, z=None,
                       generator_sha256=generator_sha256, generator_name=generator_name, extra=extra,
                       batch_size=batch_size, device=device, started=t_start, note=note)


def _tiles(tiles: Any, n: int, size: int) -> np.ndarray:
    tiles = np.asarray(tiles)
    if tiles.dtype != np.uint8 or tiles.shape != (n, size, size, 3):
        raise InputError(f"thumbnail_reader returned {tiles.dtype} {list(tiles.shape)}, expected uint8 "
                         f"[{n}, {size}, {size}, 3]")
    return tiles
