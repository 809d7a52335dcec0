"""``falco eval-attributes``: privacy and utility of anonymized photos, as a report.

Outputs under ``--out`` (default ``./eval-report``): ``report.json``, ``report.md``,
``report.html``, ``faces.jsonl`` and ``examples/`` (see :mod:`falco.evaluation.report`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from falco.evaluation import EvalConfig, EvaluationReport, evaluate, write_report
from falco.evaluation.report import markdown_table

__all__ = ["run_eval_attributes"]


def run_eval_attributes(cfg: EvalConfig, out: Path, *, echo: Callable[[str], None] = print) -> EvaluationReport:
    """Evaluate, write the report into ``out`` and print the summary table."""
    report = evaluate(cfg, echo=echo)
    paths = write_report(report, out)
    for note in report.data.get("notes", []):
        echo(f"warning: {note}")
    for name, run in report.runs.items():
        for key, reason in run.get("not_computed", {}).items():
            echo(f"{name}: {key} not computed: {reason}")
        for problem in run.get("problems", []):
            echo(f"{name}: {problem}")
    echo(markdown_table(report.data))
    echo(f"report: {paths['html']}")
    return report
