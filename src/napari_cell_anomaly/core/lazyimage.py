"""Lazy image sources: large images read region by region, never whole.

:func:`open_image` opens a TIFF (tifffile's zarr view) or a zarr / OME-Zarr folder,
:func:`as_lazy_image` wraps any sliceable array (dask, zarr, memmap), both as a
:class:`LazyImage`; :func:`should_stream` is the command line's choice of the streamed path
(:func:`.bigimage.score_streaming`) from a TIFF's header. No torch here: reading
:data:`STREAM_PIXELS` or calling :func:`should_stream` does not load it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .images import MAX_CHANNELS, ImageError, _label

__all__ = ["STREAM_PIXELS", "LazyImage", "as_lazy_image", "open_image", "should_stream"]

#: Patch-mode images with at least this many pixels (or stored in tiles) are scored by
#: :func:`.bigimage.score_streaming` in the command line: above it the in-memory path needs
#: gigabytes.
STREAM_PIXELS = 4096 * 4096


@dataclass
class LazyImage:
    """A 2-D image read region by region.

    Attributes
    ----------
    array : array_like
        Anything sliceable with NumPy semantics that returns arrays: a zarr array (e.g.
        tifffile's ``aszarr`` view of a TIFF), a dask array, a ``numpy.memmap``, an array.
    channel_axis : {None, 0, 2}
        None for ``(H, W)``, 2 for ``(H, W, C)``, 0 for ``(C, H, W)``.
    closer : callable, optional
        Called by :meth:`close` (e.g. to close the TIFF file).
    name : str
        How the image is called in error messages (e.g. its file name).
    """

    array: Any
    channel_axis: int | None
    closer: Callable[[], None] | None = None
    name: str = "image"

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        s = tuple(int(v) for v in self.array.shape)
        return (s[1], s[2]) if self.channel_axis == 0 else (s[0], s[1])

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Raw pixels of rows ``y0:y1`` and columns ``x0:x1`` as ``(h, w)`` or ``(h, w, C)``.

        Raises
        ------
        ImageError
            If the region cannot be read or decoded (one line naming the image).
        """
        try:
            if self.channel_axis == 0:
                return np.moveaxis(np.asarray(_compute(self.array[:, y0:y1, x0:x1])), 0, -1)
            return np.asarray(_compute(self.array[y0:y1, x0:x1]))
        except Exception as exc:  # stores and decoders raise many types; report them alike
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ImageError(f"cannot read {_label(self.name)} at rows {y0}:{y1}, columns "
                             f"{x0}:{x1}: {reason or type(exc).__name__}") from exc

    def close(self) -> None:
        """Release the file behind the image, if any."""
        if self.closer is not None:
            self.closer()
            self.closer = None

    def __enter__(self) -> LazyImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _compute(block: Any) -> Any:
    """A dask block -> its values (synchronously: this may run inside a dask task)."""
    if hasattr(block, "dask") and hasattr(block, "compute"):
        return block.compute(scheduler="synchronous")
    return block


def as_lazy_image(array: Any, *, channel_axis: int | None = None,
                  name: str = "image") -> LazyImage:
    """Wrap a sliceable 2-D image array without reading its pixels.

    Channels last, as everywhere in the package: ``(H, W)`` or ``(H, W, C)`` with ``C <=``
    :data:`.images.MAX_CHANNELS`; a channels-first ``(C, H, W)`` array needs
    ``channel_axis=0``. Leading axes of length 1 are dropped.

    Raises
    ------
    ImageError
        For another number of dimensions, too many channels or a non-numeric dtype.
    """
    label = _label(name)
    while len(array.shape) > 3 and int(array.shape[0]) == 1:
        array = array[0]
    shape = tuple(int(v) for v in array.shape)
    if np.dtype(array.dtype).kind not in "biuf":
        raise ImageError(f"{label} has dtype {array.dtype}; expected a numeric pixel array")
    if len(shape) == 2:
        return LazyImage(array, None, name=name)
    axis = None if channel_axis is None else channel_axis % max(len(shape), 1)
    if len(shape) == 3 and axis == 0:
        return LazyImage(array, 0, name=name)
    if len(shape) == 3 and axis in (None, 2) and shape[-1] <= MAX_CHANNELS:
        return LazyImage(array, 2, name=name)
    raise ImageError(f"{label} has shape {shape}; expected a 2-D image (H, W) or (H, W, C) "
                     f"with at most {MAX_CHANNELS} channels (give channel_axis=0 for "
                     "(C, H, W))")


def open_image(path: str | os.PathLike[str]) -> LazyImage:
    """Open a large image for reading region by region (nothing is read yet).

    Parameters
    ----------
    path : str or path-like
        A TIFF file (tiled or striped; the full-resolution level of a pyramidal TIFF), or a
        zarr / OME-Zarr folder (the first dataset of its ``multiscales`` metadata, i.e. the
        full resolution, or the array itself).

    Returns
    -------
    LazyImage
        Close it (or use it as a context manager) to release the file.

    Raises
    ------
    ImageError
        If the file cannot be opened as an image.
    """
    import zarr

    p = Path(path)
    try:
        if p.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(p) as tif:
                axes = tif.series[0].axes
            store = tifffile.imread(p, aszarr=True, level=0)
            node = zarr.open(store, mode="r")
            axes = axes[-len(node.shape):] if len(axes) >= len(node.shape) else ""
            first = len(node.shape) == 3 and axes[:1] in ("S", "C")
            lazy = as_lazy_image(node, channel_axis=0 if first else None, name=p.name)
            lazy.closer = store.close
            return lazy
        if not p.is_dir():
            raise ImageError(f"cannot read image {p.name!r}: expected a TIFF file or a zarr "
                             "folder")
        node = zarr.open(str(p), mode="r")
        if not hasattr(node, "shape"):  # a group: OME-Zarr multiscales, else array "0"
            attrs = dict(node.attrs)
            multi = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
            key = multi[0]["datasets"][0]["path"] if multi else "0"
            names = [str(a.get("name", a) if isinstance(a, dict) else a).lower()
                     for a in (multi[0].get("axes", []) if multi else [])]
            node = node[key]
            if "c" in names:  # OME-Zarr: channels first (c, [z,] y, x), singleton axes dropped
                lead = names.index("c") - (len(names) - len(node.shape))
                return as_lazy_image(node, channel_axis=0 if lead <= 0 else None,
                                     name=p.name)
        return as_lazy_image(node, name=p.name)
    except ImageError:
        raise
    except Exception as exc:  # decoders and stores raise many types; report them alike
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImageError(f"cannot read image {p.name!r}: {reason}") from exc


def should_stream(path: str | os.PathLike[str], *, pixels: int = STREAM_PIXELS) -> bool:
    """Whether the command line scores ``path`` by :func:`.bigimage.score_streaming` (given a
    patch-mode model): a TIFF of at least ``pixels`` pixels or stored in tiles.

    Only the TIFF header is read. Other formats (PNG, JPEG) cannot be read region by region
    and always go through memory.
    """
    p = Path(path)
    if p.suffix.lower() not in (".tif", ".tiff"):
        return False
    import tifffile

    try:
        with tifffile.TiffFile(p) as tif:
            series = tif.series[0]
            page = tif.pages[0]
            shape = series.shape
            axes = series.axes
            tiled = bool(getattr(page, "is_tiled", False))
    except Exception:  # unreadable: leave it to the in-memory path, which reports it
        return False
    n = 1
    for ax, side in zip(axes, shape, strict=True):
        if ax in "YX":
            n *= int(side)
    return tiled or n >= pixels
