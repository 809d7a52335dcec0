"""``falco eval-attributes``: privacy and utility of anonymized photos, as a report.

Outputs under ``--out`` (default ``./eval-report``): ``report.json``, ``report.md``,
``report.html``, ``faces.jsonl`` and ``examples/`` (see :mod:`falco.evaluation.report`).

On stderr: progress bars (unless ``EvalConfig.progress`` is false), then one compact line
for the metrics whose model or package is not installed (their full reasons, with how to
install them, are in ``report.md`` and ``report.json``), one line per other reason a metric
was not computed, and the summary table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from falco.evaluation import EvalConfig, EvaluationReport, evaluate, write_report
from falco.evaluation.report import markdown_table

__all__ = ["not_computed_lines", "run_eval_attributes"]


def not_computed_lines(data: dict[str, Any]) -> list[str]:
    """What ``report.json`` says was not computed, in few lines.

    Metrics missing because a model is not installed make one line for all runs; any other
    reason makes one line per reason, naming its runs and keys.
    """
    not_installed = data.get("not_installed", {})
    skip = {key for keys in not_installed.values() for key in keys}
    lines = []
    if not_installed:
        lines.append(f"not computed (model not installed): {', '.join(not_installed)} "
                     "— see report.md for how to install")
    grouped: dict[str, dict[str, list[str]]] = {}  # reason -> key -> runs
    for name, run in data["runs"].items():
        for key, reason in run.get("not_computed", {}).items():
            if key not in skip:
                grouped.setdefault(reason, {}).setdefault(key, []).append(name)
    for reason, keys in grouped.items():
        by_runs: dict[tuple[str, ...], list[str]] = {}
        for key, runs in keys.items():
            by_runs.setdefault(tuple(runs), []).append(key)
        for runs, ks in by_runs.items():
            lines.append(f"{', '.join(runs)}: {', '.join(ks)} not computed: {reason}")
    return lines


def run_eval_attributes(cfg: EvalConfig, out: Path, *, echo: Callable[[str], None] = print) -> EvaluationReport:
    """Evaluate, write the report into ``out`` and print the summary table."""
    from falco.run.inputs import check_writable_dir

    check_writable_dir(out)  # before minutes of work, not after
    cache = None
    if cfg.disk_cache is not None:
        from falco.evaluation.common import FeatureCache
        from falco.evaluation.disk_cache import DiskCache

        cache = FeatureCache(DiskCache(cfg.disk_cache))
    report = evaluate(cfg, echo=echo, cache=cache)
    paths = write_report(report, out)
    if cache is not None:
        echo(f"cache {cache.disk.root}: {cache.disk.hits} real-side results reused, {cache.disk.writes} written")
    for note in report.data.get("notes", []):
        echo(f"warning: {note}")
    for line in not_computed_lines(report.data):
        echo(line)
    for name, run in report.runs.items():
        for problem in run.get("problems", []):
            echo(f"{name}: {problem}")
    echo(markdown_table(report.data))
    echo(f"report: {paths['html']}")
    return report
