"""One identity per track: a method run on a video's frames keeps each track's state.

Every face of a track carries the track's key (``AlignedFace.identity``), so the methods that
draw at random (CIAGAN's identity, DeepPrivacy's latent, AnonyGAN's condition) draw the same in
every frame (:func:`falco.methods.base.face_seed`). FALCO pairs a track once, on its first frame,
with one fake (chosen among the ``choices`` nearest to it in the bank by the track's seed, so the
same person in two videos gets two different fakes, and none taken by another identity), optimises
it fully there, and warm-starts every next frame from the previous frame's optimised code with
``video_steps`` steps. Under an identity policy that merges tracks (:mod:`falco.video.policy`), the
merged tracks share one key (``keys``) and so one draw, and FALCO gives them one fake (``fakes``:
those given in earlier videos, by key).
The classic filters need no state: they follow the smoothed track.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from falco.faces.ffhq import AlignedFace, align_face
from falco.methods.base import Anonymizer, face_seed
from falco.video.tracks import TrackFace

__all__ = ["TrackedMethod", "video_seed"]


def video_seed(seed: int, key: str) -> int:
    """The seed of one video (run seed and the video's key): each video draws its own identities."""
    return int.from_bytes(hashlib.sha256(f"{int(seed)}:video:{key}".encode()).digest()[:8], "little") >> 1


class TrackedMethod:
    """An :class:`Anonymizer` run frame by frame with per-track state (see the module docstring).

    Args:
        anonymizer: The method.
        seed: The video's seed (:func:`video_seed`).
        video_steps: FALCO: optimisation steps of a warm-started frame.
        choices: FALCO: a track's fake is drawn among this many nearest fakes.
    """

    def __init__(self, anonymizer: Anonymizer, seed: int, *, video_steps: int = 10, choices: int = 8,
                 keys: dict[int, str] | None = None, fakes: dict[str, int] | None = None) -> None:
        self.anonymizer = anonymizer
        self.seed = int(seed)
        self.video_steps = int(video_steps)
        self.choices = int(choices)
        self.falco = hasattr(anonymizer, "process_tracked")
        self.keys = dict(keys or {})          # track -> identity key, where the identity policy merges tracks
        self.known = dict(fakes or {})        # FALCO: identity key -> fake given in an earlier video (across videos)
        self.fakes: dict[int, int] = {}       # FALCO: track -> bank index of its fake
        self.codes: dict[int, Any] = {}       # FALCO: track -> last optimised W+ code (CPU tensor)

    def key(self, track: int) -> str:
        """The identity key of ``track`` in this video (shared by the tracks the identity policy merges)."""
        return self.keys.get(track, f"{self.seed}:{track}")

    def key_fakes(self) -> dict[str, int]:
        """FALCO: identity key -> fake, for every identity given one so far (earlier videos' included)."""
        return {**self.known, **{self.key(t): f for t, f in self.fakes.items()}}

    def face(self, frame: np.ndarray, tf: TrackFace, size: int = 256) -> AlignedFace:
        """The aligned face of ``tf`` in ``frame``, carrying its track's identity key."""
        face = align_face(frame, tf.landmarks, size, box=tf.box, score=tf.score)
        return dataclasses.replace(face, identity=self.key(tf.track))

    def process(self, faces: list[AlignedFace], tracks: list[int]) -> list[Any]:
        """The method's batched step on one frame's faces (FALCO: per-track fakes and warm starts)."""
        if not self.falco or not faces:
            return self.anonymizer.process(faces)
        new = [i for i, t in enumerate(tracks) if t not in self.fakes]
        given = self.key_fakes()  # a track whose identity already has a fake (merged tracks) takes it
        for i in [i for i in new if self.key(tracks[i]) in given]:
            self.fakes[tracks[i]] = given[self.key(tracks[i])]
        new = [i for i in new if tracks[i] not in self.fakes]
        first: dict[str, int] = {}  # one pick per identity, should two of its tracks start together
        for i in new:
            first.setdefault(self.key(tracks[i]), i)
        if first:
            picks = self._pick([faces[i] for i in first.values()])
            for key, pick in zip(first, picks):
                given[key] = pick
            for i in new:
                self.fakes[tracks[i]] = given[self.key(tracks[i])]
        results: list[Any] = [None] * len(faces)
        cold = [i for i, t in enumerate(tracks) if t not in self.codes]
        warm = [i for i, t in enumerate(tracks) if t in self.codes]
        anon = self.anonymizer
        if cold:
            out = anon.process_tracked([faces[i] for i in cold], [self.fakes[tracks[i]] for i in cold])
            for i, r in zip(cold, out):
                results[i] = r
        if warm:
            out = anon.process_tracked([faces[i] for i in warm], [self.fakes[tracks[i]] for i in warm],
                                       starts=[self.codes[tracks[i]] for i in warm], steps=self.video_steps)
            for i, r in zip(warm, out):
                results[i] = r
        for t, r in zip(tracks, results):
            if getattr(r, "ok", False):
                self.codes[t] = r.ws.detach().cpu().float()
        return results

    def _pick(self, faces: list[AlignedFace]) -> list[int]:
        """FALCO: each new track's fake, drawn by its seed among the nearest fakes of its first frame."""
        from falco.latent.images import to_tensor

        anon = self.anonymizer
        x = to_tensor(np.stack([f.image for f in faces]), size=256, device=anon.device)
        feats = anon.bank.query_features(anon.extractor, x)
        k = max(1, min(self.choices, len(anon.bank)))
        idx, _ = anon.bank.search(feats, k=k)
        out = []
        taken = set(self.key_fakes().values())  # two identities never share a fake (while the bank allows)
        strict = not getattr(anon, "reuse", True)  # --no-reuse: nor with any face of the run, ever
        if strict:
            taken |= set(anon.used)
            anon.check_free(len(taken), len(faces), "tracks")
        for i, (face, row) in enumerate(zip(faces, np.asarray(idx).reshape(len(faces), -1))):
            row = [int(j) for j in row if j >= 0]
            free = [j for j in row if j not in taken]
            if not free and strict:  # the nearest free fake further out (raises when the bank is used up)
                free = [anon.nearest_free(feats[i], taken)]
            free = free or row
            out.append(free[face_seed(self.seed, face) % len(free)])
            taken.add(out[-1])
        return out

    def redo(self, photo: np.ndarray, face: AlignedFace, track: int) -> np.ndarray | None:
        """The guard's re-do of a track's face (see :meth:`Anonymizer.redo`): FALCO starts again from the
        track's own fake, so the face keeps the track's new identity; the other methods draw by the
        face's identity key, which is the track's already."""
        fake = self.fakes.get(track) if self.falco else None
        if fake is not None:
            return self.anonymizer.redo_tracked(photo, face, fake)
        return self.anonymizer.redo(photo, face)

    def neighbour(self, track: int) -> int | None:
        """FALCO: the bank index of the track's fake."""
        return self.fakes.get(track)

    # -- segment checkpoints ------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the per-track state (FALCO's fakes and last codes) atomically."""
        import torch

        from falco.run.inputs import save_tensors

        tracks = sorted(self.fakes)
        tensors = {"tracks": torch.tensor(tracks, dtype=torch.int64),
                   "fakes": torch.tensor([self.fakes[t] for t in tracks], dtype=torch.int64)}
        coded = sorted(self.codes)
        tensors["coded"] = torch.tensor(coded, dtype=torch.int64)
        if coded:
            tensors["codes"] = torch.stack([self.codes[t] for t in coded])
        save_tensors(path, tensors)

    def load(self, path: Path) -> None:
        """Restore the state :meth:`save` wrote."""
        from falco.run.inputs import load_tensors

        data = load_tensors(path)
        self.fakes = {int(t): int(f) for t, f in zip(data["tracks"].tolist(), data["fakes"].tolist())}
        coded = data["coded"].tolist()
        self.codes = {int(t): data["codes"][i].clone() for i, t in enumerate(coded)} if coded else {}
