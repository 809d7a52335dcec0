"""Region control in ``falco anonymize`` (``--keep PARTS`` / ``--change PARTS``).

:class:`RegionControl` is built once per run (it loads the face parser when masks come from
it) and blends each photo right after the method's ``apply`` and before the privacy guard
reviews it (:func:`falco.faces.blend.keep_regions` / :func:`~falco.faces.blend.change_regions`),
so the guard has the last word. Only faces the method anonymized (status ``done``) are blended:
a face the method could not anonymize keeps its ``--on-fail`` cover. The guard's re-do of a face
is blended the same way (:meth:`RegionControl.wrap_redo`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from falco.errors import InputError, ModelNotFoundError
from falco.faces.blend import change_regions, keep_regions
from falco.faces.ffhq import AlignedFace
from falco.faces.regions import PARSING_MODEL, crop_region_mask, needs_parsing, parse_aligned, resolve_regions

if TYPE_CHECKING:
    import torch

    from falco.config import AnonymizeConfig
    from falco.models.parsing import BiSeNet

__all__ = ["RegionControl", "PhotoRegions"]

Redo = Callable[[np.ndarray, int], "np.ndarray | None"]


@dataclass
class PhotoRegions:
    """What :meth:`RegionControl.apply` did to one photo: the faces it blended and their parsing maps."""

    applied: frozenset[int]
    maps: list[np.ndarray | None]


@dataclass
class RegionControl:
    """One run's ``--keep`` or ``--change`` choice.

    Attributes:
        mode: ``'keep'`` (the parts come from the photo) or ``'change'`` (only the parts come from
            the method's output).
        names: The names as given (parts and groups).
        parts: The parts they stand for (:func:`~falco.faces.regions.resolve_regions`).
        feather: Width of the seams, a fraction of each face's size.
        parser: The face parser, or None: masks are drawn from the 68 landmarks.
    """

    mode: str
    names: tuple[str, ...]
    parts: tuple[str, ...]
    feather: float
    parser: BiSeNet | None = None

    @classmethod
    def from_config(cls, cfg: AnonymizeConfig, device: torch.device | str = "cpu") -> RegionControl | None:
        """The run's region control (None without ``--keep``/``--change``); loads the parser once.

        Raises:
            InputError: A part that needs the face parser (hair...), or ``--region-masks parsing``,
                while the parser is not installed (one line, naming the model to download).
        """
        mode = "keep" if cfg.keep is not None else "change" if cfg.change is not None else None
        if mode is None:
            return None
        names = tuple(getattr(cfg, mode))
        control = cls(mode, names, resolve_regions(names), float(cfg.region_feather))
        if control.noop or cfg.region_masks == "landmarks":
            return control
        from falco.models import parsing

        try:
            control.parser = parsing.load_parser(cfg.models, device=device)
        except ModelNotFoundError:
            if cfg.region_masks == "parsing" or needs_parsing(control.parts):
                why = ("--region-masks parsing" if cfg.region_masks == "parsing"
                       else f"--{mode} {','.join(names)}")
                raise InputError(
                    f"{why} needs the face-parsing model {PARSING_MODEL!r}, which is not installed: "
                    f"`falco models download {PARSING_MODEL}`; without it only eyes, brows, nose, mouth, lips, "
                    "skin and their groups work (from the 68 landmarks)") from None
        return control

    @property
    def noop(self) -> bool:
        """Whether the photo is the method's output unchanged (``--keep nothing``, ``--change everything``)."""
        return not self.parts if self.mode == "keep" else "everything" in self.parts

    @property
    def masks(self) -> str:
        """Where the masks come from: ``'parsing'`` or ``'landmarks'``."""
        return "parsing" if self.parser is not None else "landmarks"

    def record(self) -> dict[str, Any]:
        """The per-face manifest field ``regions`` (and the sidecar's provenance)."""
        return {self.mode: list(self.parts), "masks": self.masks, "feather": self.feather}

    def words(self) -> str:
        """The choice in words: ``'eyes, brows kept'`` or ``'only mouth, lips changed'``."""
        parts = ", ".join(self.parts) or "nothing"
        return f"{parts} kept" if self.mode == "keep" else f"only {parts} changed"

    def apply(self, original: np.ndarray, anonymized: np.ndarray, faces: Sequence[AlignedFace],
              records: Sequence[dict]) -> tuple[np.ndarray, PhotoRegions]:
        """Blend one photo: the faces whose record says ``done`` get the chosen parts.

        Returns:
            ``(photo, what)``: the blended photo (``anonymized`` itself when there is nothing to
            do) and what was done, for :meth:`wrap_redo` and the manifest.
        """
        applied = frozenset(i for i, r in enumerate(records) if r.get("status") == "done")
        if self.noop or not applied:
            return anonymized, PhotoRegions(applied, [None] * len(faces))
        order = sorted(applied)
        maps: list[np.ndarray | None] = [None] * len(faces)
        if self.parser is not None:
            for i, labels in zip(order, parse_aligned(self.parser, [faces[i] for i in order])):
                maps[i] = labels
        out = self._blend(original, anonymized, [faces[i] for i in order], [maps[i] for i in order])
        if self.mode == "change":  # faces left out keep what the method (or its --on-fail cover) did
            for i in range(len(faces)):
                if i not in applied:
                    _restore_window(out, anonymized, faces[i])
        return out, PhotoRegions(applied, maps)

    def focus_masks(self, faces: Sequence[AlignedFace], size: int = 256) -> list[np.ndarray]:
        """Per face, weights in [0, 1] over its aligned crop, 1 on the parts taken from the photo:
        the kept parts (``keep``), everything but the changed parts (``change``). A method that
        optimises favours them (:meth:`falco.methods.base.Anonymizer.set_region_focus`), so what it
        makes fits the parts that will be pasted next to it."""
        maps: list[np.ndarray | None] = [None] * len(faces)
        if self.parser is not None and faces:
            maps = list(parse_aligned(self.parser, faces))
        out = []
        for face, labels in zip(faces, maps):
            mask = crop_region_mask(face, self.parts, size=size, parsing=labels, feather=self.feather)
            out.append(mask if self.mode == "keep" else 1.0 - mask)
        return out

    def wrap_redo(self, redo: Redo, original: np.ndarray, faces: Sequence[AlignedFace], done: PhotoRegions) -> Redo:
        """The guard's re-do of face ``i``, blended as :meth:`apply` blended the method's output."""
        def redo_with_regions(photo: np.ndarray, i: int) -> np.ndarray | None:
            redone = redo(photo, i)
            if redone is None or self.noop or i not in done.applied:
                return redone
            base = original if self.mode == "keep" else photo  # change: the rest of the photo as it is now
            return self._blend(base, redone, [faces[i]], [done.maps[i]])

        return redo_with_regions

    def _blend(self, base: np.ndarray, new: np.ndarray, faces: Sequence[AlignedFace],
               maps: Sequence[np.ndarray | None]) -> np.ndarray:
        if self.mode == "keep":
            return keep_regions(base, new, faces, self.parts, parsing_maps=maps, feather=self.feather)
        return change_regions(base, new, faces, self.parts, parsing_maps=maps, feather=self.feather)


def _restore_window(out: np.ndarray, source: np.ndarray, face: AlignedFace) -> None:
    """Copy the window around ``face``'s quad (where every paste and cover of it writes) from ``source``."""
    height, width = out.shape[:2]
    quad = face.quad
    x0, y0 = max(int(np.floor(quad[:, 0].min())) - 1, 0), max(int(np.floor(quad[:, 1].min())) - 1, 0)
    x1, y1 = min(int(np.ceil(quad[:, 0].max())) + 2, width), min(int(np.ceil(quad[:, 1].max())) + 2, height)
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = source[y0:y1, x0:x1]
