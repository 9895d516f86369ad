"""The pieces that split GUI work into short event-loop turns: napari's layer controls built
later (and whenever napari needs them first), the collector's full passes held while results
render, and work started after a dock's first paint. Real viewers under Xvfb; the timing
itself lives in benchmarks/render_turns.py."""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest
from qtpy.QtWidgets import QWidget

from napari_cell_anomaly.widgets import _gc_hold
from napari_cell_anomaly.widgets._common import after_first_paint
from napari_cell_anomaly.widgets._core_loader import KEEP_GC_ENV
from napari_cell_anomaly.widgets._layer_controls import DeferredControls
from napari_cell_anomaly.widgets._layers import keep_selection


def _controls(viewer):
    return viewer.window._qt_viewer.controls.widgets


def test_layer_controls_are_built_after_the_layer_or_when_napari_needs_them(
        make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    owner = QWidget()
    qtbot.addWidget(owner)
    base = viewer.add_image(np.zeros((32, 32), np.float32), name="base")
    deferred = DeferredControls(owner, viewer)
    assert deferred.active  # this napari has the container the plugin defers

    # Added as the Score widget adds its layers (napari does not select them).
    with deferred.deferring(), keep_selection(viewer):
        later = viewer.add_image(np.ones((32, 32), np.float32), name="later")
    assert later not in _controls(viewer) and deferred.pending()
    deferred.flush()
    assert later in _controls(viewer) and not deferred.pending()

    # Selected before the next turn: napari shows its controls, so they are built first.
    with deferred.deferring(), keep_selection(viewer):
        picked = viewer.add_labels(np.zeros((32, 32), np.uint8), name="picked")
    assert picked not in _controls(viewer)
    viewer.layers.selection.active = picked
    assert picked in _controls(viewer) and not deferred.pending()
    assert viewer.window._qt_viewer.controls.currentWidget() is _controls(viewer)[picked]

    # Removed before the next turn: napari deletes its controls, which must exist then.
    with deferred.deferring(), keep_selection(viewer):
        gone = viewer.add_image(np.ones((32, 32), np.float32), name="gone")
    assert gone not in _controls(viewer)
    viewer.layers.remove(gone)
    assert gone not in _controls(viewer) and not deferred.pending()
    assert [layer.name for layer in viewer.layers] == ["base", "later", "picked"]
    assert base in _controls(viewer)


def test_full_collections_are_held_while_rendering_then_restored(monkeypatch):
    monkeypatch.delenv(KEEP_GC_ENV, raising=False)
    before = gc.get_threshold()
    try:
        assert _gc_hold.hold_full_collections()
        held = gc.get_threshold()
        assert held[:2] == before[:2] and held[2] > 1000 * before[2]  # young ones as usual
        assert _gc_hold.hold_full_collections()  # a second widget rendering: nested
        _gc_hold.release_full_collections()
        assert gc.get_threshold() == held  # one hold left
        _gc_hold.release_full_collections()
        assert gc.get_threshold() == before
        _gc_hold.release_full_collections()  # more releases than holds: no effect
        assert gc.get_threshold() == before
        monkeypatch.setenv(KEEP_GC_ENV, "1")
        assert not _gc_hold.hold_full_collections()  # the user asked us to keep out
        assert gc.get_threshold() == before
    finally:
        gc.set_threshold(*before)


@pytest.fixture
def full_passes(monkeypatch):
    """The collector's full passes run while the test runs (a list, one entry per pass); the
    plugin may touch the collector; its thresholds are restored afterwards."""
    monkeypatch.delenv(KEEP_GC_ENV, raising=False)
    before = gc.get_threshold()
    full: list[dict] = []

    def count(phase, info):
        if phase == "stop" and info["generation"] == 2:
            full.append(info)

    gc.callbacks.append(count)
    try:
        yield full
    finally:
        gc.callbacks.remove(count)
        gc.set_threshold(*before)


def test_postponed_full_pass_waits_for_the_users_pause(qtbot, full_passes):
    before = gc.get_threshold()
    widget = QWidget()
    qtbot.addWidget(widget)
    assert _gc_hold.hold_full_collections()  # a batch renders, making objects enough
    made = _made_until_a_full_pass_is_due(before[2])
    assert _gc_hold.collect_when_idle()  # ... and ends
    _gc_hold.release_full_collections()
    assert gc.get_threshold()[2] > 1000 * before[2]  # still held until the pause
    # The user keeps working: each input restarts the wait.
    start = time.monotonic()
    for _ in range(4):
        qtbot.keyClick(widget, "a")
        qtbot.wait(50)
        assert not full_passes and _gc_hold._idle.pending
    # 4 x 50 ms of input and no pass yet; it runs IDLE_MS after the last key
    qtbot.waitUntil(lambda: not _gc_hold._idle.pending, timeout=5000)
    assert time.monotonic() - start >= _gc_hold.IDLE_MS / 1000
    assert len(full_passes) == 1  # one full pass, once she paused
    assert gc.get_threshold() == before
    del made


def _made_until_a_full_pass_is_due(threshold: int) -> list[list[int]]:
    """Make (and return, alive) tracked objects until Python's collector, were it not held,
    would have run a full pass: more generation-1 passes than its third ``threshold``."""
    made: list[list[int]] = []
    while gc.get_count()[2] <= threshold and len(made) < 10_000_000:
        made.extend([i] for i in range(10_000))
    return made


def test_postponed_full_pass_is_skipped_when_none_is_due(qtbot, full_passes):
    """A small job that made few objects: once the user pauses, no full pass is forced."""
    before = gc.get_threshold()
    gc.collect()  # nothing pending: the counts start from zero
    full_passes.clear()
    assert _gc_hold.hold_full_collections()
    assert _gc_hold.collect_when_idle()
    _gc_hold.release_full_collections()
    assert gc.get_count()[2] <= before[2]
    qtbot.waitUntil(lambda: not _gc_hold._idle.pending, timeout=5000)
    assert not full_passes and gc.get_threshold() == before


@pytest.mark.parametrize("shown", [True, False])
def test_after_first_paint_runs_once_after_the_paint_or_the_fallback(qtbot, shown):
    widget = QWidget()
    qtbot.addWidget(widget)
    calls = []
    after_first_paint(widget, lambda: calls.append(widget.isVisible()))
    if shown:
        widget.show()
        qtbot.waitExposed(widget)
    qtbot.waitUntil(lambda: bool(calls), timeout=2000)
    qtbot.wait(300)  # later paints, and the fallback timer, call nothing more
    widget.update()
    qtbot.wait(50)
    assert calls == [shown]


def test_after_first_paint_never_calls_into_a_deleted_widget(qtbot):
    widget = QWidget()
    calls = []
    after_first_paint(widget, lambda: calls.append(1))
    widget.deleteLater()
    qtbot.wait(400)  # past the fallback
    assert calls == []
