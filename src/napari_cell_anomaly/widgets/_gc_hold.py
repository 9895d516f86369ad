"""Hold the garbage collector's full passes while a batch of results is added as layers.

Each napari layer added makes thousands of tracked objects (the layer, its vispy visual, its
controls), so while a batch of results is rendered Python's collector runs a full pass each
time the objects made since the last one reach a quarter of those that survived it: five
full passes while 20 results (40 layers) were added to a viewer of 20 images, each walking
every object not frozen (64 to 196 ms of the GUI thread, growing with the layers, on the
loaded 2-core machine, ``benchmarks/responsiveness.py``). While a hold is on, only the full
passes are postponed (the collector's third threshold is raised); the young generations are
still collected as usual, a few milliseconds each. When the last hold ends the thresholds are
restored; the Score widget then runs the postponed full pass itself, in a turn of its own
right after the batch's last result (left to Python, it fell on the user's next action: a
300 ms stall moving the slider), so a batch costs one full pass instead of one every few
layers. Nothing is done if :data:`~._core_loader.KEEP_GC_ENV` is set to ``1``.
"""

from __future__ import annotations

import gc

from ._core_loader import _keep_gc as keep_gc

__all__ = ["hold_full_collections", "release_full_collections"]

#: The third threshold while a hold is on: more young collections than a batch makes.
_HELD = 1 << 30

_holds = 0
_saved: tuple[int, ...] | None = None


def hold_full_collections() -> bool:
    """Postpone the collector's full passes until :func:`release_full_collections`.

    Holds nest (one per rendering widget); returns True if this call holds (False when the
    plugin is asked to leave the collector alone).
    """
    global _holds, _saved
    if keep_gc():
        return False
    if _holds == 0:
        _saved = gc.get_threshold()
        gc.set_threshold(_saved[0], _saved[1], _HELD)
    _holds += 1
    return True


def release_full_collections() -> None:
    """End one hold; the last one restores the collector's thresholds."""
    global _holds, _saved
    if _holds == 0:
        return
    _holds -= 1
    if _holds == 0 and _saved is not None:
        current = gc.get_threshold()
        if current[2] == _HELD:  # not changed by someone else meanwhile
            gc.set_threshold(current[0], current[1], _saved[2])
        _saved = None
