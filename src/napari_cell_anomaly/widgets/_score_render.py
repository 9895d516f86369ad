"""The Score widget's result routing: worker events -> result layers, one step per turn.

napari takes ~50-150 ms of the GUI thread per layer added, and a worker can send several
results between two event-loop turns, so the events are queued and rendered one step (at most
one layer added or refreshed) per turn of a timer, :data:`PAUSE_MS` apart. Each event goes to
whoever shows it: a 2-D image's result to :class:`~._image_results.ImageResults`, its cells to
:class:`~._cells_results.CellsResults`, a stack plane to :class:`~._stack_results.StackResults`
(a stack plane's cells are merged into the stack's one cells record). The job's progress,
failures and out-of-range warnings are counted here and reported when the job ends. While a
job's results render, the garbage collector's full passes are held (:mod:`._gc_hold`): the
one that is due runs once the user pauses after the job's last result, instead of one every
few layers added. napari's controls panel of each layer added is
built in the turn after the layer (:mod:`._layer_controls`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QObject, QTimer

from ._cells_layer import CELLS
from ._common import layer_key
from ._gc_hold import collect_when_idle, hold_full_collections, release_full_collections
from ._layer_controls import DeferredControls
from ._layers import OUTLINE, RECONSTRUCTION, remove_own_layers
from ._score_job import CellsScored, Failed, Scored

if TYPE_CHECKING:
    import napari
    import numpy as np
    from napari.layers import Layer
    from qtpy.QtWidgets import QProgressBar

    from ..core.cellscores import CellScores
    from ..core.detector import AnomalyDetector, ScoreResult
    from ._cells_results import CellsResults
    from ._image_results import ImageResults
    from ._results_table import ImageResultsTable
    from ._score_plan import ScorePlan
    from ._stack_results import StackResults

__all__ = ["BATCH_ITEMS", "PAUSE_MS", "ResultRouter"]

#: Pause (ms) between two rendering turns. With none, Qt could run two turns (and the frame
#: drawn between them) before anything else got a turn: ``benchmarks/render_turns.py`` saw 4-6
#: gaps with over 100 ms of GUI CPU while 20 results rendered, against 0-1 with 5 ms pauses
#: (two runs each, loaded machine), for about 0.5 s more in all (about 100 turns).
PAUSE_MS = 5
#: Jobs of at least this many items hold the collector's full passes while they render (see
#: :mod:`._gc_hold`) and run the one that is due once the user pauses after their last result.
#: Every job: a full pass that fell inside a single per-cell image's render turn made that
#: turn's gap (121 ms of a 324 ms gap, ``benchmarks/cells_gui.py``, loaded machine).
BATCH_ITEMS = 1


class ResultRouter:
    """Queue of a scoring job's events, rendered one step per event-loop turn.

    Parameters
    ----------
    owner : QObject
        Parent of the render timer (the dock).
    viewer : napari.Viewer
        The viewer the results are shown in.
    images, cells, stacks : ImageResults, CellsResults, StackResults
        Who shows each kind of result.
    table : ImageResultsTable
        The images table (a stack scored per cell before loses its one row here).
    progress : QProgressBar
        Shows ``done/total``.
    options : callable
        ``options() -> (reconstruction, outline)``: the layers to add per image.
    on_rendered : callable
        Called after each result is shown (histogram, buttons).
    on_done : callable
        Called once the job has ended and every result sent is shown.
    """

    def __init__(self, owner: QObject, viewer: napari.Viewer, images: ImageResults,
                 cells: CellsResults, stacks: StackResults, table: ImageResultsTable,
                 progress: QProgressBar, options: Callable[[], tuple[bool, bool]],
                 on_rendered: Callable[[], None], on_done: Callable[[], None]) -> None:
        self.viewer = viewer
        self.images = images
        self.cells = cells
        self.stacks = stacks
        self.table = table
        self.progress = progress
        self._options = options
        self._on_rendered = on_rendered
        self._on_done = on_done
        self._queue: deque[Scored | CellsScored | Failed] = deque()
        self._steps: Iterator[None] | None = None
        self.worker_done = True
        self.controls = DeferredControls(owner, viewer)
        self.timer = QTimer(owner)
        self.timer.setInterval(PAUSE_MS)
        self.timer.timeout.connect(self._next)
        self._layers: list[Layer] = []
        self._planes: list[int | None] = []
        self._stack_cells: dict[str, Any] = {}
        self._detector: AnomalyDetector | None = None
        self._failures: list[Failed] = []
        self._warnings: list[str] = []
        self._done = 0
        self._held = False

    # ------------------------------------------------------------------------------------
    # the job
    # ------------------------------------------------------------------------------------
    def begin(self, plan: ScorePlan, detector: AnomalyDetector) -> None:
        """A new job: its items' layers and planes, counters reset, progress at 0."""
        self._layers = plan.layers
        self._planes = plan.planes
        self._stack_cells = plan.stack_cells
        self._detector = detector
        self._failures = []
        self._warnings = []
        self._done = 0
        self.worker_done = False
        if not self._held and len(plan.layers) >= BATCH_ITEMS:
            self._held = hold_full_collections()
        n = len(plan.layers)
        self.progress.setRange(0, n)
        self.progress.setValue(0)
        self.progress.setFormat(f"0/{n}")

    def push(self, event: Scored | CellsScored | Failed) -> None:
        """A worker event: queued, rendered by :meth:`_next` one step per turn."""
        self._queue.append(event)
        self.timer.start()

    def rendering(self) -> bool:
        """True while results received from the worker still wait to be shown."""
        return bool(self._queue) or self._steps is not None or self.controls.pending()

    def worker_finished(self) -> None:
        """The worker has ended: finish now if every result is shown, else once the last
        one is."""
        self.worker_done = True
        if not self.rendering():
            self.timer.stop()
            self._end()

    def clear(self) -> None:
        """Drop the results not yet shown (the dock is closing)."""
        self.timer.stop()
        self.controls.flush()
        self._queue.clear()
        self._steps = None
        self._release()

    def _release(self) -> bool:
        """End this job's hold of the collector's full passes; True if it held them."""
        if not self._held:
            return False
        self._held = False
        release_full_collections()
        return True

    def _end(self) -> None:
        if self._held:  # the pass the hold postponed: once the user pauses, not in her action
            collect_when_idle()
        self._release()
        self._on_done()

    def report(self) -> None:
        """Say how the job ended: stopped early, images that failed, range warnings."""
        n = len(self._layers)
        if self._done < n:
            self.progress.setFormat(f"stopped: {self._done}/{n}")
        failures = self._failures
        if failures:
            first = failures[0].reason
            more = f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""
            show_error(f"Could not score {len(failures)} of {n} image"
                       f"{'s' * (n != 1)}: {first}{more}")
        warnings = self._warnings
        if warnings:
            more = f" (+{len(warnings) - 1} more)" if len(warnings) > 1 else ""
            show_warning(f"Outside the training range: {warnings[0]}{more}")

    # ------------------------------------------------------------------------------------
    # one step per turn
    # ------------------------------------------------------------------------------------
    def _next(self) -> None:
        """One rendering step: at most one layer added or refreshed (see render_steps), or
        the napari controls of the layer added in the step before."""
        if self.controls.pending():
            self.controls.flush()
            return
        if self._steps is not None:
            with self.controls.deferring():
                more = next(self._steps, StopIteration) is not StopIteration
            if more:
                return
            self._steps = None
        if self._queue:
            self._steps = self._route(self._queue.popleft())
            return
        self.timer.stop()
        if self.worker_done:
            self._end()

    def _route(self, event: Scored | CellsScored | Failed) -> Iterator[None]:
        detector = self._detector
        self._done += 1
        n = len(self._layers)
        self.progress.setValue(self._done)
        self.progress.setFormat(f"{self._done}/{n}")
        if isinstance(event, Failed):
            self._failures.append(event)
            return
        source = self._layers[event.index]
        if source not in self.viewer.layers:  # removed while it was being scored
            return
        plane = self._planes[event.index]
        if isinstance(event, CellsScored) and plane is not None:
            # A stack's cells: all its planes' cells so far, as one cells layer of its shape
            # (merged plane by plane: only the new plane is written).
            self.stacks.drop(source)
            merged = self._stack_cells[layer_key(source)]
            merged.put(plane, event.cells)
            yield from self._cells_steps(source, merged.cells(), detector, merged.labels,
                                         merged.others())
        elif isinstance(event, CellsScored):
            yield from self._cells_steps(source, event.cells, detector, event.labels,
                                         event.others, event.features)
            if event.cells.range_warning:
                self._warnings.append(event.cells.range_warning)
        elif plane is not None:
            if self.cells.record_of(source) is not None:  # scored per cell before
                self.cells.drop(source)
                self.table.remove(layer_key(source))  # its one row: now a row per plane
                remove_own_layers(self.viewer, (CELLS,), source)
            reconstruction, outline = self._options()
            self.stacks.render_plane(source, plane, event.result, detector,
                                     reconstruction=reconstruction, outline=outline)
            self._on_rendered()
            if event.result.range_warning:
                self._warnings.append(event.result.range_warning)
        else:
            yield from self._image_steps(source, event.result, detector)
            if event.result.range_warning:
                self._warnings.append(event.result.range_warning)

    def _image_steps(self, source: Layer, result: ScoreResult,
                     detector: AnomalyDetector) -> Iterator[None]:
        """Show the result of ``source`` (see :meth:`ImageResults.render_steps`)."""
        self.cells.drop(source)
        # Scored per cell before: its cells layer would stay, looking current.
        remove_own_layers(self.viewer, (CELLS,), source)
        reconstruction, outline = self._options()
        yield from self.images.render_steps(source, result, detector,
                                            reconstruction=reconstruction, outline=outline)
        yield  # the histogram and buttons in a turn of their own
        self._on_rendered()

    def _cells_steps(self, source: Layer, cells: CellScores, detector: AnomalyDetector,
                     labels: np.ndarray | None = None, others: np.ndarray | None = None,
                     features: Any = None) -> Iterator[None]:
        """Show the cells of ``source`` (see :meth:`CellsResults.render_steps`, one layer per
        step)."""
        self.images.drop(source)  # scored per image before: this result replaces it
        # The per-image outline and reconstruction would stay, looking current.
        remove_own_layers(self.viewer, (OUTLINE, RECONSTRUCTION), source)
        yield from self.cells.render_steps(source, cells, detector, labels, others, features)
        yield  # the histogram and buttons in a turn of their own
        self._on_rendered()
