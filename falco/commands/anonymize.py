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

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from falco import __version__
from falco.config import AnonymizeConfig, as_dict
from falco.errors import FalcoError, InputError
from falco.imageio import save_image
from falco.distributed import local_device
from falco.io import atomic_path, check_output_dir, discover_inputs, save_tensors
from falco.manifest import RunManifest
from falco.models.zoo import resolve_device, tiny_notice
from falco.runs import FaceRun, Photo, RunSummary, face_row, run_in_out_dir

log = logging.getLogger(__name__)

FORMATS = {"png": ".png", "jpeg": ".jpg", "jpg": ".jpg", "webp": ".webp"}
ON_FAIL = ("blur", "pixelate", "mask", "skip")
GUARD_MODES = ("off", "warn", "enforce")
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
    from falco.baselines.base import available_methods

    methods = sorted(set(METHODS) | set(available_methods()))
    if cfg.method not in methods:
        raise InputError(f"--method must be one of {', '.join(methods)}, got {cfg.method!r}")
    if cfg.on_fail not in ON_FAIL:
        raise InputError(f"--on-fail must be one of {', '.join(ON_FAIL)}, got {cfg.on_fail!r}")
    if cfg.guard not in GUARD_MODES:
        raise InputError(f"--guard must be one of {', '.join(GUARD_MODES)}, got {cfg.guard!r}")
    if cfg.export_detections not in (None, "coco"):
        raise InputError(f"--export-detections must be 'coco', got {cfg.export_detections!r}")
    for ref in cfg.keep_identity:
        if not Path(ref).is_file():
            raise InputError(f"--keep-identity {str(ref)!r}: no such file")
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
                             lambda_attr=cfg.lambda_attr, layers=tuple(cfg.layers), amp=cfg.amp,
                             num_fp16_res=cfg.num_fp16_res, fused_modconv=cfg.fused_modconv,
                             channels_last=cfg.channels_last, compile=cfg.compile,
                             loss_resolution=cfg.loss_resolution)
        bank = open_or_build_bank(cfg, device, echo)
        used = None
        if not cfg.reuse and (cfg.out / "manifest.sqlite").exists():  # a resumed run: fakes already given out
            with RunManifest(cfg.out) as m:
                used = {int(f["neighbour"]) for f in m.faces() if f.get("neighbour") is not None}
        return load_falco(cfg.models, bank=bank, device=device, params=params, on_fail=cfg.on_fail,
                          previews=cfg.save_crops, reuse=cfg.reuse, used=used)
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
    guard = make_guard(cfg, device)
    select = make_selector(cfg.keep_identity)
    hashes = model_hashes(cfg.models, roles)
    manifest = RunManifest(cfg.out)
    manifest.start_run("anonymize", {**as_dict(cfg), "method_settings": anonymizer.settings(),
                                     "guard_settings": guard.settings()},
                       env={"falco": __version__, "torch": torch.__version__, "device": str(device),
                            "tiny_models": bool(notice), "model_sha256": hashes})
    provenance = {"method": cfg.method, "settings": anonymizer.settings(), "seed": cfg.seed, "model_sha256": hashes,
                  "guard": guard.settings()}
    redo = getattr(anonymizer, "redo", None)

    def finish(photo: Photo, results: list[Any]):
        key = photo.item.key
        rel = output_key(key, cfg.format)
        if photo.faces:
            new_photo, records = anonymizer.apply(photo.image, photo.faces, results)
        else:
            new_photo, records = photo.image, []
        checked = guard.review(photo.image, new_photo, photo.faces, kept=photo.kept,
                               redo=(lambda img, i: redo(img, photo.faces[i])) if redo else None)
        new_photo = checked.photo
        (cfg.out / rel).parent.mkdir(parents=True, exist_ok=True)
        save_image(cfg.out / rel, new_photo, format=None, quality=cfg.quality)
        outputs: dict[str, Any] = {"photo": rel, "size": list(photo.image.shape[:2])}
        rows = []
        for i, (face, record) in enumerate(zip(photo.faces, records)):
            row = face_row(face, **record)
            if checked.verdicts:
                verdict = checked.verdicts[i]
                row["guard"] = verdict
                if verdict["verdict"] in ("fallback", "unsafe"):
                    row["status"] = verdict["verdict"]
                    row["fallback"] = verdict.get("covered_by") or guard_fallback(cfg)
                    why = f"privacy guard: {verdict.get('why')}"
                    row["reason"] = f"{row['reason']}; {why}" if row.get("reason") else why
            row["guard_failing"] = guard.mode == "enforce" and row.get("status") in ("fallback", "unsafe", "failed")
            res = results[i]
            if getattr(res, "curves", None):
                row["loss_curves"] = res.curves
            if cfg.save_crops:
                row["crops"] = _save_crops(cfg.out, key, i, face, res)
            rows.append(row)
        rows += [face_row(face, status="kept", method="none", reason="matches --keep-identity") for face in photo.kept]
        rows += [dict(row, status="missed", score=None, quad_size=None,
                      fallback=row.get("covered_by") or guard_fallback(cfg)) for row in checked.missed]
        if cfg.method == "falco" and photo.faces:
            outputs["codes"] = _save_codes(cfg.out, key, photo, results)
            for i in range(len(photo.faces)):
                rows[i].update(codes=outputs["codes"], code_index=i)
        if cfg.export_detections:
            for row in rows:
                row["mask_rle"] = mask_rle(row, photo.image.shape)
        if cfg.sidecar:
            _write_sidecar(cfg.out / f"{rel}.json", key, photo.image.shape, rows, provenance)
        return outputs, rows

    runner = FaceRun(items, manifest, detector=cfg.detector, upsample=cfg.upsample, align_size=256,
                     batch_size=cfg.batch_size, progress=cfg.progress, select=select,
                     max_pixels=cfg.max_pixels)
    from falco.anonymize import step_callback

    with step_callback(runner.on_step if cfg.progress else None):  # FALCO's optimisation steps on the bar
        summary = runner.run(anonymizer.process, finish)
    faces = manifest.faces()
    counts = {s: sum(1 for f in faces if f["status"] == s) for s in ("fallback", "unsafe", "failed", "missed", "kept")}
    counts["redone"] = sum(1 for f in faces if (f.get("guard") or {}).get("verdict") == "redone")
    counts["checked"] = sum(1 for f in faces if f.get("guard"))
    summary.unsafe = sum(1 for f in faces if f.get("guard_failing"))
    if guard.active:
        echo(guard_summary(guard.mode, faces))
    if counts["fallback"] + counts["failed"]:
        echo(f"warning: {counts['fallback'] + counts['failed']} face(s) were not anonymized by {cfg.method} "
             "(see manifest.sqlite)")
    if cfg.export_detections == "coco":
        export_coco(manifest, cfg.out / "detections_coco.json")
    manifest.finish_run({**summary.as_dict(), "face_status": counts})
    manifest.close()
    return summary


