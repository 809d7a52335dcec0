"""``falco demo``: the whole pipeline on one public-domain photo, shown on an HTML page.

The photo is scikit-image's ``astronaut`` (Eileen Collins, NASA, public domain). With the
pretrained models installed the demo uses them; otherwise it makes a tiny random model set
on the fly and says loudly that the result is not meaningful.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from falco.latent.optimise import FalcoParams
from falco.config import AnonymizeConfig
from falco.errors import FalcoError
from falco.run.image_files import save_image
from falco.run.manifest import RunManifest

ROLES = ("generator", "encoder", "identity", "attributes")


def demo_photo() -> np.ndarray:
    """scikit-image's ``astronaut`` (512x512 RGB uint8, public domain)."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def models_available(models: Path | None) -> bool:
    """True when every network FALCO needs is in the model set."""
    from falco.pretrained.modelset import resolve_model

    try:
        for role in ROLES:
            resolve_model(role, models)
    except FalcoError:
        return False
    return True


def run_demo(out: Path, *, models: Path | None = None, steps: int = 50, bank_size: int = 500,
             device: str = "auto", progress: bool = True, echo=print) -> Path:
    """Run the demo into ``out``; returns the HTML page's path."""
    from falco.run.anonymize import run_anonymize

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not models_available(models):
        from falco.models.tiny import write_tiny_model_set

        models = out / "tiny-models"
        echo("=" * 78)
        echo("WARNING: pretrained models are not installed (`falco models download` fetches them).")
        echo(f"WARNING: using a TINY RANDOM model set made in {models}: the faces it draws are noise,")
        echo("WARNING: only the pipeline is demonstrated, not the anonymization quality.")
        echo("=" * 78)
        if not (models / "manifest.json").exists():
            write_tiny_model_set(models)
    src = out / "input"
    src.mkdir(exist_ok=True)
    photo_path = src / "astronaut.png"
    if not photo_path.exists():
        save_image(photo_path, demo_photo())
    result = out / "result"
    cfg = AnonymizeConfig(input=src, out=result, models=models, bank_size=bank_size, device=device,
                          format="png", save_crops=True, progress=progress, falco=FalcoParams(steps=steps))
    summary = run_anonymize(cfg, echo=echo)
    echo(summary.line())
    with RunManifest(result) as manifest:
        faces = manifest.faces()
        tiny = _is_tiny(models)
    curves = out / "loss_curves.png"
    plot_curves(faces, curves)
    page = out / "index.html"
    page.write_text(render_page(photo_path, result / "astronaut.png", faces, result, curves, tiny=tiny, page_dir=out))
    echo(f"demo written to {page}")
    return page


def _is_tiny(models: Path | None) -> bool:
    from falco.pretrained.modelset import is_tiny

    return is_tiny(models)


