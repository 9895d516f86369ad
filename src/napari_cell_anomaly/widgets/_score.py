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

The dock keeps the choice of layers, the Score/Stop flow and the false-alarm slider, and
composes small pieces, each in its own module: the model choice (:mod:`._model_source`), the
worker jobs and their events (:mod:`._score_job`), the per-image results (:mod:`._image_results`:
records, result layers, re-thresholding), the per-cell results (:mod:`._cells_results`:
records, cells layers, cells table, viewer selection, cells CSV), the images table and CSV
export (:mod:`._results_table`), the histogram (:mod:`._histogram`), the threshold text
(:mod:`._threshold_text`), and for cells the options
(:mod:`._cells_source`), the cells layer (:mod:`._cells_layer`) and the cells table
(:mod:`._cells_table`).
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Layer
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from superqt import QLabeledDoubleSlider

from ._cells_layer import CELLS
from ._cells_results import CellsResults
from ._cells_source import CellsSourceBox
from ._common import (
    JobControl,
    JobSlot,
    bind,
    image_hw,
    layer_key,
    layer_planes,
    report_error,
    snapshot_planes,
    watch_window_close,
)
from ._core_loader import when_core_ready
from ._image_results import ImageRecord, ImageResults
from ._layers import OUTLINE, RECONSTRUCTION, remove_own_layers
from ._lazy_maps import LazyMapsBox
from ._model_source import ModelSourceBox
from ._results_table import ImageResultsTable, write_csv
from ._score_job import CellsScored, Failed, Scored, score_cells_job, score_job
from ._score_targets import ScoreTargetsBox
from ._stack_results import StackResults
from ._state import ModelState, Status, get_state
from ._threshold_text import threshold_text

if TYPE_CHECKING:
    import napari

    from ..core.cellscores import CellScores
    from ..core.detector import AnomalyDetector, ScoreResult
    from ._channel_layers import ChannelImage
    from ._histogram import ScoreHistogram

__all__ = ["ScoreWidget"]

logger = logging.getLogger(__name__)


