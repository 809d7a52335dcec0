"""Networks used by falco and their checkpoint loaders.

Names are resolved lazily so that importing ``falco.models`` stays cheap and one network's
optional dependencies never break another's import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Generator": "falco.models.stylegan2",
    "load_generator": "falco.models.loaders",
    "load_arcface": "falco.models.arcface",
    "load_e4e": "falco.models.e4e",
    "load_farl": "falco.models.farl",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'falco.models' has no attribute {name!r}")
