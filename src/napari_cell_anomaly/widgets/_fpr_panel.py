"""The Score widget's false-alarm panel: the rate slider, its threshold text and histogram.

The slider's moves are debounced (one ``changed`` signal 60 ms after the last move), so that
dragging it re-thresholds the stored results once per pause, not once per pixel. The text
under it says what the rate means for the active model (:func:`._threshold_text.threshold_text`);
the score histogram (pyqtgraph, imported by the core loader's thread) is built only when asked,
once the core is ready, and placed by the caller.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QVBoxLayout, QWidget
from superqt import QLabeledDoubleSlider

from ._threshold_text import threshold_text

if TYPE_CHECKING:
    from ..core.detector import AnomalyDetector
    from ._histogram import ScoreHistogram

__all__ = ["FalseAlarmPanel", "fraction"]

#: Pause (ms) after the last slider move before ``changed`` is emitted.
DEBOUNCE_MS = 60


def fraction(slider: QLabeledDoubleSlider) -> float:
    """A percent slider's value as a fraction."""
    return float(slider.value()) / 100.0


class FalseAlarmPanel(QWidget):
    """"False alarms (%)" slider (0.1-20 %, default 5 %) and the threshold text under it.

    Signals
    -------
    changed
        The rate was moved (emitted once the slider has rested for :data:`DEBOUNCE_MS`).
    """

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(QLabel("False alarms (%)"))
        self.slider = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0.1, 20.0)
        self.slider.setDecimals(1)
        self.slider.setSingleStep(0.1)
        self.slider.setValue(5.0)
        self.slider.setToolTip("Share of normal cells you accept to see flagged. Lower = "
                               "fewer false alarms but more missed anomalies. Changes "
                               "verdicts and outlines at once, without scoring again.")
        row.addWidget(self.slider, 1)
        layout.addLayout(row)
        self.label = QLabel()
        self.label.setWordWrap(True)
        layout.addWidget(self.label)
        #: The score histogram (None until :meth:`build_histogram`).
        self.hist: ScoreHistogram | None = None
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self.changed)
        self.slider.valueChanged.connect(lambda _: self._debounce.start())

    @property
    def fpr(self) -> float:
        """The chosen false-alarm rate as a fraction (slider percent / 100)."""
        return fraction(self.slider)

    def settle(self) -> None:
        """Drop a pending ``changed`` (the caller applies the rate now)."""
        self._debounce.stop()

    def build_histogram(self) -> ScoreHistogram:
        """Make the score histogram (pyqtgraph must be importable cheaply: core ready)."""
        from ._histogram import ScoreHistogram

        self.hist = ScoreHistogram()
        return self.hist

    def show_text(self, detector: AnomalyDetector | None) -> None:
        """Say what the rate means for ``detector`` (nothing without a model)."""
        self.label.setText("" if detector is None else threshold_text(detector, self.fpr))

    def show_histogram(self, detector: AnomalyDetector | None, scored: list[float]) -> None:
        """Draw the held-out normals' and the ``scored`` items' scores and the threshold of
        the rate (nothing without a model; no-op before the histogram is built)."""
        if self.hist is None:
            return
        if detector is None:
            self.hist.clear_scores()
            return
        cal = detector.calibration
        self.hist.show_scores(np.asarray(cal.scores, dtype=float), np.asarray(scored, float),
                              cal.threshold(self.fpr), self.fpr)
