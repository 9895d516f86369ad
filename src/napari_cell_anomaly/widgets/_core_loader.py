"""Load the core (PyTorch, scikit-learn) in a background thread, so docking a widget is instant.

napari imports a widget's module and builds the widget on the GUI thread when the user opens
the dock. Importing torch and scikit-learn there froze napari for 2-7 s (measured by
``benchmarks/responsiveness.py``). The widget modules therefore import only Qt, napari and
numpy at module level; the core is imported here, once per process, in a worker thread, and
the widgets finish setting up when it is ready (:func:`when_core_ready`).

Importing in another thread is not free for the GUI thread either: Python code shares the
GIL, and loading torch's largest shared library (~150 ms of relocation work) holds it
throughout. :func:`_preload_torch_libraries` loads those libraries first through the C
library's ``dlopen`` called via :mod:`ctypes`, which releases the GIL during the call; the
``import torch`` that follows finds them loaded. Where that is unavailable (not Linux or
macOS, an unusual torch layout) the step is skipped and torch loads as usual.

The same thread first imports :data:`GUI_MODULES` (pyqtgraph, for the plots, and pandas, for
napari's first Labels layer: ~0.2 s of the GUI thread each otherwise; the widgets build their
plots once the loader is done; then the other dock widget's modules), and after the core it
asks torch which devices there are (:func:`._device_choice.device_options`: starting a CUDA
driver can take a while), so the widgets' device choices are filled from a cached answer.
Then it imports :data:`WARM_MODULES` and freezes the objects alive then
(:func:`freeze_long_lived_objects`), and only then tells the widgets that the core is ready.
Every import of this thread waits while the GUI thread is in a long turn
(:mod:`._import_gate`), so that the loader does not make napari's own work (docking a
widget, drawing a frame) wait for the GIL.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import QWidget

from ._import_gate import GuiHeartbeat, yielding_to_gui

__all__ = ["CORE_MODULES", "GUI_MODULES", "WARM_MODULES", "core_ready", "load_core",
           "pause_gc", "when_core_ready"]

logger = logging.getLogger(__name__)

#: The modules the widgets need before they can train or score.
CORE_MODULES = (
    "napari_cell_anomaly.core.detector",
    "napari_cell_anomaly.core.training",
    "napari_cell_anomaly.core.density",
)
#: Widget-side modules imported first by the same thread (none creates a Qt object at import
#: time): pyqtgraph for the plots and pandas, which napari imports on the GUI thread when the
#: first Labels layer (an outline, a cells layer) is made (~0.2 s of the GUI thread each), and
#: the modules of both dock widgets (~30 ms each), so that opening the second dock finds them
#: imported. Not waited for by :func:`core_ready`: where the core was imported by someone
#: else, these are imported when first needed.
GUI_MODULES = ("pyqtgraph", "pandas", "napari_cell_anomaly.widgets._train",
               "napari_cell_anomaly.widgets._score")
#: Imported next, in the same background thread, before the widgets are told the core is
#: ready (:func:`when_core_ready`; :func:`core_ready` does not wait for them): torch's
#: optimisers import ``torch._dynamo`` on their first step (every ``torch.optim`` step and
#: ``zero_grad`` goes through it; a ~1 s stall of the first training step otherwise), and the
#: end of the first training imports the scikit-learn parts of the latent density (about 500
#: modules with scipy, joblib...: 0.9 s on a loaded machine, in the training thread, with the
#: collector's full passes on), which stalled the GUI thread meanwhile. Imported after the
#: objects were frozen (a training that imports them), their ~300,000 objects made every later
#: full collection longer (331-363 ms instead of ~270 after 20 results).
WARM_MODULES = ("torch._dynamo", "sklearn.decomposition", "sklearn.model_selection",
                "sklearn.neighbors", "sklearn.mixture")
#: Set this environment variable to ``1`` to keep the plugin from touching the garbage
#: collector: no pause while the core loads (:func:`pause_gc`), no freezing of the objects
#: that exist once it is loaded (:func:`freeze_long_lived_objects`).
KEEP_GC_ENV = "NAPARI_CELL_ANOMALY_KEEP_GC"

#: torch's shared libraries, largest first; loaded without the GIL before ``import torch``.
_TORCH_LIBRARIES = ("libtorch_cpu.so", "libtorch.so", "libtorch_python.so")

_lock = threading.Lock()
_loaded = threading.Event()
#: Set once the loader thread has imported, warmed up and frozen (see :func:`_run_loader`).
_finished = threading.Event()
_thread: threading.Thread | None = None


class _Notifier(QObject):
    """Carries the loader thread's news to the GUI thread (queued signals)."""

    ready = Signal()
    failed = Signal(object)
    finished = Signal()


