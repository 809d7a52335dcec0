"""The registry of anonymization methods: one line per built-in method, looked up by name.

A new method is a subclass of :class:`falco.methods.base.Anonymizer` in its own module plus one
line in :data:`BUILTIN` (or a call to :func:`register_method` from outside the package).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from falco.errors import InputError
from falco.methods.base import Anonymizer, check_options

__all__ = ["BUILTIN", "available_methods", "get_anonymizer", "method_class", "register_method"]

#: Built-in methods, imported on first use (``module:class``).
BUILTIN: dict[str, str] = {
    "falco": "falco.methods.falco:FalcoAnonymizer",
    "blur": "falco.methods.classic:BlurAnonymizer",
    "pixelate": "falco.methods.classic:PixelateAnonymizer",
    "mask": "falco.methods.classic:MaskAnonymizer",
    "ciagan": "falco.methods.ciagan:CiaganAnonymizer",
    "deepprivacy": "falco.methods.deepprivacy:DeepPrivacyAnonymizer",
    "anonygan": "falco.methods.anonygan:AnonyganAnonymizer",
}
_REGISTERED: dict[str, Callable[..., Anonymizer]] = {}


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
    return sorted({*BUILTIN, *_REGISTERED})


def _check_name(method: object) -> str:
    if not isinstance(method, str) or method not in available_methods():
        raise InputError(f"unknown anonymization method {method!r}; valid methods: {', '.join(available_methods())}")
    return method


def _factory(method: str) -> Callable[..., Anonymizer]:
    if method in _REGISTERED:
        return _REGISTERED[method]
    module, attr = BUILTIN[method].split(":")
    return getattr(importlib.import_module(module), attr)


def method_class(method: str) -> type[Anonymizer]:
    """The :class:`Anonymizer` subclass behind ``method`` (for a registered factory that is not
    a class, a stand-in that builds it from the run's method options: no models, no hooks).

    Raises:
        InputError: Unknown method (the message lists the valid ones).
    """
    factory = _factory(_check_name(method))
    if isinstance(factory, type) and issubclass(factory, Anonymizer):
        return factory
    return type(f"Registered_{method}", (_Factory,), {"name": method, "factory": staticmethod(factory)})


class _Factory(Anonymizer):
    """Stands for a method registered as a plain factory: built from ``cfg.method_options`` alone."""

    factory: Callable[..., Anonymizer]

    @classmethod
    def from_config(cls, cfg, *, device, echo) -> Anonymizer:
        check_options(cls.factory, cls.name, dict(cfg.method_options))
        return cls.factory(**cfg.method_options)

    def apply(self, photo, faces, results):  # pragma: no cover - never instantiated
        raise NotImplementedError


def get_anonymizer(method: str, **options: Any) -> Anonymizer:
    """Build the anonymizer called ``method`` with its options.

    Options: ``blur``: ``preset`` ('9', '17', 'heavy'); ``pixelate``: ``blocks`` (8, 16);
    ``mask``: none; ``ciagan``: ``models``, ``ciagan_id``, ``seed``, ``device``;
    ``deepprivacy``: ``models``, ``seed``, ``device``; ``anonygan``: see
    :class:`falco.methods.anonygan.AnonyganAnonymizer`; ``falco``: see
    :class:`falco.methods.falco.FalcoAnonymizer`. See each class for more.

    Raises:
        InputError: Unknown method (the message lists the valid ones), an option the method
            does not take, or a bad option value.
    """
    factory = _factory(_check_name(method))
    check_options(factory, method, options)
    return factory(**options)
