"""GUI stalls while the Score widget shows per-cell results of a 2048 x 2048 field with
~1,000 cells (issue 7 target: no GUI stall over 100 ms).

Run under a virtual display::

    xvfb-run -a python benchmarks/cells_gui.py [--cells 1200] [--repeats 3] [--profile OUT]

A cells-mode detector is trained briefly (40 steps: enough for the false-alarm slider to change
verdicts, which is what costs time) and a synthetic 2048 x 2048 field with ``--cells`` cells
(10% anomalous) is shown in a real viewer with the Score widget, its cells given as a Labels
layer. Everything then goes through the widget's real path: the Score button and the real
worker thread, the slider, the colouring choice, real mouse clicks on the cells table, and the
canvas click handler. A 5 ms ``QTimer`` ticks on the GUI thread throughout (the ``GapMonitor``
of ``benchmarks/responsiveness.py``); for each action it prints the longest gap between ticks
(the stall a user feels) and the most CPU time the GUI thread used between two ticks (on a
loaded machine a gap also holds waits for a core; this column does not). Each action is
repeated ``--repeats`` times; the best and worst are printed. For scoring, the window measured
starts when the worker's result reaches the GUI thread (scoring itself runs in the worker).

"first image" is the first per-cell result of the process (it pays one-time costs: imports,
vispy's first line/polygon visuals); "new image" scores another field layer (new layers made);
"again" scores the same layer again (layers refreshed in place). The earlier fields are hidden
before a new one is scored, as napari draws every visible layer.

Under Xvfb napari draws with software OpenGL: a redraw of the canvas is printed on its own,
and it is part of every gap here (on a desktop GPU it is much cheaper). Python's full garbage
collections on the GUI thread are counted: one can fall in any action (it walks every object
made since the widget's loader froze the long-lived ones) and shows up as a worst case.
``--profile OUT`` writes a cProfile of the GUI thread during the first image's rendering.
The widget shows a result one layer per turn of its render timer (turns 5 ms apart;
napari's controls panel of each new layer in the turn after it, the histogram in a turn of
its own), with the canvas frame drawn between turns; the 5 ms tick timer does not always get a
tick in between (logging each turn showed a gap holding the cells-layer turn and the frame
after it), so a gap here can be longer than any single turn.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import threading
import time
from typing import Any

import napari
import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtTest import QTest
from qtpy.QtWidgets import QApplication

from napari_cell_anomaly.core.sample import make_cell_field
from napari_cell_anomaly.core.training import TrainConfig, run_training
from napari_cell_anomaly.widgets import get_state
from responsiveness import GapMonitor, pump, pump_until


def _field(n_cells: int, seed: int) -> Any:
    return make_cell_field((2048, 2048), n_cells=n_cells, anomaly_fraction=0.1, seed=seed,
                           radius=(14.0, 20.0))


def _summary(name: str, rows: list[dict[str, Any]]) -> str:
    gaps = [r["longest_gap_ms"] for r in rows]
    cpus = [r["gui_cpu_ms"] for r in rows]
    return (f"{name:<46} best {min(gaps):5.0f} ms (GUI CPU {min(cpus):4.0f})   worst "
            f"{max(gaps):5.0f} ms (GUI CPU {max(cpus):4.0f})   n={len(rows)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1200, help="cells in the field")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each action")
    parser.add_argument("--profile", default=None, help="cProfile output of the first render")
    args = parser.parse_args()

    app = QApplication.instance() or QApplication([])
    viewer = napari.Viewer(show=True)
    _, score = viewer.window.add_plugin_dock_widget("napari-cell-anomaly", "Score images")
    from napari_cell_anomaly.widgets import _core_loader

    # As in a user's session, the widget's loader imports the core and freezes the objects
    # that exist then (see _core_loader.freeze_long_lived_objects) before a model is trained.
    pump_until(lambda: _core_loader._thread is None or not _core_loader._thread.is_alive(),
               120, "the core loader thread")
    fields = [make_cell_field((512, 512), n_cells=70, anomaly_fraction=0.0, seed=s,
                              radius=(14.0, 20.0)) for s in range(4)]
    det = run_training([f.image for f in fields], TrainConfig(mode="cells", max_steps=40,
                                                              batch_size=16),
                       labels=[f.labels for f in fields])
    get_state(viewer).set_trained(det)
    score.cells_box.setChecked(True)
    pump(0.5)
    monitor = GapMonitor()
    monitor.start()
    gen2: list[float] = []  # Python's full garbage collections on the GUI thread (ms)
    started: list[float] = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if info["generation"] == 2 and threading.current_thread() is threading.main_thread():
            if phase == "start":
                started.append(time.perf_counter())
            elif started:
                gen2.append(1000 * (time.perf_counter() - started.pop()))

    gc.callbacks.append(on_gc)

    # The moment each worker result reaches the GUI thread.
    arrivals: list[float] = []
    on_event = score._on_event

    def timed_event(event: Any) -> None:
        arrivals.append(time.perf_counter())
        on_event(event)

    score._on_event = timed_event  # type: ignore[method-assign]

    def score_layer(source: Any, user: Any, profile: cProfile.Profile | None = None
                    ) -> dict[str, Any]:
        score.cells_box.choose_labels(user)
        viewer.layers.selection.select_only(source)
        arrivals.clear()
        if profile is not None:
            profile.enable()
        assert score.start_scoring()
        pump_until(lambda: score.state.status.value == "idle", 300, "scoring")
        done = time.perf_counter()
        pump(0.3)  # the repaints that follow
        if profile is not None:
            profile.disable()
        start = arrivals[-1]
        return {"longest_gap_ms": monitor.longest_gap(start, time.perf_counter()),
                "gui_cpu_ms": monitor.busiest_gap(start, time.perf_counter()),
                "seconds": done - start}

    lines = []
    sources = []
    firsts: list[dict[str, Any]] = []
    profile = cProfile.Profile() if args.profile else None
    for i in range(args.repeats):
        big = _field(args.cells, seed=1 + i)
        for layer in viewer.layers:
            layer.visible = False
        source = viewer.add_image(big.image, name=f"field {i}", rgb=True)
        user = viewer.add_labels(big.labels, name=f"field {i} labels", visible=False)
        pump(0.5)
        sources.append((source, user))
        firsts.append(score_layer(source, user, profile if i == 0 else None))
        if i == 0 and profile is not None:
            profile.dump_stats(args.profile)
    layer = viewer.layers[f"{sources[-1][0].name} cells"]
    n = len(layer.features)
    lines.append(f"{n} cells on a 2048 x 2048 field; each row: longest GUI gap, best and worst "
                 "of the repeats")
    lines.append(_summary("score: first image of the process", firsts[:1]))
    if len(firsts) > 1:
        lines.append(_summary("score: a new image (new layers)", firsts[1:]))
    again = [score_layer(*sources[-1]) for _ in range(args.repeats)]
    lines.append(_summary("score: the same image again (refresh)", again))

    def phase(name: str, action: Any, settle: float = 0.3) -> dict[str, Any]:
        with monitor.phase(name) as row:
            action()
            pump(settle)
        return row

    flagged = []
    slider = []
    for percent in (1.0, 10.0, 3.0, 15.0, 5.0, 12.0)[: 2 * args.repeats]:
        slider.append(phase("slider", lambda p=percent: score.fpr_slider.setValue(p), 0.6))
        flagged.append(int(layer.features["is_anomaly"].sum()))
    lines.append(_summary("move the false-alarm slider (verdicts change)", slider))
    lines.append(f"  cells flagged at 1, 10, 3, 15, 5, 12 % false alarms: {flagged}")

    combo = score.cells_box.color_combo
    to_score, to_verdict = [], []
    for _ in range(args.repeats):
        to_score.append(phase("colour by score", lambda: combo.setCurrentIndex(
            combo.findData("score"))))
        to_verdict.append(phase("colour by verdict", lambda: combo.setCurrentIndex(
            combo.findData("verdict"))))
    lines.append(_summary("colouring: verdict -> score", to_score))
    lines.append(_summary("colouring: score -> verdict", to_verdict))

    table = score.cells_table
    model = table.model()
    clicks, picks, selects = [], [], []
    for row in np.linspace(0, model.rowCount() - 1, args.repeats + 2).astype(int)[1:-1]:
        def click(row: int = int(row)) -> None:
            index = model.index(row, 1)
            table.scrollTo(index)
            QTest.mouseClick(table.viewport(), Qt.MouseButton.LeftButton,
                             pos=table.visualRect(index).center())
        clicks.append(phase("click a table row", click))
        assert table.selected_label() == int(layer.selected_label) == model.label_at(int(row))
    lines.append(_summary("click a table row (centre, zoom, select)", clicks))
    features = layer.features.set_index("label")
    for label in features.index[:: max(len(features) // (args.repeats + 1), 1)][1:][
            : args.repeats]:
        y, x = features.loc[label, ["centroid_y", "centroid_x"]]
        position = layer.data_to_world([round(y), round(x)])
        picks.append(phase("click a cell in the viewer", lambda p=position: score.pick_cell(p)))
        selects.append(phase("select a cell in the layer",
                             lambda lab=int(label): setattr(layer, "selected_label", lab)))
    lines.append(_summary("click a cell in the viewer (row selected)", picks))
    lines.append(_summary("set the layer's selected label (row selected)", selects))

    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    redraw = [phase("redraw", canvas.update, 0.1) for _ in range(args.repeats)]
    lines.append(_summary("canvas redraw alone (nothing changed)", redraw))
    print("\n".join(lines), flush=True)
    print(f"full garbage collections on the GUI thread while measuring: {len(gen2)}"
          + (f" ({', '.join(f'{t:.0f}' for t in gen2)} ms: part of the gaps they fell in)"
             if gen2 else ""), flush=True)
    gc.callbacks.remove(on_gc)
    monitor.timer.stop()
    viewer.close()
    app.processEvents()


if __name__ == "__main__":
    main()
