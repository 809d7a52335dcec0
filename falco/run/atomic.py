"""The one way falco writes a file: a temporary file beside it, renamed onto it when complete.

Readers see the old file or the new one, never half of one; a killed run leaves only
``.<name>.<random>.tmp`` files, which the next run removes (``falco.run.inputs.remove_stale_temps``).
Written files get the usual mode (0666 minus the umask), not the temp file's private 0600.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "publish_mode"]


@contextmanager
def atomic_path(final: str | os.PathLike[str], *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; renamed onto it only if the block succeeds.

    Args:
        final: The file to write; its folder is created if needed.
        fsync: Flush the temporary file to disk before the rename.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        publish_mode(tmp)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_mode(path: str | os.PathLike[str]) -> None:
    """Give a file the usual mode (0666 minus the umask), e.g. one written through a private temp file."""
    os.chmod(path, 0o666 & ~_umask())


def atomic_write_bytes(final: str | os.PathLike[str], data: bytes) -> Path:
    """Write bytes to ``final`` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def atomic_write_text(final: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text to ``final`` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(final)
