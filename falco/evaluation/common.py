"""What every evaluation module shares: the "not computed" error, a feature cache, image digests,
progress bars."""

from __future__ import annotations

import contextlib
import hashlib
import sys
from typing import Any, Callable, Hashable, Iterable, Iterator

import numpy as np

from falco.errors import FalcoError

__all__ = ["LANDMARKS_SPEC", "FeatureCache", "MetricUnavailable", "image_digest", "landmarks_key", "progress_bar",
           "recognizer_spec"]


class MetricUnavailable(FalcoError):
    """A metric cannot be computed here (optional package or weights missing).

    The evaluation records the message as the reason the metric is missing instead of failing.
    """


def image_digest(image: np.ndarray) -> str:
    """A content hash of a decoded image (identical pixels -> identical digest): SHA-256 of its
    shape and pixels, also the key of the on-disk cache (:mod:`falco.evaluation.disk_cache`).

    Shape: ``image`` ``[H, W, 3]`` uint8.
    """
    h = hashlib.sha256()
    h.update(repr(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def landmarks_key(landmarks: np.ndarray) -> bytes:
    """A hashable key for a ``[68, 2]`` landmark array (exact float64 bytes)."""
    return np.ascontiguousarray(landmarks, dtype=np.float64).tobytes()


_ABSENT = object()


class FeatureCache:
    """Memo of per-image computations keyed by image content, so that the real photos are
    analysed once for all compared runs, and an "anonymized" photo identical to its real
    photo (a self-comparison) costs nothing.

    Keys are tuples; by convention ``(what, image_digest, *params)``. With a ``disk``
    (:class:`~falco.evaluation.disk_cache.DiskCache`), values stored with ``persist=SPEC``
    (the real photos' detections, landmarks and embeddings; SPEC names the tool that computed
    them) are also written there and found again by later evaluations.
    """

    def __init__(self, disk: Any = None) -> None:
        self._data: dict[Hashable, Any] = {}
        self.disk = disk
        self.hits = 0
        self.misses = 0

    def _from_disk(self, key: Hashable, persist: str | None) -> bool:
        if persist is None or self.disk is None:
            return False
        value = self.disk.load(key, persist, _ABSENT)
        if value is _ABSENT:
            return False
        self._data[key] = value
        return True

    def get(self, key: Hashable, compute: Callable[[], Any], *, persist: str | None = None) -> Any:
        """Return the cached value for ``key``, computing and storing it on a miss.

        Args:
            persist: The computing tool's spec: also look the value up in, and write it to,
                the disk cache (when there is one).
        """
        if key in self._data or self._from_disk(key, persist):
            self.hits += 1
            return self._data[key]
        self.misses += 1
        value = compute()
        self.put(key, value, persist=persist)
        return value

    def put(self, key: Hashable, value: Any, *, persist: str | None = None) -> None:
        """Store a value computed elsewhere (e.g. in a batch or a worker process)."""
        self._data[key] = value
        if persist is not None and self.disk is not None:
            self.disk.store(key, persist, value)

    def has(self, key: Hashable, *, persist: str | None = None) -> bool:
        """Whether ``key`` is known, in memory or (with ``persist``) on disk."""
        return key in self._data or self._from_disk(key, persist)

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


#: Tool spec of the landmarks in the disk cache (dlib's 68-point shape predictor).
LANDMARKS_SPEC = "lm:dlib-shape_predictor_68_face_landmarks"


def recognizer_spec(rec) -> str:
    """Tool spec of a recogniser's embeddings in the disk cache: its rule and a fingerprint of its weights."""
    spec = getattr(rec, "_falco_cache_spec", None)
    if spec is None:
        h = hashlib.sha256(f"{rec.name}|{rec.describe()}|{getattr(rec, 'path', '')}".encode())
        encoder = getattr(rec, "encoder", None)
        if encoder is not None and hasattr(encoder, "state_dict"):
            for name, t in sorted(encoder.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().float().cpu().numpy().tobytes()[:4096])
        spec = f"emb:{rec.name}:{h.hexdigest()[:16]}"
        try:
            rec._falco_cache_spec = spec
        except AttributeError:  # a frozen or slotted recogniser: recomputed each time
            pass
    return spec
