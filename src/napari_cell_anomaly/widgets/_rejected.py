"""The Train widget's list of the training images that robust training rejected.

Robust training gives zero weight to the images with the most anomalous reconstruction error
and records their indices in the model (``detector.rejected``). :class:`RejectedImages` maps
those indices back to where each image came from (a layer, a plane of a stack, or a file of the
training folder) and shows it when its entry is clicked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from napari.layers import Image
from napari.utils.notifications import show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QListWidget, QListWidgetItem

if TYPE_CHECKING:
    import napari

    from ..core.detector import AnomalyDetector

__all__ = ["RejectedImages", "TrainingSource"]


@dataclass
class TrainingSource:
    """Where one training image came from (for the rejected-images list)."""

    name: str
    layer: Image | None = None
    index: tuple[int, ...] = ()
    path: Path | None = None


class RejectedImages:
    """The rejected training images: a label and a clickable list, for the owner to lay out.

    Parameters
    ----------
    viewer : napari.Viewer
        Where a clicked image is shown.

    Attributes
    ----------
    sources : list of TrainingSource
        Where each training image came from, in the order the training used them; the owner
        fills it when training starts (and when the folder has been read).
    """

    def __init__(self, viewer: napari.Viewer) -> None:
        self.viewer = viewer
        self.sources: list[TrainingSource] = []
        self.label = QLabel("Rejected by robust training (click to show):")
        self.label.setWordWrap(True)
        self.list = QListWidget()
        self.list.setMaximumHeight(90)
        self.label.hide()
        self.list.hide()
        self.list.itemClicked.connect(self._reveal)

    def reset(self) -> None:
        """Empty and hide the list (a new training)."""
        self.list.clear()
        self.list.hide()
        self.label.hide()

    def show(self, detector: AnomalyDetector) -> None:
        """List the training images ``detector`` rejected (hidden when it rejected none)."""
        self.list.clear()
        rejected = list(getattr(detector, "rejected", []) or [])
        for index in rejected:
            source = self.sources[index] if 0 <= index < len(self.sources) else None
            item = QListWidgetItem(source.name if source else f"image {index}")
            item.setData(Qt.ItemDataRole.UserRole, index)
            if source is not None and source.path is not None:
                item.setToolTip(str(source.path))
            self.list.addItem(item)
        self.label.setText(f"Rejected by robust training: {len(rejected)} "
                                    "image(s) (click to show)")
        self.label.setVisible(bool(rejected))
        self.list.setVisible(bool(rejected))

    def _reveal(self, item: QListWidgetItem) -> None:
        """Show and select the rejected image of ``item`` (its plane of a stack); for a file
        of the training folder, say where it is."""
        index = item.data(Qt.ItemDataRole.UserRole)
        if index is None or not 0 <= index < len(self.sources):
            return
        source = self.sources[index]
        layer = source.layer
        if layer is None or layer not in self.viewer.layers:
            if source.path is not None:
                show_info(f"{source.name} is a file of the training folder: {source.path}")
            return
        layer.visible = True
        self.viewer.layers.selection.active = layer
        if source.index:
            step = list(self.viewer.dims.current_step)
            axes = list(range(layer.ndim - 2))
            world_axes = [self.viewer.dims.ndim - layer.ndim + a for a in axes]
            for axis, i in zip(world_axes, source.index, strict=True):
                step[axis] = i
            self.viewer.dims.current_step = tuple(step)
