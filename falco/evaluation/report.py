"""Write an evaluation as ``report.json``, ``report.md``, ``report.html`` and ``faces.jsonl``.

``report.json`` (format ``falco-eval/1``) holds, per compared run under ``runs.<name>``:
``detection_rate.<detector>``, ``reid_rate.<recognizer>``, ``rank1_identification.<recognizer>``,
``landmark_nme``, ``attribute_agreement.<attribute>`` and ``.mean``, ``fid``, ``kid``,
``region_change.<part>`` (:mod:`falco.evaluation.regions`; the parts it could not measure are
named in ``details.region_change``) and ``label_accuracy`` with ``--labels``. Rates are
fractions in [0, 1]. Every value is a number or ``null``; a ``null`` has its reason in
``not_computed`` under the same dotted key, and ``counts`` mirrors the metrics with the number
of faces each was computed on.

``report.md`` is the papers' table (rows = runs, columns = metrics); ``report.html`` adds bar
charts (inline SVG, no external resources) and an example grid of aligned crops, real next to
anonymized (files under ``examples/``; ``--examples 0`` leaves real faces out of the report).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from falco.evaluation.evaluate import EvaluationReport, _slug
from falco.run.image_files import save_image
from falco.run.inputs import atomic_path

__all__ = ["markdown_table", "write_report"]

_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
_DETECTOR_LABEL = {"hog": "HOG", "cnn": "CNN", "mtcnn": "MTCNN", "yunet": "YuNet", "scrfd": "SCRFD"}
_REC_LABEL = {"dlib": "dlib", "arcface": "ArcFace", "sface": "SFace", "insightface": "insightface"}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100.0 * v:.1f} %"


def _num(v: Any, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _columns(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(label, dotted key, kind)`` of the summary table, from what any run has."""
    runs = data["runs"].values()
    dets = list(dict.fromkeys(k for r in runs for k in r.get("detection_rate", {})))
    recs = list(dict.fromkeys(k for r in runs for k in r.get("reid_rate", {})))
    cols = [("faces", "counts.faces", "int")]
    cols += [(f"detection {_DETECTOR_LABEL.get(d, d)} ↑", f"detection_rate.{d}", "pct") for d in dets]
    for r in recs:
        cols += [(f"re-ID {_REC_LABEL.get(r, r)} ↓", f"reid_rate.{r}", "pct"),
                 (f"rank-1 {_REC_LABEL.get(r, r)} ↓", f"rank1_identification.{r}", "pct")]
    cols += [("landmark NME ↓", "landmark_nme", "num"), ("attribute agreement ↑", "attribute_agreement.mean", "pct")]
    if any("label_accuracy" in r for r in runs):
        cols.append(("label accuracy ↑", "label_accuracy.mean", "pct"))
    cols += [("FID ↓", "fid", "num2"), ("KID ↓", "kid", "num")]
    if any("published" in r for r in runs):  # a protocol's published figure beside ours
        cols = [c for col in cols for c in ([col] + [(f"{col[0]} (published)", f"published.{col[1]}", col[2])]
                                            if any(_get(r, f"published.{col[1]}") is not None for r in runs)
                                            else [col])]
    return cols


def _get(run: dict[str, Any], key: str) -> Any:
    cur: Any = run
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _fmt(v: Any, kind: str) -> str:
    if kind == "int":
        return "n/a" if v is None else str(v)
    if kind == "pct":
        return _pct(v)
    return _num(v, 2 if kind == "num2" else 4)


