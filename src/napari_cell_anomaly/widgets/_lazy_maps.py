"""Lazy anomaly maps for big image layers (dask- or zarr-backed, or multiscale).

Scoring such a layer with a patch-mode model does not read it: :class:`LazyMapsBox` adds an
``"<image> anomaly map"`` layer whose data is a :class:`~..core.lazymaps.LazyAnomalyMap`
(a dask array computed chunk by chunk when napari draws it), so panning a slide computes
only what is looked at. For a multiscale layer its full-resolution level is scored and the
map gets the same pyramid (coarse levels show the chunks computed so far). **Compute all**
fills in the whole map in a worker thread, with napari's progress bar in the activity dock.
The computation lives in the core; this module only places layers and runs the worker.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Layer
from napari.qt.threading import create_worker
from napari.utils import progress
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

if TYPE_CHECKING:
    import napari

    from ..core.detector import AnomalyDetector
    from ..core.lazymaps import LazyAnomalyMap

__all__ = ["LazyMapsBox", "wants_lazy_map"]

#: While Compute all runs, the maps in view are redrawn at most this often (seconds).
REFRESH_S = 1.0


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


def _compute_job(maps: Sequence[LazyAnomalyMap], control: JobControl
                 ) -> Generator[tuple[int, int], None, None]:
    """Worker body: compute every chunk of every map, yielding ``(done, total)`` chunks over
    all maps; the ``stop`` flag ends it between chunks (what was computed is kept)."""
    total = sum(m.n_blocks for m in maps)
    done = 0
    for heat in maps:
        for _ in heat.iter_compute():
            done += 1
            yield done, total
            if control.stop.is_set():
                return


class LazyMapsBox(QWidget):
    """Lazy maps of the big layers scored so far, and the **Compute all** button.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer holding the layers.
    """

    def __init__(self, viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.maps: dict[str, tuple[Layer, LazyAnomalyMap]] = {}
        self._jobs = JobSlot()
        self._progress: progress | None = None
        self._last_refresh = 0.0
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.compute_button = QPushButton("Compute all")
        self.compute_button.setToolTip("Compute the whole anomaly map of every big image "
                                       "scored lazily (in the background, with progress); "
                                       "otherwise it is computed where you look.")
        self.compute_button.clicked.connect(self.compute_all)
        row.addWidget(self.label, 1)
        row.addWidget(self.compute_button)
        self.setVisible(False)

    def add_maps(self, layers: Sequence[Layer], detector: AnomalyDetector) -> list[Layer]:
        """Give each layer of ``layers`` that :func:`wants_lazy_map` a lazy anomaly map layer
        (replacing the plugin's earlier map of it); return those layers."""
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
        if chosen:
            self._update()
        return chosen

    def forget(self, source: Layer) -> None:
        """Drop the lazy map of a removed source layer."""
        if self.maps.pop(layer_key(source), None) is not None:
            self._update()

    def _update(self) -> None:
        done = sum(h.n_computed for _, h in self.maps.values())
        total = sum(h.n_blocks for _, h in self.maps.values())
        n = len(self.maps)
        self.label.setText(f"{n} big image{'s' * (n != 1)} scored lazily: {done} of {total} "
                           "map chunks computed (the rest as you look)")
        self.setVisible(bool(self.maps))
        self.compute_button.setEnabled(bool(self.maps) and done < total
                                       and not self._jobs.current.running())

    def compute_all(self) -> bool:
        """Compute the rest of every lazy map in a worker; False if nothing is left."""
        maps = [h for _, h in self.maps.values() if h.n_computed < h.n_blocks]
        if not maps or self._jobs.current.running():
            return False
        self._jobs.current = job = JobControl()
        total = sum(h.n_blocks for h in maps)
        self._progress = progress(total=total, desc="Computing anomaly maps")
        self._progress.update(sum(h.n_computed for h in maps))
        worker = create_worker(_compute_job, maps, job, _ignore_errors=True,
                               _start_thread=False)
        job.worker = worker
        worker.errored.connect(partial(report_error, "Computing the anomaly maps failed"))
        worker.yielded.connect(self._on_progress)
        worker.finished.connect(self._on_finished)
        self.compute_button.setEnabled(False)
        worker.start()
        return True

    def _on_progress(self, event: tuple[int, int]) -> None:
        if self._progress is not None:
            self._progress.update(event[0] - self._progress.n)
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

    def _refresh_layers(self) -> None:
        for source, _heat in self.maps.values():
            for layer in self.viewer.layers:
                meta = layer.metadata.get(PLUGIN_KEY)
                if (isinstance(meta, dict) and meta.get("lazy")
                        and meta.get("source_id") == layer_key(source)):
                    layer.refresh()

    def shutdown(self) -> None:
        """Stop a running Compute all and wait (at most a second) for its thread."""
        self._jobs.shutdown()
