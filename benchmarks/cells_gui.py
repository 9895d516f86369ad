"""GUI-thread time to render per-cell results of a field with ~1,000 cells (issue 7 target:
no stall over 100 ms). Prints the time of rendering a result (cells layer, features,
colours, table) and of re-thresholding it (the false-alarm slider).

Each GUI time is split in two: the widget's own call (handing arrays to napari, features,
colours, table) and the Qt events that follow it (napari's canvas redraw and the widgets'
repaint). The cost of a redraw of the unchanged canvas is printed on its own: under Xvfb it is
software OpenGL, much slower than a desktop GPU.

Run: ``xvfb-run -a python benchmarks/cells_gui.py``. The detector is trained briefly (40
steps): enough for the slider to change verdicts, which is what costs time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_cell_anomaly.core.sample import make_cell_field
from napari_cell_anomaly.core.training import TrainConfig, run_training
from napari_cell_anomaly.widgets import get_state
from napari_cell_anomaly.widgets._cells_layer import display_labels, other_labels


def _timed(app: QApplication, call: Callable[[], object]) -> tuple[float, float]:
    """Milliseconds of ``call()`` and of the Qt events it leaves (repaints)."""
    t0 = time.perf_counter()
    call()
    t1 = time.perf_counter()
    app.processEvents()
    return 1000 * (t1 - t0), 1000 * (time.perf_counter() - t1)


def main() -> None:
    fields = [make_cell_field((512, 512), n_cells=70, anomaly_fraction=0.0, seed=s,
                              radius=(14.0, 20.0)) for s in range(4)]
    det = run_training([f.image for f in fields], TrainConfig(mode="cells", max_steps=40,
                                                              batch_size=16),
                       labels=[f.labels for f in fields])
    big = make_cell_field((2048, 2048), n_cells=1200, anomaly_fraction=0.1, seed=1,
                          radius=(14.0, 20.0))
    t = time.perf_counter()
    cells = det.score_cells(big.image, big.labels)
    print(f"core: {len(cells)} cells scored in {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    labels = display_labels(cells.labels)  # done in the scoring worker
    others = other_labels(labels, cells.table["label"])
    print(f"worker thread: label image as {labels.dtype} and its other objects in "
          f"{1000 * (time.perf_counter() - t):.0f} ms")

    viewer = napari.Viewer(show=True)
    source = viewer.add_image(big.image, name="field", rgb=True)
    _, score = viewer.window.add_plugin_dock_widget("napari-cell-anomaly", "Score images")
    get_state(viewer).set_trained(det)
    app = QApplication.instance()
    for _ in range(20):
        app.processEvents()
    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    redraw = [_timed(app, canvas.update)[1] for _ in range(5)]

    renders = [_timed(app, lambda: score._render_cells(source, cells, det, labels, others))
               for _ in range(3)]
    first, later = renders[0], min(renders[1:], key=sum)
    print(f"render {len(cells)} cells (2 layers + features + colours + table): first "
          f"{first[0]:.0f} ms + {first[1]:.0f} ms events = {sum(first):.0f} ms; again "
          f"{later[0]:.0f} + {later[1]:.0f} = {sum(later):.0f} ms")
    slider, flagged = [], []
    for percent in (1.0, 10.0, 3.0, 15.0, 5.0, 12.0):
        score.fpr_slider.setValue(percent)
        slider.append(_timed(app, score.apply_fpr))
        flagged.append(int(score.cell_results.current.is_anomaly.sum()))
    print(f"cells flagged at 1, 10, 3, 15, 5, 12 % false alarms: {flagged}")
    calls, events = np.median([s[0] for s in slider]), np.median([s[1] for s in slider])
    worst = max(sum(s) for s in slider)
    print(f"re-threshold {len(cells)} cells (verdicts change): median {calls:.0f} ms + "
          f"{events:.0f} ms events = {calls + events:.0f} ms, max {worst:.0f} ms")
    same = _timed(app, score.apply_fpr)
    print(f"re-threshold, no verdict changed: {same[0]:.0f} + {same[1]:.0f} ms")
    print(f"canvas redraw alone (nothing changed): median {np.median(redraw):.0f} ms")
    viewer.close()


if __name__ == "__main__":
    main()
