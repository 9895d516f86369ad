"""Heatmap files written from row bands, without holding the heatmap whole.

:func:`write_heatmap` writes a tiled, zlib-compressed BigTIFF, :func:`write_heatmap_zarr` an
OME-Zarr folder; both write under a temporary name in the target folder and rename only when
complete, so an error (a full disk included) leaves no partial file under the final name, and
raise :class:`HeatmapWriteError` when the writing itself fails.
:func:`.bigimage.score_streaming` feeds them the bands of a streamed heatmap.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

__all__ = ["HEATMAP_TILE", "HeatmapWriteError", "write_heatmap", "write_heatmap_zarr"]

#: Side of the square tiles of heatmap files written by :func:`write_heatmap`.
HEATMAP_TILE = 256


class HeatmapWriteError(OSError):
    """Writing a heatmap file failed (e.g. the disk is full); nothing was left under its name.

    An ``OSError`` with the failing file as ``filename``: not a fault of the image scored, so
    a batch stops rather than skip the image.
    """


def _tiles_of(bands: Iterable[tuple[int, np.ndarray]], width: int, tile: int
              ) -> Iterator[np.ndarray]:
    """Regroup row bands (top to bottom) into ``tile x tile`` tiles in row-major order, edge
    tiles padded with zeros (the layout tifffile writes from an iterator)."""
    pending = np.zeros((0, width), np.float32)
    n_x = -(-width // tile)

    def emit(rows: np.ndarray) -> Iterator[np.ndarray]:
        for k in range(n_x):
            out = np.zeros((tile, tile), np.float32)
            part = rows[:, k * tile:(k + 1) * tile]
            out[:part.shape[0], :part.shape[1]] = part
            yield out

    for _, rows in bands:
        pending = np.concatenate([pending, rows])
        while len(pending) >= tile:
            yield from emit(pending[:tile])
            pending = pending[tile:]
    if len(pending):
        yield from emit(pending)


def write_heatmap(path: str | os.PathLike[str], bands: Iterable[tuple[int, np.ndarray]],
                  shape: tuple[int, int], *, tile: int = HEATMAP_TILE) -> Path:
    """Write a float32 heatmap arriving as row bands to a tiled, zlib-compressed BigTIFF,
    without holding it whole.

    The file is written under a temporary name in the same folder and renamed to ``path``
    only when complete; on any error (a full disk, a failing band iterator, a stop) the
    temporary file is removed and nothing exists under ``path`` that was not there before.
    A failure of the writing itself is raised as :class:`HeatmapWriteError`; errors of the
    ``bands`` iterator pass through unchanged.

    Parameters
    ----------
    path : str or path-like
        The ``.tif`` file to write (replaced if it exists, only on success).
    bands : iterable of (int, np.ndarray)
        ``(first_row, rows)`` with ``rows`` ``(h, W)`` float32, top to bottom, covering
        ``shape``.
    shape : tuple of int
        ``(H, W)``.
    tile : int
        Tile side in the file (a multiple of 16).

    Returns
    -------
    Path
        ``path``.
    """
    import tifffile

    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        tifffile.imwrite(tmp, _tiles_of(bands, shape[1], tile), shape=tuple(shape),
                         dtype=np.float32, tile=(tile, tile), bigtiff=True,
                         compression="zlib", photometric="minisblack", maxworkers=1)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, HeatmapWriteError):
            raise
        raise HeatmapWriteError(exc.errno, exc.strerror or str(exc), str(target)) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def write_heatmap_zarr(path: str | os.PathLike[str], bands: Iterable[tuple[int, np.ndarray]],
                       shape: tuple[int, int], *, chunk: int = HEATMAP_TILE) -> Path:
    """Write a float32 heatmap arriving as row bands to an OME-Zarr folder (OME-NGFF 0.4:
    zarr format 2, one ``multiscales`` level ``"0"`` with axes ``y``, ``x``; ``chunk`` x
    ``chunk`` compressed chunks), without holding it whole.

    The folder is written under a temporary name in the same folder and renamed to ``path``
    only when complete (an existing ``path`` is moved aside first and removed after the
    rename); on any error the temporary folder is removed and ``path`` is as it was. A
    failure of the writing itself is raised as :class:`HeatmapWriteError`; errors of the
    ``bands`` iterator pass through unchanged.

    Parameters
    ----------
    path : str or path-like
        The ``.ome.zarr`` folder to write.
    bands : iterable of (int, np.ndarray)
        ``(first_row, rows)`` with ``rows`` ``(h, W)`` float32, top to bottom, covering
        ``shape``.
    shape : tuple of int
        ``(H, W)``.
    chunk : int
        Chunk side.

    Returns
    -------
    Path
        ``path``.
    """
    import shutil
    import tempfile

    import zarr

    target = Path(path)

    def failed(exc: OSError) -> HeatmapWriteError:
        return HeatmapWriteError(exc.errno, exc.strerror or str(exc), str(target))

    try:
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.",
                                    suffix=".tmp"))
    except OSError as exc:
        raise failed(exc) from exc
    try:
        try:
            root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
            root.attrs["multiscales"] = [{
                "version": "0.4", "name": target.name.removesuffix(".ome.zarr"),
                "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                "datasets": [{"path": "0", "coordinateTransformations": [
                    {"type": "scale", "scale": [1.0, 1.0]}]}]}]
            arr = root.create_array("0", shape=tuple(int(n) for n in shape), dtype="float32",
                                    chunks=(chunk, chunk), fill_value=0.0)
        except OSError as exc:
            raise failed(exc) from exc
        held = np.zeros((0, int(shape[1])), np.float32)  # rows short of a whole chunk row
        y_held = 0
        for y0, rows in bands:
            if y0 != y_held + len(held):
                raise ValueError(f"heatmap band at row {y0}; expected row {y_held + len(held)}"
                                 " (bands top to bottom, without gaps)")
            held = np.concatenate([held, np.asarray(rows, np.float32)])
            end = y_held + len(held)
            full = (end - y_held) // chunk * chunk if end < shape[0] else end - y_held
            if full:
                try:
                    arr[y_held:y_held + full] = held[:full]
                except OSError as exc:
                    raise failed(exc) from exc
                held, y_held = held[full:], y_held + full
        if y_held + len(held) != shape[0] or len(held):
            raise ValueError(f"the heatmap bands covered {y_held + len(held)} of {shape[0]} "
                             "rows")
        try:
            _replace_folder(tmp, target)
        except OSError as exc:
            raise failed(exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _replace_folder(new: Path, target: Path) -> None:
    """Rename folder ``new`` to ``target``; an existing ``target`` (which a rename cannot
    replace) is moved aside first, put back if the rename fails, and removed after."""
    import shutil
    import tempfile

    aside = None
    if target.exists():
        aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.",
                                      suffix=".old"))
        os.replace(target, aside / target.name)
    try:
        os.replace(new, target)
    except BaseException:
        if aside is not None:
            os.replace(aside / target.name, target)
            aside.rmdir()
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