def markdown_table(data: dict[str, Any]) -> str:
    """The summary table (rows = runs) as GitHub Markdown; then the videos' table when there is one."""
    from falco.evaluation.video_report import video_table

    cols = _columns(data)
    lines = ["| run | " + " | ".join(c[0] for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, run in data["runs"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(_get(run, key), kind) for _, key, kind in cols) + " |")
    if data.get("video"):  # videos (falco.evaluation.video): their table, after the photos' when there are photos
        return "\n".join(lines) + "\n\n" + video_table(data) if data["runs"] else video_table(data)
    return "\n".join(lines)


def _attribute_rows(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    names = list(data["runs"])
    attrs = list(dict.fromkeys(a for r in data["runs"].values() for a in r.get("attribute_agreement", {})))
    rows = [[a] + [_pct(data["runs"][n].get("attribute_agreement", {}).get(a)) for n in names] for a in attrs]
    return names, rows


def _region_rows(data: dict[str, Any], key: str = "region_change",
                 digits: int = 2) -> tuple[list[str], list[list[str]]]:
    """The per-part change table: rows = parts, columns = runs (``region_change``: grey levels;
    ``region_lpips``: LPIPS; n/a when not computed)."""
    names = list(data["runs"])
    parts = list(dict.fromkeys(p for r in data["runs"].values() for p, v in r.get(key, {}).items()
                               if v is not None))
    rows = [[p] + [_num(data["runs"][n].get(key, {}).get(p), digits) for n in names] for p in parts]
    return names, rows


def _missing(data: dict[str, Any]) -> list[str]:
    out = []
    for name, run in data["runs"].items():
        for key, reason in run.get("not_computed", {}).items():
            out.append(f"{name}: `{key}` not computed: {reason}")
    return out


def _method_notes(data: dict[str, Any]) -> list[str]:
    s = data["settings"]
    if "protocol_notes" in s:  # a paper's protocol (falco.evaluation.protocols) says how it counts
        return list(s["protocol_notes"]) + list(data.get("notes", []))
    notes = [
        "Detection rate: share of the faces a detector finds in the real photos that the same detector finds "
        f"again in the anonymized photos (IoU >= {s['detection_iou']}, one-to-one). Detectors: "
        + ", ".join(f"{k} ({v})" for k, v in s["detectors"].items()) + "."
        + (f" dlib CNN: {s['cnn_scan']}." if "cnn" in s["detectors"] and s.get("cnn_scan") else ""),
        "Re-identification rate: share of anonymized faces the recogniser calls the same person as their own "
        "real face. Rank-1 identification: share whose nearest real face (gallery: all real faces of the run) "
        "is their own.",
    ]
    notes += [f"Recogniser `{k}`: {v}." for k, v in s["recognizers"].items()]
    notes += [
        f"Pairing: {', '.join(sorted({r['pairing'] for r in data['runs'].values()}))}. A real face with no "
        "matching detection is evaluated at its real position (worst case for privacy).",
        f"Landmark NME: {s['landmark_nme']}. Landmark attributes: {s['attribute_labels']['landmarks']}.",
        f"FID/KID: {s['fid']}; FID over few faces is biased upward, prefer KID for small sets.",
    ]
    regions = [r["details"]["region_change"] for r in data["runs"].values() if "region_change" in r.get("details", {})]
    for d in {json.dumps(d, sort_keys=True): d for d in regions}.values():
        skipped = {}
        for part, why in d.get("not_computed", {}).items():
            skipped.setdefault(why, []).append("LPIPS" if part == "lpips" else part)
        notes.append(f"Change per face part: {d['measure']}; part masks from {d['masks']}. About 0 for parts kept "
                     "with `falco anonymize --keep`, more for changed parts."
                     + "".join(f" Not computed: {', '.join(p)}: {why}." for why, p in skipped.items()))
    return notes + list(data.get("notes", []))


def _table_section(title: str, first: str, names: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown section with one table (runs as columns); nothing when there are no rows."""
    if not rows:
        return []
    return [f"## {title}", "", f"| {first} | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _markdown(data: dict[str, Any]) -> str:
    out = [f"# falco evaluation: {len(data['runs'] or data.get('video', {}).get('runs', {}))} run(s) against "
           f"`{data['real']}`", "",
           f"falco {data['falco']}, {data['created']}. Rates are percentages of the faces counted in `faces` "
           "(see report.json `counts`).", "", markdown_table(data), ""]
    out += _table_section("Attribute agreement (real vs anonymized)", "attribute", *_attribute_rows(data))
    out += _table_section("Change per face part (mean absolute difference, grey levels 0-255)", "part",
                          *_region_rows(data))
    out += _table_section("Perceptual change per face part (LPIPS inside each part)", "part",
                          *_region_rows(data, "region_lpips", 4))
    out += _table_section("Region control read from the manifests (grey levels 0-255)", "parts",
                          *_region_rows(data, "region_check"))
    from falco.evaluation.video_report import video_markdown

    out += video_markdown(data)
    if data["runs"] or not data.get("video"):  # photo notes, unless the report holds videos only
        out += ["## How the numbers were computed", ""] + [f"- {n}" for n in _method_notes(data)] + [""]
    missing = _missing(data)
    if missing:
        out += ["## Not computed", ""] + [f"- {m}" for m in missing] + [""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- charts
def _bar_chart(title: str, groups: list[str], series: list[str], values: list[list[float | None]],
               *, percent: bool = True, vmax: float | None = None) -> str:
    """A grouped bar chart as inline SVG; ``values[g][s]`` (None draws no bar)."""
    bar_w, gap, left, top, height = 16, 18, 48, 28, 160
    width = max(left + len(groups) * (len(series) * bar_w + gap) + 20, left + 9 * len(title))
    finite = [v for row in values for v in row if v is not None]
    top_v = vmax if vmax is not None else (max(finite) if finite and max(finite) > 0 else 1.0)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" '
             f'height="{top + height + 70}" aria-label="{html.escape(title)}">',
             f'<text x="{left}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>']
    for k in range(5):
        v = top_v * k / 4
        y = top + height - height * k / 4
        label = f"{100 * v:.0f}%" if percent else f"{v:.3g}"
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{label}</text>')
    for g, group in enumerate(groups):
        x0 = left + g * (len(series) * bar_w + gap) + gap / 2
        for s, _ in enumerate(series):
            v = values[g][s]
            if v is None:
                continue
            h = height * min(max(v / top_v, 0.0), 1.0)
            text = _pct(v) if percent else f"{v:.4g}"
            parts.append(f'<rect x="{x0 + s * bar_w:.1f}" y="{top + height - h:.1f}" width="{bar_w - 2}" '
                         f'height="{h:.1f}" fill="{_PALETTE[s % len(_PALETTE)]}"><title>{html.escape(series[s])}: '
                         f'{text}</title></rect>')
        cx = x0 + len(series) * bar_w / 2
        parts.append(f'<text x="{cx:.1f}" y="{top + height + 12}" font-size="10" text-anchor="end" '
                     f'transform="rotate(-35 {cx:.1f} {top + height + 12})">{html.escape(group)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _legend(names: list[str]) -> str:
    return '<p class="legend">' + " ".join(
        f'<span><i style="background:{_PALETTE[i % len(_PALETTE)]}"></i>{html.escape(n)}</span>'
        for i, n in enumerate(names)) + "</p>"


def _charts(data: dict[str, Any]) -> str:
    names = list(data["runs"])
    runs = [data["runs"][n] for n in names]
    charts = []
    dets = list(dict.fromkeys(k for r in runs for k in r.get("detection_rate", {})))
    if dets:
        charts.append(_bar_chart("Detection rate (higher keeps faces usable)",
                                 [_DETECTOR_LABEL.get(d, d) for d in dets], names,
                                 [[r["detection_rate"].get(d) for r in runs] for d in dets], vmax=1.0))
    recs = list(dict.fromkeys(k for r in runs for k in r.get("reid_rate", {})))
    if recs:
        groups, vals = [], []
        for rec in recs:
            groups += [f"re-ID {_REC_LABEL.get(rec, rec)}", f"rank-1 {_REC_LABEL.get(rec, rec)}"]
            vals += [[r["reid_rate"].get(rec) for r in runs], [r["rank1_identification"].get(rec) for r in runs]]
        charts.append(_bar_chart("Re-identification (lower is more private)", groups, names, vals, vmax=1.0))
    attrs = list(dict.fromkeys(a for r in runs for a in r.get("attribute_agreement", {})))
    if attrs:
        charts.append(_bar_chart("Attribute agreement (higher preserves more)", attrs, names,
                                 [[r["attribute_agreement"].get(a) for r in runs] for a in attrs], vmax=1.0))
    if any(r.get("landmark_nme") is not None for r in runs):
        charts.append(_bar_chart("Landmark NME (lower keeps pose)", ["NME"], names,
                                 [[r.get("landmark_nme") for r in runs]], percent=False))
    return _legend(names) + "\n".join(f'<figure>{c}</figure>' for c in charts)


# --------------------------------------------------------------------------- html
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 20px}th,td{border:1px solid #ccc;padding:4px 8px;font-size:13px}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f4f4f4}
figure{display:inline-block;margin:0 24px 16px 0;vertical-align:top}
.legend span{margin-right:14px;font-size:13px}.legend i{display:inline-block;width:12px;height:12px;margin-right:4px}
.grid{display:flex;flex-wrap:wrap;gap:12px}.pair{border:1px solid #ddd;padding:6px;font-size:11px;width:270px}
.pair img{width:128px;height:128px;image-rendering:auto}.pair img.broken{outline:3px solid red}
.warn{color:#a00}
"""

_CHECK_SCRIPT = """
(function(){
  var errors = 0;
  window.addEventListener('error', function(){ errors += 1; document.documentElement.dataset.errors = errors; }, true);
  window.addEventListener('load', function(){
    var imgs = Array.prototype.slice.call(document.images), bad = 0;
    imgs.forEach(function(img){
      if(!(img.complete && img.naturalWidth > 0)){ bad += 1; img.classList.add('broken'); }
    });
    var root = document.documentElement;
    root.dataset.images = imgs.length; root.dataset.imagesBroken = bad; root.dataset.errors = errors;
    root.dataset.ready = 'yes';
  });
})();
"""


def _html_table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f'<td class="{"n" if i >= numeric_from else ""}">{html.escape(c)}</td>' for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _examples_html(files: dict[str, list[tuple[str, str, dict]]]) -> str:
    if not any(files.values()):
        return "<p>No examples (<code>--examples 0</code> or no face).</p>"
    out = ['<p class="warn">These crops show real faces: share this report only with people allowed to see '
           'the original photos.</p>']
    for name, items in files.items():
        out.append(f"<h3>{html.escape(name)}</h3><div class=\"grid\">")
        for real, anon, meta in items:
            facts = [f"{meta['source']} #{meta['face_index']}",
                     "detected again" if meta["detected"] else "not detected (evaluated at the real box)"]
            for key, val in meta["results"].items():
                if key.startswith("reid.") and isinstance(val, dict):
                    facts.append(f"{key[5:]}: {val['score']} ({'same person' if val['same_person'] else 'other'})")
            out.append('<div class="pair">'
                       f'<img src="{html.escape(real)}" alt="real {html.escape(meta["source"])}">'
                       f'<img src="{html.escape(anon)}" alt="anonymized {html.escape(meta["source"])}">'
                       f'<div>{"<br>".join(html.escape(f) for f in facts)}</div></div>')
        out.append("</div>")
    return "".join(out)


def _html(data: dict[str, Any], files) -> str:
    cols = _columns(data)
    rows = [[n] + [_fmt(_get(r, k), kind) for _, k, kind in cols] for n, r in data["runs"].items()]
    names, attr_rows = _attribute_rows(data)
    title = f"falco evaluation: {len(data['runs'])} run(s)"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style><script>{_CHECK_SCRIPT}</script></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Real photos: <code>{html.escape(data['real'])}</code>. falco {html.escape(str(data['falco']))}, "
        f"{html.escape(data['created'])}.</p>",
        "<h2>Summary</h2>", _html_table(["run"] + [c[0] for c in cols], rows),
        "<h2>Charts</h2>", _charts(data),
    ]
    if attr_rows:
        parts += ["<h2>Attribute agreement</h2>", _html_table(["attribute"] + names, attr_rows)]
    names, region_rows = _region_rows(data)
    if region_rows:
        parts += ["<h2>Change per face part (grey levels 0-255)</h2>", _html_table(["part"] + names, region_rows)]
    names, lpips_rows = _region_rows(data, "region_lpips", 4)
    if lpips_rows:
        parts += ["<h2>Perceptual change per face part (LPIPS)</h2>", _html_table(["part"] + names, lpips_rows)]
    from falco.evaluation.video_report import video_html

    parts.append(video_html(data))
    parts += ["<h2>Examples (real | anonymized)</h2>", _examples_html(files),
              "<h2>How the numbers were computed</h2><ul>"
              + "".join(f"<li>{html.escape(n)}</li>" for n in _method_notes(data)) + "</ul>"]
    missing = _missing(data)
    if missing:
        parts += ["<h2>Not computed</h2><ul>" + "".join(f"<li>{html.escape(m)}</li>" for m in missing) + "</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts)


# -------------------------------------------------------------------------- writing
def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _write_examples(report: EvaluationReport, out: Path) -> dict[str, list[tuple[str, str, dict]]]:
    from PIL import Image

    ex_dir = out / "examples"
    written: set[str] = set()
    files: dict[str, list[tuple[str, str, dict]]] = {}

    def save(rel: str, crop: np.ndarray) -> str:
        if rel not in written:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            small = np.asarray(Image.fromarray(crop).resize((128, 128), Image.Resampling.LANCZOS))
            save_image(out / rel, small, quality=92)
            written.add(rel)
        return rel

    for r, (name, items) in enumerate(report.examples.items()):
        files[name] = []
        for item in items:
            stem = _slug(f"{Path(item['source']).with_suffix('')}-{item['face_index']}")
            real = save(f"examples/real/{stem}.jpg", item["real"])
            anon = save(f"examples/{r:02d}-{_slug(name)}/{stem}.jpg", item["anon"])
            meta = {k: item[k] for k in ("source", "face_index", "detected", "results")}
            files[name].append((real, anon, meta))
    if ex_dir.is_dir():  # drop crops of an earlier report in the same folder
        for p in ex_dir.rglob("*.jpg"):
            if p.relative_to(out).as_posix() not in written:
                p.unlink()
    return files


def write_report(report: EvaluationReport, out: str | Path) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``report.html``, ``faces.jsonl`` and example crops.

    Returns:
        ``{"json": ..., "md": ..., "html": ..., "faces": ...}`` paths.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = _write_examples(report, out)
    data = _jsonable(report.data)
    for name, items in files.items():
        data["runs"][name]["examples"] = [{"real": r, "anon": a, "source": m["source"], "face_index": m["face_index"]}
                                          for r, a, m in items]
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html",
             "faces": out / "faces.jsonl"}
    _write_text(paths["json"], json.dumps(data, indent=2, allow_nan=False) + "\n")
    _write_text(paths["md"], _markdown(data))
    _write_text(paths["html"], _html(data, files))
    lines = [json.dumps(_jsonable({"run": name, **row}), allow_nan=False)
             for name, rows in report.faces.items() for row in rows]
    _write_text(paths["faces"], "\n".join(lines) + ("\n" if lines else ""))
    return paths
