"""One interface for every anonymization method: FALCO, classic filters and the GAN baselines.

An :class:`Anonymizer` works in two steps so that a run can batch the expensive part across
photos and still write each photo on its own:

``process(faces)``
    Batched work on aligned faces gathered from several photos (FALCO's latent
    optimisation). The classic filters and the GAN baselines need the photo's pixels around
    each face, so they do nothing here and return ``[None] * len(faces)``.
``apply(photo, faces, results)``
    Returns a new photo with every face anonymized and one JSON-able record per face. The
    input array is never modified, and pixels outside the faces' regions stay bit-identical.

Randomness is per face: a method that samples (CIAGAN's identity, DeepPrivacy's ``z``) seeds
it from the run seed and :func:`face_key`, so the result for a face never depends on which
other faces shared its batch or its photo.

A method is a subclass registered by name in :mod:`falco.methods.registry`. Besides the two
steps it declares what a run needs from it, so the ``anonymize`` command has no method-specific
code: the model roles it loads (:attr:`Anonymizer.roles`), how it is built from the run's
settings (:meth:`Anonymizer.from_config`), work before the inputs are shared out between ranks
(:meth:`Anonymizer.prepare_run`), and optional hooks: a stronger re-do for the privacy guard
(:attr:`Anonymizer.can_redo`, :meth:`Anonymizer.redo`), extra manifest fields, crops and files
per face (:meth:`Anonymizer.face_fields`, :meth:`Anonymizer.crops`, :meth:`Anonymizer.write_outputs`),
a progress callback for long batched work (:meth:`Anonymizer.set_step_callback`) and figures
for the run's summary (:meth:`Anonymizer.summary`).
"""

from __future__ import annotations

import hashlib
import inspect
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from falco.errors import InputError
from falco.faces.detect import check_image
from falco.faces.ffhq import AlignedFace

if TYPE_CHECKING:  # annotations only
    import torch

    from falco.config import AnonymizeConfig

Echo = Callable[[str], object]
StepCallback = Callable[[int, int], None]
RegionFocus = Callable[[Sequence[AlignedFace]], "list[np.ndarray]"]

__all__ = [
    "Anonymizer",
    "check_apply_args",
    "check_seed_and_batch",
    "face_key",
    "face_seed",
    "check_options",
    "load_method_generator",
    "prepare_all",
]


