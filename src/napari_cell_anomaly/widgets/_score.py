"""The "Score images" dock widget.

Scores image layers with the active model of the viewer's :class:`~._state.ModelState` in a
napari ``thread_worker`` and renders each :class:`~..core.detector.ScoreResult` as layers (an
anomaly map, optionally the reconstruction and an outline of the anomalous region), a table
row and a point of the score histogram. The false-alarm-rate slider re-applies the model's
calibrated thresholds to the stored results without scoring again.
"""

from __future__ import annotations

import csv
import html
import logging
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyqtgraph as pg
from napari.layers import Image, Labels, Layer
from napari.qt.threading import create_worker
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)
from superqt import QLabeledDoubleSlider

from ..core.detector import AnomalyDetector, ScoreResult, default_model_path
from ..core.modelfile import ModelFileError
from ._common import (
    PLUGIN_KEY,
    JobControl,
    JobFailure,
    JobSlot,
    SmallPlot,
    bind,
    find_own_layer,
    is_own_layer,
    layer_key,
    report_error,
    same_layer,
    scoring_problem,
    watch_window_close,
)
from ._state import ModelState, Status, get_state

if TYPE_CHECKING:
    import napari

__all__ = ["ScoreWidget"]

logger = logging.getLogger(__name__)

#: Roles (and layer-name suffixes) of the layers the widget makes.
HEATMAP = "anomaly map"
RECONSTRUCTION = "reconstruction"
OUTLINE = "anomalous region"

COLUMNS = ("Layer", "Score", "Error", "Log-dens.", "Pctl.", "Verdict")
_COLUMN_SAMPLES = ("-0.000", "0.0000", "-0.000", "100", "anomalous")
_COLUMN_TIPS = (
    "The scored image layer (click a row to select it)",
    "Combined anomaly score: the larger of the two robust z-scores below (higher = more "
    "abnormal)",
    "Reconstruction error of the image's most abnormal window",
    "Log-density of the image's latent code under the training normals (lower = more unusual)",
    "Percentile among the model's held-out normal images",
    "Verdict at the chosen false-alarm rate",
)
_SOURCES = (("trained", "Trained in this session"), ("file", "Model file"),
            ("default", "Shipped default model"))
_ANOMALY_COLOR = QColor(200, 60, 60, 140)
_NORMAL_COLOR = QColor(60, 150, 90, 110)


@dataclass
class _Scored:
    """Event: image ``index`` of the job was scored."""

    index: int
    result: ScoreResult


@dataclass
class _Failed:
    """Event: image ``index`` could not be scored (a one-line reason from the core)."""

    index: int
    name: str
    reason: str


@dataclass
class _Record:
    """One scored layer and the layers made for it."""

    source: Layer
    result: ScoreResult
    detector: AnomalyDetector
    heatmap: Image
    outline: Labels | None = None
    reconstruction: Image | None = None


def _score_job(detector: AnomalyDetector, items: Sequence[tuple[str, Any]], fpr: float
               ) -> Generator[_Scored | _Failed, None, None]:
    """Worker body: score each image; a bad image is reported and the rest still scored."""
    try:
        for index, (name, data) in enumerate(items):
            try:
                result = detector.score(np.asarray(data), fpr=fpr, name=name)
            except ValueError as exc:  # ImageError (wrong channels, constant image, ...)
                yield _Failed(index, name, str(exc))
                continue
            yield _Scored(index, result)
    except RuntimeError as exc:
        raise JobFailure(f"{type(exc).__name__}: {exc}") from exc


