"""The "Score images" dock widget.

Scores image layers with the active model of the viewer's :class:`~._state.ModelState` in a
napari ``thread_worker`` and renders each :class:`~..core.detector.ScoreResult` as layers (an
anomaly map, optionally the reconstruction and an outline of the anomalous region), a table
row and a point of the score histogram. The false-alarm-rate slider re-applies the model's
calibrated thresholds to the stored results without scoring again.

The dock only composes small pieces, each in its own module: the model choice
(:mod:`._model_source`), the worker job and its events (:mod:`._score_job`), the result layers
(:mod:`._layers`), the results table and CSV export (:mod:`._results_table`) and the
histogram (:mod:`._histogram`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
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

from ..core.detector import AnomalyDetector, ScoreResult, default_model_path
from ._common import (
    PLUGIN_KEY,
    JobControl,
    JobSlot,
    bind,
    is_own_layer,
    layer_key,
    report_error,
    same_layer,
    scoring_problem,
    watch_window_close,
)
from ._histogram import ScoreHistogram
from ._layers import HEATMAP, OUTLINE, RECONSTRUCTION, keep_selection, layer_meta, upsert
from ._model_source import ModelSourceBox
from ._results_table import ImageResultsTable, write_csv
from ._score_job import Failed, Scored, score_job
from ._state import ModelState, Status, get_state

if TYPE_CHECKING:
    import napari

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
        self._job_layers: list[Layer] = []
        self._job_failures: list[Failed] = []
        self._job_done = 0
        self._job_detector: AnomalyDetector | None = None
        self._fpr_timer = QTimer(self)
        self._fpr_timer.setSingleShot(True)
        self._fpr_timer.setInterval(60)
        self._fpr_timer.timeout.connect(self.apply_fpr)

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
        self.export_button = QPushButton("Export CSV…")
        layout.addWidget(self.export_button)
        self.hist = ScoreHistogram("images")
        self._threshold_line = self.hist.threshold_line
        layout.addWidget(self.hist, 1)

        # -- connections --------------------------------------------------------------------
        self.score_button.clicked.connect(self.start_scoring)
        self.stop_button.clicked.connect(self.stop_scoring)
        self.export_button.clicked.connect(self._export_dialog)
        self.fpr_slider.valueChanged.connect(lambda _: self._fpr_timer.start())
        self.table.cellClicked.connect(self._on_row_clicked)
        bind(self, self.state.status_changed, self._update_buttons)
        bind(self, self.state.model_changed, self._on_model_changed)
        bind(self, self.viewer.layers.events.removed, self._on_layer_removed)
        watch_window_close(self, self._jobs)

        if self.state.detector is None and default_model_path() is not None:
            self.use_default_model(quiet=True)
        self.model_box.refresh()
        self._on_model_changed()

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
        self.export_button.setEnabled(bool(self._records))

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

        self._job_layers = layers
        self._job_failures = []
        self._job_done = 0
        items = [(ly.name, ly.data) for ly in layers]
        self._jobs.current = job = JobControl()
        worker = create_worker(score_job, detector, items, self.fpr,
                               _ignore_errors=True, _start_thread=False)
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

    def stop_scoring(self) -> None:
        """Stop after the image being scored; results so far are kept."""
        worker = self._jobs.current.worker
        if self.state.status is Status.SCORING and worker is not None:
            worker.quit()

    def _on_event(self, event: Scored | Failed) -> None:
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
            record.heatmap = upsert(
                self.viewer, HEATMAP, source, result.error_map, "image", colormap="inferno",
                blending="additive", opacity=0.6, contrast_limits=(float(lo), float(hi)),
                metadata=layer_meta(HEATMAP, source))
            if self.outline_check.isChecked() or record.outline is not None:
                record.outline = upsert(
                    self.viewer, OUTLINE, source, self._region(record), "labels", contour=1,
                    opacity=1.0,
                    colormap=DirectLabelColormap(color_dict={None: "transparent", 1: "cyan"}),
                    metadata=layer_meta(OUTLINE, source))
        self._apply_record(record)
        r = result
        self.table.set_result(record.key, source.name,
                              (r.score, r.recon_error, r.log_density, r.percentile),
                              self.is_anomalous(record))
        self._update_histogram()
        self._update_buttons()

    def _region(self, record: _Record) -> np.ndarray:
        level = record.detector.calibration.pixel_threshold(self.fpr, record.result.n_windows)
        return (record.result.error_map > level).astype(np.uint8)

    def _apply_record(self, record: _Record) -> None:
        """Write the verdict at the current false-alarm rate to the record's layers."""
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
        if record.outline is not None and record.outline in self.viewer.layers:
            record.outline.data = self._region(record)

    def is_anomalous(self, record: _Record) -> bool:
        """Verdict of a stored result at the current false-alarm rate."""
        return bool(record.result.score > record.detector.calibration.threshold(self.fpr))

    def apply_fpr(self) -> None:
        """Re-apply the thresholds of the slider's false-alarm rate to every stored result."""
        self._fpr_timer.stop()
        for record in self._records:
            self._apply_record(record)
            self.table.set_name(record.key, record.source.name)
        self.table.set_verdicts({r.key: self.is_anomalous(r) for r in self._records})
        self._update_threshold_label()
        self._update_histogram()

    def _on_layer_removed(self, event: Any) -> None:
        removed = event.value
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
        rows = []
        for key in self.table.keys():
            record = by_key[key]
            r = record.result
            cal = record.detector.calibration
            rows.append({"layer": record.source.name, "score": r.score,
                         "recon_error": r.recon_error, "log_density": r.log_density,
                         "percentile": r.percentile,
                         "verdict": "anomalous" if self.is_anomalous(record) else "normal",
                         "fpr": self.fpr, "threshold": cal.threshold(self.fpr)})
        return rows

    def _on_row_clicked(self, row: int, _col: int) -> None:
        key = self.table.key_at(row)
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

    # ------------------------------------------------------------------------------------
    # lifetime
    # ------------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Abort a running scoring job and wait (bounded) for its thread to end."""
        self._jobs.shutdown()

    def closeEvent(self, event: Any) -> None:
        self.shutdown()
        super().closeEvent(event)
