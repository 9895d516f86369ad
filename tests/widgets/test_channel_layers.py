"""Multi-channel images opened with ``channel_axis`` (one layer per channel) train and score as
one image in a real viewer; channel layers that cannot be combined get one notification."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import KEY, PLUGIN, SCORE_TIMEOUT, TRAIN_TIMEOUT, snapshot
from conftest import errors as _errors
from conftest import warnings_of as _warnings
from napari_cell_anomaly.core.detector import default_model_path
from napari_cell_anomaly.widgets import Status
from napari_cell_anomaly.widgets._channel_layers import group_channel_layers


def _field(seed: int, side: int = 96, hot: bool = False) -> np.ndarray:
    """(2, side, side) uint16: nuclei in channel 0, a dimmer cytoplasm stain in channel 1."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    nuc = np.zeros((side, side))
    for _ in range(8):
        cy, cx = rng.uniform(8, side - 8, 2)
        nuc += ((yy - cy) ** 2 + (xx - cx) ** 2 < 25) * 2000.0
    cyto = 0.4 * nuc + 300
    if hot:
        cyto[30:50, 30:50] += 3000  # a bright blob in channel 1 only
    out = np.stack([nuc + 200, cyto]) + rng.normal(0, 30, (2, side, side))
    return np.clip(out, 0, 65535).astype(np.uint16)


def _docks(viewer):
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train anomaly model")
    _, score = viewer.window.add_plugin_dock_widget(PLUGIN, "Score images")
    return train, score


def test_channel_axis_layers_group_into_one_image(make_napari_viewer):
    viewer = make_napari_viewer()
    a = viewer.add_image(_field(0), channel_axis=0, name=["DAPI", "GFP"])
    viewer.add_image(_field(1)[0], name="plain")
    viewer.add_image(_field(2)[0], name="plain too")  # same shape, not additive: separate
    groups = group_channel_layers(list(viewer.layers), "auto")
    assert [g.name for g in groups] == ["DAPI + GFP", "plain", "plain too"]
    assert groups[0].data.shape == (96, 96, 2)
    np.testing.assert_array_equal(groups[0].data[..., 1], a[1].data)
    assert groups[0].channel_names == ("DAPI", "GFP")
    assert len(group_channel_layers(list(viewer.layers), "separate")) == 4


def test_two_channel_image_trains_and_scores_as_one_image(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    viewer.add_image(_field(0, side=128), channel_axis=0, name=["DAPI", "GFP"])
    test_layers = viewer.add_image(_field(9, side=128, hot=True), channel_axis=0,
                                   name=["DAPI test", "GFP test"])
    train, score = _docks(viewer)
    train.select_layers([viewer.layers["DAPI"]])  # one channel selected: its image comes along
    assert "2 channel layers each" in train.selection_label.text()
    train.epochs.setValue(2)
    train.size.setValue(32)
    train.batch_size.setValue(16)
    train.mode.setCurrentIndex(train.mode.findData("patch"))
    before = snapshot(viewer)
    assert train.start_training()
    qtbot.waitUntil(lambda: train.state.status is Status.IDLE, timeout=TRAIN_TIMEOUT)
    det = train.state.trained
    assert det is not None, _errors(notes)
    assert det.preprocessing.channels == "multi" and det.preprocessing.n_channels == 2
    assert det.preprocessing.names == ("DAPI", "GFP")
    assert det.network.config.in_channels == 2
    assert det.scoring.error == "mse"
    assert snapshot(viewer) == before

    viewer.layers.selection.select_only(test_layers[1])  # the GFP layer of the test image
    assert score.start_scoring()
    qtbot.waitUntil(lambda: score.state.status is Status.IDLE, timeout=SCORE_TIMEOUT)
    assert not _errors(notes)
    heat = viewer.layers["DAPI test anomaly map"]  # shown on the image's first channel
    assert heat.data.shape == (128, 128)
    assert heat.metadata[KEY]["source"] == "DAPI test"
    assert score.table.rowCount() == 1
    # the planted blob in channel 1 is where the map is high
    assert heat.data[30:50, 30:50].mean() > 2 * np.median(heat.data)
    # a plain grayscale layer given to the 2-channel model: one clear notification
    viewer.add_image(_field(3, side=128)[0], name="one channel")
    viewer.layers.selection.select_only(viewer.layers["one channel"])
    assert score.start_scoring()
    qtbot.waitUntil(lambda: score.state.status is Status.IDLE, timeout=SCORE_TIMEOUT)
    assert any("expects 2 channels (DAPI, GFP)" in e for e in _errors(notes))
    # an RGB layer to the 2-channel model: one clear notification too, nothing changed
    rgb = np.random.default_rng(4).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    viewer.add_image(rgb, name="photo", rgb=True)
    viewer.layers.selection.select_only(viewer.layers["photo"])
    before = snapshot(viewer)
    assert score.start_scoring()
    qtbot.waitUntil(lambda: score.state.status is Status.IDLE, timeout=SCORE_TIMEOUT)
    assert any("expects 2 channels (DAPI, GFP); got an RGB" in e for e in _errors(notes))
    assert snapshot(viewer) == before


@pytest.mark.parametrize("widget", ["train", "score"])
def test_channel_layers_of_different_shapes_are_one_notification(make_napari_viewer, qtbot,
                                                                 notes, widget):
    if widget == "score" and default_model_path() is None:
        pytest.skip("scoring needs a model: this installation ships no default model")
    viewer = make_napari_viewer()
    viewer.add_image(_field(0)[0], name="big")
    viewer.add_image(_field(1, side=64)[0], name="small")
    before = snapshot(viewer)
    train, score = _docks(viewer)
    if widget == "train":
        train.images_box.channels.set_choice("one")
        train.select_layers(list(viewer.layers))
        assert "Cannot combine" in train.selection_label.text()
        assert train.start_training() is False
        text = _warnings(notes)
    else:
        qtbot.waitUntil(lambda: not score.model_box.loading(), timeout=SCORE_TIMEOUT)
        score.targets.channels.set_choice("one")
        viewer.layers.selection.update(set(viewer.layers))
        assert score.start_scoring() is False
        text = _errors(notes)
    assert any("must have the same shape" in t and "'big' (96, 96)" in t for t in text), text
    assert snapshot(viewer) == before
