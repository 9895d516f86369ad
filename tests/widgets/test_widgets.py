"""GUI tests of the Train and Score widgets.

Real napari viewers, the plugin's real manifest (sample data and widgets are opened through
napari), real ``thread_worker`` threads and the real core: nothing is mocked. Notifications
are read from napari's notification manager, i.e. what a user would see.
"""

from __future__ import annotations

import csv
import time
from typing import Any

import numpy as np
import pytest
from napari.layers import Image, Labels
from qtpy.QtCore import Qt, QTimer

from conftest import KEY, PLUGIN, SCORE_TIMEOUT, TRAIN_TIMEOUT, snapshot
from conftest import errors as _errors
from conftest import warnings_of as _warnings
from napari_cell_anomaly._sample_data import anomalous_cells, normal_cells
from napari_cell_anomaly.core.detector import AnomalyDetector, default_model_path
from napari_cell_anomaly.core.sample import make_cells
from napari_cell_anomaly.core.training import TrainConfig, run_training
from napari_cell_anomaly.widgets import ScoreWidget, Status, TrainWidget, get_state

#: Smallest training that still gives a meaningful anomaly map on the sample field: about 16
#: steps of 16 patches of 32 px (a few seconds on two CPU cores).
TINY = {"epochs": 4, "size": 32, "batch_size": 16, "lr": 5e-3, "seed": 0}


@pytest.fixture(scope="session")
def normal_field() -> np.ndarray:
    return normal_cells()[0][0]


@pytest.fixture(scope="session")
def anomalous_field() -> tuple[np.ndarray, np.ndarray]:
    (image, _, _), (mask, _, _) = anomalous_cells()
    return image, mask.astype(bool)


@pytest.fixture(scope="session")
def tiny_detector(normal_field: np.ndarray) -> Any:
    """A detector trained once, with the core directly, for tests that only need *a* model."""
    return run_training([normal_field], TrainConfig(**TINY))


def set_tiny(widget: Any, **overrides: Any) -> None:
    """Put the TINY settings (and ``overrides``) into a Train widget's controls."""
    values = {**TINY, **overrides}
    widget.epochs.setValue(values["epochs"])
    widget.size.setValue(values["size"])
    widget.batch_size.setValue(values["batch_size"])
    widget.lr.setValue(values["lr"])
    widget.seed.setValue(values["seed"])
    if "mode" in values:
        widget.mode.setCurrentIndex(widget.mode.findData(values["mode"]))
    if "robust" in values:
        widget.robust.setChecked(values["robust"])


def _open_samples(viewer):
    viewer.open_sample(PLUGIN, "normal_cells")
    viewer.open_sample(PLUGIN, "anomalous_cells")


def _docks(viewer):
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train anomaly model")
    _, score = viewer.window.add_plugin_dock_widget(PLUGIN, "Score images")
    return train, score


def _score_dock(viewer):
    return viewer.window.add_plugin_dock_widget(PLUGIN, "Score images")[1]


def _wait_idle(qtbot, state, timeout):
    qtbot.waitUntil(lambda: state.status is Status.IDLE, timeout=timeout)


def _click_row(qtbot, table, row):
    rect = table.visualItemRect(table.item(row, 1))
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


# ------------------------------------------------------------------------------------------
# manifest, sample data, layer list
# ------------------------------------------------------------------------------------------
def test_manifest_contributions():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest(PLUGIN)
    assert manifest.display_name == "Cell Anomaly"
    widgets = {w.display_name for w in manifest.contributions.widgets}
    assert widgets == {"Train anomaly model", "Score images"}
    samples = {s.display_name for s in manifest.contributions.sample_data}
    assert samples == {"Synthetic normal cells", "Synthetic cells with anomalies",
                       "Synthetic fluorescence nuclei (normal)",
                       "Synthetic fluorescence nuclei with anomalies"}


def test_sample_data_through_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    _open_samples(viewer)
    names = [layer.name for layer in viewer.layers]
    assert names == ["normal cells", "cells with anomalies", "planted anomalies (ground truth)"]
    image, truth = viewer.layers["cells with anomalies"], viewer.layers[2]
    assert isinstance(image, Image) and image.rgb and image.data.dtype == np.uint8
    assert isinstance(truth, Labels) and truth.data.shape == image.data.shape[:2]
    assert 0 < truth.data.sum() < 0.05 * truth.data.size  # small stains in some cells
    assert viewer.layers["normal cells"].data.shape == image.data.shape


