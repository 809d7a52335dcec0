"""Turn the collected data of one run into ``report.json``'s ``runs.<name>`` entry.

Every metric is a number or ``None``; a ``None`` gets its reason in ``not_computed`` under the
same dotted key, and ``counts`` mirrors the metrics with the number of faces each was computed on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from falco.evaluation.attributes import FaceLabels, agreement, label_accuracy, lookup_labels
from falco.evaluation.collect import RunData
from falco.evaluation.common import FeatureCache, progress_bar
from falco.evaluation.detection import box_iou
from falco.evaluation.landmarks import head_pose, landmark_nme
from falco.evaluation.pairing import FacePair
from falco.evaluation.regions import summarise_part_changes, summarise_region_choice
from falco.evaluation.reid import pair_scores, rank1_identification, same_person
from falco.evaluation.tools import Tools

__all__ = ["summarise_run"]


def summarise_run(data: RunData, tools: Tools, cache: FeatureCache, *, labels: FaceLabels | None = None,
                  device: str = "cpu", examples: int = 8, progress: bool = False,
                  desc: str = "metrics") -> tuple[dict[str, Any], list[dict], list[dict]]:
    """Metrics of one run.

    Args:
        progress: Show a progress bar on stderr (one step per metric).

    Returns:
        ``(run, examples, face_rows)``: the JSON entry, up to ``examples`` crop pairs for the
        HTML grid, and one row per paired face for ``faces.jsonl``.
    """
    faces, n = data.faces, len(data.faces)
    counts = dict(data.counts)
    counts["faces"] = n
    counts["faces_detected_by_reference"] = sum(f.anon_box is not None for f in faces)
    statuses: dict[str, int] = {}
    for f in faces:
        statuses[f.status] = statuses.get(f.status, 0) + 1
    counts["face_status"] = statuses
    run: dict[str, Any] = {}
    details: dict[str, Any] = {}
    missing = dict(tools.unavailable)

    steps = [("detection", lambda: _detection(run, counts, details, missing, data)),
             ("re-id", lambda: _reid(run, counts, details, missing, data, tools)),
             ("landmarks", lambda: _geometry(run, counts, details, missing, faces)),
             ("attributes", lambda: _attributes(run, counts, details, missing, data, tools))]
    if labels is not None:
        steps.append(("labels", lambda: _labels(run, counts, details, missing, data, labels)))
    steps.append(("regions", lambda: _regions(run, counts, details, data, tools)))
    steps.append(("fid/kid", lambda: _quality(run, counts, missing, data, tools)))
    with progress_bar(steps, desc=desc, unit="metric", enabled=progress) as bar:
        for what, step in bar:
            bar.set_postfix_str(what)
            step()

    run.update(counts=counts, details=details, not_computed=missing, problems=list(data.problems))
    return run, pick_examples(data, examples), [_face_row(f) for f in faces]


def _detection(run, counts, details, missing, data: RunData) -> None:
    run["detection_rate"], counts["detection_rate"], details["detection"] = {}, {}, {}
    for name, c in data.detections.items():
        run["detection_rate"][name] = c.rate
        counts["detection_rate"][name] = c.real
        details["detection"][name] = {"real_faces": c.real, "found_again": c.detected, "anon_detections": c.anon}
        if c.rate is None:
            missing[f"detection_rate.{name}"] = "the detector found no face in the real photos"
    for key in missing:
        if key.startswith("detection_rate."):
            run["detection_rate"].setdefault(key.split(".", 1)[1], None)


def _reid(run, counts, details, missing, data: RunData, tools: Tools) -> None:
    n = len(data.faces)
    run["reid_rate"], run["rank1_identification"] = {}, {}
    counts["reid_rate"], counts["rank1_identification"] = {}, {}
    details["reid_score_mean"] = {}
    for name, rec in tools.recognizers.items():
        counts["reid_rate"][name] = counts["rank1_identification"][name] = n
        if not n:
            run["reid_rate"][name] = run["rank1_identification"][name] = None
            missing[f"reid_rate.{name}"] = missing[f"rank1_identification.{name}"] = "no face to compare"
            continue
        real, anon = np.array(data.real_emb[name]), np.array(data.anon_emb[name])
        scores = pair_scores(rec, real, anon)
        same = same_person(rec, scores)
        run["reid_rate"][name] = float(same.mean())
        run["rank1_identification"][name] = rank1_identification(rec, anon, real, list(range(n)))
        details["reid_score_mean"][name] = {"metric": "distance" if rec.metric == "euclidean" else "cosine",
                                            "mean": float(scores.mean())}
        for f, s, m in zip(data.faces, scores, same, strict=True):
            f.results[f"reid.{name}"] = {"score": round(float(s), 4), "same_person": bool(m)}
    for key in missing:
        if key.startswith(("reid_rate.", "rank1_identification.")):
            metric, name = key.split(".", 1)
            run[metric].setdefault(name, None)


def _geometry(run, counts, details, missing, faces: list[FacePair]) -> None:
    counts["landmark_nme"] = len(faces)
    if not faces:
        run["landmark_nme"] = None
        missing["landmark_nme"] = "no face to compare"
        return
    nmes = [landmark_nme(f.real_landmarks, f.anon_landmarks) for f in faces]
    for f, v in zip(faces, nmes, strict=True):
        f.results["landmark_nme"] = round(v, 5)
    run["landmark_nme"] = float(np.mean(nmes))
    poses = np.array([np.subtract(head_pose(f.anon_landmarks), head_pose(f.real_landmarks)) for f in faces])
    details["pose_error_deg"] = dict(zip(("yaw", "pitch", "roll"), np.abs(poses).mean(0).round(3).tolist()))
    ious = [box_iou(f.real_box, f.anon_box) for f in faces if f.anon_box is not None]
    details["box_iou_mean"] = float(np.mean(ious)) if ious else None


def _attributes(run, counts, details, missing, data: RunData, tools: Tools) -> None:
    agree = agreement(data.real_labels, data.anon_labels) if data.faces else {}
    run["attribute_agreement"] = dict(agree)
    run["attribute_agreement"]["mean"] = float(np.mean(list(agree.values()))) if agree else None
    counts["attribute_agreement"] = {a: len(data.faces) for a in run["attribute_agreement"]}
    details["attribute_source"] = {a: c.name for c in tools.classifiers for a in c.attributes}
    if not agree:
        missing["attribute_agreement.mean"] = "no face or no attribute classifier"
    for f, rl, al in zip(data.faces, data.real_labels, data.anon_labels, strict=True):
        f.results["attributes"] = {"real": rl, "anon": al}


def _labels(run, counts, details, missing, data: RunData, labels: FaceLabels) -> None:
    given, pred_anon, pred_real = [], [], []
    for f, rl, al in zip(data.faces, data.real_labels, data.anon_labels, strict=True):
        hit = lookup_labels(labels, f.source, f.face_index)
        if hit is not None:
            given.append(hit)
            pred_anon.append(al)
            pred_real.append(rl)
    acc, n = label_accuracy(given, pred_anon)
    run["label_accuracy"] = dict(acc)
    run["label_accuracy"]["mean"] = float(np.mean(list(acc.values()))) if acc else None
    counts["label_accuracy"] = {**n, "faces_with_labels": len(given)}
    details["label_accuracy_on_real"] = label_accuracy(given, pred_real)[0]
    predicted = {a for lab in data.anon_labels for a in lab}
    for attr in sorted({a for lab in given for a in lab} - predicted):
        missing[f"label_accuracy.{attr}"] = "no classifier predicts this attribute"
    if not acc:
        missing["label_accuracy.mean"] = "no labelled face matched a paired face"


def _regions(run, counts, details, data: RunData, tools: Tools) -> None:
    """How much each face part changed (:mod:`falco.evaluation.regions`)."""
    summarise_part_changes(run, counts, details, data.part_change, parsing=tools.parser is not None,
                           parser_problem=tools.parser_problem, lpips=tools.lpips is not None,
                           lpips_problem=tools.lpips_problem)
    summarise_region_choice(run, counts, details, data.faces, data.part_change)
    for f, row in zip(data.faces, data.part_change, strict=True):
        f.results["region_change"] = row


def _quality(run, counts, missing, data: RunData, tools: Tools) -> None:
    """FID and KID over the face pairs where both crops exist (features computed while collecting)."""
    run["fid"] = run["kid"] = None
    keep = [i for i, ok in enumerate(data.crop_ok) if ok]
    counts["fid"] = counts["kid"] = len(keep)
    if tools.inception is None:
        return
    if len(keep) < 2:
        missing["fid"] = missing["kid"] = f"needs at least 2 face pairs, got {len(keep)}"
        return
    from falco.evaluation.quality import frechet_distance, kernel_inception_distance

    fr = np.stack([data.real_feats[i] for i in keep])
    fa = np.stack([data.anon_feats[i] for i in keep])
    run["fid"] = frechet_distance(fr, fa)
    run["kid"] = kernel_inception_distance(fr, fa)


def pick_examples(data: RunData, k: int) -> list[dict[str, Any]]:
    """Up to ``k`` pairs, one face per photo in turn, so that many photos are shown.

    Only faces whose crops :func:`~falco.evaluation.collect.collect_run` kept can be picked;
    it keeps every face this round-robin can reach (the first ``k`` of the first ``k`` photos).
    """
    if k <= 0:
        return []
    by_photo: dict[str, list[int]] = {}
    for i, f in enumerate(data.faces):
        if i in data.example_crops:
            by_photo.setdefault(f.source, []).append(i)
    chosen: list[int] = []
    queues = list(by_photo.values())
    while len(chosen) < k and any(queues):
        for q in queues:
            if q and len(chosen) < k:
                chosen.append(q.pop(0))
    return [{"source": data.faces[i].source, "face_index": data.faces[i].face_index,
             "real": data.example_crops[i][0], "anon": data.example_crops[i][1], "results": data.faces[i].results,
             "detected": data.faces[i].anon_box is not None} for i in sorted(chosen)]


def _face_row(f: FacePair) -> dict[str, Any]:
    return {"source": f.source, "face_index": f.face_index, "status": f.status, "real_box": list(f.real_box),
            "anon_box": list(f.anon_box) if f.anon_box is not None else None, **f.results}
