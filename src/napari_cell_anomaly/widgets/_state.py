"""The small evented state shared by the Train and Score widgets of one viewer.

The widgets never talk to each other directly: the Train widget publishes the model it
trained here, the Score widget renders whatever model is active, and both enable or disable
their buttons from :attr:`ModelState.status`. One state per viewer (several viewers in one
process each get their own).
"""

from __future__ import annotations

import weakref
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psygnal import Signal

if TYPE_CHECKING:
    from ..core.detector import AnomalyDetector

__all__ = ["ModelState", "Status", "get_state"]


class Status(str, Enum):
    """What the plugin is doing for one viewer; only one long task runs at a time."""

    IDLE = "idle"
    TRAINING = "training"
    STOPPING = "stopping"
    SCORING = "scoring"


class ModelState:
    """Current task and models of one viewer.

    Attributes
    ----------
    status : Status
        The running task, or ``Status.IDLE``.
    trained : AnomalyDetector or None
        The model of the last training run in this viewer (kept when another model is active).
    detector : AnomalyDetector or None
        The active model, used for scoring.
    source : str
        Where the active model comes from: ``"trained"``, ``"file"`` or ``"default"``.
    path : pathlib.Path or None
        File of the active model when it was loaded or saved.
    """

    #: Emitted (no arguments) when the status changes.
    status_changed = Signal()
    #: Emitted (no arguments) when the active or the trained model changes.
    model_changed = Signal()

    def __init__(self) -> None:
        self.status = Status.IDLE
        self.trained: AnomalyDetector | None = None
        self.detector: AnomalyDetector | None = None
        self.source = ""
        self.path: Path | None = None

    @property
    def busy(self) -> bool:
        """True while a training or scoring task runs."""
        return self.status is not Status.IDLE

    def set_status(self, status: Status) -> None:
        """Change the task status and notify the widgets."""
        if status is not self.status:
            self.status = status
            self.status_changed.emit()

    def set_trained(self, detector: AnomalyDetector) -> None:
        """Publish a freshly trained model and make it the active one."""
        self.trained = detector
        self.set_active(detector, "trained", None)

    def set_active(self, detector: AnomalyDetector | None, source: str,
                   path: Path | None = None) -> None:
        """Make ``detector`` the model used for scoring."""
        self.detector = detector
        self.source = source if detector is not None else ""
        self.path = Path(path) if path is not None else None
        self.model_changed.emit()

    def describe(self) -> str:
        """One line naming the active model, e.g. ``model file 'cells.safetensors'``."""
        if self.detector is None:
            return "no model"
        if self.source == "trained":
            return "model trained in this session" + (
                f" (saved as {self.path.name!r})" if self.path else "")
        if self.source == "default":
            return "shipped default model"
        return f"model file {self.path.name!r}" if self.path else "model file"


_STATES: dict[int, ModelState] = {}


def get_state(viewer: Any) -> ModelState:
    """Return the state of ``viewer``, creating it on first use.

    The state lives as long as the viewer: it is dropped when the viewer is garbage
    collected, without keeping the viewer alive.
    """
    # napari hands plugin widgets a PublicOnlyProxy, a different object for each widget;
    # key the state by the viewer behind it so both widgets of a viewer share one state.
    viewer = getattr(viewer, "__wrapped__", viewer)
    key = id(viewer)
    state = _STATES.get(key)
    if state is None:
        state = _STATES[key] = ModelState()
        weakref.finalize(viewer, _STATES.pop, key, None)
    return state
