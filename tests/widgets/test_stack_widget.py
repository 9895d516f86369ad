"""GUI tests of stacks in the Score widget: a z-stack (or time series) layer is scored plane by
plane, its anomaly map overlays it plane for plane, the table has one row per plane, and lazy
(dask) stacks are read one plane at a time. Real viewer, real worker threads, a real (briefly
trained) model: nothing is mocked."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import pytest

from conftest import KEY, PLUGIN, SCORE_TIMEOUT, snapshot
from conftest import errors as _errors
from napari_cell_anomaly.widgets import Status, get_state


def _score(viewer, qtbot, model, *layers):
    score = viewer.window.add_plugin_dock_widget(PLUGIN, "Score images")[1]
    get_state(viewer).set_trained(model)
    viewer.layers.selection.clear()
    viewer.layers.selection.update(set(layers))
    assert score.start_scoring()
    qtbot.waitUntil(lambda: score.state.status is Status.IDLE, timeout=SCORE_TIMEOUT)
    return score


def test_a_z_stack_is_scored_plane_by_plane_and_its_map_overlays_it(
        make_napari_viewer, qtbot, notes, crop_model, crop_planes):
    viewer = make_napari_viewer()
    stack = viewer.add_image(crop_planes, rgb=True, name="zs", scale=(2.0, 0.5, 0.5),
                             translate=(10.0, 5.0, -3.0))
    flat = viewer.add_image(crop_planes[4], rgb=True, name="flat")
    score = _score(viewer, qtbot, crop_model, stack, flat)
    assert not _errors(notes)
    heat = viewer.layers["zs anomaly map"]
    # Same shape, scale and translate as the source: it overlays plane for plane.
    assert heat.data.shape == (5, 32, 32)
    np.testing.assert_array_equal(heat.scale, stack.scale)
    np.testing.assert_array_equal(heat.translate, stack.translate)
    for point in ([0, 0, 0], [3, 17, 9], [4, 31, 31]):
        np.testing.assert_allclose(heat.data_to_world(point), stack.data_to_world(point))
    refs = [crop_model.score(p) for p in crop_planes]
    for i, ref in enumerate(refs):
        np.testing.assert_allclose(heat.data[i], ref.error_map, rtol=1e-5, atol=1e-7)
    outline = viewer.layers["zs anomalous region"]
    assert outline.data.shape == (5, 32, 32)
    np.testing.assert_array_equal(outline.scale, stack.scale)
    # One table row per plane, named after it, plus the 2-D layer's row.
    rows = {r["layer"]: r for r in score.results()}  # table order: sorted by the user
    names = [f"zs [{i}]" for i in range(5)]
    assert sorted(rows) == sorted([*names, "flat"]) and len(score.results()) == 6
    assert [rows[n]["score"] for n in names] == pytest.approx([r.score for r in refs], rel=1e-5)
    assert rows["flat"]["score"] == pytest.approx(rows["zs [4]"]["score"], rel=1e-5)
    planes_meta = heat.metadata[KEY]["planes"]
    assert [m["score"] for m in planes_meta] == pytest.approx([r.score for r in refs], rel=1e-5)

    # A new false-alarm rate re-thresholds every plane without scoring again.
    cal = crop_model.calibration
    score.fpr_slider.setValue(20.0)
    score.apply_fpr()
    rows = {r["layer"]: r for r in score.results()}
    assert [rows[n]["verdict"] == "anomalous" for n in names] == [
        r.score > cal.threshold(0.2) for r in refs]
    level = cal.pixel_threshold(0.2, 1)
    np.testing.assert_array_equal(outline.data[2], (refs[2].error_map > level).astype(np.uint8))

    # Clicking a plane's row steps the viewer to that plane.
    score._on_row_clicked(score.table.row_of(score.stack_results.records[0].key(3)), 0)
    assert viewer.dims.point[0] == pytest.approx(stack.data_to_world([3, 0, 0])[0])
    assert viewer.layers.selection.active is stack

    # Scoring again refreshes the same layers in place; removing the stack drops its rows.
    n_layers = len(viewer.layers)
    assert score.start_scoring()
    qtbot.waitUntil(lambda: score.state.status is Status.IDLE, timeout=SCORE_TIMEOUT)
    assert len(viewer.layers) == n_layers and len(score.results()) == 6
    viewer.layers.remove(stack)
    assert [r["layer"] for r in score.results()] == ["flat"]


def test_a_dask_stack_is_read_one_plane_at_a_time(make_napari_viewer, qtbot, notes,
                                                  crop_model, crop_planes):
    reads: list[tuple[int, ...]] = []

    def load(block: np.ndarray, block_info: Any = None) -> np.ndarray:
        lo, hi = block_info[None]["array-location"][0]
        reads.append(tuple(range(lo, hi)))
        return crop_planes[lo:hi]

    lazy = da.map_blocks(load, da.zeros(crop_planes.shape, dtype=np.uint8,
                                        chunks=(1, 32, 32, 3)), dtype=np.uint8)
    viewer = make_napari_viewer()
    layer = viewer.add_image(lazy, rgb=True, name="lazy", multiscale=False)
    reads.clear()  # napari read the plane it shows
    score = _score(viewer, qtbot, crop_model, layer)
    assert not _errors(notes)
    assert reads and all(len(r) == 1 for r in reads)  # never more than one plane per read
    assert {r[0] for r in reads} == set(range(5))  # every plane was read
    heat = viewer.layers["lazy anomaly map"].data
    assert heat.shape == (5, 32, 32)
    np.testing.assert_allclose(heat[3], crop_model.score(crop_planes[3]).error_map, rtol=1e-5,
                               atol=1e-7)
    assert len(score.results()) == 5


def test_a_stack_is_scored_per_cell_into_one_cells_layer_of_its_shape(
        make_napari_viewer, qtbot, notes, cells_detector):
    from napari_cell_anomaly.core.sample import make_cell_field

    fields = [make_cell_field((160, 160), n_cells=10, anomaly_fraction=0.3, seed=s).image
              for s in (21, 22)]
    viewer = make_napari_viewer()
    stack = viewer.add_image(np.stack(fields), rgb=True, name="ts", scale=(3.0, 1.0, 1.0))
    score = viewer.window.add_plugin_dock_widget(PLUGIN, "Score images")[1]
    get_state(viewer).set_trained(cells_detector)
    score.cells_box.setChecked(True)  # cells found automatically
    # The event-loop turn (rendering step) in which each new layer is added.
    turns, added = [0], []
    score._render_timer.timeout.connect(lambda: turns.__setitem__(0, turns[0] + 1))
    viewer.layers.events.inserted.connect(lambda e: added.append((e.value.name, turns[0])))
    viewer.layers.selection.select_only(stack)
    assert score.start_scoring()
    qtbot.waitUntil(lambda: score.state.status is Status.IDLE, timeout=SCORE_TIMEOUT)
    assert not _errors(notes)
    # Its map and cells layer came one per turn, as for a 2-D image (the GUI stays live).
    assert {name for name, _ in added} == {"ts anomaly map", "ts cells"}
    assert len({turn for _, turn in added}) == len(added)
    cells_layer = viewer.layers["ts cells"]
    assert cells_layer.data.shape == (2, 160, 160)
    np.testing.assert_array_equal(cells_layer.scale, stack.scale)
    assert viewer.layers["ts anomaly map"].data.shape == (2, 160, 160)
    refs = [cells_detector.score_cells(f) for f in fields]
    rows = score.cell_rows()
    for p, ref in enumerate(refs):
        mine = [r for r in rows if r["plane"] == p]
        # The same cells as the 2-D model finds in that plane, under their own ids ...
        assert sorted(r["cell_id"] for r in mine) == sorted(ref.table["label"].tolist())
        assert sorted(r["score"] for r in mine) == pytest.approx(
            sorted(ref.table["score"].tolist()), rel=1e-5)
        # ... drawn in that plane of the cells layer, ids shifted by one offset per plane.
        drawn = cells_layer.data[p].astype(np.int64)
        np.testing.assert_array_equal(drawn > 0, ref.labels > 0)
        assert np.unique(drawn[ref.labels > 0] - ref.labels[ref.labels > 0]).size == 1
    # The stack's one row in the images table: its worst plane judged as score --csv judges
    # that plane (worst judged cell, score adjusted for the cells judged in the plane).
    planes = [cells_detector.score_field(f)[0] for f in fields]
    worst = max(planes, key=lambda r: r.score)
    (row,) = score.results()
    assert (row["score"], row["percentile"], row["verdict"]) == (
        worst.score, worst.percentile, "anomalous" if worst.is_anomaly else "normal")
    # Every cell of the stack has its own id.
    assert not set(np.unique(cells_layer.data[0])[1:]) & set(np.unique(cells_layer.data[1])[1:])
    # Showing a cell of plane 1 steps the viewer to that plane.
    label = int(np.unique(cells_layer.data[1])[-1])
    assert score.show_cell(label)
    assert viewer.dims.point[0] == pytest.approx(stack.data_to_world([1, 0, 0])[0])

    # Scored again per image: the cells layer goes, one row per plane comes.
    score.cells_box.setChecked(False)
    assert score.start_scoring()
    qtbot.waitUntil(lambda: score.state.status is Status.IDLE, timeout=SCORE_TIMEOUT)
    assert "ts cells" not in viewer.layers
    assert sorted(r["layer"] for r in score.results()) == ["ts [0]", "ts [1]"]


@pytest.mark.parametrize("case", ["per cell, patch model", "4-D"])
def test_stacks_that_cannot_be_scored_get_one_message(make_napari_viewer, notes, crop_model,
                                                      patch_detector, crop_planes, case):
    viewer = make_napari_viewer()
    score = viewer.window.add_plugin_dock_widget(PLUGIN, "Score images")[1]
    get_state(viewer).set_trained(crop_model)
    if case.startswith("per cell"):
        get_state(viewer).set_trained(patch_detector)
        layer = viewer.add_image(crop_planes, rgb=True, name="zs")
        score.cells_box.setChecked(True)
        expected = "'zs' is a stack: per cell"
    else:
        layer = viewer.add_image(np.zeros((2, 3, 32, 32), np.float32), name="tz")
        expected = "4-D array"
    before = snapshot(viewer)
    viewer.layers.selection.select_only(layer)
    assert score.start_scoring() is False
    messages = _errors(notes)
    assert len(messages) == 1 and expected in messages[0], messages
    assert snapshot(viewer) == before
    assert score.state.status is Status.IDLE
