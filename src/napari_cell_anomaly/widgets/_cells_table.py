"""The Score widget's per-cell table: one row per cell of one field, sorted by score.

Backed by the :class:`~..core.cellscores.CellScores` arrays through a
:class:`~qtpy.QtCore.QAbstractTableModel`, so showing 1,000 cells creates no item objects,
sorting is a numpy ``argsort`` and a new false-alarm rate only repaints the verdict column.
Number columns widen to their widest number when cells are shown and cut at the right when
narrowed (never in the middle); the sort arrow points up for ascending, as in the images table.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import QAbstractTableModel, QItemSelectionModel, QModelIndex, Qt, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableView

from ..core.cellscores import CellScores
from ._results_table import (
    ANOMALY_COLOR,
    NORMAL_COLOR,
    NumberDelegate,
    SortHeader,
    cell_text_width,
)

__all__ = ["CellsTable", "CellsTableModel"]

#: (header, table column or None for the verdict, number format, tooltip)
_COLUMNS = (
    ("Cell", "label", "{:d}", "The cell's value in the label image (click a row to show it)"),
    ("Score", "score", "{:.3g}", "Combined anomaly score (higher = more abnormal)"),
    ("Error", "recon_error", "{:.3g}", "Reconstruction error over the cell's mask"),
    ("Log-dens.", "log_density", "{:.3g}",
     "Log-density of the cell's latent code under the training normals"),
    ("Pctl.", "percentile", "{:.0f}", "Percentile among the model's held-out normal cells"),
    ("Area", "area", "{:d}", "Cell area in pixels"),
    ("Verdict", None, "", "Verdict at the chosen false-alarm rate; 'edge': cut by the image "
     "edge, not judged"),
)
VERDICT_COLUMN = len(_COLUMNS) - 1
_EDGE_COLOR = QColor(150, 150, 150, 90)


class CellsTableModel(QAbstractTableModel):
    """Table model over the arrays of one :class:`CellScores` (read-only)."""

    def __init__(self) -> None:
        super().__init__()
        self._cells: CellScores | None = None
        self._is_anomaly = np.zeros(0, dtype=bool)
        self._judged = np.zeros(0, dtype=bool)
        self._order = np.zeros(0, dtype=np.int64)  # row -> cell index
        self._rank = np.zeros(0, dtype=np.int64)   # cell index -> row
        self._sort = (1, Qt.SortOrder.DescendingOrder)

    # -- content ----------------------------------------------------------------------------
    def set_cells(self, cells: CellScores | None, is_anomaly: np.ndarray | None = None,
                  judged: np.ndarray | None = None) -> None:
        """Show ``cells`` (None: nothing), sorted by the current sort column."""
        self.beginResetModel()
        self._cells = cells
        n = 0 if cells is None else len(cells)
        self._is_anomaly = (np.zeros(n, bool) if is_anomaly is None
                            else np.asarray(is_anomaly, bool))
        self._judged = np.ones(n, bool) if judged is None else np.asarray(judged, bool)
        self._order = np.arange(n)
        self._apply_sort()
        self.endResetModel()

    def set_verdicts(self, is_anomaly: np.ndarray, judged: np.ndarray) -> None:
        """New verdicts (false-alarm rate or edge rule changed): repaint the verdict column,
        and re-sort when the table is sorted by it."""
        self._is_anomaly = np.asarray(is_anomaly, bool)
        self._judged = np.asarray(judged, bool)
        if self._sort[0] == VERDICT_COLUMN:
            self.sort(*self._sort)
        elif self.rowCount():
            self.dataChanged.emit(self.index(0, VERDICT_COLUMN),
                                  self.index(self.rowCount() - 1, VERDICT_COLUMN))

    @property
    def cells(self) -> CellScores | None:
        """The cells shown."""
        return self._cells

    def label_at(self, row: int) -> int | None:
        """The label of the cell shown in ``row``."""
        if self._cells is None or not 0 <= row < len(self._order):
            return None
        return int(self._cells.table["label"][self._order[row]])

    def row_of(self, label: int) -> int:
        """The row showing cell ``label``, or -1."""
        if self._cells is None:
            return -1
        labels = self._cells.table["label"]  # ascending
        i = int(np.searchsorted(labels, label))
        if i >= labels.size or labels[i] != label:
            return -1
        return int(self._rank[i])

    def labels_in_order(self) -> list[int]:
        """The labels, in table (display) order."""
        if self._cells is None:
            return []
        return self._cells.table["label"][self._order].tolist()

    def column_texts(self, col: int) -> list[str]:
        """The texts of number column ``col`` for every cell shown (any order)."""
        if self._cells is None or col == VERDICT_COLUMN:
            return []
        _, name, fmt, _ = _COLUMNS[col]
        values = self._cells.table[name]
        if fmt == "{:d}":
            return [fmt.format(int(v)) for v in values.tolist()]
        return [fmt.format(float(v)) for v in values.tolist()]

    def verdict_texts(self) -> np.ndarray:
        """Per cell (table order of ``CellScores``): "anomalous", "normal" or "edge"."""
        out = np.where(self._is_anomaly, "anomalous", "normal").astype(object)
        out[~self._judged] = "edge"
        return out

    # -- QAbstractTableModel ------------------------------------------------------------------
    def rowCount(self, parent: QModelIndex | None = None) -> int:
        if parent is not None and parent.isValid():
            return 0
        return int(self._order.size)

    def columnCount(self, parent: QModelIndex | None = None) -> int:
        if parent is not None and parent.isValid():
            return 0
        return len(_COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(_COLUMNS):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return _COLUMNS[section][0]
        if role == Qt.ItemDataRole.ToolTipRole:
            return _COLUMNS[section][3]
        return None

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if self._cells is None or not index.isValid():
            return None
        i = int(self._order[index.row()])
        col = index.column()
        if col == VERDICT_COLUMN:
            judged, bad = bool(self._judged[i]), bool(self._is_anomaly[i])
            if role == Qt.ItemDataRole.DisplayRole:
                return "edge" if not judged else ("anomalous" if bad else "normal")
            if role == Qt.ItemDataRole.BackgroundRole:
                return _EDGE_COLOR if not judged else (ANOMALY_COLOR if bad else NORMAL_COLOR)
            return None
        _, name, fmt, _ = _COLUMNS[col]
        value = self._cells.table[name][i]
        if role == Qt.ItemDataRole.DisplayRole:
            return fmt.format(int(value) if fmt == "{:d}" else float(value))
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        self._sort = (int(column), order)
        self.layoutAboutToBeChanged.emit()
        self._apply_sort()
        self.layoutChanged.emit()

    def _apply_sort(self) -> None:
        if self._cells is None or not len(self._cells):
            self._order = np.zeros(0, dtype=np.int64)
            self._rank = np.zeros(0, dtype=np.int64)
            return
        column, order = self._sort
        if column == VERDICT_COLUMN:
            key = np.where(self._judged, self._is_anomaly.astype(float), -1.0)
        else:
            key = np.asarray(self._cells.table[_COLUMNS[column][1]], dtype=float)
        # Stable, ties by label; descending = the reverse of ascending by (key, -label).
        labels = self._cells.table["label"]
        if order == Qt.SortOrder.DescendingOrder:
            self._order = np.lexsort((labels, -key))
        else:
            self._order = np.lexsort((labels, key))
        self._rank = np.empty_like(self._order)
        self._rank[self._order] = np.arange(self._order.size)


class CellsTable(QTableView):
    """The per-cell table view; emits :attr:`cell_clicked` with the label of a clicked row."""

    #: A row was clicked by the user: the cell's label.
    cell_clicked = Signal(int)

    def __init__(self) -> None:
        super().__init__()
        self.cells_model = CellsTableModel()
        self.setModel(self.cells_model)
        if hasattr(QHeaderView, "initStyleOptionForIndex"):  # Qt 6: arrows that read right
            self.setHorizontalHeader(SortHeader(Qt.Orientation.Horizontal, self))
        self._number_delegate = NumberDelegate(self)
        for col in range(1, VERDICT_COLUMN):
            self.setItemDelegateForColumn(col, self._number_delegate)
        self.setSortingEnabled(True)
        self.sortByColumn(1, Qt.SortOrder.DescendingOrder)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setWordWrap(False)
        vertical = self.verticalHeader()
        vertical.setVisible(False)
        vertical.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)  # no per-row measuring
        vertical.setDefaultSectionSize(self.fontMetrics().height() + 6)
        header = self.horizontalHeader()
        header.setMinimumSectionSize(30)
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        metrics = self.fontMetrics()
        for col, sample in enumerate(("00000", "-0.000", "0.0000", "-0.000", "100", "00000")):
            width = max(metrics.horizontalAdvance(_COLUMNS[col][0]) + 18,
                        metrics.horizontalAdvance(sample) + 10)
            header.resizeSection(col, width)
        self.cells_model.modelReset.connect(self.fit_columns)
        self.setMinimumHeight(120)
        self.setToolTip("Click a row to centre the view on that cell and select it; click a "
                        "cell in the viewer to find its row.")
        self.clicked.connect(self._on_clicked)

    def fit_columns(self) -> None:
        """Widen each number column (never narrow it) to its widest text."""
        header = self.horizontalHeader()
        metrics = self.fontMetrics()
        for col in range(VERDICT_COLUMN):
            texts = self.cells_model.column_texts(col)
            if texts:
                widest = max(texts, key=metrics.horizontalAdvance)
                need = cell_text_width(self, widest)
                if header.sectionSize(col) < need:
                    header.resizeSection(col, need)

    def _on_clicked(self, index: QModelIndex) -> None:
        label = self.cells_model.label_at(index.row())
        if label is not None:
            self.cell_clicked.emit(label)

    def select_label(self, label: int) -> bool:
        """Select (and scroll to) the row of cell ``label``, without emitting a click."""
        row = self.cells_model.row_of(int(label))
        if row < 0:
            self.clearSelection()
            return False
        index = self.cells_model.index(row, 0)
        self.selectionModel().setCurrentIndex(
            index, QItemSelectionModel.SelectionFlag.ClearAndSelect
            | QItemSelectionModel.SelectionFlag.Rows)
        self.scrollTo(index)
        return True

    def selected_label(self) -> int | None:
        """The label of the selected row, if any."""
        rows = self.selectionModel().selectedRows()
        return self.cells_model.label_at(rows[0].row()) if rows else None
