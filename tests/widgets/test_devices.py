"""The device choice of the Train and Score widgets: what is offered, and that it reaches the
core. Tests run on CPUs here; on a machine with a GPU, ``auto`` picks it, so choosing ``cpu``
below then also checks that the choice overrides ``auto``."""

from __future__ import annotations

import torch

from napari_cell_anomaly.core.device import describe_devices, found_devices, resolve_device
from napari_cell_anomaly.widgets import Status, get_state

PLUGIN = "napari-cell-anomaly"
TIMEOUT = 120_000


def _docks(viewer, qtbot):
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train anomaly model")
    _, score = viewer.window.add_plugin_dock_widget(PLUGIN, "Score images")
    qtbot.waitUntil(train.is_ready, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: score.hist is not None, timeout=TIMEOUT)  # the core is ready
    return train, score


def test_both_widgets_offer_auto_and_the_devices_found(make_napari_viewer, qtbot):
    train, score = _docks(make_napari_viewer(), qtbot)
    expected = ["auto", *found_devices()]
    assert train.device.offered() == expected and score.device.offered() == expected
    auto = str(resolve_device("auto"))
    assert train.device.itemText(0) == score.device.itemText(0) == f"auto ({auto})"
    assert train.device.spec() == score.device.spec() == "auto"  # the default
    assert describe_devices() in train.device.toolTip()
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert expected == ["auto", "cpu"] and auto == "cpu"  # this machine: CPUs only
    assert not train.device.choose("cuda:99")  # nothing that was not found can be chosen
    assert train.device.spec() == "auto"


def test_the_chosen_device_reaches_training_and_scoring(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "normal_cells")
    train, score = _docks(viewer, qtbot)
    train.select_matching("normal")
    for name, value in {"epochs": 1, "size": 32, "batch_size": 16}.items():
        getattr(train, name).setValue(value)
    assert train.device.choose("cpu")
    state = get_state(viewer)
    assert train.start_training()
    qtbot.waitUntil(lambda: state.status is Status.IDLE, timeout=TIMEOUT)
    detector = state.trained
    assert detector is not None and detector.device == torch.device("cpu")

    assert score.device.choose("cpu")
    state.set_active(detector, "trained")
    viewer.layers.selection.select_only(viewer.layers[0])
    assert score.start_scoring()
    qtbot.waitUntil(lambda: state.status is Status.IDLE, timeout=TIMEOUT)
    assert len(score.results()) == 1 and detector.device == torch.device("cpu")
