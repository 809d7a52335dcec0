"""``falco demo``: the whole pipeline on one public-domain photo, shown on an HTML page.

The photo is scikit-image's ``astronaut`` (Eileen Collins, NASA, public domain). With the
pretrained models installed the demo uses them; otherwise it makes a tiny random model set
on the fly and says loudly that the result is not meaningful.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from falco.config import AnonymizeConfig
from falco.errors import FalcoError
from falco.imageio import save_image
from falco.manifest import RunManifest

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
    from falco.commands.anonymize import run_anonymize

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not models_available(models):
        from falco.pretrained.tiny import write_tiny_model_set

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
    cfg = AnonymizeConfig(input=src, out=result, models=models, steps=steps, bank_size=bank_size, device=device,
                          format="png", save_crops=True, progress=progress)
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


def render_page(input_photo: Path, output_photo: Path, faces: list[dict], result: Path, curves: Path, *,
                tiny: bool, page_dir: Path) -> str:
    """The demo's HTML page (relative links, no external resources)."""

    def rel(p: Path) -> str:
        return html.escape(Path(p).resolve().relative_to(page_dir.resolve()).as_posix())

    rows = []
    for face in faces:
        cells = []
        for name in ("real", "inverted", "neighbour", "anon"):
            crop = face.get("crops", {}).get(name)
            img = f'<img src="{rel(result / crop)}" width="160" alt="{name}">' if crop else "n/a"
            cells.append(f"<td>{img}<br>{name}</td>")
        losses = html.escape(json.dumps(face.get("losses", {})))
        rows.append(f"<tr><th>face {face['face_index']}<br>{html.escape(face['status'])}</th>{''.join(cells)}"
                    f"<td><code>{losses}</code></td></tr>")
    banner = ('<p style="background:#fdd;padding:8px"><b>Tiny random model set:</b> these outputs are noise; '
              "install the pretrained models (<code>falco models download</code>) for real results.</p>") if tiny else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>falco demo</title></head>
<body style="font-family:sans-serif">
<h1>falco demo</h1>{banner}
<table><tr><td><img src="{rel(input_photo)}" width="384" alt="input"><br>input</td>
<td><img src="{rel(output_photo)}" width="384" alt="anonymized"><br>anonymized</td></tr></table>
<h2>Faces</h2><table>{''.join(rows)}</table>
<h2>Loss curves</h2><img src="{rel(curves)}" alt="loss curves">
</body></html>
"""
