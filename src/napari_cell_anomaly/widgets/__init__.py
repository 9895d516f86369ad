"""napari dock widgets: thin Qt front ends over :mod:`napari_cell_anomaly.core`.

The two dock widgets are imported on first use (napari imports this package on the GUI thread
when a dock opens): opening one does not import the other's modules.
"""

from typing import Any

from ._state import ModelState, Status, get_state

__all__ = ["ModelState", "ScoreWidget", "Status", "TrainWidget", "get_state"]


def __getattr__(name: str) -> Any:
    if name == "ScoreWidget":
        from ._score import ScoreWidget

        return ScoreWidget
    if name == "TrainWidget":
        from ._train import TrainWidget

        return TrainWidget
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
