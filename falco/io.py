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

from falco.errors import InputError
from falco.imageio import load_image, save_image  # noqa: F401  (re-exported)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})


@dataclass(frozen=True)
class InputItem:
    """One input photo: its absolute path and its key (path relative to the input root)."""

    path: Path
    key: str


def safe_key(path_text: str) -> str:
    """A key for a list-file line that stays inside the output folder (no root, no ``..``)."""
    parts = [("__" if part == ".." else part) for part in Path(path_text).parts
             if part not in ("/", "\\", ".") and not part.endswith(":\\")]
    return "/".join(parts) or "input"


def discover_inputs(input_path: str | Path) -> list[InputItem]:
    """List the photos of an INPUT (photo, folder or list file), sorted by key.

    Raises:
        InputError: the path does not exist, or a folder/list holds no image.
    """
    root = Path(input_path)
    if not root.exists():
        raise InputError(f"INPUT {str(root)!r} does not exist")
    if root.is_dir():
        items = [InputItem(p.resolve(), p.relative_to(root).as_posix())
                 for p in sorted(root.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    elif root.suffix.lower() in LIST_SUFFIXES:
        items = []
        for line in root.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            p = Path(line)
            p = p if p.is_absolute() else (root.parent / p)
            items.append(InputItem(p.resolve(), safe_key(line)))
    else:
        items = [InputItem(root.resolve(), root.name)]
    if not items:
        raise InputError(f"INPUT {str(root)!r} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))})")
    keys = [i.key for i in items]
    if len(set(keys)) != len(keys):
        raise InputError(f"INPUT {str(root)!r} lists the same path twice")
    return sorted(items, key=lambda i: i.key)


def check_output_dir(out_dir: str | Path, input_path: str | Path) -> Path:
    """Refuse an output directory inside the input folder (or equal to it)."""
    out = Path(out_dir).resolve()
    src = Path(input_path).resolve()
    src_dir = src if src.is_dir() else src.parent
    if src.is_dir() and (out == src_dir or src_dir in out.parents):
        raise InputError(f"--out {str(out_dir)!r} is inside INPUT {str(input_path)!r}: choose a folder outside it")
    return out


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; renamed onto it only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        publish_mode(tmp)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_mode(path: str | Path) -> None:
    """Give a file the usual mode (0666 minus the umask), e.g. one written through a private temp file."""
    os.chmod(path, 0o666 & ~_umask())


def atomic_write_bytes(final: str | Path, data: bytes) -> Path:
    """Write bytes to ``final`` atomically (temp file + rename)."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def save_tensors(final: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Save tensors as safetensors, atomically (readable without falco)."""
    from safetensors.torch import save

    blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write_bytes(final, blob)


def load_tensors(path: str | Path) -> dict:
    """Load a safetensors file written by :func:`save_tensors`."""
    from safetensors.torch import load

    return load(Path(path).read_bytes())


__all__ = ["InputItem", "discover_inputs", "check_output_dir", "atomic_path", "atomic_write_bytes",
           "save_tensors", "load_tensors", "load_image", "save_image"]


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

    Ranks of one torchrun job each take their own lock ``name``.

    Raises:
        InputError: another falco process is writing to ``out_dir``.
    """
    import fcntl

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"--out {str(out)!r} is in use by another falco run (lock {path})") from None
        try:
            yield out
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
