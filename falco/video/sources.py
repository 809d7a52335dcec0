"""Where a video job's frames come from and where its output goes: a video file or an image sequence.

A job reads its frames and writes its output through a :class:`FrameSource`: :class:`VideoFile`
(decoded with PyAV, encoded in segments and remuxed: :mod:`falco.video.io`) or :class:`ImageSequence`
(``--sequence``: a folder of numbered frames, written frame by frame, atomically, with the same
names, formats and sizes into a folder of the same name).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from falco.errors import InputError
from falco.video.io import SegmentWriter, VideoInfo, default_codec, iter_frames, mux_output, probe

__all__ = ["FrameSource", "ImageSequence", "VideoFile", "frame_source", "sequence_frames"]


class FrameSource:
    """One input of a video job: its frames, its segments' writers and its final output.

    Subclasses: :class:`VideoFile`, :class:`ImageSequence`. ``final`` is the output (a file or a folder).
    """

    kind = "video"
    segment_suffix = ".nut"

    def __init__(self, path: Path, final: Path) -> None:
        self.path, self.final = Path(path), Path(final)

    @property
    def name(self) -> str:
        """The input's name in messages."""
        return self.path.name

    def probe(self) -> VideoInfo:
        raise NotImplementedError

    def frames(self) -> Iterator[tuple[int, np.ndarray, int | None]]:
        """``(index, rgb, pts)`` per frame, in order. Shape: rgb ``[H, W, 3]`` uint8."""
        raise NotImplementedError

    def settings(self) -> dict:
        """The output settings a resumed run must share with the unfinished segments."""
        raise NotImplementedError

    def open_segment(self, path: Path, info: VideoInfo, first: int):
        """A writer (``add(rgb, pts)``, ``close()``, ``abort()``) of the segment starting at frame ``first``;
        ``path`` exists once the segment is complete."""
        raise NotImplementedError

    def finish(self, segments: list[Path], *, keep_metadata: bool = False) -> None:
        """Publish the output from the finished segments."""
        raise NotImplementedError

    def outputs(self, info: VideoInfo) -> dict:
        """The output's fields in the manifest row (beside ``{kind: key}``)."""
        raise NotImplementedError


class VideoFile(FrameSource):
    """A video file: decoded with PyAV, segments encoded into NUT files, remuxed at the end (:func:`mux_output`)."""

    def __init__(self, path: Path, final: Path, *, codec: str | None = None, crf: int = 18) -> None:
        super().__init__(path, final)
        self.codec = codec or default_codec(path)
        self.crf = int(crf)

    def probe(self) -> VideoInfo:
        return probe(self.path)

    def frames(self) -> Iterator[tuple[int, np.ndarray, int | None]]:
        return iter_frames(self.path)

    def settings(self) -> dict:
        return {"codec": self.codec, "crf": self.crf}

    def open_segment(self, path: Path, info: VideoInfo, first: int) -> SegmentWriter:
        return SegmentWriter(path, info, codec=self.codec, crf=self.crf)

    def finish(self, segments: list[Path], *, keep_metadata: bool = False) -> None:
        mux_output(self.final, self.path, segments, keep_metadata=keep_metadata)

    def outputs(self, info: VideoInfo) -> dict:
        return {"frames": info.frames, "size": [info.height, info.width], "audio_streams": info.audio,
                "codec": self.codec}


_NUMBER = re.compile(r"(\d+)")


def sequence_frames(folder: str | Path) -> list[Path]:
    """The frames of an image-sequence folder (its images, not its sub-folders), in order of the number
    in their names (the last run of digits: ``frame_9.png`` before ``frame_10.png``).

    Raises:
        InputError: An image without a number in its name, two images with the same number, or no image
            (the message names the files).
    """
    from falco.run.inputs import IMAGE_SUFFIXES

    folder = Path(folder)
    numbered: dict[int, Path] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        digits = _NUMBER.findall(p.stem)
        if not digits:
            raise InputError(f"{folder.name}/{p.name}: not a numbered frame (--sequence reads every image of "
                             f"{folder.name}/ as a frame numbered in its name)")
        n = int(digits[-1])
        if n in numbered:
            raise InputError(f"{folder.name}/{p.name}: frame number {n} is also {numbered[n].name}")
        numbered[n] = p
    if not numbered:
        raise InputError(f"{folder.name}: no image frame")
    return [numbered[n] for n in sorted(numbered)]


def _frame_size(path: Path, max_pixels: int | None) -> tuple[int, int]:
    """``(width, height)`` of an image as :func:`~falco.run.image_files.load_image` decodes it (EXIF rotation
    applied), from its header only."""
    from PIL import Image

    from falco.run.image_files import _check_size

    try:
        with Image.open(path) as im:
            width, height = im.size
            _check_size(path, (width, height), max_pixels)
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated a quarter turn
                width, height = height, width
    except InputError:
        raise
    except Exception as exc:  # a frame Pillow cannot even open
        why = str(exc).replace(str(path), path.name)
        raise InputError(f"{path.parent.name}/{path.name}: not a readable image ({type(exc).__name__}: {why})") \
            from None
    return width, height


