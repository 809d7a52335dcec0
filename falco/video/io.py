"""Video decode, segment encode and the final remux, with PyAV (streaming: one frame at a time).

A video is anonymized in segments of frames. Each segment is encoded on its own into a NUT
file (NUT keeps any time base, so every frame keeps its exact timestamp), written atomically.
:func:`mux_output` then joins the segments' packets (no re-encode) with the input's audio
and subtitle streams, copied packet for packet, into the output container (same container as the
input). Data streams (camera telemetry such as GoPro's GPMF, which carries GPS) and attachments are
metadata: dropped unless ``keep_metadata``, and then copied where the output container takes them.

Segments join cleanly because every segment is encoded with the same settings and without
B-frames (``bf=0``): decoding and presentation order agree, so timestamps stay monotonic
across the joins.

A job reads its frames and writes its output through a :class:`falco.video.sources.FrameSource`.
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from falco.errors import InputError
from falco.run.atomic import atomic_path
from falco.video.orientation import check_rotation, stored, upright, upright_size

__all__ = ["VIDEO_SUFFIXES", "VideoInfo", "SegmentWriter", "default_codec", "is_video", "iter_frames",
           "mux_output", "probe"]

#: Containers read and written, by suffix (the output keeps the input's container).
CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi", ".webm": "webm"}  # = inputs.VIDEO_SUFFIXES
VIDEO_SUFFIXES = frozenset(CONTAINERS)
SEGMENT_FORMAT = "nut"


def is_video(path: str | Path) -> bool:
    """Whether ``path`` names a video falco reads (by its suffix)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def default_codec(path: str | Path) -> str:
    """H.264 (libx264), or VP9 for WebM (which cannot hold H.264)."""
    return "libvpx-vp9" if Path(path).suffix.lower() == ".webm" else "libx264"


@dataclass(frozen=True)
class VideoInfo:
    """What a run needs to know about an input video."""

    path: Path
    width: int
    height: int
    frames: int
    time_base: Fraction
    rate: Fraction | None
    audio: int                      # audio streams (copied)
    metadata: dict = field(default_factory=dict)
    subtitles: int = 0              # subtitle streams (copied)
    data: int = 0                   # data streams (telemetry; metadata, see mux_output)
    rotation: int = 0               # display rotation, degrees counter-clockwise (falco.video.orientation)

    @property
    def upright_size(self) -> tuple[int, int]:
        """``(width, height)`` of the frames as players show them (and as :func:`iter_frames` yields them)."""
        return upright_size(self.width, self.height, self.rotation)


def _open(path: Path):
    import av

    try:
        container = av.open(str(path), "r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path.name}: not a readable video ({exc})") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{path.name}: no video stream")
    return container


def probe(path: str | Path) -> VideoInfo:
    """Size, frame count (counted from the packets when the header does not say), time base and audio.

    Raises:
        InputError: The file is not a readable video or has no video stream.
    """
    import av

    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        frames = int(stream.frames or 0)
        if frames <= 0:
            frames = sum(1 for p in container.demux(stream) if p.size)
        if not ctx.width or not ctx.height or frames <= 0:
            raise InputError(f"{path.name}: the video stream has no frames")
        return VideoInfo(rotation=_display_rotation(container), path=path, width=int(ctx.width), height=int(ctx.height), frames=frames,
                         time_base=Fraction(stream.time_base), rate=stream.average_rate,
                         audio=len(container.streams.audio), metadata=dict(container.metadata),
                         subtitles=len(container.streams.subtitles), data=len(container.streams.data))
    except av.FFmpegError as exc:
        raise InputError(f"{path.name}: corrupt video ({exc})") from None
    finally:
        container.close()


def iter_frames(path: str | Path) -> Iterator[tuple[int, np.ndarray, int | None]]:
    """Decode the first video stream: ``(index, rgb, pts)`` per frame, in presentation order, upright
    (turned by the stream's display rotation, as players show it; :mod:`falco.video.orientation`).

    Shape: rgb ``[H, W, 3]`` uint8.

    Raises:
        InputError: The file cannot be decoded (the message names it).
    """
    import av

    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            yield i, upright(frame.to_ndarray(format="rgb24"), check_rotation(frame.rotation)), frame.pts
    except av.FFmpegError as exc:
        raise InputError(f"{path.name}: corrupt video ({exc})") from None
    finally:
        container.close()


