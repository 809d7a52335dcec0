"""Continuing work done with other tools: the reference FALCO implementation's outputs.

:mod:`falco.compat.falco_ref` reads a reference FALCO (chi0tzp/FALCO) repository's fakes,
pairs and inversions; :mod:`falco.compat.falco_bank` turns its fakes into a falco bank
(``falco bank import-falco``); :mod:`falco.compat.falco_anonymize` anonymizes its real dataset
with its own inversions and pairs (``falco anonymize-falco``).
"""

from __future__ import annotations

from falco.compat.falco_ref import FalcoWorkspace, read_workspace

__all__ = ["FalcoWorkspace", "read_workspace"]
