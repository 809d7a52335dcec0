"""Short test clips made from a photo: a slow pan and zoom over it, H.264 with an AAC tone.

Used by the tests and ``scripts/bench_video.py`` (no video ships with the shared data).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from falco.video.orientation import stored

__all__ = ["make_clip", "pan_frames"]


def pan_frames(photo: np.ndarray, frames: int, size: tuple[int, int], *, window: tuple[int, int, int, int],
               pan: tuple[float, float] = (1.0, 0.5), zoom: float = 0.004) -> list[np.ndarray]:
    """``frames`` views of ``photo``: the ``window`` ``(x0, y0, x1, y1)`` panned by ``pan`` pixels and
    shrunk by ``zoom`` (a fraction) per frame, each resized to ``size`` ``(width, height)``."""
    x0, y0, x1, y1 = window
    out = []
    img = Image.fromarray(photo)
    for t in range(frames):
        s = 1.0 - zoom * t
        cx, cy = (x0 + x1) / 2 + pan[0] * t, (y0 + y1) / 2 + pan[1] * t
        hw, hh = (x1 - x0) * s / 2, (y1 - y0) * s / 2
        box = (cx - hw, cy - hh, cx + hw, cy + hh)
        out.append(np.asarray(img.resize(size, Image.Resampling.BILINEAR, box=box)))
    return out


_ASS_HEADER = (b"[Script Info]\nScriptType: v4.00+\n\n[V4+ Styles]\nFormat: Name\nStyle: Default\n\n"
               b"[Events]\nFormat: Layer, Start, End, Style, Text\n")


def make_clip(path: str | Path, frames: list[np.ndarray], *, fps: int = 25, audio: bool = True,
              pts: list[int] | None = None, metadata: dict[str, str] | None = None,
              subtitles: list[tuple[float, float, str]] | None = None, rotation: int = 0) -> Path:
    """Encode ``frames`` (RGB, even sides) into ``path`` (container from its suffix) with an AAC tone.

    Args:
        pts: Frame timestamps in units of ``1/(fps * 100)`` s (variable frame rate); default regular.
        metadata: Container tags (e.g. ``location`` for GPS, ``creation_time``).
        subtitles: ``(start s, end s, text)`` cues, as a subtitle stream (SubRip in MKV, mov_text in
            MP4/MOV, WebVTT in WebM).
        rotation: Display rotation (degrees counter-clockwise, as phones record portrait video):
            ``frames`` are given as players show them and stored turned back.
    """
    import av

    path = Path(path)
    frames = [stored(f, rotation) for f in frames]
    height, width = frames[0].shape[:2]
    tb = Fraction(1, fps * 100)
    with av.open(str(path), "w") as out:
        if metadata:
            out.metadata.update(metadata)
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.time_base = tb
        vs.codec_context.time_base = tb
        vs.options = {"crf": "16", "preset": "veryfast"}
        if rotation:
            vs.set_display_rotation(rotation)
        aus = out.add_stream("aac", rate=22050) if audio else None
        subs = None
        if subtitles:
            codec = {".mkv": "subrip", ".webm": "webvtt"}.get(path.suffix.lower(), "mov_text")
            subs = out.add_stream(codec)
            subs.time_base = subs.codec_context.time_base = Fraction(1, 1000)
            subs.codec_context.subtitle_header = _ASS_HEADER  # FFmpeg's text subtitle encoders start from ASS
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = pts[i] if pts is not None else i * 100
            frame.time_base = tb
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if aus is not None:
            last = (pts[-1] if pts is not None else (len(frames) - 1) * 100) + 100
            n = int(22050 * last * tb)
            t = np.arange(n) / 22050
            tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            for start in range(0, n, 1024):
                chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start:start + 1024]), format="fltp",
                                                   layout="mono")
                chunk.sample_rate, chunk.pts = 22050, start
                for packet in aus.encode(chunk):
                    out.mux(packet)
            for packet in aus.encode():
                out.mux(packet)
        for start, end, text in subtitles or []:
            data = text.encode() if subs.codec_context.name != "mov_text" else len(text.encode()).to_bytes(2, "big") + text.encode()
            packet = av.Packet(data)
            packet.stream, packet.time_base = subs, Fraction(1, 1000)
            packet.pts = packet.dts = round(start * 1000)
            packet.duration = round((end - start) * 1000)
            out.mux(packet)
    return path
