"""``falco anonymize``: every face replaced by a person who does not exist (FALCO or a baseline)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from falco.cli.options import (device_option, falco_params, input_argument, max_pixels_option, models_option,
                               report_summary)
from falco.errors import InputError
from falco.faces.detect import DEFAULT_DETECTOR


def anonymize_command(
    input: Path = input_argument(),
    out: Path = typer.Option(..., "--out", help="Output directory (resumable; never inside INPUT)."),
    method: str = typer.Option("falco", "--method", help="falco, blur, pixelate, mask, ciagan, deepprivacy or anonygan (see `falco.methods.available_methods()`)."),
    m: float = typer.Option(0.0, "--m", min=0.0, max=1.0, help="Identity margin m of |cos - m| (paper: 0.0)."),
    steps: int = typer.Option(50, "--steps", min=0, help="Optimisation steps per face."),
    models: Optional[Path] = models_option(),
    bank: Optional[Path] = typer.Option(None, "--bank", help="Fake bank from `falco bank build` (default: build a small one)."),
    bank_size: int = typer.Option(2000, "--bank-size", min=1, help="Fakes in the bank built when --bank is not given."),
    no_reuse: bool = typer.Option(False, "--no-reuse", help="Give every face a different fake (the nearest unused one)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Faces optimised together."),
    device: str = device_option(),
    seed: int = typer.Option(0, "--seed"),
    format: Optional[str] = typer.Option(None, "--format", help="png, jpeg or webp (default: the input's format)."),
    quality: int = typer.Option(95, "--quality", min=1, max=100, help="JPEG/WebP quality."),
    on_fail: str = typer.Option("blur", "--on-fail", help="Cover faces that cannot be anonymized: blur, pixelate, mask or skip."),
    save_crops: bool = typer.Option(False, "--save-crops", help="Also write real/inverted/neighbour/anonymized crops."),
    lr: float = typer.Option(0.01, "--lr", help="Adam learning rate."),
    lambda_id: float = typer.Option(10.0, "--lambda-id", help="Weight of the identity loss."),
    lambda_attr: float = typer.Option(0.1, "--lambda-attr", help="Weight of the attribute loss."),
    layers: str = typer.Option("3:8", "--layers", help="Trainable W+ layers START:END (paper 3:8 = layers 3..7)."),
    change_shape: bool = typer.Option(False, "--change-shape", help="FALCO: also optimise the coarse W+ layers that hold the face's shape (START becomes 0; not in the paper)."),
    region_focus: float = typer.Option(0.75, "--region-focus", min=0.0, max=1.0, help="FALCO under --keep/--change: how much the attribute loss favours the parts taken from the photo (0: the paper's loss)."),
    amp: str = typer.Option("off", "--amp", help="Mixed precision: off, bf16 or fp16 (ArcFace, FaRL and the generator's top --fp16-res resolutions)."),
    fp16_res: int = typer.Option(4, "--fp16-res", min=0, help="With --amp: generator resolutions run in low precision, from the top (NVIDIA: 4; 0: generator in fp32)."),
    modconv: str = typer.Option("fused", "--modconv", help="Modulated convolutions: fused (grouped, per face) or dense (shared weight; faster at large batch on GPUs)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="Channels-last tensors (implies --modconv dense)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the render-and-loss step (slow first batch)."),
    loss_resolution: Optional[int] = typer.Option(None, "--loss-resolution", help="Compute the losses on the generator's skip output at this resolution (e.g. 256; faster, approximate)."),
    detector: str = typer.Option(DEFAULT_DETECTOR, "--detector", help="Face detector: yunet (OpenCV zoo, default: best recall and speed in scripts/bench_detection.py), hog, cnn (dlib), mtcnn (facenet-pytorch) or scrfd (insightface buffalo_l, non-commercial)."),
    upsample: int = typer.Option(1, "--upsample", min=0, help="dlib upsampling for small faces."),
    blur_preset: Optional[str] = typer.Option(None, "--blur-preset", help="blur: 9, 17 or heavy (falco's face region), or a published setup: ciagan-9x9, ciagan-17x17 (whole 128-px CIAGAN crop), deepprivacy-heavy, deepprivacy-gaussian (detector box)."),
    pixelate_blocks: Optional[int] = typer.Option(None, "--pixelate-blocks", help="pixelate: 8 or 16 blocks across the face region."),
    pixelate_block_size: Optional[int] = typer.Option(None, "--pixelate-block-size", help="pixelate: blocks of this many pixels (2-256) over the face region."),
    pixelate_preset: Optional[str] = typer.Option(None, "--pixelate-preset", help="pixelate: a published setup: ciagan-16x16, ciagan-8x8 (16/8-px blocks on the 128-px CIAGAN crop), deepprivacy-8x8, deepprivacy-16x16 (blocks on the detector box)."),
    ciagan_id: Optional[int] = typer.Option(None, "--ciagan-id", help="ciagan: target identity (default: random, seeded)."),
    anonygan_condition: Optional[Path] = typer.Option(None, "--anonygan-condition", help="anonygan: photo of a person who does not exist whose face conditions every face (default: generated fakes, from --bank when given)."),
    method_option: Optional[list[str]] = typer.Option(None, "--method-option", metavar="KEY=VALUE", help="An option of the method's constructor (repeatable), e.g. feather=0.1."),
    guard: str = typer.Option("enforce", "--guard", help="Privacy guard: off, warn or enforce (exit 1 if a face needed the fallback)."),
    keep_identity: Optional[list[Path]] = typer.Option(None, "--keep-identity", help="Photo of a consenting person whose faces are left as they are (repeatable)."),
    keep: Optional[str] = typer.Option(None, "--keep", metavar="PARTS", help="Parts of each face kept from the photo, comma-separated: skin, brows, eyes, nose, mouth, lips, hair, neck, ears, glasses, hat, cloth or eyes-brows, mouth-lips, hair-neck, everything, nothing (hair..cloth need the face parser)."),
    change: Optional[str] = typer.Option(None, "--change", metavar="PARTS", help="The only parts of each face the method changes (same names as --keep; excludes --keep)."),
    region_feather: float = typer.Option(0.02, "--region-feather", help="--keep/--change: width of the seams, a fraction of the face's size."),
    region_masks: str = typer.Option("auto", "--region-masks", help="--keep/--change masks: auto (the face parser when installed, else the 68 landmarks), landmarks or parsing."),
    sidecar: bool = typer.Option(False, "--sidecar", help="Write <photo>.json with each face's provenance."),
    export_detections: Optional[str] = typer.Option(None, "--export-detections", help="coco: write detections_coco.json (boxes, RLE masks)."),
    max_pixels: int = max_pixels_option(),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
    codec: Optional[str] = typer.Option(None, "--codec", help="Videos: FFmpeg encoder (default libx264; libvpx-vp9 for .webm)."),
    crf: int = typer.Option(18, "--crf", min=0, max=63, help="Videos: constant rate factor (quality; lower is better)."),
    keep_metadata: bool = typer.Option(False, "--keep-metadata", help="Videos: keep the container's metadata (GPS, device, creation time; stripped by default)."),
    detect_every: int = typer.Option(1, "--detect-every", min=1, help="Videos: run face detection every N frames (tracks fill the others)."),
    video_steps: int = typer.Option(10, "--video-steps", min=0, help="Videos, FALCO: steps of each frame after a track's first (warm start from the previous frame)."),
    video_segment: int = typer.Option(120, "--video-segment", min=1, help="Videos: frames per resumable segment."),
    merge_tracks: bool = typer.Option(False, "--merge-tracks", help="Videos: tracks of one real person in a video (leaving and coming back) get the same new identity (recognised by dlib's face descriptor, distance < 0.6)."),
    sequence: bool = typer.Option(False, "--sequence", help="Folders of numbered frames (INPUT itself or its sub-folders; png, jpg...) are videos: tracked, one identity per track, written with the same names, formats and sizes into a folder of the same name under --out."),
    sequence_fps: float = typer.Option(25.0, "--sequence-fps", help="--sequence: the frames' rate (recorded in the manifest)."),
    same_identity_across_videos: bool = typer.Option(False, "--same-identity-across-videos", help="Videos: the same real person gets the same new identity in every video of --out (multi-camera datasets; implies --merge-tracks). Keeps OUT/identities.json: mean face descriptors of the real people (biometric data; it stays in --out) and their identities, reused by later runs."),
) -> None:
    """Replace every face of INPUT by a person who does not exist (FALCO or a baseline)."""
    from falco.config import AnonymizeConfig
    from falco.run.anonymize import run_anonymize

    params = falco_params(m=m, steps=steps, lr=lr, lambda_id=lambda_id, lambda_attr=lambda_attr, layers=layers,
                          change_shape=change_shape, region_focus=region_focus, amp=None if amp == "off" else amp, num_fp16_res=fp16_res, fused_modconv=_modconv(modconv),
                          channels_last=channels_last, compile=compile, loss_resolution=loss_resolution)
    options = parse_method_options(method_option or ())
    if blur_preset is not None and pixelate_preset is not None:
        raise InputError("give --blur-preset (method blur) or --pixelate-preset (method pixelate), not both")
    options.update({k: v for k, v in (("preset", blur_preset), ("preset", pixelate_preset), ("blocks", pixelate_blocks),
                                      ("block_size", pixelate_block_size), ("ciagan_id", ciagan_id),
                                      ("condition", anonygan_condition)) if v is not None})
    cfg = AnonymizeConfig(input=input, out=out, method=method, models=models, device=device, seed=seed,
                          batch_size=batch_size, falco=params, bank=bank, bank_size=bank_size, reuse=not no_reuse,
                          method_options=options, detector=detector, upsample=upsample, max_pixels=max_pixels,
                          format=format.lower() if format else None, quality=quality, save_crops=save_crops,
                          sidecar=sidecar, export_detections=export_detections, on_fail=on_fail, guard=guard,
                          keep_identity=tuple(keep_identity or ()), keep=keep, change=change,
                          region_feather=region_feather, region_masks=region_masks, progress=not no_progress,
                          codec=codec, crf=crf, keep_metadata=keep_metadata, detect_every=detect_every,
                          video_steps=video_steps, video_segment=video_segment, merge_tracks=merge_tracks,
                          same_identity_across_videos=same_identity_across_videos, sequence=sequence,
                          sequence_fps=sequence_fps)
    summary = run_anonymize(cfg, echo=lambda msg: typer.echo(msg, err=True))
    report_summary(summary)




def _modconv(value: str) -> bool:
    if value not in ("fused", "dense"):
        raise InputError(f"--modconv must be fused or dense, got {value!r}")
    return value == "fused"


def parse_method_options(pairs: list[str] | tuple[str, ...]) -> dict[str, object]:
    """``--method-option KEY=VALUE`` pairs as keyword arguments: integers, floats, true/false and
    none are converted, anything else stays a string (the method checks its own options)."""
    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise InputError(f"--method-option must be KEY=VALUE with KEY a name, got {pair!r}")
        options[key.strip()] = _option_value(text.strip())
    return options


def _option_value(text: str) -> object:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
