"""The Score widget's "Per cell" options: whether to score cells, and where the cells come from.

Cells come from a Labels layer of the user's (cellpose, StarDist, a hand annotation: any label
image of the image's height and width) or from the built-in segmentation, which runs inside
the scoring worker (:meth:`~..core.detector.AnomalyDetector.score_cells` with ``labels=None``).
The box only holds choices and hands the scoring job snapshots of the chosen cells
(:meth:`CellsSourceBox.job_items`); it never computes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Layer
from napari.utils.notifications import show_error
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QGroupBox,
    QLabel,
    QWidget,
)

from ._cells_layer import COLOR_MODES
from ._common import Plane, bind, image_hw, is_own_layer, layer_key, snapshot_planes

if TYPE_CHECKING:
    import napari

    from ..core.detector import AnomalyDetector

__all__ = ["FIND_CELLS", "CellsSourceBox", "labels_problem"]

#: The cells-source combo's entry for the built-in segmentation.
FIND_CELLS = "find cells automatically"


def labels_problem(labels: Labels, image_hw: tuple[int, ...], image_name: str) -> str | None:
    """Why ``labels`` cannot give the cells of an image of shape ``image_hw``; None if it can."""
    shape = tuple(int(s) for s in labels.data.shape)
    if labels.multiscale:
        return f"the Labels layer {labels.name!r} is multiscale; use one resolution level"
    if shape != tuple(image_hw):
        return (f"the Labels layer {labels.name!r} has shape {shape}, but the image "
                f"{image_name!r} is {'x'.join(map(str, image_hw))}: the cells must come from a "
                "label image of the image's height and width")
    return None


class CellsSourceBox(QGroupBox):
    """"Per cell" scoring choices: on/off, cells source, edge cells, colouring.

    Parameters
    ----------
    viewer : napari.Viewer
        Its 2-D Labels layers (other than the plugin's own) are offered as cells sources.
    images : callable, optional
        Returns the layers about to be scored. When it gives image layers, only the Labels
        layers of their height and width are offered; with none, every 2-D Labels layer is.
        Call :meth:`refresh_sources` when its answer changes (the box itself follows the
        viewer's layer list and layer names).
    """

    def __init__(self, viewer: napari.Viewer, images: Callable[[], list[Layer]] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__("Per cell", parent)
        self.viewer = viewer
        self._images = images or (lambda: [])
        self._name_watched: set[str] = set()
        self.setCheckable(True)
        self.setChecked(False)
        self.setToolTip("Score every cell of a field on its own (needs a model that scores "
                        "cells: a cells-mode model, or a whole-image model trained on cell "
                        "crops). Unchecked: one score per image.")
        grid = QGridLayout(self)
        grid.addWidget(QLabel("Cells from"), 0, 0)
        self.source_combo = QComboBox()
        self.source_combo.setToolTip("A Labels layer with one value per cell, of the image's "
                                     "height and width (only those are listed), or the "
                                     "built-in segmentation.")
        grid.addWidget(self.source_combo, 0, 1, 1, 2)
        self.edge_check = QCheckBox("Judge edge cells")
        self.edge_check.setToolTip("Also give a verdict to cells cut by the image edge "
                                   "(by default they are marked, grey, and left out).")
        grid.addWidget(self.edge_check, 1, 0, 1, 2)
        grid.addWidget(QLabel("Colour by"), 2, 0)
        self.color_combo = QComboBox()
        for key, text in COLOR_MODES.items():
            self.color_combo.addItem(text, key)
        self.color_combo.setToolTip("verdict: red anomalous, green normal, grey not judged; "
                                    "score: a colour scale from low (dark) to high (yellow).")
        grid.addWidget(self.color_combo, 2, 1)
        grid.setColumnStretch(1, 1)

        self._on_layers_changed()
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed,
                      viewer.layers.events.moved):
            bind(self, event, self._on_layers_changed)

    # -- choices ------------------------------------------------------------------------------
    def per_cell(self) -> bool:
        """True when scoring cells."""
        return self.isChecked()

    def labels_layer(self) -> Labels | None:
        """The chosen Labels layer; None for the built-in segmentation (or if it is gone)."""
        key = self.source_combo.currentData()
        return next((ly for ly in self.viewer.layers if layer_key(ly) == key), None)

    def include_border(self) -> bool:
        """True when cells cut by the image edge get verdicts."""
        return self.edge_check.isChecked()

    def color_mode(self) -> str:
        """``"verdict"`` or ``"score"``."""
        return str(self.color_combo.currentData())

    def choose_labels(self, layer: Labels | None) -> None:
        """Choose ``layer`` as the cells source (None: find cells automatically)."""
        key = None if layer is None else layer_key(layer)
        index = self.source_combo.findData(key)
        if index < 0 and layer is not None:
            raise ValueError(f"{layer.name!r} is not offered as a cells source (a 2-D Labels "
                             "layer of the height and width of the images to score)")
        self.source_combo.setCurrentIndex(max(index, 0))

    def job_items(self, detector: AnomalyDetector, layers: list[Layer]
                  ) -> list[tuple[Plane, np.ndarray | None]] | None:
        """The per-cell job's items ``(image, labels snapshot or None)`` for ``layers``;
        None (notified) when the cells cannot come from the chosen source.

        Snapshots, not views: the user may edit the layers while the worker reads them.
        """
        if detector.mode == "patch":
            show_error("This patch-mode model is calibrated on windows, not cells: train a "
                       "model with cells (Train widget, 'cells' source) or on cell crops to "
                       "score per cell, or untick 'Per cell'.")
            return None
        labels = self.labels_layer()
        if labels is None:
            planes = snapshot_planes([(ly.name, ly.data) for ly in layers])
            return [(plane, None) for plane in planes]
        if len(layers) != 1:
            show_error(f"The Labels layer {labels.name!r} gives the cells of one image, but "
                       f"{len(layers)} images are to be scored: select one image, or choose "
                       "'find cells automatically'.")
            return None
        image = layers[0]
        problem = labels_problem(labels, image_hw(image), image.name)
        if problem is not None:
            show_error(f"Cannot score cells: {problem}.")
            return None
        # A snapshot: the user may paint on the layer while the worker reads it.
        snapshot = np.array(labels.data, copy=True)
        if not snapshot.any():
            show_error(f"Cannot score cells: the Labels layer {labels.name!r} is empty (every "
                       "pixel is 0, so there are no cells).")
            return None
        return [(snapshot_planes([(image.name, image.data)])[0], snapshot)]

    # -- layer list ----------------------------------------------------------------------------
    def _on_layers_changed(self, *_: Any) -> None:
        for layer in self.viewer.layers:
            key = layer_key(layer)
            if isinstance(layer, Labels) and key not in self._name_watched:
                self._name_watched.add(key)
                bind(self, layer.events.name, self.refresh_sources)
        self.refresh_sources()

    def offered(self) -> list[Labels]:
        """The Labels layers listed as cells sources: 2-D, not the plugin's own, and of the
        height and width of the images about to be scored (when there are any)."""
        shapes = {image_hw(ly) for ly in self._images() if isinstance(ly, Image)}
        return [ly for ly in self.viewer.layers
                if isinstance(ly, Labels) and not is_own_layer(ly) and ly.ndim == 2
                and not ly.multiscale
                and (not shapes or shapes == {tuple(int(n) for n in ly.data.shape)})]

    def refresh_sources(self, *_: Any) -> None:
        """List the Labels layers of :meth:`offered` under their current names, keeping the
        current choice where it is still listed."""
        current = self.source_combo.currentData()
        self.source_combo.blockSignals(True)
        self.source_combo.clear()
        self.source_combo.addItem(FIND_CELLS, None)
        for layer in self.offered():
            self.source_combo.addItem(layer.name, layer_key(layer))
        index = self.source_combo.findData(current)
        self.source_combo.setCurrentIndex(max(index, 0))
        self.source_combo.blockSignals(False)
