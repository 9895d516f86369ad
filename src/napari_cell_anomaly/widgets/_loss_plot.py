"""The Train widget's loss plot: training loss per step and validation loss per epoch."""

from __future__ import annotations

import pyqtgraph as pg
from qtpy.QtWidgets import QSizePolicy

from ._small_plot import SmallPlot

__all__ = ["LossPlot"]


class LossPlot(SmallPlot):
    """Loss curves against epochs: ``train`` (a point per step) and ``validation`` (a point
    per epoch)."""

    def __init__(self) -> None:
        super().__init__(background=None)
        self.setMinimumHeight(150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setLabel("bottom", "epoch")
        self.setLabel("left", "loss")
        self.getAxis("left").enableAutoSIPrefix(False)
        self.showGrid(x=True, y=True, alpha=0.2)
        self.addLegend(offset=(-8, 8))
        self.train_x: list[float] = []
        self.train_y: list[float] = []
        self.val_x: list[float] = []
        self.val_y: list[float] = []
        self._last_val: float | None = None
        self.train_curve = self.plot([], [], pen=pg.mkPen("#4fc3f7", width=2), name="train")
        self.val_curve = self.plot([], [], pen=pg.mkPen("#ffb74d", width=2), symbol="o",
                                   symbolSize=6, symbolBrush="#ffb74d", name="validation")

    def reset(self) -> None:
        """Empty both curves (a new training)."""
        for values in (self.train_x, self.train_y, self.val_x, self.val_y):
            values.clear()
        self._last_val = None
        self.train_curve.setData([], [])
        self.val_curve.setData([], [])

    def add_train(self, epoch: float, loss: float) -> None:
        """Append a training-loss point at fractional ``epoch``; redraw the train curve."""
        self.train_x.append(epoch)
        self.train_y.append(float(loss))
        self.train_curve.setData(self.train_x, self.train_y)

    def add_validation(self, epoch: float, loss: float) -> None:
        """Append a validation-loss point unless ``loss`` repeats the last one."""
        if loss == self._last_val:
            return
        self._last_val = loss
        self.val_x.append(float(epoch))
        self.val_y.append(float(loss))
        self.val_curve.setData(self.val_x, self.val_y)
