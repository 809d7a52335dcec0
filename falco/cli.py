"""The ``falco`` command line: a thin Typer shell over the library.

Each command parses its options, builds a config and calls a library function. Errors that
falco raises on purpose (``FalcoError``) are printed as one line and exit with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from falco import __version__
from falco.errors import FalcoError

app = typer.Typer(
    name="falco",
    help="Attribute-preserving face anonymization (FALCO, CVPR 2023) for photos and face datasets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"falco {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """falco: replace every face by a person who does not exist, keeping the attributes."""


@app.command("env")
def env_command() -> None:
    """Print the platform, library versions, CUDA and op-build status."""
    from falco.env import collect_env, format_env

    typer.echo(format_env(collect_env()))


from falco.pretrained.cli import models_app  # noqa: E402

app.add_typer(models_app, name="models", help="List, download, verify pretrained models; make a tiny offline set.")

MODELS_OPTION = typer.Option(None, "--models", help="Model set directory (default: $FALCO_HOME/models).")


@app.command("invert")
def invert_command(
    input: Path = typer.Argument(..., help="A photo, a folder (recursive) or a text file of paths."),
    out: Path = typer.Option(..., "--out", help="Output directory (resumable)."),
    models: Optional[Path] = MODELS_OPTION,
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Faces per encoder batch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    refine_steps: int = typer.Option(0, "--refine-steps", min=0, help="Latent refinement steps after e4e (0 = off)."),
    detector: str = typer.Option("hog", "--detector", help="Face detector: hog or cnn."),
    upsample: int = typer.Option(1, "--upsample", min=0, help="dlib upsampling for small faces."),
    seed: int = typer.Option(0, "--seed"),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
) -> None:
    """Invert every face of INPUT into W+ codes (e4e), with aligned crops and a run manifest."""
    from falco.commands.invert import run_invert
    from falco.config import InvertConfig

    cfg = InvertConfig(input=input, out=out, models=models, batch_size=batch_size, device=device,
                       refine_steps=refine_steps, detector=detector, upsample=upsample, seed=seed,
                       progress=not no_progress)
    summary = run_invert(cfg, echo=lambda msg: typer.echo(msg, err=True))
    _finish(summary)


def _finish(summary) -> None:
    """Print the run summary; exit 1 when any input failed (listing them)."""
    typer.echo(summary.line())
    if summary.failed:
        for key, reason in summary.failed:
            typer.echo(f"failed: {key}: {reason}", err=True)
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the Typer app, turning FalcoError into a one-line error."""
    try:
        app(args=argv, standalone_mode=True)
    except FalcoError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