def test_layer_list_follows_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train anomaly model")
    rng = np.random.default_rng(0)
    viewer.add_image(rng.random((40, 40)), name="ctrl 1")
    viewer.add_image(rng.random((5, 40, 40)), name="ctrl stack")
    viewer.add_image(rng.random((40, 40)), name="treated")
    viewer.add_labels(np.zeros((40, 40), np.uint8), name="masks")
    items = lambda: [train.layer_list.item(i).text() for i in range(train.layer_list.count())]  # noqa: E731
    assert items() == ["ctrl 1", "ctrl stack  (5 planes)", "treated"]  # no Labels layer

    train.name_filter.setText("CTRL")  # select all matching, case-insensitive
    assert [ly.name for ly in train.selected_layers()] == ["ctrl 1", "ctrl stack"]
    assert "2 layers (6 images)" in train.selection_label.text()

    viewer.layers["ctrl 1"].name = "control 1"  # rename keeps the selection
    assert items()[0] == "control 1"
    assert [ly.name for ly in train.selected_layers()] == ["control 1", "ctrl stack"]
    viewer.layers.remove("ctrl stack")
    assert items() == ["control 1", "treated"]
    assert [ly.name for ly in train.selected_layers()] == ["control 1"]


# ------------------------------------------------------------------------------------------
# the main workflow: train -> score -> rescore -> table -> export -> save
# ------------------------------------------------------------------------------------------
def test_train_then_score_workflow(make_napari_viewer, qtbot, notes, tmp_path):
    viewer = make_napari_viewer()
    _open_samples(viewer)
    target = viewer.layers["cells with anomalies"]
    target.scale = (0.5, 0.25)
    target.translate = (10.0, -4.0)
    train, score = _docks(viewer)
    assert isinstance(train, TrainWidget) and isinstance(score, ScoreWidget)
    assert train.state is score.state is get_state(viewer)
    # Without a shipped default model there is nothing to score with yet; with one, it is
    # read in the background and then enables Score.
    qtbot.waitUntil(lambda: not score.model_box.loading(), timeout=SCORE_TIMEOUT)
    assert score.score_button.isEnabled() == (default_model_path() is not None)

    train.name_filter.setText("normal")
    assert [ly.name for ly in train.selected_layers()] == ["normal cells"]
    set_tiny(train)
    before = snapshot(viewer)

    # The GUI must stay responsive while torch trains in the worker thread: a 20 ms timer
    # keeps ticking (a frozen GUI would not tick until training ended). How long the gaps
    # are is measured by benchmarks/responsiveness.py, not asserted here.
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)

    qtbot.mouseClick(train.train_button, Qt.MouseButton.LeftButton)
    state = train.state
    assert state.status is Status.TRAINING
    assert not train.train_button.isEnabled() and train.stop_button.isEnabled()
    assert not score.score_button.isEnabled()
    # A second press while training runs is refused; nothing else starts.
    worker = train._jobs.current.worker
    assert train.start_training() is False
    assert train._jobs.current.worker is worker
    assert any("already running" in w for w in _warnings(notes))

    qtbot.waitUntil(lambda: len(train.plot.train_x) >= 2, timeout=TRAIN_TIMEOUT)
    assert "elapsed" in train.status_label.text() and "left" in train.status_label.text()
    _wait_idle(qtbot, state, TRAIN_TIMEOUT)
    timer.stop()
    assert len(train.plot.train_x) >= 2 and len(ticks) >= 3  # the loop ran while training did

    detector = state.trained
    assert isinstance(detector, AnomalyDetector) and state.detector is detector
    assert train.progress.value() == train.progress.maximum()
    xs, ys = train.plot.train_curve.getData()
    assert len(xs) >= 8 and np.all(np.isfinite(ys))
    assert len(train.plot.val_curve.getData()[0]) >= 1
    assert train.train_button.isEnabled() and not train.stop_button.isEnabled()
    assert train.save_button.isEnabled() and score.score_button.isEnabled()
    assert "Trained" in train.model_label.text() and "trained in this session" in \
        score.model_label.text()
    assert snapshot(viewer) == before  # training read the layers, changed nothing

    # -- score the anomalous field (with a reconstruction layer) -------------------------
    viewer.layers.selection.select_only(target)
    score.recon_check.setChecked(True)
    qtbot.mouseClick(score.score_button, Qt.MouseButton.LeftButton)
    assert state.status is Status.SCORING and not train.train_button.isEnabled()
    _wait_idle(qtbot, state, SCORE_TIMEOUT)

    heat = viewer.layers["cells with anomalies anomaly map"]
    assert heat.data.shape == target.data.shape[:2]
    np.testing.assert_allclose(heat.scale, target.scale)
    np.testing.assert_allclose(heat.translate, target.translate)
    assert heat.colormap.name == "inferno" and heat.blending == "additive"
    assert heat.opacity == pytest.approx(0.6)
    np.testing.assert_allclose(heat.contrast_limits, detector.calibration.display_range())
    truth = viewer.layers["planted anomalies (ground truth)"].data.astype(bool)
    assert heat.data[truth].mean() > heat.data[~truth].mean()  # hotter on planted stains

    meta = heat.metadata[KEY]
    row = score.results()[0]
    assert meta["source"] == "cells with anomalies" and meta["score"] == row["score"]
    assert meta["is_anomaly"] == (row["verdict"] == "anomalous")
    assert meta["threshold"] == pytest.approx(detector.calibration.threshold(0.05))
    outline = viewer.layers["cells with anomalies anomalous region"]
    assert isinstance(outline, Labels) and outline.data.shape == heat.data.shape
    np.testing.assert_allclose(outline.scale, target.scale)
    recon = viewer.layers["cells with anomalies reconstruction"]
    assert recon.rgb and recon.data.shape == target.data.shape and not recon.visible
    assert score.table.rowCount() == 1
    assert score.table.item(0, 0).text() == "cells with anomalies"
    assert snapshot(viewer)[: len(before)] == before  # user layers untouched

    # -- scoring again refreshes the same layers, keeping the user's display tweaks ---------
    names = [ly.name for ly in viewer.layers]
    heat.opacity = 0.3
    heat.contrast_limits = (0.0, 1e-3)
    qtbot.mouseClick(score.score_button, Qt.MouseButton.LeftButton)
    _wait_idle(qtbot, state, SCORE_TIMEOUT)
    assert [ly.name for ly in viewer.layers] == names
    assert viewer.layers["cells with anomalies anomaly map"] is heat
    assert heat.opacity == pytest.approx(0.3)
    np.testing.assert_allclose(heat.contrast_limits, detector.calibration.display_range())
    assert score.table.rowCount() == 1

    # -- clicking a row selects (and shows) the scored layer -----------------------------
    target.visible = False
    viewer.layers.selection.select_only(viewer.layers["normal cells"])
    _click_row(qtbot, score.table, 0)
    assert target.visible and viewer.layers.selection.active is target

    # -- export and save -----------------------------------------------------------------
    csv_path = tmp_path / "scores.csv"
    assert score.export_csv(csv_path)
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["layer"] == "cells with anomalies"
    assert float(rows[0]["score"]) == pytest.approx(row["score"])
    model_path = tmp_path / "model.safetensors"
    assert train.save_model(model_path)
    reloaded = AnomalyDetector.load(model_path)
    assert reloaded.score(target.data).score == pytest.approx(row["score"], rel=1e-4)
    assert not _errors(notes)


