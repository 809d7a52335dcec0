"""A reference FALCO workspace's fakes as a falco bank (``falco bank import-falco``).

The fakes' codes are the workspace's (``latent_code_w+.pt``: the reference truncates every
layer, so each fake is one w), in ``latent_code_hashes.txt`` order; thumbnails are cut from
its ``image.jpg`` files. Features are falco's extractor's (rendered as ``falco bank build``
renders), or the workspace's own ``<features>_features.pt`` when they are the same features:
checked on a sample of fakes, since the reference embedded its fakes in [-1, 1] with CLIP
mean/std, which is not what falco's extractors do to the faces they pair.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from falco.bank.importer import import_bank
from falco.compat.falco_ref import FalcoWorkspace, read_workspace
from falco.errors import InputError

__all__ = ["FEATURES_FROM", "GENERATOR_CHOICES", "import_workspace_bank", "load_workspace_generator",
           "run_import_falco"]

FEATURES_FROM = ("auto", "compute", "workspace")
GENERATOR_CHOICES = ("workspace", "models")
#: Workspace features are imported only when they agree this well with falco's on every sampled fake.
MIN_COSINE = 0.99


def import_workspace_bank(
    ws: FalcoWorkspace,
    out: str | os.PathLike,
    G: torch.nn.Module,
    extractor: Any,
    *,
    features_from: str = "auto",
    check: int = 16,
    thumbnails: bool = True,
    device: str | torch.device = "cpu",
    progress: bool = True,
    echo: Callable[[str], Any] | None = None,
    **options: Any,
) -> Path:
    """Write the workspace's fakes as a bank in ``out`` (resumable, as a build).

    Args:
        ws: from :func:`falco.compat.falco_ref.read_workspace`.
        G: the generator the fakes' codes belong to; ``extractor``: falco's feature extractor.
        features_from: ``'auto'`` (the workspace's features when they agree with the
            extractor's on ``check`` fakes, cosine >= :data:`MIN_COSINE`; else computed),
            ``'compute'``, or ``'workspace'`` (refused when they do not agree).
        thumbnails: cut thumbnails from each fake's ``image.jpg``.
        device, progress, echo, options (``thumbnail_size``, ``batch_size``, ``chunk_size``,
            ``index``, ``generator_sha256``, ``generator_name``, ``extra``): as
            :func:`falco.bank.importer.import_bank`.

    Raises:
        InputError: a fake whose W+ layers differ, codes that do not fit G, missing images,
            workspace features that are missing or disagree (``'workspace'``).
    """
    note = echo or (lambda _msg: None)
    if features_from not in FEATURES_FROM:
        raise InputError(f"--features-from must be one of {', '.join(FEATURES_FROM)}, got {features_from!r}")
    codes = ws.load_fake_codes(progress=progress)
    if ws.fake_w is None:
        bad = next(i for i in range(len(codes)) if not bool((codes[i] == codes[i, :1]).all()))
        raise InputError(f"{ws.code_path(ws.fake_ids[bad])}: the fake's W+ layers differ (not truncated alike); "
                         "a bank holds one w per fake")
    if (ws.num_ws, ws.w_dim) != (int(G.num_ws), int(G.w_dim)):
        raise InputError(f"{ws.code_path(ws.fake_ids[0])}: codes of {ws.num_ws} x {ws.w_dim}, the generator has "
                         f"{G.num_ws} ws of {G.w_dim}; use the workspace's generator ({ws.generator})")
    features, how = None, "computed"
    if features_from != "compute":
        features, why = _workspace_features(ws, G, extractor, check, device)
        if features is None and features_from == "workspace":
            raise InputError(f"--features-from workspace: {why}")
        if features is None:
            note(f"features: computing them ({why})")
        else:
            how = f"workspace {extractor.name}_features.pt"
            note(f"features: importing {ws.fake_dir / f'{extractor.name}_features.pt'} ({why})")
    reader = _image_reader(ws) if thumbnails else None
    source = {**ws.describe(), "features": how, "thumbnails": "image.jpg" if thumbnails else None}
    return import_bank(out, ws.fake_w, G, extractor, source=source, truncation=ws.truncation, features=features,
                       thumbnail_reader=reader, thumbnails=thumbnails, device=device, progress=progress, echo=echo,
                       **options)


def _workspace_features(ws: FalcoWorkspace, G, extractor, check: int,
                        device: str | torch.device) -> tuple[torch.Tensor | None, str]:
    """The workspace's features of ``extractor.name`` if they are the extractor's, and why (not)."""
    from falco.bank.writer import render_quantized

    name = str(extractor.name)
    if name not in ws.feature_names and not (ws.fake_dir / ws.fake_ids[0] / f"{name}_features.pt").is_file():
        return None, f"the workspace has no {name}_features.pt"
    f = ws.features(name)
    if f.shape[1] != int(extractor.dim):
        return None, f"{name}_features.pt is {f.shape[1]} wide, falco's {name} features {extractor.dim}"
    if not torch.isfinite(f).all() or bool((f.norm(dim=1) == 0).any()):
        return None, f"{name}_features.pt holds non-finite values or zero rows"
    k = min(max(int(check), 1), len(f))
    with torch.no_grad():
        _, x = render_quantized(G, ws.fake_w[:k].to(device))
        ours = extractor(x).float().cpu()
    cos = (F.normalize(ours, dim=1) * F.normalize(f[:k], dim=1)).sum(1)
    low = float(cos.min())
    if low < MIN_COSINE:
        return None, (f"{name}_features.pt disagrees with falco's {name} features: cosine down to {low:.3f} on "
                      f"the first {k} fakes (the reference embedded its fakes in [-1, 1] with CLIP mean/std)")
    return f, f"it agrees with falco's {name} features on the first {k} fakes, cosine >= {low:.4f}"


def _image_reader(ws: FalcoWorkspace) -> Callable[[int, int, int], np.ndarray]:
    def read(start: int, stop: int, size: int) -> np.ndarray:
        return np.stack([_thumbnail(ws.image_path(h), size) for h in ws.fake_ids[start:stop]])

    return read


def _thumbnail(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise InputError(f"{path}: missing (the fake's image; --no-thumbnails imports without thumbnails)")
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
            return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BOX))
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{path}: unreadable image ({exc})") from None


def load_workspace_generator(ws: FalcoWorkspace, generator: str | os.PathLike, models: str | os.PathLike | None,
                             device: str | torch.device) -> tuple[torch.nn.Module, Path, str]:
    """The generator to use with a workspace: its own (``'workspace'``), the model set's, or a file.

    Returns:
        ``(G, path, name)``.
    """
    from falco.models.loaders import load_generator
    from falco.pretrained.modelset import locate, resolve_model

    if str(generator) == "models":
        path = resolve_model("generator", models)
        return load_generator(path, device=device), path, locate("generator", models)[0].name
    path = ws.generator if str(generator) == "workspace" else Path(generator).expanduser()
    if not path.is_file():
        what = "the workspace's generator is missing" if str(generator) == "workspace" else "no such file (--generator)"
        raise InputError(f"{path}: {what}; pass --generator models (the model set's) or --generator PATH")
    return load_generator(path, device=device), path, path.name


def run_import_falco(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fake_dataset: str | None = None,
    models: str | os.PathLike | None = None,
    generator: str = "workspace",
    features: str = "farl",
    features_from: str = "auto",
    device: str = "auto",
    batch_size: int = 32,
    chunk_size: int = 1000,
    index: str = "auto",
    thumbnails: bool = True,
    thumbnail_size: int = 64,
    progress: bool = True,
    echo: Callable[[str], Any] = print,
) -> Path:
    """``falco bank import-falco``: read the workspace, load the generator and extractor, import."""
    from falco import __version__
    from falco.bank.build import generator_fingerprint
    from falco.bank.features import EXTRACTORS, load_extractor
    from falco.models.zoo import resolve_device, tiny_notice
    from falco.pretrained.modelset import file_sha256
    from falco.run.inputs import check_writable_dir

    if features not in EXTRACTORS:
        raise InputError(f"--features must be one of {', '.join(EXTRACTORS)}, got {features!r}")
    if features_from not in FEATURES_FROM:
        raise InputError(f"--features-from must be one of {', '.join(FEATURES_FROM)}, got {features_from!r}")
    ws = read_workspace(root, fake_dataset=fake_dataset)
    check_writable_dir(out)
    dev = resolve_device(device)
    notice = tiny_notice(models)
    if notice:
        echo(f"warning: {notice}")
    G, gen_path, gen_name = load_workspace_generator(ws, generator, models, dev)
    extractor = load_extractor(features, models, dev)
    echo(f"workspace {ws.fake_dir.name}: {len(ws.fake_ids)} fakes, truncation {ws.truncation}; generator "
         f"{gen_path} ({G.img_resolution} px); features {extractor.name}; device {dev}")
    config = {"root": str(root), "fake_dataset": fake_dataset, "generator": str(generator), "features": features,
              "features_from": features_from, "batch_size": batch_size, "chunk_size": chunk_size, "index": index,
              "thumbnails": thumbnails, "thumbnail_size": thumbnail_size}
    path = import_workspace_bank(
        ws, out, G, extractor, features_from=features_from, thumbnails=thumbnails, thumbnail_size=thumbnail_size,
        batch_size=batch_size, chunk_size=chunk_size, device=dev, progress=progress, index=index,
        generator_sha256=file_sha256(gen_path), generator_name=gen_name,
        extra={"config": config, "env": {"falco": __version__, "torch": torch.__version__, "device": str(dev),
                                         "tiny_models": bool(notice)}},
        echo=echo)
    if str(generator) != "models":
        _compare_with_model_set(G, models, echo, generator_fingerprint)
    return path


def _compare_with_model_set(G, models, echo, fingerprint) -> None:
    """Say whether ``falco anonymize --bank`` with this model set will accept the bank's generator."""
    from falco.errors import FalcoError
    from falco.models.zoo import load_role

    try:
        G_set = load_role("generator", models, "cpu")
    except FalcoError:
        return
    if fingerprint(G_set) != fingerprint(G):
        echo("note: the model set's generator differs from the one these fakes were made with: "
             "`falco anonymize --bank` will refuse this bank with that model set (use a set with this generator)")
