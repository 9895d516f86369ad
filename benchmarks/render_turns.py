"""What the GUI thread does while the Score widget renders 20 results: turn by turn.

Run under a virtual display::

    xvfb-run -a python benchmarks/render_turns.py [--stacks 3]

A real viewer gets 20 RGB 512 x 512 fields (as in ``benchmarks/responsiveness.py``), the Score
widget scores them all with the shipped default model through the Score button and the real
worker, and the script records, while the results are shown:

- every rendering turn of the widget (one step of its render timer, 5 ms apart: a layer
  added, napari's controls of the layer added before, the histogram...): its wall time and the
  CPU time of the GUI thread in it, and whether it added a layer;
- the gaps between ticks of a 5 ms timer (the ``GapMonitor`` of ``responsiveness.py``) with the
  GUI thread's CPU time in each;
- Python's full garbage collections on the GUI thread (``gc.callbacks``);
- with ``--stacks N``, a sampler thread that reads the GUI thread's Python stack every
  millisecond (``sys._current_frames``) and prints, for the N gaps with the most GUI CPU, the
  stacks most often seen in them (what napari or the plugin was doing).

The CPU numbers per turn depend much less on other jobs sharing the machine than the gaps do
(a gap also holds waits for a core), so they are the ones to compare across code versions on
a loaded machine. Works with the widget before its render loop moved to ``_score_render``
(``score._render_next``) too, so that both can be run back to back.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import sys
import threading
import time

import napari
import numpy as np

from responsiveness import PLUGIN, GapMonitor, pump, pump_until, twenty_images


def _sampler(main_id: int, samples: list[tuple[float, tuple[str, ...]]],
             stop: threading.Event) -> None:
    while not stop.is_set():
        frame = sys._current_frames().get(main_id)
        stack = []
        while frame is not None:
            code = frame.f_code
            stack.append(f"{os.path.basename(code.co_filename)}:{code.co_name}")
            frame = frame.f_back
        samples.append((time.perf_counter(), tuple(stack)))
        time.sleep(0.001)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", type=int, default=0,
                        help="print the sampled stacks of this many busiest gaps")
    args = parser.parse_args()

    main_id = threading.get_ident()
    collections_ms: list[tuple[float, float]] = []
    started: list[float] = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if info["generation"] == 2 and threading.get_ident() == main_id:
            if phase == "start":
                started.append(time.perf_counter())
            elif started:
                t = started.pop()
                collections_ms.append((t, 1000 * (time.perf_counter() - t)))

    viewer = napari.Viewer(title="render turns")
    viewer.open_sample(PLUGIN, "anomalous_cells")
    _, score = viewer.window.add_plugin_dock_widget(PLUGIN, "Score images")
    from napari_cell_anomaly.widgets import Status, get_state

    state = get_state(viewer)
    pump_until(lambda: state.source == "default", 120, "the default model")
    field = np.asarray(viewer.layers["cells with anomalies"].data)
    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    for i, image in enumerate(twenty_images(field)):
        viewer.add_image(image, name=f"field {i:02d}", rgb=True)
    score.all_radio.setChecked(True)
    pump(1.0)

    # Time every turn of the widget's render timer.
    router = getattr(score, "router", None)
    step = router._next if router is not None else score._render_next
    timer = router.timer if router is not None else score._render_timer
    turns: list[tuple[float, float, float, int]] = []  # start, wall ms, GUI CPU ms, layers

    def timed_step() -> None:
        t, c, n = time.perf_counter(), time.thread_time(), len(viewer.layers)
        step()
        turns.append((t, 1000 * (time.perf_counter() - t), 1000 * (time.thread_time() - c),
                      len(viewer.layers) - n))

    timer.timeout.disconnect()
    timer.timeout.connect(timed_step)

    monitor = GapMonitor()
    monitor.start()
    samples: list[tuple[float, tuple[str, ...]]] = []
    stop = threading.Event()
    if args.stacks:
        threading.Thread(target=_sampler, args=(main_id, samples, stop), daemon=True).start()
    gc.callbacks.append(on_gc)
    pump(0.3)
    t0 = time.perf_counter()
    cpu = time.thread_time()
    score.score_button.click()
    click_ms = 1000 * (time.thread_time() - cpu)
    pump_until(lambda: state.status is Status.IDLE, 900, "scoring")
    pump(0.5)
    stop.set()
    gc.callbacks.remove(on_gc)
    monitor.timer.stop()

    ticks = np.asarray(monitor.ticks)
    first = max(int(np.searchsorted(ticks, t0)) - 1, 0)
    gaps = np.diff(ticks[first:]) * 1000
    gap_cpu = np.diff(np.asarray(monitor.cpu)[first:]) * 1000
    turn_cpu = np.asarray([c for _, _, c, _ in turns])
    adding = np.asarray([c for _, _, c, n in turns if n > 0])
    full = [round(ms) for t, ms in collections_ms if t >= t0]
    print(f"click (start_scoring on 20 images): {click_ms:.0f} ms of GUI CPU")
    print(f"rendering turns: {len(turns)}, of which adding a layer: {adding.size}")
    print(f"GUI CPU per turn: max {turn_cpu.max():.0f} ms; layer-adding turns: median "
          f"{np.median(adding):.0f}, max {adding.max():.0f} ms")
    print(f"gaps between 5 ms ticks from the click to idle + 0.5 s: longest {gaps.max():.0f} ms;"
          f" most GUI CPU in one gap {gap_cpu.max():.0f} ms; gaps with over 100 ms of GUI CPU:"
          f" {int((gap_cpu > 100).sum())}")
    print(f"full garbage collections on the GUI thread in that window (ms): {full or 'none'}")
    print(f"load average: {[round(x, 2) for x in os.getloadavg()]}")
    for j in np.argsort(gap_cpu)[::-1][: args.stacks]:
        a, b = ticks[first + j], ticks[first + j + 1]
        inside = [s for t, s in samples if a <= t <= b]
        print(f"\ngap at {a - t0:.2f} s: {gaps[j]:.0f} ms, GUI CPU {gap_cpu[j]:.0f} ms, "
              f"{len(inside)} stack samples; turns in it (wall/CPU ms): "
              f"{[(round(w), round(c)) for t, w, c, _ in turns if a <= t <= b]}")
        counts: collections.Counter[str] = collections.Counter(
            " < ".join(s[:6]) for s in inside)
        for stack, n in counts.most_common(8):
            print(f"  {n:4d}  {stack}")
    viewer.close()


if __name__ == "__main__":
    main()
