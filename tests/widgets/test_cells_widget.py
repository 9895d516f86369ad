"""GUI tests of per-cell scoring in the Score widget.

A real cells-mode detector (trained for a few steps on the project's synthetic fields), a real
napari viewer under Xvfb, the real worker thread: nothing is mocked.
"""

from __future__ import annotations

import csv
from typing import Any

import numpy as np
import pytest
from napari.layers import Labels
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QStyleOptionHeader

from conftest import KEY, PLUGIN, SCORE_TIMEOUT, errors, snapshot
from napari_cell_anomaly.core.cellscores import CELL_COLUMNS
from napari_cell_anomaly.core.sample import CellField, make_cell_field
from napari_cell_anomaly.core.training import TrainConfig, run_training
from napari_cell_anomaly.widgets import get_state
from napari_cell_anomaly.widgets._cells_layer import cell_colormap, display_labels, other_labels
from napari_cell_anomaly.widgets._cells_source import FIND_CELLS
from napari_cell_anomaly.widgets._common import Plane
from napari_cell_anomaly.widgets._score_job import CellsScored, score_cells_job

CSV_HEAD = ["path", "cell_id", "centroid_y", "centroid_x", "area", "score", "recon_error",
            "log_density", "is_anomaly"]


@pytest.fixture(scope="session")
def cells_detector() -> Any:
    """A cells-mode detector after 6 steps on 4 normal synthetic fields (for contracts)."""
    fields = [make_cell_field((256, 256), n_cells=20, anomaly_fraction=0.0, seed=s)
              for s in range(4)]
    return run_training([f.image for f in fields],
                        TrainConfig(mode="cells", max_steps=6, batch_size=16, seed=0),
                        labels=[f.labels for f in fields])


@pytest.fixture(scope="session")
def test_field() -> CellField:
    return make_cell_field((256, 256), n_cells=24, anomaly_fraction=0.3, seed=9)


def _score_dock(viewer):
    return viewer.window.add_plugin_dock_widget(PLUGIN, "Score images")[1]


def _score(qtbot, score) -> None:
    assert score.start_scoring()
    qtbot.waitUntil(lambda: score.state.status.value == "idle", timeout=SCORE_TIMEOUT)


def _click_cell_row(qtbot, table, row: int) -> None:
    index = table.model().index(row, 1)
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton,
                     pos=table.visualRect(index).center())


def _setup(make_napari_viewer, detector, field, *, with_labels=True):
    viewer = make_napari_viewer()
    image = viewer.add_image(field.image, name="field", rgb=True, scale=(0.5, 0.5),
                             translate=(3.0, -2.0))
    user = viewer.add_labels(field.labels.copy(), name="my cells") if with_labels else None
    score = _score_dock(viewer)
    get_state(viewer).set_trained(detector)
    score.cells_box.setChecked(True)
    score.cells_box.choose_labels(user)
    viewer.layers.selection.select_only(image)
    return viewer, image, user, score


