"""The Train widget's training data: which image layers, which folder, which cells.

:class:`TrainingImagesBox` lists the viewer's image layers (the plugin's own left out) under
their current names, selects them by hand or by a name filter, holds an optional folder of
normal images, and offers the cells source of cells mode: none, the built-in segmentation, or a
Labels layer of the chosen image's height and width, and the channels choice
(:mod:`._channel_layers`: with the default, the channel layers of a multi-channel image opened
with ``channel_axis`` are one training image, whichever of them is selected). It only holds
choices; the Train widget reads them when Train is pressed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ._channel_layers import (
    ChannelImage,
    ChannelLayersError,
    ChannelsCombo,
    group_channel_layers,
)
from ._common import bind, image_hw, is_own_layer, layer_key

if TYPE_CHECKING:
    import napari

__all__ = ["FIND_CELLS", "NO_CELLS", "TrainingImagesBox"]

#: Cells-combo entries that are not layers.
NO_CELLS = "none"
FIND_CELLS = "find"


class TrainingImagesBox(QGroupBox):
    """"Normal images to learn from": image layers, a folder, and the cells source.

    Parameters
    ----------
    viewer : napari.Viewer
        Its image layers are listed; the list follows the layer list and layer names.
    """

    def __init__(self, viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__("Normal images to learn from", parent)
        self.viewer = viewer
        self._listed: list[Image] = []
        self._name_watched: set[str] = set()
        form = QVBoxLayout(self)
        self.layer_list = QListWidget()
        self.layer_list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.layer_list.setToolTip("Image layers of normal cells (Ctrl/Shift-click to pick "
                                   "several). Each plane of a stack counts as one image.")
        self.layer_list.setMinimumHeight(70)
        self.layer_list.setMaximumHeight(120)
        form.addWidget(self.layer_list)
        self.name_filter = QLineEdit()
        self.name_filter.setPlaceholderText("select layers whose name contains…")
        self.name_filter.setClearButtonEnabled(True)
        form.addWidget(self.name_filter)
        row = QHBoxLayout()
        row.addWidget(QLabel("Channels"))
        self.channels = ChannelsCombo()
        row.addWidget(self.channels, 1)
        form.addLayout(row)
        row = QHBoxLayout()
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("optional: folder of normal images")
        self.folder_edit.setClearButtonEnabled(True)
        self.folder_button = QPushButton("Browse…")
        row.addWidget(self.folder_edit, 1)
        row.addWidget(self.folder_button)
        form.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(QLabel("Cells"))
        self.cells_combo = QComboBox()
        self.cells_combo.setToolTip(
            "Learn cell by cell (cells mode): from a Labels layer of the normal cells of the "
            "chosen image (same height and width; only labelled objects are used), or from "
            "cells found automatically in every training image. 'none': learn whole images "
            "or patches.")
        row.addWidget(self.cells_combo, 1)
        form.addLayout(row)
        self.selection_label = QLabel()
        self.selection_label.setTextFormat(Qt.TextFormat.PlainText)
        self.selection_label.setWordWrap(True)
        form.addWidget(self.selection_label)

        self.folder_button.clicked.connect(self._folder_dialog)
        self.folder_edit.textChanged.connect(self._update_selection_label)
        self.name_filter.textChanged.connect(self.select_matching)
        self.layer_list.itemSelectionChanged.connect(self._update_selection_label)
        self.channels.currentIndexChanged.connect(self._update_selection_label)
        layers = self.viewer.layers
        for event in (layers.events.inserted, layers.events.removed, layers.events.moved):
            bind(self, event, self._on_layers_changed)
        self._on_layers_changed()

    # -- choices ------------------------------------------------------------------------------
    def selected_layers(self) -> list[Image]:
        """The image layers chosen for training, in list order."""
        rows = sorted(self.layer_list.row(it) for it in self.layer_list.selectedItems())
        return [self._listed[r] for r in rows if r < len(self._listed)]

    def selected_images(self) -> list[ChannelImage]:
        """The training images the selected layers make under the channels choice (with the
        default, a selected channel layer brings the other channels of its image along).

        Raises
        ------
        ChannelLayersError
            When the layers cannot be the channels of one image (different shapes, RGB).
        """
        layers = self.selected_layers()
        how = self.channels.choice()
        if how != "auto":
            return group_channel_layers(layers, how)
        chosen = {layer_key(ly) for ly in layers}
        return [g for g in group_channel_layers(self._listed, "auto")
                if any(layer_key(ly) in chosen for ly in g.layers)]

    def select_layers(self, layers: Sequence[Image]) -> None:
        """Select exactly ``layers`` in the list."""
        wanted = {layer_key(ly) for ly in layers}
        self.layer_list.blockSignals(True)
        for row, layer in enumerate(self._listed):
            self.layer_list.item(row).setSelected(layer_key(layer) in wanted)
        self.layer_list.blockSignals(False)
        self._update_selection_label()

    def select_matching(self, text: str) -> None:
        """Select every listed layer whose name contains ``text`` (case-insensitive)."""
        text = text.strip().lower()
        if text:
            self.select_layers([ly for ly in self._listed if text in ly.name.lower()])

    def folder(self) -> str | None:
        """The folder of normal images; None when the field is empty."""
        return self.folder_edit.text().strip() or None

    def cells_source(self) -> str | Labels:
        """``"none"``, ``"find"`` or the chosen Labels layer."""
        key = self.cells_combo.currentData()
        if key in (NO_CELLS, FIND_CELLS, None):
            return key or NO_CELLS
        return next((ly for ly in self.viewer.layers if layer_key(ly) == key), NO_CELLS)

    def choose_cells(self, source: str | Labels) -> None:
        """Choose the cells source: ``"none"``, ``"find"`` or a listed Labels layer."""
        key = source if isinstance(source, str) else layer_key(source)
        index = self.cells_combo.findData(key)
        if index < 0:
            raise ValueError(f"{source!r} is not offered as a cells source for the chosen "
                             "images (a Labels layer must have their height and width)")
        self.cells_combo.setCurrentIndex(index)

    # -- following the viewer -----------------------------------------------------------------
    def _on_layers_changed(self, event: Any = None) -> None:
        for layer in self.viewer.layers:
            if layer_key(layer) not in self._name_watched:
                self._name_watched.add(layer_key(layer))
                bind(self, layer.events.name, self._refresh_layer_list)
        self._refresh_layer_list()

    def _refresh_layer_list(self, event: Any = None) -> None:
        """Rebuild the list from the viewer's image layers, keeping the selection."""
        selected = {layer_key(ly) for ly in self.selected_layers()}
        self.layer_list.blockSignals(True)
        self.layer_list.clear()
        self._listed = [ly for ly in self.viewer.layers
                        if isinstance(ly, Image) and not is_own_layer(ly)]
        for layer in self._listed:
            shape = image_hw(layer)
            text = layer.name
            if len(shape) > 2:
                text += f"  ({int(np.prod(shape[:-2]))} planes)"
            item = QListWidgetItem(text)
            kind = "RGB" if layer.rgb else "grayscale"
            item.setToolTip(f"{kind} image, shape {tuple(layer.data.shape)}")
            self.layer_list.addItem(item)
            item.setSelected(layer_key(layer) in selected)
        self.layer_list.blockSignals(False)
        self._update_selection_label()

    def _refresh_cells_combo(self) -> None:
        """Offer 'none', 'find cells automatically' and the 2-D Labels layers whose shape
        matches the chosen image(s), keeping the current choice where it still fits."""
        current = self.cells_combo.currentData()
        shapes = {image_hw(ly) for ly in self.selected_layers()}
        self.cells_combo.blockSignals(True)
        self.cells_combo.clear()
        self.cells_combo.addItem("none (whole images or patches)", NO_CELLS)
        self.cells_combo.addItem("find cells automatically", FIND_CELLS)
        for layer in self.viewer.layers:
            if (isinstance(layer, Labels) and not is_own_layer(layer) and layer.ndim == 2
                    and not layer.multiscale and shapes == {tuple(layer.data.shape)}):
                self.cells_combo.addItem(f"Labels: {layer.name}", layer_key(layer))
        self.cells_combo.setCurrentIndex(max(self.cells_combo.findData(current), 0))
        self.cells_combo.blockSignals(False)

    def _update_selection_label(self, *_: Any) -> None:
        self._refresh_cells_combo()
        layers = self.selected_layers()
        try:
            images = self.selected_images()
        except ChannelLayersError as exc:
            self.selection_label.setText(f"Cannot combine these layers: {exc}.")
            return
        n_images = sum(int(np.prod(image_hw(im)[:-2], dtype=int)) for im in images)
        parts = []
        if layers:
            channels = sorted({len(im.layers) for im in images})
            what = (f", {'/'.join(map(str, channels))} channel layers each"
                    if channels != [1] else "")
            parts.append(f"{len(layers)} layer{'s' * (len(layers) != 1)} "
                         f"({n_images} image{'s' * (n_images != 1)}{what})")
        if self.folder_edit.text().strip():
            parts.append("the images in the folder")
        self.selection_label.setText(
            ("Training on " + " + ".join(parts)) if parts else "No training images selected.")

    def _folder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of normal images")
        if folder:
            self.folder_edit.setText(folder)
