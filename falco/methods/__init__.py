"""Every anonymization method behind one interface: FALCO, blur, pixelate, mask, CIAGAN, DeepPrivacy, AnonyGAN.

``get_anonymizer('blur', preset='17')`` builds one; ``available_methods()`` lists the names.
:mod:`falco.methods.base` states the :class:`Anonymizer` contract, :mod:`falco.methods.registry`
holds the one line per method, and :mod:`falco.methods.cover` the covering used by
``--on-fail`` and the privacy guard. Each method's module is imported only when asked for.
"""

from falco.methods.base import Anonymizer, face_key, face_seed
from falco.methods.cover import FALLBACKS, ON_FAIL, fallback
from falco.methods.registry import available_methods, get_anonymizer, method_class, register_method

__all__ = [
    "FALLBACKS",
    "ON_FAIL",
    "Anonymizer",
    "available_methods",
    "face_key",
    "face_seed",
    "fallback",
    "get_anonymizer",
    "method_class",
    "register_method",
]