def test_cells_layer_table_and_selection_round_trip(make_napari_viewer, qtbot, notes,
                                                    cells_detector, test_field, tmp_path):
    viewer, image, _, score = _setup(make_napari_viewer, cells_detector, test_field)
    before = snapshot(viewer)
    _score(qtbot, score)
    assert not errors(notes)

    layer = viewer.layers["field cells"]
    assert isinstance(layer, Labels) and layer.metadata[KEY]["role"] == "cells"
    np.testing.assert_allclose(layer.scale, image.scale)
    np.testing.assert_allclose(layer.translate, image.translate)
    features = layer.features
    assert list(features.columns) == [*CELL_COLUMNS, "index"]
    ids = np.unique(test_field.labels[test_field.labels > 0])
    assert len(features) + layer.metadata[KEY]["skipped"] == ids.size
    assert set(features["label"]) <= set(ids.tolist())
    np.testing.assert_array_equal(layer.data, test_field.labels)  # the user's cells, copied
    assert "field anomaly map" in viewer.layers
    assert snapshot(viewer)[: len(before)] == before  # the user's layers are untouched

    # The table lists every cell, highest score first.
    model = score.cells_table.cells_model
    assert model.rowCount() == len(features)
    order = model.labels_in_order()
    by_label = features.set_index("label")["score"]
    assert np.all(np.diff(by_label.loc[order].to_numpy()) <= 0)
    # The images table shows the field once: its worst judged cell, the score adjusted for
    # the number of cells judged (the core's field judgement).
    assert score.table.rowCount() == 1
    field = cells_detector.field_score(score.cell_results.current.cells, 0.05)
    assert features["score"][field.row] == by_label.max()
    assert score.results()[0]["score"] == field.score

    # Table row -> viewer: the cell is selected and the view centred on it.
    _click_cell_row(qtbot, score.cells_table, 2)
    label = order[2]
    assert layer.selected_label == label
    row = features.set_index("label").loc[label]
    centre = layer.data_to_world([row["centroid_y"], row["centroid_x"]])
    camera = getattr(viewer, "scene", viewer).camera  # napari >= 0.9: viewer.scene
    np.testing.assert_allclose(camera.center[-2:], centre, atol=1e-6)
    assert score.cells_table.selected_label() == label

    # Viewer -> table: selecting a cell in the layer selects its row.
    other = order[-1]
    layer.selected_label = other
    assert score.cells_table.selected_label() == other
    # A click on the canvas picks the cell under the cursor (here: the centroid of a cell).
    third = order[len(order) // 2]
    row = features.set_index("label").loc[third]
    y, x = round(row["centroid_y"]), round(row["centroid_x"])
    assert test_field.labels[y, x] == third  # round synthetic cells hold their centroid
    assert score.pick_cell(layer.data_to_world([y, x])) == third
    assert layer.selected_label == third and score.cells_table.selected_label() == third

    # Scoring again refreshes the same layers instead of adding new ones.
    names = [ly.name for ly in viewer.layers]
    _score(qtbot, score)
    assert [ly.name for ly in viewer.layers] == names
    assert viewer.layers["field cells"] is layer and score.table.rowCount() == 1

    # Per-cell CSV: fixed first columns, one row per cell, ids of the label image.
    path = tmp_path / "cells.csv"
    assert score.export_cells_csv(path)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames[: len(CSV_HEAD)] == CSV_HEAD
        rows = list(reader)
    assert [int(r["cell_id"]) for r in rows] == features["label"].tolist()
    assert [r["is_anomaly"] == "True" for r in rows] == features["is_anomaly"].tolist()
    assert {r["path"] for r in rows} == {"field"}
    assert not errors(notes)


def test_slider_rethresholds_cells(make_napari_viewer, qtbot, notes,
                                   cells_detector):
    # A crop: some cells are cut by its edge; cells come from the built-in segmentation.
    crop = make_cell_field((256, 256), n_cells=24, anomaly_fraction=0.3, seed=9)
    crop.image = crop.image[20:236, 30:256]
    viewer, _, _, score = _setup(make_napari_viewer, cells_detector, crop, with_labels=False)
    _score(qtbot, score)
    assert not errors(notes)
    layer = viewer.layers["field cells"]
    record = score.cell_results.current
    cells, cal = record.cells, cells_detector.calibration
    border = cells.table["at_border"]
    assert border.any() and not border.all()

    counts = []
    for percent in (0.5, 5.0, 20.0):
        score.fpr_slider.setValue(percent)
        qtbot.waitUntil(lambda p=percent: abs(layer.metadata[KEY]["fpr"] - p / 100) < 1e-9,
                        timeout=2000)
        expected = cells.verdicts(cal.threshold(percent / 100))
        np.testing.assert_array_equal(layer.features["is_anomaly"], expected)
        assert not layer.features["is_anomaly"][border].any()  # edge cells: no verdict
        counts.append(int(layer.features["is_anomaly"].sum()))
        # Verdict colours: red anomalous, green normal, grey for cells cut by the edge.
        for label, bad, edge in zip(cells.table["label"], expected, border, strict=True):
            rgba = layer.colormap.map(np.asarray([label]))[0]
            assert (rgba[0] > 0.9 and rgba[1] < 0.3) == bool(bad), label
            assert np.allclose(rgba[:3], 0.6) == bool(edge), label
    assert counts == sorted(counts)  # more false alarms allowed: never fewer cells flagged
    assert counts[-1] > counts[0]

    # "Judge edge cells" brings the cut cells into the verdicts, live.
    score.cells_box.edge_check.setChecked(True)
    np.testing.assert_array_equal(layer.features["is_anomaly"],
                                  cells.verdicts(cal.threshold(0.2), include_border=True))
    # Colour by score: one colour per score rank, no grey left for judged cells.
    score.cells_box.color_combo.setCurrentIndex(score.cells_box.color_combo.findData("score"))
    top, bottom = score.cells_table.cells_model.labels_in_order()[::len(cells) - 1]
    c_top, c_bottom = layer.colormap.map(np.asarray([top, bottom]))
    assert not np.allclose(c_top, c_bottom)
    assert not errors(notes)


def test_image_row_is_the_fields_row_of_the_command_line(make_napari_viewer, qtbot, notes,
                                                        cells_detector):
    # A field of normal cells like the model's training fields (one of them: the fewest
    # cells flagged by this briefly trained model): at some rates a cell is flagged while the
    # field, judged by its worst cell adjusted for the number of cells judged, is normal (as
    # in score --csv).
    field = make_cell_field((256, 256), n_cells=20, anomaly_fraction=0.0, seed=0)
    viewer, _, _, score = _setup(make_napari_viewer, cells_detector, field)
    _score(qtbot, score)
    assert not errors(notes)
    layer = viewer.layers["field cells"]
    flagged_but_normal = []
    for percent in (1.0, 5.0, 10.0, 20.0):
        score.fpr_slider.setValue(percent)
        qtbot.waitUntil(lambda p=percent: abs(layer.metadata[KEY]["fpr"] - p / 100) < 1e-9,
                        timeout=2000)
        cli, _ = cells_detector.score_field(field.image, field.labels, fpr=percent / 100)
        row = score.results()[0]
        assert (row["score"], row["recon_error"], row["log_density"], row["percentile"]) == (
            cli.score, cli.recon_error, cli.log_density, cli.percentile)
        verdict = "anomalous" if cli.is_anomaly else "normal"
        assert row["verdict"] == score.table.item(0, 5).text() == verdict
        assert score.table.item(0, 1).value == cli.score
        cells_flagged = int(layer.features["is_anomaly"].sum())
        if cells_flagged and not cli.is_anomaly:
            flagged_but_normal.append(percent)
    assert flagged_but_normal  # the case where the two rules differ was seen
    # The cells table: highest score first under a down arrow; numbers shown whole.
    cells_table = score.cells_table
    header = cells_table.horizontalHeader()
    option = QStyleOptionHeader()
    header.initStyleOptionForIndex(option, 1)
    assert header.sortIndicatorOrder() == Qt.SortOrder.DescendingOrder
    assert option.sortIndicator == QStyleOptionHeader.SortIndicator.SortDown
    metrics = cells_table.fontMetrics()
    for col in range(1, 6):
        texts = cells_table.cells_model.column_texts(col)
        assert len(texts) == cells_table.cells_model.rowCount()
        assert header.sectionSize(col) >= max(map(metrics.horizontalAdvance, texts)) + 6
    assert not errors(notes)


def test_render_steps_add_one_layer_each_and_drop_stale_job_features(make_napari_viewer,
                                                                     cells_detector,
                                                                     test_field):
    # The worker's event carries the label image, the other objects and the features table.
    viewer, image, _, score = _setup(make_napari_viewer, cells_detector, test_field)
    items = [(Plane("field", test_field.image), test_field.labels)]
    (event,) = list(score_cells_job(cells_detector, items, 0.01, False))
    assert isinstance(event, CellsScored)
    job_verdicts = event.cells.table["is_anomaly"]
    assert event.features["label"].tolist() == event.cells.table["label"].tolist()
    np.testing.assert_array_equal(event.features["is_anomaly"], job_verdicts)

    # The slider moved after the job: the worker's verdicts (1%) are stale at 20%.
    score.fpr_slider.setValue(20.0)
    expected = event.cells.verdicts(cells_detector.calibration.threshold(0.2))
    assert expected.sum() > job_verdicts.sum()
    results = score.cell_results
    steps = results.render_steps(image, event.cells, cells_detector, event.labels,
                                 event.others, event.features)

    def names():
        return [ly.name for ly in viewer.layers]

    next(steps)  # the anomaly map only
    assert "field anomaly map" in names() and "field cells" not in names()
    assert results.current is None and score.table.rowCount() == 0
    next(steps)  # the cells layer, made with the current verdicts and their colours
    layer = viewer.layers["field cells"]
    np.testing.assert_array_equal(layer.features["is_anomaly"], expected)
    labels = event.cells.table["label"]
    rgba = layer.colormap.map(np.asarray(labels, dtype=layer.data.dtype))
    np.testing.assert_array_equal(rgba[:, 0] > 0.9, expected)  # red = anomalous
    assert score.cells_table.cells_model.rowCount() == 0  # the tables come next
    assert set(viewer.layers.selection) == {image}  # new layers leave the selection alone
    assert next(steps, "done") == "done"
    assert score.cells_table.cells_model.rowCount() == len(labels)
    assert score.table.rowCount() == 1 and results.current.layer.name == "field cells"
    np.testing.assert_array_equal(results.current.is_anomaly, expected)

    # A source removed between steps: the remaining steps add nothing.
    second = viewer.add_image(test_field.image, name="second", rgb=True)
    steps = results.render_steps(second, event.cells, cells_detector)
    next(steps)
    viewer.layers.remove(second)
    assert next(steps, "done") == "done"
    assert "second cells" not in names() and results.record_of(second) is None
    assert score.table.rowCount() == 1
    # napari's own behaviour is back: a layer the user adds is selected.
    points = viewer.add_points(np.zeros((1, 2)))
    assert viewer.layers.selection.active is points


def _edge_only_labels(shape):
    labels = np.zeros(shape, np.int32)
    labels[:30, :30] = 1  # one object, touching the image corner
    return labels


@pytest.mark.parametrize("case", ["other shape", "empty", "nothing found", "only edge cells",
                                  "two images"])
def test_bad_cell_input_is_one_notification(make_napari_viewer, qtbot, notes,
                                            cells_detector, test_field, case):
    viewer = make_napari_viewer()
    image = test_field.image
    if case == "nothing found":
        # Flat, faint noise: nothing stands out of the background.
        image = np.random.default_rng(0).integers(195, 206, (128, 128, 3)).astype(np.uint8)
    layer = viewer.add_image(image, name="field", rgb=True)
    score = _score_dock(viewer)
    get_state(viewer).set_trained(cells_detector)
    score.cells_box.setChecked(True)
    labels = {"other shape": test_field.labels,  # then replaced by another shape, below
              "empty": np.zeros(image.shape[:2], np.int32),
              "only edge cells": _edge_only_labels(image.shape[:2]),
              "two images": test_field.labels}.get(case)
    if labels is not None:
        chosen = viewer.add_labels(labels, name="cells in")
        viewer.layers.selection.select_only(layer)
        score.cells_box.choose_labels(chosen)
        if case == "other shape":  # new data of another shape, after it was chosen
            chosen.data = np.ones((100, 90), np.int32)
    if case == "two images":
        second = viewer.add_image(image, name="second", rgb=True)
        viewer.layers.selection.update({layer, second})
    else:
        viewer.layers.selection.select_only(layer)
    before = snapshot(viewer)
    started = score.start_scoring()
    qtbot.waitUntil(lambda: score.state.status.value == "idle", timeout=SCORE_TIMEOUT)
    shown = errors(notes)
    assert len(shown) == 1, shown
    expected = {"other shape": "has shape (100, 90)", "empty": "is empty",
                "nothing found": "no cells found", "only edge cells": "touches the image edge",
                "two images": "select one image"}[case]
    assert expected in shown[0] and "\n" not in shown[0]
    assert started == (case in ("nothing found", "only edge cells"))  # found in the worker
    assert snapshot(viewer) == before  # no layer added, changed or removed
    assert score.table.rowCount() == 0 and score.cell_results.current is None


# ------------------------------------------------------------------------------------------
# Train widget: cells from a Labels layer
# ------------------------------------------------------------------------------------------
def test_train_widget_learns_from_a_labels_layer(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    field = make_cell_field((256, 256), n_cells=24, anomaly_fraction=0.0, seed=5)
    image = viewer.add_image(field.image, name="smear", rgb=True)
    viewer.add_labels(np.ones((64, 64), np.int32), name="other size")
    empty = viewer.add_labels(np.zeros((256, 256), np.int32), name="not yet labelled")
    normal = viewer.add_labels(field.labels.copy(), name="normal cells")
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train anomaly model")
    train.select_layers([image])
    offered = [train.cells_combo.itemText(i) for i in range(train.cells_combo.count())]
    assert offered == ["none (whole images or patches)", "find cells automatically",
                       "Labels: not yet labelled", "Labels: normal cells"]  # shape matches
    with pytest.raises(ValueError):
        train.choose_cells(viewer.layers["other size"])

    train.choose_cells(empty)
    before = snapshot(viewer)
    assert train.start_training() is False
    assert any("is empty" in str(n.message) for n in notes())

    train.choose_cells(normal)
    assert train.config().mode == "cells"
    train.epochs.setValue(2)
    train.batch_size.setValue(8)
    assert train.start_training()
    qtbot.waitUntil(lambda: train.state.status.value == "idle", timeout=120_000)
    assert not errors(notes)
    detector = train.state.trained
    assert detector is not None and detector.mode == "cells"
    assert snapshot(viewer) == before  # training read the layers, changed nothing
    # The trained model scores cells of a new field.
    test = make_cell_field((256, 256), n_cells=24, anomaly_fraction=0.3, seed=6)
    assert len(detector.score_cells(test.image, test.labels)) > 0


# ------------------------------------------------------------------------------------------
# Cells layer colours, the Labels picker, and results of the other mode
# ------------------------------------------------------------------------------------------
def test_cell_colormap_gives_each_cell_its_colour():
    labels = np.array([1, 2, 3, 5, 7, 300])
    colors = np.array([[1, 0, 0, 1], [0, 1, 0, 1], [0, 1, 0, 1], [0, 1, 0, 1], [0.5, 0.5, 0.5, 1],
                       [1, 0, 0, 1]], dtype=np.float32)
    cmap = cell_colormap(labels, colors, others=np.array([4, 9]))
    values = np.array([0, *labels, 4, 9, 1000], dtype=np.uint16)
    mapped = cmap.map(values)
    np.testing.assert_allclose(mapped[1:-3], colors)
    np.testing.assert_allclose(mapped[[0, -3, -2]], 0)  # background and non-cells: clear
    # The numpy colour table equals napari's own (8- and 16-bit data).
    stock = DirectLabelColormap(color_dict=dict(cmap.color_dict))
    for dtype in (np.uint8, np.uint16):
        data = np.arange(np.iinfo(dtype).max + 1, dtype=dtype)
        np.testing.assert_allclose(cmap._map_without_cache(data),
                                   stock._map_without_cache(data))
    # The cells layer stores 16-bit labels when they fit, with the same ids.
    wide = np.array([[0, 70000]], np.int32)
    assert display_labels(wide) is wide
    small = np.array([[0, 3], [65535, 2]], np.int32)
    assert display_labels(small).dtype == np.uint16
    np.testing.assert_array_equal(display_labels(small), small)
    np.testing.assert_array_equal(other_labels(display_labels(small), np.array([2, 3])),
                                  [65535])


def test_labels_picker_follows_image_shape_selection_and_names(make_napari_viewer, test_field):
    viewer = make_napari_viewer()
    field = viewer.add_image(test_field.image, name="field", rgb=True)
    small = viewer.add_image(test_field.image[:100, :120], name="small", rgb=True)
    mine = viewer.add_labels(test_field.labels.copy(), name="my cells")
    viewer.add_labels(np.zeros((100, 120), np.int32), name="small cells")
    score = _score_dock(viewer)
    box = score.cells_box

    def listed():
        return [box.source_combo.itemText(i) for i in range(box.source_combo.count())]

    viewer.layers.selection.select_only(field)
    assert listed() == [FIND_CELLS, "my cells"]
    box.choose_labels(mine)
    mine.name = "nuclei"  # renamed: the picker shows the new name, still chosen
    assert listed() == [FIND_CELLS, "nuclei"] and box.labels_layer().name == "nuclei"
    viewer.layers.selection.select_only(small)  # another shape: only its own Labels layers
    assert listed() == [FIND_CELLS, "small cells"] and box.labels_layer() is None
    with pytest.raises(ValueError):
        box.choose_labels(mine)
    viewer.layers.selection.select_only(mine)  # no image chosen: every 2-D Labels layer
    assert listed() == [FIND_CELLS, "nuclei", "small cells"]
    score.all_radio.setChecked(True)  # both images, two shapes: none fits both
    assert listed() == [FIND_CELLS]


def test_other_mode_results_do_not_stay_looking_current(make_napari_viewer, qtbot, notes,
                                                        cells_detector, test_field):
    viewer, image, user, score = _setup(make_napari_viewer, cells_detector, test_field)
    score.recon_check.setChecked(True)
    score.cells_box.setChecked(False)
    _score(qtbot, score)  # per image: anomaly map, outline, reconstruction
    assert {"field anomalous region", "field reconstruction"} <= {ly.name for ly in viewer.layers}
    user_before = snapshot(viewer)[:2]
    score.cells_box.setChecked(True)
    _score(qtbot, score)  # per cell: the per-image outline and reconstruction go
    names = [ly.name for ly in viewer.layers]
    assert "field cells" in names and "field anomaly map" in names
    assert "field anomalous region" not in names and "field reconstruction" not in names
    score.cells_box.setChecked(False)
    _score(qtbot, score)  # per image again: the cells layer goes, the cells table empties
    names = [ly.name for ly in viewer.layers]
    assert "field cells" not in names and "field anomalous region" in names
    assert score.cell_results.current is None and score.cells_table.isHidden()
    assert snapshot(viewer)[:2] == user_before  # the user's image and labels untouched
    assert user in viewer.layers and image in viewer.layers
    assert not errors(notes)


def test_score_dock_scrolls_instead_of_cutting_its_texts(make_napari_viewer, qtbot, notes,
                                                         cells_detector, test_field):
    # A short window: the model summary, the threshold text, a per-cell result and the
    # histogram do not fit; the dock scrolls, every text shows whole and the window keeps
    # its height.
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1200, 640)
    image = viewer.add_image(test_field.image, name="field", rgb=True)
    user = viewer.add_labels(test_field.labels.copy(), name="my cells")
    score = _score_dock(viewer)
    qtbot.waitUntil(lambda: score.hist is not None, timeout=SCORE_TIMEOUT)
    get_state(viewer).set_trained(cells_detector)
    score.cells_box.setChecked(True)
    score.cells_box.choose_labels(user)
    viewer.layers.selection.select_only(image)
    _score(qtbot, score)
    assert not errors(notes)
    qtbot.wait(50)
    assert score.cells_table.isVisible() and score.cells_label.isVisible()
    assert window.height() <= 640
    assert score.scroll.verticalScrollBar().maximum() > 0  # the content scrolls
    for label in (score.model_label, score.threshold_label, score.cells_label):
        assert label.text()
        assert label.height() >= label.heightForWidth(label.width()), label.text()[:60]
    # Nothing of the content is cut at the right (no horizontal scrolling either).
    content = score.scroll.widget()
    assert content.width() >= content.minimumSizeHint().width()
    assert score.scroll.viewport().width() >= content.width()

    # The histogram's "5.0% false alarms" label lies above every bar.
    hist = score.hist
    top = max(float(np.max(c.getData()[1], initial=0))
              for c in (hist.normals_curve, hist.scored_curve))
    label = hist.threshold_line.label
    assert label.isVisible() and label.toPlainText() == "5.0% false alarms"
    box = hist.getViewBox().mapSceneToView(label.sceneBoundingRect()).boundingRect()
    assert top > 0 and box.top() > top, (box.top(), top)
