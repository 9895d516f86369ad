"""The Score widget's choice of layers to score: the selected layers, or every image layer.

:class:`ScoreTargetsBox` holds the choice and checks the layers it gives: the plugin's own
layers selected along with their source are skipped silently, other layers that cannot be
scored are named in one notification. Its channels choice (:mod:`._channel_layers`) says which
single-channel layers are the channels of one image: with the default, selecting any channel
layer of a multi-channel image opened with ``channel_axis`` scores that whole image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from napari.layers import Image, Layer
from napari.utils.notifications import show_error, show_warning
from qtpy.QtWidgets import QButtonGroup, QHBoxLayout, QRadioButton, QWidget

from ._channel_layers import ChannelImage, ChannelLayersError, ChannelsCombo, group_channel_layers
from ._common import is_own_layer, layer_key, scoring_problem

if TYPE_CHECKING:
    import napari

__all__ = ["ScoreTargetsBox"]


class ScoreTargetsBox(QWidget):
    """"Selected layers" or "All image layers" of a viewer.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose layers are scored.
    """

    def __init__(self, viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.selected_radio = QRadioButton("Selected layers")
        self.all_radio = QRadioButton("All image layers")
        self.selected_radio.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.selected_radio)
        group.addButton(self.all_radio)
        row.addWidget(self.selected_radio)
        row.addWidget(self.all_radio)
        self.channels = ChannelsCombo()
        row.addWidget(self.channels, 1)

    def layers(self) -> list[Layer]:
        """The layers the Score button would use (before checking them)."""
        if self.all_radio.isChecked():
            return [ly for ly in self.viewer.layers
                    if isinstance(ly, Image) and not is_own_layer(ly)]
        return [ly for ly in self.viewer.layers if ly in self.viewer.layers.selection]

    def scorable(self, skip: Sequence[Layer] = ()) -> list[Layer] | None:
        """The chosen layers that can be scored; None (notified) if there are none.

        The others are named in a warning; the plugin's own layers selected along with their
        source, and the layers in ``skip`` (handled elsewhere), are skipped silently.
        """
        skipped = {layer_key(ly) for ly in skip}
        layers = [ly for ly in self.layers() if layer_key(ly) not in skipped]
        if not layers:
            show_warning("No layer selected: select image layers in the layer list, or "
                         "choose 'All image layers'." if self.selected_radio.isChecked()
                         else "There are no image layers to score.")
            return None
        good = [ly for ly in layers if scoring_problem(ly) is None]
        problems = [scoring_problem(ly) for ly in layers
                    if ly not in good and not (good and is_own_layer(ly))]
        if problems:
            text = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)"
                                              if len(problems) > 3 else "")
            if not good:
                show_error(f"Nothing to score: {text}.")
                return None
            show_warning(f"Skipping {len(problems)} layer{'s' * (len(problems) != 1)}: "
                         f"{text}.")
        return good

    def scorable_images(self, skip: Sequence[Layer] = ()) -> list[ChannelImage] | None:
        """The images to score: :meth:`scorable` layers grouped by the channels choice (with
        "napari channel layers form one image", a chosen channel layer brings the other
        channels of its image along); None (notified) if there are none or the layers cannot
        be grouped; ``skip`` as in :meth:`scorable`)."""
        layers = self.scorable(skip)
        if layers is None:
            return None
        how = self.channels.choice()
        try:
            if how != "auto":
                return group_channel_layers(layers, how)
            chosen = {str(ly.unique_id) for ly in layers}
            every = [ly for ly in self.viewer.layers
                     if isinstance(ly, Image) and scoring_problem(ly) is None]
            return [g for g in group_channel_layers(every, "auto")
                    if any(str(ly.unique_id) in chosen for ly in g.layers)]
        except ChannelLayersError as exc:
            show_error(f"Cannot score: {exc}.")
            return None
