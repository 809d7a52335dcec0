"""The video section of ``eval-attributes``' reports: the Markdown/HTML tables and notes of
:func:`falco.evaluation.video.evaluate_videos`' figures (``report.data["video"]``)."""

from __future__ import annotations

import html
from typing import Any, Callable

__all__ = ["video_html", "video_markdown", "video_table"]


def _fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100.0 * v:.1f} %"


def _columns(video: dict[str, Any]) -> list[tuple[str, Callable[[dict], str]]]:
    figures = [r["overall"] for r in video["runs"].values() if r.get("overall")]
    recs = list(dict.fromkeys(k for f in figures for k in f.get("reid_rate", {})))
    dets = list(dict.fromkeys(k for f in figures for k in f.get("detection_rate", {})))
    cols: list[tuple[str, Callable[[dict], str]]] = [
        ("frames", lambda f: f"{f['sampled_frames']}/{f['frames']}" if "frames" in f else "—"),
        ("tOF ↓", lambda f: _fmt(f.get("tOF"), 2)), ("tLP ↓", lambda f: _fmt(f.get("tLP"), 2)),
        ("PSNR ↑", lambda f: _fmt(f.get("psnr"), 2)), ("LPIPS ↓", lambda f: _fmt(f.get("lpips"), 3))]
    for r in recs:
        cols.append((f"re-ID {r} ↓", lambda f, r=r: _pct(f["reid_rate"].get(r)) if "reid_rate" in f else "—"))
    for d in dets:
        cols.append((f"detection {d} ↑",
                     lambda f, d=d: _pct(f["detection_rate"].get(d)) if "detection_rate" in f else "—"))
    for r in recs:
        cols.append((f"ID spread {r} anon / real", lambda f, r=r: _id(f, r, "spread_anon", "spread_real", 3)))
        cols.append((f"ID kept {r} anon / real",
                     lambda f, r=r: _id(f, r, "consistency_anon", "consistency_real", None)))
    return cols


def _id(f: dict, r: str, a: str, b: str, digits: int | None) -> str:
    if "identity" not in f:  # a published row
        return "—"
    i = f["identity"].get(r)
    if i is None:
        return "n/a"
    show = (lambda v: _fmt(v, digits)) if digits is not None else _pct
    return f"{show(i[a])} / {show(i[b])}"


def _rows(video: dict[str, Any], per_video: bool) -> list[tuple[str, dict]]:
    rows = []
    for name, run in video["runs"].items():
        if per_video:
            rows += [(f"{name} · {src}", fig) for src, fig in run["videos"].items()]
        elif run.get("overall"):
            rows.append((name, run["overall"]))
    if not per_video:
        for method, fig in video.get("published", {}).get("methods", {}).items():
            rows.append((f"{method} (published)", {"tOF": fig.get("tOF"), "tLP": fig.get("tLP"),
                                                    "psnr": fig.get("psnr"), "lpips": fig.get("lpips")}))
    return rows


def video_table(data: dict[str, Any], *, per_video: bool = False) -> str:
    """The video figures as a GitHub Markdown table: one row per run (overall) and per published
    method, or (``per_video``) one per run and video; "" without a ``video`` section."""
    video = data.get("video")
    if not video:
        return ""
    cols = _columns(video)
    lines = [f"| {'run · video' if per_video else 'video run'} | " + " | ".join(c[0] for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for label, fig in _rows(video, per_video):
        lines.append(f"| {label} | " + " | ".join(fn(fig) for _, fn in cols) + " |")
    return "\n".join(lines)


def _notes(video: dict[str, Any]) -> list[str]:
    s = video["settings"]
    notes = [f"{k}: {s[k]}." for k in ("tOF", "flow", "tLP", "psnr", "lpips", "frames") if k in s]
    notes.append(f"Re-ID per frame: share of the faces the reference detector ({s['reference_detector']}) finds in "
                 "a measured real frame whose anonymized face, read at the real landmarks, the recognizer calls the "
                 "same person: " + "; ".join(f"{k}: {v}" for k, v in s["recognizers"].items()) + ".")
    notes.append(f"Detection per frame: share of the faces a detector finds in a measured real frame that it finds "
                 f"again in the anonymized frame (IoU >= {s['detection_iou']}, one-to-one): "
                 + ", ".join(f"{k} ({v})" for k, v in s["detectors"].items()) + ".")
    notes.append(f"Identity within a track ({s['tracks']}): ID spread is the mean distance of a track's embeddings to "
                 "their mean (dlib: Euclidean, threshold 0.6; cosine recognizers: 1 - cosine), anonymized / real; "
                 "ID kept is the share of consecutive samples of a track the recognizer calls one person.")
    pub = video.get("published", {})
    if pub.get("methods"):
        parts = [pub[k].rstrip(".") for k in ("source", "url", "notes") if pub.get(k)]
        notes.append("Published figures: " + ". ".join(parts) + ".")
    return notes


def _not_computed(video: dict[str, Any]) -> list[str]:
    out = []
    for name, run in video["runs"].items():
        out += [f"{name}: {p}" for p in run["problems"]]
        reasons: dict[str, list[str]] = {}
        for fig in ([run["overall"]] if run.get("overall") else []):
            for key, why in fig["not_computed"].items():
                reasons.setdefault(why, []).append(key)
        out += [f"{name}: `{', '.join(keys)}` not computed: {why}" for why, keys in reasons.items()]
    return out


def video_markdown(data: dict[str, Any]) -> list[str]:
    """``report.md``'s video section (lines); [] without a ``video`` section."""
    video = data.get("video")
    if not video:
        return []
    out = ["## Videos (temporal consistency, quality, privacy per frame)", "",
           "Runs and published figures: the video table above. Per video:", "", video_table(data, per_video=True), "",
           "### How the video numbers were computed", ""]
    out += [f"- {n}" for n in _notes(video)] + [""]
    missing = _not_computed(video)
    if missing:
        out += ["### Videos not evaluated, figures not computed", ""] + [f"- {m}" for m in missing] + [""]
    return out


def video_html(data: dict[str, Any]) -> str:
    """``report.html``'s video section; "" without a ``video`` section."""
    video = data.get("video")
    if not video:
        return ""
    cols = _columns(video)

    def table(per_video: bool) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in ["run"] + [c[0] for c in cols])
        body = "".join("<tr><td>" + html.escape(label) + "</td>"
                       + "".join(f'<td class="n">{html.escape(fn(fig))}</td>' for _, fn in cols) + "</tr>"
                       for label, fig in _rows(video, per_video))
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    notes = "".join(f"<li>{html.escape(n)}</li>" for n in _notes(video) + _not_computed(video))
    return (f"<h2>Videos</h2>{table(False)}<h3>Per video</h3>{table(True)}"
            f"<h3>How the video numbers were computed</h3><ul>{notes}</ul>")