class SegmentWriter:
    """Encode frames into one segment file (atomically: the file exists only once complete).

    Frames come upright (as :func:`iter_frames` yields them) and are stored turned back by the
    input's display rotation; :func:`mux_output` gives the output the same rotation.

    Args:
        final: The segment's path.
        info: The input video (size, time base, rate, rotation).
        codec: FFmpeg encoder name (``libx264``...).
        crf: Constant rate factor (quality; lower is better).
    """

    def __init__(self, final: Path, info: VideoInfo, *, codec: str = "libx264", crf: int = 18) -> None:
        import av

        self._ctx = atomic_path(final)
        tmp = self._ctx.__enter__()
        try:
            self.container = av.open(str(tmp), "w", format=SEGMENT_FORMAT)
            rate = info.rate or Fraction(25)
            try:
                stream = self.container.add_stream(codec, rate=rate)
            except (av.FFmpegError, ValueError) as exc:
                raise InputError(f"--codec {codec!r}: no such encoder in this FFmpeg ({exc})") from None
            stream.width, stream.height = info.width, info.height
            even = info.width % 2 == 0 and info.height % 2 == 0
            stream.pix_fmt = "yuv420p" if even or "vpx" in codec else "yuv444p"  # 4:2:0 needs even sides
            stream.time_base = info.time_base
            stream.codec_context.time_base = info.time_base
            options = {"bf": "0", "crf": str(int(crf))}
            if "vpx" in codec:
                options["b"] = "0"
            stream.options = options
            self.stream = stream
            self.rotation = info.rotation
            self.time_base = info.time_base
            self._last_pts: int | None = None
        except BaseException:
            self._ctx.__exit__(*sys.exc_info())
            raise

    def add(self, rgb: np.ndarray, pts: int | None) -> None:
        """Encode one frame at ``pts`` (in the input's time base)."""
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(stored(rgb, self.rotation)), format="rgb24")
        if pts is None or (self._last_pts is not None and pts <= self._last_pts):
            pts = (self._last_pts or 0) + 1 if self._last_pts is not None else 0
        frame.pts, frame.time_base = pts, self.time_base
        self._last_pts = pts
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        """Flush the encoder and publish the file."""
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        """Drop the unfinished segment."""
        try:
            self.container.close()
        finally:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)


def _packets(container, stream, order: int) -> Iterator[tuple[float, int, int, object]]:
    """``(decode time in seconds, order, count, packet)`` for the packets of ``stream`` (to merge streams in order)."""
    count = 0
    for packet in container.demux(stream):
        if packet.size == 0 or (packet.dts is None and packet.pts is None):
            continue
        t = float((packet.dts if packet.dts is not None else packet.pts) * packet.time_base)
        count += 1
        yield t, order, count, packet


def _segment_packets(segments: list[Path]) -> Iterator[tuple[float, int, int, object]]:
    import av

    for path in segments:
        with av.open(str(path), "r") as seg:
            yield from _packets(seg, seg.streams.video[0], 0)


def _display_rotation(container) -> int:
    """The display rotation of ``container``'s first video stream (read from its first frame)."""
    container.seek(0)
    first = next(container.decode(container.streams.video[0]), None)
    container.seek(0)
    return check_rotation(first.rotation) if first is not None else 0


def _copied_streams(src, keep_metadata: bool) -> list:
    """The streams of ``src`` copied untouched: audio and subtitles; data streams only with ``keep_metadata``."""
    streams = [*src.streams.audio, *src.streams.subtitles]
    return streams + list(src.streams.data) if keep_metadata else streams


def mux_output(final: Path, source: Path, segments: list[Path], *, keep_metadata: bool = False) -> None:
    """Write ``final`` (atomically): the segments' video packets and ``source``'s audio and subtitle packets, remuxed.

    Metadata (container and stream tags: GPS, device, creation time...; data streams such as camera
    telemetry) is dropped unless ``keep_metadata``.

    Raises:
        InputError: With ``keep_metadata``, a data stream the output container cannot hold.
    """
    import av

    fmt = CONTAINERS[final.suffix.lower()]
    with atomic_path(final) as tmp, av.open(str(source), "r") as src, av.open(str(segments[0]), "r") as first:
        out = av.open(str(tmp), "w", format=fmt)
        try:
            vsrc = src.streams.video[0]
            vout = out.add_stream_from_template(first.streams.video[0])
            vout.time_base = vsrc.time_base
            rotation = _display_rotation(src)
            if rotation:  # the input's display matrix (not metadata: without it players show the video sideways)
                vout.set_display_rotation(rotation)
            copied = {}
            for a in _copied_streams(src, keep_metadata):
                try:
                    copied[a.index] = out.add_stream_from_template(a)
                except (av.FFmpegError, ValueError) as exc:
                    codec = getattr(a.codec_context, "name", None) or a.type
                    raise InputError(f"{source.name}: its {a.type} stream #{a.index} ({codec}) "
                                     f"cannot be copied into {final.suffix} ({exc})") from None
                copied[a.index].time_base = a.time_base
                if keep_metadata:
                    copied[a.index].metadata.update(a.metadata)
            if keep_metadata:
                out.metadata.update(src.metadata)
                vout.metadata.update(vsrc.metadata)
            streams = [_segment_packets(segments)]
            if copied:
                streams.append(_packets(src, [src.streams[i] for i in copied], 1))
            for _, order, _, packet in heapq.merge(*streams, key=lambda item: item[:3]):
                packet.stream = vout if order == 0 else copied[packet.stream_index]
                out.mux(packet)
        finally:
            out.close()
