"""Helpers shared by the widgets: layer inspection, plugin-made layers, worker lifetime.

Nothing here computes anything about cells: it only moves arrays between napari layers and
the core, and keeps background workers from outliving their viewer.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Layer
from napari.utils.notifications import show_error
from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import QProgressBar, QWidget

if TYPE_CHECKING:
    import napari

__all__ = [
    "MAX_PIXELS",
    "PLUGIN_KEY",
    "SNAPSHOT_BYTES",
    "JobControl",
    "JobFailure",
    "JobSlot",
    "Plane",
    "ProgressBar",
    "after_first_paint",
    "bind",
    "find_own_layer",
    "format_seconds",
    "image_hw",
    "is_own_layer",
    "layer_key",
    "layer_planes",
    "own_planes",
    "report_error",
    "same_layer",
    "scoring_problem",
    "snapshot_planes",
    "watch_window_close",
]

logger = logging.getLogger(__name__)

#: Metadata key under which the plugin marks (and describes) the layers it makes.
PLUGIN_KEY = "napari_cell_anomaly"

#: In-memory image data (bytes, all planes of a job together) copied on the GUI thread when a
#: job starts, e.g. one 1024 x 1024 RGB uint8 plane; larger selections are copied by the worker
#: as its first step (see snapshot_planes). Copying twenty 512 x 512 RGB planes (16 MB) on the
#: GUI thread took 30-100 ms on a loaded 2-core machine (fresh pages to fault in).
SNAPSHOT_BYTES = 4 * 2**20

#: Largest image (height x width) the Score widget accepts: the maps and the reconstruction it
#: adds as layers take about 20 bytes per pixel.
MAX_PIXELS = 50_000_000


# ------------------------------------------------------------------------------------------
# layers
# ------------------------------------------------------------------------------------------
def image_hw(layer: Image) -> tuple[int, ...]:
    """The displayed (non-channel) shape of an image layer, e.g. ``(Z, H, W)``."""
    return tuple(int(s) for s in layer.data.shape[: layer.ndim]) if not layer.multiscale \
        else tuple(int(s) for s in layer.data[0].shape[: layer.ndim])


def layer_key(layer: Layer) -> str:
    """A stable identity for a layer.

    Plugin widgets see layers through napari's ``PublicOnlyProxy``, a new wrapper object on
    every access, so ``is`` and ``id()`` cannot be used to recognise a layer.
    """
    return str(layer.unique_id)


def same_layer(a: Layer | None, b: Layer | None) -> bool:
    """True if ``a`` and ``b`` are the same layer (through proxies or not)."""
    return a is not None and b is not None and layer_key(a) == layer_key(b)


def is_own_layer(layer: Layer) -> bool:
    """True for layers this plugin made (anomaly maps, reconstructions, outlines)."""
    return isinstance(layer.metadata.get(PLUGIN_KEY), dict)


def find_own_layer(viewer: napari.Viewer, role: str, source: Layer) -> Layer | None:
    """The layer with ``role`` the plugin made earlier for ``source``, if still in the viewer.

    Matches the source layer's unique id first (survives renames), then its name (layers
    made by an earlier widget or session).
    """
    source_id = layer_key(source)
    by_name = None
    for layer in viewer.layers:
        meta = layer.metadata.get(PLUGIN_KEY)
        if not isinstance(meta, dict) or meta.get("role") != role:
            continue
        if meta.get("source_id") == source_id:
            return layer
        if by_name is None and meta.get("source") == source.name:
            by_name = layer
    return by_name


def layer_planes(layer: Image) -> Iterator[tuple[str, Any]]:
    """Yield ``(name, plane)`` for every 2-D plane of an image layer.

    A 2-D layer yields itself; a stack ``(Z, H, W)`` (or ``(Z, H, W, 3)`` RGB, or more leading
    axes) yields one plane per index, named ``"<layer> [z]"``. Planes stay lazy (dask or zarr
    data is only read by whoever calls ``np.asarray`` on them, i.e. the worker thread).
    """
    data = layer.data
    lead = tuple(data.shape[: layer.ndim - 2])
    if not lead:
        yield layer.name, data
        return
    for index in np.ndindex(*lead):
        label = ", ".join(str(i) for i in index)
        yield f"{layer.name} [{label}]", data[index]


@dataclass
class Plane:
    """One 2-D image handed to a worker: its name, its data, and whether the data is private.

    ``owned`` is True when ``data`` is a copy no one else holds; otherwise ``data`` is still
    the layer's array (or a lazy dask / zarr array, which napari never edits in place).
    """

    name: str
    data: Any
    owned: bool = False


def snapshot_planes(items: Sequence[tuple[str, Any]]) -> list[Plane]:
    """Copy the in-memory image data of a job on the GUI thread when that is cheap.

    Workers must not read arrays the user can change while they run. In-memory (numpy)
    planes are copied here when they add up to at most :data:`SNAPSHOT_BYTES`; a larger
    selection is copied by the worker as its first step (:func:`own_planes`), so the GUI
    thread never spends more than a few milliseconds on it. Lazy arrays are never copied
    here: reading them is I/O, done in the worker.
    """
    in_memory = sum(int(data.nbytes) for _, data in items if isinstance(data, np.ndarray))
    copy_now = in_memory <= SNAPSHOT_BYTES
    return [Plane(name, np.array(data, copy=True), True)
            if copy_now and isinstance(data, np.ndarray) else Plane(name, data)
            for name, data in items]


def own_planes(planes: Sequence[Plane]) -> None:
    """Worker side of :func:`snapshot_planes`: copy the in-memory planes not yet copied.

    Called first thing in a job, so edits the user makes to a layer after that do not reach
    the job; lazy planes stay lazy and are read when used.
    """
    for plane in planes:
        if not plane.owned and isinstance(plane.data, np.ndarray):
            plane.data = np.array(plane.data, copy=True)
            plane.owned = True


def scoring_problem(layer: Layer) -> str | None:
    """Why ``layer`` cannot be scored, as one sentence; None if it can."""
    name = repr(layer.name)
    if not isinstance(layer, Image):
        return f"{name} is a {type(layer).__name__} layer, not an image"
    if is_own_layer(layer):
        role = layer.metadata[PLUGIN_KEY].get("role", "result")
        return f"{name} is an {role} made by this plugin, not a microscopy image"
    if layer.multiscale:
        return (f"{name} is a multiscale (pyramid) image; open one resolution level as a "
                "plain image to score it")
    shape = image_hw(layer)
    if len(shape) > 3:
        return (f"{name} is a {len(shape)}-D array of shape {shape}; scoring takes 2-D images "
                "and stacks of 2-D planes (one z or t axis): split or project the extra axes "
                "first")
    pixels = shape[-2] * shape[-1]
    if pixels > MAX_PIXELS:
        return (f"{name} is {shape[-2]}x{shape[-1]} pixels ({pixels / 1e6:.0f} Mpx); the "
                f"plugin scores images up to {MAX_PIXELS / 1e6:.0f} Mpx: crop or downsample it")
    return None


# ------------------------------------------------------------------------------------------
# messages
# ------------------------------------------------------------------------------------------
class ProgressBar(QProgressBar):
    """A :class:`QProgressBar` whose :meth:`setValue` asks for an ordinary (queued) repaint.

    Qt's ``QProgressBar.setValue`` repaints the bar at once (``repaint()``), and a synchronous
    repaint flushes every dirty region of the window with it: while results are added as
    layers, that painted napari's layer list (its icons are drawn from SVG) inside the same
    event-loop turn as the layer, doubling the turn. Here the bar is repainted with the rest
    of the window, in its next paint event.
    """

    def setValue(self, value: int) -> None:
        self.setUpdatesEnabled(False)  # repaint() does nothing while updates are off
        try:
            super().setValue(value)
        finally:
            self.setUpdatesEnabled(True)  # schedules an ordinary update()


def format_seconds(seconds: float) -> str:
    """``75.2`` -> ``"1:15"``; ``3725`` -> ``"1:02:05"``."""
    s = max(0, round(float(seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def report_error(what: str, exc: BaseException) -> None:
    """Show a worker's exception as one notification, never as a traceback dialog.

    The core's input errors (``ImageError``, ``ValueError``, ``ModelFileError``) carry a
    one-line message meant for users and are shown as is; anything else is unexpected, so its
    traceback also goes to the log.
    """
    from ..core.modelfile import ModelFileError

    if isinstance(exc, (ValueError, ModelFileError)):
        show_error(f"{what}: {exc}")
        return
    logger.error("%s", what, exc_info=(type(exc), exc, exc.__traceback__))
    show_error(f"{what}: unexpected {type(exc).__name__}: {exc}")


# ------------------------------------------------------------------------------------------
# worker lifetime
# ------------------------------------------------------------------------------------------
class JobFailure(Exception):
    """An unexpected error inside a worker, re-raised under a type the worker reports.

    superqt silently drops a ``RuntimeError`` raised in a worker (it takes it for "worker
    deleted") without emitting ``errored`` or ``finished``, which would leave the widgets
    believing the job still runs; torch raises ``RuntimeError`` for most of its errors.
    """


class JobControl:
    """Flags shared between a widget (GUI thread) and its worker's generator.

    ``stop`` asks the job to finish cleanly (training keeps its best checkpoint; scoring ends
    between batches of tiles); ``abort`` asks it to return at once, used when the viewer
    closes. :meth:`shutdown` sets both and waits, without polling and for at most a second,
    until the worker thread has left the job, so closing a viewer neither freezes napari nor
    leaves torch running against deleted widgets.
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.abort = threading.Event()
        #: Set from the worker thread itself once the worker has finished (see ``worker``).
        self.finished = threading.Event()
        self._worker: Any = None

    @property
    def worker(self) -> Any:
        """The napari worker running the job (None before it is attached)."""
        return self._worker

    @worker.setter
    def worker(self, worker: Any) -> None:
        self._worker = worker
        self.finished.clear()
        # A direct connection runs in the worker thread, so the flag is set even while the
        # GUI thread is blocked in shutdown() (a queued signal would wait for it).
        worker.finished.connect(self.finished.set, Qt.ConnectionType.DirectConnection)

    def running(self) -> bool:
        """True while the worker thread is inside the job."""
        return self._worker is not None and bool(self._worker.is_running)

    def shutdown(self, *_: Any, timeout: float = 1.0) -> bool:
        """Abort the job and wait up to ``timeout`` seconds; True if its thread has ended.

        The jobs check the flags between training steps and between batches of tiles, so
        they normally end within one step. A job still inside a step that takes longer
        (e.g. fitting the latent density) is left to finish on its own: its results are
        dropped, as ``abort`` is set.
        """
        self.stop.set()
        self.abort.set()
        worker = self._worker
        if worker is None:
            return True
        worker.quit()
        if not worker.is_running and not self.finished.is_set():
            return True  # attached but never started (or already gone)
        if self.finished.wait(timeout):
            return True
        logger.warning("napari-cell-anomaly: a worker is still finishing its current step; "
                       "it will end on its own")
        return False


class JobSlot:
    """The current :class:`JobControl` of a widget, as a plain (non-Qt) object.

    Widgets connect ``destroyed`` signals to :meth:`shutdown`; since the slot holds no
    reference to the widget, it is safe to call while Qt deletes the widget tree.
    """

    def __init__(self) -> None:
        self.current = JobControl()

    def shutdown(self, *_: Any) -> None:
        """Abort the current job and wait (at most a second) for its thread to end."""
        self.current.shutdown()


class _WindowWatcher(QObject):
    """Connects the ``destroyed`` signal of a widget's top-level window to a shutdown slot.

    The top-level window is only known once the widget is docked, so the watcher looks for it
    whenever the widget is re-parented or shown.
    """

    def __init__(self, widget: QWidget, jobs: JobSlot) -> None:
        super().__init__(widget)
        self._jobs = jobs
        self._watched: set[int] = set()
        widget.installEventFilter(self)
        widget.destroyed.connect(jobs.shutdown)
        self._connect(widget)

    def _connect(self, widget: QWidget) -> None:
        top = widget
        while top.parentWidget() is not None:
            top = top.parentWidget()
        if top is not widget and id(top) not in self._watched:
            self._watched.add(id(top))
            top.destroyed.connect(self._jobs.shutdown)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if event.type() in (QEvent.Type.ParentChange, QEvent.Type.Show) and isinstance(
                obj, QWidget):
            self._connect(obj)
        return False


def watch_window_close(widget: QWidget, jobs: JobSlot) -> None:
    """Abort ``jobs`` (and wait for its thread) when the viewer window or the widget goes away.

    Slots hold only the :class:`JobSlot`, so they are safe to run while Qt deletes widgets.
    """
    _WindowWatcher(widget, jobs)


#: How long :func:`after_first_paint` waits for a paint that may never come (a hidden window).
FIRST_PAINT_FALLBACK_MS = 200


class _FirstPaint(QObject):
    """Calls back once, in the event-loop turn after ``widget``'s first paint (or after
    :data:`FIRST_PAINT_FALLBACK_MS` if it is not painted by then)."""

    def __init__(self, widget: QWidget, callback: Callable[[], None]) -> None:
        super().__init__(widget)  # deleted with the widget: no call after it is gone
        self._callback: Callable[[], None] | None = callback
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._fire)
        self._timer.start(FIRST_PAINT_FALLBACK_MS)
        widget.installEventFilter(self)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Paint and self._callback is not None:
            self._timer.start(0)  # once this paint (and the rest of this turn) is done
        return False

    def _fire(self) -> None:
        callback, self._callback = self._callback, None
        parent = self.parent()
        if parent is not None:
            parent.removeEventFilter(self)
        if callback is not None:
            callback()


def after_first_paint(widget: QWidget, callback: Callable[[], None]) -> None:
    """Call ``callback()`` on the GUI thread in the turn after ``widget`` is first painted.

    A dock's constructor uses it for work that would otherwise share the event-loop turn in
    which napari docks and paints the widget (building plots, starting background threads
    that compete with that turn for the GIL). If the widget is not painted within
    :data:`FIRST_PAINT_FALLBACK_MS` (a viewer whose window is not shown), it is called then;
    never if the widget is deleted first.
    """
    _FirstPaint(widget, callback)


def bind(widget: QObject, signal: Any, slot: Any) -> None:
    """Connect a non-Qt signal (psygnal or napari event) to a widget's method, until the
    widget's C++ object is destroyed.

    Qt drops connections to deleted widgets by itself; psygnal and napari only drop them when
    the Python object dies, which may be later. Without this, closing a dock widget and then,
    say, removing a layer would call into a deleted widget.
    """
    signal.connect(slot)
    ref = weakref.WeakMethod(slot)

    def _drop(*_: Any) -> None:
        method = ref()
        if method is not None:
            with contextlib.suppress(Exception):
                signal.disconnect(method)

    widget.destroyed.connect(_drop)
