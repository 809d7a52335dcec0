"""Input discovery and atomic output writes shared by every batch command.

An INPUT is a photo, a folder (searched recursively) or a text file with one path per line
(relative paths are relative to the list file). Each input gets a stable key: its path
relative to the input root, which names its outputs and its manifest row.
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from falco.run.atomic import atomic_path, atomic_write_bytes, atomic_write_text, publish_mode  # noqa: F401 (re-exported)
from falco.errors import InputError
from falco.run.image_files import load_image, save_image  # noqa: F401  (re-exported)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm"})  # read by falco anonymize (falco.video.io)


@dataclass(frozen=True)
class InputItem:
    """One input photo: its absolute path and its key (path relative to the input root)."""

    path: Path
    key: str


def display_path(path: str | os.PathLike[str]) -> str:
    """A path as a user would type it: relative to the working directory when inside it."""
    path = Path(path)
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except (ValueError, OSError):
        return str(path)


def _common_root(paths: list[Path]) -> Path:
    """The deepest folder holding every path (the paths are absolute)."""
    return Path(os.path.commonpath([p.parent for p in paths])) if paths else Path("/")


def discover_inputs(input_path: str | Path, *, videos: bool = False, sequences: bool = False) -> list[InputItem]:
    """List the photos of an INPUT (photo, folder or list file), sorted by key.

    A list file's lines are relative to the list file (or absolute); their keys are their
    paths relative to the deepest folder holding all of them, so ``/data/a/x.jpg`` and
    ``/data/b/y.jpg`` become ``a/x.jpg`` and ``b/y.jpg``.

    Raises:
        InputError: the path does not exist, or a folder/list holds no image.

    With ``videos``, folders also yield videos (``falco.video.io.VIDEO_SUFFIXES``; ``falco anonymize``).
    With ``sequences`` (``--sequence``), see :func:`discover_sequences`.
    """
    suffixes = IMAGE_SUFFIXES | (VIDEO_SUFFIXES if videos else frozenset())
    root = Path(input_path)
    if not root.exists():
        raise InputError(f"INPUT {str(root)!r} does not exist")
    if sequences:
        return discover_sequences(root, videos=videos)
    if root.is_dir():
        items = [InputItem(p.resolve(), p.relative_to(root).as_posix())
                 for p in sorted(root.rglob("*")) if p.is_file() and p.suffix.lower() in suffixes]
    elif root.suffix.lower() in LIST_SUFFIXES:
        paths = []
        for line in root.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            p = Path(line).expanduser()
            paths.append((p if p.is_absolute() else root.parent / p).resolve())
        common = _common_root(paths)
        items = [InputItem(p, p.relative_to(common).as_posix()) for p in paths]
    else:
        items = [InputItem(root.resolve(), root.name)]
    if not items:
        raise InputError(f"INPUT {str(root)!r} holds no image ({', '.join(sorted(suffixes))})")
    keys = [i.key for i in items]
    if len(set(keys)) != len(keys):
        raise InputError(f"INPUT {str(root)!r} lists the same path twice")
    return sorted(items, key=lambda i: i.key)


def discover_sequences(root: Path, *, videos: bool = True) -> list[InputItem]:
    """``--sequence``: every folder of INPUT (INPUT itself included) that directly holds images is one image
    sequence, an item whose path is the folder and whose key is the folder relative to INPUT (INPUT's own name
    for INPUT itself); videos are items as without ``--sequence``. Frames are ordered (and checked) by
    :func:`falco.video.sources.sequence_frames` when the sequence runs.

    Raises:
        InputError: INPUT is neither a folder nor a video, or holds no image folder and no video.
    """
    if not root.is_dir():
        if videos and root.suffix.lower() in VIDEO_SUFFIXES:
            return [InputItem(root.resolve(), root.name)]
        raise InputError(f"--sequence: INPUT {str(root)!r} must be a folder of numbered frames, or a folder of "
                         "such folders")
    items = []
    for folder in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        files = [p for p in folder.iterdir() if p.is_file()]
        if any(p.suffix.lower() in IMAGE_SUFFIXES for p in files):
            key = root.resolve().name if folder == root else folder.relative_to(root).as_posix()
            items.append(InputItem(folder.resolve(), key))
        if videos:
            items += [InputItem(p.resolve(), p.relative_to(root).as_posix())
                      for p in sorted(files) if p.suffix.lower() in VIDEO_SUFFIXES]
    if not items:
        raise InputError(f"--sequence: INPUT {str(root)!r} holds no folder of image frames "
                         f"({', '.join(sorted(IMAGE_SUFFIXES))})" + (" and no video" if videos else ""))
    keys = [i.key for i in items]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise InputError(f"--sequence: INPUT {str(root)!r} holds two inputs named {dup!r} (INPUT's own frames and "
                         "a sub-folder of the same name): move one")
    return sorted(items, key=lambda i: i.key)


def check_output_dir(out_dir: str | Path, input_path: str | Path) -> Path:
    """Refuse an output directory inside the input folder (or equal to it), or one that cannot be written."""
    check_writable_dir(out_dir)
    out = Path(out_dir).resolve()
    src = Path(input_path).resolve()
    src_dir = src if src.is_dir() else src.parent
    if src.is_dir() and (out == src_dir or src_dir in out.parents):
        raise InputError(f"--out {str(out_dir)!r} is inside INPUT {str(input_path)!r}: choose a folder outside it")
    return out


def check_writable_dir(out_dir: str | Path, option: str = "--out") -> None:
    """Fail early, with one line, when ``out_dir`` cannot be created or written.

    Nothing is created or left behind: a probe file (or, where ``out_dir`` does not exist yet,
    a probe folder in its nearest existing parent) is made and removed at once. Other
    processes creating ``out_dir`` at the same time (array tasks) are not disturbed.

    Raises:
        InputError: naming ``option`` and the folder, with the system's reason.
    """
    out = Path(out_dir)
    base = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    try:
        if not base.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        if base == out:
            fd, probe = tempfile.mkstemp(prefix=".falco-probe.", dir=out)
            os.close(fd)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".falco-probe.", dir=base))
    except OSError as exc:
        raise _unwritable(option, out_dir, exc) from None


def _unwritable(option: str, folder: str | Path, exc: OSError) -> InputError:
    return InputError(f"{option} {str(folder)!r} cannot be written: {exc.strerror or exc}")


def save_tensors(final: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Save tensors as safetensors, atomically (readable without falco)."""
    from safetensors.torch import save

    blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write_bytes(final, _sorted_header(blob))


