"""The GUI-thread promises that tests can check: closes end the workers, stop is immediate, the
default model loads in the background, jobs read private copies, imports stay light.

Real viewers, real workers, real (tiny) models. How long things take is measured by
``benchmarks/responsiveness.py``; here only the thread states and generous bounds are checked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest

from napari_cell_anomaly import KEEP_OMP_ENV
from napari_cell_anomaly._sample_data import normal_cells
from napari_cell_anomaly.core.detector import default_model_path
from napari_cell_anomaly.core.training import TrainConfig, run_training
from napari_cell_anomaly.widgets import Status, get_state

PLUGIN = "napari-cell-anomaly"
TINY = {"epochs": 4, "size": 32, "batch_size": 16, "lr": 5e-3, "seed": 0}
#: Far above the 1 s the shutdown waits at most, for a loaded test machine.
GENEROUS_CLOSE_S = 10.0


@pytest.fixture(scope="module")
def tiny_model() -> Any:
    return run_training([normal_cells()[0][0]], TrainConfig(**TINY))


def _big_fields(n: int = 3, side: int = 1024) -> list[np.ndarray]:
    field = normal_cells()[0][0]
    reps = -(-side // field.shape[0])
    return [np.roll(np.tile(field, (reps, reps, 1))[:side, :side], 97 * i, axis=1)
            for i in range(n)]


def _start_scoring(viewer: Any, qtbot: Any, detector: Any, images: list[np.ndarray]) -> Any:
    for i, image in enumerate(images):
        viewer.add_image(image, name=f"field {i}", rgb=True)
    _, score = viewer.window.add_plugin_dock_widget(PLUGIN, "Score images")
    get_state(viewer).set_active(detector, "trained")
    score.all_radio.setChecked(True)
    assert score.start_scoring()
    return score


def test_closing_the_viewer_while_training_ends_the_worker(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "normal_cells")
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train anomaly model")
    train.select_matching("normal")
    train.epochs.setValue(500)
    train.size.setValue(32)
    train.batch_size.setValue(16)
    qtbot.waitUntil(train.is_ready, timeout=120_000)  # the core and its warm-up loaded
    assert train.start_training()
    job = train._jobs.current
    qtbot.waitUntil(lambda: len(train.plot.train_x) >= 2, timeout=120_000)
    assert job.worker.is_running and train.state.status is Status.TRAINING
    start = time.perf_counter()
    viewer.close()
    assert time.perf_counter() - start < GENEROUS_CLOSE_S
    assert job.finished.is_set() and not job.worker.is_running  # ended before close returned
    assert get_state(viewer).trained is None  # the aborted job published nothing


def test_closing_the_viewer_while_scoring_ends_the_worker(make_napari_viewer, qtbot,
                                                           tiny_model):
    viewer = make_napari_viewer()
    score = _start_scoring(viewer, qtbot, tiny_model, _big_fields())
    job = score._jobs.current
    qtbot.waitUntil(lambda: job.worker.is_running, timeout=10_000)
    qtbot.wait(200)
    assert score.state.status is Status.SCORING  # inside the first 1024 x 1024 field
    start = time.perf_counter()
    viewer.close()
    assert time.perf_counter() - start < GENEROUS_CLOSE_S
    assert job.finished.is_set() and not job.worker.is_running


def test_stop_ends_scoring_inside_an_image(make_napari_viewer, qtbot, tiny_model):
    viewer = make_napari_viewer()
    score = _start_scoring(viewer, qtbot, tiny_model, _big_fields(n=2, side=1536))
    job = score._jobs.current
    qtbot.waitUntil(lambda: job.worker.is_running, timeout=10_000)
    qtbot.wait(200)
    assert score.state.status is Status.SCORING and score.table.rowCount() == 0
    score.stop_scoring()
    assert job.finished.wait(GENEROUS_CLOSE_S)  # ended between tiles, not after two images
    qtbot.waitUntil(lambda: score.state.status is Status.IDLE, timeout=10_000)
    assert score.table.rowCount() == 0  # the image being scored gave no (partial) result
    assert score.progress.format().startswith("stopped")


def test_jobs_read_a_private_copy_of_the_layers(make_napari_viewer, qtbot, tiny_model):
    viewer = make_napari_viewer()
    image = _big_fields(n=1, side=256)[0]
    expected = tiny_model.score(image.copy()).score
    score = _start_scoring(viewer, qtbot, tiny_model, [image])
    viewer.layers["field 0"].data[:] = 0  # the user edits the layer while it is scored
    qtbot.waitUntil(lambda: score.state.status is Status.IDLE, timeout=60_000)
    assert score.results()[0]["score"] == pytest.approx(expected)


@pytest.mark.skipif(default_model_path() is None, reason="no shipped default model installed")
def test_default_model_loads_in_the_background(make_napari_viewer, qtbot, tiny_model):
    viewer = make_napari_viewer()
    _, score = viewer.window.add_plugin_dock_widget(PLUGIN, "Score images")
    state = get_state(viewer)
    # The widget is built and usable before the model is read (that happens in a worker).
    assert score.model_box.loading() and state.detector is None
    assert "Loading the shipped default model" in score.model_label.text()
    score.all_radio.setChecked(True)
    assert score.all_radio.isChecked() and not score.score_button.isEnabled()
    qtbot.waitUntil(lambda: not score.model_box.loading(), timeout=60_000)
    assert state.source == "default" and score.score_button.isEnabled()

    # A model chosen while the default one loads is not replaced by it.
    state.set_active(None, "")
    score.model_box._default_model = None
    assert score.model_box.load_default_model_in_background()
    state.set_trained(tiny_model)
    qtbot.waitUntil(lambda: not score.model_box.loading(), timeout=60_000)
    assert state.detector is tiny_model and state.source == "trained"


def _run(code: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items()
            if k not in ("OMP_WAIT_POLICY", KEEP_OMP_ENV)}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, check=True,
                         capture_output=True, text=True, timeout=120)
    return out.stdout.strip()


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "PASSIVE"),  # the default: idle OpenMP threads sleep
    ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),  # a user's own value wins
    ({KEEP_OMP_ENV: "1"}, "unset"),  # the opt-out: the package sets nothing
])
def test_omp_wait_policy_default_and_opt_out(env, expected):
    code = ("import os, napari_cell_anomaly; "
            "print(os.environ.get('OMP_WAIT_POLICY', 'unset'))")
    assert _run(code, **env) == expected


def test_widget_modules_do_not_import_torch_sklearn_pyqtgraph_or_pandas():
    # napari imports the widget modules on its GUI thread; these load in the core loader's
    # thread (torch, scikit-learn, pyqtgraph) or where they are used (pandas).
    code = ("import sys, napari_cell_anomaly.widgets; "
            "print(sorted(m for m in ('torch', 'sklearn', 'pyqtgraph', 'pandas') "
            "if m in sys.modules))")
    assert _run(code) == "[]"


def test_a_result_is_rendered_one_layer_per_step(make_napari_viewer, tiny_model):
    viewer = make_napari_viewer()
    _, score = viewer.window.add_plugin_dock_widget(PLUGIN, "Score images")
    image = _big_fields(n=1, side=256)[0]
    source = viewer.add_image(image, name="field", rgb=True)
    result = tiny_model.score(image)
    steps = score.image_results.render_steps(source, result, tiny_model, reconstruction=True,
                                             outline=True)
    names = lambda: [ly.name for ly in viewer.layers]  # noqa: E731
    next(steps)  # the reconstruction, under what follows
    assert names() == ["field", "field reconstruction"] and not score.results()
    next(steps)  # the anomaly map and its table row
    assert names() == ["field", "field reconstruction", "field anomaly map"]
    assert [r["score"] for r in score.results()] == [result.score]
    with pytest.raises(StopIteration):  # the outline, last
        next(steps)
    assert names()[-1] == "field anomalous region"
    assert viewer.layers.selection.active is source  # the user's selection is kept


def test_scoring_stays_busy_until_every_result_is_shown(make_napari_viewer, qtbot,
                                                        tiny_model):
    viewer = make_napari_viewer()
    shown_at_idle: list[int] = []
    state = get_state(viewer)
    state.status_changed.connect(lambda: shown_at_idle.append(len(viewer.layers))
                                 if state.status is Status.IDLE else None)
    score = _start_scoring(viewer, qtbot, tiny_model, _big_fields(n=3, side=128))
    qtbot.waitUntil(lambda: state.status is Status.IDLE, timeout=60_000)
    # Results are shown one layer per event-loop turn after the worker sends them; the job
    # ends (status idle, Score enabled) only once the last is shown: 3 images, 3 maps and
    # 3 outlines.
    assert shown_at_idle == [9] and not score.rendering()
    assert sorted(r["layer"] for r in score.results()) == ["field 0", "field 1", "field 2"]


def test_freezing_long_lived_objects_can_be_turned_off(monkeypatch):
    import gc

    from napari_cell_anomaly.widgets._core_loader import KEEP_GC_ENV, freeze_long_lived_objects

    gc.unfreeze()
    try:
        monkeypatch.setenv(KEEP_GC_ENV, "1")
        assert not freeze_long_lived_objects()
        assert gc.get_freeze_count() == 0
        monkeypatch.delenv(KEEP_GC_ENV)
        assert freeze_long_lived_objects()
        assert gc.get_freeze_count() > 1000  # napari, Qt and the test run's objects
    finally:
        gc.unfreeze()


def test_pausing_the_collector_while_loading_can_be_turned_off(monkeypatch):
    import gc

    from napari_cell_anomaly.widgets._core_loader import KEEP_GC_ENV, pause_gc

    assert gc.isenabled()
    try:
        monkeypatch.setenv(KEEP_GC_ENV, "1")
        assert not pause_gc() and gc.isenabled()
        monkeypatch.delenv(KEEP_GC_ENV)
        assert pause_gc() and not gc.isenabled()
        assert not pause_gc()  # already off: not ours to switch back on
    finally:
        gc.enable()


def test_a_removed_result_layer_is_freed_after_a_batch(make_napari_viewer, qtbot, tiny_model):
    # napari layers are freed by the cyclic collector alone, so a result layer that the
    # loader's gc.freeze() caught would never be freed once the user removes it: the widget
    # is ready (here: its histogram is built) only after that freeze, and nothing freezes
    # objects after a batch.
    import gc
    import weakref

    from napari_cell_anomaly.widgets import _gc_hold
    from napari_cell_anomaly.widgets._layers import OUTLINE
    from napari_cell_anomaly.widgets._score_render import BATCH_ITEMS

    viewer = make_napari_viewer()
    for i, image in enumerate(_big_fields(n=BATCH_ITEMS, side=96)):
        viewer.add_image(image, name=f"field {i}", rgb=True)
    _, score = viewer.window.add_plugin_dock_widget(PLUGIN, "Score images")
    qtbot.waitUntil(lambda: score.hist is not None, timeout=60_000)
    state = get_state(viewer)
    state.set_active(tiny_model, "trained")
    score.all_radio.setChecked(True)
    assert score.start_scoring()
    qtbot.waitUntil(lambda: state.status is Status.IDLE, timeout=60_000)
    if _gc_hold._idle is not None and _gc_hold._idle.pending:
        _gc_hold._idle.collect()  # the postponed full pass, as once the user pauses
    outlines = [layer for layer in viewer.layers if layer.name.endswith(OUTLINE)]
    assert len(outlines) == BATCH_ITEMS
    layer_ref = weakref.ref(outlines[0])
    viewer.layers.remove(outlines[0])
    del outlines
    qtbot.wait(50)
    gc.collect()
    assert layer_ref() is None
