"""The "Score images" dock widget.

Scores image layers with the active model of the viewer's :class:`~._state.ModelState` in a
napari ``thread_worker`` and renders each :class:`~..core.detector.ScoreResult` as layers (an
anomaly map, optionally the reconstruction and an outline of the anomalous region), a table
row and a point of the score histogram. The false-alarm-rate slider re-applies the model's
calibrated thresholds to the stored results without scoring again.

A 3-D (z or t) image layer is scored plane by plane: each plane is one job item, and its
results are shown by :mod:`._stack_results` (layers of the stack's shape over the source, one
table row per plane); per cell, the planes' cells are merged into one cells layer of the
stack's shape as they come in (:class:`~..core.stacks.StackCells`) shown as any image's cells.

With "Per cell" on, each image's cells (from a Labels layer, or found by the built-in
segmentation) are scored one by one (:class:`~..core.cellscores.CellScores`) and shown as a
Labels layer ``"<source> cells"`` whose ``features`` hold one row per cell, coloured by verdict
or score, and in a per-cell table that stays in step with the viewer's selected cell.

The dock keeps the layout, the Score/Stop flow and the public API, and composes small pieces,
each in its own module: the model choice (:mod:`._model_source`), what to score
(:mod:`._score_targets`), job planning and the worker (:mod:`._score_plan`), the worker jobs
and their events (:mod:`._score_job`), routing the events to the results one layer per turn
(:mod:`._score_render`), the per-image results (:mod:`._image_results`: records, result
layers, re-thresholding), the per-cell results (:mod:`._cells_results`: records, cells layers,
cells table, viewer selection, cells CSV), the stacks' results (:mod:`._stack_results`), the
images table and CSV export (:mod:`._results_table`), the false-alarm slider with its
threshold text and histogram (:mod:`._fpr_panel`), and for cells the options
(:mod:`._cells_source`), the cells layer (:mod:`._cells_layer`) and the cells table
(:mod:`._cells_table`).
"""

from __future__ import annotations

import logging
import weakref
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.layers import Layer
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QEvent, QObject, QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from ._cells_results import CellsResults
from ._cells_source import CellsSourceBox
from ._common import (
    JobControl,
    JobSlot,
    ProgressBar,
    after_first_paint,
    bind,
    report_error,
    watch_window_close,
)
from ._core_loader import when_core_ready
from ._fpr_panel import FalseAlarmPanel, fraction
from ._image_results import ImageRecord, ImageResults
from ._lazy_maps import LazyMapsBox
from ._model_source import ModelSourceBox
from ._results_table import ImageResultsTable, write_csv
from ._score_plan import plan_job, start_worker
from ._score_render import ResultRouter
from ._score_targets import ScoreTargetsBox
from ._stack_results import StackResults
from ._state import ModelState, Status, get_state

if TYPE_CHECKING:
    import napari

    from ._histogram import ScoreHistogram
    from ._score_job import CellsScored, Failed, Scored

__all__ = ["ScoreWidget"]

logger = logging.getLogger(__name__)


def _scoring_finished(widget: weakref.ref[ScoreWidget], state: ModelState) -> None:
    """The scoring worker ended: the widget sets the status idle once it has rendered what
    the worker sent; without a widget (closed meanwhile), the status is set idle at once."""
    dock = widget()
    try:
        if dock is not None and dock.finish_when_rendered():
            return
    except RuntimeError:  # its Qt object was deleted
        pass
    state.set_status(Status.IDLE)


