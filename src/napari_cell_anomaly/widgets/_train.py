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
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ._channel_layers import ChannelLayersError
from ._common import (
    JobControl,
    JobFailure,
    JobSlot,
    Plane,
    ProgressBar,
    after_first_paint,
    bind,
    format_seconds,
    image_hw,
    layer_planes,
    own_planes,
    report_error,
    snapshot_planes,
    watch_window_close,
)
from ._core_loader import when_core_ready
from ._rejected import RejectedImages, TrainingSource
from ._state import ModelState, Status, get_state
from ._train_settings import TrainSettings
from ._train_sources import FIND_CELLS, NO_CELLS, TrainingImagesBox

if TYPE_CHECKING:
    import napari

    from ..core.detector import AnomalyDetector
    from ..core.training import TrainConfig, TrainProgress
    from ._loss_plot import LossPlot

__all__ = ["FolderLoaded", "TrainWidget"]

logger = logging.getLogger(__name__)


@dataclass
class FolderLoaded:
    """Event: the training folder was read (``paths``: the images used, in order, a stack's
    path once per plane; ``names``: each image's name, ``"<file> [z=3]"`` for a plane)."""

    folder: str
    paths: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def _train_job(items: Sequence[Plane], folder: str | None, config: TrainConfig,
               control: JobControl, labels: Sequence[np.ndarray | None] | None = None,
               device: str = "auto") -> Generator[Any, None, AnomalyDetector | None]:
    """Worker body: read the images, then relay every event of :func:`train`.

    ``labels`` (cells mode) gives one label image or None per item; the folder's images get
    None (their cells are found by the built-in segmentation). ``device`` is where the network
    trains (and stays: the published detector runs there).
    """
    from ..core.images import find_images
    from ..core.stackio import load_planes
    from ..core.training import train

    try:
        own_planes(items)  # private copies first: the user may edit the layers meanwhile
        images = [np.asarray(plane.data) for plane in items]
        names = [plane.name for plane in items]
        labels = list(labels) if labels is not None else None
        if folder:
            loaded = load_planes(find_images(folder))  # a stack's planes: one image each
            images += loaded.images
            names += loaded.names
            if labels is not None:
                labels += [None] * len(loaded.images)
            yield FolderLoaded(folder, list(loaded.paths), loaded.failures, loaded.names)
        gen = train(images, config, labels=labels, stop=control.stop.is_set, names=names,
                    device=device)
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
        self._queued = False  # Train pressed before that: start once they are
        self._last_event: TrainProgress | None = None

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)

        # -- images -------------------------------------------------------------------------
        self.images_box = TrainingImagesBox(self.viewer)
        self.layer_list = self.images_box.layer_list
        self.name_filter = self.images_box.name_filter
        self.folder_edit = self.images_box.folder_edit
        self.folder_button = self.images_box.folder_button
        self.cells_combo = self.images_box.cells_combo
        self.selection_label = self.images_box.selection_label
        layout.addWidget(self.images_box)

        # -- settings -----------------------------------------------------------------------
        self.settings = TrainSettings()
        for name in ("epochs", "size", "loss", "seed", "advanced", "batch_size", "lr", "preset",
                     "mode", "robust", "density", "orient", "device"):
            setattr(self, name, getattr(self.settings, name))
        layout.addWidget(self.settings)

        # -- run ----------------------------------------------------------------------------
        row = QHBoxLayout()
        self.train_button = QPushButton("Train")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("End training now and keep the best model so far.")
        row.addWidget(self.train_button, 1)
        row.addWidget(self.stop_button)
        layout.addLayout(row)
        self.progress = ProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("")
        layout.addWidget(self.progress)
        self.status_label = QLabel("Pick normal images, then press Train.")
        self.status_label.setTextFormat(Qt.TextFormat.PlainText)
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)

        # The loss plot (pyqtgraph, imported by the core loader's thread) is built once the
        # core is ready; until then this empty box holds its place.
        self.plot: LossPlot | None = None
        self._plot_box = QWidget()
        self._plot_box.setMinimumHeight(150)
        QVBoxLayout(self._plot_box).setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._plot_box, 1)

        # -- result -------------------------------------------------------------------------
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        self.model_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.model_label)
        self.save_button = QPushButton("Save model…")
        self.save_button.setToolTip("Write the trained model to one .safetensors file, usable "
                                    "in the Score widget, the CLI and Python.")
        layout.addWidget(self.save_button)
        self.rejected = RejectedImages(self.viewer)
        self.rejected_label = self.rejected.label
        self.rejected_list = self.rejected.list
        layout.addWidget(self.rejected_label)
        layout.addWidget(self.rejected_list)

        # -- connections --------------------------------------------------------------------
        self.train_button.clicked.connect(self.start_training)
        self.stop_button.clicked.connect(self.stop_training)
        self.save_button.clicked.connect(self._save_dialog)

        bind(self, self.state.status_changed, self._update_buttons)
        bind(self, self.state.model_changed, self._update_buttons)
        # Closing the viewer (or this dock widget) ends a running training first.
        watch_window_close(self, self._jobs)

        # The settings' defaults come from the core (torch), imported in the background the
        # first time a widget opens; until then the settings and Train are disabled.
        self.settings.set_enabled(False)
        self.status_label.setText("Loading PyTorch…")
        self._update_buttons()
        # (The loader starts once napari has docked and painted this widget, so that its
        # thread does not compete with that turn for the GIL.)
        when_core_ready(self, self._on_core_ready,
                        partial(report_error, "Could not load the anomaly-detection core"),
                        after_paint=True)

    def _on_core_ready(self) -> None:
        """Fill the settings with the core's defaults and enable them; the loss plot is
        built in the turn after the widget's first paint (~50 ms), or when training starts if
        sooner."""
        after_first_paint(self, self._ensure_plot)
        self.settings.fill_defaults()
        self.settings.set_enabled(True)
        self._ready = True
        self.status_label.setText("Pick normal images, then press Train.")
        self._update_buttons()
        if self._queued:  # Train was pressed while PyTorch loaded
            self._queued = False
            self._update_buttons()
            self.status_label.setText("PyTorch has loaded: starting the training.")
            if not self.start_training():  # said why in a notification
                self.status_label.setText("Pick normal images, then press Train.")

    def _ensure_plot(self) -> LossPlot:
        """The loss plot, built (pyqtgraph) if it is not yet."""
        if self.plot is None:
            from ._loss_plot import LossPlot

            self.plot = LossPlot()
            self._plot_box.layout().addWidget(self.plot)
        return self.plot

    def is_ready(self) -> bool:
        """True once the settings are filled and training can start."""
        return self._ready

    # ------------------------------------------------------------------------------------
    # training data (the box does the work; these keep the widget's public API)
    # ------------------------------------------------------------------------------------
    def selected_layers(self) -> list[Image]:
        """The image layers chosen for training, in list order."""
        return self.images_box.selected_layers()

    def select_layers(self, layers: Sequence[Image]) -> None:
        """Select exactly ``layers`` in the list."""
        self.images_box.select_layers(layers)

    def select_matching(self, text: str) -> None:
        """Select every listed layer whose name contains ``text`` (case-insensitive)."""
        self.images_box.select_matching(text)

    def cells_source(self) -> str | Labels:
        """``"none"``, ``"find"`` or the chosen Labels layer."""
        return self.images_box.cells_source()

    def choose_cells(self, source: str | Labels) -> None:
        """Choose the cells source: ``"none"``, ``"find"`` or a listed Labels layer."""
        self.images_box.choose_cells(source)

    def config(self) -> TrainConfig:
        """The :class:`TrainConfig` the controls describe (raises ValueError if invalid)."""
        return self.settings.config(cells=self.cells_source() != NO_CELLS)

    # ------------------------------------------------------------------------------------
    # running
    # ------------------------------------------------------------------------------------
    def _update_buttons(self, *_: Any) -> None:
        status = self.state.status
        self.train_button.setEnabled(status is Status.IDLE and not self._queued)
        self.stop_button.setEnabled(status is Status.TRAINING or self._queued)
        self.save_button.setEnabled(status is Status.IDLE and self.state.trained is not None)
        self.train_button.setText("Training…" if status in (Status.TRAINING, Status.STOPPING)
                                  else "Train")
        if status is Status.SCORING:
            self.train_button.setToolTip("Scoring is running; train when it has finished.")
        elif not self._ready:
            self.train_button.setToolTip("PyTorch is loading: pressed now, training starts "
                                         "as soon as it has loaded.")
        else:
            self.train_button.setToolTip("")
        trained = self.state.trained
        self.model_label.setText(
            "<b>Trained model</b><br><small>" + html.escape(trained.summary()).replace(
                "\n", "<br>") + "</small>" if trained is not None else "")

    def start_training(self) -> bool:
        """Start training from the current choices; False (with a notification) if not.

        Before PyTorch has loaded, the start is queued instead (said in the status line;
        Stop cancels it): training starts once it has loaded, from the choices then, and
        this returns True.
        """
        if not self._ready:
            if self.state.status is not Status.IDLE:
                show_warning("Scoring is running: train when it has finished.")
                return False
            self._queued = True
            self._update_buttons()
            self.status_label.setText("PyTorch is still loading: training starts as soon as "
                                      "it has loaded (Stop cancels).")
            return True
        if self.state.status in (Status.TRAINING, Status.STOPPING):
            show_warning("Training is already running: wait for it or press Stop.")
            return False
        if self.state.status is Status.SCORING:
            show_warning("Scoring is running: train when it has finished.")
            return False
        try:
            layers = self.images_box.selected_images()  # channel layers grouped into images
        except ChannelLayersError as exc:
            show_warning(f"Cannot train: {exc}.")
            return False
        folder = self.images_box.folder()
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
        if layers and layers[0].channel_names:
            config.channel_names = layers[0].channel_names  # recorded in the model

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
        sources = self.rejected.sources
        sources.clear()
        for layer in layers:
            lead = image_hw(layer)[:-2]
            for index, (name, data) in zip(np.ndindex(*lead), layer_planes(layer),
                                           strict=True):
                planes.append((name, data))
                sources.append(TrainingSource(name, layer.first, index))

        items = snapshot_planes(planes)
        self._reset_progress()
        self._jobs.current = job = JobControl()
        worker = create_worker(_train_job, items, folder, config, job, labels,
                               self.settings.device_spec(), _ignore_errors=True,
                               _start_thread=False)
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
        """End training at the next step; the best model so far is kept and published. A
        start queued while PyTorch loads is cancelled."""
        if self._queued:
            self._queued = False
            self._update_buttons()
            self.status_label.setText("Loading PyTorch…")
            return
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
        self._ensure_plot().reset()
        self._last_event = None
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.rejected.reset()

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
            self.plot.add_train(event.step * epochs / steps, float(event.train_loss))
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
        if event.val_loss is not None:
            self.plot.add_validation(event.epoch - 1 if event.phase == "train" else event.epoch,
                                     event.val_loss)

    def _on_folder_loaded(self, event: FolderLoaded) -> None:
        names = event.names or [p.name for p in event.paths]
        self.rejected.sources += [TrainingSource(name, path=p)
                                  for name, p in zip(names, event.paths, strict=True)]
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
        self.rejected.show(detector)
        self._update_buttons()
        stopped = bool(detector.provenance.get("stopped_early"))
        show_info("Anomaly model trained" + (" (stopped early; best epoch kept)" if stopped
                                             else "") + ": it is now the model for scoring.")

    def _on_errored(self, exc: BaseException) -> None:
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.status_label.setText(f"Training failed: {exc}")

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
