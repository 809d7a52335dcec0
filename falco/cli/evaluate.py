"""``falco eval-attributes``: detection, re-identification, attributes and quality of anonymized photos."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from falco.cli.options import device_option, models_option


def eval_attributes_command(
    real: Path = typer.Option(..., "--real", help="Folder of the original photos and/or videos, or one video."),
    anon: list[Path] = typer.Option(..., "--anon", help="Folder of anonymized photos/videos (same relative paths), or the anonymized video; repeat to compare runs."),
    out: Path = typer.Option(Path("eval-report"), "--out", help="Report folder (report.json/.md/.html)."),
    pairs: Optional[list[Path]] = typer.Option(None, "--pairs", help="Run manifest to pair faces by (once, or once per --anon)."),
    name: Optional[list[str]] = typer.Option(None, "--name", help="Run name, once per --anon (default: folder name)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="CSV of attribute labels (source[,face_index],attr...)."),
    detectors: str = typer.Option("hog,cnn:0,mtcnn", "--detectors", help="Detection-rate detectors: hog, cnn[:UPSAMPLE], mtcnn (default: the CNN without upsampling)."),
    recognizers: str = typer.Option("dlib,arcface", "--recognizers", help="Re-identification: dlib (offline), arcface, sface (OpenCV zoo; e.g. dlib,arcface,sface)."),
    classifiers: str = typer.Option("landmarks,farl-celeba", "--classifiers", help="Attributes: landmarks, farl-celeba."),
    upsample: int = typer.Option(1, "--upsample", min=0, max=4, help="dlib upsampling (reference detector, hog, cnn)."),
    no_fid: bool = typer.Option(False, "--no-fid", help="Skip FID/KID."),
    examples: int = typer.Option(8, "--examples", min=0, help="Example pairs per run in report.html (0: no real faces)."),
    models: Optional[Path] = models_option(),
    device: str = device_option(),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bars."),
    protocol: str = typer.Option("falco", "--protocol", help="falco (default), ciagan (CIAGAN's 128-px CelebA crops, dlib detection, identification) or deepprivacy (detection only, IoU 0.5); see README 'Evaluation protocols'."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Folder of the on-disk cache of the real photos' detections, landmarks and embeddings (default: $FALCO_EVAL_CACHE or ~/.cache/falco/eval)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the on-disk cache."),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes running the dlib detectors of all photos in parallel first (protocols falco and deepprivacy)."),
    eval_batch_size: Optional[int] = typer.Option(None, "--eval-batch-size", min=0, help="Faces per call of the torch networks (ArcFace, FaRL, Inception; MTCNN photos on CUDA), batched across photos (default: 64 on CUDA, 16 on the CPU; 0: one call per photo)."),
    video_every: int = typer.Option(2, "--video-every", min=1, help="Videos: measure every N-th frame (tOF/tLP on the pair N-1, N; 1: every frame, TecoGAN's figures)."),
    flow: str = typer.Option("auto", "--flow", help="Videos: tOF's optical flow: auto (RAFT when `falco models download raft-small` installed it, else Farneback), farneback or raft."),
) -> None:
    """Measure detection, re-identification, attribute preservation and quality of anonymized photos; for videos also tOF/tLP, PSNR/LPIPS and identity consistency."""
    from falco.evaluation.run import run_eval_attributes
    from falco.evaluation import EvalConfig

    def split(text: str) -> tuple[str, ...]:
        return tuple(p.strip() for p in text.split(",") if p.strip())

    from falco.errors import InputError
    from falco.evaluation.disk_cache import default_cache_dir

    if no_cache and cache is not None:
        raise InputError("give --cache DIR or --no-cache, not both")
    cfg = EvalConfig(real=real, anon=tuple(anon), names=tuple(name or ()), pairs=tuple(pairs or ()), labels=labels,
                     detectors=split(detectors), recognizers=split(recognizers), classifiers=split(classifiers),
                     upsample=upsample, fid=not no_fid, examples=examples, models=models, device=device,
                     progress=not no_progress, protocol=protocol, workers=workers, video_every=video_every,
                     video_flow=flow, eval_batch_size=eval_batch_size,
                     disk_cache=None if no_cache else (cache or default_cache_dir()))
    run_eval_attributes(cfg, out, echo=lambda msg: typer.echo(msg, err=True))
