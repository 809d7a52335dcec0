"""Building a fake bank: sample z per chunk, map, render, embed, write chunks, index, manifest."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from falco.bank.layout import (
    CHUNK_DIR,
    NOISE_MODE,
    PIPELINE,
    _check_int,
    _chunk_meta,
    _chunk_name,
)
from falco.errors import InputError
from falco.bank.features import extractor_fingerprint, module_fingerprint
from falco.bank.writer import (check_extractor, check_index_kind, check_on_device, chunk_layout, claim_bank_dir,
                               drop_extra_chunks, embed, finish_bank, pending_chunks, render_quantized, save_chunk,
                               settings_key, thumbs)
from falco.run.inputs import lock_output_dir, remove_stale_temps

#: How a bank's z are drawn, as its manifest records it.
Z_RULE = "chunk c: torch.randn(chunk_size, z_dim, generator=manual_seed(SeedSequence([seed, c]))), first count rows"


def generator_fingerprint(G: torch.nn.Module) -> str:
    """sha256 of a generator's weights and buffers (``w_avg`` and noise buffers included).

    Two generators with the same fingerprint render the same faces from the same w.
    """
    return module_fingerprint(G, "stylegan2", int(G.w_dim), int(G.num_ws))


def model_settings(G: torch.nn.Module, extractor: Any) -> dict:
    """The bank settings that describe its generator and feature extractor."""
    return {
        "generator_fingerprint": generator_fingerprint(G),
        "w_dim": int(G.w_dim),
        "num_ws": int(G.num_ws),
        "z_dim": int(getattr(G, "z_dim", G.w_dim)),
        "features_name": str(extractor.name),
        "features_dim": int(extractor.dim),
        "features_fingerprint": extractor_fingerprint(extractor),
    }


def chunk_z(seed: int, chunk: int, chunk_size: int, z_dim: int) -> torch.Tensor:
    """The z vectors of chunk ``chunk`` (CPU, float32), from ``SeedSequence([seed, chunk])``.

    Shape:
        returns ``[chunk_size, z_dim]``.
    """
    state = np.random.SeedSequence([int(seed), int(chunk)]).generate_state(2, np.uint32)
    gen = torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))
    return torch.randn(chunk_size, z_dim, generator=gen)


def render_fakes(G: torch.nn.Module, ws: torch.Tensor, *, batch_size: int = 16) -> np.ndarray:
    """Render bank w codes as the bank saw them: 256 px, noise 'const', uint8 RGB.

    Shape:
        ws ``[N, w_dim]`` (or W+ ``[N, num_ws, w_dim]``) -> ``[N, 256, 256, 3]`` uint8.
    """
    dev = next(G.parameters()).device
    out = []
    with torch.no_grad():
        for s in range(0, len(ws), batch_size):
            u8, _ = render_quantized(G, ws[s:s + batch_size].to(dev))
            out.append(u8.permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


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
    check_index_kind(index)
    check_extractor(extractor)
    device = torch.device(device)
    check_on_device(G, extractor, device)

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
        **model_settings(G, extractor),
        "truncation": truncation,
        "seed": seed,
        "chunk_size": chunk_size,
        "noise_mode": NOISE_MODE,
        "pipeline": PIPELINE,
        "thumbnail_size": thumbnail_size if thumbnails else None,
    }


def _build_locked(out: Path, G, extractor, *, num, truncation, seed, batch_size, chunk_size, device,
                  progress, thumbnails, thumbnail_size, index, generator_sha256, generator_name,
                  extra, note) -> Path:
    from tqdm import tqdm

    t_start = time.perf_counter()
    settings = _settings(G, extractor, truncation=truncation, seed=seed, chunk_size=chunk_size,
                         thumbnails=thumbnails, thumbnail_size=thumbnail_size)
    key = settings_key(settings)
    if claim_bank_dir(out, settings, key, num):
        note(f"{out}: already a complete bank of {num} fakes with these settings; nothing to do")
        return out

    counts, cols = chunk_layout(num, chunk_size)
    n_chunks = len(counts)
    todo = pending_chunks(out, key, counts, thumbnails, note)
    if len(todo) < n_chunks:
        made = {(m.get("batch_size"), m.get("device")) for c in range(n_chunks) if c not in todo
                for m in [_chunk_meta(out / CHUNK_DIR / f"{_chunk_name(c)}.safetensors") or {}]}
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
                    _, x = render_quantized(G, w)
                    ws.append(w.float().cpu())
                    feats.append(embed(extractor, x))
                    if thumbnails:
                        tiles.append(thumbs(x, thumbnail_size))
                    bar.update(len(w))
            save_chunk(out, c, key=key, start=c * chunk_size, ws=torch.cat(ws), features=torch.cat(feats),
                       tiles=tiles if thumbnails else None, cols=cols, batch_size=batch_size, device=device)
    finally:
        bar.close()

    drop_extra_chunks(out, n_chunks)  # chunks of an earlier, larger num are not part of this bank
    return finish_bank(out, G, extractor, settings, key=key, counts=counts, cols=cols, index=index, z=Z_RULE,
                       generator_sha256=generator_sha256, generator_name=generator_name, extra=extra,
                       batch_size=batch_size, device=device, started=t_start, note=note)