_notifier: _Notifier | None = None


def core_ready() -> bool:
    """True once the core modules are imported (by :func:`load_core` or by anyone else)."""
    if not _loaded.is_set() and all(name in sys.modules for name in CORE_MODULES):
        _loaded.set()
    return _loaded.is_set()


def _preload_torch_libraries() -> None:
    """Load torch's large shared libraries with the GIL released (best effort)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None or sys.platform not in ("linux", "darwin"):
        return
    folder = Path(spec.origin).parent / "lib"
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    try:
        libc = ctypes.CDLL(None)
        dlopen = libc.dlopen
    except (OSError, AttributeError):
        return
    dlopen.restype = ctypes.c_void_p
    dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    # First what torch's own import loads first, with the same flags (its global OpenMP
    # runtime, RTLD_GLOBAL), so that the libraries resolve their symbols as in a plain import.
    global_deps = folder / f"libtorch_global_deps{suffix}"
    if not global_deps.is_file() or not dlopen(os.fsencode(global_deps),
                                                os.RTLD_NOW | os.RTLD_GLOBAL):
        return
    for name in _TORCH_LIBRARIES:
        path = folder / name.replace(".so", suffix)
        # A CDLL function call releases the GIL; RTLD_LOCAL as in torch's import of _C.
        if path.is_file() and not dlopen(os.fsencode(path), os.RTLD_NOW | os.RTLD_LOCAL):
            logger.debug("could not preload %s", path)


def load_core() -> None:
    """Import the widget-only and core modules in the calling thread and probe the devices,
    once per process (thread-safe)."""
    from ._device_choice import device_options

    with _lock:
        if core_ready():
            return
        for name in GUI_MODULES:
            importlib.import_module(name)
        if "torch" not in sys.modules:
            _preload_torch_libraries()
        for name in CORE_MODULES:
            importlib.import_module(name)
        device_options()
        _loaded.set()


def _warm_up() -> None:
    """Import :data:`WARM_MODULES`; failures are left for their real use to report."""
    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # only a warm-up
            logger.debug("could not pre-import %s", name, exc_info=True)


def freeze_long_lived_objects() -> bool:
    """Move every object that exists now into the garbage collector's permanent generation
    (:func:`gc.freeze`), unless :data:`KEEP_GC_ENV` is set to ``1``. Returns True if it did.

    Once napari, Qt, torch and the core are loaded, the process holds about 400,000 objects
    that live as long as it does; every full collection walks them all, and each stalled the
    GUI thread for about 400 ms on 2 cores (napari itself runs one whenever a layer is
    removed). Frozen, they are skipped: measured with ``benchmarks/responsiveness.py`` on an
    idle machine, one run each, the longest stall while training fell from 315 to 57 ms,
    rendering 20 results from 856 to 688 ms and closing a viewer from 0.44 to 0.20 s.
    Objects that were alive when frozen are never collected as cyclic garbage later.
    """
    if _keep_gc():
        return False
    gc.freeze()
    return True


def _keep_gc() -> bool:
    """True if :data:`KEEP_GC_ENV` asks the plugin to leave the garbage collector alone."""
    return os.environ.get(KEEP_GC_ENV, "").strip().lower() in ("1", "true", "yes")


def pause_gc() -> bool:
    """Switch the cyclic garbage collector off while the loader imports; True if it did.

    Importing torch, scikit-learn and the rest creates ~300,000 objects that live as long as
    the process; the collector's full passes over them during the import (four of 150-280 ms
    of CPU, measured on the loaded 2-core machine) ran in the loader thread holding the GIL,
    so the GUI thread froze for as long. They find almost nothing to free (10-400 objects
    each). The loader switches the collector back on once it has frozen those objects (see
    :func:`freeze_long_lived_objects`), a few seconds later. Nothing is done if the collector
    is already off, or if :data:`KEEP_GC_ENV` is ``1``.
    """
    if _keep_gc() or not gc.isenabled():
        return False
    gc.disable()
    return True


def _run_loader(notifier: _Notifier, heartbeat: GuiHeartbeat | None) -> None:
    """The loader thread: the core and the warm-up (with the collector paused,
    :func:`pause_gc`), the long-lived objects frozen (:func:`freeze_long_lived_objects`) and
    the collector back on, then the news to the GUI thread. All its imports wait for the GUI
    thread's free moments (:func:`._import_gate.yielding_to_gui`).

    The widgets wait for the warm-up too, so that nothing they make (a result layer, which
    only the cyclic collector can free once removed) exists when the objects are frozen.
    """
    paused = pause_gc()
    try:
        with yielding_to_gui(heartbeat):
            try:
                load_core()
            except Exception as exc:  # reported by the widgets; a thread cannot raise
                notifier.failed.emit(exc)
                return
            _warm_up()
        freeze_long_lived_objects()
    finally:
        if paused:
            gc.enable()
        notifier.finished.emit()
    _finished.set()
    notifier.ready.emit()


def _start_loader() -> _Notifier:
    """Start the background loader once per process; return the notifier of its news."""
    global _notifier, _thread
    if _notifier is None:
        _notifier = _Notifier()  # created on the GUI thread: its signals reach the GUI thread
    if _thread is None:
        heartbeat = GuiHeartbeat()  # on the GUI thread, as _start_loader is called there
        heartbeat.start()
        _notifier.finished.connect(heartbeat.stop)
        _thread = threading.Thread(target=_run_loader, args=(_notifier, heartbeat),
                                   name="napari-cell-anomaly core loader", daemon=True)
        _thread.start()
    return _notifier


def _settled() -> bool:
    """True when the widgets need not wait: the loader thread has finished, or none was
    needed (the core and the warm-up modules were imported by someone else)."""
    if _thread is None:
        return core_ready() and all(name in sys.modules for name in WARM_MODULES)
    return _finished.is_set()


def when_core_ready(widget: QWidget, callback: Callable[[], None],
                    on_error: Callable[[BaseException], None] | None = None, *,
                    after_paint: bool = False) -> None:
    """Call ``callback()`` on the GUI thread once the core is imported.

    At once (synchronously) if the loader has finished or was not needed (the core and
    :data:`WARM_MODULES` imported by someone else); otherwise when the background loader
    (started on first use) has imported them and frozen the long-lived objects
    (:func:`_run_loader`): the widgets make no layer before that freeze, which would keep
    the layer from ever being freed once removed. Nothing is called if ``widget`` was deleted
    meanwhile. With ``after_paint``, a loader not yet started is started only in the turn after
    ``widget`` is first painted (:func:`._common.after_first_paint`): a dock's constructor
    uses it so that the loader thread does not compete for the GIL with the turn in which
    napari docks and paints the widget.
    """
    if _settled():
        callback()
        return
    if after_paint and (_thread is None or not _thread.is_alive()):
        from ._common import after_first_paint

        after_first_paint(widget, lambda: when_core_ready(widget, callback, on_error))
        return
    notifier = _start_loader()
    alive = [True]
    widget.destroyed.connect(lambda *_: alive.__setitem__(0, False))

    def _ready() -> None:
        if alive[0]:
            callback()

    def _failed(exc: BaseException) -> None:
        if alive[0] and on_error is not None:
            on_error(exc)

    notifier.ready.connect(_ready, Qt.ConnectionType.QueuedConnection)
    notifier.failed.connect(_failed, Qt.ConnectionType.QueuedConnection)
    if _settled():  # the loader finished between the check above and the connections
        notifier.ready.disconnect(_ready)
        notifier.failed.disconnect(_failed)
        callback()
