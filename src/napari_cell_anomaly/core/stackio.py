"""Stacks and time series read: z-stacks and time series held as 2-D planes, planes first.

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
- :func:`load_planes` reads files for training: every plane of a stack is one sample.

Scoring and merging the planes: :mod:`.stacks`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from .axes import read_image_axes, resolve_axes
from .images import MAX_CHANNELS, ImageError, LoadedImages, as_float_image

__all__ = ["LoadedPlanes", "Stack", "TiffPlanes", "as_stack", "load_planes", "plane_label",
           "read_stack"]

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
