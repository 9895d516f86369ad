"""GUI tests of lazy anomaly maps for big (dask-backed, multiscale) image layers: scoring adds
a lazy heatmap layer without reading the image, the view computes only the chunks it shows,
and Compute all fills the map in a worker, equal to the in-memory map.

Real napari viewers under Xvfb, the real core and a real (briefly trained) patch-mode model.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from conftest import KEY, PLUGIN, SCORE_TIMEOUT, snapshot
from conftest import errors as _errors
from napari_cell_anomaly.core.sample import make_field
from napari_cell_anomaly.widgets import Status, get_state
from napari_cell_anomaly.widgets._lazy_maps import NOT_COMPUTED


@pytest.fixture(scope="module")
def field() -> np.ndarray:
    return make_field((600, 700), n_cells=80, anomaly_fraction=0.3, seed=4)[0]


def _score_dock(viewer):
    return viewer.window.add_plugin_dock_widget(PLUGIN, "Score images")[1]


def test_dask_layer_gets_a_lazy_map_that_compute_all_fills(make_napari_viewer, qtbot, notes,
                                                           patch_detector, field):
    viewer = make_napari_viewer()
    score = _score_dock(viewer)
    get_state(viewer).set_trained(patch_detector)
    source = viewer.add_image(da.from_array(field, chunks=(200, 200, 3)), name="slide",
                              rgb=True, visible=False)  # hidden: napari draws nothing of it
    before = snapshot(viewer)
    viewer.layers.selection.select_only(source)
    assert score.start_scoring()
    assert score.state.status is Status.IDLE  # no scoring job: the map is lazy
    qtbot.wait(50)
    heat_layer = viewer.layers["slide anomaly map"]
    assert heat_layer.metadata[KEY]["lazy"] and heat_layer.metadata[KEY]["source"] == "slide"
    assert isinstance(heat_layer.data, da.Array) and heat_layer.data.shape == (600, 700)
    assert tuple(heat_layer.contrast_limits) == pytest.approx(
        patch_detector.calibration.display_range())
    (_, heat), = score.lazy_maps.maps.values()
    assert heat.n_blocks == 2 * 2 and heat.n_computed == 0  # the map starts hidden too
    assert score.lazy_maps.isVisibleTo(score) and score.lazy_maps.compute_button.isEnabled()
    assert "0 of 4 map chunks computed" in score.lazy_maps.label.text()
    # Its row is in the results table at once, marked as not computed: no numbers yet.
    (row,) = score.results()
    assert row["layer"] == "slide" and row["verdict"] == NOT_COMPUTED
    assert np.isnan(row["score"]) and np.isnan(row["percentile"])
    assert score.table.item(0, 5).text() == NOT_COMPUTED and score.table.item(0, 1).text() == ""
    assert score.lazy_maps.compute_all()
    assert not score.lazy_maps.compute_button.isEnabled()  # the GUI goes on meanwhile
    qtbot.waitUntil(lambda: heat.n_computed == heat.n_blocks
                    and not score.lazy_maps._jobs.current.running(), timeout=SCORE_TIMEOUT)
    # The worker has stopped; its last signals reach the GUI thread on the next turns.
    qtbot.waitUntil(lambda: "1 of 1 scored" in score.lazy_maps.label.text(), timeout=5000)
    assert not score.lazy_maps.compute_button.isEnabled()
    assert "4 of 4 map chunks computed" in score.lazy_maps.label.text()
    assert "1 of 1 scored" in score.lazy_maps.label.text()
    ref = patch_detector.score(field)
    np.testing.assert_allclose(np.asarray(heat_layer.data), ref.error_map,
                               rtol=1e-4, atol=1e-6)
    # Compute all scored the image: its row has the numbers of the in-memory score.
    (row,) = score.results()
    assert row["score"] == pytest.approx(ref.score, rel=1e-4)
    assert row["percentile"] == pytest.approx(ref.percentile, abs=1e-6)
    assert row["verdict"] == ("anomalous" if ref.is_anomaly else "normal")
    assert score.table.item(0, 5).text() == row["verdict"]
    # A new false-alarm rate re-judges it, without scoring again.
    cal = patch_detector.calibration
    score.fpr_slider.setValue(20.0 if ref.score <= cal.threshold(0.05) else 0.1)
    score.apply_fpr()
    (again,) = score.results()
    assert again["verdict"] == ("anomalous" if ref.score > cal.threshold(again["fpr"])
                                else "normal")
    assert score.table.item(0, 5).text() == again["verdict"]
    assert snapshot(viewer)[: len(before)] == before and not _errors(notes)
    viewer.layers.remove(source)
    assert not score.lazy_maps.maps and not score.lazy_maps.isVisibleTo(score)
    assert score.table.rowCount() == 0 and score.results() == []


def test_multiscale_layer_map_computes_only_what_is_in_view(make_napari_viewer, qtbot,
                                                            patch_detector, field):
    viewer = make_napari_viewer(show=True)  # drawn: napari picks the pyramid level to read
    score = _score_dock(viewer)
    get_state(viewer).set_trained(patch_detector)
    full = da.from_array(np.tile(field, (4, 4, 1)), chunks=(512, 512, 3))[:2400, :2400]
    pyramid = [full, full[::2, ::2], full[::4, ::4]]
    source = viewer.add_image(pyramid, name="pyramid", rgb=True, multiscale=True)
    viewer.layers.selection.select_only(source)
    assert score.start_scoring()
    heat_layer = viewer.layers["pyramid anomaly map"]
    assert heat_layer.multiscale and len(heat_layer.data) == 3
    assert [tuple(lv.shape) for lv in heat_layer.data] == [(2400, 2400), (1200, 1200),
                                                             (600, 600)]
    (_, heat), = score.lazy_maps.maps.values()
    assert heat.n_blocks == 6 * 6
    # The whole slide in view: napari reads a coarse level, which computes nothing.
    qtbot.waitUntil(lambda: heat_layer.data_level > 0, timeout=10000)
    qtbot.wait(100)
    assert heat.n_computed == 0
    # Zoomed in on a corner: napari draws the full-resolution level there, and only the
    # chunks in view (and around) are computed.
    viewer.camera.center = (200, 200)
    viewer.camera.zoom = 8
    qtbot.waitUntil(lambda: heat_layer.data_level == 0 and heat.n_computed > 0, timeout=30000)
    assert heat.n_computed < heat.n_blocks // 2
    shown = np.asarray(heat_layer.data[0][200:260, 200:260])
    np.testing.assert_allclose(shown, patch_detector.score(field).error_map[200:260, 200:260],
                               rtol=1e-4, atol=1e-6)


def test_clicking_a_lazy_maps_row_shows_its_map_and_selects_its_source(
        make_napari_viewer, qtbot, patch_detector, field):
    viewer = make_napari_viewer()
    score = _score_dock(viewer)
    get_state(viewer).set_trained(patch_detector)
    source = viewer.add_image(da.from_array(field, chunks=(200, 200, 3)), name="slide",
                              rgb=True, visible=False)
    viewer.layers.selection.select_only(source)
    assert score.start_scoring()
    heat_layer = viewer.layers["slide anomaly map"]
    assert not heat_layer.visible  # the map starts hidden, as its source is
    other = viewer.add_image(field[:50, :50], name="other", rgb=True)
    viewer.layers.selection.select_only(other)
    (row,) = score.results()
    assert row["verdict"] == NOT_COMPUTED
    score.table.cellClicked.emit(score.table.row_of(next(iter(score.lazy_maps.maps))), 0)
    assert source.visible and heat_layer.visible
    assert viewer.layers.selection.active is source
    assert not score.lazy_maps.reveal("no such key")