def _sorted_header(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted.

    The safetensors library writes ``__metadata__`` from a hash map, in an order that changes
    from one process to the next; sorting makes the same tensors give the same bytes.
    """
    import json
    import struct

    (size,) = struct.unpack("<Q", blob[:8])
    header = json.dumps(json.loads(blob[8:8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the data must stay 8-byte aligned
    return struct.pack("<Q", len(header)) + header + blob[8 + size:]


def load_tensors(path: str | Path) -> dict:
    """Load a safetensors file written by :func:`save_tensors`."""
    from safetensors.torch import load

    return load(Path(path).read_bytes())


def read_json_object(path: Path, *, unreadable: str = "unreadable", expected: str = "a JSON object") -> dict:
    """A JSON file holding an object.

    Raises:
        InputError: ``"{path}: {unreadable} (why)"`` when it cannot be read or parsed,
            ``"{path}: expected {expected}"`` when it holds something else.
    """
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: {unreadable} ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected {expected}")
    return data


__all__ = ["InputItem", "discover_inputs", "discover_sequences", "display_path", "check_writable_dir", "check_output_dir", "atomic_path",
           "atomic_write_bytes", "atomic_write_text", "publish_mode",
           "save_tensors", "load_tensors", "read_json_object", "load_image", "save_image"]


_STARTED = time.time()


def remove_stale_temps(out_dir: str | Path, older_than: float | None = None) -> int:
    """Delete temp files (``.<name>.<random>.tmp``) a killed run left in ``out_dir``; returns how many.

    Only files last written before ``older_than`` (default: when this process started) are
    removed, so temp files that live writers (other ranks) are writing now are left alone.
    """
    cutoff = _STARTED if older_than is None else older_than
    count = 0
    for p in Path(out_dir).rglob(".*.tmp"):
        try:
            if p.is_file() and p.stat().st_mtime < cutoff:
                p.unlink(missing_ok=True)
                count += 1
        except FileNotFoundError:
            continue
    return count


@contextmanager
def lock_output_dir(out_dir: str | Path, name: str = ".falco.lock") -> Iterator[Path]:
    """Hold an exclusive lock on ``out_dir`` for one run (a second run on it fails at once).

    Ranks of one torchrun job each take their own lock ``name``. The lock file is removed
    when the run ends, however it ends; a folder this call created is removed too when the
    run left nothing in it (a run that failed before writing anything).

    Raises:
        InputError: ``out_dir`` cannot be created or written, or another falco process is
            writing to it.
    """
    import fcntl

    out = Path(out_dir)
    created = not out.exists()
    path = out / name
    try:
        out.mkdir(parents=True, exist_ok=True)
        f = _take_lock(path)
    except OSError as exc:
        raise _unwritable("--out", out, exc) from None
    if f is None:
        raise InputError(f"--out {str(out)!r} is in use by another falco run (lock {path})")
    try:
        yield out
    finally:
        path.unlink(missing_ok=True)  # while still locked: a newcomer makes a new file, never takes this one
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()
        if created:
            try:
                out.rmdir()  # only if the run left it empty
            except OSError:
                pass


def _take_lock(path: Path):
    """Open and lock ``path``; None when another process holds it."""
    import fcntl

    for _ in range(5):
        f = open(path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return None
        if _same_file(f, path):
            return f
        f.close()  # the last holder removed the file between our open and our lock: take the new one
    return None


def _same_file(f, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    return os.fstat(f.fileno()).st_ino == st.st_ino
