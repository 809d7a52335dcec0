"""The ``falco`` command line: a thin Typer shell over the library, one module per command group.

Each command parses its options, builds a config and calls a library function. Errors that
falco raises on purpose (``FalcoError``) are printed as one line and exit with status 2;
Ctrl-C prints one line and exits 130 (re-running the command resumes).
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from falco import __version__
from falco.cli.anonymize import anonymize_command
from falco.cli.bank import bank_app
from falco.cli.demo import demo_command
from falco.cli.evaluate import eval_attributes_command
from falco.cli.falco_compat import anonymize_falco_command
from falco.cli.invert import invert_command
from falco.cli.models import models_app
from falco.cli.options import APP_SETTINGS, Command
from falco.errors import FalcoError

app = typer.Typer(
    name="falco",
    help="Attribute-preserving face anonymization (FALCO, CVPR 2023) for photos and face datasets.",
    **APP_SETTINGS,
)

#: Exit status of a run stopped with Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130
INTERRUPTED = "interrupted; re-run the same command to resume"


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


@app.command("env", cls=Command)
def env_command() -> None:
    """Print the platform, library versions, CUDA and op-build status, FAISS's device, insightface/onnxruntime."""
    from falco.bank.gpu import faiss_info
    from falco.env import collect_env, format_env
    from falco.faces.insightface_zoo import env_lines

    typer.echo(format_env(collect_env()))
    faiss = faiss_info()
    typer.echo(f"{'faiss search':<16} {faiss['device']} ({faiss['why']})")
    for line in env_lines():
        typer.echo(line)


app.add_typer(models_app, name="models", help="List, download, verify pretrained models; make a tiny offline set.")
app.add_typer(bank_app, name="bank", help="Build and inspect fake banks (fakes + features + FAISS index) for pairing.")
app.command("invert", cls=Command)(invert_command)
app.command("eval-attributes", cls=Command)(eval_attributes_command)
app.command("anonymize", cls=Command)(anonymize_command)
app.command("demo", cls=Command)(demo_command)
app.command("anonymize-falco", cls=Command)(anonymize_falco_command)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one line for a FalcoError (exit 2) or Ctrl-C (exit 130)."""
    try:
        app(args=argv, prog_name="falco", standalone_mode=True)
    except FalcoError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:  # stylegan2_ops is a package of its own, with its own errors
        ops = sys.modules.get("stylegan2_ops.errors")
        if ops is None or not isinstance(exc, ops.OpsError):
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:  # outside the command's own handling (e.g. while importing)
        typer.echo(INTERRUPTED, err=True)
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit as exc:
        if exc.code == EXIT_INTERRUPTED:  # typer turns Ctrl-C into exit 130, silently; no command exits 130
            typer.echo(INTERRUPTED, err=True)
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
