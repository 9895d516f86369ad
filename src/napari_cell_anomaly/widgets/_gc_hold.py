"""Hold the garbage collector's full passes while a batch of results is added as layers.

Each napari layer added makes thousands of tracked objects (the layer, its vispy visual, its
controls), so while a batch of results is rendered Python's collector runs a full pass each
time the objects made since the last one reach a quarter of those that survived it: five
full passes while 20 results (40 layers) were added to a viewer of 20 images, each walking
every object not frozen (64 to 196 ms of the GUI thread, growing with the layers, on the
loaded 2-core machine, ``benchmarks/responsiveness.py``). While a hold is on, only the full
passes are postponed (the collector's third threshold is raised); the young generations are
still collected as usual, a few milliseconds each. When the last hold ends the thresholds are
restored. The postponed full pass still walks every object napari made (about 270 ms of the
GUI thread after 20 results on the idle 2-core machine): left to Python it fell on the user's
next action (the slider), and run right after the batch it stalled the first second of
looking at the results. :func:`collect_when_idle` therefore keeps the hold until the user
has left the GUI alone (no mouse or key input) for :data:`IDLE_MS`, then runs that one pass;
input restarts the wait, for at most :data:`MAX_WAIT_MS`, and the pass runs only if Python
would have run one by then (its generation-1 passes since the last full one over the third
threshold). A batch costs one full pass instead of one every few layers, and it falls in a
pause of the user's; a single image often costs none. Nothing is done if
:data:`~._core_loader.KEEP_GC_ENV` is set to ``1``.
"""

from __future__ import annotations

import gc
import time

from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QApplication

from ._core_loader import _keep_gc as keep_gc

__all__ = ["collect_when_idle", "hold_full_collections", "release_full_collections"]

#: The postponed full pass runs once the user has given no input for this long (ms).
IDLE_MS = 1000
#: ... or at the latest this long after the batch ended, even while she works (ms).
MAX_WAIT_MS = 30_000
#: What counts as the user's input.
_INPUT = frozenset({QEvent.Type.MouseButtonPress, QEvent.Type.MouseButtonRelease,
                    QEvent.Type.MouseMove, QEvent.Type.Wheel, QEvent.Type.KeyPress,
                    QEvent.Type.KeyRelease})

#: The third threshold while a hold is on: more young collections than a batch makes.
_HELD = 1 << 30

_holds = 0
_saved: tuple[int, ...] | None = None


def hold_full_collections() -> bool:
    """Postpone the collector's full passes until :func:`release_full_collections`.

    Holds nest (one per rendering widget); returns True if this call holds (False when the
    plugin is asked to leave the collector alone).
    """
    global _holds, _saved
    if keep_gc():
        return False
    if _holds == 0:
        _saved = gc.get_threshold()
        gc.set_threshold(_saved[0], _saved[1], _HELD)
    _holds += 1
    return True


def release_full_collections() -> None:
    """End one hold; the last one restores the collector's thresholds."""
    global _holds, _saved
    if _holds == 0:
        return
    _holds -= 1
    if _holds == 0 and _saved is not None:
        current = gc.get_threshold()
        if current[2] == _HELD:  # not changed by someone else meanwhile
            gc.set_threshold(current[0], current[1], _saved[2])
        _saved = None


class _IdleCollector(QObject):
    """Holds the full passes from the end of a batch until the user pauses, then runs one."""

    def __init__(self) -> None:
        super().__init__()
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(IDLE_MS)
        self.timer.timeout.connect(self.collect)
        self.since = 0.0
        self.pending = False

    def start(self) -> bool:
        app = QApplication.instance()
        if self.pending:
            self.timer.start()
            return True
        if app is None or not hold_full_collections():
            return False
        self.pending = True
        self.since = time.monotonic()
        app.installEventFilter(self)
        self.timer.start()
        return True

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if (event.type() in _INPUT
                and (time.monotonic() - self.since) * 1000.0 < MAX_WAIT_MS):
            self.timer.start()  # the user is at work: wait for her next pause
        return False

    def collect(self) -> None:
        if not self.pending:
            return
        self.pending = False
        self.timer.stop()
        app = QApplication.instance()
        if app is not None:
            app.removeEventFilter(self)
        release_full_collections()
        # no batch rendering meanwhile (its own end comes back here), and a full pass is due:
        # Python would have run one (more generation-1 passes since the last full one than
        # its threshold); a small job often leaves none due
        if _holds == 0 and gc.get_count()[2] > gc.get_threshold()[2]:
            gc.collect()


_idle: _IdleCollector | None = None


def collect_when_idle() -> bool:
    """Run the full pass a batch postponed once the user pauses (see the module docstring).

    Takes a hold of its own until then, so call it before releasing the batch's. Returns
    True if a pass is now pending (False when the plugin is asked to leave the collector
    alone, or there is no Qt application).
    """
    global _idle
    if _idle is None:
        _idle = _IdleCollector()
    return _idle.start()