COVER_WORDS = {"blur": "blur", "pixelate": "pixelation", "mask": "a solid mask"}


def covered_how(row: dict) -> str | None:
    """How a face row's region was covered, in words (``'a solid mask (blur still matched)'``); None if it was not."""
    how = row.get("fallback")
    if row.get("status") not in ("fallback", "unsafe", "missed") or how in (None, "skip"):
        return None
    text = COVER_WORDS.get(how, str(how))
    guard = row.get("guard") or {}
    if guard.get("last_resort"):
        tried = [s["step"] for s in guard.get("trail", []) if s["step"] not in ("method", "redo", "mask")]
        if tried:
            text += f" ({', '.join(COVER_WORDS.get(t, t) for t in tried)} still matched)"
    return text


def guard_summary(mode: str, faces: list[dict]) -> str:
    """The privacy guard's one-line summary, from the recorded face rows (how each face was really covered)."""
    checked = sum(1 for f in faces if f.get("guard"))
    redone = sum(1 for f in faces if (f.get("guard") or {}).get("verdict") == "redone")
    counts = {s: sum(1 for f in faces if f["status"] == s) for s in ("fallback", "unsafe", "missed", "kept")}
    covers: dict[str, int] = {}
    for f in faces:
        if f["status"] == "fallback":
            how = covered_how(f) or "nothing"
            covers[how] = covers.get(how, 0) + 1
    fell = f"{counts['fallback']} fell back"
    if covers:
        most_first = sorted(covers.items(), key=lambda kv: (-kv[1], kv[0]))
        fell += ": " + ", ".join(f"{n} covered by {how}" for how, n in most_first)
    missed = f"{counts['missed']} missed by detection and covered"
    missed_covers = sorted({covered_how(f) for f in faces if f["status"] == "missed"} - {None})
    if missed_covers:
        missed += f" by {', '.join(missed_covers)}"
    return (f"privacy guard ({mode}): {checked} faces checked; {redone} re-done; {fell}; {counts['unsafe']} unsafe; "
            f"{missed}; {counts['kept']} kept")


