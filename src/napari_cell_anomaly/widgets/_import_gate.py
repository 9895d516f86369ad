"""Let the GUI thread go first while a background thread imports modules.

The plugin's background loader (:mod:`._core_loader`) imports about 3,000 modules (torch,
scikit-learn, scipy, sympy through ``torch._dynamo``...). Python code in two threads shares
the GIL: while the loader runs, every time napari's GUI thread needs the GIL back (each call
from Qt's C++ into Python: an ``event``, an ``eventFilter``, sip's check for a Python
override of a virtual method; each return from a blocking call: an X11 round trip, a software
OpenGL frame) it waits up to the interpreter's switch interval (5 ms) for the loader to let
go, and then shares the GIL with it. Sampled with ``py-spy --native --idle`` while the Score
widget opened during the loader's warm-up, the GUI thread's stacks ended in
``pthread_cond_timedwait`` (the GIL wait) under ``sip_api_is_py_method``,
``_QtMainWindow.event`` / ``eventFilter`` and ``time.sleep``; a turn of 40-60 ms of GUI CPU
then took 190-220 ms.

:class:`GuiHeartbeat` is a timer on the GUI thread that notes the time of each of its ticks
(every :data:`BEAT_MS`); a tick that is late means the GUI thread is busy in a long turn.
:func:`yielding_to_gui` installs an import hook (:class:`ImportGate`, a finder at the head of
:data:`sys.meta_path` that finds nothing itself) that, in the loader thread only, waits
before each module is loaded until the GUI thread has ticked within :data:`LATE_MS`: the
loader's imports pause while the GUI works and resume between its turns. The longest pieces
of work it cannot split are single modules (42 ms at most among the warm-up's ~1,500,
measured on the loaded machine).

Waiting is bounded: at most :data:`MAX_WAIT_MS` at a time, and never while the GUI thread
itself is blocked in the import system (it may wait for a module the loader is importing:
the two would otherwise wait for each other); after :data:`MAX_TIMEOUTS` waits ran out the
gate lets the rest of the imports through.
"""

from __future__ import annotations

import importlib.abc
import logging
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.machinery import ModuleSpec
from types import ModuleType

from qtpy.QtCore import QObject, QTimer

__all__ = ["BEAT_MS", "LATE_MS", "MAX_TIMEOUTS", "MAX_WAIT_MS", "GuiHeartbeat", "ImportGate",
           "yielding_to_gui"]

logger = logging.getLogger(__name__)

#: The heartbeat timer's interval on the GUI thread (ms).
BEAT_MS = 5
#: The GUI thread counts as busy when it has not ticked for this long (ms).
LATE_MS = 20
#: The longest the loader waits for the GUI at one module (ms); after :data:`MAX_TIMEOUTS`
#: such waits the gate opens for good.
MAX_WAIT_MS = 250
#: Waits that ran out before the gate opens for good (a GUI thread starved of cores on a
#: loaded machine can miss its ticks for that long without waiting for the loader).
MAX_TIMEOUTS = 3
#: How often a waiting loader looks again (ms); it holds no GIL meanwhile.
_POLL_MS = 2


class GuiHeartbeat(QObject):
    """Notes when the GUI thread last ran its event loop (create it on the GUI thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.last = time.perf_counter()
        self.gui_thread = threading.get_ident()
        self._timer = QTimer(self)
        self._timer.setInterval(BEAT_MS)
        self._timer.timeout.connect(self._beat)

    def _beat(self) -> None:
        self.last = time.perf_counter()

    def start(self) -> None:
        self.last = time.perf_counter()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def gui_is_busy(self) -> bool:
        """True if the GUI thread has not ticked for :data:`LATE_MS`."""
        return (time.perf_counter() - self.last) * 1000.0 > LATE_MS


def _in_import_system(thread_id: int) -> bool:
    """True if that thread's innermost Python frame is in importlib (e.g. a module lock)."""
    frame = sys._current_frames().get(thread_id)
    return frame is not None and frame.f_code.co_filename.startswith("<frozen importlib")


class ImportGate(importlib.abc.MetaPathFinder):
    """A finder that finds nothing; in one thread it first waits for the GUI (see module)."""

    def __init__(self, heartbeat: GuiHeartbeat, thread_id: int) -> None:
        self.heartbeat = heartbeat
        self.thread_id = thread_id
        self.open = False
        self.timeouts = 0
        self.waits = 0
        self.waited_s = 0.0

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if not self.open and threading.get_ident() == self.thread_id:
            self.wait()
        return None

    def wait(self) -> None:
        """Wait until the GUI thread is free (bounded: see the module docstring)."""
        if not self.heartbeat.gui_is_busy():
            return
        start = time.perf_counter()
        self.waits += 1
        while self.heartbeat.gui_is_busy():
            if _in_import_system(self.heartbeat.gui_thread):
                break
            if (time.perf_counter() - start) * 1000.0 > MAX_WAIT_MS:
                self.timeouts += 1
                if self.timeouts >= MAX_TIMEOUTS:
                    self.open = True
                    logger.debug("import gate: the GUI thread stayed busy; imports go through")
                break
            time.sleep(_POLL_MS / 1000.0)
        self.waited_s += time.perf_counter() - start


@contextmanager
def yielding_to_gui(heartbeat: GuiHeartbeat | None) -> Iterator[ImportGate | None]:
    """While the ``with`` body runs, the calling thread's imports wait for a free GUI thread.

    Nothing is done when ``heartbeat`` is None (no GUI thread to yield to).
    """
    if heartbeat is None:
        yield None
        return
    gate = ImportGate(heartbeat, threading.get_ident())
    sys.meta_path.insert(0, gate)
    try:
        yield gate
    finally:
        try:
            sys.meta_path.remove(gate)
        except ValueError:  # someone rebuilt sys.meta_path meanwhile
            pass
        if gate.waits:
            logger.debug("import gate: waited %d times, %.2f s in all", gate.waits,
                         gate.waited_s)
