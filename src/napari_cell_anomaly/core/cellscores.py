"""Per-cell results of one field: a table with one row per cell, the label image and the heatmap.

:class:`CellScores` is what :meth:`AnomalyDetector.score_cells` returns; the CLI writes its
table as CSV rows and the napari widget puts it into a Labels layer's ``features``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The table's columns, in order (``label`` is the cell's value in :attr:`CellScores.labels`).
CELL_COLUMNS = ("label", "score", "recon_error", "log_density", "percentile",
                "is_anomaly", "area", "centroid_y", "centroid_x", "at_border",
                "shape_log_density")


@dataclass
class CellScores:
    """Everything the detector says about the cells of one field.

    Attributes
    ----------
    table : dict of str to np.ndarray
        The :data:`CELL_COLUMNS`, one row per cell, label ascending. ``score`` is the
        combined score on the calibration scale (higher = more anomalous): the largest robust
        z-score of ``recon_error`` (high), ``log_density`` of the latent code (low) and
        ``shape_log_density`` of the cell's morphometry (low; NaN when the model has no
        shape density, e.g. a whole-image model scoring cells as crops), ``percentile`` the
        percent of calibration cells scoring lower, ``is_anomaly`` the verdict at
        :attr:`threshold` (False for cells at the image edge unless ``include_border``).
    labels : np.ndarray
        ``(H, W)`` label image the cells come from (the user's, or the built-in segmentation's).
    error_map : np.ndarray
        ``(H, W)`` float32 heatmap: each scored cell's smoothed error map on its own pixels,
        0 elsewhere.
    threshold : float
        Combined-score threshold behind ``table["is_anomaly"]``.
    include_border : bool
        Whether cells cut by the image edge take part in verdicts.
    skipped : int
        Objects in :attr:`labels` too small to be read as cells (not in the table).
    range_warning : str or None
        One line when the field lies far outside the model's training range (many values
        clipped, or another integer bit depth), as :attr:`.detector.ScoreResult.range_warning`.
    """

    table: dict[str, np.ndarray]
    labels: np.ndarray
    error_map: np.ndarray
    threshold: float
    include_border: bool = False
    skipped: int = 0
    range_warning: str | None = None

    def __len__(self) -> int:
        return int(self.table["label"].size)

    def judged(self, include_border: bool | None = None, rows: np.ndarray | None = None
               ) -> np.ndarray:
        """Bool ``(N,)``: the cells that take part in verdicts (of ``rows`` only, a bool
        ``(N,)``, when given: e.g. one plane of a stack's merged cells)."""
        border = self.include_border if include_border is None else include_border
        judged = np.ones(len(self), dtype=bool) if border else ~self.table["at_border"]
        return judged if rows is None else judged & np.asarray(rows, dtype=bool)

    def verdicts(self, threshold: float, include_border: bool | None = None) -> np.ndarray:
        """Bool ``(N,)`` verdicts at another combined-score threshold (e.g.
        ``detector.calibration.threshold(fpr)``), without rescoring."""
        return (self.table["score"] > threshold) & self.judged(include_border)

    def worst(self, include_border: bool | None = None, rows: np.ndarray | None = None
              ) -> int:
        """Row of the highest-scoring judged cell (-1 when no cell is judged); ``rows``
        (bool ``(N,)``) restricts it to those cells."""
        judged = self.judged(include_border, rows)
        if not judged.any():
            return -1
        scores = np.where(judged, self.table["score"], -np.inf)
        return int(np.argmax(scores))
