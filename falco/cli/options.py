"""What every ``falco`` command line shares: the app settings and the common options.

Help is plain click text (no boxes, no ``<bool>`` metavars on flags), wrapped to the
terminal up to 120 columns.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperCommand

from falco.errors import InputError

#: Settings of every Typer app of falco (the root and the command groups).
APP_SETTINGS: dict[str, Any] = dict(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"max_content_width": 120, "help_option_names": ["-h", "--help"]},
)


class Command(TyperCommand):
    """A command whose usage line names its arguments the usual way (``INPUT``, not ``{INPUT}``)."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = super().collect_usage_pieces(ctx)
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in pieces]


MODELS_HELP = "Model set directory (default: $FALCO_HOME/models, else ~/.cache/falco/models)."


def models_option() -> Any:
    """``--models DIR``."""
    return typer.Option(None, "--models", help=MODELS_HELP, metavar="DIR")


def device_option() -> Any:
    """``--device``."""
    return typer.Option("auto", "--device", help="auto, cpu or cuda[:N].")


def input_argument() -> Any:
    """The INPUT argument of the batch commands."""
    return typer.Argument(..., metavar="INPUT", help="A photo, a folder (recursive) or a text file of paths.",
                          show_default=False)


def max_pixels_option() -> Any:
    """``--max-pixels``: the decompression-bomb limit of the image reader."""
    from falco.run.image_files import DEFAULT_MAX_PIXELS

    return typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", min=1, metavar="N",
                        help="Refuse images of more pixels (width x height) than this; raise it for genuine huge photos.")


def falco_params(*, m: float, steps: int, lr: float, lambda_id: float, lambda_attr: float, layers: str,
                 change_shape: bool = False, **more: Any) -> Any:
    """The :class:`~falco.latent.optimise.FalcoParams` of the FALCO options the commands share
    (``--m``, ``--steps``, ``--lr``, ``--lambda-id``, ``--lambda-attr``, ``--layers START:END``);
    ``change_shape`` (``--change-shape``) frees the coarse layers too: START becomes 0, so the
    fake's face shape replaces the real one (a departure from the paper); ``more``: further
    FalcoParams fields.

    Raises:
        InputError: ``--layers`` is not START:END.
    """
    from falco.latent.optimise import FalcoParams

    try:
        start, end = (int(v) for v in layers.split(":"))
    except ValueError:
        raise InputError(f"--layers must be START:END, e.g. 3:8, got {layers!r}") from None
    if change_shape:
        start = 0
    return FalcoParams(m=m, steps=steps, lr=lr, lambda_id=lambda_id, lambda_attr=lambda_attr, layers=(start, end),
                       **more)


def report_summary(summary: Any) -> None:
    """Print a run's summary line; exit 1 when any input failed (each was reported when it failed)
    or, for ``anonymize``, when the privacy guard had to cover a face (``summary.unsafe``)."""
    typer.echo(summary.line())
    if summary.failed:
        typer.echo(f"{len(summary.failed)} input(s) failed (reasons above; `SELECT source, reason FROM inputs "
                   "WHERE status = 'failed'` in manifest.sqlite); re-running retries them", err=True)
    if summary.failed or getattr(summary, "unsafe", 0):
        raise typer.Exit(1)
