"""The Score widget's histogram: held-out normals, scored images and the threshold line.

The counts axis leaves free room above the highest bar (:data:`HEADROOM`); the threshold
line's label ("5.0% false alarms") and the legend sit there, over no bar.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QSizePolicy

from ._small_plot import SmallPlot

__all__ = ["HEADROOM", "LABEL_AT", "ScoreHistogram"]

#: The counts axis runs to this multiple of the highest bar: the room above it holds the
#: threshold line's label and the legend.
HEADROOM = 1.6
#: Where the threshold label sits along the line (0 bottom, 1 top of the plot): above the
#: highest bar (at 1 / HEADROOM = 0.625).
LABEL_AT = 0.9


class ScoreHistogram(SmallPlot):
    """Step histograms of the calibration normals' and the scored items' anomaly scores.

    Parameters
    ----------
    unit : str
        What was scored, for the axis and legend (default: "images / cells").
    """

    def __init__(self, unit: str = "images / cells") -> None:
        super().__init__(background=None)
        self.setMinimumHeight(170)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setLabel("bottom", "anomaly score")
        self.setLabel("left", unit)
        self.addLegend(offset=(-8, 8))
        self.setMouseEnabled(x=True, y=False)
        self.enableAutoRange(y=False)  # set with headroom by show_scores
        self.normals_curve = self.plot([], [], stepMode="center", fillLevel=0,
                                       brush=(160, 160, 160, 90),
                                       pen=pg.mkPen((190, 190, 190), width=1),
                                       name="held-out normals")
        self.scored_curve = self.plot([], [], stepMode="center", fillLevel=0,
                                      brush=(255, 140, 40, 120),
                                      pen=pg.mkPen((255, 160, 60), width=2),
                                      name=f"scored {unit}")
        self.threshold_line = pg.InfiniteLine(
            angle=90, movable=False, pen=pg.mkPen((230, 60, 60), width=2,
                                                  style=Qt.PenStyle.DashLine),
            label="threshold", labelOpts={"position": LABEL_AT, "color": (230, 90, 90)})
        self.addItem(self.threshold_line)
        #: The normals, scored items and bin range last drawn (None: nothing drawn yet).
        self._shown: tuple[np.ndarray, np.ndarray, tuple[float, float]] | None = None

    def clear_scores(self) -> None:
        """Show nothing (no model)."""
        self._shown = None
        self.normals_curve.setData([], [])
        self.scored_curve.setData([], [])
        self.threshold_line.hide()

    def show_scores(self, normals: np.ndarray, scored: np.ndarray, threshold: float,
                    fpr: float) -> None:
        """Draw both histograms on shared bins (40 over their joint range) and the threshold.

        Parameters
        ----------
        normals : numpy.ndarray
            Scores of the model's held-out normals (its calibration set).
        scored : numpy.ndarray
            Scores of the items scored in this viewer (may be empty).
        threshold : float
            Score threshold at ``fpr``.
        fpr : float
            The false-alarm rate (fraction), shown on the threshold line.
        """
        normals = np.asarray(normals, dtype=float)
        scored = np.asarray(scored, dtype=float)
        shown = self._shown
        if (shown is not None and np.array_equal(shown[0], normals)
                and np.array_equal(shown[1], scored) and shown[2][0] <= threshold <= shown[2][1]):
            # Same scores, threshold inside the drawn range (a false-alarm-rate change): only
            # the line moves; redrawing the curves would cost more than the rest of it.
            self._set_threshold(threshold, fpr)
            return
        everything = np.concatenate([normals, scored, [threshold]])
        lo, hi = float(everything.min()), float(everything.max())
        if hi <= lo:
            hi = lo + 1.0
        edges = np.linspace(lo, hi + 1e-9 * abs(hi), 41)
        counts, _ = np.histogram(normals, edges)
        self.normals_curve.setData(edges, counts.astype(float))
        top = int(counts.max(initial=0))
        if scored.size:
            counts, _ = np.histogram(scored, edges)
            self.scored_curve.setData(edges, counts.astype(float))
            top = max(top, int(counts.max(initial=0)))
        else:
            self.scored_curve.setData([], [])
        self.setYRange(0, HEADROOM * max(top, 1), padding=0)
        self._shown = (normals, scored, (lo, hi))
        self._set_threshold(threshold, fpr)

    def _set_threshold(self, threshold: float, fpr: float) -> None:
        self.threshold_line.setValue(threshold)
        self.threshold_line.label.setFormat(f"{100 * fpr:.1f}% false alarms")
        self.threshold_line.show()