class Anonymizer(ABC):
    """A face anonymization method (see the module docstring for the contract)."""

    name: ClassVar[str]
    #: Model roles (:func:`falco.models.zoo.load_role`) the method loads; their files' sha256 go in the manifest.
    roles: ClassVar[tuple[str, ...]] = ()
    #: Whether :meth:`redo` can anonymize a face again more strongly (the privacy guard's first remedy).
    can_redo: ClassVar[bool] = False

    # -- building -------------------------------------------------------------------------------
    @classmethod
    def prepare_run(cls, cfg: AnonymizeConfig, device: torch.device, echo: Echo) -> None:
        """Work done once per run before the inputs are shared out between ranks (default: none)."""

    @classmethod
    def from_config(cls, cfg: AnonymizeConfig, *, device: torch.device, echo: Echo) -> Anonymizer:
        """Build the method from a run's settings: ``cfg.method_options``, plus ``models``, ``seed``
        and ``device`` when the constructor takes them."""
        options = dict(cfg.method_options)
        accepted = inspect.signature(cls).parameters
        for key, value in (("models", cfg.models), ("seed", cfg.seed), ("device", device)):
            if key in accepted:
                options.setdefault(key, value)
        check_options(cls, cls.name, options)
        return cls(**options)

    def settings(self) -> dict:
        """JSON-able settings of this instance, recorded in run manifests."""
        return {"method": self.name}

    def process(self, faces: list[AlignedFace]) -> list[Any]:
        """Batched work on faces gathered from several photos.

        Results must not depend on the batch's composition. Default: nothing to do.

        Returns:
            One opaque result per face, handed back to :meth:`apply`.
        """
        return [None] * len(faces)

    @abstractmethod
    def apply(self, photo: np.ndarray, faces: list[AlignedFace], results: list[Any]) -> tuple[np.ndarray, list[dict]]:
        """Anonymize every face of one photo.

        Args:
            photo: The photo the faces were detected in. Shape: ``[H, W, 3]`` uint8 RGB; not modified.
            faces: Its faces, as :func:`falco.align.detect_and_align` returned them.
            results: What :meth:`process` returned for these faces, in the same order.

        Returns:
            ``(new_photo, records)``: a new array of the photo's shape, and one JSON-able dict
            per face (at least ``{"method": ..., "status": ...}``).
        """

    # -- optional hooks -------------------------------------------------------------------------
    def redo(self, photo: np.ndarray, face: AlignedFace) -> np.ndarray | None:
        """``photo`` with ``face`` anonymized again, more strongly; None if that fails (see :attr:`can_redo`)."""
        return None

    def face_fields(self, result: Any) -> dict:
        """Extra JSON-able fields of one face's manifest row (default: none)."""
        return {}

    def crops(self, face: AlignedFace, result: Any) -> dict[str, np.ndarray]:
        """Images of one face written with ``--save-crops`` besides the real crop (default: none)."""
        return {}

    def write_outputs(self, out: Path, key: str, faces: Sequence[AlignedFace],
                      results: Sequence[Any]) -> tuple[dict[str, str], list[dict]]:
        """Write per-photo files of the method under ``out`` (default: none).

        Returns:
            ``(outputs, fields)``: output name -> path relative to ``out``, and extra manifest
            fields for each face.
        """
        return {}, [{} for _ in faces]

    def set_step_callback(self, on_step: StepCallback | None) -> None:
        """Report progress of batched work as ``on_step(done, total)`` (default: nothing to report)."""

    def set_region_focus(self, masks: RegionFocus | None) -> None:
        """Under ``--keep``/``--change``: ``masks(faces)`` gives, per aligned face, weights in [0, 1]
        over its crop, 1 on the parts taken from the photo; a method that optimises may favour them
        (FALCO's attribute loss does). Default: ignored."""

    def summary(self) -> dict:
        """JSON-able figures of the whole run, merged into the run's summary and printed on one
        line at its end (e.g. FALCO's measured pairing recall; default: none)."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings()})"


# ----------------------------------------------------------------------- helpers
def check_options(factory: Callable[..., Any], method: str, options: dict[str, Any]) -> None:
    """Raise InputError naming the options ``factory`` does not take (and the ones it takes)."""
    try:
        inspect.signature(factory).bind(**options)
    except TypeError:
        try:
            accepted = [p for p in inspect.signature(factory).parameters if p != "self"]
        except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
            accepted = []
        bad = sorted(set(options) - set(accepted))
        raise InputError(
            f"method {method!r} does not take option(s) {', '.join(map(repr, bad)) or '?'}; "
            f"it takes: {', '.join(accepted) or 'none'}"
        ) from None
    except ValueError:  # pragma: no cover - no signature available: let the call decide
        pass


def check_apply_args(photo: object, faces: Sequence[AlignedFace], results: Sequence[Any]) -> np.ndarray:
    """Validate ``apply``'s arguments; returns the photo as a C-contiguous uint8 array.

    Raises:
        InputError: A bad photo, a face that is not an AlignedFace, or ``results`` of the wrong length.
    """
    photo = check_image(photo, "photo")
    for i, face in enumerate(faces):
        if not isinstance(face, AlignedFace):
            raise InputError(f"faces[{i}] must be an AlignedFace, got {type(face).__name__}")
    if len(results) != len(faces):
        raise InputError(f"results must have one entry per face ({len(faces)}), got {len(results)}")
    return photo


def check_seed_and_batch(seed: object, batch_size: object) -> None:
    """Raise InputError unless ``seed`` is an int and ``batch_size`` a positive int (a bool is neither)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed must be an int, got {seed!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")


def load_method_generator(role: str, models: str | os.PathLike | None, generator: Any, cls: type,
                          load: Callable[[Any], Any], device: torch.device) -> tuple[Any, str]:
    """A GAN baseline's generator on ``device``, in eval mode without gradients, and where it came from.

    Args:
        role: The model-set role to resolve when ``generator`` is None (``'ciagan'``...).
        models: The model set to resolve it in (None: the default one).
        generator: A loaded ``cls``, a checkpoint path or state dict (read by ``load``), or None.

    Returns:
        ``(module, source)``: ``source`` is the checkpoint path, or ``'<in memory>'``.
    """
    if generator is None:
        from falco.pretrained.modelset import resolve_model

        generator = resolve_model(role, models)
    source = str(generator) if isinstance(generator, (str, os.PathLike)) else "<in memory>"
    module = generator if isinstance(generator, cls) else load(generator)
    return module.to(device).eval().requires_grad_(False), source


def face_key(face: AlignedFace) -> str:
    """A stable identifier of a face: sha256 of its box, landmarks and aligned crop (hex, 16 digits);
    for a face of a video track, of its track's key (``face.identity``), the same in every frame."""
    if face.identity is not None:
        return hashlib.sha256(f"track:{face.identity}".encode()).hexdigest()[:16]
    h = hashlib.sha256()
    h.update(np.asarray(face.box, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(face.landmarks, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(face.image).tobytes())
    return h.hexdigest()[:16]


def face_seed(seed: int, face: AlignedFace) -> int:
    """The seed of one face's random draws: the run ``seed`` combined with :func:`face_key` (63-bit)."""
    h = hashlib.sha256(f"{int(seed)}:{face_key(face)}".encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1



def prepare_all(faces: Sequence[AlignedFace], prepare: Callable[[AlignedFace], Any]) -> tuple[dict[int, Any], dict[int, str]]:
    """Run ``prepare`` on every face; InputErrors become per-face failures.

    Returns:
        ``(prepared, failed)``: face index -> prepared value, face index -> reason.
    """
    prepared, failed = {}, {}
    for i, face in enumerate(faces):
        try:
            prepared[i] = prepare(face)
        except InputError as exc:
            failed[i] = str(exc)
    return prepared, failed