def _fraction(slider: QLabeledDoubleSlider) -> float:
    """A percent slider's value as a fraction."""
    return float(slider.value()) / 100.0


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
        self._job_layers: list[Layer] = []
        #: Plane index of each job item in its stack layer (None: a 2-D layer).
        self._job_planes: list[int | None] = []
        #: Per cell: the cells of each plane of each stack of the job so far, by layer key.
        self._stack_cells: dict[str, Any] = {}  # layer key -> core.stacks.StackCells
        self._job_failures: list[Failed] = []
        self._job_range_warnings: list[str] = []
        self._job_done = 0
        self._job_detector: AnomalyDetector | None = None
        self._fpr_timer = QTimer(self)
        self._fpr_timer.setSingleShot(True)
        self._fpr_timer.setInterval(60)
        self._fpr_timer.timeout.connect(self.apply_fpr)
        # Results are rendered one step (at most one layer) per event-loop turn: napari takes
        # ~50-150 ms of the GUI thread per layer added, and a worker can send several results
        # between two turns.
        self._render_queue: deque[Scored | CellsScored | Failed] = deque()
        self._render_steps: Iterator[None] | None = None
        self._worker_done = True
        self._render_timer = QTimer(self)
        self._render_timer.setInterval(0)
        self._render_timer.timeout.connect(self._render_next)

        layout = QVBoxLayout(self)
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
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("")
        layout.addWidget(self.progress)
        self.lazy_maps = LazyMapsBox(self.viewer)  # big dask/zarr/multiscale layers
        layout.addWidget(self.lazy_maps)

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
        fpr = partial(_fraction, self.fpr_slider)  # not a method: no cycle through self
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

        # -- connections --------------------------------------------------------------------
        self.score_button.clicked.connect(self.start_scoring)
        self.lazy_maps.scored.connect(self._update_histogram)
        self.stop_button.clicked.connect(self.stop_scoring)
        self.export_button.clicked.connect(self._export_dialog)
        self.fpr_slider.valueChanged.connect(lambda _: self._fpr_timer.start())
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
        # torch loads in the background the first time a widget opens; the shipped default
        # model is then read in another worker (see ModelSourceBox.on_core_ready).
        when_core_ready(self, self._on_core_ready,
                        partial(report_error, "Could not load the anomaly-detection core"))

    def _on_core_ready(self) -> None:
        """Fill the device choice, offer (and read) the default model; the histogram is
        added in the next event-loop turn (building it takes ~50 ms)."""
        self.model_box.on_core_ready()
        timer = QTimer(self)
        timer.setSingleShot(True)
        timer.timeout.connect(self._add_histogram)
        timer.timeout.connect(timer.deleteLater)
        timer.start(0)

    def _add_histogram(self) -> None:
        from ._histogram import ScoreHistogram

        self.hist = ScoreHistogram()
        self._threshold_line = self.hist.threshold_line
        self.layout().addWidget(self.hist, 1)
        self._update_histogram()

    # ------------------------------------------------------------------------------------
    # model choice (the box does the work; these keep the widget's public API)
    # ------------------------------------------------------------------------------------
    @property
    def fpr(self) -> float:
        """The chosen false-alarm rate as a fraction (slider percent / 100)."""
        return _fraction(self.fpr_slider)

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

        stacks = [im for im in images if len(image_hw(im)) == 3]
        self._stack_cells = {}
        if self.cells_box.per_cell() and not stacks:
            items = self.cells_box.job_items(detector, images)
            if items is None:
                return False
            job_args: tuple = (score_cells_job, detector, items, self.fpr,
                               self.cells_box.include_border())
            planes: list[int | None] = [None] * len(images)
            layers = [im.first for im in images]  # results are shown on the first channel
        elif self.cells_box.per_cell():
            # The cells of each plane of a stack, found by the built-in segmentation.
            if detector.mode == "patch" or self.cells_box.labels_layer() is not None:
                show_error(f"{stacks[0].name!r} is a stack: per cell, the cells of each of its "
                           "planes are found automatically, with a model that scores cells "
                           "(cells mode, or trained on cell crops): choose 'find cells "
                           "automatically', or untick 'Per cell'.")
                return False
            named, planes, layers = self._plane_items(images, per_cell=True)
            job_args = (score_cells_job, detector,
                        [(plane, None) for plane in snapshot_planes(named)], self.fpr,
                        self.cells_box.include_border())
        else:
            named, planes, layers = self._plane_items(images, per_cell=False)
            job_args = (score_job, detector, snapshot_planes(named), self.fpr)
        self._job_layers = layers
        self._job_planes = planes
        self._job_failures = []
        self._job_range_warnings = []
        self._job_done = 0
        self._jobs.current = job = JobControl()
        if job_args[0] is score_job:
            job_args += (job,)  # its stop flag cancels between batches of tiles
        worker = create_worker(*job_args, device=self.device.spec(), _ignore_errors=True,
                               _start_thread=False)
        job.worker = worker
        worker.errored.connect(partial(report_error, "Scoring failed"))
        # The status turns idle once every result sent is rendered (or at once if this
        # widget is gone).
        worker.finished.connect(partial(_scoring_finished, weakref.ref(self), state))
        self._job_detector = detector
        self._worker_done = False
        worker.yielded.connect(self._on_event)
        self.progress.setRange(0, len(layers))
        self.progress.setValue(0)
        self.progress.setFormat(f"0/{len(layers)}")
        state.set_status(Status.SCORING)
        worker.start()
        return True

    def _plane_items(self, images: list[ChannelImage], per_cell: bool
                     ) -> tuple[list[tuple[str, Any]], list[int | None], list[Layer]]:
        """A job's items: one per 2-D image, one per plane of a stack (lazy planes are read
        one at a time, in the worker). Returns ``(name, data)`` items, each item's plane index
        (None: a 2-D image) and the layer its results are shown on (the first channel);
        starts the stacks' results."""
        named: list[tuple[str, Any]] = []
        planes: list[int | None] = []
        targets: list[Layer] = []
        for image in images:
            layer = image.first
            stacked = len(image_hw(image)) == 3
            plane_items = list(layer_planes(image))
            if stacked and per_cell:
                from ..core.stacks import StackCells

                self._stack_cells[layer_key(layer)] = StackCells(len(plane_items),
                                                                 image_hw(layer)[-2:])
            elif stacked:
                self.stack_results.begin(layer, [name for name, _ in plane_items])
            for index, item in enumerate(plane_items):
                named.append(item)
                planes.append(index if stacked else None)
                targets.append(layer)
        return named, planes, targets

    def stop_scoring(self) -> None:
        """Stop now (between batches of tiles); the results so far are kept."""
        job = self._jobs.current
        if self.state.status is Status.SCORING and job.worker is not None:
            job.stop.set()
            job.worker.quit()

    def _on_event(self, event: Scored | CellsScored | Failed) -> None:
        """A worker event: queued, rendered by :meth:`_render_next` one step per turn."""
        self._render_queue.append(event)
        self._render_timer.start()

    def _render_next(self) -> None:
        """One rendering step: at most one layer added or refreshed (see render_steps)."""
        if self._render_steps is not None:
            if next(self._render_steps, StopIteration) is not StopIteration:
                return
            self._render_steps = None
        if self._render_queue:
            self._render_steps = self._render_event(self._render_queue.popleft())
            return
        self._render_timer.stop()
        if self._worker_done:
            self._finish_job()

    def _render_event(self, event: Scored | CellsScored | Failed) -> Iterator[None]:
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
        plane = self._job_planes[event.index]
        if isinstance(event, CellsScored) and plane is not None:
            # A stack's cells: all its planes' cells so far, as one cells layer of its shape
            # (merged plane by plane: only the new plane is written).
            self.stack_results.drop(source)
            merged = self._stack_cells[layer_key(source)]
            merged.put(plane, event.cells)
            yield from self._render_cells_steps(source, merged.cells(), detector,
                                                merged.labels, merged.others())
        elif isinstance(event, CellsScored):
            yield from self._render_cells_steps(source, event.cells, detector, event.labels,
                                                event.others, event.features)
            if event.cells.range_warning:
                self._job_range_warnings.append(event.cells.range_warning)
        elif plane is not None:
            if self.cell_results.record_of(source) is not None:  # scored per cell before
                self.cell_results.drop(source)
                self.table.remove(layer_key(source))  # its one row: now a row per plane
                remove_own_layers(self.viewer, (CELLS,), source)
            self.stack_results.render_plane(source, plane, event.result, detector,
                                            reconstruction=self.recon_check.isChecked(),
                                            outline=self.outline_check.isChecked())
            self._update_histogram()
            self._update_buttons()
            if event.result.range_warning:
                self._job_range_warnings.append(event.result.range_warning)
        else:
            yield from self._render_result_steps(source, event.result, detector)
            if event.result.range_warning:
                self._job_range_warnings.append(event.result.range_warning)

    def rendering(self) -> bool:
        """True while results received from the worker still wait to be shown."""
        return bool(self._render_queue) or self._render_steps is not None

    def finish_when_rendered(self) -> bool:
        """The worker has ended: finish the job (status idle, failures reported) now if
        every result is shown, else once the last one is. Returns True."""
        self._worker_done = True
        if not self.rendering():
            self._render_timer.stop()
            self._finish_job()
        return True

    def _finish_job(self) -> None:
        self.state.set_status(Status.IDLE)
        self._on_finished()

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
        warnings = self._job_range_warnings
        if warnings:
            more = f" (+{len(warnings) - 1} more)" if len(warnings) > 1 else ""
            show_warning(f"Outside the training range: {warnings[0]}{more}")
        self._update_buttons()

    # ------------------------------------------------------------------------------------
    # rendering and re-thresholding (the results do the work)
    # ------------------------------------------------------------------------------------
    def _render_result_steps(self, source: Layer, result: ScoreResult,
                             detector: AnomalyDetector) -> Iterator[None]:
        self.cell_results.drop(source)
        # Scored per cell before: its cells layer would stay, looking current.
        remove_own_layers(self.viewer, (CELLS,), source)
        yield from self.image_results.render_steps(
            source, result, detector, reconstruction=self.recon_check.isChecked(),
            outline=self.outline_check.isChecked())
        self._update_histogram()
        self._update_buttons()

    def _render_cells_steps(self, source: Layer, cells: CellScores, detector: AnomalyDetector,
                            labels: np.ndarray | None = None, others: np.ndarray | None = None,
                            features: Any = None) -> Iterator[None]:
        """Show the cells of ``source`` (see :meth:`CellsResults.render_steps`, one layer per
        step) and its scores in the histogram."""
        self.image_results.drop(source)  # scored per image before: this result replaces it
        # The per-image outline and reconstruction would stay, looking current.
        remove_own_layers(self.viewer, (OUTLINE, RECONSTRUCTION), source)
        yield from self.cell_results.render_steps(source, cells, detector, labels, others,
                                                  features)
        self._update_histogram()
        self._update_buttons()

    def is_anomalous(self, record: ImageRecord) -> bool:
        """Verdict of a stored result at the current false-alarm rate."""
        return self.image_results.is_anomalous(record)

    def outlines_pending(self) -> bool:
        """True while outlines still wait to be redrawn at the current false-alarm rate."""
        return self.image_results.outlines_pending()

    def apply_fpr(self) -> None:
        """Re-apply the thresholds of the slider's false-alarm rate to every stored result."""
        self._fpr_timer.stop()
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
        detector = self.state.detector
        if detector is None:
            self.threshold_label.setText("")
            return
        self.threshold_label.setText(threshold_text(detector, self.fpr))

    def _update_histogram(self) -> None:
        if self.hist is None:  # not built yet: drawn when it is
            return
        detector = self.state.detector
        if detector is None:
            self.hist.clear_scores()
            return
        cal = detector.calibration
        scored = (self.image_results.scores(detector) + self.cell_results.scores(detector)
                  + self.stack_results.scores(detector) + self.lazy_maps.scores(detector))
        self.hist.show_scores(np.asarray(cal.scores, dtype=float), np.asarray(scored, float),
                              cal.threshold(self.fpr), self.fpr)

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
        self._render_timer.stop()
        self._render_queue.clear()
        self._render_steps = None
        if self._worker_done and self.state.status is Status.SCORING:
            self._finish_job()  # the worker had ended; its results waited to be shown

    def closeEvent(self, event: Any) -> None:
        self.shutdown()
        super().closeEvent(event)
