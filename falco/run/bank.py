"""``falco bank build``: load the generator and the feature extractor, then build (or resume) a bank."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from falco.config import BankConfig, as_dict


def run_bank_build(cfg: BankConfig, *, echo: Callable[[str], object] = print) -> Path:
    """Run ``falco bank build`` with the given settings; returns the bank directory."""
    import torch

    from falco import __version__
    from falco.bank import build_bank
    from falco.errors import InputError
    from falco.bank.features import EXTRACTORS, load_extractor
    from falco.run.inputs import check_writable_dir
    from falco.models.zoo import load_role, resolve_device, tiny_notice
    from falco.pretrained.modelset import file_sha256, locate, models_dir, resolve_model

    if cfg.features not in EXTRACTORS:  # before loading anything
        raise InputError(f"--features must be one of {', '.join(EXTRACTORS)}, got {cfg.features!r}")
    if cfg.index not in ("auto", "flat", "ivf", "hnsw"):
        raise InputError(f"--index must be auto, flat, ivf or hnsw, got {cfg.index!r}")
    check_writable_dir(cfg.out)
    device = resolve_device(cfg.device)
    notice = tiny_notice(cfg.models)
    if notice:
        echo(f"warning: {notice}")
    gen_path = resolve_model("generator", cfg.models)
    entry, _ = locate("generator", cfg.models)
    root = models_dir(cfg.models)
    sha = file_sha256(gen_path, cache_dir=root if gen_path.parent.resolve() == root.resolve() else None)
    G = load_role("generator", cfg.models, device)
    extractor = load_extractor(cfg.features, cfg.models, device)
    echo(f"generator {entry.name} ({gen_path.name}, {G.img_resolution} px, w_dim {G.w_dim}); "
         f"features {extractor.name} ({getattr(extractor, 'source', '')}, dim {extractor.dim}); device {device}")
    return build_bank(
        cfg.out, G, extractor, num=cfg.num, truncation=cfg.truncation, seed=cfg.seed,
        batch_size=cfg.batch_size, chunk_size=cfg.chunk_size, device=device, progress=cfg.progress,
        thumbnails=cfg.thumbnails, thumbnail_size=cfg.thumbnail_size, index=cfg.index,
        generator_sha256=sha, generator_name=entry.name,
        extra={"config": as_dict(cfg), "env": {"falco": __version__, "torch": torch.__version__,
                                               "device": str(device), "tiny_models": bool(notice)}},
        echo=echo,
    )
