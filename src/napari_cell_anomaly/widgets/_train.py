"""The "Train anomaly model" dock widget.

Reads the chosen layers, folder and settings, builds a :class:`~..core.training.TrainConfig`,
runs :func:`~..core.training.train` in a napari ``thread_worker`` and renders the
:class:`~..core.training.TrainProgress` events it yields. The trained detector is published
to the viewer's :class:`~._state.ModelState`, where the Score widget picks it up.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyqtgraph as pg
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from ._common import (
    JobControl,
    JobFailure,
    JobSlot,
    Plane,
    SmallPlot,
    bind,
    format_seconds,
    image_hw,
    is_own_layer,
    layer_key,
    layer_planes,
    own_planes,
    report_error,
    snapshot_planes,
    watch_window_close,
)
from ._core_loader import when_core_ready
from ._state import ModelState, Status, get_state

if TYPE_CHECKING:
    import napari

    from ..core.detector import AnomalyDetector
    from ..core.training import TrainConfig, TrainProgress

__all__ = ["FolderLoaded", "TrainWidget"]

logger = logging.getLogger(__name__)

_LOSS_LABELS = {"mse": "MSE (pixel error)", "ssim": "SSIM (structure)", "mix": "MSE + SSIM"}
_MODE_LABELS = {"auto": "auto (from image size)", "whole": "whole image (cell crops)",
                "patch": "patches (fields of view)", "cells": "cells (a window per cell)"}
#: Cells-combo entries that are not layers.
NO_CELLS = "none"
FIND_CELLS = "find"
_PRESETS = ("default", "seed")
_DENSITY_LABELS = {"kde": "kernel density (KDE)", "gmm": "Gaussian mixture"}


@dataclass
class FolderLoaded:
    """Event: the training folder was read (``paths``: the images used, in order)."""

    folder: str
    paths: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)


@dataclass
class _Source:
    """Where one training image came from (for the rejected-images list)."""

    name: str
    layer: Image | None = None
    index: tuple[int, ...] = ()
    path: Path | None = None


def _train_job(items: Sequence[Plane], folder: str | None, config: TrainConfig,
               control: JobControl, labels: Sequence[np.ndarray | None] | None = None
               ) -> Generator[Any, None, AnomalyDetector | None]:
    """Worker body: read the images, then relay every event of :func:`train`.

    ``labels`` (cells mode) gives one label image or None per item; the folder's images get
    None (their cells are found by the built-in segmentation).
    """
    from ..core.images import find_images, load_images
    from ..core.training import train

    try:
        own_planes(items)  # private copies first: the user may edit the layers meanwhile
        images = [np.asarray(plane.data) for plane in items]
        names = [plane.name for plane in items]
        labels = list(labels) if labels is not None else None
        if folder:
            loaded = load_images(find_images(folder))
            images += loaded.images
            names += [p.name for p in loaded.paths]
            if labels is not None:
                labels += [None] * len(loaded.images)
            yield FolderLoaded(folder, list(loaded.paths), loaded.failures)
        gen = train(images, config, labels=labels, stop=control.stop.is_set, names=names)
        while True:
            if control.abort.is_set():
                gen.close()
                return None
            try:
                event = next(gen)
            except StopIteration as done:
                return done.value
            yield event
    except RuntimeError as exc:
        raise JobFailure(f"{type(exc).__name__}: {exc}") from exc


class TrainWidget(QWidget):
    """Train an anomaly model on images of normal cells.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose image layers are offered for training.
    """

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state: ModelState = get_state(napari_viewer)
        self._jobs = JobSlot()
        self._ready = False  # until the core's defaults fill the settings
        self._sources: list[_Source] = []
        self._listed: list[Image] = []
        self._name_watched: set[str] = set()
        self._train_x: list[float] = []
        self._train_y: list[float] = []
        self._val_x: list[float] = []
        self._val_y: list[float] = []
        self._last_val: float | None = None
        self._last_event: TrainProgress | None = None

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)

        # -- images -------------------------------------------------------------------------
        box = QGroupBox("Normal images to learn from")
        form = QVBoxLayout(box)
        self.layer_list = QListWidget()
        self.layer_list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.layer_list.setToolTip("Image layers of normal cells (Ctrl/Shift-click to pick "
                                   "several). Each plane of a stack counts as one image.")
        self.layer_list.setMinimumHeight(70)
        self.layer_list.setMaximumHeight(120)
        form.addWidget(self.layer_list)
        self.name_filter = QLineEdit()
        self.name_filter.setPlaceholderText("select layers whose name contains…")
        self.name_filter.setClearButtonEnabled(True)
        form.addWidget(self.name_filter)
        row = QHBoxLayout()
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("optional: folder of normal images")
        self.folder_edit.setClearButtonEnabled(True)
        self.folder_button = QPushButton("Browse…")
        row.addWidget(self.folder_edit, 1)
        row.addWidget(self.folder_button)
        form.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(QLabel("Cells"))
        self.cells_combo = QComboBox()
        self.cells_combo.setToolTip(
            "Learn cell by cell (cells mode): from a Labels layer of the normal cells of the "
            "chosen image (same height and width; only labelled objects are used), or from "
            "cells found automatically in every training image. 'none': learn whole images "
            "or patches.")
        row.addWidget(self.cells_combo, 1)
        form.addLayout(row)
        self.selection_label = QLabel()
        self.selection_label.setTextFormat(Qt.TextFormat.PlainText)
        self.selection_label.setWordWrap(True)
        form.addWidget(self.selection_label)
        layout.addWidget(box)

        # -- settings -----------------------------------------------------------------------
        settings = QFormLayout()
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 10_000)
        self.epochs.setToolTip("Passes over the training images; training keeps the epoch with "
                               "the lowest validation loss.")
        self.size = QSpinBox()
        self.size.setRange(16, 512)
        self.size.setSingleStep(8)
        self.size.setSuffix(" px")
        self.size.setToolTip("Model input side (a multiple of 8): cell crops are resized to it; "
                             "large fields of view are learned in patches of this size.")
        self.loss = QComboBox()
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip("Same images + same settings + same seed = same model.")
        settings.addRow("Epochs", self.epochs)
        settings.addRow("Size", self.size)
        settings.addRow("Loss", self.loss)
        settings.addRow("Seed", self.seed)
        layout.addLayout(settings)

        self.advanced = QCollapsible("Advanced")
        adv = QWidget()
        adv_form = QFormLayout(adv)
        adv_form.setContentsMargins(0, 0, 0, 0)
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 1024)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(5)
        self.lr.setRange(1e-5, 1.0)
        self.lr.setSingleStep(1e-4)
        self.preset = QComboBox()
        self.preset.addItems(list(_PRESETS))
        self.preset.setToolTip("default: convolutional autoencoder designed for CPUs (strided "
                               "convolutions down, transposed convolutions up); seed: the "
                               "published Keras design the project started from.")
        self.mode = QComboBox()
        self.robust = QCheckBox("Robust training (ignore outliers)")
        self.robust.setToolTip("Repeatedly gives zero weight to the training images with the "
                               "most anomalous reconstruction error (whole-image mode) and "
                               "drops such images from calibration, for training sets with a "
                               "few abnormal cells mixed in.")
        self.density = QComboBox()
        self.density.setToolTip("Density model over the code vectors of single latent "
                                "positions; an image's log-density is that of its least likely "
                                "position.")
        adv_form.addRow("Batch size", self.batch_size)
        adv_form.addRow("Learning rate", self.lr)
        adv_form.addRow("Network", self.preset)
        adv_form.addRow("Mode", self.mode)
        adv_form.addRow("Latent density", self.density)
        adv_form.addRow(self.robust)
        self.advanced.addWidget(adv)
        layout.addWidget(self.advanced)

        # -- run ----------------------------------------------------------------------------
        row = QHBoxLayout()
        self.train_button = QPushButton("Train")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("End training now and keep the best model so far.")
        row.addWidget(self.train_button, 1)
        row.addWidget(self.stop_button)
        layout.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("")
        layout.addWidget(self.progress)
        self.status_label = QLabel("Pick normal images, then press Train.")
        self.status_label.setTextFormat(Qt.TextFormat.PlainText)
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)

        self.plot = SmallPlot(background=None)
        self.plot.setMinimumHeight(150)
        self.plot.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.plot.setLabel("bottom", "epoch")
        self.plot.setLabel("left", "loss")
        self.plot.getAxis("left").enableAutoSIPrefix(False)
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        self.plot.addLegend(offset=(-8, 8))
        self._train_curve = self.plot.plot([], [], pen=pg.mkPen("#4fc3f7", width=2),
                                           name="train")
        self._val_curve = self.plot.plot([], [], pen=pg.mkPen("#ffb74d", width=2),
                                         symbol="o", symbolSize=6, symbolBrush="#ffb74d",
                                         name="validation")
        layout.addWidget(self.plot, 1)

        # -- result -------------------------------------------------------------------------
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        self.model_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.model_label)
        self.save_button = QPushButton("Save model…")
        self.save_button.setToolTip("Write the trained model to one .safetensors file, usable "
                                    "in the Score widget, the CLI and Python.")
        layout.addWidget(self.save_button)
        self.rejected_label = QLabel("Rejected by robust training (click to show):")
        self.rejected_label.setWordWrap(True)
        self.rejected_list = QListWidget()
        self.rejected_list.setMaximumHeight(90)
        layout.addWidget(self.rejected_label)
        layout.addWidget(self.rejected_list)
        self.rejected_label.hide()
        self.rejected_list.hide()

        # -- connections --------------------------------------------------------------------
        self.train_button.clicked.connect(self.start_training)
        self.stop_button.clicked.connect(self.stop_training)
        self.save_button.clicked.connect(self._save_dialog)
        self.folder_button.clicked.connect(self._folder_dialog)
        self.folder_edit.textChanged.connect(self._update_selection_label)
        self.name_filter.textChanged.connect(self.select_matching)
        self.layer_list.itemSelectionChanged.connect(self._update_selection_label)
        self.rejected_list.itemClicked.connect(self._show_rejected)
        self.size.editingFinished.connect(self._snap_size)

        layers = self.viewer.layers
        bind(self, layers.events.inserted, self._on_layers_changed)
        bind(self, layers.events.removed, self._on_layers_changed)
        bind(self, layers.events.moved, self._on_layers_changed)
        bind(self, self.state.status_changed, self._update_buttons)
        bind(self, self.state.model_changed, self._update_buttons)
        # Closing the viewer (or this dock widget) ends a running training first.
        watch_window_close(self, self._jobs)

        self._on_layers_changed()
        # The settings' defaults come from the core (torch), imported in the background the
        # first time a widget opens; until then the settings and Train are disabled.
        self._settings = [self.epochs, self.size, self.loss, self.seed, self.batch_size,
                          self.lr, self.preset, self.mode, self.robust, self.density]
        for control in self._settings:
            control.setEnabled(False)
        self.status_label.setText("Loading PyTorch…")
        self._update_buttons()
        when_core_ready(self, self._on_core_ready,
                        partial(report_error, "Could not load the anomaly-detection core"))

    def _on_core_ready(self) -> None:
        """Fill the settings with the core's defaults and enable them."""
        from ..core.scoring import TRAINABLE_DENSITIES
        from ..core.training import LOSSES, MODES, TrainConfig

        defaults = TrainConfig()
        self.epochs.setValue(defaults.epochs)
        self.size.setValue(defaults.size)
        for key in LOSSES:
            self.loss.addItem(_LOSS_LABELS.get(key, key), key)
        self.loss.setCurrentIndex(LOSSES.index(defaults.loss))
        self.seed.setValue(defaults.seed)
        self.batch_size.setValue(defaults.batch_size)
        self.lr.setValue(defaults.lr)
        self.preset.setCurrentText(defaults.preset)
        for key in MODES:
            self.mode.addItem(_MODE_LABELS.get(key, key), key)
        self.mode.setCurrentIndex(MODES.index(defaults.mode))
        self.robust.setChecked(defaults.robust)
        for key in TRAINABLE_DENSITIES:
            self.density.addItem(_DENSITY_LABELS.get(key, key), key)
        self.density.setCurrentIndex(TRAINABLE_DENSITIES.index(defaults.scoring.density))
        for control in self._settings:
            control.setEnabled(True)
        self._ready = True
        self.status_label.setText("Pick normal images, then press Train.")
        self._update_buttons()

    def is_ready(self) -> bool:
        """True once the settings are filled and training can start."""
        return self._ready

    # ------------------------------------------------------------------------------------
    # layer list
    # ------------------------------------------------------------------------------------
    def _on_layers_changed(self, event: Any = None) -> None:
        for layer in self.viewer.layers:
            if layer_key(layer) not in self._name_watched:
                self._name_watched.add(layer_key(layer))
                bind(self, layer.events.name, self._refresh_layer_list)
        self._refresh_layer_list()

    def _trainable_layers(self) -> list[Image]:
        return [ly for ly in self.viewer.layers if isinstance(ly, Image) and not is_own_layer(ly)]

    def _refresh_cells_combo(self) -> None:
        """Offer 'none', 'find cells automatically' and the 2-D Labels layers whose shape
        matches the chosen image(s), keeping the current choice where it still fits."""
        current = self.cells_combo.currentData()
        shapes = {image_hw(ly) for ly in self.selected_layers()}
        self.cells_combo.blockSignals(True)
        self.cells_combo.clear()
        self.cells_combo.addItem("none (whole images or patches)", NO_CELLS)
        self.cells_combo.addItem("find cells automatically", FIND_CELLS)
        for layer in self.viewer.layers:
            if (isinstance(layer, Labels) and not is_own_layer(layer) and layer.ndim == 2
                    and not layer.multiscale and shapes == {tuple(layer.data.shape)}):
                self.cells_combo.addItem(f"Labels: {layer.name}", layer_key(layer))
        self.cells_combo.setCurrentIndex(max(self.cells_combo.findData(current), 0))
        self.cells_combo.blockSignals(False)

    def cells_source(self) -> str | Labels:
        """``"none"``, ``"find"`` or the chosen Labels layer."""
        key = self.cells_combo.currentData()
        if key in (NO_CELLS, FIND_CELLS, None):
            return key or NO_CELLS
        return next((ly for ly in self.viewer.layers if layer_key(ly) == key), NO_CELLS)

    def choose_cells(self, source: str | Labels) -> None:
        """Choose the cells source: ``"none"``, ``"find"`` or a listed Labels layer."""
        key = source if isinstance(source, str) else layer_key(source)
        index = self.cells_combo.findData(key)
        if index < 0:
            raise ValueError(f"{source!r} is not offered as a cells source for the chosen "
                             "images (a Labels layer must have their height and width)")
        self.cells_combo.setCurrentIndex(index)

    def _refresh_layer_list(self, event: Any = None) -> None:
        """Rebuild the list from the viewer's image layers, keeping the selection."""
        selected = {layer_key(ly) for ly in self.selected_layers()}
        self.layer_list.blockSignals(True)
        self.layer_list.clear()
        self._listed = self._trainable_layers()
        for layer in self._listed:
            shape = image_hw(layer)
            text = layer.name
            if len(shape) > 2:
                text += f"  ({int(np.prod(shape[:-2]))} planes)"
            item = QListWidgetItem(text)
            kind = "RGB" if layer.rgb else "grayscale"
            item.setToolTip(f"{kind} image, shape {tuple(layer.data.shape)}")
            self.layer_list.addItem(item)
            item.setSelected(layer_key(layer) in selected)
        self.layer_list.blockSignals(False)
        self._update_selection_label()

    def selected_layers(self) -> list[Image]:
        """The image layers chosen for training, in list order."""
        rows = sorted(self.layer_list.row(it) for it in self.layer_list.selectedItems())
        return [self._listed[r] for r in rows if r < len(self._listed)]

    def select_layers(self, layers: Sequence[Image]) -> None:
        """Select exactly ``layers`` in the list."""
        wanted = {layer_key(ly) for ly in layers}
        self.layer_list.blockSignals(True)
        for row, layer in enumerate(self._listed):
            self.layer_list.item(row).setSelected(layer_key(layer) in wanted)
        self.layer_list.blockSignals(False)
        self._update_selection_label()

    def select_matching(self, text: str) -> None:
        """Select every listed layer whose name contains ``text`` (case-insensitive)."""
        text = text.strip().lower()
        if text:
            self.select_layers([ly for ly in self._listed if text in ly.name.lower()])

    def _update_selection_label(self, *_: Any) -> None:
        self._refresh_cells_combo()
        layers = self.selected_layers()
        n_images = sum(int(np.prod(image_hw(ly)[:-2], dtype=int)) for ly in layers)
        parts = []
        if layers:
            parts.append(f"{len(layers)} layer{'s' * (len(layers) != 1)} "
                         f"({n_images} image{'s' * (n_images != 1)})")
        if self.folder_edit.text().strip():
            parts.append("the images in the folder")
        self.selection_label.setText(
            ("Training on " + " + ".join(parts)) if parts else "No training images selected.")

    def _folder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of normal images")
        if folder:
            self.folder_edit.setText(folder)

    # ------------------------------------------------------------------------------------
    # settings
    # ------------------------------------------------------------------------------------
    def _snap_size(self) -> None:
        value = self.size.value()
        self.size.setValue(max(16, round(value / 8) * 8))

    def config(self) -> TrainConfig:
        """The :class:`TrainConfig` the controls describe (raises ValueError if invalid)."""
        from ..core.scoring import ScoringConfig
        from ..core.training import TrainConfig

        self._snap_size()
        return TrainConfig(
            epochs=self.epochs.value(),
            batch_size=self.batch_size.value(),
            lr=float(self.lr.value()),
            loss=self.loss.currentData(),
            seed=self.seed.value(),
            size=self.size.value(),
            mode="cells" if self.cells_source() != NO_CELLS else self.mode.currentData(),
            preset=self.preset.currentText(),
            robust=self.robust.isChecked(),
            scoring=ScoringConfig(density=self.density.currentData()),
        )

    # ------------------------------------------------------------------------------------
    # running
    # ------------------------------------------------------------------------------------
    def _update_buttons(self, *_: Any) -> None:
        status = self.state.status
        self.train_button.setEnabled(status is Status.IDLE and self._ready)
        self.stop_button.setEnabled(status is Status.TRAINING)
        self.save_button.setEnabled(status is Status.IDLE and self.state.trained is not None)
        self.train_button.setText("Training…" if status in (Status.TRAINING, Status.STOPPING)
                                  else "Train")
        if status is Status.SCORING:
            self.train_button.setToolTip("Scoring is running; train when it has finished.")
        else:
            self.train_button.setToolTip("")
        trained = self.state.trained
        self.model_label.setText(
            "<b>Trained model</b><br><small>" + html.escape(trained.summary()).replace(
                "\n", "<br>") + "</small>" if trained is not None else "")

    def start_training(self) -> bool:
        """Start training from the current choices; False (with a notification) if not."""
        if not self._ready:
            show_warning("PyTorch is still loading: press Train again in a moment.")
            return False
        if self.state.status in (Status.TRAINING, Status.STOPPING):
            show_warning("Training is already running: wait for it or press Stop.")
            return False
        if self.state.status is Status.SCORING:
            show_warning("Scoring is running: train when it has finished.")
            return False
        layers = self.selected_layers()
        folder = self.folder_edit.text().strip() or None
        if not layers and not folder:
            show_warning("No training images: select image layers of normal cells in the "
                         "list, or choose a folder of normal images.")
            return False
        if folder and not Path(folder).is_dir():
            show_warning(f"The training folder {folder!r} does not exist.")
            return False
        for layer in layers:
            if layer.multiscale:
                show_warning(f"{layer.name!r} is a multiscale (pyramid) image; open one "
                             "resolution level as a plain image to train on it.")
                return False
        try:
            config = self.config()
        except ValueError as exc:
            report_error("Invalid training settings", exc)
            return False

        cells = self.cells_source()
        labels: list[np.ndarray | None] | None = None
        if isinstance(cells, Labels):
            shape = tuple(cells.data.shape)
            if len(layers) != 1 or image_hw(layers[0]) != shape or folder:
                show_warning(f"The Labels layer {cells.name!r} holds the cells of one image of "
                             f"{shape[0]}x{shape[1]} pixels: choose that one image layer (and "
                             "no folder), or 'find cells automatically'.")
                return False
            snapshot = np.array(cells.data, copy=True)  # the user may paint meanwhile
            if not snapshot.any():
                show_warning(f"The Labels layer {cells.name!r} is empty: label the normal "
                             "cells first, or choose 'find cells automatically'.")
                return False
            labels = [snapshot]
        elif cells == FIND_CELLS:
            labels = [None] * sum(int(np.prod(image_hw(ly)[:-2], dtype=int)) for ly in layers)

        planes: list[tuple[str, Any]] = []
        self._sources = []
        for layer in layers:
            lead = image_hw(layer)[:-2]
            for index, (name, data) in zip(np.ndindex(*lead), layer_planes(layer),
                                           strict=True):
                planes.append((name, data))
                self._sources.append(_Source(name, layer, index))

        items = snapshot_planes(planes)
        self._reset_progress()
        self._jobs.current = job = JobControl()
        worker = create_worker(_train_job, items, folder, config, job, labels,
                               _ignore_errors=True, _start_thread=False)
        job.worker = worker
        state = self.state
        # Model publication and state go through plain functions: they must happen even if
        # this widget was closed meanwhile.
        worker.returned.connect(partial(_publish_model, state))
        worker.errored.connect(partial(report_error, "Training failed"))
        worker.finished.connect(partial(state.set_status, Status.IDLE))
        worker.yielded.connect(self._on_event)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._update_buttons)
        state.set_status(Status.TRAINING)
        self.status_label.setText("Reading images…")
        worker.start()
        self._update_buttons()
        return True

    def stop_training(self) -> None:
        """End training at the next step; the best model so far is kept and published."""
        if self.state.status is not Status.TRAINING:
            return
        self._jobs.current.stop.set()
        self.state.set_status(Status.STOPPING)
        self.status_label.setText("Stopping: finishing the model with the best epoch so far…")

    def shutdown(self) -> None:
        """Abort a running training and wait (bounded) for its thread to end."""
        self._jobs.shutdown()

    def closeEvent(self, event: Any) -> None:
        self.shutdown()
        super().closeEvent(event)

    # ------------------------------------------------------------------------------------
    # rendering events
    # ------------------------------------------------------------------------------------
    def _reset_progress(self) -> None:
        self._train_x.clear()
        self._train_y.clear()
        self._val_x.clear()
        self._val_y.clear()
        self._last_val = None
        self._last_event = None
        self._train_curve.setData([], [])
        self._val_curve.setData([], [])
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.rejected_list.clear()
        self.rejected_list.hide()
        self.rejected_label.hide()

    def _on_event(self, event: Any) -> None:
        if isinstance(event, FolderLoaded):
            self._on_folder_loaded(event)
            return
        from ..core.training import TrainProgress  # loaded: the job yields these

        if not isinstance(event, TrainProgress):
            return
        self._last_event = event
        epochs = max(event.epochs, 1)
        steps = max(event.steps, 1)
        if event.phase == "train":
            self.progress.setRange(0, 1000)
            self.progress.setValue(round(1000 * event.step / steps))
            self.progress.setFormat(f"epoch {event.epoch}/{event.epochs}  ·  "
                                    f"step {event.step}/{event.steps}")
            text = (f"{format_seconds(event.elapsed)} elapsed, about "
                    f"{format_seconds(event.eta)} left")
            if self.state.status is Status.STOPPING:
                text = "Stopping after this step…"
            self.status_label.setText(text)
            self._train_x.append(event.step * epochs / steps)
            self._train_y.append(float(event.train_loss))
        elif event.phase == "finalize":
            self.progress.setRange(0, 0)  # busy indicator: no steps to count
            self.status_label.setText(f"{format_seconds(event.elapsed)} elapsed: fitting the "
                                      "latent density and calibrating on held-out normals…")
        elif event.phase == "done":
            self.progress.setRange(0, 1000)
            self.progress.setValue(1000)
            how = "stopped early" if event.stopped else "done"
            self.progress.setFormat(f"{how}: {event.epoch} epoch{'s' * (event.epoch != 1)}")
            self.status_label.setText(f"Trained in {format_seconds(event.elapsed)}.")
        if event.val_loss is not None and event.val_loss != self._last_val:
            self._last_val = event.val_loss
            x = float(event.epoch - 1 if event.phase == "train" else event.epoch)
            self._val_x.append(x)
            self._val_y.append(float(event.val_loss))
            self._val_curve.setData(self._val_x, self._val_y)
        if event.phase == "train":
            self._train_curve.setData(self._train_x, self._train_y)

    def _on_folder_loaded(self, event: FolderLoaded) -> None:
        self._sources += [_Source(p.name, path=p) for p in event.paths]
        if event.failures:
            first = event.failures[0][1]
            more = f" (and {len(event.failures) - 1} more)" if len(event.failures) > 1 else ""
            show_warning(f"Skipped {len(event.failures)} unreadable file"
                         f"{'s' * (len(event.failures) != 1)} in the folder: {first}{more}")
        self.status_label.setText(f"Read {len(event.paths)} images from the folder; "
                                  "training…")

    def _on_returned(self, value: Any) -> None:
        if value is None:
            return
        detector = value
        self._show_rejected_list(detector)
        self._update_buttons()
        stopped = bool(detector.provenance.get("stopped_early"))
        show_info("Anomaly model trained" + (" (stopped early; best epoch kept)" if stopped
                                             else "") + ": it is now the model for scoring.")

    def _on_errored(self, exc: BaseException) -> None:
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.status_label.setText(f"Training failed: {exc}")

    def _show_rejected_list(self, detector: AnomalyDetector) -> None:
        self.rejected_list.clear()
        rejected = list(getattr(detector, "rejected", []) or [])
        for index in rejected:
            source = self._sources[index] if 0 <= index < len(self._sources) else None
            item = QListWidgetItem(source.name if source else f"image {index}")
            item.setData(Qt.ItemDataRole.UserRole, index)
            if source is not None and source.path is not None:
                item.setToolTip(str(source.path))
            self.rejected_list.addItem(item)
        self.rejected_label.setText(f"Rejected by robust training: {len(rejected)} "
                                    "image(s) (click to show)")
        self.rejected_label.setVisible(bool(rejected))
        self.rejected_list.setVisible(bool(rejected))

    def _show_rejected(self, item: QListWidgetItem) -> None:
        index = item.data(Qt.ItemDataRole.UserRole)
        if index is None or not 0 <= index < len(self._sources):
            return
        source = self._sources[index]
        layer = source.layer
        if layer is None or layer not in self.viewer.layers:
            if source.path is not None:
                show_info(f"{source.name} is a file of the training folder: {source.path}")
            return
        layer.visible = True
        self.viewer.layers.selection.active = layer
        if source.index:
            step = list(self.viewer.dims.current_step)
            axes = list(range(layer.ndim - 2))
            world_axes = [self.viewer.dims.ndim - layer.ndim + a for a in axes]
            for axis, i in zip(world_axes, source.index, strict=True):
                step[axis] = i
            self.viewer.dims.current_step = tuple(step)

    # ------------------------------------------------------------------------------------
    # saving
    # ------------------------------------------------------------------------------------
    def _save_dialog(self) -> None:
        if self.state.trained is None:
            show_warning("No trained model to save yet.")
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save anomaly model",
                                              "cell-anomaly.safetensors",
                                              "Anomaly model (*.safetensors)")
        if path:
            self.save_model(path)

    def save_model(self, path: str | Path) -> bool:
        """Write the trained model to ``path`` (``.safetensors`` added if missing)."""
        detector = self.state.trained
        if detector is None:
            show_warning("No trained model to save yet.")
            return False
        path = Path(path)
        if path.suffix.lower() != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        try:
            detector.save(path)
        except (OSError, ValueError) as exc:
            report_error(f"Could not save the model to {str(path)!r}", exc)
            return False
        if self.state.detector is detector:
            self.state.set_active(detector, "trained", path)
        show_info(f"Model saved to {path}")
        return True


def _publish_model(state: ModelState, detector: AnomalyDetector | None) -> None:
    if detector is not None:  # None: the job was aborted (viewer closing)
        state.set_trained(detector)