class _NumberItem(QTableWidgetItem):
    """A table cell showing formatted text but sorting by its number."""

    def __init__(self, value: float, text: str) -> None:
        super().__init__(text)
        self.value = float(value)
        self.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)

    def __lt__(self, other: QTableWidgetItem) -> bool:
        if isinstance(other, _NumberItem):
            return self.value < other.value
        return super().__lt__(other)


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
        self._job_failures: list[_Failed] = []
        self._job_done = 0
        self._job_detector: AnomalyDetector | None = None
        self._file_model: tuple[AnomalyDetector, Path] | None = None
        self._default_model: AnomalyDetector | None = None
        self._fpr_timer = QTimer(self)
        self._fpr_timer.setSingleShot(True)
        self._fpr_timer.setInterval(60)
        self._fpr_timer.timeout.connect(self.apply_fpr)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)

        # -- model --------------------------------------------------------------------------
        box = QGroupBox("Model")
        model_layout = QVBoxLayout(box)
        row = QHBoxLayout()
        self.source_combo = QComboBox()
        for key, text in _SOURCES:
            self.source_combo.addItem(text, key)
        if default_model_path() is None:
            item = self.source_combo.model().item(2)
            item.setEnabled(False)
            item.setToolTip("No default model is installed with this copy of the plugin.")
        self.load_button = QPushButton("Load…")
        self.load_button.setToolTip("Load a model file (.safetensors) saved by the Train "
                                    "widget or the command line.")
        row.addWidget(self.source_combo, 1)
        row.addWidget(self.load_button)
        model_layout.addLayout(row)
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        self.model_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        model_layout.addWidget(self.model_label)
        layout.addWidget(box)

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
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        for col, tip in enumerate(_COLUMN_TIPS):
            self.table.horizontalHeaderItem(col).setToolTip(tip)
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setWordWrap(False)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        # Numbers get fixed, just-wide-enough columns; the layer name takes the rest (a dock
        # is narrow, and ResizeToContents would squeeze the names to nothing).
        header = self.table.horizontalHeader()
        header.setMinimumSectionSize(30)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        metrics = self.table.fontMetrics()
        for col, sample in enumerate(_COLUMN_SAMPLES, start=1):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.Interactive)
            width = max(metrics.horizontalAdvance(COLUMNS[col]) + 18,
                        metrics.horizontalAdvance(sample) + 10)
            header.resizeSection(col, width)
        self.table.setMinimumHeight(110)
        self.table.setToolTip("Click a row to select that layer. Percentile: share of the "
                              "model's held-out normal images that score lower.")
        layout.addWidget(self.table, 1)
        self.export_button = QPushButton("Export CSV…")
        layout.addWidget(self.export_button)

        self.hist = SmallPlot(background=None)
        self.hist.setMinimumHeight(150)
        self.hist.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.hist.setLabel("bottom", "anomaly score")
        self.hist.setLabel("left", "images")
        self.hist.addLegend(offset=(-8, 8))
        self.hist.setMouseEnabled(x=True, y=False)
        self._cal_curve = self.hist.plot([], [], stepMode="center", fillLevel=0,
                                         brush=(160, 160, 160, 90),
                                         pen=pg.mkPen((190, 190, 190), width=1),
                                         name="held-out normals")
        self._img_curve = self.hist.plot([], [], stepMode="center", fillLevel=0,
                                         brush=(255, 140, 40, 120),
                                         pen=pg.mkPen((255, 160, 60), width=2),
                                         name="scored images")
        self._threshold_line = pg.InfiniteLine(
            angle=90, movable=False, pen=pg.mkPen((230, 60, 60), width=2,
                                                  style=Qt.PenStyle.DashLine),
            label="threshold", labelOpts={"position": 0.9, "color": (230, 90, 90)})
        self.hist.addItem(self._threshold_line)
        layout.addWidget(self.hist, 1)

        # -- connections --------------------------------------------------------------------
        self.source_combo.activated.connect(self._on_source_chosen)
        self.load_button.clicked.connect(self._load_dialog)
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
        self._on_model_changed()

    # ------------------------------------------------------------------------------------
    # model choice
    # ------------------------------------------------------------------------------------
    @property
    def fpr(self) -> float:
        """The chosen false-alarm rate as a fraction (slider percent / 100)."""
        return float(self.fpr_slider.value()) / 100.0

    def _on_source_chosen(self, index: int) -> None:
        key = self.source_combo.itemData(index)
        if key == "trained":
            if self.state.trained is None:
                show_warning("No model has been trained in this session yet: use the 'Train "
                             "anomaly model' widget, or load a model file.")
                self._on_model_changed()
                return
            self.state.set_active(self.state.trained, "trained")
        elif key == "file":
            if self._file_model is None:
                self._load_dialog()
            else:
                self.state.set_active(self._file_model[0], "file", self._file_model[1])
        elif key == "default":
            self.use_default_model()
        self._on_model_changed()

    def _load_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load anomaly model", "",
                                              "Anomaly model (*.safetensors);;All files (*)")
        if path:
            self.load_model(path)
        else:
            self._on_model_changed()

    def load_model(self, path: str | Path) -> bool:
        """Load a model file and make it the active model; False (notified) if it fails.

        A failed load leaves the active model unchanged.
        """
        if self.state.busy:
            show_warning(f"Wait until {self.state.status.value} has finished to change the "
                         "model.")
            return False
        path = Path(path)
        try:
            detector = AnomalyDetector.load(path)
        except (ModelFileError, ValueError, OSError) as exc:
            show_error(f"Could not load the model: {exc}")
            self._on_model_changed()
            return False
        self._file_model = (detector, path)
        self.state.set_active(detector, "file", path)
        return True

    def use_default_model(self, *, quiet: bool = False) -> bool:
        """Make the shipped default model the active one; False if there is none."""
        path = default_model_path()
        if path is None:
            if not quiet:
                show_warning("No default model is installed with this copy of the plugin.")
            return False
        if self._default_model is None:
            try:
                self._default_model = AnomalyDetector.load(path)
            except (ModelFileError, ValueError, OSError) as exc:
                if not quiet:
                    show_error(f"Could not load the default model: {exc}")
                return False
        self.state.set_active(self._default_model, "default", path)
        return True

    def _on_model_changed(self, *_: Any) -> None:
        state = self.state
        keys = [self.source_combo.itemData(i) for i in range(self.source_combo.count())]
        if state.source in keys:
            self.source_combo.blockSignals(True)
            self.source_combo.setCurrentIndex(keys.index(state.source))
            self.source_combo.blockSignals(False)
        detector = state.detector
        if detector is None:
            self.model_label.setText("<i>No model yet.</i> Train one with <b>Train anomaly "
                                     "model</b>, or load a model file.")
        else:
            summary = html.escape(detector.summary()).replace("\n", "<br>")
            self.model_label.setText(f"<b>{html.escape(state.describe())}</b><br>"
                                     f"<small>{summary}</small>")
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
        self.load_button.setEnabled(idle)
        self.source_combo.setEnabled(idle)
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
        worker = create_worker(_score_job, detector, items, self.fpr,
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

    def _on_event(self, event: _Scored | _Failed) -> None:
        detector = self._job_detector
        self._job_done += 1
        n = len(self._job_layers)
        self.progress.setValue(self._job_done)
        self.progress.setFormat(f"{self._job_done}/{n}")
        if isinstance(event, _Failed):
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
    def _layer_meta(self, role: str, source: Layer, **extra: Any) -> dict[str, Any]:
        return {PLUGIN_KEY: {"role": role, "source": source.name,
                             "source_id": layer_key(source), **extra}}

    def _geometry(self, source: Layer) -> dict[str, Any]:
        return {"scale": source.scale, "translate": source.translate,
                "affine": source.affine.affine_matrix}

    def _upsert(self, role: str, source: Layer, data: np.ndarray, kind: str,
                **kwargs: Any) -> Layer:
        """Refresh the plugin's ``role`` layer for ``source``, or add it if there is none."""
        layer = find_own_layer(self.viewer, role, source)
        metadata = kwargs.pop("metadata")
        geometry = self._geometry(source)
        kind_ok = isinstance(layer, Labels if kind == "labels" else Image)
        if layer is not None and (not kind_ok or (kind == "image"
                                                  and layer.rgb != kwargs.get("rgb", False))):
            self.viewer.layers.remove(layer)  # ours, but of another kind (e.g. new model)
            layer = None
        if layer is not None:
            # Refresh in place: new pixels, geometry, calibrated contrast and results; the
            # user's display tweaks (opacity, colormap, blending, visibility) are kept.
            layer.data = data
            for key, value in geometry.items():
                setattr(layer, key, value)
            if "contrast_limits" in kwargs:
                layer.contrast_limits = kwargs["contrast_limits"]
            layer.metadata = metadata
            layer.name = f"{source.name} {role}"
            return layer
        name = f"{source.name} {role}"
        if kind == "labels":
            contour = kwargs.pop("contour", 0)  # not a constructor argument
            layer = self.viewer.add_labels(data, name=name, metadata=metadata, **geometry,
                                           **kwargs)
            layer.contour = contour
            return layer
        return self.viewer.add_image(data, name=name, metadata=metadata, **geometry, **kwargs)

    def _render_result(self, source: Layer, result: ScoreResult,
                       detector: AnomalyDetector) -> None:
        record = next((r for r in self._records if same_layer(r.source, source)), None)
        if record is None:
            record = _Record(source, result, detector, heatmap=None)  # type: ignore[arg-type]
            self._records.append(record)
        record.result, record.detector = result, detector
        cal = detector.calibration
        # Adding a layer selects it in napari; keep the user's selection instead, so that
        # pressing Score again scores the same images.
        selection = self.viewer.layers.selection
        selected, active = set(selection), selection.active
        if self.recon_check.isChecked():
            recon = result.reconstruction
            rgb = recon.ndim == 3 and recon.shape[-1] == 3
            record.reconstruction = self._upsert(
                RECONSTRUCTION, source, recon if rgb else recon.reshape(recon.shape[:2]),
                "image", rgb=rgb, contrast_limits=(0.0, 1.0), visible=False,
                metadata=self._layer_meta(RECONSTRUCTION, source))
        lo, hi = cal.display_range()
        record.heatmap = self._upsert(
            HEATMAP, source, result.error_map, "image", colormap="inferno",
            blending="additive", opacity=0.6, contrast_limits=(float(lo), float(hi)),
            metadata=self._layer_meta(HEATMAP, source))
        if self.outline_check.isChecked() or record.outline is not None:
            record.outline = self._upsert(
                OUTLINE, source, self._region(record), "labels", contour=1, opacity=1.0,
                colormap=DirectLabelColormap(color_dict={None: "transparent", 1: "cyan"}),
                metadata=self._layer_meta(OUTLINE, source))
        if set(selection) != selected:
            selection.clear()
            selection.update(selected)
            selection.active = active
        self._apply_record(record)
        self._refresh_table()
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
        self._refresh_table()
        self._update_threshold_label()
        self._update_histogram()

    def _on_layer_removed(self, event: Any) -> None:
        removed = event.value
        before = len(self._records)
        self._records = [r for r in self._records if not same_layer(r.source, removed)]
        for record in self._records:
            if same_layer(record.outline, removed):
                record.outline = None
            if same_layer(record.reconstruction, removed):
                record.reconstruction = None
        if len(self._records) != before:
            self._refresh_table()
            self._update_histogram()
            self._update_buttons()

    # ------------------------------------------------------------------------------------
    # table, histogram, labels
    # ------------------------------------------------------------------------------------
    def _refresh_table(self) -> None:
        table = self.table
        sort_col = table.horizontalHeader().sortIndicatorSection()
        sort_order = table.horizontalHeader().sortIndicatorOrder()
        table.setSortingEnabled(False)
        table.setRowCount(len(self._records))
        for row, record in enumerate(self._records):
            r = record.result
            name = QTableWidgetItem(record.source.name)
            name.setData(Qt.ItemDataRole.UserRole, row)
            anomalous = self.is_anomalous(record)
            verdict = QTableWidgetItem("anomalous" if anomalous else "normal")
            verdict.setBackground(_ANOMALY_COLOR if anomalous else _NORMAL_COLOR)
            name.setToolTip(record.source.name)
            cells = [name, _NumberItem(r.score, f"{r.score:.3g}"),
                     _NumberItem(r.recon_error, f"{r.recon_error:.3g}"),
                     _NumberItem(r.log_density, f"{r.log_density:.3g}"),
                     _NumberItem(r.percentile, f"{r.percentile:.0f}"), verdict]
            for col, item in enumerate(cells):
                table.setItem(row, col, item)
        table.setSortingEnabled(True)
        table.sortItems(sort_col, sort_order)

    def results(self) -> list[dict[str, Any]]:
        """The table's content: one dict per scored layer, in table order."""
        rows = []
        for row in range(self.table.rowCount()):
            record = self._records[self.table.item(row, 0).data(Qt.ItemDataRole.UserRole)]
            r = record.result
            cal = record.detector.calibration
            rows.append({"layer": record.source.name, "score": r.score,
                         "recon_error": r.recon_error, "log_density": r.log_density,
                         "percentile": r.percentile,
                         "verdict": "anomalous" if self.is_anomalous(record) else "normal",
                         "fpr": self.fpr, "threshold": cal.threshold(self.fpr)})
        return rows

    def _on_row_clicked(self, row: int, _col: int) -> None:
        item = self.table.item(row, 0)
        if item is None:
            return
        record = self._records[item.data(Qt.ItemDataRole.UserRole)]
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
            self._cal_curve.setData([], [])
            self._img_curve.setData([], [])
            self._threshold_line.hide()
            return
        cal = detector.calibration
        normals = np.asarray(cal.scores, dtype=float)
        scored = np.asarray([r.result.score for r in self._records if r.detector is detector],
                            dtype=float)
        threshold = cal.threshold(self.fpr)
        everything = np.concatenate([normals, scored, [threshold]])
        lo, hi = float(everything.min()), float(everything.max())
        if hi <= lo:
            hi = lo + 1.0
        edges = np.linspace(lo, hi + 1e-9 * abs(hi), 41)
        counts, _ = np.histogram(normals, edges)
        self._cal_curve.setData(edges, counts.astype(float))
        if scored.size:
            counts, _ = np.histogram(scored, edges)
            self._img_curve.setData(edges, counts.astype(float))
        else:
            self._img_curve.setData([], [])
        self._threshold_line.setValue(threshold)
        self._threshold_line.label.setFormat(f"{100 * self.fpr:.1f}% false alarms")
        self._threshold_line.show()

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
        rows = self.results()
        if not rows:
            show_warning("Nothing to export yet: score some images first.")
            return False
        try:
            with open(path, "w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        except OSError as exc:
            show_error(f"Could not write {str(path)!r}: {exc}")
            return False
        show_info(f"Exported {len(rows)} result{'s' * (len(rows) != 1)} to {path}")
        return True

    # ------------------------------------------------------------------------------------
    # lifetime
    # ------------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Abort a running scoring job and wait (bounded) for its thread to end."""
        self._jobs.shutdown()

    def closeEvent(self, event: Any) -> None:
        self.shutdown()
        super().closeEvent(event)

