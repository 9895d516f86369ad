"""The per-cell Labels layer: its ``features`` table, its colours, and focusing on one cell.

The Score widget's per-cell results live in a Labels layer ``"<source> cells"`` (made by the
plugin, refreshed in place): one ``features`` row per cell and a
:class:`~napari.utils.colormaps.DirectLabelColormap` built from the table's arrays, coloured by
verdict (anomalous / normal / not judged) or by score. Nothing here loops over pixels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from napari.layers import Labels
from napari.utils.colormaps import DirectLabelColormap, ensure_colormap

from ..core.cellscores import CELL_COLUMNS, CellScores

if TYPE_CHECKING:
    import napari

__all__ = ["CELLS", "COLOR_MODES", "cell_colormap", "cell_features", "focus_on_cell"]

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


def cell_colormap(labels: np.ndarray, colors: np.ndarray) -> DirectLabelColormap:
    """A direct colormap giving each label its colour; background and unknown labels clear."""
    color_dict: dict[int | None, np.ndarray] = {None: _CLEAR, 0: _CLEAR}
    color_dict.update(zip(np.asarray(labels).tolist(), colors, strict=True))
    return DirectLabelColormap(color_dict=color_dict)


def focus_on_cell(viewer: napari.Viewer, layer: Labels, centroid: tuple[float, float],
                  area: float) -> None:
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
    """
    lead = [0.0] * (layer.ndim - 2)
    world = np.asarray(layer.data_to_world([*lead, *centroid]), dtype=float)
    viewer.camera.center = tuple(world[-2:])
    diameter = 2.0 * np.sqrt(max(float(area), 1.0) / np.pi)
    scale = float(np.min(np.abs(layer.scale[-2:])))
    size = getattr(viewer, "_canvas_size", None)
    side = float(min(size)) if size is not None and min(size) > 0 else 600.0
    viewer.camera.zoom = side / (10.0 * diameter * scale)
