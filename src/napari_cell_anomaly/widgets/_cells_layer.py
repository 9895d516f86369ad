"""The per-cell Labels layer: its ``features`` table, its colours, and focusing on one cell.

The Score widget's per-cell results live in a Labels layer ``"<source> cells"`` (made by the
plugin, refreshed in place): one ``features`` row per cell and a
:class:`~napari.utils.colormaps.DirectLabelColormap` built from the table's arrays, coloured by
verdict (anomalous / normal / not judged) or by score. Nothing here loops over pixels.

Speed (issue 7: no GUI stall over 100 ms for 1,000 cells). The layer's data is stored as
``uint16`` when the largest label fits (:func:`display_labels`, run in the scoring worker):
napari colours 8- and 16-bit labels on the GPU through a lookup table, while wider labels are
re-mapped pixel by pixel on the CPU each time the colormap changes. That table (65,536 colours
for ``uint16``) is built by napari with a Python loop; :class:`CellColormap` builds it with
numpy instead, since the colours change at every move of the false-alarm slider.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Labels
from napari.utils.colormaps import DirectLabelColormap, ensure_colormap

from ..core.cellscores import CELL_COLUMNS, CellScores

if TYPE_CHECKING:
    import napari
    import pandas as pd

__all__ = ["CELLS", "COLOR_MODES", "CellColormap", "cell_colormap", "cell_features",
           "display_labels", "focus_on_cell", "other_labels"]

#: Role (and layer-name suffix) of the per-cell Labels layer.
CELLS = "cells"
#: How the cells layer can be coloured: key -> label shown in the widget.
COLOR_MODES = {"verdict": "verdict", "score": "score"}

_ANOMALOUS = np.array([0.95, 0.15, 0.15, 1.0], dtype=np.float32)
_NORMAL = np.array([0.2, 0.8, 0.35, 1.0], dtype=np.float32)
_NOT_JUDGED = np.array([0.6, 0.6, 0.6, 1.0], dtype=np.float32)
_CLEAR = np.zeros(4, dtype=np.float32)
#: Colormap of "colour by score" (low = dark purple, high = yellow).
SCORE_COLORMAP = "plasma"


def cell_features(cells: CellScores, is_anomaly: np.ndarray) -> pd.DataFrame:
    """The ``features`` table of a cells layer: the :data:`CELL_COLUMNS`, then ``index``.

    Parameters
    ----------
    cells : CellScores
        The scored cells.
    is_anomaly : numpy.ndarray
        Bool ``(N,)`` verdicts at the current false-alarm rate (replaces the table's own).

    Returns
    -------
    pandas.DataFrame
        One row per cell, label ascending. ``index`` repeats ``label``: napari reads it to find
        a label's row (status bar, ``Labels.get_status``).
    """
    import pandas as pd  # here, not at module level: it costs the GUI thread ~0.1 s

    frame = pd.DataFrame({name: np.asarray(cells.table[name]) for name in CELL_COLUMNS})
    frame["is_anomaly"] = np.asarray(is_anomaly, dtype=bool)
    frame["index"] = frame["label"]
    return frame


def cell_colors(cells: CellScores, is_anomaly: np.ndarray, judged: np.ndarray, mode: str,
                score_range: tuple[float, float]) -> np.ndarray:
    """RGBA ``(N, 4)`` float32 colour of each cell.

    Parameters
    ----------
    cells : CellScores
        The scored cells.
    is_anomaly, judged : numpy.ndarray
        Bool ``(N,)``: the verdicts, and which cells take part in verdicts.
    mode : {"verdict", "score"}
        ``verdict``: red anomalous, green normal; ``score``: the :data:`SCORE_COLORMAP` over
        ``score_range``. Cells not judged (cut by the image edge) are grey either way.
    score_range : (float, float)
        Scores mapped to the colormap's ends (clipped).
    """
    n = len(cells)
    if mode == "score":
        lo, hi = score_range
        t = np.clip((np.asarray(cells.table["score"], float) - lo) / max(hi - lo, 1e-12), 0, 1)
        colors = np.asarray(ensure_colormap(SCORE_COLORMAP).map(t), dtype=np.float32)
        colors = colors.reshape(n, 4)
    elif mode == "verdict":
        colors = np.where(np.asarray(is_anomaly, bool)[:, None], _ANOMALOUS, _NORMAL)
    else:
        raise ValueError(f"unknown colour mode {mode!r}; expected one of {tuple(COLOR_MODES)}")
    return np.where(np.asarray(judged, bool)[:, None], colors, _NOT_JUDGED).astype(np.float32)


def display_labels(labels: np.ndarray) -> np.ndarray:
    """The label image as the cells layer stores it: ``uint16`` when every id fits (ids
    unchanged), else as given. Meant for the worker thread (it copies the image)."""
    labels = np.asarray(labels)
    if labels.dtype.kind in "ui" and labels.dtype.itemsize > 2 and labels.size:
        if int(labels.min()) >= 0 and int(labels.max()) <= np.iinfo(np.uint16).max:
            return labels.astype(np.uint16)
    return labels


class CellColormap(DirectLabelColormap):
    """A :class:`~napari.utils.colormaps.DirectLabelColormap` whose colour table for 8- and
    16-bit unsigned label data is built with numpy.

    napari (0.9) fills that table (one colour per possible value: 65,536 for ``uint16``) with
    a Python loop each time a new colormap is set, about 50 ms for ``uint16``; here it is one
    fancy-indexing step. Other data types, and the "show selected label" mode, use napari's
    own code. ``tests/widgets/test_cells_widget.py`` checks that both give the same colours.
    """

    def _map_without_cache(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values)
        if self.use_selection or values.dtype.kind != "u" or values.dtype.itemsize > 2:
            return super()._map_without_cache(values)
        table = np.empty((int(np.iinfo(values.dtype).max) + 1, 4), dtype=np.float32)
        table[:] = self.default_color
        keys = [k for k in self.color_dict if k is not None and 0 <= k < table.shape[0]]
        if keys:
            table[np.asarray(keys, dtype=np.int64)] = np.asarray(
                [self.color_dict[k] for k in keys], dtype=np.float32)
        return table[values]


def cell_colormap(labels: np.ndarray, colors: np.ndarray,
                  others: np.ndarray | None = None) -> CellColormap:
    """A direct colormap giving each cell its colour; background and ``others`` clear.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(N,)`` labels of the cells.
    colors : numpy.ndarray
        ``(N, 4)`` RGBA colour of each cell.
    others : numpy.ndarray, optional
        Labels present in the image that are not cells of the table (objects too small to be
        read): shown clear.

    Notes
    -----
    The most common colour becomes the colormap's default (the colour of labels not listed),
    so only the other cells are listed: napari checks every listed colour when a colormap is
    made (about 20 us each), and in verdict colours most cells share one colour.
    """
    colors = np.asarray(colors, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    default = _CLEAR
    if len(colors):
        unique, inverse, counts = np.unique(colors, axis=0, return_inverse=True,
                                            return_counts=True)
        common = int(np.argmax(counts))
        default = unique[common]
        keep = np.asarray(inverse).reshape(-1) != common
        labels, colors = labels[keep], colors[keep]
    color_dict: dict[int | None, np.ndarray] = {None: default, 0: _CLEAR}
    color_dict.update(zip(labels.tolist(), colors, strict=True))
    for label in ([] if others is None else np.asarray(others).reshape(-1).tolist()):
        color_dict[int(label)] = _CLEAR
    return CellColormap(color_dict=color_dict)


def other_labels(labels: np.ndarray, cell_labels: np.ndarray) -> np.ndarray:
    """The non-zero values of a label image that are not in ``cell_labels`` (sorted).

    Meant for the worker thread (a pass over the image).
    """
    labels = np.asarray(labels)
    if labels.dtype.kind == "u" and labels.dtype.itemsize <= 2:
        present = np.flatnonzero(np.bincount(labels.reshape(-1)))
    else:
        present = np.unique(labels)
    present = present[present != 0]
    return np.setdiff1d(present, np.asarray(cell_labels), assume_unique=True).astype(np.int64)


def focus_on_cell(viewer: napari.Viewer, layer: Labels, centroid: tuple[float, float],
                  area: float, plane: int | None = None) -> None:
    """Centre the view on a cell and zoom so it takes about a tenth of the canvas side.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer to move.
    layer : napari.layers.Labels
        The cells layer (its scale and translate place the cell in the world).
    centroid : (float, float)
        The cell's centroid in the layer's data coordinates (row, column).
    area : float
        The cell's area in pixels.
    plane : int, optional
        A stack's cell: the plane it lies in (index on the layer's first axis); the viewer
        steps to it.
    """
    lead = [0.0] * (layer.ndim - 2)
    if plane is not None and lead:
        lead[0] = float(plane)
    world = np.asarray(layer.data_to_world([*lead, *centroid]), dtype=float)
    if plane is not None and lead:
        viewer.dims.set_point(viewer.dims.ndim - layer.ndim, float(world[0]))
    # napari >= 0.9 keeps the camera and the canvas size under viewer.scene / viewer.canvas.
    scene, canvas = getattr(viewer, "scene", None), getattr(viewer, "canvas", None)
    camera = scene.camera if scene is not None else viewer.camera
    size = (getattr(canvas, "size", None) if canvas is not None
            else getattr(viewer, "_canvas_size", None))
    camera.center = tuple(world[-2:])
    diameter = 2.0 * np.sqrt(max(float(area), 1.0) / np.pi)
    scale = float(np.min(np.abs(layer.scale[-2:])))
    side = float(min(size)) if size is not None and min(size) > 0 else 600.0
    camera.zoom = side / (10.0 * diameter * scale)
