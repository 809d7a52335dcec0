"""Evaluation protocols: falco's own, and the setups of the papers whose figures users compare with.

``falco eval-attributes --protocol NAME``:

* ``falco`` (default): :func:`falco.evaluation.evaluate.evaluate` unchanged (whole photos,
  per-face detection at IoU >= 0.5, re-identification, attributes, quality).
* ``ciagan``: CIAGAN's (CVPR 2020) CelebA setup, :mod:`falco.evaluation.protocols.ciagan`:
  128 x 128 crops made as dvl-tum/ciagan makes them, detection = a face found on the crop by
  dlib's HOG detector, identification of each anonymized crop among the real identities.
* ``deepprivacy``: DeepPrivacy's (ISVC 2019) setup where its code defines one: detection only,
  on the whole photos, a real face counting as found again at IoU >= 0.5 (WIDER FACE's
  criterion); no identification or attribute metric (DeepPrivacy defines none).

The figures the papers published are data (``falco/evaluation/published.json``); the report
shows each beside ours for the runs whose name is a published method or one of its aliases
(``blur-9x9``, ``ciagan-9x9``, ...).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from falco.errors import InputError

__all__ = ["PROTOCOLS", "check_protocol", "load_published", "published_for", "published_notes"]

PROTOCOLS: tuple[str, ...] = ("falco", "ciagan", "deepprivacy")


def check_protocol(name: object) -> str:
    """Validate a protocol name. Raises InputError naming the choices."""
    if name not in PROTOCOLS:
        raise InputError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {name!r}")
    return str(name)


@functools.lru_cache(maxsize=1)
def load_published() -> dict[str, Any]:
    """The published figures (``published.json``, shipped as package data)."""
    text = resources.files("falco.evaluation").joinpath("published.json").read_text(encoding="utf-8")
    return json.loads(text)


def _method_of(protocol: str, run_name: str) -> str | None:
    methods = load_published().get(protocol, {}).get("methods", {})
    want = run_name.strip().lower()
    for method, entry in methods.items():
        if want == method.lower() or want in (a.lower() for a in entry.get("aliases", [])):
            return method
    return None


def published_for(protocol: str, run_name: str) -> tuple[str | None, dict[str, Any]]:
    """``(method, {metric: {detector: value}})`` published for a run, matched by its name.

    Only metrics that ``protocol`` measures the same way are returned (``detection_rate.*``);
    the identification figures of other recognisers go to :func:`published_notes`.
    """
    method = _method_of(protocol, run_name)
    if method is None:
        return None, {}
    entry = load_published()[protocol]["methods"][method]
    nested: dict[str, Any] = {}
    for key, value in entry.items():
        if key.startswith("detection_rate."):
            metric, name = key.split(".", 1)
            nested.setdefault(metric, {})[name] = value
    return method, nested


def published_notes(protocol: str, runs: dict[str, str | None]) -> list[str]:
    """Report notes: where the published figures come from and what else the paper reports."""
    entry = load_published().get(protocol, {})
    out = []
    if entry.get("source"):
        out.append(f"Published figures ({protocol}): {entry['source']}. {entry.get('notes', '')}".strip())
    for run, method in runs.items():
        if method is None:
            continue
        figures = load_published()[protocol]["methods"][method]
        shown = ", ".join(f"{k} {100 * v:.1f} %" for k, v in figures.items() if k != "aliases")
        out.append(f"Run `{run}` is compared with the published `{method}`: {shown}.")
    return out