# ------------------------------------------------------------------------------------------
# stop, close, robust training on a stack
# ------------------------------------------------------------------------------------------
def test_density_choice_reaches_the_train_config(make_napari_viewer):
    from napari_cell_anomaly.core.scoring import TRAINABLE_DENSITIES

    train, _ = _docks(make_napari_viewer())
    combo = train.density
    assert [combo.itemData(i) for i in range(combo.count())] == list(TRAINABLE_DENSITIES)
    assert combo.currentData() == TrainConfig().scoring.density == train.config().scoring.density
    for kind in TRAINABLE_DENSITIES:
        combo.setCurrentIndex(TRAINABLE_DENSITIES.index(kind))
        assert train.config().scoring.density == kind


def test_orient_choice_reaches_the_train_config(make_napari_viewer):
    train, _ = _docks(make_napari_viewer())
    box = train.orient
    assert box.isChecked() == TrainConfig().orient == train.config().orient
    for on in (not TrainConfig().orient, TrainConfig().orient):
        box.setChecked(on)
        assert train.config().orient is on
        assert train.settings.config(cells=True).orient is on  # cells mode: the box decides


def test_stop_keeps_a_usable_model(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    _open_samples(viewer)
    train, score = _docks(viewer)
    train.select_matching("normal")
    set_tiny(train, epochs=500)
    assert train.start_training()
    qtbot.waitUntil(lambda: len(train.plot.train_x) >= 6, timeout=TRAIN_TIMEOUT)  # past epoch 1
    qtbot.mouseClick(train.stop_button, Qt.MouseButton.LeftButton)
    assert train.state.status is Status.STOPPING and not train.stop_button.isEnabled()
    _wait_idle(qtbot, train.state, TRAIN_TIMEOUT)

    detector = train.state.trained
    assert detector is not None and detector.provenance["stopped_early"]
    assert detector.provenance["steps"] < 500
    assert "stopped early" in train.progress.format()
    viewer.layers.selection.select_only(viewer.layers["cells with anomalies"])
    assert score.start_scoring()
    _wait_idle(qtbot, score.state, SCORE_TIMEOUT)
    heat = viewer.layers["cells with anomalies anomaly map"]
    assert np.isfinite(heat.data).all() and score.table.rowCount() == 1
    assert not _errors(notes)


def test_closing_the_viewer_during_training_stops_the_worker(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _open_samples(viewer)
    train, _ = _docks(viewer)
    train.select_matching("normal")
    set_tiny(train, epochs=500)
    assert train.start_training()
    job = train._jobs.current
    qtbot.waitUntil(lambda: len(train.plot.train_x) >= 1, timeout=TRAIN_TIMEOUT)
    viewer.close()
    qtbot.waitUntil(lambda: not job.worker.is_running, timeout=20_000)
    assert job.abort.is_set() or job.worker.abort_requested


def test_robust_training_on_a_stack_lists_rejected_planes(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    cells = make_cells(24, size=32, anomaly_fraction=0.1, seed=3)
    stack = viewer.add_image(np.stack(cells.images), name="crops", rgb=True)
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train anomaly model")
    train.select_layers([stack])
    assert "1 layer (24 images)" in train.selection_label.text()
    set_tiny(train, epochs=2, batch_size=8, mode="whole", robust=True)
    assert train.start_training()
    _wait_idle(qtbot, train.state, TRAIN_TIMEOUT)
    detector = train.state.trained
    assert detector is not None and detector.mode == "whole"
    assert train.rejected_list.count() == len(detector.rejected)
    if detector.rejected:  # normally a few planes of 24
        assert train.rejected_list.isVisibleTo(train)
        item = train.rejected_list.item(0)
        plane = detector.rejected[0]
        assert item.text() == f"crops [{plane}]"
        viewer.dims.set_current_step(0, 0 if plane else 1)
        train.rejected_list.itemClicked.emit(item)
        assert viewer.dims.current_step[0] == plane
        assert viewer.layers.selection.active is stack
    assert not _errors(notes)


# ------------------------------------------------------------------------------------------
# false-alarm-rate slider
# ------------------------------------------------------------------------------------------
def test_fpr_slider_reapplies_thresholds_without_rescoring(make_napari_viewer, qtbot, notes,
                                                           tiny_detector, normal_field):
    viewer = make_napari_viewer()
    score = _score_dock(viewer)
    get_state(viewer).set_trained(tiny_detector)
    # 16 crops of a normal field: their scores spread over the calibrated range.
    for i, (r, c) in enumerate([(r, c) for r in range(0, 448, 112) for c in range(0, 448, 112)]):
        viewer.add_image(normal_field[r:r + 64, c:c + 64], name=f"crop {i:02d}", rgb=True)
    score.all_radio.setChecked(True)
    assert score.start_scoring()
    _wait_idle(qtbot, score.state, SCORE_TIMEOUT)
    assert score.table.rowCount() == 16

    cal = tiny_detector.calibration
    job = score._jobs.current
    heat = viewer.layers["crop 00 anomaly map"]
    heat_data = heat.data

    def shown():
        return {r["layer"]: r["verdict"] == "anomalous" for r in score.results()}

    def expected(fpr):
        return {rec.source.name: rec.result.score > cal.threshold(fpr)
                for rec in score.image_results.records}

    def outline_pixels():
        return sum(int(ly.data.sum()) for ly in viewer.layers if ly.name.endswith("region"))

    verdicts, pixels = {}, {}
    for percent in (0.5, 20.0):
        score.fpr_slider.setValue(percent)
        qtbot.waitUntil(lambda p=percent: abs(heat.metadata[KEY]["fpr"] - p / 100) < 1e-9
                        and not score.outlines_pending(), timeout=5000)
        verdicts[percent] = shown()
        pixels[percent] = outline_pixels()
        assert verdicts[percent] == expected(percent / 100)
        assert heat.metadata[KEY]["threshold"] == pytest.approx(cal.threshold(percent / 100))
    assert cal.threshold(0.2) < cal.threshold(0.005)
    assert sum(verdicts[20.0].values()) >= sum(verdicts[0.5].values())  # never fewer flagged
    assert pixels[20.0] > pixels[0.5]  # lower pixel threshold: larger outlined regions
    # Nothing was scored again: same job, same maps, never busy.
    assert score._jobs.current is job and heat.data is heat_data
    assert score.state.status is Status.IDLE
    assert "20.0% false alarms" in score._threshold_line.label.format
    assert not _errors(notes)


def test_result_layers_start_shown_only_over_images_in_view(make_napari_viewer, qtbot, notes,
                                                             tiny_detector, normal_field):
    viewer = make_napari_viewer()
    score = _score_dock(viewer)
    get_state(viewer).set_trained(tiny_detector)
    crops = [normal_field[r:r + 64, 64:128] for r in (0, 64, 128, 192, 256)]
    # Three crops stacked at one place (only the top one is seen), one beside them, one hidden.
    for name, crop in zip(("under 1", "under 2", "on top"), crops, strict=False):
        viewer.add_image(crop, name=name, rgb=True)
    viewer.add_image(crops[3], name="beside", rgb=True, translate=(0, 100))
    viewer.add_image(crops[4], name="hidden", rgb=True, visible=False)
    viewer.layers.selection.select_only(viewer.layers["under 1"])
    before = snapshot(viewer)
    score.all_radio.setChecked(True)
    assert score.start_scoring()
    _wait_idle(qtbot, score.state, SCORE_TIMEOUT)

    names = ("under 1", "under 2", "on top", "beside", "hidden")
    assert snapshot(viewer)[: len(before)] == before  # user layers untouched
    assert sorted(r["layer"] for r in score.results()) == sorted(names)  # a row for each
    for name in names:  # ... and its map and outline, shown only over images in view
        heat = viewer.layers[f"{name} anomaly map"]
        outline = viewer.layers[f"{name} anomalous region"]
        assert heat.visible is outline.visible is (name in ("on top", "beside")), name
    # Adding the result layers left the user's selection as it was.
    assert set(viewer.layers.selection) == {viewer.layers["under 1"]}
    assert viewer.layers.selection.active is viewer.layers["under 1"]

    # The slider re-thresholds the hidden outlines too.
    cal = tiny_detector.calibration
    score.fpr_slider.setValue(20.0)
    qtbot.waitUntil(lambda: score.image_results.records[0].heatmap.metadata[KEY]["fpr"] == 0.2
                    and not score.outlines_pending(), timeout=5000)
    for record in score.image_results.records:
        level = cal.pixel_threshold(0.2, record.result.n_windows)
        np.testing.assert_array_equal(record.outline.data, record.result.error_map > level)

    # Clicking a row shows that image with its map and outline.
    _click_row(qtbot, score.table, [r["layer"] for r in score.results()].index("under 1"))
    assert viewer.layers["under 1 anomaly map"].visible
    assert viewer.layers["under 1 anomalous region"].visible
    assert not _errors(notes)


def test_in_view_rules(make_napari_viewer):
    from napari_cell_anomaly.widgets._layers import in_view

    viewer = make_napari_viewer()
    field = np.zeros((32, 32), dtype=np.float32)
    low = viewer.add_image(field, name="low")
    top = viewer.add_image(field, name="top")
    assert in_view(viewer, top) and not in_view(viewer, low)
    top.blending = "additive"  # e.g. channel layers: the one under it still shows
    assert in_view(viewer, low)
    top.blending = "translucent"
    top.opacity = 0.5
    assert in_view(viewer, low)
    top.opacity = 1.0
    top.translate = (0, 16)  # covers only half of it
    assert in_view(viewer, low)
    top.translate = (0, 0)
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid
    grid.enabled = True  # side by side
    assert in_view(viewer, low)
    grid.enabled = False
    low.visible = False
    assert not in_view(viewer, low)


# ------------------------------------------------------------------------------------------
# bad input: a clear notification, buttons that match, user layers untouched
# ------------------------------------------------------------------------------------------
def test_score_without_a_model(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    _open_samples(viewer)
    score = _score_dock(viewer)
    qtbot.waitUntil(lambda: not score.model_box.loading(), timeout=SCORE_TIMEOUT)
    get_state(viewer).set_active(None, "")  # no model (even if a default one is installed)
    before = snapshot(viewer)
    assert not score.score_button.isEnabled()
    assert "No model" in score.model_label.text()
    viewer.layers.selection.select_only(viewer.layers["cells with anomalies"])
    assert score.start_scoring() is False
    assert any("No model" in e for e in _errors(notes))
    assert snapshot(viewer) == before


def test_core_training_error_is_one_notification(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    layer = viewer.add_image(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8), name="one")
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train anomaly model")
    train.select_layers([layer])
    set_tiny(train, mode="whole")  # whole-image mode needs at least 4 images
    before = snapshot(viewer)
    assert train.start_training()
    _wait_idle(qtbot, train.state, TRAIN_TIMEOUT)
    errors = _errors(notes)
    assert len(errors) == 1 and errors[0].startswith("Training failed: ")
    assert "at least 4 images" in errors[0]
    assert train.state.trained is None and train.train_button.isEnabled()
    assert not train.save_button.isEnabled() and "failed" in train.status_label.text()
    assert snapshot(viewer) == before


def test_shipped_default_model_choice(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    score = _score_dock(viewer)
    state = get_state(viewer)
    qtbot.waitUntil(lambda: not score.model_box.loading(), timeout=SCORE_TIMEOUT)
    index = score.source_combo.findData("default")
    item = score.source_combo.model().item(index)
    if default_model_path() is None:
        assert not item.isEnabled() and state.detector is None
        assert score.use_default_model() is False
        assert any("No default model" in w for w in _warnings(notes))
    else:  # installed: it is the initial model, and can be chosen again after another one
        assert item.isEnabled() and state.source == "default"
        state.set_active(None, "")
        assert score.use_default_model() and state.source == "default"
        assert score.source_combo.currentData() == "default"
        assert "shipped default model" in score.model_label.text()
        assert not _errors(notes)


def test_train_without_images(make_napari_viewer, notes):
    viewer = make_napari_viewer()
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train anomaly model")
    assert train.start_training() is False
    assert any("No training images" in w for w in _warnings(notes))
    train.folder_edit.setText("/no/such/folder")
    assert train.start_training() is False
    assert any("does not exist" in w for w in _warnings(notes))
    assert train.state.status is Status.IDLE and train.train_button.isEnabled()


@pytest.mark.parametrize("case", ["nothing selected", "labels", "points", "4-D", "huge"])
def test_score_refuses_bad_layers(make_napari_viewer, notes, tiny_detector, case):
    viewer = make_napari_viewer()
    _open_samples(viewer)
    score = _score_dock(viewer)
    get_state(viewer).set_trained(tiny_detector)
    if case == "labels":
        layer = viewer.layers["planted anomalies (ground truth)"]
    elif case == "points":
        layer = viewer.add_points([[10, 10], [20, 30]], name="clicks")
    elif case == "4-D":
        layer = viewer.add_image(np.random.default_rng(0).random((2, 6, 64, 64)), name="tz")
    elif case == "huge":
        layer = viewer.add_image(np.broadcast_to(np.uint8(7), (9000, 9000)), name="slide")
    before = snapshot(viewer)
    if case == "nothing selected":
        viewer.layers.selection.clear()
    else:
        viewer.layers.selection.select_only(layer)
    assert score.start_scoring() is False
    messages = _errors(notes) + _warnings(notes)
    assert len(messages) == 1, messages
    expected = {"nothing selected": "No layer selected", "labels": "Labels layer, not an image",
                "points": "Points layer, not an image", "4-D": "4-D array",
                "huge": "Mpx"}[case]
    assert expected in messages[0]
    assert snapshot(viewer) == before
    assert score.state.status is Status.IDLE and score.score_button.isEnabled()


def test_score_skips_bad_layers_but_scores_the_good_ones(make_napari_viewer, qtbot, notes,
                                                         tiny_detector, anomalous_field):
    viewer = make_napari_viewer()
    score = _score_dock(viewer)
    get_state(viewer).set_trained(tiny_detector)  # an RGB model
    good = viewer.add_image(anomalous_field[0][:128, :128], name="good", rgb=True)
    gray = viewer.add_image(anomalous_field[0][:128, :128, 1], name="gray")  # wrong channels
    points = viewer.add_points([[1, 1]], name="pts")
    before = snapshot(viewer)
    viewer.layers.selection.update({good, gray, points})
    assert score.start_scoring()
    assert any("Skipping 1 layer" in w and "Points layer" in w for w in _warnings(notes))
    _wait_idle(qtbot, score.state, SCORE_TIMEOUT)
    # The core refuses the grayscale image for the RGB model: one error, no layer for it.
    errors = _errors(notes)
    assert len(errors) == 1 and "1 of 2" in errors[0] and "RGB" in errors[0]
    assert "good anomaly map" in viewer.layers and "gray anomaly map" not in viewer.layers
    assert score.table.rowCount() == 1
    assert snapshot(viewer)[: len(before)] == before


def test_corrupt_model_file_keeps_the_current_model(make_napari_viewer, notes, tmp_path,
                                                    tiny_detector):
    viewer = make_napari_viewer()
    score = _score_dock(viewer)
    state = get_state(viewer)
    state.set_trained(tiny_detector)
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00\x01 definitely not a model" * 10)
    assert score.load_model(bad) is False
    errors = _errors(notes)
    assert len(errors) == 1 and "Could not load the model" in errors[0]
    assert "\n" not in errors[0]
    assert state.detector is tiny_detector and score.score_button.isEnabled()
    assert score.source_combo.currentData() == "trained"

    good = tmp_path / "good.safetensors"
    tiny_detector.save(good)
    assert score.load_model(good)
    assert state.source == "file" and score.source_combo.currentData() == "file"
    assert "good.safetensors" in score.model_label.text()


def test_threshold_label_states_the_calibration_behind_the_rate(make_napari_viewer,
                                                                tiny_detector):
    from napari_cell_anomaly.core.scoring import MIN_CALIBRATION

    viewer = make_napari_viewer()
    score = _score_dock(viewer)
    get_state(viewer).set_trained(tiny_detector)
    cal = tiny_detector.calibration
    for percent in (5.0, 12.0):
        score.fpr_slider.setValue(percent)
        score.apply_fpr()  # what the slider's debounce timer calls
        text = score.threshold_label.text()
        assert f"{percent:.0f}% false alarms" in text
        assert f"calibrated on {cal.size} " in text
        assert "true rate" in text and "95% confidence" in text
        # A small calibration sample is flagged next to the rate, not left for the reader.
        assert ("Warning:" in text) == (cal.size < MIN_CALIBRATION)
        assert "Anomalous if score &gt;" in text


def test_train_pressed_while_pytorch_loads_starts_once_it_has_loaded(make_napari_viewer,
                                                                     qtbot, notes):
    viewer = make_napari_viewer()
    _open_samples(viewer)
    train, _ = _docks(viewer)
    train.select_matching("normal")
    # This test process has imported the core already, so the dock is put back into its
    # state before the loader's callback (settings not filled, not ready); the loader's
    # callback (_on_core_ready) is then run as the loader runs it.
    train._ready = False
    train.settings.set_enabled(False)
    train._update_buttons()
    assert train.train_button.isEnabled()  # a press is taken, not lost
    qtbot.mouseClick(train.train_button, Qt.MouseButton.LeftButton)
    assert train.state.status is Status.IDLE and not train.train_button.isEnabled()
    assert train.status_label.text() == ("PyTorch is still loading: training starts as soon "
                                         "as it has loaded (Stop cancels).")
    # Stop cancels the queued start; a new press queues it again.
    qtbot.mouseClick(train.stop_button, Qt.MouseButton.LeftButton)
    assert train.train_button.isEnabled() and not train.stop_button.isEnabled()
    assert train.status_label.text() == "Loading PyTorch…"
    qtbot.mouseClick(train.train_button, Qt.MouseButton.LeftButton)
    train._on_core_ready()  # PyTorch has loaded: training starts without another press
    assert train.state.status is Status.TRAINING
    qtbot.waitUntil(lambda: train.plot is not None and len(train.plot.train_x) >= 1,
                    timeout=TRAIN_TIMEOUT)
    train.stop_training()
    _wait_idle(qtbot, train.state, TRAIN_TIMEOUT)
    assert train.state.trained is not None
    assert not _errors(notes)
    assert not [str(n.message) for n in notes() if "press Train again" in str(n.message)]
