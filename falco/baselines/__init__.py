"""Anonymization methods behind one interface: blur, pixelate, mask, CIAGAN, DeepPrivacy (and FALCO).

``get_anonymizer('blur', preset='17')`` builds one; see :mod:`falco.baselines.base` for the
:class:`Anonymizer` contract. The GAN baselines live in :mod:`falco.baselines.ciagan` and
:mod:`falco.baselines.deepprivacy` and are imported only when asked for.
"""

from falco.baselines.base import (
    FALLBACKS,
    Anonymizer,
    available_methods,
    face_key,
    face_seed,
    fallback,
    get_anonymizer,
    register_method,
)

__all__ = [
    "FALLBACKS",
    "Anonymizer",
    "available_methods",
    "face_key",
    "face_seed",
    "fallback",
    "get_anonymizer",
    "register_method",
]
