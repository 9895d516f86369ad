"""The Score widget's background job and the typed events it yields.

The job runs in a napari ``thread_worker``; it reads only private copies of the images (taken
on the GUI thread, or by the job itself as its first step: see :func:`._common.snapshot_planes`)
and talks to the widget through the small event classes below.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ._cells_layer import cell_features, display_labels, other_labels
from ._common import JobControl, JobFailure, Plane, own_planes

if TYPE_CHECKING:
    import pandas as pd

    from ..core.cellscores import CellScores
    from ..core.detector import AnomalyDetector, ScoreResult

__all__ = ["CellsScored", "Failed", "Scored", "score_cells_job", "score_job"]


@dataclass
class Scored:
    """Event: image ``index`` of the job was scored."""

    index: int
    result: ScoreResult


@dataclass
class CellsScored:
    """Event: the cells of image ``index`` of the job were scored.

    ``labels`` is ``cells.labels`` as the cells layer stores it
    (:func:`~._cells_layer.display_labels`), ``others`` the objects of that image that are
    not scored cells (:func:`~._cells_layer.other_labels`) and ``features`` the cells layer's
    features table at the job's verdicts (:func:`~._cells_layer.cell_features`; None: made
    on the GUI thread), all made here so that the GUI thread only hands them to napari (the
    first table also imports pandas, ~0.1 s, here rather than on the GUI thread).
    """

    index: int
    cells: CellScores
    labels: np.ndarray
    others: np.ndarray
    features: pd.DataFrame | None = None


@dataclass
class Failed:
    """Event: image ``index`` could not be scored (a one-line reason from the core)."""

    index: int
    name: str
    reason: str


def score_job(detector: AnomalyDetector, items: Sequence[Plane], fpr: float,
              control: JobControl | None = None, *, device: str | None = None
              ) -> Generator[Scored | Failed, None, None]:
    """Worker body: score each image; a bad image is reported and the rest still scored.

    Parameters
    ----------
    detector : AnomalyDetector
        The model to score with.
    items : sequence of Plane
        The images (from :func:`._common.snapshot_planes`); in-memory ones not yet copied are
        copied first, lazy arrays are read here, in the worker thread, when scored.
    fpr : float
        False-alarm rate of the verdicts stored in each result.
    control : JobControl, optional
        Its ``stop`` flag ends the job between batches of tiles, without an event for the
        image being scored.
    device : str, optional
        Where the network runs (``"auto"``, ``"cpu"``, ``"cuda:N"``, ``"mps"``): the detector
        is moved there first, here in the worker (:meth:`AnomalyDetector.to`); None leaves it
        where it is. A device this machine lacks ends the job with a ``DeviceError``.

    Yields
    ------
    Scored or Failed
        One event per image, in order.
    """
    from ..core.tiling import PredictionStopped

    stop = control.stop.is_set if control is not None else None
    if device is not None:
        detector.to(device)
    try:
        own_planes(items)  # private copies first: the user may edit the layers meanwhile
        for index, plane in enumerate(items):
            try:
                result = detector.score(np.asarray(plane.data), fpr=fpr, name=plane.name,
                                        stop=stop)
            except PredictionStopped:
                return
            except ValueError as exc:  # ImageError (wrong channels, constant image, ...)
                yield Failed(index, plane.name, str(exc))
                continue
            yield Scored(index, result)
    except RuntimeError as exc:
        raise JobFailure(f"{type(exc).__name__}: {exc}") from exc


def score_cells_job(detector: AnomalyDetector,
                    items: Sequence[tuple[Plane, np.ndarray | None]], fpr: float,
                    include_border: bool, *, device: str | None = None
                    ) -> Generator[CellsScored | Failed, None, None]:
    """Worker body: score the cells of each image; a bad image is reported, the rest scored.

    Parameters
    ----------
    detector : AnomalyDetector
        The model to score with (one that scores cells).
    items : sequence of (Plane, numpy.ndarray or None)
        ``(image, labels)``: the image as in :func:`score_job`; ``labels`` is a snapshot of
        the user's label image, or None to find the cells with the built-in segmentation (run
        here, in the worker thread).
    fpr : float
        False-alarm rate of the verdicts stored in each result.
    include_border : bool
        Give verdicts to the cells cut by the image edge too.
    device : str, optional
        Where the network runs (see :func:`score_job`).

    Yields
    ------
    CellsScored or Failed
        One event per image, in order. An image none of whose cells can be judged (e.g. a
        single-cell crop, whose only cell touches the edge) is a failure.
    """
    if device is not None:
        detector.to(device)
    try:
        own_planes([plane for plane, _ in items])  # private copies first (see score_job)
        for index, (plane, labels) in enumerate(items):
            name = plane.name
            try:
                cells = detector.score_cells(np.asarray(plane.data), labels, fpr=fpr,
                                             name=name, include_border=include_border)
            except ValueError as exc:  # ImageError (no cells found, wrong shape, ...)
                yield Failed(index, name, str(exc))
                continue
            if not cells.judged().any():
                yield Failed(index, name, f"every cell of {name!r} touches the image edge, so "
                             "none can be judged (a crop of a single cell? score crops without "
                             "'Per cell', or tick 'Judge edge cells')")
                continue
            labels = display_labels(cells.labels)
            yield CellsScored(index, cells, labels, other_labels(labels, cells.table["label"]),
                              cell_features(cells, cells.table["is_anomaly"]))
    except RuntimeError as exc:
        raise JobFailure(f"{type(exc).__name__}: {exc}") from exc
