"""What every evaluation module shares: the "not computed" error, a feature cache, image digests,
progress bars."""

from __future__ import annotations

import contextlib
import hashlib
import sys
from typing import Any, Callable, Hashable, Iterable, Iterator

import numpy as np

from falco.errors import FalcoError

__all__ = ["FeatureCache", "MetricUnavailable", "image_digest", "landmarks_key", "progress_bar"]


class MetricUnavailable(FalcoError):
    """A metric cannot be computed here (optional package or weights missing).

    The evaluation records the message as the reason the metric is missing instead of failing.
    """


def image_digest(image: np.ndarray) -> str:
    """A content hash of a decoded image (identical pixels -> identical digest).

    Shape: ``image`` ``[H, W, 3]`` uint8.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def landmarks_key(landmarks: np.ndarray) -> bytes:
    """A hashable key for a ``[68, 2]`` landmark array (exact float64 bytes)."""
    return np.ascontiguousarray(landmarks, dtype=np.float64).tobytes()


class FeatureCache:
    """Memo of per-image computations keyed by image content, so that the real photos are
    analysed once for all compared runs, and an "anonymized" photo identical to its real
    photo (a self-comparison) costs nothing.

    Keys are tuples; by convention ``(what, image_digest, *params)``.
    """

    def __init__(self) -> None:
        self._data: dict[Hashable, Any] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """Return the cached value for ``key``, computing and storing it on a miss."""
        if key in self._data:
            self.hits += 1
            return self._data[key]
        self.misses += 1
        value = compute()
        self._data[key] = value
        return value

    def put(self, key: Hashable, value: Any) -> None:
        """Store a value computed elsewhere (e.g. in a batch)."""
        self._data[key] = value

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)


@contextlib.contextmanager
def progress_bar(items: Iterable[Any], *, desc: str, unit: str, enabled: bool = True) -> Iterator[Any]:
    """A tqdm bar on stderr over ``items`` (a silent one when ``enabled`` is false), closed on exit."""
    from tqdm.auto import tqdm

    bar = tqdm(items, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
               leave=True)
    try:
        yield bar
    finally:
        bar.close()
