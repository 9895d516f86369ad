"""napari dock widgets: thin Qt front ends over :mod:`napari_cell_anomaly.core`."""

from ._score import ScoreWidget
from ._state import ModelState, Status, get_state
from ._train import TrainWidget

__all__ = ["ModelState", "ScoreWidget", "Status", "TrainWidget", "get_state"]
