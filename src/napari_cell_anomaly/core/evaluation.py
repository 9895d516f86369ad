"""Detection quality of a detector on labelled sets of images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .detector import AnomalyDetector, ScoreResult
from .metrics import (
    binomial_interval,
    binomial_range,
    image_auprc,
    image_auroc,
    rates_at_threshold,
)
from .scoring import DEFAULT_FPR


def evaluate(detector: AnomalyDetector, normal: Sequence[np.ndarray],
             anomalous: Sequence[np.ndarray], *, fpr: float | None = None,
             results: list[ScoreResult] | None = None) -> dict[str, Any]:
    """Image-level metrics of each criterion and of the combined score.

    Parameters
    ----------
    detector : AnomalyDetector
        The model to evaluate.
    normal, anomalous : sequence of np.ndarray
        Labelled images.
    fpr : float, optional
        Target false-alarm rate of the calibrated threshold (default 5%).
    results : list of ScoreResult, optional
        Already computed results for ``normal + anomalous`` (skips scoring).

    Returns
    -------
    dict
        ``auroc``/``auprc`` of the combined score, of the reconstruction error
        (``*_recon_error``) and of the latent density (``*_log_density``), the calibrated
        threshold and the true- and false-positive rates there; and the false-alarm rate
        observed on ``normal`` next to the nominal one: ``observed_fpr`` with its exact
        binomial 95% interval ``observed_fpr_ci95``, ``nominal_fpr_range95`` (where the
        observed rate falls 95% of the time if the true rate is the nominal one),
        ``stated_fpr_interval95`` (the model's own interval for its true rate,
        :meth:`Calibration.rate_interval`), ``fpr_certified`` and ``calibration`` (one line,
        :meth:`Calibration.describe`).
    """
    fpr = DEFAULT_FPR if fpr is None else fpr
    if results is None:
        results = list(detector.iter_scores(list(normal) + list(anomalous), fpr=fpr))
    labels = np.r_[np.zeros(len(normal), bool), np.ones(len(anomalous), bool)]
    criteria = {
        "": np.array([r.score for r in results]),
        "_recon_error": np.array([r.recon_error for r in results]),
        "_log_density": -np.array([r.log_density for r in results]),
    }
    report: dict[str, Any] = {"n_normal": len(normal), "n_anomalous": len(anomalous)}
    for suffix, values in criteria.items():
        report[f"auroc{suffix}"] = image_auroc(labels, values)
        report[f"auprc{suffix}"] = image_auprc(labels, values)
    threshold = detector.calibration.threshold(fpr)
    tpr, fpr_seen = rates_at_threshold(labels, criteria[""], threshold)
    report.update({"target_fpr": fpr, "threshold": threshold, "tpr_at_threshold": tpr,
                   "fpr_at_threshold": fpr_seen})
    if len(normal):
        n_alarms = int(np.count_nonzero(criteria[""][:len(normal)] > threshold))
        cal = detector.calibration
        report.update({
            "nominal_fpr": fpr,
            "observed_fpr": n_alarms / len(normal),
            "observed_false_alarms": n_alarms,
            "observed_fpr_ci95": list(binomial_interval(n_alarms, len(normal))),
            "nominal_fpr_range95": list(binomial_range(fpr, len(normal))),
            "stated_fpr_interval95": list(cal.rate_interval(fpr)),
            "fpr_certified": cal.certified(fpr),
            "calibration": detector.describe_rate(fpr),
        })
    return report
