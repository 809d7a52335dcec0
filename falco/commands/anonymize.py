"""``falco anonymize``: every face of every photo replaced, photos written with the same relative paths.

Outputs under ``--out``:
    ``<input key>``                    the anonymized photo (same format, JPEG quality 95, no
                                       metadata; ``--format png`` for lossless);
    ``codes/<input key>.safetensors``  FALCO only: ``ws`` (anonymized W+), ``ws_real``, ``neighbours``,
                                       ``quads``, ``boxes`` (readable without falco);
    ``crops/<input key>/face_NN_*.png``  with ``--save-crops``: real, inverted, neighbour, anon;
    ``manifest.sqlite``                one row per input and per face (status, method, box,
                                       quad, losses, fallback), the settings and model hashes;
    ``bank/``                          the fake bank built on the fly when ``--bank`` is not given.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from falco import __version__
from falco.config import AnonymizeConfig, as_dict
from falco.errors import InputError
from falco.imageio import save_image
from falco.distributed import local_device
from falco.io import check_output_dir, discover_inputs, save_tensors
from falco.manifest import RunManifest
from falco.models.zoo import resolve_device, tiny_notice
from falco.runs import FaceRun, Photo, RunSummary, face_row, run_in_out_dir

log = logging.getLogger(__name__)

FORMATS = {"png": ".png", "jpeg": ".jpg", "jpg": ".jpg", "webp": ".webp"}
ON_FAIL = ("blur", "pixelate", "mask", "skip")
METHODS = ("falco", "blur", "pixelate", "mask", "ciagan", "deepprivacy")


def output_key(key: str, fmt: str | None) -> str:
    """Where the anonymized photo of input ``key`` goes (relative to ``--out``)."""
    if fmt is None:
        return key
    return str(Path(key).with_suffix(FORMATS[fmt]))


def run_anonymize(cfg: AnonymizeConfig, *, echo=print) -> RunSummary:
    """Run ``falco anonymize`` with the given settings; returns the run summary."""
    if cfg.format is not None and cfg.format not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(sorted(FORMATS))}, got {cfg.format!r}")
    if cfg.method not in METHODS:
        raise InputError(f"--method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    if cfg.on_fail not in ON_FAIL:
        raise InputError(f"--on-fail must be one of {', '.join(ON_FAIL)}, got {cfg.on_fail!r}")
    items = discover_inputs(cfg.input)
    check_output_dir(cfg.out, cfg.input)
    device = local_device(resolve_device(cfg.device))
    prepare = (lambda: open_or_build_bank(cfg, device, echo)) if cfg.method == "falco" else None
    return run_in_out_dir(cfg.out, items, device, lambda mine: _run(cfg, mine, device, echo), prepare=prepare)


def model_hashes(models: Path | None, roles: tuple[str, ...]) -> dict[str, str]:
    """sha256 of the model file behind each role (cached by size and mtime)."""
    from falco.pretrained.modelset import file_sha256, models_dir, resolve_model

    out = {}
    for role in roles:
        path = Path(resolve_model(role, models))
        out[role] = file_sha256(path, cache_dir=models_dir(models) if path.parent == models_dir(models) else None)
    return out


def open_or_build_bank(cfg: AnonymizeConfig, device: torch.device, echo) -> Any:
    """The bank given with ``--bank``, else one built (or resumed) under ``OUT/bank``."""
    from falco.bank import Bank, build_bank
    from falco.features import load_extractor
    from falco.models.zoo import load_role

    if cfg.bank is not None:
        return Bank.open(cfg.bank)
    path = cfg.out / "bank"
    if (path / "manifest.json").exists():
        return Bank.open(path)
    echo(f"warning: no --bank given: building a small bank of {cfg.bank_size} fakes in {path} "
         "(build a large one once with `falco bank build` and pass --bank)")
    G = load_role("generator", cfg.models, device)
    extractor = load_extractor("farl", cfg.models, device)
    build_bank(path, G, extractor, num=cfg.bank_size, seed=cfg.seed, batch_size=max(cfg.batch_size, 8),
               device=device, progress=cfg.progress)
    return Bank.open(path)


def make_anonymizer(cfg: AnonymizeConfig, device: torch.device, echo):
    """Build the anonymizer of ``cfg.method``."""
    from falco.baselines.base import get_anonymizer

    if cfg.method == "falco":
        from falco.anonymize import FalcoParams
        from falco.falco_method import load_falco

        params = FalcoParams(m=cfg.m, steps=cfg.steps, lr=cfg.lr, lambda_id=cfg.lambda_id,
                             lambda_attr=cfg.lambda_attr, layers=tuple(cfg.layers), amp=cfg.amp)
        bank = open_or_build_bank(cfg, device, echo)
        return load_falco(cfg.models, bank=bank, device=device, params=params, on_fail=cfg.on_fail,
                          previews=cfg.save_crops)
    options = dict(cfg.method_options)
    if cfg.method in ("ciagan", "deepprivacy"):
        options.setdefault("models", cfg.models)
        options.setdefault("seed", cfg.seed)
        options.setdefault("device", device)
    return get_anonymizer(cfg.method, **options)


def _run(cfg: AnonymizeConfig, items, device: torch.device, echo) -> RunSummary:
    torch.manual_seed(cfg.seed)
    roles = {"falco": ("generator", "encoder", "identity", "attributes"), "ciagan": ("ciagan",),
             "deepprivacy": ("deepprivacy",)}.get(cfg.method, ())
    notice = tiny_notice(cfg.models) if roles else None
    if notice:
        echo(f"warning: {notice}")
    anonymizer = make_anonymizer(cfg, device, echo)
    manifest = RunManifest(cfg.out)
    manifest.start_run("anonymize", {**as_dict(cfg), "method_settings": anonymizer.settings()},
                       env={"falco": __version__, "torch": torch.__version__, "device": str(device),
                            "tiny_models": bool(notice), "model_sha256": model_hashes(cfg.models, roles)})

    def finish(photo: Photo, results: list[Any]):
        key = photo.item.key
        rel = output_key(key, cfg.format)
        if photo.faces:
            new_photo, records = anonymizer.apply(photo.image, photo.faces, results)
        else:
            new_photo, records = photo.image, []
        (cfg.out / rel).parent.mkdir(parents=True, exist_ok=True)
        save_image(cfg.out / rel, new_photo, format=None, quality=cfg.quality)
        outputs: dict[str, Any] = {"photo": rel}
        rows = []
        for i, (face, record) in enumerate(zip(photo.faces, records)):
            row = face_row(face, **record)
            res = results[i]
            if getattr(res, "curves", None):
                row["loss_curves"] = res.curves
            if cfg.save_crops:
                row["crops"] = _save_crops(cfg.out, key, i, face, res)
            rows.append(row)
        if cfg.method == "falco" and photo.faces:
            outputs["codes"] = _save_codes(cfg.out, key, photo, results)
            for i, row in enumerate(rows):
                row.update(codes=outputs["codes"], code_index=i)
        return outputs, rows

    runner = FaceRun(items, manifest, detector=cfg.detector, upsample=cfg.upsample, align_size=256,
                     batch_size=cfg.batch_size, progress=cfg.progress)
    summary = runner.run(anonymizer.process, finish)
    fell_back = sum(1 for f in manifest.faces() if f["status"] in ("fallback", "failed"))
    if fell_back:
        echo(f"warning: {fell_back} face(s) could not be anonymized by {cfg.method} and were covered by "
             f"--on-fail {cfg.on_fail} (see manifest.sqlite)")
    manifest.finish_run({**summary.as_dict(), "faces_fallback": fell_back})
    manifest.close()
    return summary


def _save_codes(out: Path, key: str, photo: Photo, results: list[Any]) -> str:
    rel = f"codes/{key}.safetensors"
    ok = [r.ok for r in results]
    ref = next((r for r in results if r.ok), None)
    shape = tuple(ref.ws.shape) if ref is not None else (0, 0)
    nan = torch.full(shape, float("nan"))
    save_tensors(out / rel, {
        "ws": torch.stack([r.ws if r.ok else nan for r in results]),
        "ws_real": torch.stack([r.ws_real if r.ok else nan for r in results]),
        "neighbours": torch.tensor([r.neighbour if r.ok else -1 for r in results], dtype=torch.int64),
        "ok": torch.tensor(ok, dtype=torch.bool),
        "quads": torch.tensor(np.stack([f.quad for f in photo.faces]), dtype=torch.float64),
        "boxes": torch.tensor([list(f.box) for f in photo.faces], dtype=torch.int64),
    }, metadata={"source": key, "format": "falco-anonymize-1"})
    return rel


def _save_crops(out: Path, key: str, index: int, face, res) -> dict[str, str]:
    folder = out / "crops" / key
    folder.mkdir(parents=True, exist_ok=True)
    images = {"real": face.image}
    if getattr(res, "ok", False):
        images["anon"] = res.crop
        images.update(res.previews)
    paths = {}
    for name, image in images.items():
        rel = f"crops/{key}/face_{index:02d}_{name}.png"
        save_image(out / rel, image)
        paths[name] = rel
    return paths
