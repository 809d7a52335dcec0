"""The ``falco`` command line: a thin Typer shell over the library.

Each command parses its options, builds a config and calls a library function. Errors that
falco raises on purpose (``FalcoError``) are printed as one line and exit with status 2.
"""

from __future__ import annotations

import sys
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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the Typer app, turning FalcoError into a one-line error."""
    try:
        app(args=argv, standalone_mode=True)
    except FalcoError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
