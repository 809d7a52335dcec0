"""``falco demo``: one public-domain photo anonymized end to end, with an HTML page of every step."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from falco.cli.options import device_option, models_option


def demo_command(
    out: Path = typer.Option(Path("falco-demo"), "--out", help="Where to write the demo (HTML page + outputs)."),
    models: Optional[Path] = models_option(),
    steps: int = typer.Option(50, "--steps", min=0, help="Optimisation steps."),
    bank_size: int = typer.Option(500, "--bank-size", min=1, help="Fakes in the demo's bank."),
    device: str = device_option(),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide progress bars."),
) -> None:
    """Anonymize a public-domain photo end to end and write an HTML page of every step."""
    from falco.run.demo import run_demo

    run_demo(out, models=models, steps=steps, bank_size=bank_size, device=device, progress=not no_progress,
             echo=lambda msg: typer.echo(msg, err=True))
