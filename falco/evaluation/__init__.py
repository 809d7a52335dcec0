"""Privacy and utility of anonymized photos, measured the way the papers do.

* :mod:`~falco.evaluation.detection`  detection rate (dlib HOG, dlib CNN, MTCNN);
* :mod:`~falco.evaluation.reid`       re-identification and rank-1 identification (dlib, ArcFace);
* :mod:`~falco.evaluation.landmarks`  landmark NME, head pose, eyes/mouth openness;
* :mod:`~falco.evaluation.attributes` attribute agreement, user labels (CSV);
* :mod:`~falco.evaluation.farl_attributes` the 40 CelebA attributes from a FaRL head;
* :mod:`~falco.evaluation.quality`    FID / KID on aligned crops;
* :mod:`~falco.evaluation.evaluate`   everything on folders of photos (``falco eval-attributes``);
* :mod:`~falco.evaluation.report`     ``report.json`` / ``report.md`` / ``report.html``.
"""

from falco.evaluation.common import FeatureCache, MetricUnavailable
from falco.evaluation.evaluate import EvalConfig, EvaluationReport, evaluate
from falco.evaluation.report import write_report

__all__ = ["EvalConfig", "EvaluationReport", "FeatureCache", "MetricUnavailable", "evaluate", "write_report"]
