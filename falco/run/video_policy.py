"""The identity policy of a run's videos (``--merge-tracks``, ``--same-identity-across-videos``): checked
against what the output folder already holds, and the across-videos mapping it opens
(:mod:`falco.video.policy` holds the clustering and the mapping itself)."""

from __future__ import annotations

from falco.config import AnonymizeConfig
from falco.errors import InputError
from falco.run.manifest import RunManifest
from falco.video.policy import IDENTITIES_FILE, IdentityMap, identity_policy

__all__ = ["check_policy", "open_identity_map"]


def check_policy(cfg: AnonymizeConfig, manifest: RunManifest) -> str:
    """The run's identity policy, after checking that the videos already finished in the output folder were
    made under the same one (an unfinished video restarts under a new policy; see :meth:`VideoJob._check_work`)."""
    from falco.run.sharding import current_shard

    policy = identity_policy(cfg.merge_tracks, cfg.same_identity_across_videos)
    before: dict[str, set[str]] = {}
    for row in manifest.faces():
        if row.get("track") is not None and row["status"] != "failed":  # a video's or an image sequence's track
            before.setdefault(row.get("identity_policy", "track"), set()).add(row["source"])
    for other, videos in sorted(before.items()):
        if other != policy:
            raise InputError(f"--out {cfg.out} holds {len(videos)} video(s) anonymized under the identity policy "
                             f"{other!r} ({_flags(other)}, e.g. {sorted(videos)[0]}); this run asks for {policy!r} "
                             f"({_flags(policy)}): give the same flags again, or another --out")
    if policy == "across-videos":
        if current_shard().distributed:
            raise InputError("--same-identity-across-videos keeps one mapping of people for all videos; it cannot "
                             "run split over several processes (torchrun): run it in one process")
        if before and not (cfg.out / IDENTITIES_FILE).exists():
            raise InputError(f"{cfg.out / IDENTITIES_FILE} is missing, but {len(before[policy])} video(s) of --out "
                             "were anonymized with --same-identity-across-videos: restore it, or use another --out")
    return policy


def _flags(policy: str) -> str:
    return {"track": "no identity flag", "merge-tracks": "--merge-tracks",
            "across-videos": "--same-identity-across-videos"}[policy]


def open_identity_map(cfg: AnonymizeConfig) -> IdentityMap:
    """``<out>/identities.json`` (dlib's recogniser at its 0.6 threshold), read when an earlier run wrote it."""
    from falco.faces.recognizers import DLIB_THRESHOLD

    return IdentityMap(cfg.out / IDENTITIES_FILE, recognizer="dlib", threshold=DLIB_THRESHOLD)
