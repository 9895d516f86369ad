"""Cells in a field: label-image checks, label files and per-object measurements.

napari-free. Two ways to get the cells of a field:

* the user's own label image (cellpose, StarDist, a hand annotation): :func:`read_labels`
  reads it, :func:`match_label_files` pairs label files with images by stem and
  :func:`check_labels` validates it against the image;
* :func:`.segmentation.segment_cells`, the built-in classic scikit-image / scipy
  segmentation (re-exported here: earlier READMEs imported it from this module).

:func:`measure_cells` measures the objects of either (:class:`CellTable`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .images import ImageError, read_image
from .segmentation import segment_cells  # re-exported: earlier READMEs imported it here

__all__ = [
    "CellTable",
    "check_labels",
    "match_label_files",
    "measure_cells",
    "read_labels",
    "segment_cells",
]

#: A user's label image is refused when one object covers more than this fraction of it.
GIANT_FRACTION = 0.5
#: A label image of at most 2 values whose objects fall apart into this many or more separate
#: pieces (and 3 per value) is a binary mask, not one value per cell.
MASK_PIECES = 5

#: Label-file suffixes tried by :func:`match_label_files`, in order.
LABEL_SUFFIXES = (".tif", ".tiff", ".png")



# --------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------


@dataclass
class CellTable:
    """Per-object measurements of a label image, one row per object, label ascending.

    Attributes
    ----------
    label : numpy.ndarray
        ``int64`` ``(N,)`` label value of each object.
    area : numpy.ndarray
        ``int64`` ``(N,)`` pixel count.
    centroid_y, centroid_x : numpy.ndarray
        ``float64`` ``(N,)`` mean row and column of the object's pixels.
    bbox : numpy.ndarray
        ``int64`` ``(N, 4)``: ``min_row, min_col, max_row, max_col`` (max exclusive).
    at_border : numpy.ndarray
        ``bool`` ``(N,)``: the object touches the image edge (is likely cut by it).
    """

    label: np.ndarray
    area: np.ndarray
    centroid_y: np.ndarray
    centroid_x: np.ndarray
    bbox: np.ndarray
    at_border: np.ndarray

    def __len__(self) -> int:
        return len(self.label)


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(ids, dense)``: the object ids and an image of their 1-based ranks."""
    biggest = int(labels.max()) if labels.size else 0
    if biggest <= 4 * labels.size + 1024:
        present = np.bincount(labels.ravel(), minlength=biggest + 1) > 0
        present[0] = False
        ids = np.flatnonzero(present)
        if len(ids) == biggest:  # already 1..N
            return ids.astype(np.int64), labels
        lut = np.zeros(biggest + 1, dtype=np.int64)
        lut[ids] = np.arange(1, len(ids) + 1)
        return ids.astype(np.int64), lut[labels]
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    if ids[0] == 0:
        return ids[1:].astype(np.int64), inverse
    return ids.astype(np.int64), inverse + 1


def measure_cells(labels: np.ndarray) -> CellTable:
    """Measure every object of a label image.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(H, W)`` non-negative integer label image, 0 = background. Ids need not be
        consecutive.

    Returns
    -------
    CellTable
        One row per object, ordered by label value.

    Raises
    ------
    ImageError
        If ``labels`` is not a 2-D integer array with non-negative values.
    """
    arr = np.asarray(labels)
    if arr.ndim != 2 or arr.dtype.kind not in "iub":
        raise ImageError(f"labels must be a 2-D integer array; got shape {arr.shape}, "
                         f"dtype {arr.dtype}")
    if arr.dtype.kind == "i" and arr.size and int(arr.min()) < 0:
        raise ImageError("labels must be non-negative (0 = background); got negative values")
    arr = arr.astype(np.int64, copy=False) if arr.dtype.kind == "b" else arr
    h, w = arr.shape
    ids, dense = _compact(arr)
    n = len(ids)
    flat = dense.ravel()
    area = np.bincount(flat, minlength=n + 1)[1:].astype(np.int64)
    rows = np.repeat(np.arange(h, dtype=np.float64), w)
    cols = np.tile(np.arange(w, dtype=np.float64), h)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = np.bincount(flat, weights=rows, minlength=n + 1)[1:] / area
        cx = np.bincount(flat, weights=cols, minlength=n + 1)[1:] / area
    bbox = np.zeros((n, 4), dtype=np.int64)
    for i, sl in enumerate(ndi.find_objects(dense, max_label=n)):
        if sl is not None:
            bbox[i] = (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)
    at_border = (bbox[:, 0] == 0) | (bbox[:, 1] == 0) | (bbox[:, 2] == h) | (bbox[:, 3] == w)
    return CellTable(label=ids, area=area, centroid_y=cy.astype(np.float64),
                     centroid_x=cx.astype(np.float64), bbox=bbox, at_border=at_border)


# --------------------------------------------------------------------------------------
# user label images
# --------------------------------------------------------------------------------------


