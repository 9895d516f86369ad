"""Lazy anomaly maps for big image layers (dask- or zarr-backed, or multiscale).

Scoring such a layer with a patch-mode model does not read it: :class:`LazyMapsBox` adds an
``"<image> anomaly map"`` layer whose data is a :class:`~..core.lazymaps.LazyAnomalyMap`
(a dask array computed chunk by chunk when napari draws it), so panning a slide computes
only what is looked at. For a multiscale layer its full-resolution level is scored and the
map gets the same pyramid (coarse levels show the chunks computed so far). Each such layer
gets a row in the Score widget's results table at once, marked :data:`NOT_COMPUTED` (its
score needs the whole image). **Compute all** scores each of them in one streamed pass in a
worker thread (:meth:`~..core.lazymaps.LazyAnomalyMap.iter_score`), which also fills in the
map's chunks not computed yet, with napari's progress bar in the activity dock; each row gets
its numbers and verdict as its layer is done. The computation lives in the core; this module
only places layers and rows and runs the worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Layer
from napari.qt.threading import create_worker
from napari.utils import progress
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget

from ._common import (
    PLUGIN_KEY,
    JobControl,
    JobSlot,
    image_hw,
    is_own_layer,
    layer_key,
    report_error,
)
from ._layers import HEATMAP, geometry, keep_selection, layer_meta, remove_own_layers
from ._results_table import ImageResultsTable

if TYPE_CHECKING:
    import napari

    from ..core.detector import AnomalyDetector
    from ..core.lazymaps import LazyAnomalyMap

__all__ = ["NOT_COMPUTED", "LazyMapsBox", "wants_lazy_map"]

#: While Compute all runs, the maps in view are redrawn at most this often (seconds).
REFRESH_S = 1.0
#: The verdict column of a lazy map's row until Compute all has scored its layer.
NOT_COMPUTED = "lazy: not computed"


def wants_lazy_map(layer: Layer, detector: AnomalyDetector) -> bool:
    """True for a 2-D image layer backed by a lazy array (dask, zarr, ...) or a pyramid,
    given a patch-mode model: it gets a lazy map instead of being read whole."""
    if detector.mode != "patch" or not isinstance(layer, Image) or is_own_layer(layer):
        return False
    if len(image_hw(layer)) != 2:
        return False
    return bool(layer.multiscale) or not isinstance(layer.data, np.ndarray)


def _factors(layer: Image) -> list[int]:
    """Downsampling factor of each level of a multiscale layer (from the level heights)."""
    full = int(layer.data[0].shape[0])
    return [max(1, round(full / int(level.shape[0]))) for level in layer.data]


def _compute_job(maps: Sequence[tuple[str, LazyAnomalyMap]], control: JobControl
                 ) -> Generator[tuple[int, int, str, Any], None, None]:
    """Worker body: score each map's image in one streamed pass (filling the chunks not
    computed yet), yielding ``(rows_done, rows_total, key, None)`` over all maps after each
    band and ``(..., key, StreamedScore)`` when a map's image is scored; the ``stop`` flag
    ends it between batches of tiles (the chunks filled so far are kept)."""
    from ..core.tiling import PredictionStopped

    total = sum(heat.shape[0] for _, heat in maps)
    before = 0
    for key, heat in maps:
        steps = heat.iter_score(stop=control.stop.is_set)
        try:
            while True:
                rows, _ = next(steps)
                yield before + rows, total, key, None
        except StopIteration as end:
            yield before + heat.shape[0], total, key, end.value
        except PredictionStopped:
            return
        before += heat.shape[0]


class LazyMapsBox(QWidget):
    """Lazy maps of the big layers scored so far, and the **Compute all** button.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer holding the layers.

    Signals
    -------
    scored
        A lazy map's image got its score (its row is filled in).
    """

    scored = Signal()

    def __init__(self, viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.maps: dict[str, tuple[Layer, LazyAnomalyMap]] = {}
        self.table: ImageResultsTable | None = None
        self._fpr: Callable[[], float] = lambda: 0.05
        self._jobs = JobSlot()
        self._progress: progress | None = None
        self._last_refresh = 0.0
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.compute_button = QPushButton("Compute all")
        self.compute_button.setToolTip("Score every big image scored lazily and compute "
                                       "the rest of its anomaly map, in one pass over it (in "
                                       "the background, with progress); otherwise the map is "
                                       "computed where you look and the image has no score.")
        self.compute_button.clicked.connect(self.compute_all)
        row.addWidget(self.label, 1)
        row.addWidget(self.compute_button)
        self.setVisible(False)

    def show_rows_in(self, table: ImageResultsTable, fpr: Callable[[], float]) -> None:
        """Give each lazy map a row in ``table``, judged at the false-alarm rate ``fpr()``."""
        self.table, self._fpr = table, fpr

    def add_maps(self, layers: Sequence[Layer], detector: AnomalyDetector) -> list[Layer]:
        """Give each layer of ``layers`` that :func:`wants_lazy_map` a lazy anomaly map layer
        (replacing the plugin's earlier map of it) and a :data:`NOT_COMPUTED` table row;
        return those layers. Nothing of the images is read."""
        from ..core.lazymaps import LazyAnomalyMap

        chosen = [ly for ly in layers if wants_lazy_map(ly, detector)]
        lo, hi = detector.calibration.display_range()
        for source in chosen:
            full = source.data[0] if source.multiscale else source.data
            heat = LazyAnomalyMap(detector, full, name=source.name)
            data: Any = heat.levels(_factors(source)) if source.multiscale else heat.array
            remove_own_layers(self.viewer, (HEATMAP,), source)
            with keep_selection(self.viewer):
                self.viewer.add_image(
                    data, name=f"{source.name} {HEATMAP}", multiscale=bool(source.multiscale),
                    colormap="inferno", blending="additive", opacity=0.6,
                    contrast_limits=(float(lo), float(hi)), visible=bool(source.visible),
                    metadata=layer_meta(HEATMAP, source, lazy=True), **geometry(source))
            self.maps[layer_key(source)] = (source, heat)
            if self.table is not None:
                self.table.set_pending(layer_key(source), source.name, NOT_COMPUTED)
        if chosen:
            self._update()
        return chosen

    def forget(self, source: Layer) -> None:
        """Drop the lazy map of a removed source layer, and its table row."""
        if self.maps.pop(layer_key(source), None) is not None:
            if self.table is not None:
                self.table.remove(layer_key(source))
            self._update()

    def reveal(self, key: str) -> bool:
        """Show and select the source of row ``key`` and show its lazy anomaly map (as a
        click on an image's row does); False if the row is not a lazy map's."""
        found = self.maps.get(key)
        if found is None:
            return False
        source = found[0]
        if source in self.viewer.layers:
            source.visible = True
            for layer in self._map_layers(source):  # it may have started hidden
                layer.visible = True
            self.viewer.layers.selection.active = source
        return True

    # -- results ---------------------------------------------------------------------------
    def is_anomalous(self, heat: LazyAnomalyMap) -> bool:
        """Verdict of a scored lazy map's image at the current false-alarm rate."""
        return heat.score is not None and bool(
            heat.score.score > heat.detector.calibration.threshold(self._fpr()))

    def row(self, key: str) -> dict[str, Any] | None:
        """The Score widget's result row of table key ``key`` (None: not a lazy map); the
        numbers are NaN and the verdict :data:`NOT_COMPUTED` until its image is scored."""
        found = self.maps.get(key)
        if found is None:
            return None
        source, heat = found
        fpr, r = self._fpr(), heat.score
        nan = float("nan")
        return {"layer": source.name, "score": nan if r is None else r.score,
                "recon_error": nan if r is None else r.recon_error,
                "log_density": nan if r is None else r.log_density,
                "percentile": nan if r is None else r.percentile,
                "verdict": NOT_COMPUTED if r is None
                else "anomalous" if self.is_anomalous(heat) else "normal",
                "fpr": fpr, "threshold": heat.detector.calibration.threshold(fpr)}

    def scores(self, detector: AnomalyDetector) -> list[float]:
        """The scored lazy maps' image scores made by ``detector`` (for the histogram)."""
        return [h.score.score for _, h in self.maps.values()
                if h.score is not None and h.detector is detector]

    def apply_all(self) -> None:
        """Re-apply the current false-alarm rate to the scored lazy maps' verdicts."""
        if self.table is not None:
            self.table.set_verdicts({k: self.is_anomalous(h) for k, (_, h) in self.maps.items()
                                     if h.score is not None})

    def _show_score(self, key: str) -> None:
        found = self.maps.get(key)
        if found is None or self.table is None or found[1].score is None:
            return
        source, heat = found
        r = heat.score
        self.table.set_result(key, source.name,
                              (r.score, r.recon_error, r.log_density, r.percentile),
                              self.is_anomalous(heat))
        self.scored.emit()

    def _update(self) -> None:
        done = sum(h.n_computed for _, h in self.maps.values())
        total = sum(h.n_blocks for _, h in self.maps.values())
        n = len(self.maps)
        n_scored = sum(h.score is not None for _, h in self.maps.values())
        self.label.setText(f"{n} big image{'s' * (n != 1)} scored lazily: {done} of {total} "
                           f"map chunks computed (the rest as you look); {n_scored} of {n} "
                           "scored (Compute all)")
        self.setVisible(bool(self.maps))
        self.compute_button.setEnabled(n_scored < n and not self._jobs.current.running())

    def compute_all(self) -> bool:
        """Score every lazy map's image not scored yet, filling in the rest of its map, in a
        worker; False if nothing is left."""
        maps = [(k, h) for k, (_, h) in self.maps.items() if h.score is None]
        if not maps or self._jobs.current.running():
            return False
        self._jobs.current = job = JobControl()
        total = sum(h.shape[0] for _, h in maps)
        self._progress = progress(total=total, desc="Scoring big images (rows)")
        worker = create_worker(_compute_job, maps, job, _ignore_errors=True,
                               _start_thread=False)
        job.worker = worker
        worker.errored.connect(partial(report_error, "Computing the anomaly maps failed"))
        worker.yielded.connect(self._on_progress)
        worker.finished.connect(self._on_finished)
        self.compute_button.setEnabled(False)
        worker.start()
        return True

    def _on_progress(self, event: tuple[int, int, str, Any]) -> None:
        if self._progress is not None:
            self._progress.update(event[0] - self._progress.n)
        if event[3] is not None:  # a layer's image is scored: its row gets its numbers
            self._show_score(event[2])
            self._refresh_layers()
            self._update()
            return
        now = time.monotonic()
        if now - self._last_refresh > REFRESH_S:  # redraw what is in view now and then
            self._last_refresh = now
            self._refresh_layers()
            self._update()

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self._refresh_layers()
        self._update()

    def _map_layers(self, source: Layer) -> list[Layer]:
        """The lazy anomaly map layers of ``source`` in the viewer."""
        found = []
        for layer in self.viewer.layers:
            meta = layer.metadata.get(PLUGIN_KEY)
            if (isinstance(meta, dict) and meta.get("lazy")
                    and meta.get("source_id") == layer_key(source)):
                found.append(layer)
        return found

    def _refresh_layers(self) -> None:
        for source, _heat in self.maps.values():
            for layer in self._map_layers(source):
                layer.refresh()

    def shutdown(self) -> None:
        """Stop a running Compute all and wait (at most a second) for its thread."""
        self._jobs.shutdown()
