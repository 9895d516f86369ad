"""The Score widget's per-cell results: one record per layer scored per cell.

Each :class:`CellsRecord` keeps a layer scored per cell, its
:class:`~..core.cellscores.CellScores`, the detector that made them, the ``"<source> cells"``
Labels layer and anomaly map made for it, and its verdicts at the current false-alarm rate.
:class:`CellsResults` renders the records (cells layer, a row of the images table), re-thresholds
them, fills the cells table and its label with one record's cells, keeps the table and the
viewer's selected cell in step both ways (a click on a row centres the view on the cell; a click
on a cell in the canvas selects its row), and exports one CSV row per cell.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Layer
from napari.utils.notifications import show_warning
from qtpy.QtWidgets import QFileDialog, QLabel, QWidget

from ..core.cellscores import CELL_COLUMNS, CellScores
from ._cells_layer import (
    CELLS,
    cell_colormap,
    cell_colors,
    cell_features,
    display_labels,
    focus_on_cell,
    other_labels,
)
from ._cells_source import CellsSourceBox
from ._cells_table import CellsTable
from ._common import PLUGIN_KEY, bind, find_own_layer, layer_key, same_layer
from ._layers import HEATMAP, keep_selection, layer_meta, upsert
from ._results_table import ImageResultsTable, write_csv
from ._state import ModelState

if TYPE_CHECKING:
    import napari
    import pandas as pd

    from ..core.cellscoring import FieldScore
    from ..core.detector import AnomalyDetector

__all__ = ["CellsRecord", "CellsResults"]


@dataclass
class CellsRecord:
    """One layer scored per cell, the layers made for it and its verdicts at the current
    false-alarm rate."""

    source: Layer
    cells: CellScores
    detector: AnomalyDetector
    layer: Labels
    heatmap: Image
    is_anomaly: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    judged: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    #: Objects of ``cells.labels`` that are not scored cells (shown clear).
    others: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    #: The verdicts and colours last written to ``layer`` (None: write them next time).
    shown: tuple[np.ndarray, np.ndarray] | None = None
    #: The image judged by its worst judged cell at the current rate and edge rule (the
    #: core's rule, as its row in ``score --csv``; a stack: its worst plane's); None if no
    #: cell is judged.
    field: FieldScore | None = None

    @property
    def key(self) -> str:
        return layer_key(self.source)


class CellsResults:
    """The layers scored per cell: records, cells layers, the cells table and its label.

    Parameters
    ----------
    owner : QWidget
        The dock widget: parent of the dialogs; connections end when it is destroyed.
    viewer : napari.Viewer
        Where the layers go; a click (not a drag) on its canvas picks the cell under it.
    state : ModelState
        Names the active model in the cells layers' metadata.
    images_table : ImageResultsTable
        Gets one row per record: the image judged by its worst judged cell, its score adjusted
        for the number of cells judged (:meth:`~..core.cellscoring.CellScoring.field_score`,
        as the command line's ``--csv`` row).
    cells_box : CellsSourceBox
        The edge-cell rule and the colouring.
    fpr : callable
        Returns the chosen false-alarm rate (a fraction).

    Attributes
    ----------
    label, table : QLabel, CellsTable
        The cells of :attr:`current` (hidden when there is none), for the owner to lay out.
    """

    def __init__(self, owner: QWidget, viewer: napari.Viewer, state: ModelState,
                 images_table: ImageResultsTable, cells_box: CellsSourceBox,
                 fpr: Callable[[], float]) -> None:
        self.owner = owner
        self.viewer = viewer
        self.state = state
        self.images_table = images_table
        self.cells_box = cells_box
        self._fpr = fpr
        self.records: list[CellsRecord] = []
        #: The record whose cells the table shows.
        self.current: CellsRecord | None = None
        self._watched: set[str] = set()
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.table = CellsTable()
        self.label.hide()
        self.table.hide()
        self.table.cell_clicked.connect(self.show_cell)
        self._install_picker()

    # -- records ------------------------------------------------------------------------------
    def record_of(self, source: Layer) -> CellsRecord | None:
        """The record of ``source``; None if it was not scored per cell."""
        return next((r for r in self.records if same_layer(r.source, source)), None)

    def drop(self, source: Layer) -> None:
        """Forget the per-cell result of ``source`` (scored again per image)."""
        record = self.record_of(source)
        if record is None:
            return
        self.records.remove(record)
        if self.current is record:
            self.show(self.records[-1] if self.records else None)

    def forget(self, removed: Layer) -> bool:
        """Follow the removal of a layer: a removed source loses its record and its row of the
        images table. True if a record was dropped."""
        gone = [r for r in self.records if same_layer(r.source, removed)]
        for record in gone:
            self.drop(record.source)
            self.images_table.remove(record.key)
        return bool(gone)

    def render_steps(self, source: Layer, cells: CellScores, detector: AnomalyDetector,
                     labels: np.ndarray | None = None, others: np.ndarray | None = None,
                     features: pd.DataFrame | None = None) -> Iterator[None]:
        """Show the cells of ``source``: anomaly map, cells layer, table rows; a generator,
        one step per layer added or refreshed.

        napari spends most of a render adding the two layers (their controls, their visuals,
        the selection events); a caller that runs one step per event-loop turn splits that
        stall in two. Steps: the anomaly map; the cells layer, made with its colours and
        features (napari builds its colour table once); the verdicts, the images-table row and
        the cells table. The rest is skipped if the source is removed between steps.

        ``labels`` is ``cells.labels`` as the layer stores it, ``others`` its objects that are
        not scored cells and ``features`` the layer's features at the scoring job's verdicts
        (all made in the worker, :class:`~._score_job.CellsScored`); None computes them here
        (``features`` is also made again if the verdicts changed since).
        """
        if labels is None:
            labels = display_labels(cells.labels)
        if others is None:
            others = other_labels(labels, cells.table["label"])
        lo, hi = detector.calibration.display_range()
        with keep_selection(self.viewer):
            heatmap = upsert(
                self.viewer, HEATMAP, source, cells.error_map, "image", colormap="inferno",
                blending="additive", opacity=0.6, contrast_limits=(float(lo), float(hi)),
                metadata=layer_meta(HEATMAP, source))
        yield
        if source not in self.viewer.layers:
            return
        record = self.record_of(source)
        if record is None:
            record = CellsRecord(source, cells, detector, None, heatmap)  # type: ignore[arg-type]
        record.cells, record.detector, record.heatmap = cells, detector, heatmap
        record.others, record.shown = np.asarray(others), None
        self._judge(record)
        # A new layer gets its colours and features at once (napari builds its colour table
        # once); an existing one is refreshed by apply() below, keeping the user's settings.
        extra: dict[str, Any] = {}
        if not isinstance(find_own_layer(self.viewer, CELLS, source), Labels):
            colors = self._colors(record)
            if features is None or not np.array_equal(features["is_anomaly"],
                                                      record.is_anomaly):
                features = cell_features(cells, record.is_anomaly)
            extra = {"colormap": cell_colormap(cells.table["label"], colors, record.others),
                     "features": features}
            record.shown = (record.is_anomaly.copy(), colors)
        with keep_selection(self.viewer):
            record.layer = upsert(self.viewer, CELLS, source, labels, "labels", opacity=0.5,
                                  metadata=layer_meta(CELLS, source), **extra)
        if record not in self.records:
            self.records.append(record)
        key = layer_key(record.layer)
        if key not in self._watched:
            self._watched.add(key)
            bind(self.owner, record.layer.events.selected_label, self._on_selected_label)
        yield
        if source not in self.viewer.layers or record not in self.records:
            return
        self.apply(record)
        self.show(record)

    def _judge(self, record: CellsRecord) -> float:
        """Set ``record``'s verdicts (its cells' and its image's) at the current false-alarm
        rate and edge rule; returns the cells' threshold."""
        fpr = self._fpr()
        threshold = float(record.detector.calibration.threshold(fpr))
        include_border = self.cells_box.include_border()
        record.judged = record.cells.judged(include_border)
        record.is_anomaly = record.cells.verdicts(threshold, include_border)
        record.field = self._field(record, fpr, include_border)
        return threshold

    @staticmethod
    def _field(record: CellsRecord, fpr: float, include_border: bool) -> FieldScore | None:
        """The image judged by its worst judged cell (the core's rule); a stack's planes are
        fields of their own, and the stack is shown as its worst plane (highest score)."""
        detector, cells = record.detector, record.cells
        planes = cells.table.get("plane")
        if planes is None:
            return detector.field_score(cells, fpr, include_border)
        fields = (detector.field_score(cells, fpr, include_border, rows=planes == p)
                  for p in np.unique(planes))
        return max((f for f in fields if f is not None), key=lambda f: f.score, default=None)

    def _colors(self, record: CellsRecord) -> np.ndarray:
        """The cells' colours at their verdicts, in the chosen colouring."""
        normals = np.asarray(record.detector.calibration.scores, dtype=float)
        lo = float(np.median(normals)) if normals.size else 0.0
        hi = max(float(record.detector.calibration.threshold(0.001)), lo + 1e-6)
        return cell_colors(record.cells, record.is_anomaly, record.judged,
                           self.cells_box.color_mode(), (lo, hi))

    def apply(self, record: CellsRecord) -> None:
        """Verdicts at the current false-alarm rate and edge rule -> features, colours, rows."""
        cells = record.cells
        fpr, include_border = self._fpr(), self.cells_box.include_border()
        threshold = self._judge(record)
        layer = record.layer
        if layer in self.viewer.layers:
            colors = self._colors(record)
            shown = record.shown
            # Rewrite features and colours only when they change: each new colormap makes
            # napari rebuild its colour table and re-upload the layer (tens of ms).
            if shown is None or not np.array_equal(shown[0], record.is_anomaly):
                layer.features = cell_features(cells, record.is_anomaly)
            if shown is None or not np.array_equal(shown[1], colors):
                layer.colormap = cell_colormap(cells.table["label"], colors, record.others)
            record.shown = (record.is_anomaly.copy(), colors)
            layer.metadata[PLUGIN_KEY].update({
                "fpr": fpr, "threshold": threshold, "include_border": include_border,
                "n_cells": len(cells), "n_anomalous": int(record.is_anomaly.sum()),
                "n_judged": int(record.judged.sum()), "skipped": int(cells.skipped),
                "color_by": self.cells_box.color_mode(),
                "model": self.state.describe() if record.detector is self.state.detector
                else "an earlier model"})
        f = record.field
        values = ((f.score, f.recon_error, f.log_density, f.percentile) if f is not None
                  else (np.nan,) * 4)
        self.images_table.set_result(record.key, record.source.name, values,
                                     f is not None and f.is_anomaly)
        if record is self.current:
            self.table.cells_model.set_verdicts(record.is_anomaly, record.judged)
            self._update_label()

    def apply_all(self) -> None:
        """Re-apply the current false-alarm rate and edge rule to every record."""
        for record in self.records:
            self.apply(record)

    def scores(self, detector: AnomalyDetector) -> list[float]:
        """The judged cells' scores of the records made by ``detector`` (for the histogram)."""
        out: list[float] = []
        for record in self.records:
            if record.detector is detector:
                out.extend(record.cells.table["score"][record.judged].tolist())
        return out

    # -- the cells table ----------------------------------------------------------------------
    def show(self, record: CellsRecord | None) -> None:
        """Fill the cells table with ``record``'s cells (None: hide it)."""
        self.current = record
        model = self.table.cells_model
        if record is None:
            model.set_cells(None)
        else:
            model.set_cells(record.cells, record.is_anomaly, record.judged)
        self.table.setVisible(record is not None)
        self.label.setVisible(record is not None)
        self._update_label()

    def _update_label(self) -> None:
        record = self.current
        if record is None:
            self.label.setText("")
            return
        n, judged = len(record.cells), int(record.judged.sum())
        text = (f"<b>Cells of {record.source.name}</b>: {n} cell{'s' * (n != 1)}, "
                f"{int(record.is_anomaly.sum())} anomalous")
        if judged < n:
            text += f", {n - judged} cut by the edge (not judged)"
        if record.cells.skipped:
            text += f"; {record.cells.skipped} objects too small to read were left out"
        self.label.setText(text)

    def reveal(self, key: str) -> bool:
        """Show the cells of row ``key`` of the images table and select its source; False if
        that row is not scored per cell."""
        record = next((r for r in self.records if r.key == key), None)
        if record is None:
            return False
        self.show(record)
        if record.source in self.viewer.layers:
            record.source.visible = True
            if record.layer in self.viewer.layers:
                record.layer.visible = True
            self.viewer.layers.selection.active = record.source
        return True

    # -- table <-> viewer selection -----------------------------------------------------------
    def show_cell(self, label: int) -> bool:
        """Centre and zoom the view on cell ``label`` of the cells table's image, select it in
        its cells layer and in the table; False if there is no such cell."""
        record = self.current
        if record is None or record.layer not in self.viewer.layers:
            return False
        labels = record.cells.table["label"]
        i = int(np.searchsorted(labels, label))
        if i >= labels.size or labels[i] != label:
            return False
        layer = record.layer
        layer.visible = True
        t = record.cells.table
        focus_on_cell(self.viewer, layer, (float(t["centroid_y"][i]), float(t["centroid_x"][i])),
                      float(t["area"][i]), int(t["plane"][i]) if "plane" in t else None)
        layer.selected_label = int(label)
        self.table.select_label(int(label))
        return True

    def _on_selected_label(self, event: Any) -> None:
        """The viewer's selected cell changed (picked, or set in the layer controls)."""
        layer = event.source
        record = next((r for r in self.records if same_layer(r.layer, layer)), None)
        if record is None:
            return
        if record is not self.current:
            self.show(record)
        self.table.select_label(int(layer.selected_label))

    def pick_cell(self, position: Any) -> int | None:
        """Select the cell under a world ``position`` (a click in the viewer).

        Looks in the cells layer shown in the table first, then the other visible ones.
        Returns the label picked, or None where there is no scored cell.
        """
        records = sorted(self.records, key=lambda r: r is not self.current)
        for record in records:
            layer = record.layer
            if layer not in self.viewer.layers or not layer.visible:
                continue
            value = layer.get_value(position, world=True)
            if value is None or int(value) <= 0:
                continue
            label = int(value)
            if record is not self.current:
                self.show(record)
            layer.selected_label = label
            self.table.select_label(label)
            return label
        return None

    def _install_picker(self) -> None:
        """A click (not a drag) on the canvas picks the cell under the cursor."""
        ref = weakref.ref(self)

        def pick_on_click(viewer: Any, event: Any) -> Any:
            if getattr(event, "button", 1) != 1 or getattr(event, "modifiers", ()):
                return
            dragged = False
            yield
            while event.type == "mouse_move":
                dragged = True
                yield
            results = ref()
            if results is not None and not dragged and results.records:
                results.pick_cell(event.position)

        callbacks = self.viewer.mouse_drag_callbacks
        callbacks.append(pick_on_click)

        def remove(*_: Any) -> None:
            if pick_on_click in callbacks:
                callbacks.remove(pick_on_click)

        self.owner.destroyed.connect(remove)

    # -- rows and export ----------------------------------------------------------------------
    def summary(self, record: CellsRecord) -> dict[str, Any]:
        """The images-table row of an image scored per cell: the image judged by its worst
        judged cell, its score adjusted for the number of cells judged (as ``--csv``)."""
        f, fpr = record.field, self._fpr()
        threshold = record.detector.calibration.threshold(fpr)
        nan = float("nan")
        return {"layer": record.source.name, "score": f.score if f else nan,
                "recon_error": f.recon_error if f else nan,
                "log_density": f.log_density if f else nan,
                "percentile": f.percentile if f else nan,
                "verdict": "anomalous" if f is not None and f.is_anomaly else "normal",
                "fpr": fpr, "threshold": threshold}

    def rows(self) -> list[dict[str, Any]]:
        """One dict per cell of every record, at the current false-alarm rate (see
        :meth:`ScoreWidget.cell_rows`)."""
        rows = []
        fpr = self._fpr()
        for record in self.records:
            t = record.cells.table
            path = record.source.source.path or record.source.name
            threshold = float(record.detector.calibration.threshold(fpr))
            cols = {name: t[name].tolist() for name in CELL_COLUMNS}
            # A stack's cells (core.stacks.stack_cells): their plane and own id in that plane.
            ids = t["cell_id"].tolist() if "cell_id" in t else cols["label"]
            planes = t["plane"].tolist() if "plane" in t else [""] * len(record.cells)
            verdicts = record.is_anomaly.tolist()
            judged = record.judged.tolist()
            for i in range(len(record.cells)):
                rows.append({
                    "path": path, "cell_id": int(ids[i]),
                    "centroid_y": cols["centroid_y"][i], "centroid_x": cols["centroid_x"][i],
                    "area": int(cols["area"][i]), "score": cols["score"][i],
                    "recon_error": cols["recon_error"][i],
                    "log_density": cols["log_density"][i], "is_anomaly": bool(verdicts[i]),
                    "percentile": cols["percentile"][i], "at_border": bool(cols["at_border"][i]),
                    "judged": bool(judged[i]), "layer": record.source.name, "fpr": fpr,
                    "threshold": threshold, "plane": planes[i]})
        return rows

    def export_dialog(self) -> None:
        """Ask for a file name, then :meth:`export_csv`."""
        if not self.records:
            show_warning("No cells to export yet: score images with 'Per cell' first.")
            return
        path, _ = QFileDialog.getSaveFileName(self.owner, "Export cells", "anomaly-cells.csv",
                                              "CSV (*.csv)")
        if path:
            self.export_csv(path)

    def export_csv(self, path: str | Path) -> bool:
        """Write one row per scored cell (at the current false-alarm rate) to a CSV file."""
        if not self.records:
            show_warning("No cells to export yet: score images with 'Per cell' first.")
            return False
        return write_csv(path, self.rows(), what="cell")
