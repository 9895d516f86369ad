"""Stacks and time series: 2-D planes scored and trained on one by one with the 2-D model.

A :class:`Stack` holds the planes of a z-stack or a time series, planes first:
``(P, H, W)`` or ``(P, H, W, C)``, as a NumPy array, a lazy (dask, zarr) array or a list of
2-D arrays. Its planes are read one at a time (:meth:`Stack.plane` calls ``np.asarray`` on
``data[i]`` only), so a lazy stack is never read whole. A plain 2-D image is a stack of one
plane that is not a stack (:meth:`Stack.single`), so callers can loop over files alike.

- :func:`as_stack` validates an array (or a list of planes) as a stack; planes of different
  sizes and arrays of more than one plane axis are refused with one line.
- :func:`read_stack` reads an image file with the axes :func:`~.axes.read_image_axes`
  resolves from its metadata (planes first, channels last): one plane axis makes a stack.
  A TIFF stack is not read whole: its planes are read from the file one at a time
  (:class:`TiffPlanes`, through tifffile's zarr view: only the pages a plane covers).
- :func:`score_stack` scores each plane with :meth:`AnomalyDetector.score` (or
  :meth:`~.cellscoring.CellScoring.score_field` per cell) and yields a :class:`PlaneScore`
  per plane; a plane that cannot be scored is reported in its own result, not raised.
- :class:`MapStack` assembles the per-plane heatmaps into one ``(P, H, W)`` array, plane by
  plane.
- :func:`stack_cells` merges the per-plane cells of a stack into one
  :class:`~.cellscores.CellScores`; :class:`StackCells` does the same plane by plane as the
  planes come in, writing only the new plane (the Score widget shows a stack's cells so far).
- :func:`load_planes` reads files for training: every plane of a stack is one sample.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tifffile

from .axes import read_image_axes, resolve_axes
from .cellscores import CellScores
from .images import MAX_CHANNELS, ImageError, LoadedImages, as_float_image

if TYPE_CHECKING:
    from .detector import AnomalyDetector, ScoreResult

__all__ = ["LoadedPlanes", "MapStack", "PlaneScore", "Stack", "StackCells", "TiffPlanes",
           "as_stack", "load_planes", "plane_label", "read_stack", "score_stack",
           "stack_cells"]

_EXPECTED = "expected a 2-D image or a stack of 2-D planes (P, H, W) or (P, H, W, C)"


def plane_label(axis: str, index: int) -> str:
    """How plane ``index`` is named: ``"z=3"`` or ``"t=3"`` for a Z or T axis, else ``"3"``."""
    axis = axis.upper()
    return f"{axis.lower()}={index}" if axis in ("Z", "T") else str(index)


@dataclass
class Stack:
    """The 2-D planes of an image, planes first.

    Attributes
    ----------
    data : array_like or list of array_like
        ``(P, H, W)`` or ``(P, H, W, C)`` (NumPy, dask, zarr), or a list of ``P`` planes of
        one shape. Only ever indexed by plane.
    name : str
        The stack's name (a file or layer name), used in plane names and messages.
    axis : str
        What the plane axis is: ``"Z"``, ``"T"``, or another letter (unknown).
    is_stack : bool
        False for a plain 2-D image held as one plane (:meth:`single`).
    plane_axes : str
        Axes of one plane when read from a file (:func:`read_stack`): ``"YXC"``, or ``"YXS"``
        for RGB colour samples; empty when not known.
    source : TiffPlanes or None
        The file reader behind ``data`` when :func:`read_stack` reads a TIFF stack plane by
        plane (its ``reads`` say what was read), else None.
    """

    data: Any
    name: str = "stack"
    axis: str = "Z"
    is_stack: bool = True
    plane_axes: str = ""
    source: Any = None

    @classmethod
    def single(cls, image: Any, name: str = "image") -> Stack:
        """A 2-D image as a one-plane, non-stack :class:`Stack` (the image as given)."""
        return cls([image], name=name, axis="", is_stack=False)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def plane_shape(self) -> tuple[int, ...]:
        """``(H, W)`` (or ``(H, W, C)``) of every plane, from the array's shape (not read)."""
        first = self.data[0]
        return tuple(int(s) for s in np.shape(first))

    def plane(self, index: int) -> np.ndarray:
        """Read plane ``index`` (only that plane of a lazy array; a dask array's plane is
        computed in this thread, also inside a dask task).

        Raises
        ------
        ImageError
            One line, when a lazy source fails to read the plane (e.g. a damaged page).
        """
        item = self.data[index]
        if not (hasattr(item, "dask") and hasattr(item, "compute")):
            return np.asarray(item)
        try:
            return np.asarray(item.compute(scheduler="synchronous"))
        except Exception as exc:  # decoders raise many types; one line, as read_image does
            reason = (str(exc).strip().splitlines()[0] if str(exc).strip()
                      else type(exc).__name__)
            raise ImageError(f"cannot read {self.plane_name(index)}: {reason} "
                             f"({type(exc).__name__})") from exc

    def close(self) -> None:
        """Close the file behind a stack read plane by plane (:attr:`source`), if any."""
        if self.source is not None:
            self.source.close()

    def plane_name(self, index: int) -> str:
        """``"<name> [z=3]"`` for a plane of a stack; the name itself for a 2-D image."""
        return f"{self.name} [{plane_label(self.axis, index)}]" if self.is_stack else self.name

    def planes(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(index, plane)``, each plane read when it is reached."""
        for index in range(len(self)):
            yield index, self.plane(index)


def as_stack(data: Any, *, name: str = "stack", axis: str = "Z") -> Stack:
    """Validate a stack of 2-D planes (without reading its pixels).

    Parameters
    ----------
    data : array_like or sequence of array_like
        ``(P, H, W)`` or ``(P, H, W, C)`` with ``C`` up to :data:`~.images.MAX_CHANNELS`
        (NumPy, dask or zarr), or a list of ``P`` 2-D planes (``(H, W)`` or ``(H, W, C)``).
    name : str
        How the stack is named in plane names and messages.
    axis : str
        What the plane axis is (``"Z"``, ``"T"``, ...); only used in plane names.

    Returns
    -------
    Stack

    Raises
    ------
    ImageError
        One line: planes of different sizes, an empty stack, or an array that is not 3-D or
        4-D with channels last (e.g. a 5-D ``(T, Z, C, H, W)`` array).
    """
    label = f"stack {name!r}"
    if isinstance(data, (list, tuple)):
        if not data:
            raise ImageError(f"{label} has no planes; {_EXPECTED}")
        shapes = [tuple(int(s) for s in np.shape(p)) for p in data]
        odd = next((i for i, s in enumerate(shapes) if s != shapes[0]), None)
        if odd is not None:
            raise ImageError(f"{label} has planes of different sizes: plane 0 is "
                             f"{shapes[0]}, plane {odd} is {shapes[odd]}; expected planes "
                             "of one size")
        if len(shapes[0]) not in (2, 3):
            raise ImageError(f"{label} has planes of shape {shapes[0]}; expected 2-D planes "
                             "(H, W) or (H, W, C)")
        return Stack(list(data), name=name, axis=axis)
    shape = tuple(int(s) for s in np.shape(data))
    if len(shape) == 4 and not 1 <= shape[-1] <= MAX_CHANNELS:
        raise ImageError(f"{label} is a 4-D array of shape {shape}; {_EXPECTED} (one plane "
                         "axis, channels last): split or project the extra axis first")
    if len(shape) not in (3, 4):
        raise ImageError(f"{label} is a {len(shape)}-D array of shape {shape}; {_EXPECTED} "
                         "(one plane axis)" + (": split or project the extra axes first"
                                               if len(shape) > 4 else ""))
    if shape[0] == 0:
        raise ImageError(f"{label} has no planes (shape {shape}); {_EXPECTED}")
    return Stack(data, name=name, axis=axis)


# ------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------
def read_stack(path: str | os.PathLike[str], channel_axis: int | str | None = None) -> Stack:
    """Read an image file as a :class:`Stack`: a multi-page TIFF stack, or a 2-D image.

    The axes come from :func:`~.axes.read_image_axes` (OME-TIFF and ImageJ axes, TIFF
    samples, PNG/JPEG colour types; ``channel_axis`` settles what the metadata leaves
    ambiguous), as ``(*planes, H, W, C)``: one plane axis (``Z``, ``T``, or an unnamed ``I`` /
    ``Q`` axis that is not the channels) makes a stack; none, a 2-D image ``(H, W, C)``. A
    TIFF holding several series (images) of one shape is read as a stack of them, along an
    unnamed ``I`` axis.

    Parameters
    ----------
    path : str or os.PathLike
        Image file.
    channel_axis : int or "none" or None
        As for :func:`~.axes.read_image_axes`.

    Returns
    -------
    Stack
        ``is_stack`` False for a 2-D image (its one plane is ``(H, W, C)``).

    Raises
    ------
    ImageError
        One line, when the file cannot be read, its axes stay ambiguous, it holds series of
        different sizes, or it has more than one plane axis (e.g. ``TZYX``).
    """
    p = Path(path)
    if p.suffix.lower() in (".tif", ".tiff") and p.is_file():
        several = _several_series(p, channel_axis)
        if several is not None:
            return several
        lazy = _lazy_tiff_stack(p, channel_axis)
        if lazy is not None:
            return lazy
    data, axes = read_image_axes(p, channel_axis)
    return _as_planes(data, axes, p.name)


class TiffPlanes:
    """The first series of a TIFF file as an array read on demand, region by region.

    Each ``planes[key]`` reads the region through tifffile's zarr view of the series (only
    the pages, or tiles, the region covers), so memory holds only what was asked for. The
    file is opened at the first read and kept open (parsing the pages of a long stack again
    for every plane would cost time quadratic in its length) until :meth:`close` (also on
    garbage collection). ``reads`` lists the keys read, in order.

    Parameters
    ----------
    path : path-like
        A TIFF file.

    Attributes
    ----------
    shape, dtype, ndim, axes
        Of the series as stored (tifffile's axis letters).
    rgb, alpha : bool
        The samples are RGB colour; the last of them is an alpha channel.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        with tifffile.TiffFile(self.path) as tif:
            series = tif.series[0]
            self.shape = tuple(int(n) for n in series.shape)
            self.dtype = np.dtype(series.dtype)
            self.axes = str(series.axes)
            page = series.keyframe
            self.rgb = int(page.photometric) == int(tifffile.PHOTOMETRIC.RGB)
            self.alpha = self.rgb and len(getattr(page, "extrasamples", ()) or ()) > 0
        self.ndim = len(self.shape)
        self.reads: list[Any] = []
        self._open: tuple[Any, Any, Any] | None = None  # file, zarr store, zarr array
        self._lock = threading.Lock()

    def __getitem__(self, key: Any) -> np.ndarray:
        import zarr

        with self._lock:
            self.reads.append(key)
            if self._open is None:
                tif = tifffile.TiffFile(self.path)
                try:
                    store = tif.series[0].aszarr(level=0)
                    self._open = (tif, store, zarr.open(store, mode="r"))
                except BaseException:
                    tif.close()
                    raise
            return np.asarray(self._open[2][key])

    def close(self) -> None:
        """Close the file (a later read opens it again)."""
        with self._lock:
            if self._open is not None:
                tif, store, _ = self._open
                self._open = None
                store.close()
                tif.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _lazy_tiff_stack(path: Path, channel_axis: int | str | None) -> Stack | None:
    """A TIFF stack whose planes are read one at a time (:class:`TiffPlanes` behind a dask
    array cut into single pages along the plane axes); None for a 2-D image (read whole,
    as before) or a file tifffile cannot open (:func:`read_image_axes` reports it)."""
    import dask.array as da

    try:
        source = TiffPlanes(path)
    except Exception:  # reported in one line by read_image_axes
        return None
    yx = {source.axes.find("Y"), source.axes.find("X")}
    if len(source.axes) != source.ndim or -1 in yx or 0 in source.shape:
        return None
    if all(a in "YXS" or n == 1 for a, n in zip(source.axes, source.shape, strict=True)):
        return None  # a 2-D image (colour samples at most): no dask array needed
    # One chunk per page: 1 along every axis but Y, X and the colour samples of a page.
    chunks = tuple(n if (i in yx or a == "S") else 1
                   for i, (n, a) in enumerate(zip(source.shape, source.axes, strict=True)))
    lazy = da.from_array(source, chunks=chunks, asarray=False, lock=False,
                         meta=np.empty((0,) * source.ndim, source.dtype),
                         name=f"tiff-planes-{path.name}-{os.urandom(6).hex()}")
    data, axes = resolve_axes(lazy, source.axes, channel_axis=channel_axis, rgb=source.rgb,
                              alpha=source.alpha, name=path.name)
    if len(axes) <= 3:
        return None  # a 2-D image: read whole by read_image_axes
    stack = _as_planes(data, axes, path.name)
    stack.source = source
    return stack


def _as_planes(data: np.ndarray, axes: str, name: str) -> Stack:
    """A :class:`Stack` of ``(*planes, H, W, C)`` pixels with resolved ``axes``."""
    lead = axes[:-3]
    if not lead:
        stack = Stack.single(data, name=name)
    elif len(lead) > 1:
        raise ImageError(f"image {name!r} has axes {axes} (shape {data.shape}); expected one "
                         "plane axis (a z-stack or a time series): split or project the extra "
                         "axes first")
    else:
        stack = as_stack(data, name=name, axis=lead)
    stack.plane_axes = axes[-3:]
    return stack


def _several_series(path: Path, channel_axis: int | str | None) -> Stack | None:
    """A TIFF of several series (images): a stack of them if they have one shape (along an
    unnamed ``I`` axis, resolved as :func:`~.axes.resolve_axes` does); None for one series."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = list(tif.series)
            if len(series) < 2:
                return None
            shapes = [tuple(s.shape) for s in series]
            odd = next((i for i, s in enumerate(shapes) if s != shapes[0]), None)
            if odd is not None:
                raise ImageError(
                    f"image {path.name!r} holds {len(series)} images of different sizes "
                    f"(image 0 is {shapes[0]}, image {odd} is {shapes[odd]}); expected one "
                    "image or a stack of planes of one size")
            data = np.stack([s.asarray() for s in series])
            axes = "I" + str(series[0].axes)
            page = series[0].keyframe
            rgb = int(page.photometric) == int(tifffile.PHOTOMETRIC.RGB)
            alpha = rgb and len(getattr(page, "extrasamples", ()) or ()) > 0
    except ImageError:
        raise
    except Exception as exc:  # decoders raise many types; report them as read_image does
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImageError(f"cannot read image {path.name!r}: {reason} "
                         f"({type(exc).__name__})") from exc
    arr, resolved = resolve_axes(data, axes, channel_axis=channel_axis, rgb=rgb, alpha=alpha,
                                 name=path.name)
    return _as_planes(arr, resolved, path.name)


@dataclass
class LoadedPlanes(LoadedImages):
    """:class:`~.images.LoadedImages` with one entry per plane: a stack's planes each take
    an entry (its path repeated, ``axes`` those of one plane), named ``"<file> [z=3]"`` in
    :attr:`names`."""

    names: list[str] = field(default_factory=list)
    #: Plane index of each entry (None for a 2-D image).
    planes: list[int | None] = field(default_factory=list)


def load_planes(paths: Iterable[str | os.PathLike[str]],
                channel_axis: int | str | None = None) -> LoadedPlanes:
    """Read image files for training: every plane of a stack is one sample.

    Like :func:`~.images.load_images` (never raises for a bad file; failures are collected),
    but a multi-page TIFF stack (:func:`read_stack`) gives one entry per plane. A bad plane
    is a failure of its own; the other planes are kept.

    Parameters
    ----------
    paths : iterable of path-like
        Image files.
    channel_axis : int or "none" or None
        As for :func:`read_stack`.

    Returns
    -------
    LoadedPlanes
    """
    out = LoadedPlanes()
    for path in paths:
        p = Path(path)
        try:
            stack = read_stack(p, channel_axis)
        except ImageError as err:
            out.failures.append((p, str(err)))
            continue
        for index, plane in stack.planes():
            name = stack.plane_name(index)
            try:
                as_float_image(plane, name=name)
            except ImageError as err:
                out.failures.append((p, str(err)))
                continue
            out.images.append(plane)
            out.paths.append(p)
            out.names.append(name)
            out.planes.append(index if stack.is_stack else None)
            out.axes.append(stack.plane_axes or "YXC")
        stack.close()
    return out


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
