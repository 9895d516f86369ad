"""The Score widget's results for stacks: a 3-D (z or t) image layer scored plane by plane.

Each plane of a stack layer is scored with the 2-D model on its own (the job's items are the
planes, read one at a time in the worker). :class:`StackResults` keeps one
:class:`StackRecord` per stack layer and shows it as layers of the stack's own shape, scale and
translate, so they overlay the source plane for plane: the ``"<source> anomaly map"``
``(P, H, W)`` heatmap (planes not scored yet are 0), the ``"<source> anomalous region"``
outline and the optional reconstruction; the images table gets one row per plane, named as
the planes are (``"<layer> [3]"``). A new false-alarm rate re-thresholds every plane without
scoring again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Layer
from napari.utils.colormaps import DirectLabelColormap

from ._common import PLUGIN_KEY, image_hw, layer_key, same_layer
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

__all__ = ["StackRecord", "StackResults"]


@dataclass
class StackRecord:
    """One stack layer scored plane by plane, its planes' results and the layers made for it."""

    source: Layer
    names: list[str]
    results: list[ScoreResult | None]
    maps: np.ndarray
    detector: AnomalyDetector | None = None
    heatmap: Image | None = None
    outline: Labels | None = None
    regions: np.ndarray | None = None
    reconstruction: Image | None = None
    recon: np.ndarray | None = None

    def key(self, plane: int) -> str:
        """The images-table key of ``plane``."""
        return f"{layer_key(self.source)}[{plane}]"

    def scored(self) -> list[int]:
        """The planes with a result."""
        return [i for i, r in enumerate(self.results) if r is not None]


def _show(viewer: napari.Viewer, layer: Layer | None, role: str, source: Layer,
          data: np.ndarray, kind: str, **kwargs: Any) -> Layer:
    """Redraw ``layer`` after its data array was changed in place, or add / refresh it with
    :func:`upsert` when it is not (yet) showing ``data``."""
    if layer is not None and layer in viewer.layers and layer.data is data:
        layer.refresh()
        return layer
    return upsert(viewer, role, source, data, kind, **kwargs)


