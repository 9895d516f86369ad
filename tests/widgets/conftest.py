"""Shared helpers of the widget tests: the plugin's name, timeouts, the notifications a user
saw, and a snapshot of the viewer's layers (to prove that nothing was changed or lost).

Test modules import the plain helpers with ``from conftest import ...`` (pytest puts this
folder on ``sys.path``); the ``notes`` fixture is found by pytest itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from napari.utils.notifications import Notification, NotificationSeverity, notification_manager

PLUGIN = "napari-cell-anomaly"
#: The plugin's key in a layer's metadata.
KEY = "napari_cell_anomaly"

#: Generous timeouts (ms) for a shared, slow CI machine.
TRAIN_TIMEOUT = 120_000
SCORE_TIMEOUT = 60_000


@pytest.fixture(scope="session", autouse=True)
def _core_loaded(qapp: Any) -> None:
    """Run the plugin's background core loader once, to its end, before the first widget
    test (its imports, warm-up and freeze, as in napari the first time a dock opens), so that
    no test depends on which test opened the first dock or on how long the loading takes."""
    import time

    from napari_cell_anomaly.widgets import _core_loader

    _core_loader._start_loader()
    deadline = time.monotonic() + TRAIN_TIMEOUT / 1000
    while not _core_loader._finished.is_set():
        assert time.monotonic() < deadline, "the plugin's core loader did not finish"
        qapp.processEvents()  # the loader's import gate waits for the GUI thread's turns
        time.sleep(0.005)
    qapp.processEvents()


@pytest.fixture(autouse=True)
def _user_pauses_after_each_test() -> Any:
    """After each test, the full garbage collection a scoring job postponed runs, as it does
    once the user pauses: no hold of the collector outlives the test that took it."""
    yield
    from napari_cell_anomaly.widgets import _gc_hold

    if _gc_hold._idle is not None and _gc_hold._idle.pending:
        _gc_hold._idle.collect()


@pytest.fixture
def notes() -> Callable[[], list[Notification]]:
    """Return a function listing the notifications shown since the test started.

    These are the real notifications napari's ``show_error``/``show_warning`` dispatched
    (nothing is mocked).
    """
    start = len(notification_manager.records)
    return lambda: list(notification_manager.records[start:])


def errors(notes: Callable[[], list[Notification]]) -> list[str]:
    """The texts of the error notifications among ``notes()``."""
    return [str(n.message) for n in notes() if n.severity == NotificationSeverity.ERROR]


def warnings_of(notes: Callable[[], list[Notification]]) -> list[str]:
    """The texts of the warning notifications among ``notes()``."""
    return [str(n.message) for n in notes() if n.severity == NotificationSeverity.WARNING]


def snapshot(viewer: Any) -> list[tuple[str, str, int, tuple, bytes]]:
    """Names, types, identities and content digests of every layer (to prove nothing moved)."""
    out = []
    for layer in viewer.layers:
        data = layer.data
        arr = np.asarray(data)
        digest = (hashlib.sha1(np.ascontiguousarray(arr).tobytes()).digest()
                  if arr.size < 5_000_000 else repr(arr.shape).encode())
        out.append((layer.name, type(layer).__name__, id(data), tuple(layer.scale), digest))
    return out
