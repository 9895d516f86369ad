"""The Score widget's threshold text: what a false-alarm rate means for the active model."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..core.detector import AnomalyDetector

__all__ = ["threshold_text"]


def threshold_text(detector: AnomalyDetector, fpr: float) -> str:
    """Rich text for the label under the false-alarm slider.

    Parameters
    ----------
    detector : AnomalyDetector
        The active model.
    fpr : float
        The false-alarm rate, as a fraction.

    Returns
    -------
    str
        The rate's calibration sample and interval (with a warning for a small sample), the
        score threshold and the criteria behind it, and the pixel threshold of the regions.
    """
    crit = detector.calibration.criteria(fpr)
    # The rate's sample and interval (and a warning for a small sample) come first.
    rate, _, warning = detector.describe_rate(fpr).partition(". Warning: ")
    warn = (f"<br><b style='color:#ffb74d'>Warning:</b> {html.escape(warning)}"
            if warning else "")
    return (f"<small>{html.escape(rate)}{warn}<br>"
            f"Anomalous if score &gt; {crit['score']:.2f}, i.e. recon error &gt; "
            f"{crit['recon_error']:.3g} or log-density &lt; {crit['log_density']:.3g}; "
            f"regions where the map &gt; "
            f"{detector.calibration.pixel_threshold(fpr):.3g}</small>")