class ImageSequence(FrameSource):
    """A folder of numbered frames (``--sequence``), anonymized as one video.

    The output is a folder (``final``) with the same file names, formats and sizes; each frame is written
    atomically as soon as it is anonymized (a segment's frames are rewritten, identically, if the run is
    interrupted before the segment ends). A segment's file lists its frames once they are all written.

    Args:
        fps: The frame rate (recorded; the sequence has no timestamps of its own).
        quality: JPEG/WebP quality of the written frames.
        format: ``--format`` (png, jpeg, webp) to change every frame's format, or None to keep each one's.
    """

    kind = "sequence"
    segment_suffix = ".json"

    def __init__(self, path: Path, final: Path, *, fps: float = 25.0, quality: int = 95, format: str | None = None,
                 max_pixels: int | None = None) -> None:
        super().__init__(path, final)
        self.fps = float(fps)
        self.quality, self.format, self.max_pixels = int(quality), format, max_pixels
        self._files: list[Path] | None = None

    @property
    def files(self) -> list[Path]:
        """The input frames, in order (:func:`sequence_frames`)."""
        if self._files is None:
            self._files = sequence_frames(self.path)
        return self._files

    def output_name(self, frame: Path) -> str:
        if self.format is None:
            return frame.name
        from falco.run.image_files import OUTPUT_FORMATS

        return frame.with_suffix(OUTPUT_FORMATS[self.format]).name

    def probe(self) -> VideoInfo:
        """Every frame's size from its header: all must be equal (the error names the first that differs)."""
        files = self.files
        size = _frame_size(files[0], self.max_pixels)
        for p in files[1:]:
            other = _frame_size(p, self.max_pixels)
            if other != size:
                raise InputError(f"{self.path.name}/{p.name}: frame of {other[0]}x{other[1]} pixels, but "
                                 f"{files[0].name} has {size[0]}x{size[1]} (a sequence's frames must have one size)")
        rate = Fraction(self.fps).limit_denominator(1001)
        return VideoInfo(path=self.path, width=size[0], height=size[1], frames=len(files), time_base=1 / rate,
                         rate=rate, audio=0)

    def frames(self) -> Iterator[tuple[int, np.ndarray, int | None]]:
        from falco.errors import ImageLoadError
        from falco.run.image_files import load_image

        size = None
        for i, p in enumerate(self.files):
            try:
                rgb = load_image(p, max_pixels=self.max_pixels)
            except ImageLoadError as exc:
                raise InputError(f"{self.path.name}/{p.name}: {exc.reason}") from None
            if size is None:
                size = rgb.shape
            elif rgb.shape != size:
                raise InputError(f"{self.path.name}/{p.name}: frame of {rgb.shape[1]}x{rgb.shape[0]} pixels, but "
                                 f"the first has {size[1]}x{size[0]}")
            yield i, rgb, i

    def settings(self) -> dict:
        return {"quality": self.quality, "format": self.format}  # not the frame rate: no frame depends on it

    def open_segment(self, path: Path, info: VideoInfo, first: int) -> _SequenceSegment:
        return _SequenceSegment(self, path, first)

    def finish(self, segments: list[Path], *, keep_metadata: bool = False) -> None:
        """Check that every frame of every segment is in the output folder (they were written as they came)."""
        names = [n for seg in segments for n in json.loads(seg.read_text())["frames"]]
        expected = [self.output_name(p) for p in self.files]
        if names != expected:
            raise InputError(f"{self.path.name}: the finished segments hold {len(names)} frames, the folder "
                             f"{len(expected)}: frames were added or removed during the run; run it again")
        missing = [n for n in names if not (self.final / n).is_file()]
        if missing:
            raise InputError(f"{self.final / missing[0]}: missing from the output ({len(missing)} frame(s)); "
                             "remove the video work folder under OUT/.video/ and run again")

    def outputs(self, info: VideoInfo) -> dict:
        return {"frames": info.frames, "size": [info.height, info.width], "fps": self.fps,
                "first_frame": self.output_name(self.files[0]), "last_frame": self.output_name(self.files[-1])}


class _SequenceSegment:
    """Writes one segment's frames into the sequence's output folder, then the segment's file (its frame list)."""

    def __init__(self, source: ImageSequence, path: Path, first: int) -> None:
        self.source, self.path, self.next = source, path, first
        self.names: list[str] = []
        source.final.mkdir(parents=True, exist_ok=True)

    def add(self, rgb: np.ndarray, pts: int | None) -> None:
        from falco.run.image_files import save_image

        name = self.source.output_name(self.source.files[self.next])
        save_image(self.source.final / name, rgb, quality=self.source.quality)  # atomic (temp file + rename)
        self.names.append(name)
        self.next += 1

    def close(self) -> None:
        from falco.run.atomic import atomic_write_text

        atomic_write_text(self.path, json.dumps({"frames": self.names}))

    def abort(self) -> None:
        """Nothing to undo: the frames written stay and are rewritten, the same, by the resumed run."""


def frame_source(path: Path, final: Path, *, codec: str | None = None, crf: int = 18,
                 fps: float = 25.0, quality: int = 95, format: str | None = None,
                 max_pixels: int | None = None) -> FrameSource:
    """The :class:`FrameSource` of an input: an image sequence for a folder, else a video file."""
    if Path(path).is_dir():
        return ImageSequence(path, final, fps=fps, quality=quality, format=format, max_pixels=max_pixels)
    return VideoFile(path, final, codec=codec, crf=crf)
