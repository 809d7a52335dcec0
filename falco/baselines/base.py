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

Methods are looked up by name with :func:`get_anonymizer`; ``falco`` itself is registered by
:mod:`falco.anonymize` through :func:`register_method`.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from falco.errors import InputError
from falco.faces.detect import check_image
from falco.faces.ffhq import AlignedFace

__all__ = [
    "FALLBACKS",
    "Anonymizer",
    "available_methods",
    "check_apply_args",
    "check_on_fail",
    "cover_failed",
    "face_key",
    "face_seed",
    "fallback",
    "get_anonymizer",
    "prepare_all",
    "register_method",
]

#: What :func:`fallback` can do to a face.
FALLBACKS: tuple[str, ...] = ("blur", "pixelate", "mask")

#: Built-in methods, imported on first use (``module:attribute``).
_BUILTIN: dict[str, str] = {
    "blur": "falco.baselines.classic:BlurAnonymizer",
    "pixelate": "falco.baselines.classic:PixelateAnonymizer",
    "mask": "falco.baselines.classic:MaskAnonymizer",
    "ciagan": "falco.baselines.ciagan:CiaganAnonymizer",
    "deepprivacy": "falco.baselines.deepprivacy:DeepPrivacyAnonymizer",
}
_REGISTERED: dict[str, Callable[..., Anonymizer]] = {}


class Anonymizer(ABC):
    """A face anonymization method (see the module docstring for the contract)."""

    name: ClassVar[str]

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

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings()})"


# ------------------------------------------------------------------------- registry
def register_method(name: str, factory: Callable[..., Anonymizer]) -> None:
    """Make ``get_anonymizer(name, **options)`` call ``factory(**options)``.

    Raises:
        InputError: ``name`` is not a non-empty lowercase word or ``factory`` is not callable.
    """
    if not isinstance(name, str) or not name or not name.replace("-", "").replace("_", "").isalnum():
        raise InputError(f"method name must be a non-empty word, got {name!r}")
    if name != name.lower():
        raise InputError(f"method name must be lowercase, got {name!r}")
    if not callable(factory):
        raise InputError(f"factory for method {name!r} must be callable, got {type(factory).__name__}")
    _REGISTERED[name] = factory


def available_methods() -> list[str]:
    """Names :func:`get_anonymizer` accepts, registered ones included, sorted."""
    return sorted({*_BUILTIN, *_REGISTERED})


def _factory(method: str) -> Callable[..., Anonymizer]:
    if method in _REGISTERED:
        return _REGISTERED[method]
    module, attr = _BUILTIN[method].split(":")
    return getattr(importlib.import_module(module), attr)


def get_anonymizer(method: str, **options: Any) -> Anonymizer:
    """Build the anonymizer called ``method`` with its options.

    Options: ``blur``: ``preset`` ('9', '17', 'heavy'); ``pixelate``: ``blocks`` (8, 16);
    ``mask``: none; ``ciagan``: ``models``, ``ciagan_id``, ``seed``, ``device``;
    ``deepprivacy``: ``models``, ``seed``, ``device``. See each class for more.

    Raises:
        InputError: Unknown method (the message lists the valid ones), an option the method
            does not take, or a bad option value.
    """
    if not isinstance(method, str) or method not in available_methods():
        raise InputError(f"unknown anonymization method {method!r}; valid methods: {', '.join(available_methods())}")
    factory = _factory(method)
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
    return factory(**options)


# ----------------------------------------------------------------------- helpers
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


def face_key(face: AlignedFace) -> str:
    """A stable identifier of a face: sha256 of its box, landmarks and aligned crop (hex, 16 digits)."""
    h = hashlib.sha256()
    h.update(np.asarray(face.box, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(face.landmarks, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(face.image).tobytes())
    return h.hexdigest()[:16]


def face_seed(seed: int, face: AlignedFace) -> int:
    """The seed of one face's random draws: the run ``seed`` combined with :func:`face_key` (63-bit)."""
    h = hashlib.sha256(f"{int(seed)}:{face_key(face)}".encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def check_on_fail(on_fail: object) -> str:
    """Validate an ``on_fail`` choice: one of :data:`FALLBACKS` or ``'skip'``. Raises InputError."""
    if on_fail not in (*FALLBACKS, "skip"):
        raise InputError(f"on_fail must be one of {', '.join((*FALLBACKS, 'skip'))}, got {on_fail!r}")
    return str(on_fail)


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


def cover_failed(photo: np.ndarray, face: AlignedFace, reason: str, on_fail: str) -> tuple[np.ndarray, dict]:
    """Cover a face a method could not handle with :func:`fallback` (or leave it: ``'skip'``).

    Returns:
        ``(photo, record)``; the record says ``status`` 'fallback' or 'failed' and why.
    """
    if on_fail == "skip":
        return photo, {"method": "none", "status": "failed", "reason": reason, "fallback": "skip"}
    return fallback(photo, face, on_fail), {"method": on_fail, "status": "fallback", "reason": reason,
                                            "fallback": on_fail}


def fallback(photo: np.ndarray, face: AlignedFace, how: str = "blur") -> np.ndarray:
    """Cover one face so that it is not identifiable (for ``--on-fail`` and the privacy guard).

    ``'blur'`` is stronger than the heavy blur preset: three passes of a box filter 30 % of the
    face's width, at least 5 px (about a Gaussian of sigma 0.15 x the width), over the face region;
    ``'pixelate'`` is 8 x 8 blocks; ``'mask'`` paints the region black. The region is the one
    :func:`falco.faces.paste.photo_mask` gives, with a hard edge.

    Args:
        photo: The photo. Shape: ``[H, W, 3]`` uint8 RGB; not modified.
        face: The face to cover.
        how: ``'blur'``, ``'pixelate'`` or ``'mask'``.

    Returns:
        A new photo; pixels outside the face region are bit-identical. Shape: ``[H, W, 3]`` uint8.

    Raises:
        InputError: Unknown ``how``, a bad photo or a face that is not an AlignedFace.
    """
    from falco.baselines import classic

    if how not in FALLBACKS:
        raise InputError(f"fallback must be one of {', '.join(FALLBACKS)}, got {how!r}")
    photo = check_apply_args(photo, [face], [None])
    if how == "blur":
        return classic.blur_face(photo, face, max(classic.heavy_kernel(face, photo.shape), 5), passes=3)
    if how == "pixelate":
        return classic.pixelate_face(photo, face, 8)
    return classic.mask_face(photo, face)
