"""The ``falco`` command line: a thin Typer shell over the library.

Each command parses its options, builds a config and calls a library function. Errors that
falco raises on purpose (``FalcoError``) are printed as one line and exit with status 2;
Ctrl-C prints one line and exits 130 (re-running the command resumes).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from falco import __version__
from falco.cli_options import APP_SETTINGS, Command, device_option, input_argument, max_pixels_option, models_option
from falco.errors import FalcoError, InputError

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
    """Print the platform, library versions, CUDA and op-build status."""
    from falco.env import collect_env, format_env

    typer.echo(format_env(collect_env()))


from falco.pretrained.cli import models_app  # noqa: E402

app.add_typer(models_app, name="models", help="List, download, verify pretrained models; make a tiny offline set.")

from falco.commands.bank import bank_app  # noqa: E402

app.add_typer(bank_app, name="bank", help="Build and inspect fake banks (fakes + features + FAISS index) for pairing.")

MODELS_OPTION = models_option()
DEVICE_OPTION = device_option()


@app.command("invert", cls=Command)
def invert_command(
    input: Path = input_argument(),
    out: Path = typer.Option(..., "--out", help="Output directory (resumable)."),
    models: Optional[Path] = MODELS_OPTION,
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Faces per encoder batch."),
    device: str = DEVICE_OPTION,
    refine_steps: int = typer.Option(0, "--refine-steps", min=0, help="Latent refinement steps after e4e (0 = off)."),
    detector: str = typer.Option("hog", "--detector", help="Face detector: hog or cnn."),
    upsample: int = typer.Option(1, "--upsample", min=0, help="dlib upsampling for small faces."),
    seed: int = typer.Option(0, "--seed"),
    max_pixels: int = max_pixels_option(),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
) -> None:
    """Invert every face of INPUT into W+ codes (e4e), with aligned crops and a run manifest."""
    from falco.commands.invert import run_invert
    from falco.config import InvertConfig

    cfg = InvertConfig(input=input, out=out, models=models, batch_size=batch_size, device=device,
                       refine_steps=refine_steps, detector=detector, upsample=upsample, seed=seed,
                       max_pixels=max_pixels, progress=not no_progress)
    summary = run_invert(cfg, echo=lambda msg: typer.echo(msg, err=True))
    _finish(summary)


@app.command("eval-attributes", cls=Command)
def eval_attributes_command(
    real: Path = typer.Option(..., "--real", help="Folder of the original photos."),
    anon: list[Path] = typer.Option(..., "--anon", help="Folder of anonymized photos (same relative paths); repeat to compare runs."),
    out: Path = typer.Option(Path("eval-report"), "--out", help="Report folder (report.json/.md/.html)."),
    pairs: Optional[list[Path]] = typer.Option(None, "--pairs", help="Run manifest to pair faces by (once, or once per --anon)."),
    name: Optional[list[str]] = typer.Option(None, "--name", help="Run name, once per --anon (default: folder name)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="CSV of attribute labels (source[,face_index],attr...)."),
    detectors: str = typer.Option("hog,cnn:0,mtcnn", "--detectors", help="Detection-rate detectors: hog, cnn[:UPSAMPLE], mtcnn (default: the CNN without upsampling)."),
    recognizers: str = typer.Option("dlib,arcface", "--recognizers", help="Re-identification: dlib (offline), arcface."),
    classifiers: str = typer.Option("landmarks,farl-celeba", "--classifiers", help="Attributes: landmarks, farl-celeba."),
    upsample: int = typer.Option(1, "--upsample", min=0, max=4, help="dlib upsampling (reference detector, hog, cnn)."),
    no_fid: bool = typer.Option(False, "--no-fid", help="Skip FID/KID."),
    examples: int = typer.Option(8, "--examples", min=0, help="Example pairs per run in report.html (0: no real faces)."),
    models: Optional[Path] = MODELS_OPTION,
    device: str = DEVICE_OPTION,
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bars."),
) -> None:
    """Measure detection, re-identification, attribute preservation and quality of anonymized photos."""
    from falco.commands.eval_attributes import run_eval_attributes
    from falco.evaluation import EvalConfig

    def split(text: str) -> tuple[str, ...]:
        return tuple(p.strip() for p in text.split(",") if p.strip())

    cfg = EvalConfig(real=real, anon=tuple(anon), names=tuple(name or ()), pairs=tuple(pairs or ()), labels=labels,
                     detectors=split(detectors), recognizers=split(recognizers), classifiers=split(classifiers),
                     upsample=upsample, fid=not no_fid, examples=examples, models=models, device=device,
                     progress=not no_progress)
    run_eval_attributes(cfg, out, echo=lambda msg: typer.echo(msg, err=True))


@app.command("anonymize", cls=Command)
def anonymize_command(
    input: Path = input_argument(),
    out: Path = typer.Option(..., "--out", help="Output directory (resumable; never inside INPUT)."),
    method: str = typer.Option("falco", "--method", help="falco, blur, pixelate, mask, ciagan or deepprivacy."),
    m: float = typer.Option(0.0, "--m", min=0.0, max=1.0, help="Identity margin m of |cos - m| (paper: 0.0)."),
    steps: int = typer.Option(50, "--steps", min=0, help="Optimisation steps per face."),
    models: Optional[Path] = MODELS_OPTION,
    bank: Optional[Path] = typer.Option(None, "--bank", help="Fake bank from `falco bank build` (default: build a small one)."),
    bank_size: int = typer.Option(2000, "--bank-size", min=1, help="Fakes in the bank built when --bank is not given."),
    no_reuse: bool = typer.Option(False, "--no-reuse", help="Give every face a different fake (the nearest unused one)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Faces optimised together."),
    device: str = DEVICE_OPTION,
    seed: int = typer.Option(0, "--seed"),
    format: Optional[str] = typer.Option(None, "--format", help="png, jpeg or webp (default: the input's format)."),
    quality: int = typer.Option(95, "--quality", min=1, max=100, help="JPEG/WebP quality."),
    on_fail: str = typer.Option("blur", "--on-fail", help="Cover faces that cannot be anonymized: blur, pixelate, mask or skip."),
    save_crops: bool = typer.Option(False, "--save-crops", help="Also write real/inverted/neighbour/anonymized crops."),
    lr: float = typer.Option(0.01, "--lr", help="Adam learning rate."),
    lambda_id: float = typer.Option(10.0, "--lambda-id", help="Weight of the identity loss."),
    lambda_attr: float = typer.Option(0.1, "--lambda-attr", help="Weight of the attribute loss."),
    layers: str = typer.Option("3:8", "--layers", help="Trainable W+ layers START:END (paper 3:8 = layers 3..7)."),
    amp: str = typer.Option("off", "--amp", help="Mixed precision: off, bf16 or fp16 (ArcFace, FaRL and the generator's top --fp16-res resolutions)."),
    fp16_res: int = typer.Option(4, "--fp16-res", min=0, help="With --amp: generator resolutions run in low precision, from the top (NVIDIA: 4; 0: generator in fp32)."),
    modconv: str = typer.Option("fused", "--modconv", help="Modulated convolutions: fused (grouped, per face) or dense (shared weight; faster at large batch on GPUs)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="Channels-last tensors (implies --modconv dense)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the render-and-loss step (slow first batch)."),
    loss_resolution: Optional[int] = typer.Option(None, "--loss-resolution", help="Compute the losses on the generator's skip output at this resolution (e.g. 256; faster, approximate)."),
    detector: str = typer.Option("hog", "--detector", help="Face detector: hog or cnn."),
    upsample: int = typer.Option(1, "--upsample", min=0, help="dlib upsampling for small faces."),
    blur_preset: Optional[str] = typer.Option(None, "--blur-preset", help="blur: 9, 17 or heavy."),
    pixelate_blocks: Optional[int] = typer.Option(None, "--pixelate-blocks", help="pixelate: 8 or 16 blocks."),
    ciagan_id: Optional[int] = typer.Option(None, "--ciagan-id", help="ciagan: target identity (default: random, seeded)."),
    guard: str = typer.Option("enforce", "--guard", help="Privacy guard: off, warn or enforce (exit 1 if a face needed the fallback)."),
    keep_identity: Optional[list[Path]] = typer.Option(None, "--keep-identity", help="Photo of a consenting person whose faces are left as they are (repeatable)."),
    sidecar: bool = typer.Option(False, "--sidecar", help="Write <photo>.json with each face's provenance."),
    export_detections: Optional[str] = typer.Option(None, "--export-detections", help="coco: write detections_coco.json (boxes, RLE masks)."),
    max_pixels: int = max_pixels_option(),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
) -> None:
    """Replace every face of INPUT by a person who does not exist (FALCO or a baseline)."""
    from falco.commands.anonymize import run_anonymize
    from falco.config import AnonymizeConfig

    try:
        start, end = (int(v) for v in layers.split(":"))
    except ValueError:
        raise InputError(f"--layers must be START:END, e.g. 3:8, got {layers!r}") from None
    if amp not in ("off", "bf16", "fp16"):
        raise InputError(f"--amp must be off, bf16 or fp16, got {amp!r}")
    options = {k: v for k, v in (("preset", blur_preset), ("blocks", pixelate_blocks), ("ciagan_id", ciagan_id))
               if v is not None}
    cfg = AnonymizeConfig(input=input, out=out, method=method, models=models, bank=bank, bank_size=bank_size,
                          reuse=not no_reuse, m=m,
                          steps=steps, lr=lr, lambda_id=lambda_id, lambda_attr=lambda_attr, layers=(start, end),
                          amp=None if amp == "off" else amp, num_fp16_res=fp16_res,
                          fused_modconv=_modconv(modconv), channels_last=channels_last, compile=compile,
                          loss_resolution=loss_resolution, batch_size=batch_size, device=device, seed=seed,
                          format=format.lower() if format else None, quality=quality, on_fail=on_fail,
                          save_crops=save_crops, detector=detector, upsample=upsample, method_options=options,
                          guard=guard, keep_identity=tuple(keep_identity or ()), sidecar=sidecar,
                          export_detections=export_detections, max_pixels=max_pixels, progress=not no_progress)
    summary = run_anonymize(cfg, echo=lambda msg: typer.echo(msg, err=True))
    _finish(summary)


@app.command("demo", cls=Command)
def demo_command(
    out: Path = typer.Option(Path("falco-demo"), "--out", help="Where to write the demo (HTML page + outputs)."),
    models: Optional[Path] = MODELS_OPTION,
    steps: int = typer.Option(50, "--steps", min=0, help="Optimisation steps."),
    bank_size: int = typer.Option(500, "--bank-size", min=1, help="Fakes in the demo's bank."),
    device: str = DEVICE_OPTION,
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide progress bars."),
) -> None:
    """Anonymize a public-domain photo end to end and write an HTML page of every step."""
    from falco.commands.demo import run_demo

    run_demo(out, models=models, steps=steps, bank_size=bank_size, device=device, progress=not no_progress,
             echo=lambda msg: typer.echo(msg, err=True))


def _modconv(value: str) -> bool:
    if value not in ("fused", "dense"):
        raise InputError(f"--modconv must be fused or dense, got {value!r}")
    return value == "fused"


def _finish(summary) -> None:
    """Print the run summary; exit 1 when any input failed (each was reported when it failed)."""
    typer.echo(summary.line())
    if summary.failed:
        typer.echo(f"{len(summary.failed)} input(s) failed (reasons above; `SELECT source, reason FROM inputs "
                   "WHERE status = 'failed'` in manifest.sqlite); re-running retries them", err=True)
    if summary.failed or getattr(summary, "unsafe", 0):
        raise typer.Exit(1)


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
