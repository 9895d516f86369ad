"""The import gate: a background thread's imports wait while the GUI thread is in a long turn,
and never wait without bound. Real Qt event loop, real imports of modules written for the test.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from napari_cell_anomaly.widgets._import_gate import (
    LATE_MS,
    MAX_TIMEOUTS,
    MAX_WAIT_MS,
    GuiHeartbeat,
    yielding_to_gui,
)


@pytest.fixture
def module_dir(tmp_path: Path):
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))


def _write_module(folder: Path, name: str) -> str:
    (folder / f"{name}.py").write_text("VALUE = 42\n")
    return name


def _import_in_thread(heartbeat: GuiHeartbeat, name: str, done: dict) -> threading.Thread:
    def run() -> None:
        with yielding_to_gui(heartbeat) as gate:
            module = __import__(name)
        done.update(at=time.perf_counter(), value=module.VALUE, waits=gate.waits,
                    open=gate.open)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_imports_wait_for_the_end_of_a_long_gui_turn(qtbot, module_dir):
    heartbeat = GuiHeartbeat()
    heartbeat.start()
    qtbot.wait(50)  # the heartbeat ticks
    name = _write_module(module_dir, "gate_probe_busy")
    done: dict = {}
    # A long turn of the GUI thread: no ticks while it sleeps (the GIL is free meanwhile).
    time.sleep(2 * LATE_MS / 1000)
    thread = _import_in_thread(heartbeat, name, done)
    time.sleep(0.15)
    turn_ended = time.perf_counter()
    assert not done  # the import waited for the GUI thread, which was free of the GIL
    qtbot.waitUntil(lambda: bool(done), timeout=5000)
    thread.join()
    heartbeat.stop()
    assert done["value"] == 42 and done["at"] > turn_ended
    assert done["waits"] >= 1 and not done["open"]


def test_imports_go_through_while_the_gui_thread_is_free(qtbot, module_dir):
    heartbeat = GuiHeartbeat()
    heartbeat.start()
    qtbot.wait(50)
    done: dict = {}
    thread = _import_in_thread(heartbeat, _write_module(module_dir, "gate_probe_free"), done)
    qtbot.waitUntil(lambda: bool(done), timeout=5000)
    thread.join()
    heartbeat.stop()
    assert done["value"] == 42 and done["waits"] == 0


def test_a_gui_thread_that_never_ticks_delays_imports_a_bounded_time(qtbot, module_dir):
    heartbeat = GuiHeartbeat()  # never started: no event loop runs its timer
    heartbeat.last -= 1.0
    names = [_write_module(module_dir, f"gate_probe_stuck_{i}") for i in range(MAX_TIMEOUTS + 2)]
    results: dict = {}

    def run() -> None:
        start = time.perf_counter()
        with yielding_to_gui(heartbeat) as gate:
            for name in names:
                __import__(name)
        results.update(seconds=time.perf_counter() - start, open=gate.open, waits=gate.waits)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    # MAX_TIMEOUTS bounded waits, then the gate lets the other imports through.
    assert results["open"] and results["waits"] == MAX_TIMEOUTS
    wait_s = MAX_TIMEOUTS * MAX_WAIT_MS / 1000
    assert wait_s <= results["seconds"] < wait_s + 2.0


def test_the_gate_leaves_the_import_system_as_it_found_it(qtbot):
    before = list(sys.meta_path)
    heartbeat = GuiHeartbeat()
    with yielding_to_gui(heartbeat) as gate:
        assert sys.meta_path[0] is gate and sys.meta_path[1:] == before
    assert sys.meta_path == before
    with yielding_to_gui(None) as nothing:
        assert nothing is None and sys.meta_path == before
