"""``falco invert``: photos -> aligned crops + W+ codes (e4e) + manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from falco.cli.options import device_option, input_argument, max_pixels_option, models_option, report_summary
from falco.faces.detect import DEFAULT_DETECTOR


def invert_command(
    input: Path = input_argument(),
    out: Path = typer.Option(..., "--out", help="Output directory (resumable)."),
    models: Optional[Path] = models_option(),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Faces per encoder batch."),
    device: str = device_option(),
    refine_steps: int = typer.Option(0, "--refine-steps", min=0, help="Latent refinement steps after e4e (0 = off)."),
    detector: str = typer.Option(DEFAULT_DETECTOR, "--detector", help="Face detector: yunet (OpenCV zoo, default: best recall and speed in scripts/bench_detection.py), hog, cnn (dlib) or mtcnn (facenet-pytorch)."),
    upsample: int = typer.Option(1, "--upsample", min=0, help="dlib upsampling for small faces."),
    seed: int = typer.Option(0, "--seed"),
    max_pixels: int = max_pixels_option(),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
) -> None:
    """Invert every face of INPUT into W+ codes (e4e), with aligned crops and a run manifest."""
    from falco.run.invert import run_invert
    from falco.config import InvertConfig

    cfg = InvertConfig(input=input, out=out, models=models, batch_size=batch_size, device=device,
                       refine_steps=refine_steps, detector=detector, upsample=upsample, seed=seed,
                       max_pixels=max_pixels, progress=not no_progress)
    summary = run_invert(cfg, echo=lambda msg: typer.echo(msg, err=True))
    report_summary(summary)
