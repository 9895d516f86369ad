"""The Score widget's background job and the typed events it yields.

The job runs in a napari ``thread_worker``; it reads only the arrays it was given (snapshots
taken on the GUI thread) and talks to the widget through the small event classes below.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.cellscores import CellScores
from ..core.detector import AnomalyDetector, ScoreResult
from ._common import JobFailure

__all__ = ["CellsScored", "Failed", "Scored", "score_cells_job", "score_job"]


@dataclass
class Scored:
    """Event: image ``index`` of the job was scored."""

    index: int
    result: ScoreResult


@dataclass
class CellsScored:
    """Event: the cells of image ``index`` of the job were scored."""

    index: int
    cells: CellScores


@dataclass
class Failed:
    """Event: image ``index`` could not be scored (a one-line reason from the core)."""

    index: int
    name: str
    reason: str


def score_job(detector: AnomalyDetector, items: Sequence[tuple[str, Any]], fpr: float
              ) -> Generator[Scored | Failed, None, None]:
    """Worker body: score each image; a bad image is reported and the rest still scored.

    Parameters
    ----------
    detector : AnomalyDetector
        The model to score with.
    items : sequence of (str, array-like)
        ``(name, image)`` pairs; lazy arrays are read here, in the worker thread.
    fpr : float
        False-alarm rate of the verdicts stored in each result.

    Yields
    ------
    Scored or Failed
        One event per image, in order.
    """
    try:
        for index, (name, data) in enumerate(items):
            try:
                result = detector.score(np.asarray(data), fpr=fpr, name=name)
            except ValueError as exc:  # ImageError (wrong channels, constant image, ...)
                yield Failed(index, name, str(exc))
                continue
            yield Scored(index, result)
    except RuntimeError as exc:
        raise JobFailure(f"{type(exc).__name__}: {exc}") from exc


def score_cells_job(detector: AnomalyDetector,
                    items: Sequence[tuple[str, Any, np.ndarray | None]], fpr: float,
                    include_border: bool) -> Generator[CellsScored | Failed, None, None]:
    """Worker body: score the cells of each image; a bad image is reported, the rest scored.

    Parameters
    ----------
    detector : AnomalyDetector
        The model to score with (one that scores cells).
    items : sequence of (str, array-like, numpy.ndarray or None)
        ``(name, image, labels)``: ``labels`` is a snapshot of the user's label image, or None
        to find the cells with the built-in segmentation (run here, in the worker thread).
    fpr : float
        False-alarm rate of the verdicts stored in each result.
    include_border : bool
        Give verdicts to the cells cut by the image edge too.

    Yields
    ------
    CellsScored or Failed
        One event per image, in order. An image none of whose cells can be judged (e.g. a
        single-cell crop, whose only cell touches the edge) is a failure.
    """
    try:
        for index, (name, data, labels) in enumerate(items):
            try:
                cells = detector.score_cells(np.asarray(data), labels, fpr=fpr, name=name,
                                             include_border=include_border)
            except ValueError as exc:  # ImageError (no cells found, wrong shape, ...)
                yield Failed(index, name, str(exc))
                continue
            if not cells.judged().any():
                yield Failed(index, name, f"every cell of {name!r} touches the image edge, so "
                             "none can be judged (a crop of a single cell? score crops without "
                             "'Per cell', or tick 'Judge edge cells')")
                continue
            yield CellsScored(index, cells)
    except RuntimeError as exc:
        raise JobFailure(f"{type(exc).__name__}: {exc}") from exc