def check_labels(labels: Any, shape: tuple[int, int], *, name: str = "labels") -> np.ndarray:
    """Validate a user's label image against an image's ``(H, W)``.

    Parameters
    ----------
    labels : array_like
        Label image: integer values, 0 = background, one value per cell.
    shape : tuple of int
        ``(H, W)`` of the image the labels belong to.
    name : str, optional
        How the label image is called in error messages (a file or layer name).

    Returns
    -------
    numpy.ndarray
        The labels as ``int32`` (``int64`` when an id does not fit), ids unchanged.

    Raises
    ------
    ImageError
        One line, if the labels are not a 2-D array of ``shape``, not integers, negative,
        empty (no object), if one object covers more than half of the image (a mask or
        an inverted label image rather than cells), or if at most 2 values label
        :data:`MASK_PIECES` or more separate objects (a binary mask).
    """
    arr = np.asarray(labels)
    want = tuple(int(s) for s in shape[:2])
    if arr.dtype.kind not in "iub":
        raise ImageError(f"{name} has dtype {arr.dtype}; expected an integer label image "
                         "(0 = background, one value per cell)")
    if arr.ndim != 2:
        raise ImageError(f"{name} has shape {arr.shape}; expected a 2-D label image of "
                         f"shape {want} like the image")
    if arr.shape != want:
        raise ImageError(f"{name} is {arr.shape[0]}x{arr.shape[1]} pixels but the image is "
                         f"{want[0]}x{want[1]}; expected a label image of the same shape")
    if arr.dtype.kind == "i" and int(arr.min()) < 0:
        raise ImageError(f"{name} holds negative values (smallest {int(arr.min())}); "
                         "expected 0 for background and positive cell ids")
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 8 and int(arr.max()) > 2**63 - 1:
        raise ImageError(f"{name} holds ids beyond the int64 range; expected smaller ids")
    if not arr.any():
        raise ImageError(f"{name} holds no cells (every pixel is 0 = background); expected "
                         "at least one labelled object")
    out = arr.astype(np.int32 if int(arr.max()) <= np.iinfo(np.int32).max else np.int64,
                     copy=False)
    ids, dense = _compact(out)
    counts = np.bincount(dense.ravel(), minlength=len(ids) + 1)[1:]
    big = int(np.argmax(counts))
    if counts[big] > GIANT_FRACTION * out.size:
        raise ImageError(f"{name}: object {int(ids[big])} covers "
                         f"{100 * counts[big] / out.size:.0f}% of the image; expected one "
                         "object per cell (is it a mask or an inverted label image?)")
    if len(ids) <= 2:
        pieces = int(ndi.label(out > 0)[1])
        if pieces >= max(MASK_PIECES, 3 * len(ids)):
            raise ImageError(f"{name} holds {len(ids)} value(s) for {pieces} separate objects; "
                             "expected one value per cell (is it a binary mask? number its "
                             "objects first, e.g. skimage.measure.label)")
    return out


def read_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a label image file (TIFF or PNG) as stored.

    Parameters
    ----------
    path : str or os.PathLike
        Label image file.

    Returns
    -------
    numpy.ndarray
        The 2-D label array (singleton axes dropped), dtype as stored. Validate it with
        :func:`check_labels`.

    Raises
    ------
    ImageError
        If the file cannot be read or does not hold a 2-D array.
    """
    arr = np.asarray(read_image(path))
    if arr.ndim > 2:
        arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise ImageError(f"label image {Path(path).name!r} has shape {arr.shape}; expected "
                         "a 2-D label image (H, W)")
    return arr


def match_label_files(images: Sequence[Path], labels_dir: Path) -> dict[Path, Path | None]:
    """Pair images with label files by stem.

    For an image ``<stem>.<ext>``, the label file is the first that exists in
    ``labels_dir`` of ``<stem>_labels.tif``, ``<stem>_labels.tiff``, ``<stem>_labels.png``,
    ``<stem>.tif``, ``<stem>.tiff``, ``<stem>.png`` (suffixes in any case), and for an
    OME-TIFF ``<name>.ome.tif`` the same with ``<name>`` after those with ``<name>.ome``; the
    image file itself is never its own label file.

    Parameters
    ----------
    images : sequence of Path
        Image files.
    labels_dir : Path
        Folder holding the label images.

    Returns
    -------
    dict
        ``{image path: label path or None}``, in the order of ``images``.

    Raises
    ------
    ImageError
        If ``labels_dir`` is not a folder.
    """
    folder = Path(labels_dir)
    if not folder.is_dir():
        raise ImageError(f"labels folder {str(folder)!r} does not exist or is not a folder")
    by_name: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file():
            by_name.setdefault(p.name.lower(), p)
    out: dict[Path, Path | None] = {}
    for image in images:
        image = Path(image)
        stem = image.stem.lower()
        # An OME-TIFF's stem keeps ".ome" (x.ome.tif -> x.ome); its labels may drop it.
        stems = (stem, stem[:-4]) if stem.endswith(".ome") and len(stem) > 4 else (stem,)
        found = None
        for base in [b for s in stems for b in (f"{s}_labels", s)]:
            for suffix in LABEL_SUFFIXES:
                cand = by_name.get(base + suffix)
                if cand is not None and not _same_file(cand, image):
                    found = cand
                    break
            if found is not None:
                break
        out[image] = found
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:  # pragma: no cover - unreadable paths
        return False
