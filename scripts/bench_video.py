"""Benchmark ``falco anonymize`` on a video: frames/s per method, and a video frame's cost against a photo's.

A clip is made from a shared photo (a slow pan and zoom over two faces, with an AAC track).
For each method, in one process and after a warm-up run (models loaded, FALCO's bank built):

* the video run (detection pass, tracking, the method with per-track state, the guard, encoding)
  is timed and reported as frames/s and seconds per frame;
* the photo run on one frame of the clip saved as a PNG (detection, the method, the guard,
  writing) is timed as seconds per photo;
* ``ratio`` = seconds per video frame / seconds per photo;
* the temporal metrics of the output against the clip (``falco.evaluation.temporal``: tOF, tLP,
  identity consistency within tracks).

    python scripts/bench_video.py                                   # tiny models, every method
    python scripts/bench_video.py --methods blur,falco --frames 48 --models ~/.cache/falco/models --guard enforce
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from falco.config import AnonymizeConfig  # noqa: E402
from falco.latent.optimise import FalcoParams  # noqa: E402
from falco.run.anonymize import run_anonymize  # noqa: E402
from falco.run.image_files import load_image, save_image  # noqa: E402
from falco.video.synth import make_clip, pan_frames  # noqa: E402

METHODS = ("blur", "pixelate", "mask", "ciagan", "deepprivacy", "anonygan", "falco")


def _cfg(src: Path, out: Path, method: str, args, bank: Path | None) -> AnonymizeConfig:
    extra = {}
    if method == "falco":
        extra = dict(falco=FalcoParams(steps=args.steps), video_steps=args.video_steps, bank=bank, bank_size=32)
    return AnonymizeConfig(input=src, out=out, method=method, models=args.models, device=args.device,
                           progress=False, guard=args.guard, video_segment=args.segment, format="png", **extra)


def bench(args) -> list[dict]:
    from falco.evaluation.temporal import identity_consistency, temporal_metrics

    work = Path(tempfile.mkdtemp(prefix="falco-bench-video-"))
    if args.models is None:
        from falco.models.tiny import write_tiny_model_set

        args.models = work / "tiny-models"
        args.models.mkdir()
        write_tiny_model_set(args.models)
    photo = load_image(args.photo)
    frames = pan_frames(photo, args.frames, (args.width, args.height), window=tuple(args.window))
    clip_dir, photo_dir = work / "video", work / "photo"
    clip_dir.mkdir()
    photo_dir.mkdir()
    clip = make_clip(clip_dir / "clip.mp4", frames, fps=args.fps)
    save_image(photo_dir / "frame.png", frames[len(frames) // 2])
    rows = []
    for method in args.methods.split(","):
        warm = work / f"{method}-warm"
        run_anonymize(_cfg(photo_dir, warm, method, args, None), echo=lambda *_: None)
        bank = warm / "bank" if method == "falco" else None
        t0 = time.perf_counter()
        for i in range(args.photo_repeats):
            run_anonymize(_cfg(photo_dir, work / f"{method}-photo{i}", method, args, bank), echo=lambda *_: None)
        per_photo = (time.perf_counter() - t0) / args.photo_repeats
        out = work / f"{method}-video"
        t0 = time.perf_counter()
        summary = run_anonymize(_cfg(clip_dir, out, method, args, bank), echo=lambda *_: None)
        seconds = time.perf_counter() - t0
        assert not summary.failed, summary.failed
        row = {"method": method, "frames": args.frames, "video_s": round(seconds, 2),
               "frames_per_s": round(args.frames / seconds, 2), "s_per_frame": round(seconds / args.frames, 3),
               "s_per_photo": round(per_photo, 3), "ratio_frame_vs_photo": round(seconds / args.frames / per_photo, 2)}
        if not args.no_metrics:
            row.update(temporal_metrics(clip, out / "clip.mp4", models=args.models))
            ident = identity_consistency(clip, out / "clip.mp4", every=2)
            row["id_spread"], row["id_same_person"] = ident["spread"], ident["same_person"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--models", type=Path, default=None, help="Model set (default: a tiny random one).")
    p.add_argument("--device", default="cpu")
    p.add_argument("--photo", type=Path, default=ROOT.parent / "shared" / "data" / "faces" / "2008_001009.jpg")
    p.add_argument("--window", type=int, nargs=4, default=[80, 70, 280, 310], help="x0 y0 x1 y1 of the first view.")
    p.add_argument("--width", type=int, default=200)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--segment", type=int, default=120)
    p.add_argument("--guard", default="off")
    p.add_argument("--steps", type=int, default=50, help="FALCO: steps of a track's first frame (and of a photo).")
    p.add_argument("--video-steps", type=int, default=10)
    p.add_argument("--photo-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    p.add_argument("--no-metrics", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = bench(args)
    print(f"{'method':<12} {'frames/s':>9} {'s/frame':>8} {'s/photo':>8} {'ratio':>6} {'tOF':>7} {'tLP':>6}")
    for r in rows:
        tlp = r.get("tLP")
        print(f"{r['method']:<12} {r['frames_per_s']:>9} {r['s_per_frame']:>8} {r['s_per_photo']:>8} "
              f"{r['ratio_frame_vs_photo']:>6} {r.get('tOF', float('nan')):>7.3f} "
              f"{tlp if isinstance(tlp, float) else 'n/a':>6}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
