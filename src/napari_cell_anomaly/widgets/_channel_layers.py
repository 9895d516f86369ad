"""Channel layers: several single-channel image layers taken together as one image.

napari opens a multi-channel image (``viewer.add_image(data, channel_axis=0)``, or a reader
that splits channels) as one layer per channel: same shape, scale and translate, the first
with the default blending and every later one ``additive``. How the widgets take the chosen
layers (:class:`ChannelsCombo`):

- ``"auto"`` (the default): consecutive chosen layers (in layer-list order) that look like
  one such opening are one image: a layer joins the image before it when it is
  single-channel, has its shape, scale and translate, and is ``additive``. Any other layer
  is an image of its own (two plain grayscale fields of the same shape stay two images).
- ``"one"``: all the chosen layers are the channels of one image (they must be
  single-channel and of one shape; otherwise :class:`ChannelLayersError` says which differ).
- ``"separate"``: every layer is an image of its own.

The channel order is the layer-list order (bottom to top), recorded in the model with the
layers' names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.layers import Image
from qtpy.QtWidgets import QComboBox, QWidget

__all__ = ["CHANNEL_CHOICES", "ChannelImage", "ChannelLayersError", "ChannelsCombo",
           "group_channel_layers"]

#: ``(key, label)`` of the channel choices.
CHANNEL_CHOICES = (
    ("auto", "napari channel layers form one image"),
    ("one", "chosen layers = channels of one image"),
    ("separate", "each layer is one image"),
)


class ChannelLayersError(ValueError):
    """Chosen layers that cannot be the channels of one image (one line)."""


@dataclass
class ChannelImage:
    """One image made of one layer, or of several single-channel layers as its channels.

    Quacks like an image layer where the widgets read one (``name``, ``data``, ``ndim``,
    ``multiscale``, ``rgb``); results are shown on :attr:`first`.
    """

    layers: list[Image]

    @property
    def first(self) -> Image:
        """The layer results are shown on (the first channel)."""
        return self.layers[0]

    @property
    def name(self) -> str:
        """The layer's name, or the channel layers' names joined by ``" + "``."""
        return " + ".join(ly.name for ly in self.layers)

    @property
    def channel_names(self) -> tuple[str, ...] | None:
        """The channel layers' names in order (None for a single layer)."""
        return tuple(ly.name for ly in self.layers) if len(self.layers) > 1 else None

    @property
    def ndim(self) -> int:
        return int(self.first.ndim)

    @property
    def multiscale(self) -> bool:
        return any(ly.multiscale for ly in self.layers)

    @property
    def rgb(self) -> bool:
        return len(self.layers) == 1 and bool(self.first.rgb)

    @property
    def data(self) -> Any:
        """The layer's data, or the channel layers' data stacked on a last axis (numpy data
        stacked now; lazy (dask) data stays lazy)."""
        if len(self.layers) == 1:
            return self.first.data
        arrays = [ly.data for ly in self.layers]
        if all(isinstance(a, np.ndarray) for a in arrays):
            return np.stack(arrays, axis=-1)
        import dask.array as da

        return da.stack([da.asarray(a) for a in arrays], axis=-1)


def _geometry(layer: Image) -> tuple[Any, ...]:
    shape = tuple(layer.data[0].shape if layer.multiscale else layer.data.shape)
    return (shape, tuple(np.round(layer.scale, 9)), tuple(np.round(layer.translate, 9)))


def _joins(group: list[Image], layer: Image) -> bool:
    """``layer`` continues the channel layers of ``group`` (napari's channel_axis pattern)."""
    first = group[0]
    return (not first.rgb and not layer.rgb and str(layer.blending) == "additive"
            and _geometry(layer) == _geometry(first))


def group_channel_layers(layers: Sequence[Image], how: str = "auto") -> list[ChannelImage]:
    """Group image layers into images (see the module docstring).

    Parameters
    ----------
    layers : sequence of Image
        The chosen image layers, in layer-list order.
    how : {"auto", "one", "separate"}
        The channel choice.

    Returns
    -------
    list of ChannelImage

    Raises
    ------
    ChannelLayersError
        ``how="one"`` with an RGB layer or layers of different shapes.
    """
    layers = list(layers)
    if how == "separate" or not layers:
        return [ChannelImage([ly]) for ly in layers]
    if how == "one":
        if len(layers) > 1:
            rgb = [ly.name for ly in layers if ly.rgb]
            if rgb:
                raise ChannelLayersError(
                    f"{rgb[0]!r} is an RGB layer; channel layers must each hold one channel")
            shapes = {ly.name: _geometry(ly)[0] for ly in layers}
            if len(set(shapes.values())) > 1:
                listed = ", ".join(f"{n!r} {s}" for n, s in list(shapes.items())[:4])
                raise ChannelLayersError(f"channel layers must have the same shape to form one "
                                         f"image; got {listed}")
        return [ChannelImage(layers)]
    if how != "auto":
        raise ValueError(f"unknown channel choice {how!r}")
    groups: list[list[Image]] = []
    for layer in layers:
        if groups and _joins(groups[-1], layer):
            groups[-1].append(layer)
        else:
            groups.append([layer])
    return [ChannelImage(g) for g in groups]


class ChannelsCombo(QComboBox):
    """The channel choice: ``"auto"``, ``"one"`` or ``"separate"`` (see the module)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        for key, label in CHANNEL_CHOICES:
            self.addItem(label, key)
        self.setToolTip(
            "How single-channel layers become images. A multi-channel file opened in napari "
            "(channel_axis) gives one layer per channel: consecutive layers of one shape, the "
            "later ones additive; 'napari channel layers form one image' takes them together, "
            "in layer-list order. 'chosen layers = channels of one image' stacks all the "
            "chosen layers (one shape). 'each layer is one image' never combines.")

    def choice(self) -> str:
        """The chosen key."""
        return str(self.currentData() or "auto")

    def set_choice(self, key: str) -> None:
        """Choose ``key`` (``"auto"``, ``"one"`` or ``"separate"``)."""
        index = self.findData(key)
        if index < 0:
            raise ValueError(f"unknown channel choice {key!r}")
        self.setCurrentIndex(index)