class VerticalScroll(QScrollArea):
    """A scroll area that scrolls its widget up and down only: it asks for its widget's width
    (plus the scroll bar), so that a dock is never narrower than its content, and follows the
    widget's size hints as they change."""

    def __init__(self, widget: QWidget) -> None:
        super().__init__()
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(widget)
        widget.installEventFilter(self)

    def _with_width(self, hint: QSize, width: int) -> QSize:
        bar = self.verticalScrollBar().sizeHint().width()
        return QSize(width + bar + 2 * self.frameWidth(), hint.height())

    def minimumSizeHint(self) -> QSize:
        widget = self.widget()
        hint = super().minimumSizeHint()
        return hint if widget is None else self._with_width(
            hint, widget.minimumSizeHint().width())

    def sizeHint(self) -> QSize:
        widget = self.widget()
        hint = super().sizeHint()
        return hint if widget is None else self._with_width(hint, widget.sizeHint().width())

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()  # the content's hints changed: so do ours
        return super().eventFilter(watched, event)


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

        # The content scrolls: with a model summary, a per-cell result and the histogram it is
        # taller than many screens, and a dock cannot shrink below its content (it would grow
        # the window past the screen and squeeze the wrapped texts, cutting them mid-line).
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        content = QWidget()
        self.scroll = VerticalScroll(content)
        outer.addWidget(self.scroll)
        layout = self._content = QVBoxLayout(content)
        layout.setContentsMargins(6, 6, 6, 6)

        # -- model --------------------------------------------------------------------------
        self.model_box = ModelSourceBox(self.state)
        self.source_combo = self.model_box.combo
        self.load_button = self.model_box.load_button
        self.model_label = self.model_box.label
        self.device = self.model_box.device
        layout.addWidget(self.model_box)

        # -- what to score ------------------------------------------------------------------
        self.targets = ScoreTargetsBox(self.viewer)
        self.selected_radio = self.targets.selected_radio
        self.all_radio = self.targets.all_radio
        layout.addWidget(self.targets)
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
        self.cells_box = CellsSourceBox(self.viewer, self.targets.layers)
        layout.addWidget(self.cells_box)

        row = QHBoxLayout()
        self.score_button = QPushButton("Score")
        self.stop_button = QPushButton("Stop")
        row.addWidget(self.score_button, 1)
        row.addWidget(self.stop_button)
        layout.addLayout(row)
        self.progress = ProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("")
        layout.addWidget(self.progress)
        self.lazy_maps = LazyMapsBox(self.viewer)  # big dask/zarr/multiscale layers
        layout.addWidget(self.lazy_maps)

        # -- threshold ----------------------------------------------------------------------
        self.fpr_panel = FalseAlarmPanel()
        self.fpr_slider = self.fpr_panel.slider
        self.threshold_label = self.fpr_panel.label
        layout.addWidget(self.fpr_panel)

        # -- results ------------------------------------------------------------------------
        self.table = ImageResultsTable()
        layout.addWidget(self.table, 1)
        fpr = partial(fraction, self.fpr_slider)  # not a method: no cycle through self
        self.image_results = ImageResults(self, self.viewer, self.state, self.table, fpr)
        self.cell_results = CellsResults(self, self.viewer, self.state, self.table,
                                         self.cells_box, fpr)
        self.stack_results = StackResults(self.viewer, self.state, self.table, fpr)
        self.lazy_maps.show_rows_in(self.table, fpr)
        self.cells_label = self.cell_results.label
        self.cells_table = self.cell_results.table
        layout.addWidget(self.cells_label)
        layout.addWidget(self.cells_table, 2)
        row = QHBoxLayout()
        self.export_button = QPushButton("Export CSV…")
        self.export_button.setToolTip("One row per scored image (for an image scored per "
                                      "cell: its worst judged cell).")
        self.export_cells_button = QPushButton("Export cells CSV…")
        self.export_cells_button.setToolTip("One row per cell of every image scored per cell.")
        row.addWidget(self.export_button)
        row.addWidget(self.export_cells_button)
        layout.addLayout(row)
        # The histogram (pyqtgraph, imported by the core loader's thread) is added below the
        # rest once the core is ready (see _on_core_ready); until then it is None.
        self.hist: ScoreHistogram | None = None

        # Results are rendered one step (at most one layer) per event-loop turn.
        self.router = ResultRouter(
            self, self.viewer, self.image_results, self.cell_results, self.stack_results,
            self.table, self.progress,
            lambda: (self.recon_check.isChecked(), self.outline_check.isChecked()),
            self._on_rendered, self._finish_job)
        self._render_timer = self.router.timer

        # -- connections --------------------------------------------------------------------
        self.score_button.clicked.connect(self.start_scoring)
        self.lazy_maps.scored.connect(self._update_histogram)
        self.stop_button.clicked.connect(self.stop_scoring)
        self.export_button.clicked.connect(self._export_dialog)
        self.fpr_panel.changed.connect(self.apply_fpr)
        self.table.cellClicked.connect(self._on_row_clicked)
        self.export_cells_button.clicked.connect(self.cell_results.export_dialog)
        self.cells_box.toggled.connect(self._on_per_cell_toggled)
        self.cells_box.edge_check.toggled.connect(lambda _: self.apply_fpr())
        self.cells_box.color_combo.currentIndexChanged.connect(lambda _: self.apply_fpr())
        self.all_radio.toggled.connect(self.cells_box.refresh_sources)
        bind(self, self.viewer.layers.selection.events.changed, self.cells_box.refresh_sources)
        bind(self, self.state.status_changed, self._update_buttons)
        bind(self, self.state.model_changed, self._on_model_changed)
        bind(self, self.viewer.layers.events.removed, self._on_layer_removed)
        watch_window_close(self, self._jobs)

        self.model_box.refresh()
        self._on_model_changed()
        # torch loads in the background the first time a widget opens (started once napari
        # has docked and painted this widget, so that the loader thread does not compete
        # with that turn); then the histogram is built after the widget's first paint and the
        # shipped default model read in another worker, each in a turn of its own (see
        # _on_core_ready).
        when_core_ready(self, self._on_core_ready,
                        partial(report_error, "Could not load the anomaly-detection core"),
                        after_paint=True)

    def _on_core_ready(self) -> None:
        """Fill the device choice and offer the default model; the histogram is added in the
        turn after the widget's first paint (building it takes ~50 ms) and the default model
        is read (if no model is set) in the turn after that."""
        self.model_box.on_core_ready(read_default=False)
        after_first_paint(self, self._add_histogram)

    def _later(self, step: Any) -> None:
        """Run ``step()`` in a later event-loop turn (never once this widget is deleted)."""
        timer = QTimer(self)
        timer.setSingleShot(True)
        timer.timeout.connect(step)
        timer.timeout.connect(timer.deleteLater)
        timer.start(0)

    def _add_histogram(self) -> None:
        self.hist = self.fpr_panel.build_histogram()
        self._threshold_line = self.hist.threshold_line
        self._content.addWidget(self.hist, 1)
        self._update_histogram()
        self._later(self._read_default_model)

    def _read_default_model(self) -> None:
        self.model_box.read_pending_default()

    # ------------------------------------------------------------------------------------
    # model choice (the box does the work; these keep the widget's public API)
    # ------------------------------------------------------------------------------------
    @property
    def fpr(self) -> float:
        """The chosen false-alarm rate as a fraction (slider percent / 100)."""
        return self.fpr_panel.fpr

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
        self.export_button.setEnabled(bool(self.image_results.records
                                           or self.cell_results.records
                                           or self.stack_results.records))
        self.export_cells_button.setEnabled(bool(self.cell_results.records))

    def _on_per_cell_toggled(self, on: bool) -> None:
        self.outline_check.setEnabled(not on)
        self.recon_check.setEnabled(not on)

    def layers_to_score(self) -> list[Layer]:
        """The layers the Score button would use (before checking them)."""
        return self.targets.layers()

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
        # Big lazy layers (dask, zarr, multiscale) with a patch-mode model get lazy maps.
        lazy = self.lazy_maps.add_maps(self.targets.layers(), detector)
        for layer in lazy:  # its table row is now the lazy map's
            self.image_results.drop(layer)
        if lazy and len(lazy) == len(self.targets.layers()):
            return True
        images = self.targets.scorable_images(skip=lazy)  # channel layers grouped into images
        if images is None:
            return False
        plan = plan_job(images, detector, self.fpr, self.cells_box, self.stack_results)
        if plan is None:
            return False
        self.router.begin(plan, detector)
        self._jobs.current = job = JobControl()
        state.set_status(Status.SCORING)
        # The status turns idle once every result sent is rendered (or at once if this
        # widget is gone).
        start_worker(plan, job, self.device.spec(), self._on_event,
                     partial(report_error, "Scoring failed"),
                     partial(_scoring_finished, weakref.ref(self), state))
        return True

    def stop_scoring(self) -> None:
        """Stop now (between batches of tiles); the results so far are kept."""
        job = self._jobs.current
        if self.state.status is Status.SCORING and job.worker is not None:
            job.stop.set()
            job.worker.quit()

    def _on_event(self, event: Scored | CellsScored | Failed) -> None:
        """A worker event: queued, rendered one step per turn (see :mod:`._score_render`)."""
        self.router.push(event)

    def rendering(self) -> bool:
        """True while results received from the worker still wait to be shown."""
        return self.router.rendering()

    def finish_when_rendered(self) -> bool:
        """The worker has ended: finish the job (status idle, failures reported) now if
        every result is shown, else once the last one is. Returns True."""
        self.router.worker_finished()
        return True

    def _finish_job(self) -> None:
        self.state.set_status(Status.IDLE)
        self.router.report()
        self._update_buttons()

    def _on_rendered(self) -> None:
        self._update_histogram()
        self._update_buttons()

    # ------------------------------------------------------------------------------------
    # re-thresholding (the results do the work)
    # ------------------------------------------------------------------------------------
    def is_anomalous(self, record: ImageRecord) -> bool:
        """Verdict of a stored result at the current false-alarm rate."""
        return self.image_results.is_anomalous(record)

    def outlines_pending(self) -> bool:
        """True while outlines still wait to be redrawn at the current false-alarm rate."""
        return self.image_results.outlines_pending()

    def apply_fpr(self) -> None:
        """Re-apply the thresholds of the slider's false-alarm rate to every stored result."""
        self.fpr_panel.settle()
        self.image_results.apply_all()
        self.cell_results.apply_all()
        self.stack_results.apply_all()
        self.lazy_maps.apply_all()
        self._update_threshold_label()
        self._update_histogram()

    def _on_layer_removed(self, event: Any) -> None:
        removed = event.value
        self.lazy_maps.forget(removed)
        if self.cell_results.forget(removed):
            self._update_buttons()
        if self.image_results.forget(removed) | self.stack_results.forget(removed):
            self._update_histogram()
            self._update_buttons()
    # ------------------------------------------------------------------------------------
    # cells (the cell results do the work; these keep the widget's public API)
    # ------------------------------------------------------------------------------------
    def show_cell(self, label: int) -> bool:
        """Centre and zoom the view on cell ``label`` of the cells table's image, select it in
        its cells layer and in the table; False if there is no such cell."""
        return self.cell_results.show_cell(label)

    def pick_cell(self, position: Any) -> int | None:
        """Select the cell under a world ``position`` (a click in the viewer); the label
        picked, or None where there is no scored cell."""
        return self.cell_results.pick_cell(position)

    def cell_rows(self) -> list[dict[str, Any]]:
        """One dict per cell of every image scored per cell, at the current false-alarm rate.

        The first keys are ``path, cell_id, centroid_y, centroid_x, area, score, recon_error,
        log_density, is_anomaly`` (as the command line's ``--cells-csv``); ``path`` is the
        image layer's file, or its name when it was not opened from a file.
        """
        return self.cell_results.rows()

    def export_cells_csv(self, path: str | Path) -> bool:
        """Write one row per scored cell (at the current false-alarm rate) to a CSV file."""
        return self.cell_results.export_csv(path)

    # ------------------------------------------------------------------------------------
    # table, histogram, labels
    # ------------------------------------------------------------------------------------
    def results(self) -> list[dict[str, Any]]:
        """The table's content: one dict per scored layer, in table order."""
        images = {r.key: r for r in self.image_results.records}
        cells = {r.key: r for r in self.cell_results.records}
        return [self.cell_results.summary(cells[key]) if key in cells
                else self.image_results.row(images[key]) if key in images
                else self.lazy_maps.row(key) if key in self.lazy_maps.maps
                else self.stack_results.row(key) for key in self.table.keys()]

    def _on_row_clicked(self, row: int, _col: int) -> None:
        key = self.table.key_at(row)
        if key is not None and not self.cell_results.reveal(key) \
                and not self.stack_results.reveal(key) and not self.lazy_maps.reveal(key):
            self.image_results.reveal(key)

    def _update_threshold_label(self) -> None:
        self.fpr_panel.show_text(self.state.detector)

    def _update_histogram(self) -> None:
        detector = self.state.detector
        if self.hist is None or detector is None:  # not built yet: drawn when it is
            self.fpr_panel.show_histogram(detector, [])
            return
        scored = (self.image_results.scores(detector) + self.cell_results.scores(detector)
                  + self.stack_results.scores(detector) + self.lazy_maps.scores(detector))
        self.fpr_panel.show_histogram(detector, scored)

    # ------------------------------------------------------------------------------------
    # export
    # ------------------------------------------------------------------------------------
    def _export_dialog(self) -> None:
        if not self.results():
            show_warning("Nothing to export yet: score some images first.")
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export results", "anomaly-scores.csv",
                                              "CSV (*.csv)")
        if path:
            self.export_csv(path)

    def export_csv(self, path: str | Path) -> bool:
        """Write the results table (at the current false-alarm rate) to a CSV file."""
        return write_csv(path, self.results())

    # ------------------------------------------------------------------------------------
    # lifetime
    # ------------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Abort a running scoring job and wait (bounded) for its thread to end; results not
        yet shown are dropped."""
        self._jobs.shutdown()
        self.lazy_maps.shutdown()
        self.router.clear()
        if self.router.worker_done and self.state.status is Status.SCORING:
            self._finish_job()  # the worker had ended; its results waited to be shown

    def closeEvent(self, event: Any) -> None:
        self.shutdown()
        super().closeEvent(event)
