"""``falco anonymize-falco``: a reference FALCO workspace's real dataset, anonymized with its own
inversions and pairs (:func:`falco.compat.falco_anonymize.run_anonymize_workspace`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from falco.cli.options import device_option, falco_params, models_option


def anonymize_falco_command(
    root: Path = typer.Argument(..., metavar="ROOT", help="A reference FALCO repository (datasets/fake, datasets/inv)."),
    out: Path = typer.Option(..., "--out", help="Output directory (resumable): data/<id>.png, codes/<id>.safetensors, run.json."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Real dataset (e.g. celebahq; default: the only one)."),
    fake_dataset: Optional[str] = typer.Option(None, "--fake-dataset", help="Which datasets/fake/ folder, when there are several."),
    pair_map: Optional[str] = typer.Option(None, "--pair-map", help="Pair map file or kind, e.g. clip_auto_euclidean (default: farl_auto_cosine)."),
    generator: str = typer.Option("workspace", "--generator", help="workspace (ROOT/models/pretrained/genforce/<gan>.pth), models or a file."),
    models: Optional[Path] = models_option(),
    device: str = device_option(),
    m: float = typer.Option(0.0, "--m", min=0.0, max=1.0, help="Identity margin m of |cos - m| (paper: 0.0)."),
    steps: int = typer.Option(50, "--steps", min=0, help="Optimisation steps per face (0: the mixed code as it starts)."),
    lr: float = typer.Option(0.01, "--lr", help="Adam learning rate."),
    lambda_id: float = typer.Option(10.0, "--lambda-id", help="Weight of the identity loss."),
    lambda_attr: float = typer.Option(0.1, "--lambda-attr", help="Weight of the attribute loss."),
    layers: str = typer.Option("3:8", "--layers", help="Trainable W+ layers START:END (paper 3:8 = layers 3..7)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Faces optimised together."),
    limit: Optional[int] = typer.Option(None, "--limit", min=0, help="Only the first N paired, inverted images."),
    format: str = typer.Option("png", "--format", help="png, or jpg (quality 95; the reference's file names)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
) -> None:
    """Anonymize a FALCO workspace's real images from its own inversions and fake pairs."""
    from falco.compat.falco_anonymize import run_anonymize_workspace

    params = falco_params(m=m, steps=steps, lr=lr, lambda_id=lambda_id, lambda_attr=lambda_attr, layers=layers)
    summary = run_anonymize_workspace(root, out, dataset=dataset, fake_dataset=fake_dataset, pair_map=pair_map,
                                      models=models, generator=generator, device=device, params=params,
                                      batch_size=batch_size, image_format=format.lower(), limit=limit,
                                      progress=not no_progress, echo=lambda msg: typer.echo(msg, err=True))
    typer.echo(summary.line())
    for name, reason in summary.failed:
        typer.echo(f"failed: {name}: {reason}", err=True)
    if summary.failed:
        raise typer.Exit(1)
