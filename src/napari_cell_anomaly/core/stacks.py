"""Stacks and time series scored: 2-D planes scored with the 2-D model, maps and cells merged.

The planes come as a :class:`~.stackio.Stack` (:func:`~.stackio.as_stack`,
:func:`~.stackio.read_stack`: reading stacks is :mod:`.stackio`).

- :func:`score_stack` scores each plane with :meth:`AnomalyDetector.score` (or
  :meth:`~.cellscoring.CellScoring.score_field` per cell) and yields a :class:`PlaneScore`
  per plane; a plane that cannot be scored is reported in its own result, not raised.
- :class:`MapStack` assembles the per-plane heatmaps into one ``(P, H, W)`` array, plane by
  plane.
- :func:`stack_cells` merges the per-plane cells of a stack into one
  :class:`~.cellscores.CellScores`; :class:`StackCells` does the same plane by plane as the
  planes come in, writing only the new plane (the Score widget shows a stack's cells so far).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .cellscores import CellScores
from .images import ImageError
from .stackio import Stack, as_stack, read_stack  # as_stack, read_stack re-exported (old READMEs)

if TYPE_CHECKING:
    from .detector import AnomalyDetector, ScoreResult

__all__ = ["MapStack", "PlaneScore", "StackCells", "as_stack", "read_stack", "score_stack",
           "stack_cells"]


# ------------------------------------------------------------------------------------------
# scoring
# ------------------------------------------------------------------------------------------
@dataclass
class PlaneScore:
    """What :func:`score_stack` says about one plane.

    Attributes
    ----------
    index : int
        Plane index in the stack (0 for a 2-D image).
    name : str
        The plane's name (:meth:`Stack.plane_name`).
    result : ScoreResult or None
        The plane's result (its field verdict per cell); None when it could not be scored.
    cells : CellScores or None
        Per-cell mode: the plane's cells.
    error : str or None
        Why the plane could not be scored (one line), else None.
    """

    index: int
    name: str
    result: ScoreResult | None = None
    cells: CellScores | None = None
    error: str | None = None


def _labels_of(labels: Any, stack: Stack, index: int) -> np.ndarray | None:
    """The label image of plane ``index``: ``labels[index]`` of a label stack, or the 2-D
    labels of a non-stack image."""
    if labels is None:
        return None
    if not stack.is_stack:
        return np.asarray(labels)
    return np.asarray(labels[index])


def _check_label_stack(labels: Any, stack: Stack) -> None:
    if labels is None or not stack.is_stack:
        return
    shape = tuple(int(s) for s in np.shape(labels))
    want = (len(stack), *stack.plane_shape[:2])
    if shape != want:
        raise ImageError(f"the label image for stack {stack.name!r} has shape {shape}; "
                         f"expected one label plane per image plane, shape {want}")


def score_stack(detector: AnomalyDetector, stack: Stack, *, fpr: float | None = None,
                per_cell: bool = False, labels: Any = None, include_border: bool = False,
                stop: Callable[[], bool] | None = None) -> Iterator[PlaneScore]:
    """Score the planes of a stack one by one with the 2-D model.

    Parameters
    ----------
    detector : AnomalyDetector
        The 2-D model.
    stack : Stack
        The planes (read one at a time, when scored).
    fpr : float, optional
        False-alarm rate of the verdicts (default 5%).
    per_cell : bool
        Score the cells of each plane (:meth:`score_field`) instead of the plane as a whole.
    labels : array_like, optional
        Per cell: ``(P, H, W)`` label planes, one per image plane (a 2-D label image for a
        non-stack image); None finds the cells of each plane with the built-in segmentation.
    include_border : bool
        Per cell: judge the cells cut by the image edge too.
    stop : callable, optional
        Whole-plane scoring: passed to :meth:`AnomalyDetector.score` (patch mode asks it
        between batches of tiles).

    Yields
    ------
    PlaneScore
        One per plane, in order. A plane the core refuses (an ``ImageError``, e.g. a
        constant plane) has ``error`` set; the other planes are still scored.

    Raises
    ------
    ImageError
        Before any plane is scored, when ``labels`` is not one label plane per image plane.
    """
    if per_cell:
        _check_label_stack(labels, stack)
    for index in range(len(stack)):
        name = stack.plane_name(index)
        try:
            image = stack.plane(index)
            if per_cell:
                result, cells = detector.score_field(
                    image, _labels_of(labels, stack, index), fpr=fpr, name=name,
                    include_border=include_border)
            else:
                result, cells = detector.score(image, fpr=fpr, name=name, stop=stop), None
        except ImageError as err:
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            yield PlaneScore(index, name, error=msg)
            continue
        yield PlaneScore(index, name, result=result, cells=cells)


class MapStack:
    """A ``(P, H, W)`` float32 heatmap stack filled plane by plane.

    Planes not (yet) filled are NaN, so a plane that could not be scored is visibly empty,
    not a zero error.

    Parameters
    ----------
    n_planes : int
        ``P``.
    shape : tuple of int
        ``(H, W)`` of each plane.
    dtype : numpy dtype
        float32 for heatmaps; an integer dtype (filled with 0) for label stacks.
    """

    def __init__(self, n_planes: int, shape: Sequence[int], dtype: Any = np.float32) -> None:
        dtype = np.dtype(dtype)
        fill = np.nan if dtype.kind == "f" else 0
        self.data = np.full((int(n_planes), *(int(s) for s in shape[:2])), fill, dtype=dtype)

    def put(self, index: int, plane: np.ndarray) -> None:
        """Set plane ``index`` (``(H, W)``)."""
        self.data[index] = plane


def stack_cells(planes: Sequence[CellScores | None], shape: Sequence[int]) -> CellScores:
    """The cells of a stack's planes as one :class:`~.cellscores.CellScores`.

    Each plane's cells keep their rows; their ids are shifted so that every cell of the stack
    has its own id: plane ``p``'s id ``i`` becomes ``i + offset_p``, ``offset_p`` the sum of the
    largest ids of the planes before it. The table gets two more columns, ``plane`` and
    ``cell_id`` (the id in the plane's own label image).

    Parameters
    ----------
    planes : sequence of CellScores or None
        One per plane, in order; None for a plane without cells (not scored, or refused).
    shape : tuple of int
        ``(H, W)`` of a plane.

    Returns
    -------
    CellScores
        ``labels`` ``(P, H, W)`` int64 with the stack ids (0 = background), ``error_map``
        ``(P, H, W)`` (0 where a plane has no cells), the tables concatenated (label
        ascending), ``threshold`` and ``include_border`` those of the planes, ``skipped``
        their sum.

    Raises
    ------
    ValueError
        If no plane has cells.
    """
    scored = [c for c in planes if c is not None]
    if not scored:
        raise ValueError("no plane of the stack has scored cells")
    h, w = (int(s) for s in shape[:2])
    labels = np.zeros((len(planes), h, w), dtype=np.int64)
    maps = np.zeros((len(planes), h, w), dtype=np.float32)
    columns: dict[str, list[np.ndarray]] = {}
    offset = 0
    for p, cells in enumerate(planes):
        if cells is None:
            continue
        plane_labels = np.asarray(cells.labels, dtype=np.int64)
        labels[p] = np.where(plane_labels > 0, plane_labels + offset, 0)
        maps[p] = cells.error_map
        table = dict(cells.table)
        table["cell_id"] = np.asarray(table["label"])
        table["label"] = table["cell_id"] + offset
        table["plane"] = np.full(len(cells), p, dtype=np.int64)
        for key, value in table.items():
            columns.setdefault(key, []).append(np.asarray(value))
        offset += int(plane_labels.max(initial=0))
    return CellScores(table={k: np.concatenate(v) for k, v in columns.items()}, labels=labels,
                      error_map=maps, threshold=scored[0].threshold,
                      include_border=scored[0].include_border,
                      skipped=sum(c.skipped for c in scored))


class StackCells:
    """The cells of a stack's planes merged as they come in: :func:`stack_cells` kept up to
    date plane by plane.

    :meth:`put` writes only the new plane's slice of the ``(P, H, W)`` label and map arrays
    and appends its rows, so merging P planes one after another costs time linear in P (a
    plane put before one already there shifts the ids of the planes after it, and the rows
    are then put in plane order again). :meth:`cells` gives the merge so far as a
    :class:`~.cellscores.CellScores` equal to ``stack_cells`` of the same planes, holding
    views of the arrays kept here (not copies).

    Parameters
    ----------
    n_planes : int
        ``P``.
    shape : tuple of int
        ``(H, W)`` of a plane.

    Attributes
    ----------
    labels : numpy.ndarray
        ``(P, H, W)`` stack ids (0 = background): ``uint16`` while the ids fit, then
        ``uint32``, then ``int64`` (converted once, when a plane needs it).
    error_map : numpy.ndarray
        ``(P, H, W)`` float32, 0 where a plane has no cells.
    """

    def __init__(self, n_planes: int, shape: Sequence[int]) -> None:
        h, w = (int(s) for s in shape[:2])
        self.labels = np.zeros((int(n_planes), h, w), dtype=np.uint16)
        self.error_map = np.zeros((int(n_planes), h, w), dtype=np.float32)
        self._planes: list[CellScores | None] = [None] * int(n_planes)
        self._max = np.zeros(int(n_planes), dtype=np.int64)  # largest own id per plane
        self._others: list[np.ndarray] = [np.zeros(0, np.int64)] * int(n_planes)
        self._columns: dict[str, np.ndarray] = {}
        self._rows = 0
        self._last = -1  # the last plane whose rows are in the columns

    def _offset(self, plane: int) -> int:
        return int(self._max[:plane].sum())

    def _fit(self, largest: int) -> None:
        """Widen ``labels`` once ids up to ``largest`` no longer fit its type."""
        for dtype in (np.uint16, np.uint32, np.int64):
            if largest <= np.iinfo(dtype).max:
                break
        if np.dtype(dtype).itemsize > self.labels.dtype.itemsize:
            self.labels = self.labels.astype(dtype)

    def put(self, plane: int, cells: CellScores) -> None:
        """Merge the cells of ``plane`` (its own ids; ``cells.labels`` ``(H, W)``)."""
        if self._planes[plane] is not None:
            raise ValueError(f"plane {plane} was already put")
        own = np.asarray(cells.labels)
        largest = int(own.max(initial=0))
        self._planes[plane] = cells
        self._max[plane] = largest
        later = [p for p in range(plane + 1, len(self._planes))
                 if self._planes[p] is not None]
        self._fit(self._offset(len(self._planes)))
        if later and largest:  # ids of the planes after this one move up
            for p in later:
                view = self.labels[p]
                view[view > 0] += largest
                self._others[p] = self._others[p] + largest
        offset = self._offset(plane)
        self.labels[plane] = np.where(own > 0, own + offset, 0)
        self.error_map[plane] = cells.error_map
        ids = np.asarray(cells.table["label"], dtype=np.int64)
        present = np.unique(own)
        present = present[present != 0]
        self._others[plane] = np.setdiff1d(present, ids, assume_unique=True) + offset
        if later or plane < self._last:  # rows out of plane order: put them in order again
            self._columns, self._rows, self._last = {}, 0, -1
            for p, c in enumerate(self._planes):
                if c is not None:
                    self._append(self._plane_table(p, c, self._offset(p)))
                    self._last = p
        else:
            self._append(self._plane_table(plane, cells, offset))
            self._last = plane

    @staticmethod
    def _plane_table(plane: int, cells: CellScores, offset: int) -> dict[str, np.ndarray]:
        table = {k: np.asarray(v) for k, v in cells.table.items()}
        table["cell_id"] = np.asarray(table["label"])
        table["label"] = table["cell_id"] + offset
        table["plane"] = np.full(len(cells), plane, dtype=np.int64)
        return table

    def _append(self, table: dict[str, np.ndarray]) -> None:
        """Append rows to the columns (capacity doubled when full: amortised linear)."""
        n = len(table["label"])
        for key, value in table.items():
            col = self._columns.get(key)
            if col is None:
                col = np.empty((max(n, 16), *value.shape[1:]), dtype=value.dtype)
            elif self._rows + n > len(col):
                grown = np.empty((max(2 * len(col), self._rows + n), *col.shape[1:]),
                                 dtype=np.result_type(col, value))
                grown[:self._rows] = col[:self._rows]
                col = grown
            elif col.dtype != np.result_type(col, value):
                col = col.astype(np.result_type(col, value))
            col[self._rows:self._rows + n] = value
            self._columns[key] = col
        self._rows += n

    def others(self) -> np.ndarray:
        """The stack ids of objects in the label planes that are not scored cells (sorted)."""
        return np.concatenate(self._others).astype(np.int64)

    def cells(self) -> CellScores:
        """The merge so far, as :func:`stack_cells` gives it (``labels`` of this object's
        dtype, not int64).

        Raises
        ------
        ValueError
            If no plane has been put.
        """
        scored = [c for c in self._planes if c is not None]
        if not scored:
            raise ValueError("no plane of the stack has scored cells")
        return CellScores(table={k: v[:self._rows] for k, v in self._columns.items()},
                          labels=self.labels, error_map=self.error_map,
                          threshold=scored[0].threshold,
                          include_border=scored[0].include_border,
                          skipped=sum(c.skipped for c in scored))