def guard_fallback(cfg: AnonymizeConfig) -> str:
    """The fallback the guard uses: ``--on-fail``, or blur when that is ``skip`` (fail closed)."""
    return cfg.on_fail if cfg.on_fail != "skip" else "blur"


def make_guard(cfg: AnonymizeConfig, device: torch.device):
    """The privacy guard of ``--guard`` (dlib always; ArcFace when real weights are installed)."""
    from falco.align import detect_and_align
    from falco.baselines.base import fallback
    from falco.guard import PrivacyGuard, Recognizers
    from falco.pretrained.modelset import is_tiny

    arcface = None
    if cfg.guard != "off" and not is_tiny(cfg.models):
        try:
            from falco.faces.recognizers import ArcFaceRecognizer

            arcface = ArcFaceRecognizer.from_models(cfg.models, device=str(device))
        except FalcoError:
            arcface = None  # not installed: dlib alone (recorded in the guard settings)
    how = guard_fallback(cfg)
    return PrivacyGuard(cfg.guard, Recognizers(arcface), lambda img, face: fallback(img, face, how),
                        lambda img: detect_and_align(img, size=64, detector=cfg.detector, upsample=cfg.upsample + 1),
                        last_resort=lambda img, face: fallback(img, face, "mask"), fallback_name=how)


def make_selector(references: tuple[Path, ...]):
    """``--keep-identity``: a function flagging faces that match a reference photo (dlib, < 0.6)."""
    if not references:
        return None
    from falco.align import detect_and_align
    from falco.faces.recognizers import DlibRecognizer
    from falco.imageio import load_image

    rec = DlibRecognizer()
    refs = []
    for path in references:
        image = load_image(path)
        faces = detect_and_align(image, size=64)
        if not faces:
            raise InputError(f"--keep-identity {str(path)!r}: no face found in the reference photo")
        largest = max(faces, key=lambda f: f.quad_size)
        refs.append(rec.embed(image, [largest.landmarks])[0])
    refs_arr = np.stack(refs)

    def select(image: np.ndarray, faces) -> list[bool]:
        desc = rec.embed(image, [f.landmarks for f in faces])
        dist = np.linalg.norm(desc[:, None] - refs_arr[None], axis=-1)
        return [bool(d.min() < rec.threshold) for d in dist]

    return select


def mask_rle(row: dict, shape: tuple[int, ...]) -> dict:
    """COCO uncompressed RLE of a face's region (the paste-back mask) in the photo."""
    from falco.faces.ffhq import AlignedFace
    from falco.faces.paste import photo_mask

    face = AlignedFace(box=tuple(row["box"]), landmarks=np.asarray(row["landmarks"]), quad=np.asarray(row["quad"]),
                       image=np.zeros((8, 8, 3), np.uint8))
    mask = (photo_mask(face, shape) > 0).astype(np.uint8)
    flat = mask.flatten(order="F")  # COCO: column-major, counts alternate zeros and ones
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(shape[0]), int(shape[1])], "counts": [int(c) for c in counts]}


def export_coco(manifest: RunManifest, path: Path) -> Path:
    """Every face of the run as COCO detections (bbox, RLE mask, status) in ``path``."""
    images, annotations = [], []
    ids = {}
    for row in manifest.inputs():
        if row["status"] != "done":
            continue
        ids[row["source"]] = len(ids) + 1
        h, w = row["outputs"].get("size", [0, 0])
        images.append({"id": ids[row["source"]], "file_name": row["outputs"].get("photo", row["source"]),
                       "source": row["source"], "height": h, "width": w})
    for face in manifest.faces():
        if face["source"] not in ids or "mask_rle" not in face:
            continue
        x0, y0, x1, y1 = face["box"]
        rle = face["mask_rle"]
        annotations.append({"id": len(annotations) + 1, "image_id": ids[face["source"]], "category_id": 1,
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(sum(rle["counts"][1::2])),
                            "segmentation": rle, "iscrowd": 0, "score": face.get("score"),
                            "status": face["status"], "face_index": face["face_index"]})
    data = {"info": {"description": "falco anonymize detections", "version": __version__},
            "images": images, "annotations": annotations, "categories": [{"id": 1, "name": "face"}]}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data))
    return path


def _write_sidecar(path: Path, key: str, shape: tuple[int, ...], rows: list[dict], provenance: dict) -> None:
    keep = ("box", "score", "landmarks", "quad", "status", "method", "reason", "fallback", "guard", "neighbour",
            "losses")
    faces = [{k: row[k] for k in keep if k in row} for row in rows]
    data = {"source": key, "height": int(shape[0]), "width": int(shape[1]), **provenance, "faces": faces}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


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