def plot_curves(faces: list[dict], path: Path) -> Path:
    """One PNG with the identity, attribute and total loss per step for every face."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key, title in zip(axes, ("id", "attr", "total"), ("identity |cos - m|", "attribute (FaRL L1)", "total")):
        for face in faces:
            values = face.get("loss_curves", {}).get(key)
            if values:
                ax.plot(range(1, len(values) + 1), values, label=f"face {face['face_index']}")
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


CROPS = (
    ("real", "real", "The face as detected in the photo, aligned (FFHQ alignment) and cropped to 256 px: "
     "the input of everything that follows."),
    ("inverted", "inverted", "Its e4e inversion: the generator's rendering of the face's W+ code. The closer it "
     "looks to <i>real</i>, the better the attributes the optimisation aims at are captured."),
    ("neighbour", "neighbour", "The paired fake: the generated face of the fake bank (nobody) nearest to the real "
     "face in FaRL feature space. Its middle W+ layers are the starting point of the optimisation."),
    ("anon", "anonymized", "The anonymized result: the neighbour's middle layers optimised so that the face keeps "
     "the real face's attributes (pose, expression, hair...) but not its identity. This is what is pasted back into "
     "the photo, unless the privacy guard covered the face (see its status)."),
)

STATUSES = {
    "done": "anonymized by the method and passed the privacy guard",
    "fallback": "not pasted back: the privacy guard (or a failed optimisation) covered the face instead",
    "unsafe": "still recognised after every fallback",
    "missed": "not found by the first detection; the privacy guard found it and covered it",
    "kept": "left as it was (matches --keep-identity)",
    "failed": "the method failed and the face was left as it was (--on-fail skip)",
}

LOSS_NAMES = {"id": "identity |cos - m|", "attr": "attribute (FaRL L1)", "total": "total"}


def fmt(x) -> str:
    """A number for people: 4 significant digits; ``n/a`` for None or NaN."""
    if x is None:
        return "n/a"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return html.escape(str(x))
    if isinstance(x, float) and x != x:
        return "n/a"
    return f"{x:.4g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="num"><tr>{head}</tr>{body}</table>'


def _face_details(face: dict) -> str:
    """The explanation of one face: status, how it was covered and why, guard checks, losses."""
    from falco.guard import COVER_WORDS, covered_how

    status = face.get("status", "?")
    items = [("status", f"<b>{html.escape(status)}</b>: {html.escape(STATUSES.get(status, ''))}")]
    if face.get("method"):
        items.append(("method", html.escape(str(face["method"]))))
    if face.get("neighbour") is not None:
        items.append(("paired fake", f"bank index {fmt(face['neighbour'])}"))
    how = covered_how(face)
    if how:
        items.append(("covered by", html.escape(how)))
    if face.get("reason"):
        items.append(("why", html.escape(str(face["reason"]))))
    guard = face.get("guard") or {}
    if guard:
        items.append(("privacy guard", f"verdict <b>{html.escape(str(guard.get('verdict')))}</b>"))
        trail = guard.get("trail") or [{"step": "final", "identity": guard.get("identity", {}),
                                        "same": None}]
        names = sorted({k for stage in trail for k in stage.get("identity", {})})
        steps = {"method": "the method's output", "redo": "re-done (stronger identity weight)", "final": "final"}
        rows = []
        for stage in trail:
            same = stage.get("same")
            step = str(stage["step"])
            rows.append([html.escape(steps.get(step, f"covered by {COVER_WORDS.get(step, step)}"))]
                        + [fmt(stage.get("identity", {}).get(n)) for n in names]
                        + ["n/a" if same is None else ("yes" if same else "no")])
        header = ["checked"] + [html.escape(n) + (" distance" if n == "dlib" else " cosine") for n in names]
        items.append(("identity checks", _table(header + ["same person?"], rows)
                      + '<br><small>dlib: same person when the distance is below 0.6; ArcFace: when the cosine '
                      "similarity is at least 0.25.</small>"))
    losses = face.get("losses") or {}
    if losses:
        order = [k for k in LOSS_NAMES if k in losses] + [k for k in losses if k not in LOSS_NAMES]
        rows = [[html.escape(LOSS_NAMES.get(k, k)), fmt(losses[k])] for k in order]
        items.append(("final losses", _table(["loss", "value"], rows)))
    return "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def render_page(input_photo: Path, output_photo: Path, faces: list[dict], result: Path, curves: Path, *,
                tiny: bool, page_dir: Path) -> str:
    """The demo's HTML page (relative links, no external resources, every text html-escaped)."""

    def rel(p: Path) -> str:
        return html.escape(Path(p).resolve().relative_to(page_dir.resolve()).as_posix())

    legend = "".join(f"<dt>{label}</dt><dd>{text}</dd>" for _, label, text in CROPS)
    blocks = []
    for face in faces:
        cells = []
        crops = face.get("crops") or {}
        for key, label, _ in CROPS:
            crop = crops.get(key)
            img = f'<img src="{rel(result / crop)}" width="160" alt="{label}">' if crop else "<i>n/a</i>"
            cells.append(f"<td>{img}<br>{label}</td>")
        title = f"face {fmt(face.get('face_index'))}: {html.escape(str(face.get('status', '?')))}"
        crops_row = f"<table><tr>{''.join(cells)}</tr></table>" if crops else ""
        blocks.append(f"<h3>{title}</h3>{crops_row}{_face_details(face)}")
    banner = ""
    if tiny:
        banner = ('<p style="background:#fdd;padding:8px"><b>Tiny random model set:</b> these outputs are noise '
                  "(and the detector's false detections are likely to be covered by the privacy guard); "
                  "install the pretrained models (<code>falco models download</code>) for real results.</p>")
    faces_html = "".join(blocks) if blocks else "<p>No face was found in the photo.</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>falco demo</title>
<style>
body {{ font-family: sans-serif; max-width: 60em; }}
dt {{ font-weight: bold; margin-top: 0.4em; }}
table.num {{ border-collapse: collapse; }}
table.num td, table.num th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }}
table.num td:first-child {{ text-align: left; }}
</style></head>
<body>
<h1>falco demo</h1>{banner}
<table><tr><td><img src="{rel(input_photo)}" width="384" alt="input"><br>input</td>
<td><img src="{rel(output_photo)}" width="384" alt="anonymized"><br>anonymized</td></tr></table>
<h2>Faces</h2>
<p>For each face found, four 256-px crops show the steps of the anonymization:</p>
<dl>{legend}</dl>
{faces_html}
<h2>Loss curves</h2>
<p>Per optimisation step and face: the identity loss (lower means less like the real face's identity), the
attribute loss (lower means closer to its attributes) and their weighted sum, which the optimisation minimises.</p>
<img src="{rel(curves)}" alt="loss curves">
</body></html>
"""
