"""The identity policy of videos: which tracks share one new identity.

* ``track`` (default): every track its own new identity, drawn from the video's seed, so the same
  person gets different fakes in different videos (and when leaving and coming back).
* ``merge-tracks`` (``--merge-tracks``): within one video, the tracks of one real person share an
  identity. Each track is recognised by dlib's face-recognition ResNet
  (:class:`falco.faces.recognizers.DlibRecognizer`) on up to :data:`SAMPLES` of its detected
  frames; tracks are clustered greedily in order of appearance: a track joins the nearest cluster
  when the Euclidean distance of its mean descriptor to the cluster's mean is below dlib's 0.6
  and no track of the cluster is seen at the same time as it (two faces in one frame are two
  people), otherwise it starts a new cluster.
* ``across-videos`` (``--same-identity-across-videos``, implies merging): the clusters of every
  video are matched (optimal assignment, same threshold) to the identities of
  ``<out>/identities.json``, a mapping kept across runs: per identity its mean real descriptor,
  its key (what the methods seed their draws with, independent of the video it is met in) and,
  for FALCO, the fake it was given in each bank. A later or resumed run over more videos of the
  dataset reuses it. The descriptors are biometric data: they stay in the output folder
  (``identities.json`` and, while a video is in progress, its work folder) and nowhere else.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from falco.errors import InputError
from falco.video.tracking import Track

__all__ = ["POLICIES", "SAMPLES", "IDENTITIES_FILE", "Cluster", "IdentityMap", "cluster_tracks", "identity_policy",
           "sample_frames", "bank_fingerprint"]

#: The identity policies (see the module docstring).
POLICIES = ("track", "merge-tracks", "across-videos")
#: Detected frames of a track that are described (evenly spread over the track).
SAMPLES = 8
#: The cross-video mapping, in the output folder.
IDENTITIES_FILE = "identities.json"
#: Format version of :data:`IDENTITIES_FILE`.
VERSION = 1


def identity_policy(merge_tracks: bool, same_identity_across_videos: bool) -> str:
    """The policy the two flags ask for (``--same-identity-across-videos`` implies merging)."""
    for name, value in (("merge_tracks", merge_tracks), ("same_identity_across_videos", same_identity_across_videos)):
        if not isinstance(value, (bool, np.bool_)):
            raise InputError(f"--{name.replace('_', '-')} must be true or false, got {value!r}")
    if same_identity_across_videos:
        return "across-videos"
    return "merge-tracks" if merge_tracks else "track"


def sample_frames(track: Track, samples: int = SAMPLES) -> list[int]:
    """Indices into ``track.detections`` of the detections to describe: at most ``samples``, evenly spread."""
    n = len(track.detections)
    if n <= samples:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, samples)})


@dataclass
class Cluster:
    """Tracks of one video recognised as one person: their ids, mean descriptor and how many descriptors."""

    index: int
    tracks: list[int] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)
    total: np.ndarray | None = None  # sum of the members' descriptors
    count: int = 0
    distances: dict[int, float] = field(default_factory=dict)  # track -> distance to the cluster when it joined

    @property
    def descriptor(self) -> np.ndarray:
        return self.total / self.count

    def add(self, track: Track, descriptors: np.ndarray, distance: float | None) -> None:
        self.tracks.append(track.id)
        self.spans.append((track.frames[0], track.frames[-1]))
        self.total = descriptors.sum(axis=0) if self.total is None else self.total + descriptors.sum(axis=0)
        self.count += len(descriptors)
        if distance is not None:
            self.distances[track.id] = round(float(distance), 4)

    def overlaps(self, track: Track) -> bool:
        first, last = track.frames[0], track.frames[-1]
        return any(first <= b and a <= last for a, b in self.spans)


def cluster_tracks(tracks: Sequence[Track], descriptors: dict[int, np.ndarray], threshold: float) -> list[Cluster]:
    """Group the tracks of one video by person (greedy, in order of first appearance; see the module docstring).

    Args:
        tracks: The video's tracks.
        descriptors: Per track id, its descriptors. Shape: ``[K, D]`` each, ``K >= 1``.
        threshold: Same person when the Euclidean distance of mean descriptors is below this.
    """
    clusters: list[Cluster] = []
    for track in sorted(tracks, key=lambda t: (t.frames[0], t.id)):
        desc = np.asarray(descriptors.get(track.id, np.zeros((0, 0))), dtype=np.float64)
        if desc.ndim != 2 or len(desc) == 0:
            raise InputError(f"track {track.id}: no face descriptor to recognise its person by")
        mean = desc.mean(axis=0)
        best, best_d = None, np.inf
        for cluster in clusters:
            if cluster.overlaps(track):
                continue
            d = float(np.linalg.norm(mean - cluster.descriptor))
            if d < best_d:
                best, best_d = cluster, d
        if best is None or best_d >= threshold:
            best, best_d = Cluster(len(clusters)), None
            clusters.append(best)
        best.add(track, desc, best_d)
    return clusters


def bank_fingerprint(bank: Any) -> str:
    """A FALCO bank's name in the mapping: its manifest's key, size and chunk checksums (not its path, so a
    moved output folder keeps its fakes)."""
    manifest = getattr(bank, "manifest", None)
    if not isinstance(manifest, dict) or "key" not in manifest:
        raise InputError(f"the fake bank {getattr(bank, 'path', bank)!s} has no manifest key to name it by")
    text = json.dumps([manifest["key"], manifest.get("count"), [c.get("sha256") for c in manifest.get("chunks", [])]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class IdentityMap:
    """``<out>/identities.json``: the identities met so far across the videos of a dataset.

    Layout::

        {"version": 1, "recognizer": "dlib", "threshold": 0.6,
         "note": "...biometric...",
         "identities": [{"id": "person-0001", "key": "...", "descriptor": [128 floats], "count": 24,
                         "videos": {"cam1.mp4": {"cluster": 0, "count": 8, "sum": [128 floats]}},
                         "fakes": {"<bank fingerprint>": 17}}, ...]}

    ``videos`` says, per video, which of its clusters was matched to the identity and what it added
    to the mean, so a resumed video gets the same identities again without being counted twice.
    """

    NOTE = ("Mean face descriptors of real people (biometric data): keep this file with the anonymized "
            "output only, and delete it when the identity mapping is no longer needed.")

    def __init__(self, path: Path, *, recognizer: str, threshold: float) -> None:
        self.path = Path(path)
        self.recognizer = recognizer
        self.threshold = float(threshold)
        self.identities: list[dict[str, Any]] = []
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise InputError(f"{self.path}: not a readable identity mapping ({exc})") from None
            if not isinstance(data, dict) or data.get("version") != VERSION \
                    or not isinstance(data.get("identities"), list):
                raise InputError(f"{self.path}: not an identity mapping of version {VERSION}")
            if data.get("recognizer") != recognizer or float(data.get("threshold", -1)) != self.threshold:
                raise InputError(f"{self.path}: made with recognizer {data.get('recognizer')!r} at threshold "
                                 f"{data.get('threshold')!r}, this run uses {recognizer!r} at {self.threshold}")
            self.identities = data["identities"]

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def assign(self, video: str, clusters: Sequence[Cluster], key_of_new) -> list[tuple[dict, float | None]]:
        """The identity of each cluster of ``video`` (the same list order) and the distance it was matched at
        (None: new, or matched by an earlier run); new identities are added.

        A video matched before (a resumed run) gets the same identities again when it finds the same
        clusters; when it finds others (its detections were redone, e.g. with another detector), its
        earlier contribution is taken out of the mapping and it is matched anew.

        Args:
            key_of_new: ``cluster index -> key`` of an identity first met in this video.
        """
        from scipy.optimize import linear_sum_assignment

        known = {int(i["videos"][video]["cluster"]): i for i in self.identities if video in i.get("videos", {})}
        if known and sorted(known) == [c.index for c in clusters]:
            return [(known[c.index], None) for c in clusters]
        if known:
            self.forget(video)
        out: list[dict | None] = [None] * len(clusters)
        dist: list[float | None] = [None] * len(clusters)
        if self.identities and clusters:
            stored = np.asarray([i["descriptor"] for i in self.identities], dtype=np.float64)
            mine = np.stack([c.descriptor for c in clusters])
            cost = np.linalg.norm(mine[:, None, :] - stored[None, :, :], axis=-1)
            for r, k in zip(*linear_sum_assignment(cost)):
                if cost[r, k] < self.threshold:
                    out[r], dist[r] = self.identities[k], round(float(cost[r, k]), 4)
        for r, cluster in enumerate(clusters):
            ident = out[r]
            if ident is None:
                ident = {"id": self._new_id(), "key": self._new_key(key_of_new(cluster.index)),
                         "descriptor": cluster.descriptor.tolist(), "count": cluster.count, "videos": {}, "fakes": {}}
                self.identities.append(ident)
                out[r] = ident
            else:  # the running mean over every descriptor of the person
                total = ident["count"] + cluster.count
                mean = (np.asarray(ident["descriptor"]) * ident["count"] + cluster.total) / total
                ident["descriptor"], ident["count"] = mean.tolist(), total
            ident["videos"][video] = {"cluster": cluster.index, "count": cluster.count,
                                      "sum": cluster.total.tolist()}
        return list(zip(out, dist))  # type: ignore[arg-type]

    def forget(self, video: str) -> None:
        """Take ``video``'s descriptors out of the mapping; identities met only there are removed."""
        keep = []
        for ident in self.identities:
            part = ident.get("videos", {}).pop(video, None)
            if part is not None:
                count = ident["count"] - part["count"]
                if count <= 0:
                    continue
                total = np.asarray(ident["descriptor"]) * ident["count"] - np.asarray(part["sum"])
                ident["descriptor"], ident["count"] = (total / count).tolist(), count
            keep.append(ident)
        self.identities = keep

    def _new_id(self) -> str:
        numbers = [int(i["id"].rsplit("-", 1)[-1]) for i in self.identities]
        return f"person-{max(numbers, default=0) + 1:04d}"

    def _new_key(self, key: str) -> str:
        used = {i["key"] for i in self.identities}
        n, out = 1, key
        while out in used:
            n += 1
            out = f"{key}:{n}"
        return out

    def fakes(self, bank: str) -> dict[str, int]:
        """FALCO: identity key -> its fake in ``bank`` (a :func:`bank_fingerprint`)."""
        return {i["key"]: int(i["fakes"][bank]) for i in self.identities if bank in i.get("fakes", {})}

    def record_fakes(self, bank: str, fakes: dict[str, int]) -> None:
        """FALCO: remember the fakes given to identities (by key) that have none yet in ``bank``."""
        for ident in self.identities:
            if ident["key"] in fakes:
                ident.setdefault("fakes", {}).setdefault(bank, int(fakes[ident["key"]]))

    def save(self) -> None:
        """Write the mapping atomically."""
        from falco.run.atomic import atomic_write_text

        data = {"version": VERSION, "recognizer": self.recognizer, "threshold": self.threshold, "note": self.NOTE,
                "identities": self.identities}
        atomic_write_text(self.path, json.dumps(data, indent=1))
