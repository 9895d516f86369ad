"""Regenerate the README screenshots from a real napari viewer.

Run under a virtual display on a machine without a screen::

    xvfb-run -a python scripts/screenshots.py            # writes docs/images/*.png
    xvfb-run -a python scripts/screenshots.py --only cells   # just docs/images/cells.png

It opens the plugin's own sample data, docks both widgets, and captures

* ``docs/images/train.png``: the Train widget mid-training, with the live loss plot;
* ``docs/images/score.png``: the anomalous field scored, with its heatmap overlay, the
  outlined anomalous regions, the results table and the score histogram;
* ``docs/images/cells.png``: a synthetic smear field (``make_cell_field``, 15% of its cells
  stained) scored per cell with a cells-mode model trained on normal fields and their
  labels: the cells layer coloured by verdict over the heatmap, and the Score widget's cells
  table with the worst cell's row selected.

Training is short (a couple of dozen seconds on a laptop CPU) but real.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import napari
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication

from napari_cell_anomaly.core.sample import make_cell_field
from napari_cell_anomaly.core.training import TrainConfig, run_training
from napari_cell_anomaly.widgets import Status, get_state

PLUGIN = "napari-cell-anomaly"
OUT = Path(__file__).resolve().parent.parent / "docs" / "images"


def _process_until(predicate, timeout: float) -> None:
    app = QApplication.instance()
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the viewer did not reach the expected state in time")
        app.processEvents()
        time.sleep(0.02)


def _settle(seconds: float = 0.5) -> None:
    app = QApplication.instance()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def _dismiss_notifications(viewer) -> None:
    """Close notification toasts so they do not cover the canvas."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    _settle(0.3)


def cells_screenshot(out: Path, width: int, height: int) -> None:
    """``cells.png``: a field scored per cell, the cells layer, the cells table."""
    # Cells of one size range in training and test: absolute size is a sign of disease
    # to a cells-mode model, so a field of larger cells would be flagged as a whole.
    radius = (14.0, 20.0)
    normal = [make_cell_field((384, 384), n_cells=50, anomaly_fraction=0.0, seed=s,
                              radius=radius) for s in range(6)]
    detector = run_training([f.image for f in normal],
                            TrainConfig(mode="cells", max_steps=120, epochs=100, seed=0),
                            labels=[f.labels for f in normal])
    field = make_cell_field((768, 768), n_cells=150, anomaly_fraction=0.15, seed=11,
                            radius=radius)

    viewer = napari.Viewer(title="napari-cell-anomaly")
    viewer.window._qt_window.resize(width, height)
    image = viewer.add_image(field.image, name="smear", rgb=True)
    labels = viewer.add_labels(field.labels, name="smear labels", visible=False)
    dock, score = viewer.window.add_plugin_dock_widget(PLUGIN, "Score images")
    viewer.window._qt_window.resizeDocks([dock], [560], Qt.Orientation.Horizontal)
    get_state(viewer).set_trained(detector)
    viewer.layers.selection.select_only(image)
    score.cells_box.setChecked(True)
    score.cells_box.choose_labels(labels)
    _settle()
    assert score.start_scoring()
    _process_until(lambda: score.state.status is Status.IDLE, timeout=600)
    _settle()
    record = score.cell_results.current
    worst = record.field.row  # the worst judged cell
    score.show_cell(int(record.cells.table["label"][worst]))
    viewer.reset_view()  # the whole field: every verdict at a glance
    viewer.layers.selection.select_only(viewer.layers["smear cells"])
    _dismiss_notifications(viewer)
    viewer.screenshot(str(out / "cells.png"), canvas_only=False, flash=False)
    print("wrote", out / "cells.png")
    viewer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output folder")
    parser.add_argument("--width", type=int, default=1480)
    parser.add_argument("--height", type=int, default=980)
    parser.add_argument("--only", choices=("train-score", "cells"), default=None,
                        help="make only these screenshots (default: all)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "cells"):
        cells_screenshot(args.out, args.width, args.height)
    if args.only == "cells":
        return

    viewer = napari.Viewer(title="napari-cell-anomaly")
    viewer.window._qt_window.resize(args.width, args.height)
    viewer.open_sample(PLUGIN, "normal_cells")
    viewer.open_sample(PLUGIN, "anomalous_cells")
    train_dock, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train anomaly model")
    score_dock, score = viewer.window.add_plugin_dock_widget(PLUGIN, "Score images",
                                                             tabify=True)
    viewer.window._qt_window.resizeDocks([train_dock, score_dock], [430, 430],
                                         Qt.Orientation.Horizontal)
    for layer in viewer.layers:
        layer.visible = layer.name == "normal cells"
    viewer.layers.selection.select_only(viewer.layers["normal cells"])
    _settle()
    train_dock.raise_()
    viewer.reset_view()
    _settle()

    # (a) mid-training: the loss plot has a few epochs of train and validation loss.
    train.name_filter.setText("normal")
    train.epochs.setValue(20)
    train.advanced.expand(animate=False)
    assert train.start_training()
    _process_until(lambda: len(train.plot.val_x) >= 8, timeout=900)
    _dismiss_notifications(viewer)
    viewer.screenshot(str(args.out / "train.png"), canvas_only=False, flash=False)
    print("wrote", args.out / "train.png")
    _process_until(lambda: train.state.status is Status.IDLE, timeout=900)

    # (b) the anomalous field scored: heatmap overlay, outlines, table, histogram.
    target = viewer.layers["cells with anomalies"]
    for layer in viewer.layers:
        layer.visible = layer is target
    viewer.layers.selection.select_only(target)
    score_dock.raise_()
    _settle()
    assert score.start_scoring()
    _process_until(lambda: score.state.status is Status.IDLE, timeout=600)
    viewer.layers.selection.select_only(viewer.layers["cells with anomalies anomaly map"])
    # Zoom on the lower left quarter, where several cells carry stains.
    viewer.scene.camera.center = (300, 210)
    viewer.scene.camera.zoom = viewer.scene.camera.zoom * 1.6
    score.table.selectRow(0)
    _dismiss_notifications(viewer)
    viewer.screenshot(str(args.out / "score.png"), canvas_only=False, flash=False)
    print("wrote", args.out / "score.png")
    viewer.close()


if __name__ == "__main__":
    main()
