"""napari's layer controls of the plugin's new layers, made one event-loop turn later.

When a layer is inserted, napari builds its controls panel (sliders, colormap combo with its
colour bar, blending and mode buttons) on the GUI thread in the same call: about a third of
the cost of adding a result layer to a viewer of 20-60 layers under software OpenGL (sampled
with ``benchmarks/responsiveness.py``). :class:`DeferredControls` lets the Score widget add a
layer without them and build them in the next turn, so that each turn does half the work.

This uses napari internals, as napari has no public way to do it: the layer controls
container of the viewer's Qt window (``viewer.window._qt_viewer.controls``) and its
``_add`` callback of ``layers.events.inserted``, blocked with napari's public
``EventEmitter.blocker``. Where these are missing (another napari, no Qt window), nothing is
deferred and napari builds the controls as usual. The controls of a layer still waiting are
built at once, before napari needs them, when the layer selection changes (napari then shows
the selected layer's controls) or when the layer is removed (napari then deletes them).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer
    from qtpy.QtCore import QObject

__all__ = ["DeferredControls"]

logger = logging.getLogger(__name__)


def _container(viewer: Any) -> Any:
    """napari's layer controls container of ``viewer``'s window, or None."""
    window = getattr(viewer, "window", None)
    qt_viewer = getattr(window, "_qt_viewer", None)
    try:
        container = getattr(qt_viewer, "controls", None)
    except Exception:  # a napari whose property fails without a window
        return None
    widgets = getattr(container, "widgets", None)
    if not callable(getattr(container, "_add", None)) or not isinstance(widgets, dict):
        return None
    return container


class DeferredControls:
    """Layers added inside :meth:`deferring` get their napari controls from :meth:`flush`.

    Parameters
    ----------
    owner : QObject
        The dock widget; the connections to the viewer's events end when it is destroyed.
    viewer : napari.Viewer
        The viewer (napari's public proxy or the viewer itself).
    """

    def __init__(self, owner: QObject, viewer: napari.Viewer) -> None:
        real = getattr(viewer, "__wrapped__", viewer)  # private names: not via the proxy
        self._layers = real.layers
        self._container = _container(real)
        self._pending: list[Layer] = []
        if self._container is None:
            return
        # Before napari's own callbacks, which look the controls up.
        selection = self._layers.selection.events.changed
        removed = self._layers.events.removed
        selection.connect(self.flush, position="first")
        removed.connect(self._on_removed, position="first")

        def _drop(*_: Any) -> None:
            with contextlib.suppress(Exception):
                selection.disconnect(self.flush)
            with contextlib.suppress(Exception):
                removed.disconnect(self._on_removed)
            self.flush()

        owner.destroyed.connect(_drop)

    @property
    def active(self) -> bool:
        """True if this napari lets controls be deferred."""
        return self._container is not None

    def pending(self) -> bool:
        """True while layers wait for their controls."""
        return bool(self._pending)

    @contextlib.contextmanager
    def deferring(self) -> Iterator[None]:
        """Layers inserted in the block get no controls until :meth:`flush`."""
        container = self._container
        if container is None:
            yield
            return
        inserted = self._layers.events.inserted
        inserted.connect(self._note_inserted)
        try:
            with inserted.blocker(container._add):
                yield
        finally:
            inserted.disconnect(self._note_inserted)

    def _note_inserted(self, event: Any) -> None:
        layer = getattr(event, "value", None)
        if layer is not None:
            self._pending.append(layer)

    def flush(self, *_: Any) -> None:
        """Build the controls of the layers waiting for them (those still in the viewer)."""
        container, pending, self._pending = self._container, self._pending, []
        if container is None:
            return
        for layer in pending:
            if layer in self._layers and layer not in container.widgets:
                try:
                    container._add(SimpleNamespace(value=layer))
                except Exception:  # napari shows its own empty controls then
                    logger.debug("could not build the controls of %s", layer, exc_info=True)

    def _on_removed(self, event: Any) -> None:
        layer = getattr(event, "value", None)
        container = self._container
        if layer is None or container is None or not any(ly is layer for ly in self._pending):
            return
        self._pending = [ly for ly in self._pending if ly is not layer]
        if layer not in container.widgets:  # napari's removal deletes them: make them first
            with contextlib.suppress(Exception):
                container._add(SimpleNamespace(value=layer))
