"""GUI-thread time to render per-cell results of a field with ~1,000 cells (issue 7 target:
no stall over 100 ms). Prints the time of rendering a result (cells layer, features,
colours, table) and of re-thresholding it (the false-alarm slider).

Run: ``xvfb-run -a python benchmarks/cells_gui.py``. The detector is trained for a few
steps only (timing, not quality).
"""

from __future__ import annotations

import time

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_cell_anomaly.core.sample import make_cell_field
from napari_cell_anomaly.core.training import TrainConfig, run_training
from napari_cell_anomaly.widgets import get_state


def main() -> None:
    fields = [make_cell_field((256, 256), n_cells=20, anomaly_fraction=0.0, seed=s)
              for s in range(4)]
    det = run_training([f.image for f in fields], TrainConfig(mode="cells", max_steps=6,
                                                              batch_size=16),
                       labels=[f.labels for f in fields])
    big = make_cell_field((2048, 2048), n_cells=1200, anomaly_fraction=0.1, seed=1,
                          radius=(14.0, 20.0))
    t = time.perf_counter()
    cells = det.score_cells(big.image, big.labels)
    print(f"core: {len(cells)} cells scored in {time.perf_counter() - t:.2f} s")

    viewer = napari.Viewer(show=True)
    source = viewer.add_image(big.image, name="field", rgb=True)
    _, score = viewer.window.add_plugin_dock_widget("napari-cell-anomaly", "Score images")
    get_state(viewer).set_trained(det)
    app = QApplication.instance()
    for _ in range(20):
        app.processEvents()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        score._render_cells(source, cells, det)
        app.processEvents()  # includes the repaint of canvas and table
        times.append(time.perf_counter() - t)
    print(f"render {len(cells)} cells (layer + features + colours + table + repaint): "
          f"first {1000 * times[0]:.0f} ms, then {1000 * min(times[1:]):.0f} ms")
    slider = []
    for percent in (1.0, 10.0, 2.0, 15.0):
        score.fpr_slider.setValue(percent)
        t = time.perf_counter()
        score.apply_fpr()
        app.processEvents()
        slider.append(time.perf_counter() - t)
    print(f"re-threshold {len(cells)} cells: median {1000 * np.median(slider):.0f} ms, "
          f"max {1000 * max(slider):.0f} ms")
    viewer.close()


if __name__ == "__main__":
    main()