class StackResults:
    """The stack layers scored plane by plane: records, result layers, table rows.

    Parameters
    ----------
    viewer : napari.Viewer
        Where the result layers go.
    state : ModelState
        Names the active model in the layers' metadata.
    table : ImageResultsTable
        The images table: one row per plane.
    fpr : callable
        Returns the chosen false-alarm rate (a fraction).
    """

    def __init__(self, viewer: napari.Viewer, state: ModelState, table: ImageResultsTable,
                 fpr: Callable[[], float]) -> None:
        self.viewer = viewer
        self.state = state
        self.table = table
        self._fpr = fpr
        self.records: list[StackRecord] = []

    def record_of(self, source: Layer) -> StackRecord | None:
        """The record of ``source``; None if it was not scored as a stack."""
        return next((r for r in self.records if same_layer(r.source, source)), None)

    def begin(self, source: Layer, names: Sequence[str]) -> None:
        """Start scoring the planes of ``source`` (named ``names``): its earlier results and
        their table rows are dropped; its result layers stay until the first plane is in."""
        old = self.record_of(source)
        if old is not None:
            for plane in range(len(old.results)):
                self.table.remove(old.key(plane))
            self.records.remove(old)
        shape = image_hw(source)
        record = StackRecord(source, list(names), [None] * len(names),
                             np.zeros(shape, dtype=np.float32))
        if old is not None:  # keep refreshing the same layers
            record.heatmap, record.outline = old.heatmap, old.outline
            record.reconstruction = old.reconstruction
        self.records.append(record)

    def render_plane(self, source: Layer, plane: int, result: ScoreResult,
                     detector: AnomalyDetector, *, reconstruction: bool, outline: bool
                     ) -> None:
        """Show the result of ``plane`` of ``source`` in its stacked layers and table row."""
        record = self.record_of(source)
        if record is None:
            return
        record.detector = detector
        record.results[plane] = result
        record.maps[plane] = result.error_map
        viewer = self.viewer
        lo, hi = detector.calibration.display_range()
        shown = in_view(viewer, source)  # hidden, or under another image: start hidden
        with keep_selection(viewer):
            record.heatmap = _show(
                viewer, record.heatmap, HEATMAP, source, record.maps, "image",
                colormap="inferno", blending="additive", opacity=0.6,
                contrast_limits=(float(lo), float(hi)), visible=shown,
                metadata=layer_meta(HEATMAP, source))
            if outline or record.outline is not None:
                if record.regions is None:
                    record.regions = np.zeros(record.maps.shape, dtype=np.uint8)
                record.regions[plane] = self._region(record, plane)
                record.outline = _show(
                    viewer, record.outline, OUTLINE, source, record.regions, "labels",
                    contour=1, opacity=1.0, visible=shown,
                    colormap=DirectLabelColormap(color_dict={None: "transparent", 1: "cyan"}),
                    metadata=layer_meta(OUTLINE, source))
            if reconstruction:
                recon = result.reconstruction
                rgb = recon.ndim == 3 and recon.shape[-1] == 3
                if record.recon is None:
                    tail = (3,) if rgb else ()
                    record.recon = np.zeros((*record.maps.shape, *tail), dtype=np.float32)
                record.recon[plane] = recon if rgb else recon.reshape(recon.shape[:2])
                record.reconstruction = _show(
                    viewer, record.reconstruction, RECONSTRUCTION, source, record.recon,
                    "image", rgb=rgb, contrast_limits=(0.0, 1.0), visible=False,
                    metadata=layer_meta(RECONSTRUCTION, source))
        self._write_meta(record)
        self.table.set_result(record.key(plane), record.names[plane],
                              (result.score, result.recon_error, result.log_density,
                               result.percentile), self.is_anomalous(record, plane))

    # -- verdicts -------------------------------------------------------------------------------
    def _region(self, record: StackRecord, plane: int) -> np.ndarray:
        result = record.results[plane]
        level = record.detector.calibration.pixel_threshold(self._fpr(), result.n_windows)
        return (result.error_map > level).astype(np.uint8)

    def is_anomalous(self, record: StackRecord, plane: int) -> bool:
        """Verdict of a plane's stored result at the current false-alarm rate."""
        result = record.results[plane]
        return result is not None and bool(
            result.score > record.detector.calibration.threshold(self._fpr()))

    def _write_meta(self, record: StackRecord) -> None:
        """The planes' numbers at the current rate, in the heatmap's metadata (``planes``:
        one dict per plane, None for a plane not scored)."""
        if record.heatmap is None or record.heatmap not in self.viewer.layers:
            return
        fpr = self._fpr()
        planes: list[dict[str, Any] | None] = []
        for plane, r in enumerate(record.results):
            planes.append(None if r is None else {
                "score": float(r.score), "recon_error": float(r.recon_error),
                "log_density": float(r.log_density), "percentile": float(r.percentile),
                "is_anomaly": self.is_anomalous(record, plane)})
        record.heatmap.metadata[PLUGIN_KEY].update({
            "planes": planes, "fpr": fpr,
            "threshold": float(record.detector.calibration.threshold(fpr)),
            "model": self.state.describe() if record.detector is self.state.detector
            else "an earlier model"})

    def apply_all(self) -> None:
        """Re-apply the current false-alarm rate to every plane: verdicts, metadata,
        outlines."""
        verdicts = {}
        for record in self.records:
            if record.detector is None:
                continue
            scored = record.scored()
            verdicts.update({record.key(p): self.is_anomalous(record, p) for p in scored})
            self._write_meta(record)
            if record.outline is not None and record.outline in self.viewer.layers:
                for plane in scored:
                    record.regions[plane] = self._region(record, plane)
                record.outline.refresh()
        self.table.set_verdicts(verdicts)

    # -- table, histogram -----------------------------------------------------------------------
    def find(self, key: str) -> tuple[StackRecord, int] | None:
        """The record and plane of images-table row ``key``; None if not a stack plane."""
        for record in self.records:
            for plane in record.scored():
                if record.key(plane) == key:
                    return record, plane
        return None

    def row(self, key: str) -> dict[str, Any] | None:
        """The row of :meth:`ScoreWidget.results` for table key ``key`` (None: not ours)."""
        found = self.find(key)
        if found is None:
            return None
        record, plane = found
        r, fpr = record.results[plane], self._fpr()
        return {"layer": record.names[plane], "score": r.score, "recon_error": r.recon_error,
                "log_density": r.log_density, "percentile": r.percentile,
                "verdict": "anomalous" if self.is_anomalous(record, plane) else "normal",
                "fpr": fpr, "threshold": record.detector.calibration.threshold(fpr)}

    def scores(self, detector: AnomalyDetector) -> list[float]:
        """The planes' scores made by ``detector`` (for the histogram)."""
        return [r.score for rec in self.records if rec.detector is detector
                for r in rec.results if r is not None]

    def reveal(self, key: str) -> bool:
        """Show row ``key``'s plane: the viewer steps to it, its source is selected and its
        anomaly map shown; False if the row is not a stack plane."""
        found = self.find(key)
        if found is None:
            return False
        record, plane = found
        source = record.source
        if source in self.viewer.layers:
            source.visible = True
            if record.heatmap in self.viewer.layers:
                record.heatmap.visible = True
            axis = self.viewer.dims.ndim - source.ndim  # layers align on their last axes
            world = source.data_to_world([plane] + [0] * (source.ndim - 1))
            self.viewer.dims.set_point(axis, float(world[0]))
            self.viewer.layers.selection.active = source
        return True

    def drop(self, source: Layer) -> None:
        """Forget the plane results of ``source`` and their table rows (scored again per
        cell); its layers are left to the caller."""
        record = self.record_of(source)
        if record is not None:
            self.records.remove(record)
            for plane in range(len(record.results)):
                self.table.remove(record.key(plane))

    def forget(self, removed: Layer) -> bool:
        """Follow the removal of a layer: a removed source loses its record and rows; a removed
        outline or reconstruction is no longer refreshed. True if a record was dropped."""
        gone = [r for r in self.records if same_layer(r.source, removed)]
        self.records = [r for r in self.records if not same_layer(r.source, removed)]
        for record in self.records:
            if same_layer(record.outline, removed):
                record.outline, record.regions = None, None
            if same_layer(record.reconstruction, removed):
                record.reconstruction, record.recon = None, None
        for record in gone:
            for plane in range(len(record.results)):
                self.table.remove(record.key(plane))
        return bool(gone)
