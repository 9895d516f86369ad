"""The base of the widgets' plots: a pyqtgraph plot sized for a dock.

pyqtgraph costs the GUI thread ~0.2 s to import, so the widgets import this module (and the
plots built on it) only once :mod:`._core_loader` has imported pyqtgraph in its background
thread (see :data:`._core_loader.GUI_MODULES`).
"""

from __future__ import annotations

import pyqtgraph as pg
from qtpy.QtCore import QSize

__all__ = ["SmallPlot"]


class SmallPlot(pg.PlotWidget):
    """A pyqtgraph plot that asks for a dock-sized width (pyqtgraph's default is 640 px)."""

    def sizeHint(self) -> QSize:
        return QSize(320, 180)
