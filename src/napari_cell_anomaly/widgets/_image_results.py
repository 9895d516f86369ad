"""The Score widget's per-image results: one record per layer scored as a whole.

Each :class:`ImageRecord` keeps a scored layer, its :class:`~..core.detector.ScoreResult`, the
detector that made it and the layers made for it (anomaly map, optional outline and
reconstruction). :class:`ImageResults` renders a result as those layers and a row of the images
table, and re-applies the calibrated thresholds of a new false-alarm rate to the stored results
(verdict, layer metadata, outline) without scoring again. Outlines are then redrawn one layer
per event-loop turn (each costs napari ~10-30 ms), visible layers first, so the slider never
freezes; a new result's layers can likewise be added one per turn
(:meth:`ImageResults.render_steps`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Layer
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import QObject, QTimer

from ._common import PLUGIN_KEY, layer_key, same_layer
from ._layers import (
    HEATMAP,
    OUTLINE,
    RECONSTRUCTION,
    in_view,
    keep_selection,
    layer_meta,
    upsert,
)
from ._results_table import ImageResultsTable
from ._state import ModelState

if TYPE_CHECKING:
    import napari

    from ..core.detector import AnomalyDetector, ScoreResult

__all__ = ["ImageRecord", "ImageResults"]


@dataclass
class ImageRecord:
    """One scored layer and the layers made for it."""

    source: Layer
    result: ScoreResult
    detector: AnomalyDetector
    heatmap: Image
    outline: Labels | None = None
    reconstruction: Image | None = None

    @property
    def key(self) -> str:
        return layer_key(self.source)


class ImageResults:
    """The layers scored as a whole: their records, result layers and table rows.

    Parameters
    ----------
    owner : QObject
        The dock widget: parent of the timer that redraws outlines.
    viewer : napari.Viewer
        Where the result layers go.
    state : ModelState
        Names the active model in the layers' metadata.
    table : ImageResultsTable
        The images table; each record owns the row keyed by its source layer.
    fpr : callable
        Returns the chosen false-alarm rate (a fraction).
    """

    def __init__(self, owner: QObject, viewer: napari.Viewer, state: ModelState,
                 table: ImageResultsTable, fpr: Callable[[], float]) -> None:
        self.viewer = viewer
        self.state = state
        self.table = table
        self._fpr = fpr
        self.records: list[ImageRecord] = []
        #: Records whose outlines wait to be redrawn at the current false-alarm rate.
        self.outline_queue: list[ImageRecord] = []
        self._outline_timer = QTimer(owner)
        self._outline_timer.setInterval(0)
        self._outline_timer.timeout.connect(self._refresh_next_outline)

    def record_of(self, source: Layer) -> ImageRecord | None:
        """The record of ``source``; None if it was not scored as a whole."""
        return next((r for r in self.records if same_layer(r.source, source)), None)

    def drop(self, source: Layer) -> None:
        """Forget the result of ``source`` (scored again per cell; its row is reused)."""
        record = self.record_of(source)
        if record is not None:
            self.records.remove(record)

    def render_steps(self, source: Layer, result: ScoreResult, detector: AnomalyDetector, *,
                     reconstruction: bool, outline: bool) -> Iterator[None]:
        """Show ``result``: anomaly map, optional reconstruction and outline (one made before
        is refreshed even when ``outline`` is off), table row; a generator that adds or
        refreshes one layer per step.

        napari spends ~50-150 ms of the GUI thread adding a layer (its controls, its visual,
        the selection events); a caller that runs one step per event-loop turn keeps the GUI
        responsive while many results arrive. Steps: the reconstruction (if asked for), the
        anomaly map with the table row, the outline; the rest is skipped if the source is
        removed (or its record dropped) between steps.
        """
        record = self.record_of(source)
        new = record is None  # listed in self.records once its anomaly map exists
        if record is None:
            record = ImageRecord(source, result, detector, heatmap=None)  # type: ignore[arg-type]
        record.result, record.detector = result, detector
        cal = detector.calibration
        viewer = self.viewer
        lo, hi = cal.display_range()
        # New layers over a hidden image, or one hidden under another image, start hidden
        # (see in_view): napari draws every visible layer.
        shown = in_view(viewer, source)
        if reconstruction:  # first, so that it lies under the map and the outline
            recon = result.reconstruction
            rgb = recon.ndim == 3 and recon.shape[-1] == 3
            with keep_selection(viewer):
                record.reconstruction = upsert(
                    viewer, RECONSTRUCTION, source,
                    recon if rgb else recon.reshape(recon.shape[:2]), "image", rgb=rgb,
                    contrast_limits=(0.0, 1.0), visible=False,
                    metadata=layer_meta(RECONSTRUCTION, source))
            yield
            if source not in viewer.layers or (not new and record not in self.records):
                return
        with keep_selection(viewer):
            record.heatmap = upsert(
                viewer, HEATMAP, source, result.error_map, "image", colormap="inferno",
                blending="additive", opacity=0.6, contrast_limits=(float(lo), float(hi)),
                visible=shown, metadata=layer_meta(HEATMAP, source))
        if new:
            self.records.append(record)
        self.apply(record, outline=False)  # the outline is drawn below
        r = result
        self.table.set_result(record.key, source.name,
                              (r.score, r.recon_error, r.log_density, r.percentile),
                              self.is_anomalous(record))
        if outline or record.outline is not None:
            yield
            if record not in self.records or source not in viewer.layers:
                return
            if record in self.outline_queue:
                self.outline_queue.remove(record)
            with keep_selection(viewer):
                record.outline = upsert(
                    viewer, OUTLINE, source, self.region(record), "labels", contour=1,
                    opacity=1.0, visible=shown,
                    colormap=DirectLabelColormap(color_dict={None: "transparent", 1: "cyan"}),
                    metadata=layer_meta(OUTLINE, source))

    def region(self, record: ImageRecord) -> np.ndarray:
        """Where the record's anomaly map exceeds the pixel threshold (uint8 0/1)."""
        level = record.detector.calibration.pixel_threshold(self._fpr(), record.result.n_windows)
        return (record.result.error_map > level).astype(np.uint8)

    def apply(self, record: ImageRecord, outline: bool = True) -> None:
        """Write the verdict at the current false-alarm rate to the record's layers.

        With ``outline=False`` the outline layer is left as it is (redrawn by the caller).
        """
        fpr = self._fpr()
        result, cal = record.result, record.detector.calibration
        threshold = cal.threshold(fpr)
        anomalous = bool(result.score > threshold)
        info = {
            "score": float(result.score),
            "recon_error": float(result.recon_error),
            "log_density": float(result.log_density),
            "percentile": float(result.percentile),
            "is_anomaly": anomalous,
            "fpr": fpr,
            "threshold": float(threshold),
            "pixel_threshold": float(cal.pixel_threshold(fpr, result.n_windows)),
            "model": self.state.describe() if record.detector is self.state.detector
            else "an earlier model",
        }
        if record.heatmap in self.viewer.layers:
            record.heatmap.metadata[PLUGIN_KEY].update(info)
        if outline:
            self._refresh_outline(record)

    def _refresh_outline(self, record: ImageRecord) -> None:
        """Redraw the record's outline at the current false-alarm rate, if it changed."""
        if record.outline is None or record.outline not in self.viewer.layers:
            return
        region = self.region(record)
        if not np.array_equal(region, record.outline.data):
            record.outline.data = region

    def _refresh_next_outline(self) -> None:
        if self.outline_queue:
            record = self.outline_queue.pop(0)
            if record in self.records:  # not dropped meanwhile
                self._refresh_outline(record)
        if not self.outline_queue:
            self._outline_timer.stop()

    def outlines_pending(self) -> bool:
        """True while outlines still wait to be redrawn at the current false-alarm rate."""
        return bool(self.outline_queue)

    def apply_all(self) -> None:
        """Re-apply the current false-alarm rate to every record and the table's verdicts;
        the outlines follow, one per event-loop turn, the visible ones first."""
        for record in self.records:
            self.apply(record, outline=False)
            self.table.set_name(record.key, record.source.name)
        outlined = [r for r in self.records if r.outline is not None]
        self.outline_queue = sorted(outlined, key=lambda r: not r.outline.visible)
        if self.outline_queue:
            self._outline_timer.start()
        self.table.set_verdicts({r.key: self.is_anomalous(r) for r in self.records})

    def is_anomalous(self, record: ImageRecord) -> bool:
        """Verdict of a stored result at the current false-alarm rate."""
        return bool(record.result.score > record.detector.calibration.threshold(self._fpr()))

    def row(self, record: ImageRecord) -> dict[str, Any]:
        """The record's row of :meth:`ScoreWidget.results`."""
        r, fpr = record.result, self._fpr()
        return {"layer": record.source.name, "score": r.score, "recon_error": r.recon_error,
                "log_density": r.log_density, "percentile": r.percentile,
                "verdict": "anomalous" if self.is_anomalous(record) else "normal",
                "fpr": fpr, "threshold": record.detector.calibration.threshold(fpr)}

    def scores(self, detector: AnomalyDetector) -> list[float]:
        """The scores of the results made by ``detector`` (for the histogram)."""
        return [r.result.score for r in self.records if r.detector is detector]

    def reveal(self, key: str) -> bool:
        """Show and select the source (and its anomaly map and outline) of row ``key``; False
        if not ours."""
        record = next((r for r in self.records if r.key == key), None)
        if record is None:
            return False
        source = record.source
        if source in self.viewer.layers:
            source.visible = True
            for layer in (record.heatmap, record.outline):  # they may have started hidden
                if layer is not None and layer in self.viewer.layers:
                    layer.visible = True
            self.viewer.layers.selection.active = source
        return True

    def forget(self, removed: Layer) -> bool:
        """Follow the removal of a layer: a removed source loses its record and row, a removed
        outline or reconstruction is no longer refreshed. True if a record was dropped."""
        gone = [r for r in self.records if same_layer(r.source, removed)]
        self.records = [r for r in self.records if not same_layer(r.source, removed)]
        for record in self.records:
            if same_layer(record.outline, removed):
                record.outline = None
            if same_layer(record.reconstruction, removed):
                record.reconstruction = None
        for record in gone:
            self.table.remove(record.key)
        return bool(gone)
