"""The Score widget's "Model" box: which model scores, and a summary of it.

Three sources: the model trained in this session (published by the Train widget through the
viewer's :class:`~._state.ModelState`), a model file, or the shipped default model. The box
only chooses and describes the active model, and where it runs (the device choice, used by
the Score widget's jobs and when a model file is read); it never scores.

The shipped default model is read in a worker thread (a file read plus building the network
and the density), so opening the Score widget never waits for it; until it has loaded, the box
says so, and a model trained or loaded meanwhile is not replaced by it.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core.modelfile import ModelFileError
from ._common import bind
from ._device_choice import DeviceChoice
from ._state import ModelState

if TYPE_CHECKING:
    from ..core.detector import AnomalyDetector

__all__ = ["ModelSourceBox"]

_SOURCES = (("trained", "Trained in this session"), ("file", "Model file"),
            ("default", "Shipped default model"))


class ModelSourceBox(QGroupBox):
    """Choose the active model (this session's, a file, the shipped default) and show it.

    Parameters
    ----------
    state : ModelState
        The viewer's shared state; the box sets its active model.
    """

    def __init__(self, state: ModelState, parent: QWidget | None = None) -> None:
        super().__init__("Model", parent)
        self.state = state
        self._file_model: tuple[AnomalyDetector, Path] | None = None
        self._default_model: AnomalyDetector | None = None
        self._default_worker: Any = None  # the worker reading the default model, while it runs
        #: Set by on_core_ready(read_default=False) until read_pending_default() is called.
        self._default_pending = False

        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        self.combo = QComboBox()
        for key, text in _SOURCES:
            self.combo.addItem(text, key)
        self.load_button = QPushButton("Load…")
        self.load_button.setToolTip("Load a model file (.safetensors) saved by the Train "
                                    "widget or the command line.")
        row.addWidget(self.combo, 1)
        row.addWidget(self.load_button)
        layout.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(QLabel("Device"))
        self.device = DeviceChoice()
        row.addWidget(self.device, 1)
        layout.addLayout(row)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.label)

        self.combo.activated.connect(self._on_source_chosen)
        self.load_button.clicked.connect(self._load_dialog)
        bind(self, state.model_changed, self.refresh)

    def on_core_ready(self, *, read_default: bool = True) -> None:
        """Offer the shipped default model, and read it in the background if no model is set
        (now, or with ``read_default=False`` when :meth:`read_pending_default` is called).

        Called by the Score widget once the core (torch) is imported; also fills the device
        choice.
        """
        from ..core.detector import default_model_path

        self.device.fill()

        if default_model_path() is None:
            item = self.combo.model().item(2)
            item.setEnabled(False)
            item.setToolTip("No default model is installed with this copy of the plugin.")
        elif self.state.detector is None:
            if read_default:
                self.load_default_model_in_background()
            else:  # the owner calls read_pending_default() in a later turn
                self._default_pending = True
        self.refresh()

    def read_pending_default(self) -> bool:
        """Start reading the default model that :meth:`on_core_ready` left pending (unless a
        model was set meanwhile); True if it started."""
        pending, self._default_pending = self._default_pending, False
        if pending and self.state.detector is None:
            return self.load_default_model_in_background()
        self.refresh()
        return False

    def load_default_model_in_background(self) -> bool:
        """Read the shipped default model in a worker; it becomes active if no model is set.

        Returns False if there is no default model or it is already read or being read.
        """
        from ..core.detector import AnomalyDetector, default_model_path

        self._default_pending = False
        path = default_model_path()
        if path is None or self._default_model is not None or self._default_worker is not None:
            return False
        worker = create_worker(AnomalyDetector.load, path, device=self.device.spec(),
                               _ignore_errors=True, _start_thread=False)
        self._default_worker = worker
        worker.returned.connect(lambda detector: self._default_loaded(detector, path))
        worker.errored.connect(lambda exc: show_error(f"Could not load the default model: "
                                                      f"{exc}"))
        worker.finished.connect(self._default_done)
        worker.start()
        self.refresh()
        return True

    def _default_loaded(self, detector: AnomalyDetector, path: Path) -> None:
        self._default_model = detector
        if self.state.detector is None and not self.state.busy:
            self.state.set_active(detector, "default", path)

    def _default_done(self) -> None:
        self._default_worker = None
        self.refresh()

    def loading(self) -> bool:
        """True while the shipped default model is being read in the background (or is about
        to be: see :meth:`on_core_ready`)."""
        return self._default_worker is not None or self._default_pending

    def set_idle(self, idle: bool) -> None:
        """Allow changing the model only while nothing runs."""
        self.load_button.setEnabled(idle)
        self.combo.setEnabled(idle)
        self.device.setEnabled(idle)

    def _on_source_chosen(self, index: int) -> None:
        key = self.combo.itemData(index)
        if key == "trained":
            if self.state.trained is None:
                show_warning("No model has been trained in this session yet: use the 'Train "
                             "anomaly model' widget, or load a model file.")
                self.refresh()
                return
            self.state.set_active(self.state.trained, "trained")
        elif key == "file":
            if self._file_model is None:
                self._load_dialog()
            else:
                self.state.set_active(self._file_model[0], "file", self._file_model[1])
        elif key == "default":
            self.use_default_model()
        self.refresh()

    def _load_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load anomaly model", "",
                                              "Anomaly model (*.safetensors);;All files (*)")
        if path:
            self.load_model(path)
        else:
            self.refresh()

    def load_model(self, path: str | Path) -> bool:
        """Load a model file and make it the active model; False (notified) if it fails.

        A failed load leaves the active model unchanged.
        """
        if self.state.busy:
            show_warning(f"Wait until {self.state.status.value} has finished to change the "
                         "model.")
            return False
        from ..core.detector import AnomalyDetector

        path = Path(path)
        try:
            detector = AnomalyDetector.load(path, device=self.device.spec())
        except (ModelFileError, ValueError, OSError) as exc:
            show_error(f"Could not load the model: {exc}")
            self.refresh()
            return False
        self._file_model = (detector, path)
        self.state.set_active(detector, "file", path)
        return True

    def use_default_model(self, *, quiet: bool = False) -> bool:
        """Make the shipped default model the active one; False if there is none.

        Reads the file on the calling (GUI) thread if the background read has not finished:
        this is for an explicit choice of the user; opening the widget uses
        :meth:`load_default_model_in_background`.
        """
        from ..core.detector import AnomalyDetector, default_model_path

        path = default_model_path()
        if path is None:
            if not quiet:
                show_warning("No default model is installed with this copy of the plugin.")
            return False
        if self._default_model is None:
            try:
                self._default_model = AnomalyDetector.load(path, device=self.device.spec())
            except (ModelFileError, ValueError, OSError) as exc:
                if not quiet:
                    show_error(f"Could not load the default model: {exc}")
                return False
        self.state.set_active(self._default_model, "default", path)
        return True

    def refresh(self, *_: Any) -> None:
        """Show the active model's source in the combo and its summary in the label."""
        state = self.state
        keys = [self.combo.itemData(i) for i in range(self.combo.count())]
        if state.source in keys:
            self.combo.blockSignals(True)
            self.combo.setCurrentIndex(keys.index(state.source))
            self.combo.blockSignals(False)
        detector = state.detector
        if detector is None and self.loading():
            self.label.setText("<i>Loading the shipped default model…</i>")
        elif detector is None:
            self.label.setText("<i>No model yet.</i> Train one with <b>Train anomaly "
                               "model</b>, or load a model file.")
        else:
            summary = html.escape(detector.summary()).replace("\n", "<br>")
            self.label.setText(f"<b>{html.escape(state.describe())}</b><br>"
                               f"<small>{summary}</small>")
