"""Anonymize a reference FALCO workspace's real dataset with its own inversions and pairs.

For each real image that the workspace paired with a fake (default: the FaRL cosine map,
as in the reference README) and inverted: start from the fake's W+ code, optimise its layers
3..7 with :func:`falco.latent.optimise.optimise` against the aligned crop the reference inverted
(``data/<id>_aligned.jpg``), keep the inversion's other layers, render, and write::

    OUT/run.json                      the workspace, pair map, generator and FalcoParams of the run
    OUT/data/<id>.png                 the anonymized face at the generator's resolution (or .jpg)
    OUT/codes/<id>.safetensors        ws (anonymized), ws_real (inversion), ws_fake (the pair),
                                      each [num_ws, w_dim]; metadata: real name, fake id, losses

With ``steps=0`` the code is exactly :func:`falco.latent.optimise.mix_codes` of the inversion
and the fake. Resumable: an image whose codes file exists is done (the image is written first).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from falco.compat.falco_ref import FalcoWorkspace, image_id, read_workspace
from falco.errors import InputError
from falco.latent.optimise import FalcoParams, optimise

__all__ = ["RUN_FORMAT", "WorkspaceRunSummary", "anonymize_workspace", "run_anonymize_workspace"]

RUN_FORMAT = "falco-workspace-anonymize-1"
IMAGE_FORMATS = ("png", "jpg")


@dataclass
class WorkspaceRunSummary:
    """What :func:`anonymize_workspace` did."""

    out: Path
    done: int = 0
    already: int = 0
    not_inverted: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def line(self) -> str:
        parts = [f"{self.done} anonymized", f"{self.already} already done"]
        if self.not_inverted:
            parts.append(f"{len(self.not_inverted)} paired but not inverted (skipped)")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        return f"{self.out}: " + ", ".join(parts)


def anonymize_workspace(
    ws: FalcoWorkspace,
    out: str | os.PathLike,
    *,
    G: torch.nn.Module,
    id_encoder: torch.nn.Module,
    farl: torch.nn.Module,
    params: FalcoParams = FalcoParams(),
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    image_format: str = "png",
    limit: int | None = None,
    progress: bool = True,
    extra: dict | None = None,
    echo: Callable[[str], Any] | None = None,
) -> WorkspaceRunSummary:
    """Anonymize every paired, inverted real image of ``ws`` into ``out`` (see the module notes).

    Args:
        ws: from :func:`falco.compat.falco_ref.read_workspace`, with ``pairs`` and ``inverted``.
        G: the generator of the workspace's codes; ``id_encoder``: ArcFace; ``farl``: FaRL encoder;
            all on ``device``.
        params: FALCO's hyperparameters (paper defaults).
        batch_size: faces optimised together (each keeps its own parameters and Adam state).
        image_format: ``'png'`` (lossless) or ``'jpg'`` (quality 95, the names the reference's
            evaluation scripts read).
        limit: only the first ``limit`` images (in the pair map's order).
        extra: more keys for ``run.json``.

    Raises:
        InputError: no pairs or inversions, codes that do not fit G, missing aligned crops,
            ``out`` inside the workspace's fake or inversion folders, or holding another run.
    """
    from tqdm import tqdm

    from falco.run.inputs import check_writable_dir, lock_output_dir, remove_stale_temps

    note = echo or (lambda _msg: None)
    if image_format not in IMAGE_FORMATS:
        raise InputError(f"--format must be png or jpg, got {image_format!r}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if not ws.pairs:
        raise InputError(f"{ws.fake_dir}: no pair map of {ws.dataset or 'a real dataset'} "
                         f"(run the reference's pair_nn.py, or pass --pair-map)")
    if not ws.inverted:
        raise InputError(f"{ws.root}: no inversions of {ws.dataset or 'a real dataset'} "
                         "(datasets/inv/<dataset>/latent_codes; run the reference's invert.py)")
    if (ws.num_ws, ws.w_dim) != (int(G.num_ws), int(G.w_dim)):
        raise InputError(f"{ws.code_path(ws.fake_ids[0])}: codes of {ws.num_ws} x {ws.w_dim}, the generator has "
                         f"{G.num_ws} ws of {G.w_dim}; use the workspace's generator ({ws.generator})")
    if params.layers[1] > int(G.num_ws):
        raise InputError(f"layers {params.layers}: the generator has only {G.num_ws} W+ layers")
    out = Path(out)
    _check_out(ws, out)
    jobs = ws.jobs()
    summary = WorkspaceRunSummary(out=out, not_inverted=[n for n in ws.pairs if image_id(n) not in ws.inverted])
    if limit is not None:
        jobs = jobs[: max(int(limit), 0)]
    missing = [ws.aligned_path(rid) for _, rid, _ in jobs if not ws.aligned_path(rid).is_file()]
    if missing:
        raise InputError(f"{missing[0]}: missing ({len(missing)} of {len(jobs)} paired, inverted images have no "
                         "aligned crop; invert.py writes data/<id>_aligned.jpg)")
    check_writable_dir(out)
    record = {"format": RUN_FORMAT, "source": ws.describe(), "params": params.as_dict(),
              "image_format": image_format, **(extra or {})}
    with lock_output_dir(out):
        remove_stale_temps(out)
        _check_run(out, record)
        (out / "data").mkdir(exist_ok=True)
        (out / "codes").mkdir(exist_ok=True)
        todo = [j for j in jobs if not (out / "codes" / f"{j[1]}.safetensors").is_file()]
        summary.already = len(jobs) - len(todo)
        if summary.already:
            note(f"resuming: {summary.already} of {len(jobs)} images already done")
        device = torch.device(device)
        bar = tqdm(total=len(todo), unit="face", desc="anonymize", disable=not progress, dynamic_ncols=True)
        try:
            for s in range(0, len(todo), batch_size):
                batch = todo[s:s + batch_size]
                _run_batch(ws, out, batch, G, id_encoder, farl, params, device, image_format, summary)
                bar.update(len(batch))
        finally:
            bar.close()
    return summary


def _check_out(ws: FalcoWorkspace, out: Path) -> None:
    for inside in (ws.fake_dir, ws.inv_dir):
        if inside is not None and _is_within(out, inside):
            raise InputError(f"--out {str(out)!r} is inside the workspace's {inside}; choose another folder")


def _is_within(path: Path, folder: Path) -> bool:
    p, f = path.expanduser().resolve(), folder.resolve()
    return p == f or f in p.parents


def _check_run(out: Path, record: dict) -> None:
    from falco.run.atomic import atomic_write_text

    path = out / "run.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: unreadable ({exc})") from None
        keys = ("format", "source", "params", "image_format")
        if any(old.get(k) != record.get(k) for k in keys):
            diff = ", ".join(k for k in keys if old.get(k) != record.get(k))
            raise InputError(f"--out {str(out)!r} holds a run with other settings ({diff}); re-run with them "
                             "or choose another folder")
        return
    foreign = [p.name for p in out.iterdir() if not p.name.startswith(".")]
    if foreign:
        raise InputError(f"--out {str(out)!r} is not empty (holds {', '.join(sorted(foreign)[:5])}); "
                         "choose a new folder")
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def _run_batch(ws: FalcoWorkspace, out: Path, batch, G, id_encoder, farl, params: FalcoParams,
               device: torch.device, image_format: str, summary: WorkspaceRunSummary) -> None:
    from falco.latent.images import to_tensor, to_uint8
    from falco.run.image_files import load_image, save_image
    from falco.run.inputs import save_tensors

    shape = (int(G.num_ws), int(G.w_dim))
    ws_real = []
    for name, rid, _ in batch:
        code = ws.inverted[rid]
        if tuple(code.shape) != shape:
            raise InputError(f"{ws.inverted.path(rid) if hasattr(ws.inverted, 'path') else rid}: inverted code "
                             f"of shape {list(code.shape)}, the generator needs {list(shape)}")
        ws_real.append(code)
    ws_real = torch.stack(ws_real).to(device)
    ws_fake = torch.stack([ws.fake_code(h) for _, _, h in batch]).to(device)
    x_real = to_tensor(np.stack([load_image(ws.aligned_path(rid)) for _, rid, _ in batch]), size=256, device=device)
    result = optimise(ws_real, ws_fake, x_real, G, id_encoder, farl, params=params)
    with torch.no_grad():
        crops = to_uint8(G.synthesis(result.ws, noise_mode="const"))
    for i, (name, rid, h) in enumerate(batch):
        if not torch.isfinite(result.ws[i]).all():
            summary.failed.append((name, "the optimisation diverged (non-finite W+ code)"))
            continue
        save_image(out / "data" / f"{rid}.{image_format}", crops[i], quality=95)
        losses = {k: v for k, v in result.final(i).items() if v == v}  # NaN (no step ran) left out
        save_tensors(out / "codes" / f"{rid}.safetensors",
                     {"ws": result.ws[i], "ws_real": ws_real[i], "ws_fake": ws_fake[i]},
                     metadata={"format": RUN_FORMAT, "real": name, "fake": h, "losses": json.dumps(losses)})
        summary.done += 1


def run_anonymize_workspace(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dataset: str | None = None,
    fake_dataset: str | None = None,
    pair_map: str | None = None,
    models: str | os.PathLike | None = None,
    generator: str = "workspace",
    device: str = "auto",
    params: FalcoParams = FalcoParams(),
    batch_size: int = 8,
    image_format: str = "png",
    limit: int | None = None,
    progress: bool = True,
    echo: Callable[[str], Any] = print,
) -> WorkspaceRunSummary:
    """``falco anonymize-falco``: read the workspace, load G, ArcFace and FaRL, anonymize."""
    from falco import __version__
    from falco.compat.falco_bank import load_workspace_generator
    from falco.models.zoo import load_role, resolve_device, tiny_notice

    ws = read_workspace(root, fake_dataset=fake_dataset, dataset=dataset, pair_map=pair_map)
    _check_out(ws, Path(out))
    dev = resolve_device(device)
    notice = tiny_notice(models)
    if notice:
        echo(f"warning: {notice}")
    G, gen_path, _ = load_workspace_generator(ws, generator, models, dev)
    id_encoder = load_role("identity", models, dev)
    farl = load_role("attributes", models, dev)
    echo(f"workspace {ws.fake_dir.name}, dataset {ws.dataset}: {len(ws.pairs)} pairs "
         f"({ws.pair_map.name if ws.pair_map else 'no map'}), {len(ws.inverted)} inversions; generator {gen_path}; "
         f"device {dev}")
    return anonymize_workspace(ws, out, G=G, id_encoder=id_encoder, farl=farl, params=params, batch_size=batch_size,
                               device=dev, image_format=image_format, limit=limit, progress=progress,
                               extra={"generator": str(gen_path), "env": {"falco": __version__,
                                                                         "tiny_models": bool(notice)}},
                               echo=echo)
