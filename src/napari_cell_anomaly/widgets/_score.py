"""The "Score images" dock widget.

Scores image layers with the active model of the viewer's :class:`~._state.ModelState` in a
napari ``thread_worker`` and renders each :class:`~..core.detector.ScoreResult` as layers (an
anomaly map, optionally the reconstruction and an outline of the anomalous region), a table
row and a point of the score histogram. The false-alarm-rate slider re-applies the model's
calibrated thresholds to the stored results without scoring again.

With "Per cell" on, each image's cells (from a Labels layer, or found by the built-in
segmentation) are scored one by one (:class:`~..core.cellscores.CellScores`) and shown as a
Labels layer ``"<source> cells"`` whose ``features`` hold one row per cell, coloured by verdict
or score, and in a per-cell table that stays in step with the viewer's selected cell.

The dock only composes small pieces, each in its own module: the model choice
(:mod:`._model_source`), the worker jobs and their events (:mod:`._score_job`), the result
layers (:mod:`._layers`), the results table and CSV export (:mod:`._results_table`), the
histogram (:mod:`._histogram`), and for cells the options (:mod:`._cells_source`), the cells
layer (:mod:`._cells_layer`) and the cells table (:mod:`._cells_table`).
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Layer
from napari.qt.threading import create_worker
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)
from superqt import QLabeledDoubleSlider

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
from ._cells_source import CellsSourceBox, labels_problem
from ._cells_table import CellsTable
from ._common import (
    PLUGIN_KEY,
    JobControl,
    JobSlot,
    Plane,
    bind,
    image_hw,
    is_own_layer,
    layer_key,
    report_error,
    same_layer,
    scoring_problem,
    snapshot_planes,
    watch_window_close,
)
from ._core_loader import when_core_ready
from ._histogram import ScoreHistogram
from ._layers import (
    HEATMAP,
    OUTLINE,
    RECONSTRUCTION,
    keep_selection,
    layer_meta,
    remove_own_layers,
    upsert,
)
from ._model_source import ModelSourceBox
from ._results_table import ImageResultsTable, write_csv
from ._score_job import CellsScored, Failed, Scored, score_cells_job, score_job
from ._state import ModelState, Status, get_state

if TYPE_CHECKING:
    import napari

    from ..core.detector import AnomalyDetector, ScoreResult

__all__ = ["ScoreWidget"]

logger = logging.getLogger(__name__)


@dataclass
class _Record:
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


@dataclass
class _CellsRecord:
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

    @property
    def key(self) -> str:
        return layer_key(self.source)

    def worst(self) -> int:
        """Row of the highest-scoring judged cell (-1 if none is judged)."""
        if not self.judged.any():
            return -1
        return int(np.argmax(np.where(self.judged, self.cells.table["score"], -np.inf)))


class ScoreWidget(QWidget):
    """Score image layers with an anomaly model and show where they look abnormal.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose image layers are scored.
    """

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state: ModelState = get_state(napari_viewer)
        self._jobs = JobSlot()
        self._records: list[_Record] = []
        self._cell_records: list[_CellsRecord] = []
        self._current_cells: _CellsRecord | None = None
        self._watched_cell_layers: set[str] = set()
        self._job_layers: list[Layer] = []
        self._job_failures: list[Failed] = []
        self._job_done = 0
        self._job_detector: AnomalyDetector | None = None
        self._fpr_timer = QTimer(self)
        self._fpr_timer.setSingleShot(True)
        self._fpr_timer.setInterval(60)
        self._fpr_timer.timeout.connect(self.apply_fpr)
        # Outlines are redrawn one layer per event-loop turn after a new false-alarm rate
        # (each costs napari ~10-30 ms), visible layers first, so the slider never freezes.
        self._outline_queue: list[_Record] = []
        self._outline_timer = QTimer(self)
        self._outline_timer.setInterval(0)
        self._outline_timer.timeout.connect(self._refresh_next_outline)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)

        # -- model --------------------------------------------------------------------------
        self.model_box = ModelSourceBox(self.state)
        self.source_combo = self.model_box.combo
        self.load_button = self.model_box.load_button
        self.model_label = self.model_box.label
        layout.addWidget(self.model_box)

        # -- what to score ------------------------------------------------------------------
        row = QHBoxLayout()
        self.selected_radio = QRadioButton("Selected layers")
        self.all_radio = QRadioButton("All image layers")
        self.selected_radio.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.selected_radio)
        group.addButton(self.all_radio)
        row.addWidget(self.selected_radio)
        row.addWidget(self.all_radio)
        row.addStretch(1)
        layout.addLayout(row)
        row = QHBoxLayout()
        self.outline_check = QCheckBox("Outline anomalous regions")
        self.outline_check.setChecked(True)
        self.outline_check.setToolTip("Add a Labels layer outlining where the anomaly map "
                                      "exceeds the pixel threshold of the false-alarm rate.")
        self.recon_check = QCheckBox("Reconstruction")
        self.recon_check.setToolTip("Also add the model's reconstruction of each image (added "
                                    "hidden: toggle it to compare with the original).")
        row.addWidget(self.outline_check)
        row.addWidget(self.recon_check)
        row.addStretch(1)
        layout.addLayout(row)
        self.cells_box = CellsSourceBox(self.viewer, self.layers_to_score)
        layout.addWidget(self.cells_box)

        row = QHBoxLayout()
        self.score_button = QPushButton("Score")
        self.stop_button = QPushButton("Stop")
        row.addWidget(self.score_button, 1)
        row.addWidget(self.stop_button)
        layout.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("")
        layout.addWidget(self.progress)

        # -- threshold ----------------------------------------------------------------------
        row = QHBoxLayout()
        row.addWidget(QLabel("False alarms (%)"))
        self.fpr_slider = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.fpr_slider.setRange(0.1, 20.0)
        self.fpr_slider.setDecimals(1)
        self.fpr_slider.setSingleStep(0.1)
        self.fpr_slider.setValue(5.0)
        self.fpr_slider.setToolTip("Share of normal cells you accept to see flagged. Lower = "
                                   "fewer false alarms but more missed anomalies. Changes "
                                   "verdicts and outlines at once, without scoring again.")
        row.addWidget(self.fpr_slider, 1)
        layout.addLayout(row)
        self.threshold_label = QLabel()
        self.threshold_label.setWordWrap(True)
        layout.addWidget(self.threshold_label)

        # -- results ------------------------------------------------------------------------
        self.table = ImageResultsTable()
        layout.addWidget(self.table, 1)
        self.cells_label = QLabel()
        self.cells_label.setWordWrap(True)
        layout.addWidget(self.cells_label)
        self.cells_table = CellsTable()
        layout.addWidget(self.cells_table, 2)
        self.cells_label.hide()
        self.cells_table.hide()
        row = QHBoxLayout()
        self.export_button = QPushButton("Export CSV…")
        self.export_button.setToolTip("One row per scored image (for an image scored per "
                                      "cell: its worst judged cell).")
        self.export_cells_button = QPushButton("Export cells CSV…")
        self.export_cells_button.setToolTip("One row per cell of every image scored per cell.")
        row.addWidget(self.export_button)
        row.addWidget(self.export_cells_button)
        layout.addLayout(row)
        self.hist = ScoreHistogram()
        self._threshold_line = self.hist.threshold_line
        layout.addWidget(self.hist, 1)

        # -- connections --------------------------------------------------------------------
        self.score_button.clicked.connect(self.start_scoring)
        self.stop_button.clicked.connect(self.stop_scoring)
        self.export_button.clicked.connect(self._export_dialog)
        self.fpr_slider.valueChanged.connect(lambda _: self._fpr_timer.start())
        self.table.cellClicked.connect(self._on_row_clicked)
        self.export_cells_button.clicked.connect(self._export_cells_dialog)
        self.cells_table.cell_clicked.connect(self.show_cell)
        self.cells_box.toggled.connect(self._on_per_cell_toggled)
        self.cells_box.edge_check.toggled.connect(lambda _: self.apply_fpr())
        self.cells_box.color_combo.currentIndexChanged.connect(lambda _: self.apply_fpr())
        self._install_cell_picker()
        self.all_radio.toggled.connect(self.cells_box.refresh_sources)
        bind(self, self.viewer.layers.selection.events.changed, self.cells_box.refresh_sources)
        bind(self, self.state.status_changed, self._update_buttons)
        bind(self, self.state.model_changed, self._on_model_changed)
        bind(self, self.viewer.layers.events.removed, self._on_layer_removed)
        watch_window_close(self, self._jobs)

        self.model_box.refresh()
        self._on_model_changed()
        # torch loads in the background the first time a widget opens; the shipped default
        # model is then read in another worker (see ModelSourceBox.on_core_ready).
        when_core_ready(self, self.model_box.on_core_ready,
                        partial(report_error, "Could not load the anomaly-detection core"))

    # ------------------------------------------------------------------------------------
    # model choice (the box does the work; these keep the widget's public API)
    # ------------------------------------------------------------------------------------
    @property
    def fpr(self) -> float:
        """The chosen false-alarm rate as a fraction (slider percent / 100)."""
        return float(self.fpr_slider.value()) / 100.0

    def load_model(self, path: str | Path) -> bool:
        """Load a model file and make it the active model; False (notified) if it fails."""
        return self.model_box.load_model(path)

    def use_default_model(self, *, quiet: bool = False) -> bool:
        """Make the shipped default model the active one; False if there is none."""
        return self.model_box.use_default_model(quiet=quiet)

    def _on_model_changed(self, *_: Any) -> None:
        self._update_threshold_label()
        self._update_histogram()
        self._update_buttons()

    # ------------------------------------------------------------------------------------
    # scoring
    # ------------------------------------------------------------------------------------
    def _update_buttons(self, *_: Any) -> None:
        status = self.state.status
        idle = status is Status.IDLE
        self.score_button.setEnabled(idle and self.state.detector is not None)
        self.score_button.setToolTip(
            "" if self.state.detector is not None else "Train or load a model first.")
        self.stop_button.setEnabled(status is Status.SCORING)
        self.model_box.set_idle(idle)
        self.cells_box.setEnabled(idle)
        self.export_button.setEnabled(bool(self._records or self._cell_records))
        self.export_cells_button.setEnabled(bool(self._cell_records))

    def _on_per_cell_toggled(self, on: bool) -> None:
        self.outline_check.setEnabled(not on)
        self.recon_check.setEnabled(not on)

    def layers_to_score(self) -> list[Layer]:
        """The layers the Score button would use (before checking them)."""
        if self.all_radio.isChecked():
            return [ly for ly in self.viewer.layers
                    if isinstance(ly, Image) and not is_own_layer(ly)]
        return [ly for ly in self.viewer.layers if ly in self.viewer.layers.selection]

    def start_scoring(self) -> bool:
        """Score the chosen layers; False (with a notification) if nothing can be scored."""
        state = self.state
        if state.busy:
            show_warning(f"Wait until {state.status.value} has finished before scoring.")
            return False
        detector = state.detector
        if detector is None:
            show_error("No model to score with: train one with 'Train anomaly model', or load "
                       "a model file.")
            return False
        layers = self.layers_to_score()
        if not layers:
            show_warning("No layer selected: select image layers in the layer list, or "
                         "choose 'All image layers'." if self.selected_radio.isChecked()
                         else "There are no image layers to score.")
            return False
        good = [ly for ly in layers if scoring_problem(ly) is None]
        # The plugin's own layers (selected along with their source) are skipped silently.
        problems = [scoring_problem(ly) for ly in layers
                    if ly not in good and not (good and is_own_layer(ly))]
        layers = good
        if problems:
            text = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)"
                                              if len(problems) > 3 else "")
            if layers:
                show_warning(f"Skipping {len(problems)} layer{'s' * (len(problems) != 1)}: "
                             f"{text}.")
            else:
                show_error(f"Nothing to score: {text}.")
                return False

        if self.cells_box.per_cell():
            items = self._cell_items(detector, layers)
            if items is None:
                return False
            job_args: tuple = (score_cells_job, detector, items, self.fpr,
                               self.cells_box.include_border())
        else:
            job_args = (score_job, detector,
                        snapshot_planes([(ly.name, ly.data) for ly in layers]), self.fpr)
        self._job_layers = layers
        self._job_failures = []
        self._job_done = 0
        self._jobs.current = job = JobControl()
        if job_args[0] is score_job:
            job_args += (job,)  # its stop flag cancels between batches of tiles
        worker = create_worker(*job_args, _ignore_errors=True, _start_thread=False)
        job.worker = worker
        worker.errored.connect(partial(report_error, "Scoring failed"))
        worker.finished.connect(partial(state.set_status, Status.IDLE))
        self._job_detector = detector
        worker.yielded.connect(self._on_event)
        worker.finished.connect(self._on_finished)
        self.progress.setRange(0, len(layers))
        self.progress.setValue(0)
        self.progress.setFormat(f"0/{len(layers)}")
        state.set_status(Status.SCORING)
        worker.start()
        return True

    def _cell_items(self, detector: AnomalyDetector, layers: list[Layer]
                    ) -> list[tuple[Plane, np.ndarray | None]] | None:
        """Per-cell job items ``(image, labels snapshot or None)``; None (notified)
        when the cells cannot come from the chosen source."""
        if detector.mode == "patch":
            show_error("This patch-mode model is calibrated on windows, not cells: train a "
                       "model with cells (Train widget, 'cells' source) or on cell crops to "
                       "score per cell, or untick 'Per cell'.")
            return None
        labels = self.cells_box.labels_layer()
        if labels is None:
            planes = snapshot_planes([(ly.name, ly.data) for ly in layers])
            return [(plane, None) for plane in planes]
        if len(layers) != 1:
            show_error(f"The Labels layer {labels.name!r} gives the cells of one image, but "
                       f"{len(layers)} images are to be scored: select one image, or choose "
                       "'find cells automatically'.")
            return None
        image = layers[0]
        problem = labels_problem(labels, image_hw(image), image.name)
        if problem is not None:
            show_error(f"Cannot score cells: {problem}.")
            return None
        # A snapshot: the user may paint on the layer while the worker reads it.
        snapshot = np.array(labels.data, copy=True)
        if not snapshot.any():
            show_error(f"Cannot score cells: the Labels layer {labels.name!r} is empty (every "
                       "pixel is 0, so there are no cells).")
            return None
        return [(snapshot_planes([(image.name, image.data)])[0], snapshot)]

    def stop_scoring(self) -> None:
        """Stop now (between batches of tiles); the results so far are kept."""
        job = self._jobs.current
        if self.state.status is Status.SCORING and job.worker is not None:
            job.stop.set()
            job.worker.quit()

    def _on_event(self, event: Scored | CellsScored | Failed) -> None:
        detector = self._job_detector
        self._job_done += 1
        n = len(self._job_layers)
        self.progress.setValue(self._job_done)
        self.progress.setFormat(f"{self._job_done}/{n}")
        if isinstance(event, Failed):
            self._job_failures.append(event)
            return
        source = self._job_layers[event.index]
        if source not in self.viewer.layers:  # removed while it was being scored
            return
        if isinstance(event, CellsScored):
            self._render_cells(source, event.cells, detector, event.labels, event.others)
        else:
            self._render_result(source, event.result, detector)

    def _on_finished(self) -> None:
        n = len(self._job_layers)
        if self._job_done < n:
            self.progress.setFormat(f"stopped: {self._job_done}/{n}")
        failures = self._job_failures
        if failures:
            first = failures[0].reason
            more = f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""
            show_error(f"Could not score {len(failures)} of {n} image"
                       f"{'s' * (n != 1)}: {first}{more}")
        self._update_buttons()

    # ------------------------------------------------------------------------------------
    # layers
    # ------------------------------------------------------------------------------------
    def _record_of(self, source: Layer) -> _Record | None:
        return next((r for r in self._records if same_layer(r.source, source)), None)

    def _render_result(self, source: Layer, result: ScoreResult,
                       detector: AnomalyDetector) -> None:
        self._drop_cells_record(source)
        # Scored per cell before: its cells layer would stay, looking current.
        remove_own_layers(self.viewer, (CELLS,), source)
        record = self._record_of(source)
        if record is None:
            record = _Record(source, result, detector, heatmap=None)  # type: ignore[arg-type]
            self._records.append(record)
        record.result, record.detector = result, detector
        cal = detector.calibration
        with keep_selection(self.viewer):
            if self.recon_check.isChecked():
                recon = result.reconstruction
                rgb = recon.ndim == 3 and recon.shape[-1] == 3
                record.reconstruction = upsert(
                    self.viewer, RECONSTRUCTION, source,
                    recon if rgb else recon.reshape(recon.shape[:2]), "image", rgb=rgb,
                    contrast_limits=(0.0, 1.0), visible=False,
                    metadata=layer_meta(RECONSTRUCTION, source))
            lo, hi = cal.display_range()
            # New layers over a hidden image start hidden: napari draws every visible layer.
            shown = bool(source.visible)
            record.heatmap = upsert(
                self.viewer, HEATMAP, source, result.error_map, "image", colormap="inferno",
                blending="additive", opacity=0.6, contrast_limits=(float(lo), float(hi)),
                visible=shown, metadata=layer_meta(HEATMAP, source))
            if self.outline_check.isChecked() or record.outline is not None:
                record.outline = upsert(
                    self.viewer, OUTLINE, source, self._region(record), "labels", contour=1,
                    opacity=1.0, visible=shown,
                    colormap=DirectLabelColormap(color_dict={None: "transparent", 1: "cyan"}),
                    metadata=layer_meta(OUTLINE, source))
        if record in self._outline_queue:
            self._outline_queue.remove(record)
        self._apply_record(record, outline=False)  # the outline was just drawn
        r = result
        self.table.set_result(record.key, source.name,
                              (r.score, r.recon_error, r.log_density, r.percentile),
                              self.is_anomalous(record))
        self._update_histogram()
        self._update_buttons()

    # -- cells -------------------------------------------------------------------------------
    def _cells_record_of(self, source: Layer) -> _CellsRecord | None:
        return next((r for r in self._cell_records if same_layer(r.source, source)), None)

    def _drop_cells_record(self, source: Layer) -> None:
        """Forget the per-cell result of ``source`` (scored again per image)."""
        record = self._cells_record_of(source)
        if record is None:
            return
        self._cell_records.remove(record)
        if self._current_cells is record:
            self._show_cells(self._cell_records[-1] if self._cell_records else None)

    def _render_cells(self, source: Layer, cells: CellScores, detector: AnomalyDetector,
                      labels: np.ndarray | None = None, others: np.ndarray | None = None
                      ) -> None:
        """Show the cells of ``source``: heatmap, cells layer, table rows, histogram.

        ``labels`` is ``cells.labels`` as the layer stores it and ``others`` its objects that
        are not scored cells (both made in the worker, :class:`~._score_job.CellsScored`);
        None computes them here.
        """
        if labels is None:
            labels = display_labels(cells.labels)
        if others is None:
            others = other_labels(labels, cells.table["label"])
        whole = self._record_of(source)
        if whole is not None:  # scored per image before: this result replaces that one
            self._records.remove(whole)
        # The per-image outline and reconstruction would stay, looking current.
        remove_own_layers(self.viewer, (OUTLINE, RECONSTRUCTION), source)
        lo, hi = detector.calibration.display_range()
        with keep_selection(self.viewer):
            heatmap = upsert(
                self.viewer, HEATMAP, source, cells.error_map, "image", colormap="inferno",
                blending="additive", opacity=0.6, contrast_limits=(float(lo), float(hi)),
                metadata=layer_meta(HEATMAP, source))
            layer = upsert(self.viewer, CELLS, source, labels, "labels", opacity=0.5,
                           metadata=layer_meta(CELLS, source))
        record = self._cells_record_of(source)
        if record is None:
            record = _CellsRecord(source, cells, detector, layer, heatmap)
            self._cell_records.append(record)
        record.cells, record.detector, record.layer, record.heatmap = (cells, detector, layer,
                                                                       heatmap)
        record.others, record.shown = np.asarray(others), None
        key = layer_key(layer)
        if key not in self._watched_cell_layers:
            self._watched_cell_layers.add(key)
            bind(self, layer.events.selected_label, self._on_selected_label)
        self._apply_cells(record)
        self._show_cells(record)
        self._update_histogram()
        self._update_buttons()

    def _apply_cells(self, record: _CellsRecord) -> None:
        """Verdicts at the current false-alarm rate and edge rule -> features, colours, rows."""
        cells, cal = record.cells, record.detector.calibration
        fpr, include_border = self.fpr, self.cells_box.include_border()
        threshold = float(cal.threshold(fpr))
        record.judged = cells.judged(include_border)
        record.is_anomaly = cells.verdicts(threshold, include_border)
        layer = record.layer
        if layer in self.viewer.layers:
            normals = np.asarray(cal.scores, dtype=float)
            lo = float(np.median(normals)) if normals.size else 0.0
            hi = max(float(cal.threshold(0.001)), lo + 1e-6)
            colors = cell_colors(cells, record.is_anomaly, record.judged,
                                 self.cells_box.color_mode(), (lo, hi))
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
        worst = record.worst()
        t = cells.table
        values = ((t["score"][worst], t["recon_error"][worst], t["log_density"][worst],
                   t["percentile"][worst]) if worst >= 0 else (np.nan,) * 4)
        self.table.set_result(record.key, record.source.name, values,
                              bool(record.is_anomaly.any()))
        if record is self._current_cells:
            self.cells_table.cells_model.set_verdicts(record.is_anomaly, record.judged)
            self._update_cells_label()

    def _show_cells(self, record: _CellsRecord | None) -> None:
        """Fill the cells table with ``record``'s cells (None: hide it)."""
        self._current_cells = record
        model = self.cells_table.cells_model
        if record is None:
            model.set_cells(None)
        else:
            model.set_cells(record.cells, record.is_anomaly, record.judged)
        self.cells_table.setVisible(record is not None)
        self.cells_label.setVisible(record is not None)
        self._update_cells_label()

    def _update_cells_label(self) -> None:
        record = self._current_cells
        if record is None:
            self.cells_label.setText("")
            return
        n, judged = len(record.cells), int(record.judged.sum())
        text = (f"<b>Cells of {record.source.name}</b>: {n} cell{'s' * (n != 1)}, "
                f"{int(record.is_anomaly.sum())} anomalous")
        if judged < n:
            text += f", {n - judged} cut by the edge (not judged)"
        if record.cells.skipped:
            text += f"; {record.cells.skipped} objects too small to read were left out"
        self.cells_label.setText(text)

    def show_cell(self, label: int) -> bool:
        """Centre and zoom the view on cell ``label`` of the cells table's image, select it in
        its cells layer and in the table; False if there is no such cell."""
        record = self._current_cells
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
                      float(t["area"][i]))
        layer.selected_label = int(label)
        self.cells_table.select_label(int(label))
        return True

    def _on_selected_label(self, event: Any) -> None:
        """The viewer's selected cell changed (picked, or set in the layer controls)."""
        layer = event.source
        record = next((r for r in self._cell_records if same_layer(r.layer, layer)), None)
        if record is None:
            return
        if record is not self._current_cells:
            self._show_cells(record)
        self.cells_table.select_label(int(layer.selected_label))

    def pick_cell(self, position: Any) -> int | None:
        """Select the cell under a world ``position`` (a click in the viewer).

        Looks in the cells layer shown in the table first, then the other visible ones.
        Returns the label picked, or None where there is no scored cell.
        """
        records = sorted(self._cell_records, key=lambda r: r is not self._current_cells)
        for record in records:
            layer = record.layer
            if layer not in self.viewer.layers or not layer.visible:
                continue
            value = layer.get_value(position, world=True)
            if value is None or int(value) <= 0:
                continue
            label = int(value)
            if record is not self._current_cells:
                self._show_cells(record)
            layer.selected_label = label
            self.cells_table.select_label(label)
            return label
        return None

    def _install_cell_picker(self) -> None:
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
            widget = ref()
            if widget is not None and not dragged and widget._cell_records:
                widget.pick_cell(event.position)

        callbacks = self.viewer.mouse_drag_callbacks
        callbacks.append(pick_on_click)

        def remove(*_: Any) -> None:
            if pick_on_click in callbacks:
                callbacks.remove(pick_on_click)

        self.destroyed.connect(remove)

    def _region(self, record: _Record) -> np.ndarray:
        level = record.detector.calibration.pixel_threshold(self.fpr, record.result.n_windows)
        return (record.result.error_map > level).astype(np.uint8)

    def _apply_record(self, record: _Record, outline: bool = True) -> None:
        """Write the verdict at the current false-alarm rate to the record's layers.

        With ``outline=False`` the outline layer is left as it is (redrawn by the caller).
        """
        fpr = self.fpr
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

    def _refresh_outline(self, record: _Record) -> None:
        """Redraw the record's outline at the current false-alarm rate, if it changed."""
        if record.outline is None or record.outline not in self.viewer.layers:
            return
        region = self._region(record)
        if not np.array_equal(region, record.outline.data):
            record.outline.data = region

    def _refresh_next_outline(self) -> None:
        if self._outline_queue:
            record = self._outline_queue.pop(0)
            if record in self._records:  # not dropped meanwhile
                self._refresh_outline(record)
        if not self._outline_queue:
            self._outline_timer.stop()

    def outlines_pending(self) -> bool:
        """True while outlines still wait to be redrawn at the current false-alarm rate."""
        return bool(self._outline_queue)

    def is_anomalous(self, record: _Record) -> bool:
        """Verdict of a stored result at the current false-alarm rate."""
        return bool(record.result.score > record.detector.calibration.threshold(self.fpr))

    def apply_fpr(self) -> None:
        """Re-apply the thresholds of the slider's false-alarm rate to every stored result."""
        self._fpr_timer.stop()
        for record in self._records:
            self._apply_record(record, outline=False)
            self.table.set_name(record.key, record.source.name)
        # Outlines last, one per event-loop turn, the visible ones first.
        outlined = [r for r in self._records if r.outline is not None]
        self._outline_queue = sorted(outlined, key=lambda r: not r.outline.visible)
        if self._outline_queue:
            self._outline_timer.start()
        self.table.set_verdicts({r.key: self.is_anomalous(r) for r in self._records})
        for cells in self._cell_records:
            self._apply_cells(cells)
        self._update_threshold_label()
        self._update_histogram()

    def _on_layer_removed(self, event: Any) -> None:
        removed = event.value
        for cells in [r for r in self._cell_records if same_layer(r.source, removed)]:
            self._drop_cells_record(cells.source)
            self.table.remove(cells.key)
            self._update_buttons()
        gone = [r for r in self._records if same_layer(r.source, removed)]
        self._records = [r for r in self._records if not same_layer(r.source, removed)]
        for record in self._records:
            if same_layer(record.outline, removed):
                record.outline = None
            if same_layer(record.reconstruction, removed):
                record.reconstruction = None
        if gone:
            for record in gone:
                self.table.remove(record.key)
            self._update_histogram()
            self._update_buttons()

    # ------------------------------------------------------------------------------------
    # table, histogram, labels
    # ------------------------------------------------------------------------------------
    def results(self) -> list[dict[str, Any]]:
        """The table's content: one dict per scored layer, in table order."""
        by_key = {r.key: r for r in self._records}
        cells_by_key = {r.key: r for r in self._cell_records}
        rows = []
        for key in self.table.keys():
            if key in cells_by_key:
                rows.append(self._cells_summary(cells_by_key[key]))
                continue
            record = by_key[key]
            r = record.result
            cal = record.detector.calibration
            rows.append({"layer": record.source.name, "score": r.score,
                         "recon_error": r.recon_error, "log_density": r.log_density,
                         "percentile": r.percentile,
                         "verdict": "anomalous" if self.is_anomalous(record) else "normal",
                         "fpr": self.fpr, "threshold": cal.threshold(self.fpr)})
        return rows

    def _cells_summary(self, record: _CellsRecord) -> dict[str, Any]:
        """The images-table row of an image scored per cell: its worst judged cell."""
        t, worst = record.cells.table, record.worst()
        value = (lambda name: float(t[name][worst])) if worst >= 0 else (lambda _: np.nan)
        threshold = record.detector.calibration.threshold(self.fpr)
        return {"layer": record.source.name, "score": value("score"),
                "recon_error": value("recon_error"), "log_density": value("log_density"),
                "percentile": value("percentile"),
                "verdict": "anomalous" if record.is_anomaly.any() else "normal",
                "fpr": self.fpr, "threshold": threshold}

    def cell_rows(self) -> list[dict[str, Any]]:
        """One dict per cell of every image scored per cell, at the current false-alarm rate.

        The first keys are ``path, cell_id, centroid_y, centroid_x, area, score, recon_error,
        log_density, is_anomaly`` (as the command line's ``--cells-csv``); ``path`` is the
        image layer's file, or its name when it was not opened from a file.
        """
        rows = []
        for record in self._cell_records:
            t = record.cells.table
            path = record.source.source.path or record.source.name
            threshold = float(record.detector.calibration.threshold(self.fpr))
            cols = {name: t[name].tolist() for name in CELL_COLUMNS}
            verdicts = record.is_anomaly.tolist()
            judged = record.judged.tolist()
            for i in range(len(record.cells)):
                rows.append({
                    "path": path, "cell_id": int(cols["label"][i]),
                    "centroid_y": cols["centroid_y"][i], "centroid_x": cols["centroid_x"][i],
                    "area": int(cols["area"][i]), "score": cols["score"][i],
                    "recon_error": cols["recon_error"][i],
                    "log_density": cols["log_density"][i], "is_anomaly": bool(verdicts[i]),
                    "percentile": cols["percentile"][i], "at_border": bool(cols["at_border"][i]),
                    "judged": bool(judged[i]), "layer": record.source.name, "fpr": self.fpr,
                    "threshold": threshold})
        return rows

    def _on_row_clicked(self, row: int, _col: int) -> None:
        key = self.table.key_at(row)
        cells = next((r for r in self._cell_records if r.key == key), None)
        if cells is not None:
            self._show_cells(cells)
            if cells.source in self.viewer.layers:
                cells.source.visible = True
                if cells.layer in self.viewer.layers:
                    cells.layer.visible = True
                self.viewer.layers.selection.active = cells.source
            return
        record = next((r for r in self._records if r.key == key), None)
        if record is None:
            return
        source = record.source
        if source not in self.viewer.layers:
            return
        source.visible = True
        if record.heatmap in self.viewer.layers:
            record.heatmap.visible = True
        self.viewer.layers.selection.active = source

    def _update_threshold_label(self) -> None:
        detector = self.state.detector
        if detector is None:
            self.threshold_label.setText("")
            return
        crit = detector.calibration.criteria(self.fpr)
        self.threshold_label.setText(
            f"<small>Anomalous if score &gt; {crit['score']:.2f}, i.e. recon error &gt; "
            f"{crit['recon_error']:.3g} or log-density &lt; {crit['log_density']:.3g}; "
            f"regions where the map &gt; "
            f"{detector.calibration.pixel_threshold(self.fpr):.3g}</small>")

    def _update_histogram(self) -> None:
        detector = self.state.detector
        if detector is None:
            self.hist.clear_scores()
            return
        cal = detector.calibration
        scored = [r.result.score for r in self._records if r.detector is detector]
        for cells in self._cell_records:
            if cells.detector is detector:
                scored.extend(cells.cells.table["score"][cells.judged].tolist())
        self.hist.show_scores(np.asarray(cal.scores, dtype=float), np.asarray(scored, float),
                              cal.threshold(self.fpr), self.fpr)

    # ------------------------------------------------------------------------------------
    # export
    # ------------------------------------------------------------------------------------
    def _export_dialog(self) -> None:
        if not self._records:
            show_warning("Nothing to export yet: score some images first.")
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export results", "anomaly-scores.csv",
                                              "CSV (*.csv)")
        if path:
            self.export_csv(path)

    def export_csv(self, path: str | Path) -> bool:
        """Write the results table (at the current false-alarm rate) to a CSV file."""
        return write_csv(path, self.results())

    def _export_cells_dialog(self) -> None:
        if not self._cell_records:
            show_warning("No cells to export yet: score images with 'Per cell' first.")
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export cells", "anomaly-cells.csv",
                                              "CSV (*.csv)")
        if path:
            self.export_cells_csv(path)

    def export_cells_csv(self, path: str | Path) -> bool:
        """Write one row per scored cell (at the current false-alarm rate) to a CSV file."""
        if not self._cell_records:
            show_warning("No cells to export yet: score images with 'Per cell' first.")
            return False
        return write_csv(path, self.cell_rows(), what="cell")

    # ------------------------------------------------------------------------------------
    # lifetime
    # ------------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Abort a running scoring job and wait (bounded) for its thread to end."""
        self._jobs.shutdown()

    def closeEvent(self, event: Any) -> None:
        self.shutdown()
        super().closeEvent(event)
