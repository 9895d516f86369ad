"""The layers the Score widget makes: names, metadata, and refresh-in-place.

Every layer the plugin adds is named ``"<source> <role>"``, carries the source's scale,
translate and affine, and is marked in its metadata under :data:`~._common.PLUGIN_KEY` with its
role and source. Scoring again refreshes that layer in place (the "upsert" pattern): a user's
own layers are never touched, and the user's display tweaks of ours are kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Layer

from ._common import PLUGIN_KEY, find_own_layer, is_own_layer, layer_key

if TYPE_CHECKING:
    import napari

__all__ = ["HEATMAP", "OUTLINE", "RECONSTRUCTION", "geometry", "in_view", "keep_selection",
           "layer_meta", "remove_own_layers", "upsert"]

#: Roles (and layer-name suffixes) of the layers the widget makes.
HEATMAP = "anomaly map"
RECONSTRUCTION = "reconstruction"
OUTLINE = "anomalous region"


def layer_meta(role: str, source: Layer, **extra: Any) -> dict[str, Any]:
    """Metadata marking a layer as the plugin's ``role`` layer for ``source``."""
    return {PLUGIN_KEY: {"role": role, "source": source.name,
                         "source_id": layer_key(source), **extra}}


def geometry(source: Layer) -> dict[str, Any]:
    """The world placement of ``source`` (scale, translate, affine), for layers over it."""
    return {"scale": source.scale, "translate": source.translate,
            "affine": source.affine.affine_matrix}


#: Blendings with which an image at full opacity hides the layers under it.
_OPAQUE_BLENDINGS = ("opaque", "translucent", "translucent_no_depth")


def in_view(viewer: napari.Viewer, source: Layer) -> bool:
    """True if ``source`` is visible and not hidden under another image.

    An image hides ``source`` when it lies above it in the layer list, is visible, is not
    one of the plugin's layers, is drawn at full opacity with an opaque or translucent
    blending (not additive, as channel layers are), and covers the whole of ``source`` in
    world coordinates. With napari's grid view on, every visible layer is in view. New result
    layers start visible only over a source in view: the additive anomaly maps of images
    stacked under the one on top would be summed over it, and napari spends GUI time on
    every visible layer when it draws.
    """
    if not source.visible:
        return False
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid  # napari < 0.6
    if grid.enabled:
        return True
    layers = list(viewer.layers)
    key = layer_key(source)
    index = next((i for i, ly in enumerate(layers) if layer_key(ly) == key), None)
    if index is None:
        return True
    lo, hi = np.asarray(source.extent.world)[:, -2:]
    for layer in layers[index + 1:]:
        if (isinstance(layer, Image) and layer.visible and not is_own_layer(layer)
                and layer.opacity >= 1.0 and str(layer.blending) in _OPAQUE_BLENDINGS):
            top_lo, top_hi = np.asarray(layer.extent.world)[:, -2:]
            if np.all(top_lo <= lo) and np.all(top_hi >= hi):
                return False
    return True


def upsert(viewer: napari.Viewer, role: str, source: Layer, data: np.ndarray, kind: str,
           **kwargs: Any) -> Layer:
    """Refresh the plugin's ``role`` layer for ``source``, or add it if there is none.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer holding ``source``.
    role : str
        The layer's role, also its name suffix (e.g. :data:`HEATMAP`).
    source : napari.layers.Layer
        The scored layer; the result layer takes its name, scale, translate and affine.
    data : numpy.ndarray
        The layer's new data.
    kind : {"image", "labels"}
        The layer type.
    **kwargs
        ``metadata`` (required) and constructor arguments for a new layer; of these only
        ``contrast_limits`` is re-applied to an existing layer (the model's calibrated range),
        the user's other display settings are kept.

    Returns
    -------
    napari.layers.Layer
        The refreshed or added layer.
    """
    layer = find_own_layer(viewer, role, source)
    metadata = kwargs.pop("metadata")
    placement = geometry(source)
    kind_ok = isinstance(layer, Labels if kind == "labels" else Image)
    if layer is not None and (not kind_ok or (kind == "image"
                                              and layer.rgb != kwargs.get("rgb", False))):
        viewer.layers.remove(layer)  # ours, but of another kind (e.g. new model)
        layer = None
    if layer is not None:
        # Refresh in place: new pixels, geometry, calibrated contrast and results; the
        # user's display tweaks (opacity, colormap, blending, visibility) are kept.
        layer.data = data
        for key, value in placement.items():
            # Each assignment re-slices the layer: skip those that change nothing.
            current = getattr(layer, key)
            current = getattr(current, "affine_matrix", current)
            if np.shape(current) != np.shape(value) or not np.array_equal(current, value):
                setattr(layer, key, value)
        if "contrast_limits" in kwargs:
            layer.contrast_limits = kwargs["contrast_limits"]
        layer.metadata = metadata
        layer.name = f"{source.name} {role}"
        return layer
    name = f"{source.name} {role}"
    if kind == "labels":
        contour = kwargs.pop("contour", 0)  # not a constructor argument
        layer = viewer.add_labels(data, name=name, metadata=metadata, **placement, **kwargs)
        if contour:  # each assignment re-slices the layer, even to the same value
            layer.contour = contour
        return layer
    return viewer.add_image(data, name=name, metadata=metadata, **placement, **kwargs)


def remove_own_layers(viewer: napari.Viewer, roles: tuple[str, ...], source: Layer) -> list[str]:
    """Remove the layers of ``roles`` that the plugin made for ``source`` (matched by the
    source's id: a user's layers, and ours for other sources, are never touched).

    Used when ``source`` is scored in the other mode (per image / per cell), whose results
    would otherwise stay in the viewer looking current. Returns the names removed.
    """
    source_id = layer_key(source)
    stale = [ly for ly in viewer.layers
             if isinstance(meta := ly.metadata.get(PLUGIN_KEY), dict)
             and meta.get("role") in roles and meta.get("source_id") == source_id]
    for layer in stale:
        viewer.layers.remove(layer)
    return [ly.name for ly in stale]


@contextlib.contextmanager
def keep_selection(viewer: napari.Viewer) -> Iterator[None]:
    """Keep the layer selection while adding layers (napari selects each new layer).

    Keeping the user's selection means that pressing Score again scores the same images.
    Inside the block napari's selection of each inserted layer is switched off (the layer
    list's private ``_activate_on_insert`` flag, where this napari has it): selecting a
    layer and then restoring the selection switched the layer controls twice, about a third
    of napari's cost of adding a layer on the GUI thread. Any selection change made in the
    block is undone when it ends (the only mechanism where the flag is missing).
    """
    selection = viewer.layers.selection
    selected, active = set(selection), selection.active
    # A private flag of napari's layer list: read and set on the list itself, not through
    # the public-only proxy napari hands to plugins (which warns on private names).
    layers = getattr(viewer.layers, "__wrapped__", viewer.layers)
    flag = "_activate_on_insert"
    quiet = isinstance(getattr(layers, flag, None), bool)
    before = getattr(layers, flag, None)
    if quiet:
        setattr(layers, flag, False)
    try:
        yield
    finally:
        if quiet:
            setattr(layers, flag, before)
        if set(selection) != selected:
            selection.clear()
            selection.update(selected)
            selection.active = active
